"""`rulegen trace --mode ipvs --rules DIR` on whole IPVS node dumps: kube-proxy's glue among foreign chains.

The folders tests/node_dumps/ipvs-*/ were built by tests/nodedump_ipvs.py in a
network namespace (the IPVS compile's ipset.rules and iptables.rules,
kube-proxy's IPVS-mode jumps and a Calico, Docker, firewalld or ufw shape,
saved with ipset save and iptables-save; ipvsadm.rules is the compile's);
tests/kernel/test_node_dumps_kernel.py checks the kernel still prints them
so. Here, without root: each dump reaches the real servers the compiled
rules reach, or stops at the foreign rule that refuses the connection,
named with its table, chain, rule number and text. IPVS takes the
connection in filter INPUT's wake, not FORWARD's, so a foreign rule in
INPUT shadows Services and one in FORWARD (Docker's) does not. Sets the
dump lacks split the trace into assumed branches naming the set; with the
node's whole `ipset save` (--ipsets) nothing is assumed.
"""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from rulegen.trace import trace_compiled
from rgtest import run_cli

TESTS = Path(__file__).resolve().parents[2]
DUMPS = TESTS / "node_dumps"
CLUSTER_YAML = DUMPS / "cluster.yaml"
NODE = "192.168.77.10"
WEB_NP, LOCAL_NP, WEB_VIP, LOCAL_VIP, EMPTY_VIP = (f"{NODE}:30080", f"{NODE}:30090", "10.96.50.10:80",
                                                   "10.96.50.20:80", "10.96.50.30:80")
CLIENT, POD = "203.0.113.5", "10.244.1.254"
ALL = ["calico", "docker", "docker-user-drop", "firewalld", "ufw", "input-drop"]


