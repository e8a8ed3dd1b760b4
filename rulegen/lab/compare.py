"""`rulegen lab --mode-compare FROM:TO`: the lab in two modes on one topology, checked against `rulegen migrate`.

`rulegen migrate` says, from the tracers alone, what each connection does
in each mode and which of them differ, and why. This module proves that
report with traffic. The paths are migrate's own scenarios (each Service
port, client kind and destination, `trace.scenarios`) that the lab can
send: an outside client (the lab's `client` namespace), a pod on this node
(`cpod`), the node itself and localhost (`node`), with the very addresses
migrate traced. A pod on another node is not sent (the lab has no pod
behind another node's kube-proxy), and neither is SCTP; both are listed as
not probed.

The lab is run once per mode on the same plan (the same node addresses,
clients and endpoint servers), in namespaces built once: between the runs
the node is reset (`Lab.reset_rules`), so nothing of the first mode (rules,
IPVS, ipsets, conntrack entries, sysctls such as route_localnet) leaks into
the second; where it cannot be reset, each mode gets namespaces of its own. Per path, each mode's observation (`Seen`: who
answered and how often, refused, timed out, the source the endpoint saw)
is checked against that mode's trace (`expectation`: which outcomes the
trace allows, which endpoints, whether the client address is kept or
masqueraded, affinity), and a path migrate reports no difference for must
not change its outcome or its source between the two runs. A path agrees
when both hold; it names migrate's cause when migrate reports it.

What traffic cannot tell apart is not asked of it: a REJECT and a port
where nothing listens are both "refused"; a connection no rule catches
(ACCEPT) is refused or times out, whichever the lab's routing gives; the
source of the node's own connections is a node address either way.

`plan_compare` and `judge_compare` are pure (tests/core); `run_compare`
builds, probes and removes the two labs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .. import backends
from ..migrate import Found, Result, Traced
from ..trace.scenarios import (
    CLIENT_KINDS,
    ENTRY_KINDS,
    LOCALHOST,
    NODE,
    OUTSIDE,
    POD_ELSEWHERE,
    POD_HERE,
    Scenario,
)
from .judge import MIN_EXPECTED, P_FAIL, PathResult, chi_square_p
from .probes import ANSWER_TIMEOUT, NEGATIVE_PROBES, NEGATIVE_TIMEOUT, LabPlan, Probe
from .report import LabReport

# migrate's client kind → the lab namespace that sends its connections
SOURCES = {OUTSIDE: "client", POD_HERE: "cpod", NODE: "node", LOCALHOST: "node"}
NOT_SENT = {POD_ELSEWHERE: "the lab has no pod on another node"}
ANSWER, REFUSED, TIMEOUT = "answer", "refused", "timeout"
OUTCOMES = (ANSWER, REFUSED, TIMEOUT)


@dataclass(frozen=True)
class Expect:
    """What one mode's trace of a path lets the lab see."""

    outcomes: frozenset[str]  # of OUTCOMES
    endpoints: tuple[str, ...]  # endpoints that may answer ("ip:port")
    equal_shares: bool  # each of them an equal share the rules fix (else: a hash, a count, affinity)
    source: str | None  # "kept" | "masqueraded"; None when the lab cannot tell (the node's own, mixed)
    affinity: bool
    phrase: str  # migrate's words for the behaviour
    traced: bool = True


def expectation(t: Traced, client_kind: str) -> Expect:
    """The outcomes the trace T allows, as traffic shows them."""
    from ..migrate.render import behaviour_phrase

    b = t.behaviour
    if b is None:
        return Expect(frozenset(OUTCOMES), (), False, None, False, "not traced: " + (t.error or "?"), traced=False)
    verdicts = {v for v, _ in b.outcomes} or {b.verdict}
    outcomes: set[str] = set()
    eps = tuple(ep for ep, p in b.shares if p is None or p > 0)
    for v in verdicts:
        if v == "REJECT":
            outcomes.add(REFUSED)
        elif v == "DROP":
            outcomes.add(TIMEOUT)
        elif eps:
            outcomes.add(ANSWER)
        else:  # nothing catches it: nothing listens here (refused) or it is routed on to nowhere (timeout)
            outcomes |= {REFUSED, TIMEOUT}
    shares = [p for _, p in b.shares]
    equal = bool(shares) and None not in shares and len(set(shares)) == 1
    aff = any(a for _, a in b.affinity)
    masq = {m for _, m in b.masquerade}
    source = None
    if client_kind != NODE and len(masq) == 1:
        source = "masqueraded" if masq.pop() else "kept"
    return Expect(frozenset(outcomes), eps, equal and not aff, source, aff, behaviour_phrase(b))


