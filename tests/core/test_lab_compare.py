"""`rulegen lab --mode-compare`: the pure half (tests/kernel/test_lab_mode_compare.py sends the traffic).

What a trace lets traffic see (`expectation`), one mode's observation
against it (`check_side`), a whole comparison judged from made-up run
results (`judge_compare`): observations that follow migrate's traces
agree, ones that do not (a change migrate predicts that did not happen, a
change it does not predict, a stray endpoint, a lost client address)
disagree; the table and JSON shapes; the command's exit statuses with the
kernel part replaced.
"""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest

from rulegen import lab
from rulegen.lab import compare
from rulegen.lab.judge import PathResult
from rulegen.migrate import Traced, migrate
from rulegen.trace.compare import Behaviour
from rulegen.trace.scenarios import NODE, OUTSIDE

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "migrate-fixtures"
FLAGS: dict = {}


def _b(verdict, shares=(), masq=None, affinity=None) -> Behaviour:
    shares = tuple(sorted(shares))
    m = tuple((ep, masq) for ep, _ in shares) if masq is not None else ()
    aff = tuple((ep, affinity) for ep, _ in shares)
    return Behaviour(verdict, shares, m, bool(masq), aff, ((verdict, Fraction(1)),))


def _t(b) -> Traced:
    return Traced(None, b)  # type: ignore[arg-type]


HALF = Fraction(1, 2)
TWO = (("10.0.0.1:80", HALF), ("10.0.0.2:80", HALF))


def test_expectation_per_verdict():
    e = compare.expectation(_t(_b("DNAT", TWO, masq=True)), OUTSIDE)
    assert e.outcomes == {"answer"} and e.endpoints == ("10.0.0.1:80", "10.0.0.2:80")
    assert e.equal_shares and e.source == "masqueraded" and not e.affinity
    assert compare.expectation(_t(_b("DNAT", TWO, masq=False)), OUTSIDE).source == "kept"
    # the node's own connections: kept or masqueraded, the endpoint sees a node address
    assert compare.expectation(_t(_b("DNAT", TWO, masq=True)), NODE).source is None
    assert compare.expectation(_t(_b("REJECT")), OUTSIDE).outcomes == {"refused"}
    assert compare.expectation(_t(_b("DROP")), OUTSIDE).outcomes == {"timeout"}
    assert compare.expectation(_t(_b("ACCEPT")), OUTSIDE).outcomes == {"refused", "timeout"}
    aff = compare.expectation(_t(_b("DNAT", TWO, masq=True, affinity=10800)), OUTSIDE)
    assert aff.affinity and not aff.equal_shares
    hashed = compare.expectation(_t(_b("DNAT", (("10.0.0.1:80", None), ("10.0.0.2:80", None)), masq=False)), OUTSIDE)
    assert hashed.outcomes == {"answer"} and not hashed.equal_shares
    untraced = compare.expectation(Traced(None, None, "a rule it does not know"), OUTSIDE)  # type: ignore[arg-type]
    assert not untraced.traced and untraced.outcomes == {"answer", "refused", "timeout"}


def _seen(hits=None, refused=0, timeout=0, peers=None, sent=None, wanted=None):
    hits = hits or {}
    n = sent if sent is not None else sum(hits.values()) + refused + timeout
    return compare.Seen(n, wanted if wanted is not None else n, hits, refused, timeout, {}, peers or {})


def test_check_side_agrees_and_disagrees():
    e = compare.expectation(_t(_b("DNAT", TWO, masq=True)), OUTSIDE)
    ok = _seen({"10.0.0.1:80": 11, "10.0.0.2:80": 9}, peers={"192.0.2.1": 20})
    assert compare.check_side(e, ok, "203.0.113.10", OUTSIDE) == []
    kept = _seen({"10.0.0.1:80": 11, "10.0.0.2:80": 9}, peers={"203.0.113.10": 20})
    assert "source is masqueraded" in " ".join(compare.check_side(e, kept, "203.0.113.10", OUTSIDE))
    stray = _seen({"10.0.0.1:80": 10, "10.0.0.9:80": 10}, peers={"192.0.2.1": 20})
    assert "10.0.0.9:80 (10)" in " ".join(compare.check_side(e, stray, "203.0.113.10", OUTSIDE))
    refused = _seen(refused=6)
    assert "the lab saw refused" in " ".join(compare.check_side(e, refused, "203.0.113.10", OUTSIDE))
    one_sided = _seen({"10.0.0.1:80": 200}, peers={"192.0.2.1": 200})
    assert any("never answered" in x for x in compare.check_side(e, one_sided, "203.0.113.10", OUTSIDE))
    cut = _seen({"10.0.0.1:80": 3, "10.0.0.2:80": 2}, peers={"192.0.2.1": 5}, wanted=20)
    assert any("only 5 of 20" in x for x in compare.check_side(e, cut, "203.0.113.10", OUTSIDE))
    rej = compare.expectation(_t(_b("REJECT")), OUTSIDE)
    assert compare.check_side(rej, _seen(refused=6), "x", OUTSIDE) == []
    assert compare.check_side(rej, _seen(timeout=6), "x", OUTSIDE)
    free = compare.expectation(_t(_b("ACCEPT")), OUTSIDE)
    assert compare.check_side(free, _seen(timeout=6), "x", OUTSIDE) == []
    assert compare.check_side(free, _seen(refused=6), "x", OUTSIDE) == []
    assert compare.check_side(free, _seen({"10.0.0.1:80": 6}, peers={"x": 6}), "x", OUTSIDE)
    aff = compare.expectation(_t(_b("DNAT", TWO, masq=False, affinity=10800)), OUTSIDE)
    assert compare.check_side(aff, _seen({"10.0.0.2:80": 20}, peers={"x": 20}), "x", OUTSIDE) == []
    assert "affinity" in " ".join(compare.check_side(aff, _seen({"10.0.0.1:80": 10, "10.0.0.2:80": 10},
                                                                 peers={"x": 20}), "x", OUTSIDE))


