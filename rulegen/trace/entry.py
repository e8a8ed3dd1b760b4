"""The tracer's neutral half: who sends the packet, where it enters, what its destination is, and the result.

Every mode's tracer walks its own objects (xtables chains, nft chains and
maps, IPVS virtual servers); what it walks between is the same for all:
the connection (`request`: the arguments checked, the default client),
who sends it and on which interface it arrives (`entry`: the node itself,
a pod on this node or another, a client outside the cluster), what the
destination is according to the plan (`describe_target`), on which node
each endpoint runs, and how the walked paths fold into destinations with
exact chances (`fold`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from ..diagnostics import UsageError
from ..ipaddr import cidr_contains, family, is_loopback, parse_ip
from ..settings import Settings
from .model import Destination, Entry, Packet, Path, TraceResult

DEFAULT_SRC = {4: "203.0.113.10", 6: "2001:db8::10"}  # documentation addresses (RFC 5737 / 3849)
DEFAULT_SPORT = 40000
PROTOS = ("tcp", "udp", "sctp")
OUTSIDE_IFACE = "eth0"
POD_IFACE = "cni0"


def is_local(ip: str, node_ips: tuple[str, ...] | frozenset[str]) -> bool:
    """An address of this node: one of its node IPs, or loopback."""
    return is_loopback(ip) or ip in node_ips


@dataclass(frozen=True)
class Request:
    """One connection to trace, its arguments checked: `src` is the sender (the default client when not given)."""

    proto: str
    src: str
    src_default: bool
    dst: str
    dport: int
    settings: Settings  # for the destination's family


def request(settings: Settings, src: str | None, dst_ip: str, dst_port: int, proto: str,
            rules_family: int) -> Request:
    """The arguments of a trace checked against each other and the rules' family (UsageError otherwise)."""
    proto = proto.lower()
    if proto not in PROTOS:
        raise UsageError(f"--proto: {proto!r} is not one of {', '.join(PROTOS)}")
    dst = parse_ip(dst_ip) if isinstance(dst_ip, str) else None
    if dst is None:
        raise UsageError(f"--dst: {dst_ip!r} is not an IP address")
    if not 0 < int(dst_port) < 65536:
        raise UsageError(f"--dst: port {dst_port} is not between 1 and 65535")
    fam = family(dst)
    if fam != rules_family:
        raise UsageError(f"--dst {dst} is IPv{fam} but the rules are IPv{rules_family}")
    src_default = src is None
    if src is None:
        s = DEFAULT_SRC[fam]
    else:
        s = parse_ip(src)
        if s is None:
            raise UsageError(f"--src: {src!r} is not an IP address")
        if (":" in s) != (fam == 6):
            raise UsageError(f"--src {s} and --dst {dst} are of different address families")
    return Request(proto, s, src_default, dst, int(dst_port), replace(settings, family=fam))


def notes_for(req: Request) -> tuple[list[str], list[str]]:
    """The notes every trace of REQ carries: (those before the mode's own, those after)."""
    head, tail = [], []
    if req.src_default:
        head.append(f"no --src given: the connection comes from {req.src}, a documentation address "
                    "standing for a client outside the cluster")
    fs = req.settings
    if not fs.node_ips_of(fs.family):
        tail.append("no node addresses known (no Node object, no --node-ip): only loopback counts as "
                    "an address of this node (addrtype LOCAL)")
    return head, tail


_NODES_CACHE: list[tuple[Any, dict[str, str | None]]] = []


def endpoint_nodes(plan: Any) -> dict[str, str | None]:
    """Endpoint string and bare IP → node name, from every service port of the plan.

    Read only by the callers; the last plan's map is kept, because a page
    of traces (`rulegen explain`, the lab) asks for it once per trace and
    building it costs a pass over every endpoint of the cluster.
    """
    if plan is None:
        return {}
    if _NODES_CACHE and _NODES_CACHE[0][0] is plan:
        return _NODES_CACHE[0][1]
    out: dict[str, str | None] = {}
    for p in plan.ports:
        for e in p.endpoints:
            out.setdefault(e.ep, e.node_name)
            out.setdefault(e.ip, e.node_name)
    _NODES_CACHE[:] = [(plan, out)]
    return out