@dataclass(frozen=True)
class Seen:
    """What one mode's run saw on one path."""

    sent: int
    wanted: int  # connections planned
    endpoints: dict[str, int]
    refused: int
    timeout: int  # timed out, or dropped by the node's own OUTPUT
    errors: dict[str, int]
    peers: dict[str, int]  # sources the endpoints saw

    @property
    def answered(self) -> int:
        return sum(self.endpoints.values())

    @property
    def outcome(self) -> str:
        """answer | refused | timeout when every connection sent ended so; else mixed (none: nothing sent)."""
        kinds = {k for k, n in ((ANSWER, self.answered), (REFUSED, self.refused), (TIMEOUT, self.timeout),
                                ("error", sum(self.errors.values()))) if n}
        if not kinds:
            return "none"
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def source(self, src_ip: str) -> str | None:
        if not self.peers:
            return None
        if set(self.peers) == {src_ip}:
            return "kept"
        return "masqueraded" if src_ip not in self.peers else "mixed"

    @classmethod
    def of(cls, r: PathResult) -> Seen:
        return cls(r.sent, r.probe.count, dict(r.hits), r.refused, r.timeouts + r.dropped_local, dict(r.errors),
                   dict(r.peers))


@dataclass
class ComparePath:
    scenario: Scenario
    key: str  # the probe's key in both runs
    src_ip: str  # the address the lab sent from (the node's own: what the kernel picks)
    found: Found | None  # migrate's difference on this path, None when it reports none
    traced: tuple[Traced, Traced]
    expect: tuple[Expect, Expect]
    seen: tuple[Seen, Seen] | None = None
    side_problems: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))
    problems: list[str] = field(default_factory=list)  # about the pair (a change migrate does not predict)

    @property
    def agrees(self) -> bool:
        return not (self.problems or self.side_problems[0] or self.side_problems[1])

    def change(self) -> list[str]:
        """What differs between the two runs as traffic shows it: outcome, endpoints, source."""
        if self.seen is None:
            return []
        a, b = self.seen
        out = []
        if a.outcome != b.outcome:
            out.append("outcome")
        elif a.outcome == ANSWER:
            if set(a.endpoints) != set(b.endpoints):
                out.append("endpoints")
            if self.scenario.client.kind != NODE and a.source(self.src_ip) != b.source(self.src_ip):
                out.append("source")
        return out


@dataclass
class ComparePlan:
    from_mode: str
    to_mode: str
    paths: list[ComparePath]
    plans: tuple[LabPlan, LabPlan]
    not_probed: list[tuple[Scenario, str]]
    notes: list[str]


def _sort_key(sc: Scenario) -> tuple:
    return (sc.spn, CLIENT_KINDS.index(sc.client.kind), ENTRY_KINDS.index(sc.entry.kind), sc.entry.address)


