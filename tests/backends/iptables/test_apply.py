"""`rulegen apply`: full first apply, nothing on a repeat, only what changed later.

Most tests run against `Kernel` (no root); the `root` ones load real
network namespaces (prefix `rgt-apply-`, always deleted) and compare
iptables-save with the compile through `spec.canonical`, and a partial
apply with a fresh full apply of the same input in a second namespace.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from nshelp import namespace_names
from rgtest import compile_objects

import rulegen.dataplane.xtables.sync as syncmod
from rulegen.apply import Kernel, apply
from rulegen.backends.iptables.apply import STALE_PREFIXES
from rulegen.backends.iptables.compile import jump_rules
from rulegen.cli import main
from rulegen.dataplane.nft.fake import FakeNft
from rulegen.dataplane.xtables.fake import FakeXtables
from rulegen.dataplane.xtables.model import BUILTIN_CHAINS, Rule, Ruleset, Table
from rulegen.dataplane.xtables.parse import parse
from rulegen.dataplane.xtables.restore import ApplyError
from rulegen.dataplane.xtables.spec import canonical
from rulegen.diagnostics import Report, UsageError
from rulegen.kernel.fake import FakeNamespaces
from rulegen.pipeline import Compiled, compile_files

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "web-frontend" / "cluster.yaml"

# ---------------------------------------------------------------------- inputs


def _svc(name, cip, port, pname="http", node_port=None, fam=4):
    p = {"name": pname, "protocol": "TCP", "port": port}
    if node_port:
        p["nodePort"] = node_port
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "NodePort" if node_port else "ClusterIP", "clusterIP": cip, "clusterIPs": [cip],
                     "ipFamilies": ["IPv6" if fam == 6 else "IPv4"], "ports": [p]}}


def _slice(svc, ips, port, pname="http", fam=4):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc}-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv6" if fam == 6 else "IPv4",
            "ports": [{"name": pname, "protocol": "TCP", "port": port}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node-a"} for ip in ips]}


NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.56.10"},
                                 {"type": "InternalIP", "address": "fd00:56::10"}]}}


def cluster(web=("10.244.1.11", "10.244.2.21"), api=("10.244.1.20", "10.244.1.21"), with_api=True,
            empty=False):
    objs = [NODE, _svc("web", "10.96.0.80", 80, node_port=30080), _slice("web", web, 3000)]
    if with_api:
        objs += [_svc("api", "10.96.0.43", 443, pname="https"), _slice("api", api, 8443, pname="https")]
    if empty:  # a service without endpoints: filter-only REJECT rules
        objs.append(_svc("down", "10.96.0.99", 8080))
    return objs


def cluster6(eps=("fd00:10:244:1::11", "fd00:10:244:1::12")):
    return [NODE, _svc("web6", "fd00:10:96::80", 80, node_port=30081, fam=6),
            _slice("web6", eps, 3000, fam=6)]


def compiled(objs, **flags) -> Compiled:
    """OBJS compiled with the cluster CIDR of their family; no input problem allowed."""
    report = Report()
    base = {"cluster_cidr": ["fd00:10:244::/56"] if flags.get("ip_family") == "ipv6" else ["10.244.0.0/16"]}
    base.update(flags)
    c = compile_objects(objs, base, report=report)
    assert not report.errors, report.lines()
    return c


def with_rule(c: Compiled, table: str, rule: Rule, declare: str | None = None) -> Compiled:
    """A copy of C whose TABLE has one more rule (and chain): to make payloads fail."""
    tabs = []
    for t in c.ir.tables:
        if t.name == table:
            chains = t.chains + ((declare,) if declare else ())
            t = Table(t.name, chains, t.rules + (rule,), t.policies, t.deletes)
        tabs.append(t)
    return dataclasses.replace(c, ir=Ruleset(c.ir.family, tuple(tabs)))


# ---------------------------------------------------------------------- helpers


def kube_state(kernel: Kernel, ns: str, family: int = 4) -> dict:
    """Every non-empty chain of the fake namespace, per table (empty built-ins dropped)."""
    out = {}
    for tname, t in kernel.xtables.tables(ns, family).items():
        chains = {c: list(r) for c, r in t.chains.items() if r or c not in t.policies}
        if chains:
            out[tname] = chains
    return out


def sent_chains(payload: str) -> set[str]:
    return {ln[1:].split()[0] for ln in payload.splitlines() if ln.startswith(":")}


def compiled_chains(c: Compiled) -> dict[str, dict[str, list[str]]]:
    return {t.name: t.by_chain() for t in c.ir.tables}


# ---------------------------------------------------------------------- fake: first and repeat


def test_first_apply_sends_full_payload_and_jumps(kernel):
    c = compiled(cluster())
    res = apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=None)
    assert res.created and kernel.netns.exists("rgt-apply-a")
    want = compiled_chains(c)
    assert {x for _, x in res.added} == set(want["filter"]) | set(want["nat"])
    assert not res.changed and not res.removed
    state = kube_state(kernel, "rgt-apply-a")
    for table, chains in want.items():
        for chain, specs in chains.items():
            assert state[table][chain] == specs, (table, chain)
    # every jump, once, in kube-proxy's order: inserted at 1, so the last listed is first
    jumps = jump_rules(c.settings)
    assert len(res.jumps) == len(jumps)
    for table, chain, _ in jumps:
        expected = [a for t, ch, a in reversed(jumps) if (t, ch) == (table, chain)]
        assert state[table][chain] == expected
    assert state["filter"]["INPUT"][0] == "-j KUBE-FIREWALL"
    assert [s.rsplit(" ", 1)[1] for s in state["filter"]["INPUT"]] == [
        "KUBE-FIREWALL", "KUBE-PROXY-FIREWALL", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES"]
    n_rules = sum(len(t.rules) + len(t.chains) for t in c.ir.tables)
    assert res.lines == n_rules + len(jumps)
    assert res.payload.count("COMMIT") == 2
    # --test first, then one restore per table
    restores = [e for e in kernel.xtables.log if e[0] == "restore"]
    assert [e[3] for e in restores] == [True, False, False]
    assert kernel.netns.spaces["rgt-apply-a"].nfacct == {"ct_state_invalid_dropped_pkts", "localhost_nps_accepted_pkts"}
    assert kernel.netns.spaces["rgt-apply-a"].sysctls == {"net.ipv4.conf.all.route_localnet": "1"}


def test_second_apply_sends_nothing_and_keeps_one_copy(kernel):
    c = compiled(cluster())
    apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=None)
    before = kube_state(kernel, "rgt-apply-a")
    n_restores = len(kernel.xtables.restores())
    res = apply(compiled(cluster()), "rgt-apply-a", kernel=kernel, state_dir=None)
    assert res.lines == 0 and res.payload == ""
    assert not (res.added or res.changed or res.removed or res.jumps)
    assert len(kernel.xtables.restores()) == n_restores
    assert kube_state(kernel, "rgt-apply-a") == before
    for chains in before.values():
        for chain, specs in chains.items():
            assert len(specs) == len(set(specs)), f"duplicate rule in {chain}"


def _save_like_spelling(spec: str) -> str:
    """Roughly how iptables-save prints a rule back: /32 on addresses, short marks, 11 decimals."""
    s = re.sub(r"(-[sd] \d+\.\d+\.\d+\.\d+)(?=\s)", r"\1/32", spec + " ").rstrip()
    s = s.replace("0x00004000", "0x4000")
    s = re.sub(r"--probability (\d\.\d{10})", lambda m: f"--probability {m.group(1)}0", s)
    s = s.replace("--or-mark 0x4000", "--set-xmark 0x4000/0x4000")
    return s


def test_repeat_against_kernel_spelling_sends_nothing(kernel):
    kernel.xtables.spelling = _save_like_spelling
    c = compiled(cluster())
    apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=None)
    live = parse(kernel.xtables.save("rgt-apply-a"))
    assert "-d 10.96.0.80/32" in "\n".join(r.spec for r in live.table("nat").rules)  # spelling differs
    res = apply(c, "rgt-apply-a", kernel=kernel, state_dir=None)
    assert res.lines == 0 and not res.changed


def test_cache_recognises_chains_canonical_cannot(kernel, tmp_path, monkeypatch):
    # A spelling the canonical form does not undo: only the cache of the last
    # apply (compiled hash + live hash per chain) can tell the chain is unchanged.
    monkeypatch.setattr(syncmod, "READBACK_MIN", 1)
    kernel.xtables.spelling = lambda s: s.replace("--comment", "--comment-x")
    c = compiled(cluster())
    apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=str(tmp_path))
    assert (tmp_path / "rgt-apply-a" / "iptables-ipv4.json").exists()
    res = apply(c, "rgt-apply-a", kernel=kernel, state_dir=str(tmp_path))
    assert res.lines == 0
    without = apply(c, "rgt-apply-a", kernel=kernel, state_dir=None)
    assert without.changed, "without the cache the odd spelling must look changed"
    # a namespace made again under the same name must not trust the old cache
    kernel.netns.delete("rgt-apply-a")
    again = apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=str(tmp_path))
    assert {x for _, x in again.added} == {x for t in c.ir.tables for x in t.chains}


def test_small_sends_learn_the_kernel_spelling_on_the_next_run(kernel, tmp_path):
    # Few chains sent: no read-back. If the next run cannot recognise them,
    # it resends them once and then reads their spelling back. (Legacy: no
    # generation, so every run reads the live tables.)
    kernel = kernel.with_iptables("legacy")
    kernel.xtables.spelling = lambda s: s.replace("--comment", "--comment-x")
    c = compiled(cluster())
    assert sum(len(t.chains) for t in c.ir.tables) < syncmod.READBACK_MIN
    apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=str(tmp_path))
    saves = sum(1 for e in kernel.xtables.log if e[0] == "save")
    assert saves == 1  # only the read before sending
    second = apply(c, "rgt-apply-a", kernel=kernel, state_dir=str(tmp_path))
    assert second.changed and sum(1 for e in kernel.xtables.log if e[0] == "save") == saves + 2
    assert apply(c, "rgt-apply-a", kernel=kernel, state_dir=str(tmp_path)).lines == 0


def test_caches_of_deleted_namespaces_are_pruned(kernel, tmp_path):
    c = compiled(cluster())
    (tmp_path / "not-a-cache.txt").write_text("keep me")
    apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=str(tmp_path))
    apply(c, "rgt-apply-b", create=True, kernel=kernel, state_dir=str(tmp_path))
    assert (tmp_path / "rgt-apply-a" / "iptables-ipv4.json").exists()
    kernel.netns.delete("rgt-apply-a")
    apply(c, "rgt-apply-b", kernel=kernel, state_dir=str(tmp_path))
    assert not (tmp_path / "rgt-apply-a").exists()
    assert (tmp_path / "rgt-apply-b" / "iptables-ipv4.json").exists()
    assert (tmp_path / "not-a-cache.txt").read_text() == "keep me"


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_cache_is_not_trusted_when_live_chain_was_edited(kernel, tmp_path, backend):
    kernel = kernel.with_iptables(backend)
    c = compiled(cluster())
    apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=str(tmp_path))
    svc = next(x for x in c.ir.table("nat").chains if x.startswith("KUBE-SVC-"))
    last = kernel.xtables.tables("rgt-apply-a")["nat"].chains[svc][-1]
    # someone deleted a rule by hand (`iptables -D`: nf_tables counts it as a change)
    kernel.xtables.restore("rgt-apply-a", f"*nat\n-D {svc} {last}\nCOMMIT\n")
    res = apply(c, "rgt-apply-a", kernel=kernel, state_dir=str(tmp_path))
    assert res.source == "dump"
    assert res.changed == [("nat", svc)]
    assert kube_state(kernel, "rgt-apply-a")["nat"][svc] == compiled_chains(c)["nat"][svc]


def test_deleted_jump_is_put_back_alone(kernel):
    c = compiled(cluster())
    apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=None)
    nat = kernel.xtables.tables("rgt-apply-a")["nat"]
    nat.chains["PREROUTING"].clear()
    res = apply(c, "rgt-apply-a", kernel=kernel, state_dir=None)
    assert res.jumps == [("nat", "PREROUTING", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES')]
    assert res.lines == 1 and res.payload.startswith("*nat\n-I PREROUTING 1 ")
    assert nat is not kernel.xtables.tables("rgt-apply-a")["nat"]  # committed as a new table
    assert kernel.xtables.tables("rgt-apply-a")["nat"].chains["PREROUTING"] == [
        '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES']


# ---------------------------------------------------------------------- fake: partial updates


def _fresh(objs, kernel) -> dict:
    apply(compiled(objs), "rgt-apply-fresh", create=True, kernel=kernel, state_dir=None)
    return kube_state(kernel, "rgt-apply-fresh")


def test_endpoint_change_sends_only_that_service(kernel):
    old = compiled(cluster())
    apply(old, "rgt-apply-a", create=True, kernel=kernel, state_dir=None)
    new_objs = cluster(web=("10.244.1.11", "10.244.2.22"))
    new = compiled(new_objs)
    res = apply(new, "rgt-apply-a", kernel=kernel, state_dir=None)
    web_svc = next(r.spec.rsplit(" ", 1)[1] for r in new.ir.table("nat").rules
                   if r.chain == "KUBE-SERVICES" and "default/web:http cluster IP" in r.spec)
    new_seps = set(new.ir.table("nat").chains) - set(old.ir.table("nat").chains)
    gone_seps = set(old.ir.table("nat").chains) - set(new.ir.table("nat").chains)
    assert len(new_seps) == 1 and len(gone_seps) == 1
    assert res.changed == [("nat", web_svc)]
    assert {c for _, c in res.added} == new_seps
    assert {c for _, c in res.removed} == gone_seps
    assert sent_chains(res.payload) == {web_svc} | new_seps | gone_seps
    assert "KUBE-SERVICES" not in res.payload and "api" not in res.payload
    assert f"-X {next(iter(gone_seps))}" in res.payload
    assert kube_state(kernel, "rgt-apply-a") == _fresh(new_objs, kernel)


def test_removed_service_deletes_its_chains(kernel):
    old = compiled(cluster())
    apply(old, "rgt-apply-a", create=True, kernel=kernel, state_dir=None)
    live_before = kube_state(kernel, "rgt-apply-a")
    new_objs = cluster(with_api=False)
    res = apply(compiled(new_objs), "rgt-apply-a", kernel=kernel, state_dir=None)
    api_chains = {c for c in old.ir.table("nat").chains if c.startswith(STALE_PREFIXES)} - \
        set(compiled(new_objs).ir.table("nat").chains)
    assert api_chains and {c for _, c in res.removed} == api_chains
    for c in api_chains:
        assert f"-X {c}" in res.payload
    assert ("nat", "KUBE-SERVICES") in res.changed
    # every chain that jumped to a removed chain is rewritten in the same payload
    sent = sent_chains(res.payload)
    for chain, specs in live_before["nat"].items():
        if any(s.rsplit(" ", 1)[-1] in api_chains for s in specs):
            assert chain in sent, chain
    state = kube_state(kernel, "rgt-apply-a")
    assert not api_chains & set(state["nat"])
    assert state == _fresh(new_objs, kernel)


def test_foreign_chains_are_never_touched(kernel):
    c = compiled(cluster())
    apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=None)
    kernel.xtables.restore("rgt-apply-a", "*nat\n:MY-CHAIN - [0:0]\n:KUBE-SEP-OLDBUTPINNED00 - [0:0]\n"
                         ":KUBE-SEP-OLDANDFREE00000 - [0:0]\n:KUBE-CUSTOM - [0:0]\n"
                         "-A MY-CHAIN -j KUBE-SEP-OLDBUTPINNED00\n-A KUBE-CUSTOM -j ACCEPT\n"
                         "-A PREROUTING -j MY-CHAIN\nCOMMIT\n")
    res = apply(c, "rgt-apply-a", kernel=kernel, state_dir=None)
    assert res.removed == [("nat", "KUBE-SEP-OLDANDFREE00000")]
    assert res.kept == [("nat", "KUBE-SEP-OLDBUTPINNED00", "MY-CHAIN")]
    assert "kept stale nat chain KUBE-SEP-OLDBUTPINNED00" in res.summary()
    nat = kernel.xtables.tables("rgt-apply-a")["nat"].chains
    assert nat["MY-CHAIN"] == ["-j KUBE-SEP-OLDBUTPINNED00"] and nat["KUBE-CUSTOM"] == ["-j ACCEPT"]
    assert "KUBE-SEP-OLDBUTPINNED00" in nat and "KUBE-SEP-OLDANDFREE00000" not in nat
    assert nat["PREROUTING"][-1] == "-j MY-CHAIN"
    assert "MY-CHAIN" not in sent_chains(res.payload) and "KUBE-CUSTOM" not in res.payload


# ---------------------------------------------------------------------- fake: failures


def test_syntax_error_is_caught_by_test_and_nothing_sent(kernel):
    c = compiled(cluster())
    apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=None)
    before = kube_state(kernel, "rgt-apply-a")
    # nat is the larger table and loads first; filter is checked with --test before it
    bad = with_rule(compiled(cluster(with_api=False, empty=True)), "filter",
                    Rule("KUBE-SERVICES", '-m comment --comment "oops -j ACCEPT'))
    n = len(kernel.xtables.restores())
    with pytest.raises(ApplyError) as ei:
        apply(bad, "rgt-apply-a", kernel=kernel, state_dir=None)
    e = ei.value
    assert e.line == '-A KUBE-SERVICES -m comment --comment "oops -j ACCEPT'
    assert e.line in str(e) and f"line {e.line_no} of the payload" in str(e) and "nothing was sent" in str(e)
    assert kernel.xtables.restores(test=True)[-1].count("*") == 1  # only the smaller table was --tested
    assert len(kernel.xtables.restores()) == n
    assert kube_state(kernel, "rgt-apply-a") == before


def test_refusal_in_the_first_table_loaded_changes_nothing(kernel):
    c = compiled(cluster())
    apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=None)
    before = kube_state(kernel, "rgt-apply-a")
    bad = with_rule(compiled(cluster(with_api=False, empty=True)), "nat", Rule("KUBE-SERVICES", "-j KUBE-NOT-THERE"))
    with pytest.raises(ApplyError) as ei:
        apply(bad, "rgt-apply-a", kernel=kernel, state_dir=None)
    assert ei.value.table == "nat" and "previous rules are left in place" in str(ei.value)
    assert "put back" not in str(ei.value)
    assert kube_state(kernel, "rgt-apply-a") == before


def test_kernel_refusal_in_a_later_table_puts_the_first_back(kernel):
    # --test accepts a jump to a missing chain (as the real one does); the
    # kernel refuses it in *filter after the larger *nat was already loaded.
    c = compiled(cluster())
    apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=None)
    before = kube_state(kernel, "rgt-apply-a")
    newc = compiled(cluster(with_api=False, empty=True))  # changes both tables
    bad = with_rule(newc, "filter", Rule("KUBE-SERVICES", "-j KUBE-NOT-THERE"))
    with pytest.raises(ApplyError) as ei:
        apply(bad, "rgt-apply-a", kernel=kernel, state_dir=None)
    e = ei.value
    assert e.line == "-A KUBE-SERVICES -j KUBE-NOT-THERE" and e.table == "filter"
    payload = kernel.xtables.restores(test=True)[-1]
    assert [ln for ln in payload.splitlines() if ln == e.line]
    dry = apply(bad, "rgt-apply-a", dry_run=True, kernel=kernel, state_dir=None)
    assert dry.payload.splitlines()[e.line_no - 1] == e.line  # line counted in the whole payload
    assert "Chain 'KUBE-NOT-THERE' does not exist" in str(e) and "nat put back as before" in str(e)
    assert kube_state(kernel, "rgt-apply-a") == before
    # and the next good apply still works from there
    res = apply(newc, "rgt-apply-a", kernel=kernel, state_dir=None)
    assert res.lines > 0 and kube_state(kernel, "rgt-apply-a") == _fresh(cluster(with_api=False, empty=True), kernel)


def test_refused_first_apply_leaves_nothing(kernel):
    kernel.xtables.refuse = lambda line: "No such file or directory" if "--nfacct-name ct_state" in line else None
    c = compiled(cluster())
    with pytest.raises(ApplyError) as ei:
        apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=None)
    assert "--nfacct-name ct_state_invalid_dropped_pkts" in ei.value.line and "nat put back" in str(ei.value)
    assert kube_state(kernel, "rgt-apply-a") == {}


# ---------------------------------------------------------------------- fake: options


def test_dry_run_sends_nothing_and_shows_payload(kernel):
    c = compiled(cluster())
    res = apply(c, "rgt-apply-a", create=True, dry_run=True, kernel=kernel, state_dir=None)
    assert not kernel.netns.exists("rgt-apply-a") and not res.created
    assert res.dry_run and "would send" in res.summary()
    assert parse(res.payload.replace("-I ", "-A ")).table("nat") is not None
    assert [e for e in kernel.xtables.log if e[0] == "restore"] == []
    real = apply(c, "rgt-apply-a", create=True, kernel=kernel, state_dir=None)
    assert real.payload == res.payload and real.lines == res.lines
    n = len(kernel.xtables.restores())
    before = kube_state(kernel, "rgt-apply-a")
    again = apply(compiled(cluster(with_api=False)), "rgt-apply-a", dry_run=True, kernel=kernel, state_dir=None)
    assert again.removed and "-X " in again.payload
    assert len(kernel.xtables.restores()) == n and kube_state(kernel, "rgt-apply-a") == before


def test_missing_namespace_without_create_is_usage_error(kernel):
    with pytest.raises(UsageError, match=r"'rgt-apply-nope' does not exist \(use --create"):
        apply(compiled(cluster()), "rgt-apply-nope", kernel=kernel, state_dir=None)
    assert kernel.netns.list() == []


def test_bad_namespace_name_is_usage_error(kernel):
    with pytest.raises(UsageError, match="not a valid namespace name"):
        apply(compiled(cluster()), "../etc", create=True, kernel=kernel, state_dir=None)



def test_ipv6_uses_family_6_tables(kernel):
    c = compiled(cluster6(), ip_family="ipv6")
    res = apply(c, "rgt-apply-6", create=True, kernel=kernel, state_dir=None)
    assert res.family == 6 and kernel.xtables.tables("rgt-apply-6", 4) == {}
    state = kube_state(kernel, "rgt-apply-6", 6)
    assert "KUBE-FIREWALL" not in state["filter"]
    seps = [s for k, v in state["nat"].items() if k.startswith("KUBE-SEP-") for s in v]
    assert any(s.endswith("DNAT --to-destination [fd00:10:244:1::11]:3000") for s in seps)
    assert "net.ipv4.conf.all.route_localnet" not in kernel.netns.spaces["rgt-apply-6"].sysctls
    assert apply(c, "rgt-apply-6", kernel=kernel, state_dir=None).lines == 0


# ---------------------------------------------------------------------- CLI


def test_cli_needs_netns_option():
    r = CliRunner().invoke(main, ["apply", str(EXAMPLE)])
    assert r.exit_code == 2 and "--netns" in r.output


def test_cli_without_root_is_clear_error(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    r = CliRunner().invoke(main, ["apply", str(EXAMPLE), "--netns", "rgt-apply-x", "--create"])
    assert r.exit_code == 2
    assert "rulegen apply needs root" in r.output and "Traceback" not in r.output


@pytest.mark.skipif(os.geteuid() != 0, reason="a missing namespace is only reported after the root check")
def test_cli_missing_namespace_exit_2():
    name = f"rgt-apply-missing-{uuid.uuid4().hex[:8]}"
    r = CliRunner().invoke(main, ["apply", str(EXAMPLE), "--netns", name])
    assert r.exit_code == 2
    assert f"network namespace '{name}' does not exist (use --create" in r.output
    assert not os.path.exists(f"/run/netns/{name}")


# ---------------------------------------------------------------------- real namespaces

root = pytest.mark.root
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("iptables-restore"),
                                reason="needs root and iptables-restore")


@pytest.fixture
def real(tmp_path):
    """Kernel plus a name factory; every namespace it names is deleted afterwards."""
    with namespace_names("rgt-apply") as name:
        yield Kernel.real(), name, str(tmp_path / "state")


def save_chains(kernel: Kernel, ns: str, family: int = 4) -> dict[str, dict[str, list[str]]]:
    rs = parse(kernel.xtables.save(ns, family), family=family)
    return {t.name: t.by_chain() for t in rs.tables}


def canon(chains: dict[str, dict[str, list[str]]]) -> dict:
    """Canonical spelling per chain; empty built-in chains dropped (the compile has none)."""
    return {t: {c: [canonical(s) for s in specs] for c, specs in ch.items() if specs or c not in BUILTIN_CHAINS[t]}
            for t, ch in chains.items()}


def expected_live(c: Compiled) -> dict:
    """The compile plus kube-proxy's jumps, in canonical spelling."""
    out = {t.name: {ch: [canonical(s) for s in specs] for ch, specs in t.by_chain().items()} for t in c.ir.tables}
    for table, chain, args in jump_rules(c.settings):
        out[table].setdefault(chain, []).insert(0, canonical(args))
    return out