def pod_iface(s: Settings) -> str:
    """The interface a pod of this node is reached on: the detector's when it names one, else the bridge.

    A prefix (`veth+`) stands for every pod's own interface; the trace names
    one of them (`veth0`), as it names the node's uplink `eth0`.
    """
    det = s.local_detector()
    if not det.iface:
        return POD_IFACE
    return det.iface[:-1] + "0" if det.iface.endswith("+") else det.iface


def from_pod_iface(entry: Entry, iface: str, s: Settings, in_iface: str | None,
                   named: str | None) -> tuple[Entry, str]:
    """ENTRY and the interface the packet arrives on, where a pod of this node sends through NAMED
    (`--pod-iface`) rather than `pod_iface(S)`; `--in-iface` (IN_IFACE) wins over both."""
    if named and not in_iface and iface == pod_iface(s) and entry.hook == "PREROUTING":
        return replace(entry, in_iface=named), named
    return entry, iface


def local_pod_iface(s: Settings, eps: dict[str, str | None], pod_cidrs: tuple[str, ...], named: str | None = None):
    """`dst → interface` for destinations that are pods on this node (None for any other address).

    NAMED (`--pod-iface`) is the interface the node's pods are reached on, else `pod_iface(S)`."""
    iface = named or pod_iface(s)

    def route(dst: str) -> str | None:
        if dst in eps and eps[dst] is not None:
            return iface if s.hostname and eps[dst] == s.hostname else None
        if any(cidr_contains(c, dst) for c in pod_cidrs if (":" in c) == (":" in dst)):
            return iface
        return None

    return route


def entry(src: str, src_default: bool, dst: str, dport: int, proto: str, s: Settings, plan: Any,
          eps: dict[str, str | None], pod_cidrs: tuple[str, ...], in_iface: str | None,
          own: frozenset[str] = frozenset()) -> tuple[Entry, str | None]:
    """Who sends SRC's packet and where it enters: (the Entry, the interface it arrives on or None).

    OWN are addresses the node holds besides its node IPs (IPVS mode's
    kube-ipvs0 addresses): a packet from one of them is the node's own.
    """
    node_ips = frozenset(s.node_ips)
    target = describe_target(dst, dport, proto, plan, node_ips)
    if is_local(src, node_ips) or src in own:
        if is_loopback(src):
            who = "the node itself (loopback)"
        else:
            who = "the node itself" if src in node_ips else f"the node itself (from {src}, an address it holds)"
        return Entry("OUTPUT", who, None, src_default, target), None
    pod_iface_ = pod_iface(s)
    if src in eps:
        node = eps[src]
        if node is not None and node == s.hostname:
            who, iface = f"a pod on this node ({node})", pod_iface_
        elif node is not None:
            who, iface = f"a pod on node {node}", OUTSIDE_IFACE
        else:
            who, iface = "a pod (node unknown)", pod_iface_
    elif any(cidr_contains(c, src) for c in pod_cidrs if (":" in c) == (":" in src)):
        who, iface = "a pod on this node", pod_iface_
    elif any(cidr_contains(c, src) for c in s.cidrs_of(s.cluster_cidrs)):
        if any((":" in c) == (":" in src) for c in pod_cidrs):
            who, iface = "a pod on another node (inside the cluster CIDR)", OUTSIDE_IFACE
        else:
            who, iface = "a pod (inside the cluster CIDR)", pod_iface_
    elif s.cidrs_of(s.cluster_cidrs) or pod_cidrs or eps:
        who, iface = "a client outside the cluster", OUTSIDE_IFACE
    else:
        who, iface = "a client (no pod range known, so not taken for a pod)", OUTSIDE_IFACE
    if in_iface:
        iface = in_iface
    return Entry("PREROUTING", who, iface, src_default, target), iface