def plan_compare(result: Result, base: LabPlan, requests: int) -> ComparePlan:
    """The paths to send in both modes, and each mode's lab plan (pure).

    BASE is the lab's plan for the FROM compile (its node addresses and
    endpoint servers); its clients take the addresses migrate traced, and
    its probes become migrate's scenarios, one probe per path with the
    same key in both modes. Each mode's probe is set from that mode's
    trace (how long to wait, REQUESTS where it answers, the affinity the
    prober must respect); the comparison does not use the lab's own
    expectation.
    """
    clients = result.clients
    by_key = {f.scenario.key: f for f in result.differences}
    base = replace(base, client_ip=clients[OUTSIDE].src if OUTSIDE in clients else base.client_ip,
                   cpod_ip=clients[POD_HERE].src if POD_HERE in clients else base.cpod_ip)
    ports = {p.spn: p for p in result.compiled_from.plan.ports}
    served = {f"{p.ip}:{port}" for p in base.pods for port in (*p.tcp, *p.udp)}
    paths: list[ComparePath] = []
    not_probed: list[tuple[Scenario, str]] = []
    probes: tuple[list[Probe], list[Probe]] = ([], [])
    traced = sorted(result.traces.values(), key=lambda tt: _sort_key(tt[0].scenario))
    for ta, tb in traced:
        sc = ta.scenario
        kind = sc.client.kind
        if kind not in SOURCES:
            not_probed.append((sc, NOT_SENT.get(kind, f"the lab has no {kind} client")))
            continue
        if sc.entry.proto not in ("tcp", "udp"):
            not_probed.append((sc, f"{sc.entry.proto.upper()}: the lab speaks TCP and UDP"))
            continue
        if sc.spn not in ports:
            not_probed.append((sc, "not in the lab's plan"))
            continue
        src = base.node_ips[0] if kind == NODE else sc.client.src
        ea, eb = expectation(ta, kind), expectation(tb, kind)
        key = str(len(paths))
        answers = ANSWER in ea.outcomes or ANSWER in eb.outcomes
        count = requests if answers else min(requests, NEGATIVE_PROBES)
        sticky = bool(ports[sc.spn].affinity) and (ea.affinity or eb.affinity)
        for e, out in ((ea, probes[0]), (eb, probes[1])):
            answer = ANSWER in e.outcomes
            expect = ANSWER if answer else ("drop" if e.outcomes == {TIMEOUT} else "refuse")
            out.append(Probe(
                key=key, spn=sc.spn, proto=sc.entry.proto, kind=sc.entry.kind, source=SOURCES[kind], src_ip=src,
                dst=sc.entry.ip, port=sc.entry.port, expect=expect, why=e.phrase,
                endpoints=tuple(ep for ep in e.endpoints if ep in served), affinity=sticky, masq=None,
                count=count, timeout=ANSWER_TIMEOUT if answer else NEGATIVE_TIMEOUT))
        paths.append(ComparePath(sc, key, src, by_key.get(sc.key), (ta, tb), (ea, eb)))
    plans = (replace(base, probes=tuple(probes[0]), notes=list(base.notes)),
             replace(base, probes=tuple(probes[1]), notes=[]))
    return ComparePlan(result.from_mode, result.to_mode, paths, plans, not_probed, list(base.notes))


def _said(s: Seen, src_ip: str, node: bool) -> str:
    o = s.outcome
    if o == ANSWER:
        src = "" if node else f", source {s.source(src_ip)}"
        return f"answers from {', '.join(sorted(s.endpoints))}{src}"
    if o == "mixed":
        return (f"{s.answered} answered, {s.refused} refused, {s.timeout} timed out"
                + "".join(f", {n} {e}" for e, n in sorted(s.errors.items())))
    if o == "none":
        return "nothing sent"
    if o == "error":
        return ", ".join(f"{n} {e}" for e, n in sorted(s.errors.items()))
    return {REFUSED: "refused", TIMEOUT: "timed out"}[o]