@root
@needs_root
def test_real_apply_matches_compile_plus_jumps(real):
    kernel, name, state = real
    c = compile_files([str(EXAMPLE)], {})
    ns = name()
    res = apply(c, ns, create=True, kernel=kernel, state_dir=state)
    assert res.created and res.lines > 0
    assert canon(save_chains(kernel, ns)) == expected_live(c)

    # independent check: the plain payload loaded by hand, jumps inserted with -I 1
    ns2 = name()
    kernel.netns.create(ns2)
    kernel.xtables.ensure_nfacct(ns2, ["ct_state_invalid_dropped_pkts", "localhost_nps_accepted_pkts"])
    kernel.xtables.restore(ns2, c.text)
    for table, chain, args in jump_rules(c.settings):
        kernel.xtables.insert_rule(ns2, table, chain, args)
    assert save_chains(kernel, ns) == save_chains(kernel, ns2)


@root
@needs_root
def test_real_apply_twice_sends_nothing(real):
    kernel, name, state = real
    c = compile_files([str(EXAMPLE)], {})
    ns = name()
    apply(c, ns, create=True, kernel=kernel, state_dir=state)
    dump = kernel.xtables.save(ns)
    for cache in (state, None):  # by the cache, and by canonical comparison alone
        res = apply(c, ns, kernel=kernel, state_dir=cache)
        assert res.lines == 0 and res.payload == "" and not res.jumps
    after = kernel.xtables.save(ns)
    strip = lambda t: [ln for ln in t.splitlines() if not ln.startswith("#")]  # noqa: E731
    assert strip(after) == strip(dump)
    rules = [ln for ln in strip(after) if ln.startswith("-A ")]
    assert len(rules) == len(set(rules))


