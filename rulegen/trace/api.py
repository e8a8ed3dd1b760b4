"""The tracer as a library: a compiled result or a saved rule dump in, a `TraceResult` out.

`trace_compiled` traces what `rulegen compile` produced, with kube-proxy's
jump rules from the built-in chains added as kube-proxy inserts them;
`trace_ruleset` traces any iptables `Ruleset` (e.g. a node's iptables-save
parsed by `dataplane.xtables.parse`), using the built-in chains' own rules,
or kube-proxy's standard jumps when the dump has none. This module decides
where the packet enters (who sends it), names what the destination is, puts
node names on the endpoints, and folds the engine's paths into
destinations with exact chances.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from typing import Any

from ..backends.iptables.compile import jump_rules
from ..dataplane.xtables.model import Ruleset
from ..dataplane.xtables.spec import SpecError, parse_spec
from ..diagnostics import UsageError
from ..ipaddr import cidr_contains, family, parse_ip
from ..settings import Settings
from . import matchers as M
from .engine import Engine, Rules
from .model import Destination, Entry, Packet, Path, TraceResult

DEFAULT_SRC = {4: "203.0.113.10", 6: "2001:db8::10"}  # documentation addresses (RFC 5737 / 3849)
DEFAULT_SPORT = 40000
PROTOS = ("tcp", "udp", "sctp")
OUTSIDE_IFACE = "eth0"
POD_IFACE = "cni0"


def trace_compiled(compiled: Any, src: str | None, dst_ip: str, dst_port: int, proto: str = "tcp",
                   **kw: Any) -> TraceResult:
    """Trace `rulegen.pipeline.Compiled` (iptables mode) plus kube-proxy's built-in jumps."""
    s: Settings = compiled.settings
    if s.mode != "iptables":
        raise UsageError(f"trace follows iptables-mode rules; --mode {s.mode} is not traced")
    kw.setdefault("source", "compiled rules")
    return trace_ruleset(compiled.ir, s, src, dst_ip, dst_port, proto, plan=compiled.plan,
                         jumps=jump_rules(s), **kw)


def trace_ruleset(ruleset: Ruleset, settings: Settings, src: str | None, dst_ip: str, dst_port: int,
                  proto: str = "tcp", *, plan: Any = None, source: str = "rules",
                  jumps: tuple[tuple[str, str, str], ...] | None = None, in_iface: str | None = None,
                  out_iface: str = OUTSIDE_IFACE, sport: int = DEFAULT_SPORT,
                  pod_cidrs: tuple[str, ...] = ()) -> TraceResult:
    """Follow one new connection `src → dst_ip:dst_port` through `ruleset`.

    `jumps=None` means: use the built-in chains' rules in the ruleset, or
    kube-proxy's standard jumps when it has none (said in the notes).
    `plan` (a `rulegen.plan.Plan`) names the destination and the endpoints'
    nodes; without it they are unknown. `pod_cidrs` are this node's pod
    ranges (a source there is a pod on this node).
    """
    proto = proto.lower()
    if proto not in PROTOS:
        raise UsageError(f"--proto: {proto!r} is not one of {', '.join(PROTOS)}")
    dst = parse_ip(dst_ip) if isinstance(dst_ip, str) else None
    if dst is None:
        raise UsageError(f"--dst: {dst_ip!r} is not an IP address")
    if not 0 < int(dst_port) < 65536:
        raise UsageError(f"--dst: port {dst_port} is not between 1 and 65535")
    fam = family(dst)
    if fam != ruleset.family:
        raise UsageError(f"--dst {dst} is IPv{fam} but the rules are IPv{ruleset.family}")
    src_default = src is None
    if src is None:
        s = DEFAULT_SRC[fam]
    else:
        s = parse_ip(src)
        if s is None:
            raise UsageError(f"--src: {src!r} is not an IP address")
        if (":" in s) != (fam == 6):
            raise UsageError(f"--src {s} and --dst {dst} are of different address families")
    fs = replace(settings, family=fam)
    notes: list[str] = []

    if jumps is None:
        rules = _rules_for(ruleset, source, ())
        if not rules.has_builtin_rules():
            jumps = _existing_jumps(rules, jump_rules(fs))
            rules = _rules_for(ruleset, source, jumps)
            notes.append("the rules hold no rules in the built-in chains; kube-proxy's standard jumps "
                         "(PREROUTING/OUTPUT → KUBE-SERVICES, POSTROUTING → KUBE-POSTROUTING, filter "
                         "INPUT/FORWARD/OUTPUT → KUBE-FIREWALL, KUBE-PROXY-FIREWALL, KUBE-NODEPORTS, "
                         "KUBE-EXTERNAL-SERVICES, KUBE-SERVICES, KUBE-FORWARD) were assumed")
    else:
        rules = _rules_for(ruleset, source, tuple(jumps))

    node_ips = tuple(fs.node_ips)
    eps = _endpoint_nodes(plan)
    entry, iface = _entry(s, src_default, dst, int(dst_port), proto, fs, plan, eps, pod_cidrs, in_iface)
    if src_default:
        notes.insert(0, f"no --src given: the connection comes from {s}, a documentation address "
                        "standing for a client outside the cluster")
    if not fs.node_ips_of(fam):
        notes.append("no node addresses known (no Node object, no --node-ip): only loopback counts as "
                     "an address of this node (addrtype LOCAL)")

    pkt = Packet(proto, s, sport, dst, int(dst_port), iface)
    engine = Engine(rules, node_ips, out_iface, _local_pod_iface(fs, eps, pod_cidrs))
    paths = engine.run(pkt, entry.hook)
    if plan is None:
        entry = replace(entry, target=_target_from_rules(paths) or entry.target)
    return _result(pkt, entry, paths, notes, fs, eps, source, plan is not None)


