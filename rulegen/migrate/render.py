"""A migrate `Result` as the report a person reads (templates/migrate.j2) and as JSON.

The text groups the differences by cause: per cause its one-line reason,
what restores the old behaviour (or why nothing does), the Services and
destinations it touches, and one line per connection with what it does in
each mode. A behaviour is said in one short phrase: the verdict, the
endpoints with their shares, whether the endpoint sees the client's
address, and affinity. JSON carries the same, each behaviour in full.
"""

from __future__ import annotations

import json
from typing import Any

from ..templating import render as render_template
from ..trace.compare import Behaviour, percent
from ..trace.scenarios import CLIENT_KINDS, ENTRY_KINDS
from . import Found, Result
from .causes import CAUSE_IDS, Side

MAX_LISTED = 2  # endpoints named one by one in a phrase; more are counted


def _sort_key(f: Found) -> tuple:
    sc = f.scenario
    return (sc.spn, CLIENT_KINDS.index(sc.client.kind), ENTRY_KINDS.index(sc.entry.kind), sc.entry.address)


def phrase(s: Side) -> str:
    """What one mode does with the connection, in a few words."""
    b = s.behaviour
    if b is None:
        return "not traced"
    return behaviour_phrase(b)


def behaviour_phrase(b: Behaviour) -> str:
    if len(b.outcomes) > 1:
        head = ", ".join(f"{v} {percent(p)}" for v, p in b.outcomes)
    elif b.verdict == "ACCEPT" and not b.shares:
        return "not caught (ACCEPT)"
    elif b.verdict != "DNAT":
        return b.verdict
    else:
        head = "DNAT"
    shares = list(b.shares)
    if not shares:
        return head
    values = {p for _, p in shares}
    if None in values:  # a scheduler that hashes or counts: the rules do not fix the shares
        eps = (f"{len(shares)} endpoints" if len(shares) > MAX_LISTED else ", ".join(ep for ep, _ in shares)) \
            + " (shares not fixed by the rules)"
    elif len(shares) > MAX_LISTED and len(values) == 1:
        eps = f"{len(shares)} endpoints, {percent(values.pop())} each"
    elif len(shares) > MAX_LISTED:
        eps = f"{len(shares)} endpoints"
    else:
        eps = ", ".join(f"{ep} {percent(p)}" for ep, p in shares)
    masq = {m for _, m in b.masquerade}
    parts = [f"{head} {eps}"]
    if masq == {True}:
        parts.append("masqueraded")
    elif masq == {False}:
        parts.append("client address kept")
    elif masq:
        parts.append("masqueraded to " + ", ".join(ep for ep, m in b.masquerade if m))
    secs = sorted({a for _, a in b.affinity if a})
    if secs:
        parts.append("affinity " + ", ".join(f"{x} s" for x in secs))
    return "; ".join(parts)


def behaviour_json(s: Side) -> dict[str, Any]:
    b = s.behaviour
    if b is None:
        return {"error": s.error or "not traced"}
    masq = dict(b.masquerade)
    aff = dict(b.affinity)
    out: dict[str, Any] = {
        "verdict": b.verdict,
        "destinations": [{"endpoint": ep, "probability": None if p is None else float(p),
                          "chance": None if p is None else str(p), "masquerade": masq.get(ep, False),
                          "affinity_seconds": aff.get(ep)} for ep, p in b.shares],
        "masquerade": b.masquerade_any,
        "affinity_seconds": next((x for _, x in b.affinity if x), None),
    }
    if len(b.outcomes) > 1:
        out["outcomes"] = {v: None if p is None else str(p) for v, p in b.outcomes}
    return out


def _difference_json(f: Found) -> dict[str, Any]:
    sc = f.scenario
    return {"service": sc.spn, "client": sc.client.kind, "source": sc.client.src, "entry": sc.entry.kind,
            "destination": sc.entry.address, "protocol": sc.entry.proto, "aspects": [d.aspect for d in f.aspects],
            "from": behaviour_json(f.a), "to": behaviour_json(f.b), "cause": f.why.cause, "reason": f.why.reason,
            "setting": f.why.setting, "no_setting": f.why.no_setting}


def groups(found: list[Found]) -> list[dict[str, Any]]:
    """The differences by cause, in the table's order; per cause its words, Services, destinations and rows."""
    by: dict[str, list[Found]] = {}
    for f in sorted(found, key=_sort_key):
        by.setdefault(f.why.cause, []).append(f)
    out = []
    for cause in sorted(by, key=CAUSE_IDS.index):
        fs = by[cause]
        # One cause may be worded differently per difference (a setting per address family, ...): keep each once.
        reasons = list(dict.fromkeys(f.why.reason for f in fs))
        settings = list(dict.fromkeys(f.why.setting for f in fs if f.why.setting))
        no_settings = list(dict.fromkeys(f.why.no_setting for f in fs if f.why.no_setting and not f.why.setting))
        out.append({
            "cause": cause, "title": fs[0].why.title, "reasons": reasons, "settings": settings,
            "no_settings": no_settings,
            "services": list(dict.fromkeys(f.scenario.service for f in fs)),
            "destinations": list(dict.fromkeys(f.scenario.entry.address for f in fs)),
            "rows": fs,
        })
    return out


def render_json(r: Result) -> str:
    doc: dict[str, Any] = {
        "from": r.from_mode, "to": r.to_mode, "node": r.node, "family": f"ipv{r.family}",
        "traced": r.traced, "service_ports": r.ports,
        "differences": [_difference_json(f) for f in sorted(r.differences, key=_sort_key)],
        "causes": [{k: v for k, v in g.items() if k != "rows"} | {"count": len(g["rows"])} for g in groups(r.differences)],
        "notes": list(r.notes),
    }
    if r.settings_to is not None:
        doc["settings_to"] = {"file": r.settings_to,
                              "removed": [_difference_json(f) for f in sorted(r.removed, key=_sort_key)]}
    return json.dumps(doc, indent=2) + "\n"


def _table(rows: list[Found], a: str, b: str) -> list[str]:
    head = ("SERVICE", "CLIENT", "DESTINATION", *((a.upper(), b.upper()) if a != b else ("BEFORE", "AFTER")))
    body = [(f.scenario.spn, f.scenario.client.kind,
             f.scenario.entry.address + ("" if f.scenario.entry.proto == "tcp" else "/" + f.scenario.entry.proto),
             phrase(f.a), phrase(f.b)) for f in rows]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(4)]
    return ["  ".join(x[i].ljust(widths[i]) for i in range(4)) + "  " + x[4] for x in (head, *body)]


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def render_text(r: Result) -> str:
    gs = groups(r.differences)
    removed = groups(r.removed) if r.settings_to is not None else []
    return render_template(
        "migrate.j2", r=r, groups=gs, removed=removed, table=_table, plural=_plural,
        removed_count=len(r.removed),
    )