@root
@needs_root
def test_real_endpoint_change_equals_fresh_apply(real):
    kernel, name, state = real
    ns, fresh = name(), name()
    apply(compiled(cluster()), ns, create=True, kernel=kernel, state_dir=state)
    new_objs = cluster(web=("10.244.1.11", "10.244.2.22"))
    new = compiled(new_objs)
    res = apply(new, ns, kernel=kernel, state_dir=state)
    assert len(res.changed) == 1 and res.changed[0][1].startswith("KUBE-SVC-")
    assert len(res.added) == 1 and len(res.removed) == 1
    assert sent_chains(res.payload) == {c for _, c in res.changed + res.added + res.removed}
    apply(new, fresh, create=True, kernel=kernel, state_dir=None)
    assert save_chains(kernel, ns) == save_chains(kernel, fresh)
    assert canon(save_chains(kernel, ns)) == expected_live(new)
    # removing a service: its chains go, the result equals a fresh apply too
    gone = compiled(cluster(web=("10.244.1.11", "10.244.2.22"), with_api=False))
    res2 = apply(gone, ns, kernel=kernel, state_dir=state)
    assert res2.removed and all(c.startswith(STALE_PREFIXES) for _, c in res2.removed)
    assert canon(save_chains(kernel, ns)) == expected_live(gone)


