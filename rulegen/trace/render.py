"""A `TraceResult` as the page a person reads (templates/trace.j2) or as the `--json` document.

The page draws each path the way NodePort walk-throughs do (client → node
port → KUBE-SERVICES → KUBE-NODEPORTS → KUBE-EXT → KUBE-SVC → KUBE-SEP →
DNAT → pod), then lists the hops (table, rule, what happened), then every
destination with its exact chance, its node, and whether the client
address survives. Hop lines are built here; the template only lays them out.
"""

from __future__ import annotations

import json
from fractions import Fraction

from ..ipaddr import endpoint_string
from ..templating import render as render_template
from .model import Destination, Hop, Path, TraceResult


def percent(p: Fraction) -> str:
    s = f"{float(p) * 100:.2f}".rstrip("0").rstrip(".")
    return f"{s}%"


def chance(p: Fraction | None, unknown: str = "") -> str:
    if p is None:
        return f"not fixed by the rules ({unknown})" if unknown else "not fixed by the rules"
    return f"{p} ({percent(p)})" if p != 1 else "1 (100%)"


def hop_lines(h: Hop) -> tuple[str, str]:
    """(what was evaluated, what happened) for one hop."""
    if h.kind in ("route", "deliver", "balance") or (h.kind == "assume" and not h.number):
        return h.rule, h.verdict
    if h.kind == "policy":
        # an nft base chain's policy hop names its declaration (`type filter hook forward ...; policy drop`)
        what = "(the base chain's policy)" if "; policy " in h.rule else "(policy of the built-in chain)"
        return f"{h.table:<6} {h.rule} {what}", h.verdict
    where = f"{h.table:<6} {h.rule}   (rule {h.number})"
    if h.kind == "skip":
        return where, f"random: not taken ({h.chance} of the connections reaching it)"
    if h.chance is not None:
        return where, f"random: taken ({h.chance} of the connections reaching it): {h.verdict}"
    if h.verdict == "REJECT" and "--reject-with " in h.rule:
        kind = h.rule.split("--reject-with ", 1)[1].split(" ", 1)[0]
        if kind not in ("icmp-port-unreachable", "icmp6-port-unreachable"):  # a firewall's own answer
            return where, f"REJECT: the client is refused ({kind})"
    if h.verdict == "REJECT" and " reject with " in f" {h.rule}":  # nft: `reject with icmpx admin-prohibited`
        kind = h.rule.split(" reject with ", 1)[1].split(" # handle ", 1)[0].split(' comment "', 1)[0]
        return where, f"REJECT: the client is refused ({kind})"
    return where, _EXPLAIN.get(h.verdict, h.verdict)


_EXPLAIN = {
    "DROP": "DROP: the packet is discarded, the client hears nothing",
    "REJECT": "REJECT: the client is refused (ICMP port unreachable)",
    "ACCEPT": "ACCEPT: this table lets the packet through",
}


def _start(r: TraceResult) -> str:
    e = r.entry
    if e.hook == "OUTPUT":
        return f"node {r.packet.src}"
    if e.who.startswith("a pod"):
        return f"pod {r.packet.src}"
    return f"client {r.packet.src}"


def _target(r: TraceResult) -> str:
    t = r.entry.target
    d = r.packet.dst_endpoint
    for kind in ("node port", "cluster IP", "external IP", "load-balancer IP", "health check node port"):
        if t.startswith(kind):
            return f"{kind} {d}"
    return d


def _where(d: Destination, r: TraceResult) -> str:
    if d.local is True:
        return f"{d.node or 'this node'} (this node)"
    if d.local is False:
        return f"{d.node} (another node: extra hop)"
    if d.node:
        return f"{d.node} (unknown whether this node)"
    if not r.nodes_known:
        return "unknown (give the Kubernetes files too, to name the endpoints' nodes)"
    return "unknown (the EndpointSlice names no node)"


def _client(masq: bool, r: TraceResult) -> str:
    if masq:
        return "masqueraded (the endpoint sees the node's address)"
    return f"kept (the endpoint sees {r.packet.src})"