# ---------------------------------------------------------------- whole comparisons, runs made up


def _result(case: str, a="iptables", b="nftables", settings_to=None):
    cfg = str(CASES / case / settings_to) if settings_to else None
    return migrate([str(CASES / case / "input.yaml")], FLAGS, b, a, None, cfg)


def _plan(result, requests=20):
    base = lab.build_plan(result.compiled_from, requests=requests)
    return compare.plan_compare(result, base, requests)


NODE_IP = "10.30.0.7"


def _as_traced(probe, e: compare.Expect) -> PathResult:
    """What a kernel that does exactly what the trace says would report for PROBE."""
    n = probe.count
    hits, peers, refused, timeout = {}, {}, 0, 0
    if "answer" in e.outcomes:
        eps = e.endpoints[:1] if e.affinity else e.endpoints
        for i in range(n):
            ep = eps[i % len(eps)]
            hits[ep] = hits.get(ep, 0) + 1
        src = probe.src_ip if e.source == "kept" else NODE_IP
        peers = {src: n}
    elif "refused" in e.outcomes:
        refused = n
    else:
        timeout = n
    return PathResult(probe, n, hits, peers, refused, timeout, 0, {}, None, "", [], [])


def _results(cp, change=None):
    """Both runs' results as the traces say, CHANGE(path, side, PathResult) → PathResult altering some."""
    out = ({}, {})
    by_key = {p.key: p for p in cp.paths}
    for i in (0, 1):
        for pr in cp.plans[i].probes:
            r = _as_traced(pr, by_key[pr.key].expect[i])
            if change is not None:
                r = change(by_key[pr.key], i, r)
            out[i][pr.key] = r
    return out


def _report(cp, result) -> compare.CompareReport:
    return compare.CompareReport(cp, result, ("rglab-aaaa", "rglab-bbbb"), [], 1.0)


def test_a_run_that_follows_the_traces_agrees_on_every_path():
    result = _result("localhost-nodeport")
    cp = _plan(result)
    assert {p.scenario.client.kind for p in cp.paths} == {"outside", "pod-here", "node", "localhost"}
    assert {sc.client.kind for sc, _ in cp.not_probed} == {"pod-elsewhere"}
    # the lab's clients are the addresses migrate traced
    assert cp.plans[0].client_ip == result.clients["outside"].src
    assert cp.plans[0].cpod_ip == result.clients["pod-here"].src
    assert cp.plans[0].pods == cp.plans[1].pods and cp.plans[0].node_ips == cp.plans[1].node_ips
    compare.judge_compare(cp, _results(cp))
    rep = _report(cp, result)
    assert rep.ok and rep.disagree == 0
    # every difference migrate reports on a probed path is a path here, with its cause
    probed = {p.scenario.key for p in cp.paths}
    want = {f.scenario.key: f.why.cause for f in result.differences if f.scenario.key in probed}
    assert {p.scenario.key: p.found.why.cause for p in cp.paths if p.found} == want
    assert set(want.values()) == {"localhost-nodeports", "nodeport-addresses", "clusterip-other-ports"}
    lo = next(p for p in cp.paths if p.scenario.entry.kind == "localhost-node-port")
    assert lo.change() == ["outcome"]