@root
@needs_root
def test_real_invalid_payload_leaves_old_state(real):
    kernel, name, state = real
    ns = name()
    apply(compiled(cluster()), ns, create=True, kernel=kernel, state_dir=state)
    before = kernel.xtables.save(ns)
    strip = lambda t: [ln for ln in t.splitlines() if not ln.startswith("#")]  # noqa: E731
    newc = compiled(cluster(with_api=False, empty=True))
    # refused by --test: an unknown match (in filter, which is checked before nat loads)
    bad1 = with_rule(newc, "filter", Rule("KUBE-SERVICES", "-m nosuchmatch -j ACCEPT"))
    with pytest.raises(ApplyError) as e1:
        apply(bad1, ns, kernel=kernel, state_dir=state)
    assert e1.value.line == "-A KUBE-SERVICES -m nosuchmatch -j ACCEPT" and "nosuchmatch" in str(e1.value)
    assert strip(kernel.xtables.save(ns)) == strip(before)
    # accepted by --test, refused by the kernel in *filter after *nat was loaded
    bad2 = with_rule(newc, "filter", Rule("KUBE-SERVICES", "-j KUBE-NOT-THERE"))
    with pytest.raises(ApplyError) as e2:
        apply(bad2, ns, kernel=kernel, state_dir=state)
    assert e2.value.line == "-A KUBE-SERVICES -j KUBE-NOT-THERE" and "nat put back" in str(e2.value)
    assert strip(kernel.xtables.save(ns)) == strip(before)
    # the good one then applies cleanly
    apply(newc, ns, kernel=kernel, state_dir=state)
    assert canon(save_chains(kernel, ns)) == expected_live(newc)