def check_side(e: Expect, s: Seen, src_ip: str, client_kind: str) -> list[str]:
    """Where what one mode's run saw contradicts that mode's trace (empty: it agrees)."""
    if not e.traced:
        return []
    out: list[str] = []
    # (A path whose first connections all fail is given up on early: judged below as not answering.)
    if s.sent < s.wanted and s.answered:
        out.append(f"only {s.sent} of {s.wanted} connections were sent before the run's deadline")
    node = client_kind == NODE
    if s.outcome not in e.outcomes:
        out.append(f"the trace says {e.phrase}; the lab saw {_said(s, src_ip, node)}")
        return out
    if s.outcome != ANSWER:
        return out
    stray = sorted(ep for ep in s.endpoints if ep not in e.endpoints)
    if stray:
        out.append("answers from endpoints the trace does not reach: "
                   + ", ".join(f"{ep} ({s.endpoints[ep]})" for ep in stray))
    if e.affinity and len(s.endpoints) > 1:
        out.append(f"session affinity: one client's connections went to {len(s.endpoints)} endpoints")
    if e.equal_shares and e.endpoints:
        share = 1.0 / len(e.endpoints)
        got = [s.endpoints.get(ep, 0) for ep in e.endpoints]
        silent = [ep for ep in e.endpoints if not s.endpoints.get(ep)]
        if silent and share * s.answered >= MIN_EXPECTED:
            out.append(f"{', '.join(silent)} never answered (expected ~{share * s.answered:.0f} each)")
        p = chi_square_p(got, [share] * len(got))
        if p is not None and p < P_FAIL:
            out.append(f"shares differ from the trace's equal split (chi-square p={p:.2g})")
    seen_src = s.source(src_ip)
    if e.source and seen_src != e.source:
        out.append(f"the trace says the source is {e.source}; endpoints saw "
                   + ", ".join(f"{ip} ({n})" for ip, n in sorted(s.peers.items())))
    return out


def judge_compare(cp: ComparePlan, results: tuple[dict[str, PathResult], dict[str, PathResult]]) -> None:
    """Fill in each path's observations and problems from the two runs' results, by probe key."""
    for path in cp.paths:
        ra, rb = results[0].get(path.key), results[1].get(path.key)
        if ra is None or rb is None:
            path.problems.append("the lab has no result for this path")
            continue
        sa, sb = Seen.of(ra), Seen.of(rb)
        path.seen = (sa, sb)
        kind = path.scenario.client.kind
        path.side_problems = (check_side(path.expect[0], sa, path.src_ip, kind),
                              check_side(path.expect[1], sb, path.src_ip, kind))
        if path.found is None and all(e.traced for e in path.expect):
            change = [c for c in path.change() if c != "endpoints"]  # which endpoint answers may vary run to run
            if change:
                path.problems.append(
                    f"migrate reports no difference, but the {' and '.join(change)} changed: "
                    f"{cp.from_mode}: {_said(sa, path.src_ip, kind == NODE)}; "
                    f"{cp.to_mode}: {_said(sb, path.src_ip, kind == NODE)}")


# ---------------------------------------------------------------- the report


