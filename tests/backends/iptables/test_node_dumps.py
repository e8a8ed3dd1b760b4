"""`rulegen trace --rules` on whole node dumps: kube-proxy's rules among Calico's, Flannel's, Docker's and a firewall's.

The dumps in tests/node_dumps/ were built by tests/nodedump.py in a network
namespace (a compile of tests/node_dumps/cluster.yaml, kube-proxy's jumps and
a shape's own chains, saved with iptables-save and ipset save);
tests/kernel/test_node_dumps_kernel.py checks that the kernel still prints them so.
Here, without root: each dump traces to the endpoints the compiled rules
reach (or to the foreign rule that stops the connection, named with its
table, chain, rule number and text), unknown ipsets split into branches that
name the set, and with --ipsets nothing is assumed.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from rulegen.flags import SETTING_KEYS
from rulegen.pipeline import compile_files
from rulegen.trace import trace_compiled
from rgtest import run_cli

DUMPS = Path(__file__).resolve().parents[2] / "node_dumps"
CLUSTER = DUMPS / "cluster.yaml"
NODE = "192.168.77.10"
WEB_NP, LOCAL_NP, WEB_VIP, EMPTY_VIP = f"{NODE}:30080", f"{NODE}:30090", "10.96.50.10:80", "10.96.50.30:80"
CLIENT = "203.0.113.5"


def trace(variant: str, dst: str, *extra: str, ipsets: bool = True, src: str = CLIENT) -> dict:
    args = ["trace", "--rules", str(DUMPS / variant / "iptables.save"), "--node-ip", NODE, "--dst", dst,
            "--src", src, "--json", *extra]
    if ipsets:
        args += ["--ipsets", str(DUMPS / variant / "ipset.save")]
    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def shares(doc: dict) -> dict[str, Fraction]:
    return {d["endpoint"]: Fraction(d["chance"]) for d in doc["destinations"]}


@pytest.fixture(scope="module")
def compiled():
    flags = {k: None for k in SETTING_KEYS}
    flags["nfacct"] = False
    return compile_files([str(CLUSTER)], flags)


def compiled_shares(c, dst: str) -> dict[str, Fraction]:
    ip, _, port = dst.rpartition(":")
    r = trace_compiled(c, CLIENT, ip, int(port), pod_cidrs=c.settings.node_pod_cidrs)
    return {d.endpoint: d.probability for d in r.destinations}


# Dumps whose foreign rules let Service traffic through: the trace reaches what the compile reaches.
PASSING = ["calico", "flannel", "docker", "firewalld", "ufw"]


@pytest.mark.parametrize("variant", PASSING)
@pytest.mark.parametrize("dst", [WEB_NP, WEB_VIP])
def test_a_dump_reaches_the_endpoints_the_compile_reaches(compiled, variant, dst):
    doc = trace(variant, dst)
    want = compiled_shares(compiled, dst)
    assert want and shares(doc) == want
    assert doc["assumed"] is False and doc["assumptions"] == []


def test_calico_without_its_ipsets_names_each_set_and_assumes_both_ways():
    doc = trace("calico", WEB_NP, ipsets=False)
    reasons = {a["reason"] for a in doc["assumptions"]}
    assert "ipset cali40masq-ipam-pools unknown: pass --ipsets" in reasons
    assert all(r.startswith("ipset cali40") and r.endswith("unknown: pass --ipsets") for r in reasons)
    assert doc["assumed"] is True
    # every path says what it rests on; both answers to the first question are followed
    first = doc["assumptions"][0]["question"]
    answers = {a["holds"] for p in doc["paths"] for a in p.get("assuming", []) if a["question"] == first}
    assert answers == {True, False}
    # whatever Calico's sets hold, kube-proxy's DNAT is the same: the endpoints are those of the compile
    assert set(shares(doc)) == {"10.244.1.21:8080", "10.244.1.22:8080", "10.244.2.23:8080"}
    text = run_cli("trace", "--rules", str(DUMPS / "calico" / "iptables.save"), "--node-ip", NODE,
                   "--dst", WEB_NP).stdout
    assert "Assumed" in text and "ipset cali40masq-ipam-pools unknown: pass --ipsets" in text


def test_calico_with_its_ipsets_assumes_nothing():
    doc = trace("calico", WEB_NP)
    assert doc["assumed"] is False
    assert not any(h["kind"] == "assume" for p in doc["paths"] for h in p["hops"])


def test_docker_dnat_ahead_of_kube_proxy_wins_over_the_nodeport_and_is_named():
    doc = trace("docker-dnat-first", WEB_NP, "--route", "10.244.1.0/24=cni0")
    # Docker's published port takes the NodePort's connections: kube-proxy's rules never see them
    note = next(n for n in doc["notes"] if n.startswith("DNAT by nat DOCKER rule 2"))
    assert "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 30080 -j DNAT --to-destination 10.244.1.31:8080" in note
    assert "before kube-proxy's jump at nat PREROUTING rule 2" in note
    assert "kube-proxy's rules never see this connection" in note
    assert not any(h["chain"].startswith("KUBE-SVC") for p in doc["paths"] for h in p["hops"])


def test_docker_user_drop_in_forward_shadows_the_nodeport_and_is_named():
    doc = trace("docker-user-drop", WEB_NP)
    assert doc["verdict"] == "DROP" and doc["destinations"] == []
    note = next(n for n in doc["notes"] if n.startswith("DROP by filter DOCKER-USER rule 1"))
    assert "-A DOCKER-USER ! -s 192.0.2.1/32 -i eth0 -j DROP" in note
    assert "before kube-proxy's jump at filter FORWARD rule" in note
    # the allowed client passes the same rules
    assert trace("docker-user-drop", WEB_NP, src="192.0.2.1")["verdict"] == "DNAT"


@pytest.mark.parametrize("variant", ["docker", "ufw"])
def test_forward_policy_drop_stops_a_local_policy_nodeport(variant):
    # externalTrafficPolicy Local is not masqueraded, so kube-proxy's mark ACCEPT in KUBE-FORWARD does not
    # hold it; a NEW packet is not ESTABLISHED either, and the foreign FORWARD policy DROP decides.
    doc = trace(variant, LOCAL_NP)
    assert doc["verdict"] == "DROP"
    assert "DROP by the policy of filter FORWARD: no rule there accepted the packet" in doc["notes"]
    hops = doc["paths"][0]["hops"]
    assert hops[-1]["kind"] == "policy" and hops[-1]["chain"] == "FORWARD"


def test_firewalld_reload_without_kube_jumps_rejects_and_names_the_rule():
    doc = trace("firewalld-reloaded", WEB_NP)
    assert doc["verdict"] == "REJECT"
    assert ("REJECT by filter INPUT rule 6, outside kube-proxy's chains: "
            "-A INPUT -j REJECT --reject-with icmp-host-prohibited") in doc["notes"]
    text = run_cli("trace", "--rules", str(DUMPS / "firewalld-reloaded" / "iptables.save"), "--node-ip", NODE,
                   "--dst", WEB_NP).stdout
    assert "REJECT: the client is refused (icmp-host-prohibited)" in text


def test_ufw_limit_is_taken_as_matching_with_a_note():
    doc = trace("ufw", LOCAL_NP)
    assert "-m limit is taken as matching: a first connection is within any rate limit" in doc["notes"]


def test_interfaces_follow_the_scenario_and_can_be_overridden():
    # From outside the packet enters on eth0 (DOCKER-USER's -i eth0 DROP applies) ...
    doc = trace("docker-user-drop", WEB_NP)
    assert doc["packet"]["in_iface"] == "eth0" and doc["verdict"] == "DROP"
    # ... entering on another interface, the same client is not that rule's business
    doc = trace("docker-user-drop", WEB_NP, "--in-iface", "eth1")
    assert doc["packet"]["in_iface"] == "eth1" and doc["verdict"] == "DNAT"
    # a route names the interface a packet leaves by (Docker's own FORWARD rules match -o docker0)
    doc = trace("docker", WEB_NP, "--route", "10.244.0.0/16=docker0")
    out = [h for p in doc["paths"] for h in p["hops"] if h["kind"] == "route" and "forwarded" in h["verdict"]]
    assert out and all("out docker0, by the node's route" in h["verdict"] for h in out)


def test_the_json_carries_what_the_text_says(tmp_path):
    doc = trace("calico", WEB_NP, ipsets=False)
    for p in doc["paths"]:
        for a in p.get("assuming", []):
            assert set(a) >= {"question", "holds", "reason"}
    text = run_cli("trace", "--rules", str(DUMPS / "docker-user-drop" / "iptables.save"), "--node-ip", NODE,
                   "--dst", WEB_NP).stdout
    assert "DROP by filter DOCKER-USER rule 1" in text
