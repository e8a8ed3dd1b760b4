"""`rulegen diff --mode ipvs FILES --against DIR` on whole IPVS node dumps: kube-proxy's objects compared, the
rest counted in one line.

The folders tests/node_dumps/ipvs-*/ and examples/node-dump-ipvs/ hold an
IPVS node's three dumps (`ipvsadm -Sn`, `ipset save`, `iptables-save`) with
a Calico, Docker, firewalld or ufw shape beside kube-proxy's objects. By
default the diff keeps to kube-proxy's virtual servers, KUBE-* sets,
kube-ipvs0, KUBE-* chains and the built-in chains' jumps into them, and
says in the iptables mode's words how many rules in the built-in chains,
chains and ipsets it left out; `--all` compares them too. The expected
counts are taken here from the dump's text, line by line, not from the
code under test.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from rgtest import run_cli

TESTS = Path(__file__).resolve().parents[2]
ROOT = TESTS.parent
DUMPS = TESTS / "node_dumps"
CLUSTER_YAML = str(DUMPS / "cluster.yaml")
VARIANTS = ["calico", "docker", "docker-user-drop", "firewalld", "ufw", "input-drop"]
FOLDERS = [DUMPS / f"ipvs-{v}" for v in VARIANTS] + [ROOT / "examples" / "node-dump-ipvs"]
BUILTIN = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def foreign(folder: Path) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """From the text: the (table, chain) of each rule that is not kube-proxy's (in a built-in chain, one whose
    target is not a KUBE-* chain; any rule of a foreign chain), the chains declared that are neither built-in
    nor KUBE-*, the sets created that are not KUBE-*."""
    rules, chains, table = [], [], ""
    for line in (folder / "iptables.rules").read_text().splitlines():
        if line.startswith("*"):
            table = line[1:]
        m = re.match(r"-A (\S+) (.*)", line)
        if m and not m.group(1).startswith("KUBE-"):
            if m.group(1) not in BUILTIN or not re.search(r" -[jg] KUBE-", " " + m.group(2)):
                rules.append((table, m.group(1)))
        m = re.match(r":(\S+) ", line)
        if m and m.group(1) not in BUILTIN and not m.group(1).startswith("KUBE-"):
            chains.append(m.group(1))
    sets = [line.split()[1] for line in (folder / "ipset.rules").read_text().splitlines()
            if line.startswith("create ") and not line.split()[1].startswith("KUBE-")]
    return rules, chains, sets


def foreign_counts(folder: Path) -> tuple[int, int, int]:
    """(rules in built-in chains that are not kube-proxy's, foreign chains, foreign sets), from the text."""
    rules, chains, sets = foreign(folder)
    return sum(1 for _, c in rules if c in BUILTIN), len(chains), len(sets)


def expected_line(folder: Path) -> str:
    rules, chains, sets = foreign_counts(folder)
    others = f"{chains} chain(s)" + (f" and {sets} ipset(s)" if sets else "")
    return (f"{folder}: {rules} rule(s) outside kube-proxy's in the built-in chains, and {others} not "
            "kube-proxy's, are not compared (--all shows them)")


def diff(folder: Path, *extra: str, cluster: str = CLUSTER_YAML):
    return run_cli("diff", "--mode", "ipvs", cluster, "--against", str(folder), "--no-color", *extra)


def copy(tmp_path: Path, variant: str) -> Path:
    d = tmp_path / f"ipvs-{variant}"
    shutil.copytree(DUMPS / f"ipvs-{variant}", d)
    return d


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_kube_proxys_part_is_equal_and_one_line_counts_the_foreign_rules(folder):
    r = diff(folder)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == f"--- {folder}"
    assert lines[1] == f"+++ compiled from {CLUSTER_YAML} + kube-proxy's jump rules"
    assert lines[2].startswith("no differences (") and lines[2].endswith(", kube-proxy's objects only)")
    assert lines[3:] == [expected_line(folder)]
    rules, _, _ = foreign_counts(folder)
    assert rules > 0  # every fixture has something of its own in the built-in chains
    doc = json.loads(diff(folder, "--json").stdout)
    assert doc["notes"] == [expected_line(folder)]


def test_the_counts_of_the_calico_and_docker_nodes():
    """The figures themselves, read off the dumps by hand: Calico's three cali40 sets are counted, Docker makes
    none; the iptables mode's dumps of the same shapes say the same numbers of rules and chains."""
    calico, docker = DUMPS / "ipvs-calico", DUMPS / "ipvs-docker"
    assert diff(calico).stdout.splitlines()[-1] == (
        f"{calico}: 11 rule(s) outside kube-proxy's in the built-in chains, and 35 chain(s) and 3 ipset(s) not "
        "kube-proxy's, are not compared (--all shows them)")
    assert diff(docker).stdout.splitlines()[-1] == (
        f"{docker}: 10 rule(s) outside kube-proxy's in the built-in chains, and 5 chain(s) not kube-proxy's, "
        "are not compared (--all shows them)")
    r = run_cli("diff", CLUSTER_YAML, "--no-nfacct", "--against", str(DUMPS / "docker" / "iptables.save"))
    assert "10 rule(s) outside kube-proxy's in the built-in chains, and 5 chain(s) not kube-proxy's" in r.stdout


def test_all_lists_the_foreign_rules_chains_and_sets():
    r = diff(DUMPS / "ipvs-input-drop", "--all")
    assert r.exit_code == 1, r.output
    assert "table filter\n  chain INPUT: 1 removed\n    - 1       -i eth0 -p tcp -m tcp --dport 30080 -j DROP\n" \
        in r.stdout
    assert "are not compared" not in r.stdout
    r = diff(DUMPS / "ipvs-calico", "--all")
    assert r.exit_code == 1
    for name in ("cali40all-ipam-pools", "cali40masq-ipam-pools", "cali40all-vxlan-net"):
        assert f"  set {name}: removed (1 entry)\n" in r.stdout
    assert "  chain cali-INPUT: removed (7 rules)\n" in r.stdout
    rules, chains, sets = foreign(DUMPS / "ipvs-calico")
    touched = {(t, c) for t, c in rules if c in BUILTIN}  # built-in chains with a foreign rule: they differ
    assert r.stdout.splitlines()[-1] == (
        f"{len(sets)} sets, {len(chains) + len(touched)} chains differ: {len(sets)} entries removed, "
        f"{len(sets)} sets removed; {len(rules)} rules removed, {len(chains)} chains removed")
    assert "are not compared" not in r.stdout and "--all-chains" not in r.stdout
    # --all-chains is the same switch
    assert diff(DUMPS / "ipvs-calico", "--all-chains").stdout == r.stdout


def test_a_removed_real_server_is_still_reported_beside_the_count(tmp_path):
    d = copy(tmp_path, "calico")
    p = d / "ipvsadm.rules"
    text = p.read_text()
    gone = "-a -t 10.96.50.10:80 -r 10.244.2.23:8080 -m -w 1\n"
    assert gone in text
    p.write_text(text.replace(gone, ""))
    r = diff(d)
    assert r.exit_code == 1, r.output
    assert ("IPVS\n  virtual server TCP 10.96.50.10:80: 1 added\n"
            "    + real server 10.244.2.23:8080 (weight 1) added to TCP 10.96.50.10:80\n") in r.stdout
    assert r.stdout.splitlines()[-1] == expected_line(d)


def test_a_changed_set_entry_is_still_reported_and_a_changed_foreign_set_is_not(tmp_path):
    d = copy(tmp_path, "calico")
    p = d / "ipset.rules"
    text = p.read_text()
    assert "add KUBE-CLUSTER-IP 10.96.50.20,tcp:80\n" in text and "add cali40masq-ipam-pools " in text
    p.write_text(re.sub(r"add cali40masq-ipam-pools \S+", "add cali40masq-ipam-pools 10.99.0.0/16",
                        text.replace("add KUBE-CLUSTER-IP 10.96.50.20,tcp:80\n", "add KUBE-CLUSTER-IP 10.96.50.20,tcp:81\n")))
    r = diff(d)
    assert r.exit_code == 1, r.output
    assert ("ipsets\n  set KUBE-CLUSTER-IP: 1 added, 1 removed\n"
            "    - entry 10.96.50.20,tcp:81 removed from KUBE-CLUSTER-IP\n"
            "    + entry 10.96.50.20,tcp:80 added to KUBE-CLUSTER-IP\n") in r.stdout
    assert "cali40" not in r.stdout.replace(expected_line(d), "")
    assert r.stdout.splitlines()[-1] == expected_line(d)
    # a foreign set, rule or chain changed alone: still equal, still counted
    p.write_text(re.sub(r"add cali40masq-ipam-pools \S+", "add cali40masq-ipam-pools 10.99.0.0/16", text))
    ipt = d / "iptables.rules"
    ipt.write_text(ipt.read_text().replace(":cali-INPUT - [0:0]\n", ":cali-INPUT - [0:0]\n:cali-extra - [0:0]\n"))
    r = diff(d)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1] == expected_line(d) and "and 36 chain(s) and 3 ipset(s)" in r.stdout