def describe_target(dst: str, dport: int, proto: str, plan: Any, node_ips: frozenset[str]) -> str:
    """What DST:DPORT is according to PLAN (a Service's cluster IP, node port, ...)."""
    local = is_local(dst, node_ips)
    if plan is not None:
        for p in plan.ports:
            if p.proto != proto:
                continue
            port = p.port.port
            if dst == p.cluster_ip and dport == port:
                return f"cluster IP of {p.spn}"
            if dst in p.external_ips and dport == port:
                return f"external IP of {p.spn}"
            if dst in p.lb_ips and dport == port:
                return f"load-balancer IP of {p.spn}"
            if local and p.node_port and dport == p.node_port:
                return f"node port of {p.spn}" + (" on localhost" if is_loopback(dst) else "")
        for p in plan.ports:
            if local and p.hc_node_port and dport == p.hc_node_port and proto == "tcp":
                return f"health check node port of {p.spn}"
    if local:
        return "loopback" if is_loopback(dst) else "an address of this node"
    return "an address that is not a Service address of these inputs" if plan is not None else "an address"


def fold(pkt: Packet, entry: Entry, paths: list[Path], notes: list[str], s: Settings,
         eps: dict[str, str | None], source: str, nodes_known: bool,
         base_chains: frozenset[str] = frozenset()) -> TraceResult:
    """The walked PATHS folded into destinations with exact chances, and the verdict.

    BASE_CHAINS are the chains the mode's hooks enter (the diagram leaves
    them out and names the others). Paths that rest on assumptions (matches
    the walk could not decide) fold per set of assumptions: each set is a
    world of its own, and a verdict's chance is the most it has in any one.
    """
    node_ips = frozenset(s.node_ips)
    dests: dict[tuple, list] = {}
    worlds: dict[tuple, tuple[dict[str, Fraction | None], dict]] = {}  # per set of assumptions: outcomes, groups
    for p in paths:
        world = tuple(sorted(p.assumptions, key=lambda a: a.question))
        got, groups = worlds.setdefault(world, ({}, {}))
        if p.probability is None:
            # unknown splits (an IPVS scheduler): their group's share and the verdicts seen
            assert p.group is not None
            groups.setdefault(p.group[0], (p.group[1], set()))[1].add(p.verdict)
        else:
            prev = got.get(p.verdict, Fraction(0))
            got[p.verdict] = None if prev is None else prev + p.probability
        for n in p.notes:
            if n not in notes:
                notes.append(n)
        if p.verdict != "DNAT":
            continue
        ep = p.packet.dst_endpoint
        k = (ep, p.masquerade, world)
        if k in dests:
            prev = dests[k][0]
            dests[k][0] = None if prev is None or p.probability is None else prev + p.probability
            continue
        ip = p.packet.dst
        if is_local(ip, node_ips):
            node, local = s.hostname, True
        else:
            node = eps.get(ep, eps.get(ip))
            local = (node == s.hostname) if (node is not None and s.hostname) else None
        dests[k] = [p.probability, node, local, p.affinity, p.unknown, p.weight]
    outcomes: dict[str, Fraction | None] = {}
    for got, groups in worlds.values():
        for share, verdicts in groups.values():
            # A group's paths share one known total; split over verdicts, each verdict's share is unknown.
            for v in verdicts:
                prev = got.get(v, Fraction(0))
                got[v] = None if prev is None or len(verdicts) > 1 else prev + share
        for v, c in got.items():
            have = outcomes.get(v, Fraction(0))
            outcomes[v] = None if c is None or have is None else max(have, c)
    destinations = tuple(Destination(ep, v[0], v[1], v[2], masq, v[3], world, v[4], v[5])
                         for (ep, masq, world), v in dests.items())
    if destinations:
        verdict = "DNAT"
    else:
        order = {"REJECT": 0, "DROP": 1, "ACCEPT": 2}
        verdict = max(outcomes.items(), key=lambda kv: (kv[1] or 0, -order.get(kv[0], 3)))[0]
    return TraceResult(pkt, entry, verdict, destinations, tuple(paths), tuple(notes), source,
                       s.hostname, tuple(s.node_ips_of()), outcomes, nodes_known, base_chains)


def router(routes: tuple[tuple[str, str], ...]):
    """dst → the interface of the most specific route holding it, or None."""
    if not routes:
        return None
    ordered = sorted(routes, key=lambda r: -int(r[0].rpartition("/")[2]))

    def route(dst: str) -> str | None:
        for cidr, iface in ordered:
            if (":" in cidr) == (":" in dst) and cidr_contains(cidr, dst):
                return iface
        return None

    return route
