"""`rulegen lint --mode nftables --rules RULESET [FILES...]`: what in a node's other tables shadows Service traffic.

The one-pitfall fixtures (lint-fixtures/RG911-RG915, their node.nft built by
tests/nftnode.py in a namespace) are checked with every other code by
tests/core/test_lint.py; here the whole-node dumps of tests/node_dumps/nft-*
and what only an nftables node has.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rgtest import run_cli

TESTS = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TESTS))
import nftnode as N  # noqa: E402

VERSIONS = ("--nft-version", "1.0.6", "--kernel-version", "6.6.0")
NODE = ("--node-ip", N.NODE_IP, "--cluster-cidr", "10.244.0.0/16")


def lint(ruleset: Path, *files: str, extra: tuple[str, ...] = ()) -> tuple[int, list[dict]]:
    r = run_cli("lint", "--mode", "nftables", "--rules", str(ruleset), *files, *VERSIONS, *extra, "--json")
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, [f for f in json.loads(r.stdout) if f["code"].startswith("RG91")]


def dump(name: str) -> Path:
    return N.DUMPS / f"nft-{name}" / "ruleset.nft"


def test_a_forward_policy_drop_is_found_with_every_service_port_it_hits():
    for files, extra in (((str(N.CLUSTER),), ()), ((), NODE)):  # from a compile, and from the dump's own maps
        code, found = lint(dump("server-filter"), *files, extra=extra)
        assert code == 1
        assert [f["code"] for f in found] == ["RG913"], found
        f = found[0]
        assert f["object"] == "nftables inet filter chain forward policy"
        assert "policy drop" in f["message"] and "it hits 4 Service port(s)" in f["message"]
        assert "lab/web:http node port" in f["message"] and "lab/local:http cluster IP" in f["message"]


def test_firewalld_lets_services_through_and_dockers_xt_table_is_named():
    assert lint(dump("firewalld"), str(N.CLUSTER))[1] == []
    _, found = lint(dump("docker"), str(N.CLUSTER))
    assert [f["code"] for f in found] == ["RG915"]
    assert found[0]["object"] == "nftables ip filter" and "xt match physdev" in found[0]["message"]
    assert "iptables-save" in found[0]["hint"]


def test_a_ruleset_without_kube_proxys_table(tmp_path):
    f = tmp_path / "ruleset.nft"
    text = dump("server-filter").read_text()
    f.write_text(text[text.index("table inet filter"):])
    code, found = lint(f, str(N.CLUSTER))
    assert code == 1 and [x["code"] for x in found] == ["RG914"]
    assert found[0]["message"].startswith("table ip kube-proxy is missing from the ruleset")
    r = run_cli("trace", "--mode", "nftables", "--rules", str(f), "--dst", f"{N.NODE_IP}:30080")
    assert r.exit_code == 2 and "no table ip/ip6 kube-proxy in the listing (tables: inet filter)" in r.stderr


def test_ipsets_are_refused_for_an_nftables_node(tmp_path):
    r = run_cli("lint", "--mode", "nftables", "--rules", str(dump("firewalld")), "--ipsets", str(tmp_path / "x"),
                str(N.CLUSTER))
    assert r.exit_code == 2 and "--ipsets" in r.stderr and "nft list ruleset" in r.stderr


# ------------------------------------------------------------------ diff --against a whole ruleset


def test_diff_keeps_to_kube_proxys_table_and_counts_the_foreign_base_chain_rules():
    r = run_cli("diff", "--mode", "nftables", str(N.CLUSTER), "--against", str(dump("firewalld")))
    assert r.exit_code == 0, r.output
    assert "table kube-proxy only" in r.stdout
    # inet firewalld's base chains hold 24 rules: raw 3, mangle 1, nat 1 + 1, filter INPUT 6, FORWARD 7, OUTPUT 5
    assert ("24 foreign rule(s) sit in other tables' base chains on kube-proxy's hooks (inet firewalld), not "
            "compared (--all shows them)") in r.stdout + r.stderr
    r = run_cli("diff", "--mode", "nftables", str(N.CLUSTER), "--against", str(dump("docker")), "--all", "--json")
    assert r.exit_code == 1, r.output
    doc = r.stdout
    assert "docker-bridges" in doc and "raw-PREROUTING" in doc and '"ip filter"' in doc


def test_diff_of_two_rulesets_compares_every_table(tmp_path):
    old = dump("firewalld").read_text()
    new = old.replace("\t\ttcp dport 9090 ct state { new, untracked } accept\n", "")
    assert new != old
    (tmp_path / "old.nft").write_text(old)
    (tmp_path / "new.nft").write_text(new)
    r = run_cli("diff", "--mode", "nftables", str(tmp_path / "old.nft"), str(tmp_path / "new.nft"))
    assert r.exit_code == 1, r.output
    assert "table inet firewalld" in r.stdout and "filter_IN_public_allow" in r.stdout and "tcp dport 9090" in r.stdout
    r = run_cli("diff", "--mode", "nftables", str(tmp_path / "old.nft"), str(tmp_path / "old.nft"))
    assert r.exit_code == 0, r.output


def test_a_chain_is_traced_back_to_its_base_chains_through_jumps_and_verdict_maps():
    from rulegen.backends.nftables.dump import read_text
    from rulegen.backends.nftables.nodelint import _bases_of

    d = read_text(dump("docker").read_text(), "docker")
    reach = _bases_of(d.foreign[0])
    assert reach["filter-forward-in__docker0"] == {"filter-FORWARD"}  # through @filter-forward-in-jumps
    assert reach["nat-prerouting-and-output"] == {"nat-PREROUTING", "nat-OUTPUT"}
    assert reach["raw-PREROUTING"] == {"raw-PREROUTING"}
    fw = read_text(dump("firewalld").read_text(), "firewalld")
    assert _bases_of(fw.foreign[0])["filter_IN_public_allow"] == {"filter_INPUT"}  # goto, then jump


def test_trace_refuses_ipsets_for_an_nftables_node(tmp_path):
    r = run_cli("trace", "--mode", "nftables", "--rules", str(dump("firewalld")), "--ipsets", str(tmp_path / "x"),
                "--node-ip", N.NODE_IP, "--dst", f"{N.NODE_IP}:30080")
    assert r.exit_code == 2 and "--ipsets" in r.stderr and "Traceback" not in r.output


def test_an_nft_ruleset_read_in_iptables_mode_says_which_mode_reads_it():
    for cmd in (("trace", "--dst", f"{N.NODE_IP}:30080"), ("lint",)):
        r = run_cli(*cmd, "--rules", str(dump("firewalld")))
        assert r.exit_code == 2 and "(this is an nftables ruleset or script: add --mode nftables)" in r.stderr, r.output
