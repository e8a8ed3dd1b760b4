"""Two traces of one scenario compared: what a connection does in one mode and not in another.

A trace's behaviour, as a user sees it, is its verdict, where the
connections go and with which share, whether the endpoint sees the
client's address, and session affinity. `behaviour` reduces a
`TraceResult` to exactly that (hops, chain names and notes are how a mode
gets there, not what it does), and `compare` lists the aspects in which
two behaviours differ. `compare_outcomes` pairs two modes' outcomes of the
same scenarios (`trace.scenarios`) by key. `rulegen explain --compare`
highlights these; `rulegen migrate` groups them by cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable

from .model import TraceResult
from .scenarios import Outcome

ASPECTS = ("trace", "verdict", "destinations", "masquerade", "affinity")


@dataclass(frozen=True, slots=True)
class Behaviour:
    verdict: str  # DNAT | ACCEPT | DROP | REJECT
    shares: tuple[tuple[str, Fraction], ...]  # endpoint → chance, sorted by endpoint
    masquerade: tuple[tuple[str, bool], ...]  # endpoint → masqueraded (any path to it); () when none reached
    masquerade_any: bool
    affinity: tuple[tuple[str, int | None], ...]
    outcomes: tuple[tuple[str, Fraction], ...]  # verdict → chance, for mixed results


@dataclass(frozen=True, slots=True)
class Difference:
    """One aspect in which two traces of a scenario differ; `a` and `b` say it in words."""

    aspect: str  # one of ASPECTS
    a: str
    b: str


def behaviour(r: TraceResult) -> Behaviour:
    shares = r.shares()
    masq: dict[str, bool] = {}
    aff: dict[str, int | None] = {}
    for d in r.destinations:
        masq[d.endpoint] = masq.get(d.endpoint, False) or d.masquerade
        aff[d.endpoint] = d.affinity if aff.get(d.endpoint) is None else aff[d.endpoint]
    return Behaviour(r.verdict, tuple(sorted(shares.items())), tuple(sorted(masq.items())), r.masquerade,
                     tuple(sorted(aff.items())), tuple(sorted(r.outcomes.items())))


def percent(p: Fraction) -> str:
    """33.3%: one decimal, trailing zero dropped (100%, 50%, 33.3%)."""
    s = f"{float(p) * 100:.1f}"
    return (s[:-2] if s.endswith(".0") else s) + "%"


def _shares_text(b: Behaviour) -> str:
    if not b.shares:
        return "no endpoint"
    return ", ".join(f"{ep} {percent(p)}" for ep, p in b.shares)


def _verdict_text(b: Behaviour) -> str:
    if len(b.outcomes) > 1:
        return ", ".join(f"{v} {percent(p)}" for v, p in b.outcomes)
    return b.verdict


def _masq_text(b: Behaviour, eps: Iterable[str] | None = None) -> str:
    m = dict(b.masquerade)
    if eps is not None and m:
        kinds = {m[e] for e in eps}
        if len(kinds) == 1:
            return "masqueraded" if kinds.pop() else "client address kept"
        return ", ".join(f"{e} {'masqueraded' if m[e] else 'kept'}" for e in eps)
    return "masqueraded" if b.masquerade_any else "client address kept"


def _aff_text(b: Behaviour) -> str:
    secs = {s for _, s in b.affinity}
    if not secs or secs == {None}:
        return "no session affinity"
    return ", ".join(sorted(f"affinity {s} s" if s else "no affinity" for s in secs))


def compare(a: TraceResult | None, b: TraceResult | None, a_error: str | None = None,
            b_error: str | None = None) -> tuple[Difference, ...]:
    """The aspects in which A and B differ (empty: the same behaviour); a missing result is its error."""
    if a is None or b is None:
        if a is None and b is None:
            return ()
        return (Difference("trace", "not traced: " + (a_error or "") if a is None else "traced",
                           "not traced: " + (b_error or "") if b is None else "traced"),)
    ba, bb = behaviour(a), behaviour(b)
    out: list[Difference] = []
    if ba.verdict != bb.verdict or ba.outcomes != bb.outcomes:
        out.append(Difference("verdict", _verdict_text(ba), _verdict_text(bb)))
    if ba.shares != bb.shares:
        out.append(Difference("destinations", _shares_text(ba), _shares_text(bb)))
    common = sorted(set(dict(ba.masquerade)) & set(dict(bb.masquerade)))
    if common:
        ma, mb = dict(ba.masquerade), dict(bb.masquerade)
        if any(ma[e] != mb[e] for e in common):
            out.append(Difference("masquerade", _masq_text(ba, common), _masq_text(bb, common)))
    elif ba.shares and bb.shares and ba.masquerade_any != bb.masquerade_any:
        out.append(Difference("masquerade", _masq_text(ba), _masq_text(bb)))
    if {s for _, s in ba.affinity if s} != {s for _, s in bb.affinity if s} and ba.shares and bb.shares:
        out.append(Difference("affinity", _aff_text(ba), _aff_text(bb)))
    return tuple(out)


def compare_outcomes(a: Iterable[Outcome], b: Iterable[Outcome]) -> dict[tuple, tuple[Difference, ...]]:
    """Scenario key → the differences between A's and B's trace of it (only keys that differ).

    A scenario traced on one side only is a difference of aspect `trace`.
    """
    bk = {o.scenario.key: o for o in b}
    out: dict[tuple, tuple[Difference, ...]] = {}
    seen = set()
    for oa in a:
        k = oa.scenario.key
        seen.add(k)
        ob = bk.get(k)
        if ob is None:
            out[k] = (Difference("trace", "traced", "not traced"),)
            continue
        d = compare(oa.result, ob.result, oa.error, ob.error)
        if d:
            out[k] = d
    for k in bk:
        if k not in seen:
            out[k] = (Difference("trace", "not traced", "traced"),)
    return out
