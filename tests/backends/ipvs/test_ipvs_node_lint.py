"""`rulegen lint --mode ipvs --rules DIR [FILES...]`: what on an IPVS node shadows Service traffic.

On the IPVS node dumps of tests/node_dumps/ipvs-*/ (built by
tests/nodedump_ipvs.py): the same codes as an iptables node where the
meaning is the same (RG901-RG908), RG909 for a foreign DROP/REJECT in
filter INPUT (which IPVS-mode Service traffic crosses before IPVS takes it)
and RG910 for one after IPVS chose a real server. The one-pitfall fixtures
(lint-fixtures/RG909-*, RG910-*) are checked with every other code's in
tests/core/test_lint.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rgtest import run_cli

DUMPS = Path(__file__).resolve().parents[2] / "node_dumps"
CLUSTER = str(DUMPS / "cluster.yaml")
NODE = "192.168.77.10"


def lint(dump: str | Path, *extra: str, files: bool = True) -> tuple[int, list[dict]]:
    d = dump if isinstance(dump, Path) else DUMPS / f"ipvs-{dump}"
    args = ["lint", "--mode", "ipvs", *([CLUSTER] if files else ["--node-ip", NODE, "--cluster-cidr", "10.244.0.0/16"]),
            "--rules", str(d), "--json", *extra]
    r = run_cli(*args)
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, [f for f in json.loads(r.stdout) if f["code"].startswith("RG9")]


@pytest.mark.parametrize("variant", ["calico", "docker", "docker-user-drop"])
def test_foreign_rules_that_let_ipvs_traffic_through_give_no_finding(variant):
    # Docker's FORWARD policy DROP and DOCKER-USER DROP shadow NodePorts on an iptables node, not on an IPVS one
    assert lint(variant)[1] == []


def test_firewalld_rejects_every_service_port_in_input():
    code, found = lint("firewalld")
    assert code == 1
    [f] = found
    assert f["code"] == "RG909" and f["severity"] == "error"
    assert f["object"] == "iptables filter INPUT rule 9"
    assert f["message"].startswith("-A INPUT -j REJECT --reject-with icmp-host-prohibited REJECTs them in filter "
                                   "INPUT, after kube-proxy's jumps in filter INPUT, before IPVS takes them")
    assert f["message"].endswith("it hits 5 Service port(s): lab/empty:http cluster IP, lab/local:http cluster IP, "
                                 "lab/local:http node port, lab/web:http cluster IP, lab/web:http node port")
    assert "KUBE-CLUSTER-IP" in f["hint"] and "node-port range" in f["hint"]


def test_a_host_drop_of_one_nodeport_in_input_names_that_service_only():
    _, [f] = lint("input-drop")
    assert f["code"] == "RG909" and f["object"] == "iptables filter INPUT rule 1"
    assert "ahead of kube-proxy's jump at filter INPUT rule 2" in f["message"]
    assert f["message"].endswith("it hits 1 Service port(s): lab/web:http node port")


def test_ufw_input_policy_drop_is_rg906_on_the_input_chain():
    _, [f] = lint("ufw")
    assert f["code"] == "RG906" and f["object"] == "iptables filter INPUT policy"
    assert "(IPVS-mode Service traffic crosses INPUT)" in f["message"]
    assert "filter INPUT" in f["hint"]


def test_without_files_the_virtual_servers_are_the_service_ports():
    _, [f] = lint("input-drop", files=False)
    assert f["code"] == "RG909"
    assert f["message"].endswith("it hits 1 Service port(s): TCP 192.168.77.10:30080")


def test_a_missing_jump_is_rg908(tmp_path):
    d = tmp_path / "node"
    shutil.copytree(DUMPS / "ipvs-calico", d)
    text = (d / "iptables.rules").read_text()
    (d / "iptables.rules").write_text("".join(x for x in text.splitlines(keepends=True)
                                              if not x.startswith("-A INPUT -m comment --comment \"kubernetes ipvs")))
    _, found = lint(d)
    missing = [f for f in found if f["code"] == "RG908"]
    assert [f["object"] for f in missing] == ["iptables filter INPUT"]
    assert "KUBE-IPVS-FILTER" in missing[0]["message"]


def test_a_finding_on_an_unknown_set_says_what_it_rests_on(tmp_path):
    # A DROP behind a Calico set the dump's sets lack: found, with the assumption named; --ipsets decides it.
    d = tmp_path / "node"
    shutil.copytree(DUMPS / "ipvs-calico", d)
    text = (d / "iptables.rules").read_text().replace(
        "*filter\n", "*filter\n", 1)
    lines = text.splitlines(keepends=True)
    i = next(n for n, x in enumerate(lines) if x.startswith("-A INPUT "))
    lines.insert(i, "-A INPUT -p tcp -m set --match-set cali40blocked src -j DROP\n")
    (d / "iptables.rules").write_text("".join(lines))
    _, [f] = lint(d)
    assert f["code"] == "RG909" and "cali40blocked" in f["message"] and "(if " in f["message"]
    sets = tmp_path / "sets"
    sets.write_text((d / "ipset.rules").read_text() + "create cali40blocked hash:net family inet\n"
                    "add cali40blocked 198.51.100.0/24\n")
    assert lint(d, "--ipsets", str(sets))[1] == []
