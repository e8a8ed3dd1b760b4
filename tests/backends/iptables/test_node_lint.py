"""`rulegen lint --rules DUMP [FILES...]`: what in a node's dump shadows Service traffic (RG901-RG908).

On the node dumps of tests/node_dumps/ (built by tests/nodedump.py): each
finding names the rule (table, chain, number, text), the Service ports it
hits and a fix; without FILES the Service ports come from the dump's own
kube-proxy chains; a finding that rests on an unknown ipset says so. The
one-pitfall fixtures (lint-fixtures/RG9xx-*) are checked with every other
code's in tests/core/test_lint.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rgtest import run_cli

DUMPS = Path(__file__).resolve().parents[2] / "node_dumps"
CLUSTER = str(DUMPS / "cluster.yaml")


def lint(variant: str, *extra: str, files: bool = True) -> tuple[int, list[dict]]:
    args = ["lint", *([CLUSTER] if files else ["--node-ip", "192.168.77.10"]),
            "--rules", str(DUMPS / variant / "iptables.save"), "--json", *extra]
    r = run_cli(*args)
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, [f for f in json.loads(r.stdout) if f["code"].startswith("RG9")]


@pytest.mark.parametrize("variant", ["calico", "flannel", "firewalld"])
def test_a_node_whose_foreign_rules_let_services_through_has_no_finding(variant):
    _, found = lint(variant, "--ipsets", str(DUMPS / variant / "ipset.save"))
    assert found == []


def test_docker_dnat_ahead_of_kube_proxy_names_the_rule_and_the_service():
    code, found = lint("docker-dnat-first")
    assert code == 1
    f = next(f for f in found if f["code"] == "RG902")
    assert f["object"] == "iptables nat DOCKER rule 2"
    assert f["message"].startswith("-A DOCKER ! -i docker0 -p tcp -m tcp --dport 30080 -j DNAT "
                                   "--to-destination 10.244.1.31:8080 sends them elsewhere")
    assert "ahead of kube-proxy's jump at nat PREROUTING rule 2" in f["message"]
    assert "lab/web:http node port" in f["message"] and "lab/local" not in f["message"]
    assert f["hint"] and f["severity"] == "error"


def test_docker_user_drop_hits_every_service_port_from_the_uplink():
    _, found = lint("docker-user-drop")
    [f] = [f for f in found if f["code"] == "RG901"]
    assert f["object"] == "iptables filter DOCKER-USER rule 1"
    assert "-A DOCKER-USER ! -s 192.0.2.1/32 -i eth0 -j DROP" in f["message"]
    assert "lab/web:http node port" in f["message"] and "lab/local:http node port" in f["message"]


@pytest.mark.parametrize("variant", ["docker", "ufw"])
def test_forward_policy_drop_names_the_local_policy_nodeport(variant):
    _, found = lint(variant)
    dropped = next(f for f in found if f["code"] == "RG906")
    assert dropped["object"] == "iptables filter FORWARD policy"
    # the Local NodePort from outside, and the node's pods to both cluster IPs: none of them masqueraded
    assert dropped["message"].endswith("it hits 3 Service port(s): lab/local:http cluster IP, lab/web:http cluster "
                                       "IP, lab/local:http node port")
    kept = next(f for f in found if f["code"] == "RG907")
    assert "only by kube-proxy's ACCEPT" in kept["message"] and "lab/web:http node port" in kept["message"]


def test_a_firewall_reload_leaves_missing_jumps_and_its_reject():
    _, found = lint("firewalld-reloaded")
    missing = {f["object"] for f in found if f["code"] == "RG908"}
    assert {"iptables nat PREROUTING", "iptables nat OUTPUT", "iptables filter FORWARD"} <= missing
    rejects = {f["object"] for f in found if f["code"] == "RG901"}
    assert rejects == {"iptables filter INPUT rule 6", "iptables filter FORWARD rule 7"}


def test_without_files_the_dump_names_its_own_service_ports():
    _, found = lint("docker-dnat-first", files=False)
    f = next(f for f in found if f["code"] == "RG902")
    assert "lab/web:http node port" in f["message"]


def test_a_finding_on_an_unknown_ipset_says_what_it_assumes(tmp_path):
    # A DROP that only an ipset decides: without the sets both answers are followed, and the finding says which.
    dump = (DUMPS / "flannel" / "iptables.save").read_text().replace(
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\"",
        "-A FORWARD -m set --match-set blocked src -j DROP\n-A FORWARD -m comment --comment \"kubernetes forwarding "
        "rules\"", 1)
    f = tmp_path / "node.save"
    f.write_text(dump)
    r = run_cli("lint", CLUSTER, "--rules", str(f), "--json")
    [hit] = [x for x in json.loads(r.stdout) if x["code"] == "RG901"]
    assert "ipset blocked unknown: pass --ipsets" in hit["message"] or "blocked" in hit["message"]
    assert "(if " in hit["message"]
    sets = tmp_path / "sets"
    sets.write_text("create blocked hash:net family inet hashsize 1024 maxelem 65536\nadd blocked 198.51.100.0/24\n")
    r = run_cli("lint", CLUSTER, "--rules", str(f), "--ipsets", str(sets), "--json")
    assert not [x for x in json.loads(r.stdout) if x["code"] == "RG901"]


def test_ignore_and_bad_arguments():
    _, found = lint("docker-dnat-first", "--ignore", "RG902")
    assert "RG902" not in {f["code"] for f in found}
    r = run_cli("lint", CLUSTER, "--ipsets", str(DUMPS / "calico" / "ipset.save"))
    assert r.exit_code == 2 and "--ipsets goes with --rules" in r.stderr
    r = run_cli("lint", "--rules", str(DUMPS / "nope.save"))
    assert r.exit_code == 2 and "Traceback" not in r.output