def test_a_change_migrate_predicts_that_does_not_happen_disagrees():
    result = _result("localhost-nodeport")
    cp = _plan(result)

    def same_as_before(path, side, r):  # the nftables run answers as the iptables one did
        if side == 1 and path.scenario.entry.kind == "localhost-node-port":
            before = _as_traced(cp.plans[0].probes[int(path.key)], path.expect[0])
            return replace(before, probe=r.probe)
        return r

    compare.judge_compare(cp, _results(cp, same_as_before))
    rep = _report(cp, result)
    bad = [p for p in rep.paths if not p.agrees]
    assert [p.scenario.entry.kind for p in bad] == ["localhost-node-port"]
    assert "the trace says not caught (ACCEPT)" in bad[0].side_problems[1][0]
    assert not rep.ok


def test_a_change_migrate_does_not_predict_disagrees():
    result = _result("localhost-nodeport")
    cp = _plan(result)

    def masquerade_the_pod(path, side, r):
        if side == 1 and path.scenario.client.kind == "pod-here" and path.scenario.entry.kind == "cluster-ip":
            return replace(r, peers={NODE_IP: r.sent})
        return r

    compare.judge_compare(cp, _results(cp, masquerade_the_pod))
    bad = [p for p in cp.paths if not p.agrees]
    assert len(bad) == 1 and bad[0].found is None
    assert any("migrate reports no difference, but the source changed" in x for x in bad[0].problems)

    cp = _plan(result)

    def other_port_refused(path, side, r):  # iptables leaves it alone: here it is refused (a REJECT?)
        if side == 0 and path.scenario.entry.kind == "cluster-ip" and path.scenario.client.kind == "outside":
            return replace(r, hits={}, peers={}, refused=r.sent)
        return r

    compare.judge_compare(cp, _results(cp, other_port_refused))
    bad = [p for p in cp.paths if not p.agrees]
    assert len(bad) == 1 and "outcome changed" in bad[0].problems[0]


def test_settings_to_is_the_target_run_and_its_prediction():
    result = _result("secondary-address", settings_to="settings-to.yaml")
    cp = _plan(result)
    second = [p for p in cp.paths if p.scenario.entry.kind == "node-port" and p.scenario.entry.ip == "10.31.0.7"]
    assert second and all(p.found is None for p in second)  # nodePortAddresses 0.0.0.0/0 removes them
    assert all(p.expect[1].outcomes == {"answer"} for p in second)
    assert result.compiled_to.settings.nodeport_addresses  # the run loads what settings-to says


def test_json_and_table_shapes():
    result = _result("localhost-nodeport")
    cp = _plan(result)

    def lose_one(path, side, r):
        if side == 1 and path.scenario.entry.kind == "localhost-node-port":
            return replace(r, refused=0, timeouts=r.sent)  # refused or timed out: both allowed for ACCEPT
        if side == 0 and path.scenario.entry.kind == "other-port" and path.scenario.client.kind == "node":
            return replace(r, refused=0, timeouts=0, hits={"10.70.7.21:8080": r.sent}, peers={NODE_IP: r.sent})
        return r

    compare.judge_compare(cp, _results(cp, lose_one))
    rep = _report(cp, result)
    doc = json.loads(json.dumps(rep.to_json()))
    assert set(doc) >= {"from", "to", "settings_to", "node", "paths", "not_probed", "causes", "agree", "disagree",
                        "ok", "runs"}
    assert (doc["from"], doc["to"], doc["ok"], doc["disagree"]) == ("iptables", "nftables", False, 1)
    p = next(x for x in doc["paths"] if x["entry"] == "localhost-node-port")
    assert p["verdict"] == "agree" and p["migrate"]["cause"] == "localhost-nodeports"
    assert p["from"]["observed"]["outcome"] == "answer" and p["to"]["observed"]["outcome"] == "timeout"
    assert p["from"]["predicted"]["verdict"] == "DNAT" and p["to"]["predicted"]["verdict"] == "ACCEPT"
    assert set(p["from"]["observed"]["endpoints"]) == {"10.70.7.21:8080", "10.70.8.21:8080"}
    assert p["observed_change"] == ["outcome"]
    bad = [x for x in doc["paths"] if x["verdict"] == "disagree"]
    assert len(bad) == 1 and bad[0]["client"] == "node" and bad[0]["entry"] == "other-port"
    assert bad[0]["migrate"]["cause"] == "clusterip-other-ports"
    assert {c["cause"]: (c["paths"], c["agree"]) for c in doc["causes"]} == {
        "localhost-nodeports": (1, 1), "nodeport-addresses": (3, 3), "clusterip-other-ports": (2, 1)}
    assert all(x["client"] == "pod-elsewhere" for x in doc["not_probed"])
    text = compare.report_text(rep)
    assert text.startswith("rulegen lab --mode-compare iptables -> nftables: node edge-7 (10.30.0.7, 10.31.0.7)")
    assert "DISAGREES node 10.30.0.7 -> 10.100.4.10:1 (other-port)" in text
    assert "problem: iptables: the trace says not caught (ACCEPT); the lab saw answers from 10.70.7.21:8080" in text
    assert "localhost-nodeports: DNAT 10.70.7.21:8080 50%, 10.70.8.21:8080 50%; masqueraded -> not caught (ACCEPT)" in text
    assert "10.70.7.21:8080 local 10 50.0%, 10.70.8.21:8080 remote 10 50.0%; masqueraded to 10.30.0.7" in text
    assert "clusterip-other-ports (a ClusterIP on a port no Service uses): 1 of 2 path(s) agree" in text
    assert text.rstrip().endswith("11 agree, 1 disagree, 1.0 s; every namespace of rglab-aaaa and rglab-bbbb removed")