@root
@needs_root
def test_real_ipv6_apply(real):
    kernel, name, state = real
    ns = name()
    c = compiled(cluster6(), ip_family="ipv6")
    res = apply(c, ns, create=True, kernel=kernel, state_dir=state)
    assert res.family == 6 and res.lines > 0
    assert canon(save_chains(kernel, ns, 6)) == expected_live(c)
    assert "KUBE-SERVICES" not in kernel.xtables.save(ns, 4)
    c2 = compiled(cluster6(eps=("fd00:10:244:1::11", "fd00:10:244:1::13")), ip_family="ipv6")
    res2 = apply(c2, ns, kernel=kernel, state_dir=None)
    assert len(res2.added) == 1 and len(res2.removed) == 1
    assert canon(save_chains(kernel, ns, 6)) == expected_live(c2)
    assert apply(c2, ns, kernel=kernel, state_dir=None).lines == 0


@root
@needs_root
def test_real_cli_apply_dry_run_and_timings(real, tmp_path):
    kernel, name, state = real
    ns = name()
    env = dict(os.environ, RULEGEN_STATE_DIR=state)
    exe = [str(Path(sys.executable).with_name("rulegen")), "apply", str(EXAMPLE), "--netns", ns]
    r = subprocess.run(exe, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "does not exist (use --create" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(exe + ["--create", "--dry-run"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith("*filter\n") and "would send" in r.stderr
    assert not kernel.netns.exists(ns)
    r = subprocess.run(exe + ["--create", "--timings"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "15 chains added" in r.stdout and "timing: restore" in r.stderr and "timing: compile" in r.stderr
    r = subprocess.run(exe, capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "sent 0 lines" in r.stdout


# ---------------------------------------------------------------------- cache of the last apply (rgt-inc-)


def _kinds(kernel, kind):
    return [e for e in kernel.xtables.log if e[0] == kind]


def test_fresh_cache_reads_nothing_and_lists_only_what_changes(kernel, tmp_path):
    state = str(tmp_path)
    apply(compiled(cluster()), "rgt-inc-a", create=True, kernel=kernel, state_dir=state)
    saves, lists = len(_kinds(kernel, "save")), len(_kinds(kernel, "list"))
    new_objs = cluster(web=("10.244.1.11", "10.244.2.22"))
    res = apply(compiled(new_objs), "rgt-inc-a", kernel=kernel, state_dir=state)
    assert res.source == "cache" and "live state from the cache" in res.summary()
    assert len(_kinds(kernel, "save")) == saves  # no iptables-save at all
    listed = _kinds(kernel, "list")[lists:]
    # before sending: the chains to rewrite or delete; after: the ones sent, to learn their spelling
    assert listed[0][3] == "nat" and set(listed[0][4]) == {c for _, c in res.changed + res.removed}
    assert set(listed[1][4]) == {c for _, c in res.changed + res.added}
    assert kube_state(kernel, "rgt-inc-a") == _fresh(new_objs, kernel)
    saves = len(_kinds(kernel, "save"))
    again = apply(compiled(new_objs), "rgt-inc-a", kernel=kernel, state_dir=state)
    assert again.lines == 0 and again.source == "cache" and len(_kinds(kernel, "save")) == saves


def test_change_behind_our_back_is_seen_and_put_right(kernel, tmp_path):
    state = str(tmp_path)
    c = compiled(cluster())
    apply(c, "rgt-inc-a", create=True, kernel=kernel, state_dir=state)
    svc = next(x for x in c.ir.table("nat").chains if x.startswith("KUBE-SVC-"))
    # another tool rewrites a chain the cache knows only by hash
    kernel.xtables.restore("rgt-inc-a", f"*nat\n:{svc} - [0:0]\n-A {svc} -j RETURN\nCOMMIT\n")
    res = apply(c, "rgt-inc-a", kernel=kernel, state_dir=state)
    assert res.source == "dump" and res.changed == [("nat", svc)]  # the generation moved: all read
    assert kube_state(kernel, "rgt-inc-a") == _fresh(cluster(), kernel)
    assert apply(c, "rgt-inc-a", kernel=kernel, state_dir=state).source == "cache"  # vouched for again


def test_cache_that_disagrees_with_a_listed_chain_falls_back_to_reading_all(kernel, tmp_path):
    # The fake (unlike the kernel) can change a chain without moving the
    # generation: a cache that is wrong although the generation matches.
    # The chains about to change are listed and checked against it, and a
    # mismatch makes apply read and compare everything.
    state = str(tmp_path)
    apply(compiled(cluster()), "rgt-inc-a", create=True, kernel=kernel, state_dir=state)
    mid = cluster(web=("10.244.1.11", "10.244.2.22"))
    first = apply(compiled(mid), "rgt-inc-a", kernel=kernel, state_dir=state)
    svc = next(c for _, c in first.changed if c.startswith("KUBE-SVC-"))
    kernel.xtables.tables("rgt-inc-a")["nat"].chains[svc] = ["-j RETURN"]  # behind everybody's back
    new_objs = cluster(web=("10.244.1.11", "10.244.2.23"))
    res = apply(compiled(new_objs), "rgt-inc-a", kernel=kernel, state_dir=state)
    assert res.source == "dump"
    assert kube_state(kernel, "rgt-inc-a") == _fresh(new_objs, kernel)


class _Racy(FakeXtables):
    """Somebody else commits a table right after each of ours."""

    def restore(self, name, payload, family=4, test=False):
        super().restore(name, payload, family, test)
        if not test:
            self.netns.get(name).gen += 1


def test_foreign_commit_during_apply_leaves_the_cache_unvouched(tmp_path):
    ns = FakeNamespaces()
    kernel = Kernel(ns, _Racy(ns), FakeNft(ns))
    c = compiled(cluster())
    apply(c, "rgt-inc-a", create=True, kernel=kernel, state_dir=str(tmp_path))
    assert (tmp_path / "rgt-inc-a" / "iptables-ipv4.json").exists()
    assert not (tmp_path / "rgt-inc-a" / "iptables-ipv4.gen").exists()
    res = apply(c, "rgt-inc-a", kernel=kernel, state_dir=str(tmp_path))
    assert res.source == "dump" and res.lines == 0


def test_cache_of_another_backend_is_not_used(kernel, tmp_path):
    c = compiled(cluster())
    apply(c, "rgt-inc-a", create=True, kernel=kernel, state_dir=str(tmp_path))
    legacy = kernel.with_iptables("legacy")
    res = apply(c, "rgt-inc-a", kernel=legacy, state_dir=str(tmp_path))
    assert res.backend == "legacy" and res.source == "dump"
    assert {x for _, x in res.added} == {x for t in c.ir.tables for x in t.chains}  # nothing there yet


def test_both_families_keep_each_other_fresh(kernel, tmp_path):
    state = str(tmp_path)
    c4, c6 = compiled(cluster()), compiled(cluster6(), ip_family="ipv6")
    apply(c4, "rgt-inc-a", create=True, kernel=kernel, state_dir=state)
    apply(c6, "rgt-inc-a", kernel=kernel, state_dir=state)  # the generation counts both families
    assert apply(c4, "rgt-inc-a", kernel=kernel, state_dir=state).source == "cache"
    assert apply(c6, "rgt-inc-a", kernel=kernel, state_dir=state).source == "cache"


def _declared(payload: str, table: str) -> list[str]:
    section = payload.split(f"*{table}\n", 1)[1].split("COMMIT\n", 1)[0]
    return [ln[1:].split()[0] for ln in section.splitlines() if ln.startswith(":")]


def test_many_declarations_go_in_descending_order_for_legacy_only(kernel, monkeypatch):
    monkeypatch.setattr(syncmod, "DECLARE_SORTED_MIN", 2)
    c = compiled(cluster())
    legacy = kernel.with_iptables("legacy")
    res = apply(c, "rgt-inc-a", create=True, kernel=legacy, state_dir=None)
    decl = _declared(res.payload, "nat")
    assert len(decl) > 2 and decl == sorted(decl, reverse=True)
    assert kube_state(legacy, "rgt-inc-a") == _fresh(cluster(), Kernel.fake())
    # nft keeps chains in creation order, and its save sorts them with a
    # recursive quicksort that in-order input drives to the stack's end
    nft = apply(c, "rgt-inc-b", create=True, kernel=kernel.with_iptables("nft"), state_dir=None)
    assert _declared(nft.payload, "nat") == list(c.ir.table("nat").chains)


# ---------------------------------------------------------------------- backend choice


def test_auto_applies_with_the_backend_already_in_use(tmp_path):
    kernel = Kernel.fake(system="nft")
    kernel.netns.create("rgt-inc-a")
    kernel.with_iptables("legacy").xtables.restore("rgt-inc-a", "*filter\n:MY-LEGACY - [0:0]\nCOMMIT\n")
    c = compiled(cluster())
    res = apply(c, "rgt-inc-a", kernel=kernel, state_dir=str(tmp_path))
    assert res.backend == "legacy" and "iptables-legacy" in res.summary()
    assert "KUBE-SERVICES" in kernel.with_iptables("legacy").xtables.tables("rgt-inc-a")["nat"].chains
    assert kernel.with_iptables("nft").xtables.tables("rgt-inc-a") == {}
    again = apply(c, "rgt-inc-a", kernel=kernel, state_dir=str(tmp_path))
    assert again.lines == 0 and again.source == "dump"  # legacy has no generation: always read


def test_explicit_backend_overrides_the_one_in_use():
    kernel = Kernel.fake(system="nft")
    kernel.netns.create("rgt-inc-a")
    kernel.with_iptables("legacy").xtables.restore("rgt-inc-a", "*filter\n:MY-LEGACY - [0:0]\nCOMMIT\n")
    res = apply(compiled(cluster()), "rgt-inc-a", kernel=kernel.with_iptables("nft"), state_dir=None)
    assert res.backend == "nft" and "KUBE-SERVICES" in kernel.with_iptables("nft").xtables.tables("rgt-inc-a")["nat"].chains
    assert "nat" not in kernel.with_iptables("legacy").xtables.tables("rgt-inc-a")


def test_apply_builds_the_backend_it_is_given(monkeypatch):
    made = []

    def fake_real(backend="auto"):
        made.append(backend)
        return Kernel.fake(iptables_backend=backend)

    monkeypatch.setattr(Kernel, "real", staticmethod(fake_real))
    res = apply(compiled(cluster()), "rgt-inc-a", create=True, state_dir=None, backend="legacy")
    assert made == ["legacy"] and res.backend == "legacy"


def test_cli_iptables_backend_option(monkeypatch):
    seen = {}

    def fake_apply(c, netns, **kw):
        seen.update(kw, netns=netns)
        return syncmod.XtablesApplyResult(netns, "iptables", 4, backend=kw["backend"])

    import rulegen.commands.apply as cmd
    monkeypatch.setattr(cmd, "apply", fake_apply)
    r = CliRunner().invoke(main, ["apply", str(EXAMPLE), "--netns", "rgt-inc-x", "--iptables-backend", "legacy"])
    assert r.exit_code == 0, r.output
    assert seen["backend"] == "legacy" and "iptables-legacy" in r.output
    r = CliRunner().invoke(main, ["apply", str(EXAMPLE), "--netns", "rgt-inc-x"])
    assert seen["backend"] == "auto"
    r = CliRunner().invoke(main, ["apply", str(EXAMPLE), "--netns", "rgt-inc-x", "--iptables-backend", "xt"])
    assert r.exit_code == 2 and "xt" in r.output
    r = CliRunner().invoke(main, ["apply", "--help"])
    help_text = re.sub(r"-\s+", "-", " ".join(r.output.split()))  # undo click's wrapping
    assert "--iptables-backend" in help_text and "kube-proxy pays the same cost" in help_text
    assert "much slower to load large rulesets" in help_text


# ---------------------------------------------------------------------- real backends (rgt-inc-)

has_legacy = pytest.mark.skipif(not shutil.which("iptables-legacy-restore"), reason="needs iptables-legacy-restore")
has_nft = pytest.mark.skipif(not shutil.which("iptables-nft-restore"), reason="needs iptables-nft-restore")


@pytest.fixture
def inc(tmp_path):
    """A name factory for rgt-inc-* namespaces, each deleted afterwards whatever happens."""
    with namespace_names("rgt-inc") as name:
        yield name, str(tmp_path / "state")


@root
@needs_root
@has_legacy
def test_real_legacy_backend(inc):
    name, state = inc
    kernel = Kernel.real("legacy")
    ns, fresh = name(), name()
    res = apply(compiled(cluster()), ns, create=True, kernel=kernel, state_dir=state)
    assert res.backend == "legacy" and res.lines > 0
    assert "KUBE-SERVICES" in kernel.xtables.save(ns) and "KUBE-SERVICES" not in Kernel.real("nft").xtables.save(ns)
    assert Kernel.real().xtables.backend_for(ns) == "legacy"  # auto keeps to it from now on
    new_objs = cluster(web=("10.244.1.11", "10.244.2.22"))
    new = compiled(new_objs)
    res2 = apply(new, ns, kernel=Kernel.real(), state_dir=state)
    assert res2.backend == "legacy" and res2.source == "dump" and len(res2.changed) == 1
    apply(new, fresh, create=True, kernel=kernel, state_dir=None)
    assert save_chains(kernel, ns) == save_chains(kernel, fresh)
    assert canon(save_chains(kernel, ns)) == expected_live(new)
    assert apply(new, ns, kernel=kernel, state_dir=state).lines == 0


@root
@needs_root
@has_nft
def test_real_nft_fast_path_and_a_change_behind_its_back(inc):
    name, state = inc
    kernel = Kernel.real("nft")
    ns, fresh = name(), name()
    apply(compiled(cluster()), ns, create=True, kernel=kernel, state_dir=state)
    new_objs = cluster(web=("10.244.1.11", "10.244.2.22"))
    new = compiled(new_objs)
    res = apply(new, ns, kernel=kernel, state_dir=state)
    assert res.source == "cache" and len(res.changed) == 1 and len(res.added) == 1 and len(res.removed) == 1
    apply(new, fresh, create=True, kernel=kernel, state_dir=None)
    assert save_chains(kernel, ns) == save_chains(kernel, fresh)
    # someone edits a chain by hand: the kernel's generation moves, apply reads and repairs
    svc = res.changed[0][1]
    subprocess.run(["ip", "netns", "exec", ns, "iptables-nft", "-t", "nat", "-I", svc, "1", "-j", "RETURN"],
                   check=True)
    res2 = apply(new, ns, kernel=kernel, state_dir=state)
    assert res2.source == "dump" and res2.changed == [("nat", svc)]
    assert save_chains(kernel, ns) == save_chains(kernel, fresh)
    res3 = apply(new, ns, kernel=kernel, state_dir=state)
    assert res3.source == "cache" and res3.lines == 0