def test_a_foreign_rule_that_jumps_nowhere_near_kube_proxy_is_counted_not_compared(tmp_path):
    d = copy(tmp_path, "docker")
    ipt = d / "iptables.rules"
    ipt.write_text(ipt.read_text().replace(
        "-A INPUT ", "-A INPUT -s 198.51.100.0/24 -j DROP\n-A INPUT ", 1))
    r = diff(d)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1] == expected_line(d) and "11 rule(s) outside" in r.stdout
    # a kube-proxy jump gone from a built-in chain is a difference, not a foreign rule
    ipt.write_text(re.sub(r'-A OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER\n',
                          "", ipt.read_text()))
    r = diff(d)
    assert r.exit_code == 1
    assert "  chain OUTPUT: 1 added\n" in r.stdout and "KUBE-IPVS-OUT-FILTER" in r.stdout


def test_a_dump_of_kube_proxys_objects_alone_has_no_count_line(tmp_path):
    out = tmp_path / "compiled"
    assert run_cli("compile", "--mode", "ipvs", CLUSTER_YAML, "-o", str(out)).exit_code == 0
    r = diff(out)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1].startswith("no differences (") and "not compared" not in r.stdout


def test_old_new_with_kube_only_counts_each_side(tmp_path):
    calico, docker = DUMPS / "ipvs-calico", DUMPS / "ipvs-docker"
    r = run_cli("diff", "--mode", "ipvs", str(calico), str(docker), "--kube-only", "--no-color")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-2:] == [expected_line(calico), expected_line(docker)]
    r = run_cli("diff", "--mode", "ipvs", str(calico), str(docker), "--no-color")
    assert r.exit_code == 1 and "not compared" not in r.stdout
