"""The tracer's records: the packet, each hop, each path, each destination, the result.

A trace follows one new connection. Where a `statistic` rule splits the
traffic, the walk splits into weighted paths (`fractions.Fraction`, so 1/3
stays 1/3); paths that end the same way are merged into one `Destination`.
Where something outside the rules chooses and the choice depends on what
the rules do not hold (an IPVS scheduler that counts live connections, or
hashes the client's address), the paths' and destinations' `probability`
is None and `unknown` says why; the group such paths share still has a
known total, so the outcomes (verdict → chance) stay exact.
Everything here is frozen and plain, so the lab can later compare
`TraceResult.shares()` with the hits it counts, and `as_json` is the
`rulegen trace --json` document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from ..ipaddr import endpoint_string


class TraceError(ValueError):
    """A rule the tracer cannot evaluate, named by source, table, chain and rule number."""

    def __init__(self, source: str, table: str, chain: str, number: int, spec: str, message: str) -> None:
        self.source, self.table, self.chain, self.number, self.spec = source, table, chain, number, spec
        self.message = message
        rule = f"-A {chain} {spec}" if spec else f"-A {chain}"
        super().__init__(f"{source}: table {table}, chain {chain}, rule {number} ({rule}): {message}")


@dataclass(frozen=True, slots=True)
class Packet:
    """The first packet of the connection, as the rules see it at one moment."""

    proto: str  # tcp | udp | sctp
    src: str
    sport: int
    dst: str
    dport: int
    in_iface: str | None  # None for locally generated packets
    out_iface: str | None = None  # known after the routing decision
    mark: int = 0
    dnat: bool = False  # conntrack status: destination rewritten
    snat: bool = False  # conntrack status: source rewritten (MASQUERADE / SNAT)
    virtual: tuple[str, str, int] | None = None  # IPVS took the packet: its service (proto, address, port)

    @property
    def dst_endpoint(self) -> str:
        return endpoint_string(self.dst, self.dport)


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of a path.

    kind: `rule` (a rule matched), `skip` (a random rule the path did not take),
    `policy` (a built-in chain's policy decided), `route` (the routing decision),
    `balance` (a balancer outside the rules, IPVS, chose a destination; `chain`
    names it for the path's diagram), `deliver` (the packet leaves the rules).
    """

    kind: str
    table: str
    chain: str
    number: int  # 1-based rule number in its chain; 0 for policy/route/deliver
    rule: str  # the rule text (`-A CHAIN ...`), or a description for route/deliver
    verdict: str  # what happened: "jump KUBE-SVC-…", "DNAT to 10.0.0.1:80", "ACCEPT", ...
    chance: Fraction | None = None  # for random rules and balancers: the share that went this way (when known)

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "table": self.table, "chain": self.chain,
                             "number": self.number, "rule": self.rule, "verdict": self.verdict}
        if self.chance is not None:
            d["chance"] = str(self.chance)
        return d


@dataclass(frozen=True, slots=True)
class Path:
    """One way the connection can go, with its probability and its end.

    `probability` is None when the share is not known (`unknown` says why);
    `group` is then (the branch key where the split happened, the share of
    the whole group), so the paths of one group add up to that share.
    """

    probability: Fraction | None
    verdict: str  # DNAT | ACCEPT | DROP | REJECT
    hops: tuple[Hop, ...]
    packet: Packet  # as it leaves the rules (or where it was stopped)
    masquerade: bool
    affinity: int | None = None  # seconds, when a `recent --set` (or IPVS persistence) recorded the client
    key: tuple[int, ...] = ()  # branch choices (0 = took the random rule), for stable order
    notes: tuple[str, ...] = ()
    unknown: str = ""
    group: tuple[tuple[int, ...], Fraction] | None = None
    weight: int | None = None  # the balancer's weight of this destination, when one chose it

    @property
    def endpoint(self) -> str | None:
        return self.packet.dst_endpoint if self.verdict == "DNAT" else None