_RULES_CACHE: dict[tuple[int, str, tuple], tuple[Ruleset, Rules]] = {}


def _rules_for(ruleset: Ruleset, source: str, jumps: tuple) -> Rules:
    """Index a ruleset once for many traces (the lab traces every Service of one compile)."""
    key = (id(ruleset), source, jumps)
    hit = _RULES_CACHE.get(key)
    if hit is not None and hit[0] is ruleset:
        return hit[1]
    if len(_RULES_CACHE) >= 8:
        _RULES_CACHE.pop(next(iter(_RULES_CACHE)))
    rules = Rules.of(ruleset, source, jumps)
    _RULES_CACHE[key] = (ruleset, rules)
    return rules


def _existing_jumps(rules: Rules, jumps):
    out = []
    for table, chain, spec in jumps:
        try:
            target = parse_spec(spec).target
        except SpecError:
            continue
        if target in rules.chains.get(table, {}):
            out.append((table, chain, spec))
    return tuple(out)


def _endpoint_nodes(plan: Any) -> dict[str, str | None]:
    """Endpoint string and bare IP → node name, from every service port of the plan."""
    out: dict[str, str | None] = {}
    if plan is None:
        return out
    for p in plan.ports:
        for e in p.endpoints:
            out.setdefault(e.ep, e.node_name)
            out.setdefault(e.ip, e.node_name)
    return out


def _pod_iface(s: Settings) -> str:
    """The interface a pod of this node is reached on: the detector's when it names one, else the bridge.

    A prefix (`veth+`) stands for every pod's own interface; the trace names
    one of them (`veth0`), as it names the node's uplink `eth0`.
    """
    det = s.local_detector()
    if not det.iface:
        return POD_IFACE
    return det.iface[:-1] + "0" if det.iface.endswith("+") else det.iface


def _local_pod_iface(s: Settings, eps: dict[str, str | None], pod_cidrs: tuple[str, ...]):
    """`dst → interface` for destinations that are pods on this node (None for any other address)."""
    iface = _pod_iface(s)

    def route(dst: str) -> str | None:
        if dst in eps and eps[dst] is not None:
            return iface if s.hostname and eps[dst] == s.hostname else None
        if any(cidr_contains(c, dst) for c in pod_cidrs if (":" in c) == (":" in dst)):
            return iface
        return None

    return route