# ---------------------------------------------------------------- the command


def _fake_kernel(monkeypatch, change=None):
    """The command with the two lab runs replaced by results that follow the traces (CHANGE alters some)."""
    from rulegen.commands import lab as lab_cmd

    monkeypatch.setattr(lab_cmd, "_need_root_and_tools", lambda modes: None)
    monkeypatch.setattr(compare, "preflight", lambda result, kernel: None)
    seen = {}

    def run_compare(result, cp, recompile, timeout, run=None):
        seen["modes"] = (result.compiled_from.settings.mode, result.compiled_to.settings.mode)
        compare.judge_compare(cp, _results(cp, change))
        return _report(cp, result)

    monkeypatch.setattr(compare, "run_compare", run_compare)
    return seen


def test_command_exit_0_when_every_path_agrees_whatever_differs(cli, monkeypatch):
    seen = _fake_kernel(monkeypatch)
    r = cli("lab", str(CASES / "localhost-nodeport" / "input.yaml"), "--mode-compare", "iptables:nftables", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] and any(p["migrate"]["differs"] for p in doc["paths"])
    assert seen["modes"] == ("iptables", "nftables")


def test_command_exit_1_when_the_lab_disagrees(cli, monkeypatch):
    def answer_everywhere(path, side, r):
        if side == 1 and path.scenario.entry.kind == "localhost-node-port":
            return replace(r, refused=0, timeouts=0, hits={"10.70.7.21:8080": r.sent}, peers={NODE_IP: r.sent})
        return r

    _fake_kernel(monkeypatch, answer_everywhere)
    r = cli("lab", str(CASES / "localhost-nodeport" / "input.yaml"), "--mode-compare", "iptables:nftables")
    assert r.exit_code == 1, r.output
    assert "DISAGREES localhost 127.0.0.1 -> 127.0.0.1:31080" in r.stdout


@pytest.mark.parametrize("args,msg", [
    (["--mode-compare", "iptables"], "expected FROM:TO"),
    (["--mode-compare", "iptables:nft"], "unknown mode 'nft'"),
    (["--mode-compare", ":nftables"], "expected FROM:TO"),
    (["--mode-compare", "iptables:nftables", "--mode", "ipvs"], "--mode and --mode-compare"),
    (["--settings-to", "x.yaml"], "--settings-to: only with --mode-compare"),
    (["--mode-compare", "iptables:iptables"], "nothing to compare"),
    (["--mode-compare", "iptables:nftables", "--settings-to", "/nonexistent/x.yaml"], "x.yaml"),
])
def test_command_bad_input_exit_2(cli, monkeypatch, args, msg):
    _fake_kernel(monkeypatch)
    r = cli("lab", str(CASES / "localhost-nodeport" / "input.yaml"), *args)
    assert r.exit_code == 2, r.output
    assert msg in r.output and "Traceback" not in r.output


def test_the_lab_names_each_modes_own_tools_and_payload(monkeypatch):
    from rulegen.commands import lab as lab_cmd
    from rulegen.diagnostics import UsageError

    monkeypatch.setattr(lab_cmd.os, "geteuid", lambda: 1000)
    for mode, words in (("nftables", "an nftables table"), ("iptables", "iptables rules"),
                        ("ipvs", "IPVS virtual servers")):
        with pytest.raises(UsageError, match="needs root") as e:
            lab_cmd._need_root_and_tools([mode])
        assert words in str(e.value)
        if mode == "nftables":
            assert "iptables" not in str(e.value)
    monkeypatch.setattr(lab_cmd.os, "geteuid", lambda: 0)
    monkeypatch.setattr(lab_cmd.shutil, "which", lambda t: None if t == "nft" else "/usr/sbin/" + t)
    with pytest.raises(UsageError, match="lab needs nft, which is not installed"):
        lab_cmd._need_root_and_tools(["nftables"])
    lab_cmd._need_root_and_tools(["iptables"])  # iptables mode needs no nft