@dataclass(frozen=True, slots=True)
class Destination:
    endpoint: str  # IP:PORT after DNAT
    probability: Fraction | None  # None: not fixed by the rules (`unknown` says why)
    node: str | None  # node the endpoint runs on, when known
    local: bool | None  # on this node (no extra hop); None when unknown
    masquerade: bool
    affinity: int | None = None
    unknown: str = ""
    weight: int | None = None  # the balancer's weight, when one chose the endpoint

    def as_json(self) -> dict[str, Any]:
        p = self.probability
        d: dict[str, Any] = {"endpoint": self.endpoint, "probability": None if p is None else float(p),
                             "chance": None if p is None else str(p), "node": self.node, "local": self.local,
                             "masquerade": self.masquerade}
        if p is None:
            d["reason"] = self.unknown
        if self.weight is not None:
            d["weight"] = self.weight
        if self.affinity is not None:
            d["affinity_seconds"] = self.affinity
        return d


@dataclass(frozen=True, slots=True)
class Entry:
    """Where and how the packet enters the rules."""

    hook: str  # PREROUTING | OUTPUT
    who: str  # "an outside client", "a pod on this node", "the node itself", ...
    in_iface: str | None
    src_default: bool  # --src not given; the documentation address was used
    target: str  # what the destination is: "node port of default/web:http", ...


@dataclass(frozen=True)
class TraceResult:
    packet: Packet  # as sent
    entry: Entry
    verdict: str
    destinations: tuple[Destination, ...]
    paths: tuple[Path, ...]
    notes: tuple[str, ...] = ()
    source: str = ""
    node: str | None = None  # this node's name, when known
    node_ips: tuple[str, ...] = ()
    outcomes: dict[str, Fraction | None] = field(default_factory=dict)  # verdict → total chance (None: unknown)
    nodes_known: bool = True  # the Kubernetes objects were given, so endpoints' nodes are known
    base_chains: frozenset[str] = frozenset()  # chains the hooks enter: the diagram names only the others

    @property
    def masquerade(self) -> bool:
        return any(p.masquerade for p in self.paths)

    def shares(self) -> dict[str, Fraction | None]:
        """Endpoint → chance of reaching it (masqueraded or not); None when the rules do not fix it."""
        out: dict[str, Fraction | None] = {}
        for d in self.destinations:
            prev = out.get(d.endpoint, Fraction(0))
            out[d.endpoint] = None if prev is None or d.probability is None else prev + d.probability
        return out

    def trunk(self) -> tuple[Hop, ...]:
        """The hops every path shares (the whole path when there is one)."""
        if not self.paths:
            return ()
        first = self.paths[0].hops
        n = len(first)
        for p in self.paths[1:]:
            i = 0
            m = min(n, len(p.hops))
            while i < m and p.hops[i] == first[i]:
                i += 1
            n = i
        return first[:n]

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "destinations": [d.as_json() for d in self.destinations],
            "masquerade": self.masquerade,
            "hops": [h.as_json() for h in self.trunk()],
            "packet": {"proto": self.packet.proto, "src": self.packet.src, "dst": self.packet.dst_endpoint,
                       "entry": self.entry.hook, "in_iface": self.entry.in_iface, "from": self.entry.who,
                       "src_default": self.entry.src_default, "target": self.entry.target},
            "outcomes": {k: {"probability": None if v is None else float(v), "chance": None if v is None else str(v)}
                         for k, v in self.outcomes.items()},
            "paths": [_path_json(p) for p in self.paths],
            "notes": list(self.notes),
        }


def _path_json(p: Path) -> dict[str, Any]:
    known = p.probability is not None
    d: dict[str, Any] = {"probability": float(p.probability) if known else None,
                         "chance": str(p.probability) if known else None, "verdict": p.verdict,
                         "endpoint": p.endpoint, "masquerade": p.masquerade,
                         "hops": [h.as_json() for h in p.hops]}
    if not known:
        d["reason"] = p.unknown
    return d