def diagram(p: Path, r: TraceResult) -> str:
    parts = [_start(r), _target(r)]
    seen: set[str] = set()
    for h in p.hops:
        if h.kind == "balance":
            parts.append(h.chain)
            continue
        if h.kind != "rule":
            continue
        if h.chain not in r.base_chains and h.chain not in seen:
            seen.add(h.chain)
            parts.append(h.chain)
        if h.verdict.startswith("DNAT "):
            parts.append("DNAT")
        elif h.verdict.startswith(("MASQUERADE", "SNAT")):
            parts.append(h.verdict.split(":", 1)[0])
    if p.verdict == "DNAT":
        ep = p.packet.dst_endpoint
        d = next((x for x in r.destinations if x.endpoint == ep), None)
        node = f" on {d.node}" if d and d.node else ""
        parts.append(f"pod {ep}{node}" if not (d and d.local and d.node == r.node and p.packet.dst in r.node_ips)
                     else f"node {ep}")
    elif p.verdict == "ACCEPT":
        parts.append(f"{p.packet.dst_endpoint} (left alone)")
    else:
        parts.append(p.verdict)
    return " → ".join(parts)


def _hops(hops) -> list[dict[str, str]]:
    return [dict(zip(("what", "then"), hop_lines(h))) for h in hops]


def _split_tail(p: Path, start: int) -> tuple[tuple, int]:
    """Where the hops after the path's DNAT begin, and their shape without addresses.

    Branches usually differ only up to their DNAT; what follows (FORWARD,
    POSTROUTING) has the same shape, and is printed once.
    """
    cut = None
    for i in range(start, len(p.hops)):
        if (p.hops[i].kind == "rule" and p.hops[i].verdict.startswith("DNAT ")) or p.hops[i].kind == "balance":
            cut = i + 1
    if cut is None:
        return (), len(p.hops)
    shape = tuple((h.kind, h.table, h.chain, h.number, h.rule if h.kind == "rule" else "",
                   h.verdict if h.kind != "deliver" else "") for h in p.hops[cut:])
    return shape, cut


def render_text(r: TraceResult) -> str:
    trunk = r.trunk()
    n = len(trunk)
    branches = []
    if len(r.paths) > 1:
        shown: dict[tuple, int] = {}
        for i, p in enumerate(r.paths, 1):
            end = p.packet.dst_endpoint if p.verdict == "DNAT" else p.verdict
            shape, cut = _split_tail(p, n)
            same_as = shown.get(shape) if shape else None
            if shape and same_as is None:
                shown[shape] = i
            hops = _hops(p.hops[n:cut] if same_as else p.hops[n:])
            if same_as:
                hops.append({"what": f"… then the same hops as branch {same_as}, to {end}",
                             "then": p.hops[-1].verdict})
            title = f"Branch {i} of {len(r.paths)}: {chance(p.probability, p.unknown)} → {end}"
            if p.assumptions:
                title += ", assuming " + "; ".join(a.text() for a in p.assumptions)
            branches.append({
                "title": title,
                "diagram": diagram(p, r),
                "hops": hops,
            })
    dests = [{"endpoint": d.endpoint, "chance": chance(d.probability, d.unknown), "where": _where(d, r),
              "client": _client(d.masquerade, r), "weight": d.weight,
              "assuming": "; ".join(a.text() for a in d.assuming)} for d in r.destinations]
    verdicts = sorted({p.verdict for p in r.paths})
    verdict = r.verdict
    if r.assumed and len(verdicts) > 1:
        verdict += f" (depending on the assumptions: {', '.join(verdicts)}; see the branches)"
    other = {k: chance(v) for k, v in r.outcomes.items() if k != "DNAT"} if r.destinations else {}
    e = r.entry
    frm = f"{r.packet.src}, {e.who}" + (" (no --src given)" if e.src_default else "")
    frm += f", in on {e.in_iface}" if e.in_iface else ""
    frm += f"; enters at {e.hook}"
    node = r.node or "unknown"
    if r.node_ips:
        node += f" ({', '.join(r.node_ips)})"
    return render_template(
        "trace.j2",
        title=f"{r.packet.proto.upper()} {endpoint_string(r.packet.src, r.packet.sport)} → {r.packet.dst_endpoint}",
        frm=frm, to=f"{r.packet.dst_endpoint}, {e.target}", node=node, source=r.source,
        single_diagram=diagram(r.paths[0], r) if len(r.paths) == 1 else None,
        trunk=_hops(trunk), branches=branches, destinations=dests, other_outcomes=other,
        verdict=verdict, masquerade=r.masquerade, notes=list(r.notes),
        assumptions=[f"{a.question}? {a.reason}" for a in r.assumptions()],
    )


def render_json(r: TraceResult) -> str:
    return json.dumps(r.as_json(), indent=2) + "\n"