@dataclass
class CompareReport:
    plan: ComparePlan
    result: Result
    runs: tuple[str, str]
    notes: list[str]
    elapsed: float
    left: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[ComparePath]:
        return self.plan.paths

    @property
    def disagree(self) -> int:
        return sum(1 for p in self.paths if not p.agrees)

    @property
    def ok(self) -> bool:
        return not self.disagree and not self.left

    def causes(self) -> list[dict[str, Any]]:
        from ..migrate.causes import CAUSE_IDS

        by: dict[str, dict[str, Any]] = {}
        for p in self.paths:
            if p.found is None:
                continue
            g = by.setdefault(p.found.why.cause, {"cause": p.found.why.cause, "title": p.found.why.title,
                                                   "paths": 0, "agree": 0})
            g["paths"] += 1
            g["agree"] += p.agrees
        return [by[c] for c in sorted(by, key=CAUSE_IDS.index)]

    def to_json(self) -> dict[str, Any]:
        from ..migrate.render import behaviour_json

        r = self.result
        lab = self.plan.plans[0]
        where = {p.ip: p.where for p in lab.pods}

        def side(path: ComparePath, i: int) -> dict[str, Any]:
            e, t = path.expect[i], path.traced[i]
            d: dict[str, Any] = {"predicted": behaviour_json(t) | {"phrase": e.phrase, "allows": sorted(e.outcomes),
                                                                    "source": e.source}}
            if path.seen is not None:
                s = path.seen[i]
                total = s.answered
                d["observed"] = {
                    "outcome": s.outcome, "sent": s.sent, "answered": total,
                    "endpoints": {ep: {"count": n, "share": round(n / total, 4), "where":
                                       where.get(ep.rsplit(":", 1)[0], "?")} for ep, n in sorted(s.endpoints.items())},
                    "refused": s.refused, "timeout": s.timeout, "errors": dict(sorted(s.errors.items())),
                    "source": s.source(path.src_ip), "peers": dict(sorted(s.peers.items())),
                }
            d["problems"] = list(path.side_problems[i])
            return d

        def one(path: ComparePath) -> dict[str, Any]:
            sc, f = path.scenario, path.found
            return {
                "service": sc.spn, "client": sc.client.kind, "source": path.src_ip, "entry": sc.entry.kind,
                "destination": sc.entry.address, "protocol": sc.entry.proto,
                "from": side(path, 0), "to": side(path, 1),
                "migrate": ({"differs": True, "aspects": [d.aspect for d in f.aspects], "cause": f.why.cause,
                             "reason": f.why.reason, "setting": f.why.setting, "no_setting": f.why.no_setting}
                            if f is not None else {"differs": False}),
                "observed_change": path.change(),
                "verdict": "agree" if path.agrees else "disagree",
                "problems": path.side_problems[0] + path.side_problems[1] + path.problems,
            }

        return {
            "from": r.from_mode, "to": r.to_mode, "settings_to": r.settings_to, "node": r.node,
            "node_ips": list(lab.node_ips), "client_ip": lab.client_ip, "client_pod_ip": lab.cpod_ip,
            "runs": {"from": self.runs[0], "to": self.runs[1]},
            "paths": [one(p) for p in self.paths],
            "not_probed": [{"service": sc.spn, "client": sc.client.kind, "entry": sc.entry.kind,
                            "destination": sc.entry.address, "why": why,
                            "migrate_differs": any(f.scenario.key == sc.key for f in r.differences)}
                           for sc, why in self.plan.not_probed],
            "causes": self.causes(),
            "agree": len(self.paths) - self.disagree, "disagree": self.disagree, "ok": self.ok,
            "notes": self.notes, "elapsed": round(self.elapsed, 2), "left_behind": self.left,
        }


def _pct(n: int, total: int) -> str:
    return f"{n / total * 100:.1f}%" if total else "-"


def seen_text(s: Seen, where: dict[str, str], expect: Expect, src_ip: str, node: bool) -> str:
    """One mode's observation in one line: who answered (count, share), refusals, time-outs, the source."""
    parts = []
    if s.answered:
        eps = sorted(set(s.endpoints) | set(expect.endpoints))
        parts.append(f"{s.answered}/{s.sent} answered: " + ", ".join(
            f"{ep} {where.get(ep.rsplit(':', 1)[0], '?')} {s.endpoints.get(ep, 0)} {_pct(s.endpoints.get(ep, 0), s.answered)}"
            for ep in eps))
    if s.refused:
        parts.append(f"{s.refused}/{s.sent} refused")
    if s.timeout:
        parts.append(f"{s.timeout}/{s.sent} timed out")
    parts += [f"{n}/{s.sent} {e}" for e, n in sorted(s.errors.items())]
    if not parts:
        return "nothing sent"
    text = ", ".join(parts)
    if s.answered:
        if node:
            text += "; source " + ", ".join(sorted(s.peers))
        else:
            text += {"kept": "; client address kept", "masqueraded": "; masqueraded to " + ", ".join(sorted(s.peers)),
                     "mixed": "; sources " + ", ".join(sorted(s.peers))}.get(s.source(src_ip) or "", "")
    return text


