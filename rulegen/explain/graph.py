"""One Service port's traces as a graph: clients, entry points, chains, endpoints and stops, with shares.

The graph is built from the neutral trace records only (`TraceResult`,
its paths and hops), so every mode's tracer draws alike. From each path
it keeps what a NodePort walk-through draws:

- the *spine*: the chains the connection is handed down before its fate
  is decided. Hops are read as calls and returns (a hop in a chain already
  on the stack is a return to it; a hop in one of the hooks' base chains
  starts a new hook), and the spine is the stack at the end of each hook
  traversal before the routing decision, plus the stack at the decisive
  hop: the one that rewrote the destination (its verdict names the
  endpoint) or the rule that stopped the connection;
- *balancers*: a hop of kind `balance` (IPVS choosing a real server) is
  drawn like a chain, named by its `chain` ("IPVS rr") and the virtual
  server its rule names, since that is where the destination is chosen;
- *side calls*: chains entered and returned from (KUBE-MARK-MASQ), shown
  as a badge on the chain that called them, since the connection does not
  flow through them;
- the *end*: the endpoint (behind a hop to its node when it runs on
  another node), a stop (REJECT, DROP, a source-range firewall), or "not
  captured" when no rule took the connection;
- *masquerade*: the edges into a masqueraded endpoint are marked, with
  the hop that rewrote the source (MASQUERADE / SNAT) in their title.

Each edge carries its share: the fraction of the connections reaching its
source that take it, per scenario (33.3% from a KUBE-SVC chain to each of
three KUBE-SEP chains). Everything is ordered by first appearance in the
scenario order, so the same traces give the same graph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable

from ..ipaddr import cidr_contains
from ..trace import entry as E
from ..trace.compare import percent
from ..trace.model import Path, TraceResult
from ..trace.scenarios import LOAD_BALANCER, OTHER_PORT, Outcome, Scenario

STOPS = ("DROP", "REJECT")
SOURCE_NAT = re.compile(r"(^|; )(MASQUERADE|SNAT)\b")
END_KINDS = ("endpoint", "stop", "pass", "error")
TITLE_SCENARIOS = 8  # scenarios named in one element's title before "and N more"


@dataclass
class Node:
    id: str
    kind: str  # client | entry | chain | hop | endpoint | stop | pass | error
    label: str
    sub: list[str] = field(default_factory=list)  # further lines under the label
    title: str = ""
    badges: list[str] = field(default_factory=list)  # side calls, "≠ differs"
    badge_titles: list[str] = field(default_factory=list)
    scenarios: list[Scenario] = field(default_factory=list)
    differs: bool = False
    local: bool | None = None  # endpoints: on this node


@dataclass
class Edge:
    src: str
    dst: str
    masq: bool = False
    label: str = ""
    title: str = ""
    differs: bool = False
    scenarios: list[Scenario] = field(default_factory=list)
    shares: list[Fraction] = field(default_factory=list)  # distinct conditional shares, first-seen order
    masq_at: list[str] = field(default_factory=list)


@dataclass
class Graph:
    nodes: dict[str, Node]
    edges: dict[tuple[str, str, bool], Edge]

    def node_list(self) -> list[Node]:
        return list(self.nodes.values())

    def edge_list(self) -> list[Edge]:
        return list(self.edges.values())


# ---------------------------------------------------------------- reading one path


@dataclass
class Shape:
    spine: list[tuple[str, str]]  # (table, chain), in order
    calls: dict[tuple[str, str], list[str]]  # spine chain → chains it called and returned from
    masq_at: tuple[str, str, str] | None  # (table, chain, "MASQUERADE"/"SNAT")
    stop_at: tuple[str, str] | None  # (table, chain) of the rule or policy that stopped it
    balancers: dict[tuple[str, str], str] = field(default_factory=dict)  # spine key → what it balances


def decisive_index(p: Path) -> int:
    """The hop that decided the path: its DNAT (the verdict naming the endpoint) or its stop; -1 if none."""
    if p.verdict in STOPS:
        return len(p.hops) - 1
    if p.verdict != "DNAT":
        return -1
    ep = p.packet.dst_endpoint
    for i, h in enumerate(p.hops):
        if h.kind in ("rule", "balance") and ep in h.verdict:
            return i
    last = -1
    for i, h in enumerate(p.hops):  # no hop names it: the last rule before the routing decision
        if h.kind == "route":
            break
        if h.kind in ("rule", "balance"):
            last = i
    return last


def path_shape(p: Path, base_chains: frozenset[str]) -> Shape:
    spine: list[tuple[str, str]] = []
    calls: dict[tuple[str, str], list[str]] = {}
    stack: list[tuple[str, str]] = []
    masq_at = None
    balancers: dict[tuple[str, str], str] = {}
    decisive = decisive_index(p)
    routed = frozen = False

    def flush() -> None:
        if frozen:
            return
        for c in stack:
            if c not in spine:
                spine.append(c)

    for i, h in enumerate(p.hops):
        if h.kind in ("route", "deliver"):
            if not routed:
                flush()
            routed = True
            stack = []
            continue
        key = (h.table, h.chain)
        if h.kind == "balance":
            balancers[key] = h.rule.split(": ", 1)[0]  # "IPVS virtual server TCP 10.96.0.1:80 (-s rr)"
        if h.chain in base_chains:
            if not routed:
                flush()
            stack = []
        elif key in stack:
            j = stack.index(key)
            for k in range(j + 1, len(stack)):  # returned from: each was a side call of the one below it
                called = calls.setdefault(stack[k - 1], [])
                if stack[k][1] not in called:
                    called.append(stack[k][1])
            del stack[j + 1:]
        else:
            stack.append(key)
        # A verdict may tell several things ("mark is now 0x0; MASQUERADE: ..."): the source rewrite is one.
        m = SOURCE_NAT.search(h.verdict.upper())
        if h.kind == "rule" and masq_at is None and m:
            masq_at = (h.table, h.chain, m.group(2))
        if i == decisive:
            flush()
            frozen = True
    stop_at = None
    if p.verdict in STOPS and p.hops:
        h = p.hops[-1]
        stop_at = (h.table, h.chain)
    return Shape(spine, calls, masq_at, stop_at, balancers)


# ---------------------------------------------------------------- the graph


def _names(scs: Iterable[Scenario]) -> str:
    seen: list[str] = []
    for s in scs:
        d = f"{s.client.label} → {s.entry.address}"
        if d not in seen:
            seen.append(d)
    more = len(seen) - TITLE_SCENARIOS
    text = "; ".join(seen[:TITLE_SCENARIOS])
    return text + (f"; and {more} more" if more > 0 else "")


def stop_reason(sc: Scenario, port: Any, verdict: str) -> str:
    """Why the plan says this connection stops, in a few words ("" when the plan does not say).

    kube-proxy rejects a connection to a Service without endpoints (and, in
    some modes, to a port of a ClusterIP that is no Service port), and drops
    one its firewall refuses or one for a Local policy without a local
    endpoint; the verdict picks among those, the plan says which applies.
    """
    if sc.entry.kind == OTHER_PORT:
        return "no Service port"
    if port is None:
        return ""
    if verdict == "REJECT":
        return "no endpoints" if not port.sel.has_any else ""
    if (sc.entry.kind == LOAD_BALANCER and port.source_ranges
            and not any(cidr_contains(r, sc.client.src) for r in port.source_ranges)):
        return "firewall: not in loadBalancerSourceRanges"
    if port.ext_local and not port.sel.local and sc.entry.kind != "cluster-ip":
        return "externalTrafficPolicy Local: no local endpoint"
    if port.int_local and not port.sel.local:
        return "internalTrafficPolicy Local: no local endpoint"
    return ""


class _Builder:
    def __init__(self, differs: set[tuple]) -> None:
        self.nodes: dict[str, Node] = {}
        self.edges: dict[tuple[str, str, bool], Edge] = {}
        self.differs = differs
        self.calls: dict[tuple[str, str], list[Scenario]] = {}  # (chain node, side-called chain) → who

    def node(self, nid: str, kind: str, label: str, sub: list[str] | None = None, title: str = "") -> Node:
        n = self.nodes.get(nid)
        if n is None:
            n = self.nodes[nid] = Node(nid, kind, label, list(sub or []), title)
        return n

    def edge(self, src: str, dst: str, sc: Scenario, masq: bool = False) -> Edge:
        k = (src, dst, masq)
        e = self.edges.get(k)
        if e is None:
            e = self.edges[k] = Edge(src, dst, masq)
        if not e.scenarios or e.scenarios[-1] is not sc:
            e.scenarios.append(sc)
        return e


def build(outcomes: list[Outcome], port: Any = None, differs: set[tuple] | None = None) -> Graph:
    """The graph of one Service port's OUTCOMES (PORT: its plan record, for the stops' reasons).

    DIFFERS holds the keys of scenarios that behave differently in the
    other mode (`--compare`): their entry, edge and ends are marked.
    """
    b = _Builder(differs or set())
    for o in outcomes:
        _add(b, o, port)
    _finish(b, outcomes)
    return Graph(b.nodes, b.edges)


def _add(b: _Builder, o: Outcome, port: Any) -> None:
    sc, r = o.scenario, o.result
    diff = sc.key in b.differs
    c = b.node(f"client:{sc.client.kind}", "client", sc.client.label, [sc.client.src],
               f"{sc.client.label}, address {sc.client.src}"
               + (f", arriving on {sc.client.in_iface}" if sc.client.in_iface else ", sent by the node"))
    en = b.node(f"entry:{sc.entry.kind}:{sc.entry.address}", "entry", sc.entry.label,
                [f"{sc.entry.address} {sc.entry.proto.upper()}"],
                f"{sc.entry.label} {sc.entry.address} ({sc.entry.proto.upper()})")
    for n in (c, en):
        n.scenarios.append(sc)
        n.differs = n.differs or (diff and n is en)
    ce = b.edge(c.id, en.id, sc)
    ce.differs = ce.differs or diff
    if r is None:
        err = b.node(f"error:{sc.entry.address}:{sc.client.kind}", "error", "cannot trace", [], o.error or "")
        err.scenarios.append(sc)
        b.edge(en.id, err.id, sc)
        return
    mass: dict[str, Fraction] = {}
    emass: dict[tuple[str, str, bool], Fraction] = {}
    for p in r.paths:
        seq, masq_at = _sequence(b, sc, r, p, port)
        seq = [en.id] + seq
        seen: set[str] = set()
        for nid in seq:
            if nid not in seen:
                seen.add(nid)
                mass[nid] = mass.get(nid, Fraction(0)) + p.probability
                nd = b.nodes[nid]
                if not nd.scenarios or nd.scenarios[-1] is not sc:
                    nd.scenarios.append(sc)
                if diff and nd.kind in ("endpoint", "stop", "pass", "error"):
                    nd.differs = True
        last_hop = len(seq) - 1
        # The edges after the DNAT carry the masquerade: from the last chain on.
        tail_from = max(i for i, nid in enumerate(seq) if b.nodes[nid].kind in ("entry", "chain"))
        for i in range(last_hop):
            masq = p.masquerade and i >= tail_from and p.verdict == "DNAT"
            e = b.edge(seq[i], seq[i + 1], sc, masq)
            k = (seq[i], seq[i + 1], masq)
            emass[k] = emass.get(k, Fraction(0)) + p.probability
            if masq and masq_at and masq_at not in e.masq_at:
                e.masq_at.append(masq_at)
    for k, m in emass.items():
        e = b.edges[k]
        share = m / mass[k[0]] if mass.get(k[0]) else Fraction(0)
        if share not in e.shares:
            e.shares.append(share)


def _sequence(b: _Builder, sc: Scenario, r: TraceResult, p: Path, port: Any) -> tuple[list[str], str]:
    """The node ids of path P after the entry (chains, then its end), made as needed; and where it masqueraded."""
    shape = path_shape(p, r.base_chains)
    seq: list[str] = []
    for table, chain in shape.spine:
        what = shape.balancers.get((table, chain))
        if what:  # one node per virtual server: a ClusterIP's and a NodePort's are different ones
            nid = f"balance:{table}:{chain}:{what}"
            short = what.removeprefix("IPVS ").removeprefix("virtual server ").split(" (")[0]
            n = b.node(nid, "chain", chain, [table, short] if table else [short],
                       f"chain {chain} (table {table}): {what} chooses the endpoint")
        else:
            nid = f"chain:{table}:{chain}"
            n = b.node(nid, "chain", chain, [table] if table else [],
                       f"chain {chain}" + (f" (table {table})" if table else ""))
        for called in shape.calls.get((table, chain), ()):
            who = b.calls.setdefault((nid, called), [])
            if not who:
                n.badges.append(f"↪ {called}")
            if sc not in who:
                who.append(sc)
        seq.append(nid)
    masq_at = ""
    if shape.masq_at:
        t, ch, word = shape.masq_at
        masq_at = f"{word} in {t + ' ' if t else ''}{ch}"
    if p.verdict == "DNAT":
        ep = p.packet.dst_endpoint
        d = next((x for x in r.destinations if x.endpoint == ep and x.masquerade == p.masquerade),
                 next((x for x in r.destinations if x.endpoint == ep), None))
        node, local = (d.node, d.local) if d is not None else (None, None)
        if local is False:
            hid = f"hop:{node}"
            b.node(hid, "hop", f"node {node}", ["another node: extra hop"],
                   f"the connection leaves this node for {node}, where the endpoint runs (an extra hop)")
            seq.append(hid)
        if local is True:
            where = f"this node ({node})" if node else "this node"
        elif local is False:
            where = f"on {node}"
        else:
            where = f"node {node}, unknown whether this one" if node else "node unknown"
        n = b.node(f"endpoint:{ep}", "endpoint", ep, [where], f"endpoint {ep}, {where}")
        n.local = local
        seq.append(n.id)
    elif p.verdict in STOPS:
        t, ch = shape.stop_at or ("", "")
        reason = stop_reason(sc, port, p.verdict)
        nid = f"stop:{p.verdict}:{t}:{ch}:{reason}"
        rule = p.hops[-1].rule if p.hops else ""
        title = f"{p.verdict} by {t + ' ' if t else ''}{ch}: {rule}" + "".join(f"; {n}" for n in p.notes)
        b.node(nid, "stop", p.verdict, [reason] if reason else [], title)
        seq.append(nid)
    else:
        local = E.is_local(p.packet.dst, frozenset(r.node_ips))
        where = "to a socket on this node" if local else "routed on, unchanged"
        nid = f"pass:{'local' if local else 'out'}"
        b.node(nid, "pass", "not captured", [where],
               f"no rule took the connection ({p.verdict}): it goes {where} ({p.packet.dst_endpoint})")
        seq.append(nid)
    return seq, masq_at


def _finish(b: _Builder, outcomes: list[Outcome]) -> None:
    """Labels and titles once every scenario is in: shares, masquerade, who uses what."""
    def name(n: Node) -> str:  # a balancer is named with its virtual server: a page has several "IPVS rr"
        return f"{n.label} {n.sub[-1]}" if n.id.startswith("balance:") else n.label

    for e in b.edges.values():
        src, dst = b.nodes[e.src], b.nodes[e.dst]
        if src.kind not in ("chain", "entry"):
            e.shares = []  # only a chain chooses; after a hop to another node the choice is made
        if any(s != 1 for s in e.shares):
            e.label = " / ".join(percent(s) for s in e.shares)
        if e.masq and b.nodes[e.dst].kind == "endpoint":
            e.label = (e.label + " " if e.label else "") + "MASQ"
        parts = [f"{name(src)} → {name(dst)}"]
        if any(s != 1 for s in e.shares):
            parts.append(" or ".join(f"{s} ({percent(s)})" for s in e.shares)
                         + f" of the connections reaching {name(src)}")
        if e.masq:
            parts.append("masqueraded: the endpoint sees the node's address"
                         + (f" ({', '.join(e.masq_at)})" if e.masq_at else ""))
        elif dst.kind == "endpoint":
            parts.append("client address kept")
        if e.differs:
            parts.append("behaves differently in the other mode")
        e.title = "; ".join(parts)
    for (nid, called), who in b.calls.items():
        b.nodes[nid].badge_titles.append(f"{b.nodes[nid].label} jumps to {called} and returns, for: {_names(who)}")
    for n in b.nodes.values():
        if n.differs:
            n.badges.append("≠ differs")
            n.badge_titles.append("a scenario through here behaves differently in the other mode")
        # Who arrives here; a chain's list would repeat its entry points' and ends', so it has none.
        if n.kind == "entry":
            kinds = list(dict.fromkeys(s.client.label for s in n.scenarios))
            n.title += f"; reached by: {', '.join(kinds)}"
        elif n.kind in END_KINDS:
            n.title += f"; for: {_names(n.scenarios)}"