def trace(variant: str | Path, dst: str, *extra: str, src: str = CLIENT) -> dict:
    d = variant if isinstance(variant, Path) else DUMPS / f"ipvs-{variant}"
    r = run_cli("trace", "--mode", "ipvs", "--rules", str(d), "--node-ip", NODE, "--cluster-cidr", "10.244.0.0/16",
                "--dst", dst, "--src", src, "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def shares(doc: dict) -> dict[str, Fraction]:
    return {d["endpoint"]: Fraction(d["chance"]) for d in doc["destinations"]}


@pytest.fixture(scope="module")
def compiled():
    import sys

    sys.path.insert(0, str(TESTS))
    import nodedump_ipvs

    return nodedump_ipvs.compile_ipvs()


def compiled_shares(c, dst: str, src: str) -> dict[str, Fraction]:
    ip, _, port = dst.rpartition(":")
    r = trace_compiled(c, src, ip, int(port), pod_cidrs=c.settings.node_pod_cidrs)
    return {d.endpoint: d.probability for d in r.destinations}


def test_every_dump_folder_holds_the_three_files():
    for v in ALL:
        assert sorted(p.name for p in (DUMPS / f"ipvs-{v}").iterdir()) == ["ipset.rules", "iptables.rules",
                                                                           "ipvsadm.rules"]


# Dumps whose foreign rules let Service traffic reach IPVS: the trace reaches what the compile reaches.
@pytest.mark.parametrize("variant", ["calico", "docker", "docker-user-drop"])
@pytest.mark.parametrize("dst,src", [(WEB_NP, CLIENT), (LOCAL_NP, CLIENT), (WEB_VIP, POD), (LOCAL_VIP, POD)])
def test_a_dump_reaches_the_real_servers_the_compile_reaches(compiled, variant, dst, src):
    doc = trace(variant, dst, src=src)
    want = compiled_shares(compiled, dst, src)
    assert want and shares(doc) == want
    assert doc["verdict"] == "DNAT"
    assert doc["assumed"] is False and doc["assumptions"] == []


@pytest.mark.parametrize("variant", ["docker", "docker-user-drop"])
def test_ipvs_traffic_passes_input_not_forward_so_dockers_forward_rules_do_not_shadow_it(variant):
    # In iptables mode the NodePort is DNATed in PREROUTING and crosses FORWARD, where DOCKER-USER's DROP and
    # the FORWARD policy DROP stop it; in IPVS mode it is for a local address: INPUT, IPVS, then OUTPUT.
    doc = trace(variant, WEB_NP)
    for p in doc["paths"]:
        chains = [(h["table"], h["chain"]) for h in p["hops"] if h["kind"] == "rule"]
        assert ("filter", "INPUT") in chains and ("filter", "OUTPUT") in chains
        assert not any(c in ("FORWARD", "DOCKER-USER") for _, c in chains)
        kinds = [h["kind"] for h in p["hops"]]
        assert kinds.index("balance") > max(i for i, h in enumerate(p["hops"]) if h["chain"] == "INPUT")


def test_a_foreign_drop_of_the_nodeport_in_input_is_reported_as_drop_and_named():
    doc = trace("input-drop", WEB_NP)
    assert doc["verdict"] == "DROP" and doc["destinations"] == []
    note = next(n for n in doc["notes"] if n.startswith("DROP by filter INPUT rule 1, outside kube-proxy's chains"))
    assert "-A INPUT -i eth0 -p tcp -m tcp --dport 30080 -j DROP" in note
    assert "before kube-proxy's jump at filter INPUT rule 2" in note
    assert not any(h["kind"] == "balance" for p in doc["paths"] for h in p["hops"])  # IPVS never sees it
    assert any(n.startswith("IPVS virtual server TCP 192.168.77.10:30080 never saw this connection: IPVS takes it "
                            "after filter INPUT") for n in doc["notes"])
    # the other NodePort and the cluster IP pass the same rule
    assert trace("input-drop", LOCAL_NP)["verdict"] == "DNAT"
    assert shares(trace("input-drop", WEB_VIP, src=POD)) == {"10.244.1.21:8080": Fraction(1, 3),
                                                             "10.244.1.22:8080": Fraction(1, 3),
                                                             "10.244.2.23:8080": Fraction(1, 3)}


@pytest.mark.parametrize("dst,src", [(WEB_NP, CLIENT), (LOCAL_NP, CLIENT), (WEB_VIP, POD)])
def test_firewalld_rejects_ipvs_service_traffic_at_the_end_of_input(dst, src):
    # firewalld's ACCEPT for ctstate DNAT does not help: IPVS has not rewritten anything yet in filter INPUT.
    doc = trace("firewalld", dst, src=src)
    assert doc["verdict"] == "REJECT" and doc["destinations"] == []
    assert any(n.startswith("REJECT by filter INPUT rule 9, outside kube-proxy's chains: -A INPUT -j REJECT "
                            "--reject-with icmp-host-prohibited") for n in doc["notes"])


def test_ufw_input_policy_drop_drops_ipvs_service_traffic():
    doc = trace("ufw", WEB_NP)
    assert doc["verdict"] == "DROP"
    assert "DROP by the policy of filter INPUT: no rule there accepted the packet" in doc["notes"]
    assert any("never saw this connection" in n for n in doc["notes"])


def test_kube_proxys_own_reject_draws_no_ipvs_note():
    # a port no Service uses on a kube-ipvs0 address: KUBE-IPVS-FILTER refuses it, and no virtual server waits
    doc = trace("calico", "10.96.50.10:81", src=POD)
    assert doc["verdict"] == "REJECT" and not any("never saw" in n for n in doc["notes"])


def test_the_readme_example_is_the_firewalld_dump():
    ex = TESTS.parent / "examples" / "node-dump-ipvs"
    for name in ("ipvsadm.rules", "ipset.rules", "iptables.rules"):
        assert (ex / name).read_text() == (DUMPS / "ipvs-firewalld" / name).read_text(), name
    assert (ex / "cluster.yaml").read_text().split("\n", 1)[1] == CLUSTER_YAML.read_text().split("\n", 1)[1]


def test_a_service_without_endpoints_is_still_refused_by_ipvs():
    assert trace("calico", EMPTY_VIP, src=POD)["verdict"] == "REJECT"


def _without_foreign_sets(tmp_path: Path, variant: str) -> Path:
    """The dump with kube-proxy's sets only (what `ipset save KUBE-...` or the compile's ipset.rules holds)."""
    d = tmp_path / variant
    shutil.copytree(DUMPS / f"ipvs-{variant}", d)
    text = (d / "ipset.rules").read_text()
    (d / "ipset.rules").write_text("".join(x for x in text.splitlines(keepends=True) if "cali40" not in x))
    return d


def test_sets_the_dump_lacks_are_assumed_and_named(tmp_path):
    d = _without_foreign_sets(tmp_path, "calico")
    doc = trace(d, WEB_NP)
    reasons = {a["reason"] for a in doc["assumptions"]}
    assert f"ipset cali40masq-ipam-pools is not in {d / 'ipset.rules'}" in reasons
    assert all(r.startswith("ipset cali40") for r in reasons)
    first = doc["assumptions"][0]["question"]
    answers = {a["holds"] for p in doc["paths"] for a in p.get("assuming", []) if a["question"] == first}
    assert answers == {True, False}
    # whatever Calico's sets hold, IPVS picks the same real servers
    assert set(shares(doc)) == {"10.244.1.21:8080", "10.244.1.22:8080", "10.244.2.23:8080"}
    assert any("pass the node's whole `ipset save` with --ipsets" in n for n in doc["notes"])


def test_with_ipsets_nothing_is_assumed(tmp_path, compiled):
    d = _without_foreign_sets(tmp_path, "calico")
    doc = trace(d, WEB_NP, "--ipsets", str(DUMPS / "ipvs-calico" / "ipset.rules"))
    assert doc["assumed"] is False and doc["assumptions"] == []
    assert shares(doc) == compiled_shares(compiled, WEB_NP, CLIENT)


def test_ipsets_replace_the_folders_sets_and_the_bound_addresses(tmp_path):
    # --ipsets is the node's whole sets: kube-ipvs0's addresses are its KUBE-IPVS-IPS, so a set file without the
    # cluster IP makes that address not the node's (routed on, not taken by IPVS).
    sets = tmp_path / "sets"
    text = (DUMPS / "ipvs-calico" / "ipset.rules").read_text()
    sets.write_text("".join(x for x in text.splitlines(keepends=True) if not x.startswith("add KUBE-IPVS-IPS ")))
    doc = trace("calico", WEB_VIP, "--ipsets", str(sets), src=POD)
    assert not any(h["kind"] == "balance" for p in doc["paths"] for h in p["hops"])
    assert trace("calico", WEB_VIP, src=POD)["verdict"] == "DNAT"


def test_a_bad_ipsets_file_is_exit_2_naming_it(tmp_path):
    bad = tmp_path / "bad.sets"
    bad.write_text("create KUBE-X hash:ip\nflush everything\n")
    r = run_cli("trace", "--mode", "ipvs", "--rules", str(DUMPS / "ipvs-calico"), "--ipsets", str(bad),
                "--node-ip", NODE, "--dst", WEB_NP)
    assert r.exit_code == 2 and f"{bad}: line 2" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("variant", ALL)
@pytest.mark.parametrize("dst,src", [(WEB_NP, CLIENT), (WEB_VIP, POD)])
def test_with_the_nodes_own_ipsets_nothing_is_assumed_on_any_dump(variant, dst, src):
    doc = trace(variant, dst, "--ipsets", str(DUMPS / f"ipvs-{variant}" / "ipset.rules"), src=src)
    assert doc["assumed"] is False and doc["assumptions"] == []
    assert doc["verdict"] in ("DNAT", "DROP", "REJECT")


def test_routes_and_the_pod_interface_say_where_ipvs_sends_the_packet_on():
    # as for an iptables node: --route for other nodes' pods, --pod-iface for this node's (FILES name them local)
    r = run_cli("trace", "--mode", "ipvs", str(CLUSTER_YAML), "--rules", str(DUMPS / "ipvs-calico"), "--dst", WEB_NP,
                "--src", CLIENT, "--route", "10.244.2.0/24=vxlan.calico", "--pod-iface", "cali01", "--json")
    assert r.exit_code == 0, r.output
    paths = json.loads(r.stdout)["paths"]
    sent = {p["endpoint"]: [h["rule"] for h in p["hops"] if h["kind"] == "deliver"] for p in paths}
    assert sent == {"10.244.1.21:8080": ["sent on to 10.244.1.21:8080 via cali01"],
                    "10.244.1.22:8080": ["sent on to 10.244.1.22:8080 via cali01"],
                    "10.244.2.23:8080": ["sent on to 10.244.2.23:8080 via vxlan.calico"]}