def report_text(rep: CompareReport) -> str:
    from ..templating import render

    lab = rep.plan.plans[0]
    where = {p.ip: p.where for p in lab.pods}
    a, b = rep.result.from_mode, rep.result.to_mode
    b_label = b if rep.result.settings_to is None else f"{b} with {rep.result.settings_to}"
    width = max(len(a), len(b), len("migrate"))
    groups: list[dict[str, Any]] = []
    for p in rep.paths:
        sc = p.scenario
        if not groups or groups[-1]["spn"] != sc.spn:
            groups.append({"spn": sc.spn, "proto": sc.entry.proto, "paths": []})
        node = sc.client.kind == NODE
        lines = []
        for i, mode in enumerate((a, b)):
            text = seen_text(p.seen[i], where, p.expect[i], p.src_ip, node) if p.seen else "not run"
            lines.append(f"{mode.ljust(width)}  {text}")
        change = p.change()
        saw = ("the lab saw " + " and ".join(f"the {c} change" for c in change)) if change else "the lab saw no change"
        if p.found is not None:
            why = p.found.why
            pred = f"{why.cause}: {p.expect[0].phrase} -> {p.expect[1].phrase}"
        else:
            pred = "no difference"
        lines.append(f"{'migrate'.ljust(width)}  {pred}; {saw}")
        problems = p.side_problems[0] + p.side_problems[1] + p.problems
        groups[-1]["paths"].append({
            "ok": p.agrees, "head": f"{sc.client.kind} {p.src_ip} -> {sc.entry.address} ({sc.entry.kind})",
            "lines": lines,
            "problems": [f"{a}: {x}" for x in p.side_problems[0]] + [f"{b}: {x}" for x in p.side_problems[1]]
            + p.problems if problems else [],
        })
    skipped: dict[str, int] = {}
    for sc, why in rep.plan.not_probed:
        skipped[f"{sc.client.kind} ({why})"] = skipped.get(f"{sc.client.kind} ({why})", 0) + 1
    text = render("lab-compare.j2", rep=rep, lab=lab, a=a, b_label=b_label, groups=groups, causes=rep.causes(),
                  skipped=skipped, differing=sum(1 for p in rep.paths if p.found is not None))
    return text if text.endswith("\n") else text + "\n"


# ---------------------------------------------------------------- running it


def preflight(result: Result, kernel: Any) -> None:
    """Both modes' kernel checks, before anything is built (IPVS mode without ip_vs stops here)."""
    for c in (result.compiled_from, result.compiled_to):
        check = getattr(backends.require(c.settings.mode, "applier"), "preflight", None)
        if check is not None:
            check(c, kernel)


def run_compare(result: Result, cp: ComparePlan, recompile: tuple[Callable[[dict], Any], Callable[[dict], Any]],
                timeout: float, runner: Callable[..., list[LabReport]] | None = None) -> CompareReport:
    """Run the lab in FROM's mode then TO's on one topology, and judge every path.

    The namespaces are built once and the rules swapped between the runs
    (`lab.run_modes`); where the node cannot be reset (no `conntrack` to
    empty the connection table), each mode gets namespaces of its own,
    built from the same plan. RUNNER stands in for `lab.run_modes` (tests).
    """
    from . import run_modes
    from .topology import Lab

    runner = runner or run_modes
    t0 = time.time()
    modes = [(result.compiled_from, recompile[0], cp.plans[0]), (result.compiled_to, recompile[1], cp.plans[1])]
    lacking = Lab.can_reset()
    if lacking is None:
        reports = runner(modes, timeout)
    else:
        reports = runner(modes[:1], timeout)
        left = timeout - (time.time() - t0)
        if left < 5:
            from ..diagnostics import UsageError

            raise UsageError(f"lab: --timeout reached before the {result.to_mode} run")
        reports += runner(modes[1:], left)
    results = tuple({r.probe.key: r for r in rep.results} for rep in reports)
    judge_compare(cp, results)  # type: ignore[arg-type]
    notes = list(reports[0].notes)
    for n in reports[1].notes:
        if n not in notes:
            notes.append(n)
    if lacking is not None:
        notes.append(f"each mode ran in namespaces of its own ({lacking}, so the node could not be reset "
                     "between the modes)")
    left_behind = list(dict.fromkeys(reports[0].left + reports[1].left))
    return CompareReport(cp, result, (reports[0].run, reports[1].run), notes, time.time() - t0, left_behind)