def _entry(src: str, src_default: bool, dst: str, dport: int, proto: str, s: Settings, plan: Any,
           eps: dict[str, str | None], pod_cidrs: tuple[str, ...], in_iface: str | None) -> tuple[Entry, str | None]:
    node_ips = frozenset(s.node_ips)
    target = _describe_target(dst, dport, proto, plan, node_ips)
    if M.is_local(src, node_ips):
        who = "the node itself (loopback)" if M.is_loopback(src) else "the node itself"
        return Entry("OUTPUT", who, None, src_default, target), None
    pod_iface = _pod_iface(s)
    if src in eps:
        node = eps[src]
        if node is not None and node == s.hostname:
            who, iface = f"a pod on this node ({node})", pod_iface
        elif node is not None:
            who, iface = f"a pod on node {node}", OUTSIDE_IFACE
        else:
            who, iface = "a pod (node unknown)", pod_iface
    elif any(cidr_contains(c, src) for c in pod_cidrs if (":" in c) == (":" in src)):
        who, iface = "a pod on this node", pod_iface
    elif any(cidr_contains(c, src) for c in s.cidrs_of(s.cluster_cidrs)):
        if any((":" in c) == (":" in src) for c in pod_cidrs):
            who, iface = "a pod on another node (inside the cluster CIDR)", OUTSIDE_IFACE
        else:
            who, iface = "a pod (inside the cluster CIDR)", pod_iface
    elif s.cidrs_of(s.cluster_cidrs) or pod_cidrs or eps:
        who, iface = "a client outside the cluster", OUTSIDE_IFACE
    else:
        who, iface = "a client (no pod range known, so not taken for a pod)", OUTSIDE_IFACE
    if in_iface:
        iface = in_iface
    return Entry("PREROUTING", who, iface, src_default, target), iface


def _describe_target(dst: str, dport: int, proto: str, plan: Any, node_ips: frozenset[str]) -> str:
    local = M.is_local(dst, node_ips)
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
                return f"node port of {p.spn}" + (" on localhost" if M.is_loopback(dst) else "")
        for p in plan.ports:
            if local and p.hc_node_port and dport == p.hc_node_port and proto == "tcp":
                return f"health check node port of {p.spn}"
    if local:
        return "loopback" if M.is_loopback(dst) else "an address of this node"
    return "an address that is not a Service address of these inputs" if plan is not None else "an address"


_CAPTURE_KINDS = (" cluster IP", " external IP", " loadbalancer IP")


def _target_from_rules(paths: list[Path]) -> str | None:
    """Without the Kubernetes objects, name the destination from the comment of the rule that caught it."""
    if not paths:
        return None
    for h in paths[0].hops:
        if h.kind != "rule" or h.chain not in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES"):
            continue
        try:
            comment = parse_spec(h.rule.split(" ", 2)[2] if h.rule.count(" ") >= 2 else "").comment
        except SpecError:
            continue
        if not comment or comment.startswith("kubernetes service nodeports"):
            continue
        if h.chain == "KUBE-NODEPORTS":
            if comment.endswith(" health check node port"):
                return f"health check node port of {comment[:-len(' health check node port')]} (per the rules)"
            return f"node port of {comment} (per the rules)"
        for kind in _CAPTURE_KINDS:
            if comment.endswith(kind):
                spn = comment[:-len(kind)]
                return f"{kind.strip().replace('loadbalancer', 'load-balancer')} of {spn} (per the rules)"
        return f"{comment} (per the rules)"
    return None


def _result(pkt: Packet, entry: Entry, paths: list[Path], notes: list[str], s: Settings,
            eps: dict[str, str | None], source: str, nodes_known: bool) -> TraceResult:
    node_ips = frozenset(s.node_ips)
    dests: dict[tuple[str, bool], list] = {}
    outcomes: dict[str, Fraction] = {}
    for p in paths:
        outcomes[p.verdict] = outcomes.get(p.verdict, Fraction(0)) + p.probability
        for n in p.notes:
            if n not in notes:
                notes.append(n)
        if p.verdict != "DNAT":
            continue
        ep = p.packet.dst_endpoint
        k = (ep, p.masquerade)
        if k in dests:
            dests[k][0] += p.probability
            continue
        ip = p.packet.dst
        if M.is_local(ip, node_ips):
            node, local = s.hostname, True
        else:
            node = eps.get(ep, eps.get(ip))
            local = (node == s.hostname) if (node is not None and s.hostname) else None
        dests[k] = [p.probability, node, local, p.affinity]
    destinations = tuple(Destination(ep, v[0], v[1], v[2], masq, v[3]) for (ep, masq), v in dests.items())
    if destinations:
        verdict = "DNAT"
    else:
        order = {"REJECT": 0, "DROP": 1, "ACCEPT": 2}
        verdict = max(outcomes.items(), key=lambda kv: (kv[1], -order.get(kv[0], 3)))[0]
    return TraceResult(pkt, entry, verdict, destinations, tuple(paths), tuple(notes), source,
                       s.hostname, tuple(s.node_ips_of()), outcomes, nodes_known)
