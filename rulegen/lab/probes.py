"""What the lab sends: the throw-away node's addresses and, per service port and access path, the probes.

From the compile's plan, `build_plan` picks addresses that collide with
nothing in the inputs (node IPs, a client outside the cluster, a client pod
inside this node's pod CIDR) and lists, per service port and access path
(ClusterIP from the client pod and from the node, NodePort from the client
to every node IP and from the node to 127.0.0.1, external and load-balancer
IPs from the client), the probe: how many connections, from where to
where, and what kube-proxy's logic says must happen (which endpoints share
the traffic, whether the client address survives, or REJECT / DROP).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from .. import backends
from ..diagnostics import UsageError
from ..ipaddr import cidr_contains

GATEWAY = "169.254.1.1"  # node side of every node veth (scope link)
FAR_ADDR = "169.254.1.2"  # the "other nodes" namespace on its link to the node
FAR_GATEWAY = "169.254.2.1"  # far side of every remote-endpoint veth
NODE_IP_CANDIDATES = ("192.0.2.10", "192.0.2.20", "192.0.2.30")
CLIENT_CANDIDATES = ("203.0.113.10", "198.51.100.10", "203.0.113.77", "198.51.100.77")
FALLBACK_POD_CIDR = "10.250.0.0/24"
NEGATIVE_PROBES = 6  # connections sent where REJECT/DROP is expected
ANSWER_TIMEOUT = 2.0  # per connection, where an answer is expected
NEGATIVE_TIMEOUT = 1.0  # per connection, where REJECT/DROP is expected (DROP = this long)


@dataclass(frozen=True)
class PodSpec:
    """One endpoint IP: its namespace role, where it hangs, the ports its server opens."""

    ip: str
    where: str  # "local" (off the node), "remote" (behind far), "host" (a node IP: served in node)
    node_name: str | None
    tcp: tuple[int, ...]
    udp: tuple[int, ...]
    index: int  # p<index> namespace / veth name


@dataclass(frozen=True)
class Probe:
    """One service port reached one way, and what the plan says must happen."""

    key: str
    spn: str
    proto: str
    kind: str  # cluster-ip | node-port | localhost-node-port | external-ip | load-balancer
    source: str  # client | cpod | node
    src_ip: str
    dst: str
    port: int
    expect: str  # answer | reject (REJECT rule) | refuse (not captured, nothing listens) | drop
    why: str
    endpoints: tuple[str, ...] = ()  # expected "ip:port" of endpoints, equal shares
    affinity: bool = False
    masq: str | None = None  # "client": source kept; "node": a node address; None: not judged
    count: int = 0
    timeout: float = ANSWER_TIMEOUT

    @property
    def path(self) -> str:
        src = {"client": "client", "cpod": "pod", "node": "node"}[self.source]
        return f"{src} {self.src_ip} -> {self.dst}:{self.port}"


@dataclass
class LabPlan:
    node_ips: tuple[str, ...]
    client_ip: str
    cpod_ip: str
    pods: tuple[PodSpec, ...]
    probes: tuple[Probe, ...]
    hostname: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def namespace_count(self) -> int:
        extra = 1 if any(p.where == "remote" for p in self.pods) else 0
        return 3 + extra + sum(1 for p in self.pods if p.where != "host")


def _pick_free(candidates: tuple[str, ...], used: set[str], avoid_cidrs: tuple[str, ...] = ()) -> str:
    for ip in candidates:
        if ip not in used and not any(cidr_contains(c, ip) for c in avoid_cidrs):
            return ip
    raise UsageError("lab: every spare address it could use for its own namespaces is taken by the input")


def _pick_in_cidr(cidr: str, used: set[str]) -> str | None:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    if net.version != 4 or net.num_addresses < 4:
        return None
    top = int(net.broadcast_address) - 1
    for off in range(min(net.num_addresses - 2, 4096)):
        ip = str(ipaddress.IPv4Address(top - off))
        if ip not in used:
            return ip
    return None


def parse_service_filters(values: tuple[str, ...] | list[str]) -> set[tuple[str, str]]:
    out = set()
    for v in values or ():
        ns, sep, name = v.partition("/")
        if not sep or not ns or not name or "/" in name:
            raise UsageError(f"--service {v!r}: expected NAMESPACE/NAME")
        out.add((ns, name))
    return out


def build_plan(compiled: Any, requests: int = 200, services: tuple[str, ...] = (),
               max_pods: int = 64) -> LabPlan:
    """What to build and what to send, from the compiled plan; pure (no kernel)."""
    settings = compiled.settings
    backends.require(settings.mode, "applier")  # the lab loads the rules as `rulegen apply` does
    if settings.family != 4:
        raise UsageError("lab: only --ip-family ipv4 is supported")
    notes: list[str] = []
    wanted = parse_service_filters(services)
    ports = list(compiled.plan.ports)
    if wanted:
        have = {(s.namespace, s.name) for s in compiled.inputs.services}
        planned = {(p.service.namespace, p.service.name) for p in ports}
        for ns, name in sorted(wanted):
            if (ns, name) not in have:
                raise UsageError(f"--service {ns}/{name}: no such Service in the input")
            if (ns, name) not in planned:
                raise UsageError(f"--service {ns}/{name}: has no rules to test (headless, ExternalName or no IPv4 cluster IP)")
        ports = [p for p in ports if (p.service.namespace, p.service.name) in wanted]
    kept = []
    for p in ports:
        if p.proto not in ("tcp", "udp"):
            notes.append(f"{p.spn}: {p.proto.upper()} is not probed (the lab speaks TCP and UDP)")
            continue
        kept.append(p)
    ports = kept

    if not settings.hostname:
        notes.append("no hostname (Node object or --hostname): every endpoint counts as on another node")
    node_ips = settings.node_ips_of(4)
    used: set[str] = set(node_ips)
    for p in compiled.plan.ports:
        used.add(p.cluster_ip)
        used.update(p.external_ips)
        used.update(p.lb_ips)
        used.update(e.ip for e in p.endpoints)
    if not node_ips:
        ip = _pick_free(NODE_IP_CANDIDATES, used)
        node_ips = (ip,)
        used.add(ip)
        notes.append(f"no node IP in the input (Node object or --node-ip): the lab node uses {ip}")
    node_set = set(node_ips)

    cluster_cidrs = settings.cidrs_of(settings.cluster_cidrs, 4)
    client_ip = _pick_free(CLIENT_CANDIDATES, used, cluster_cidrs)
    used.add(client_ip)

    pod_cidrs = settings.cidrs_of(settings.node_pod_cidrs, 4)
    cpod_ip = None
    for c in (*pod_cidrs, *cluster_cidrs):
        cpod_ip = _pick_in_cidr(c, used)
        if cpod_ip:
            break
    if cpod_ip is None:
        cpod_ip = _pick_in_cidr(FALLBACK_POD_CIDR, used)
        notes.append(f"no pod CIDR in the input: the client pod uses {cpod_ip}")
    assert cpod_ip is not None
    used.add(cpod_ip)

    # Endpoint namespaces: every endpoint of the probed ports, ready or not, so
    # traffic wrongly sent to a non-ready endpoint shows up as an answer.
    by_ip: dict[str, dict[str, Any]] = {}
    for p in ports:
        for e in p.endpoints:
            d = by_ip.setdefault(e.ip, {"local": e.local, "node": e.node_name, "tcp": set(), "udp": set()})
            d[p.proto].add(e.port)
    pods: list[PodSpec] = []
    for i, (ip, d) in enumerate(sorted(by_ip.items(), key=lambda kv: ipaddress.IPv4Address(kv[0]))):
        where = "host" if ip in node_set else ("local" if d["local"] else "remote")
        if ip in (GATEWAY, FAR_ADDR, FAR_GATEWAY) or ip.startswith("127."):
            raise UsageError(f"lab: endpoint {ip} collides with an address the lab needs for its own links")
        pods.append(PodSpec(ip, where, d["node"], tuple(sorted(d["tcp"])), tuple(sorted(d["udp"])), i))
    n_ns = sum(1 for p in pods if p.where != "host")
    if n_ns > max_pods:
        raise UsageError(f"lab: {n_ns} endpoint namespaces needed, more than --max-pods {max_pods}; "
                         "raise --max-pods or pick Services with --service")
    if any(p.where == "host" for p in pods):
        notes.append("endpoints on a node IP (hostNetwork) are served inside the node namespace")

    probes = _probes(compiled, ports, node_ips, client_ip, cpod_ip, requests, notes)
    probes = backends.get(settings.mode).lab_probes(compiled, probes, requests, notes)
    return LabPlan(node_ips, client_ip, cpod_ip, tuple(pods), tuple(probes), settings.hostname, notes)


def _probes(compiled: Any, ports, node_ips: tuple[str, ...], client_ip: str, cpod_ip: str,
            requests: int, notes: list[str]) -> list[Probe]:
    settings = compiled.settings
    det = settings.local_detector(4)
    if det.cidr:
        cpod_local = cidr_contains(det.cidr, cpod_ip)
    else:
        cpod_local = False  # interface detectors match kube-proxy's veth names, not the lab's
    if settings.masquerade_all:
        cpod_masq = "node"
    elif det.implemented:
        cpod_masq = "client" if cpod_local else "node"
    else:
        cpod_masq = "client"
    if det.implemented and not det.cidr:
        notes.append(f"local-traffic detector {settings.detect_local_mode} matches interfaces the lab does not "
                     "have: ClusterIP traffic from the client pod counts as off-cluster")
    mode = backends.get(settings.mode)
    match_all, np_ips = mode.nodeport_ips(settings, 4)
    localhost = mode.localhost_nodeports and settings.localhost_nodeports_effective(4)
    out: list[Probe] = []

    def add(p, kind, source, src_ip, dst, port, outcome):
        expect, why, eps, masq = outcome
        neg = expect != "answer"
        out.append(Probe(
            key=f"{len(out)}", spn=p.spn, proto=p.proto, kind=kind, source=source, src_ip=src_ip, dst=dst,
            port=port, expect=expect, why=why, endpoints=tuple(e.ep for e in eps),
            affinity=bool(p.affinity) and expect == "answer", masq=masq,
            count=min(requests, NEGATIVE_PROBES) if neg else requests,
            timeout=NEGATIVE_TIMEOUT if neg else ANSWER_TIMEOUT,
        ))

    for p in ports:
        sel = p.sel
        port = p.port.port
        # ClusterIP (5.2, 5.4, 5.7)
        if not sel.has_any:
            cip = ("reject", "no endpoints: REJECT", (), None)
            cip_node = cip
        elif not p.has_internal:
            cip = ("drop", "internalTrafficPolicy Local and no local endpoints: DROP", (), None)
            cip_node = cip
        else:
            eps = sel.local if p.int_local else sel.cluster
            pol = "Local" if p.int_local else "Cluster"
            cip = ("answer", f"internalTrafficPolicy {pol}", eps, cpod_masq)
            cip_node = ("answer", f"internalTrafficPolicy {pol}; the node's own address", eps, "node")
        add(p, "cluster-ip", "cpod", cpod_ip, p.cluster_ip, port, cip)
        add(p, "cluster-ip", "node", node_ips[0], p.cluster_ip, port, cip_node)

        # External traffic (5.2, 5.3, 5.5, 5.6)
        def external(source_ip: str, via_fw: bool) -> tuple:
            if not sel.has_any:
                return ("reject", "no endpoints: REJECT", (), None)
            if via_fw and p.source_ranges and not any(cidr_contains(r, source_ip) for r in p.source_ranges):
                return ("drop", "client outside loadBalancerSourceRanges: DROP", (), None)
            if not p.has_external:
                return ("drop", "externalTrafficPolicy Local and no local endpoints: DROP", (), None)
            if p.ext_local:
                return ("answer", "externalTrafficPolicy Local: local endpoints, client address kept",
                        sel.local, "client")
            return ("answer", "externalTrafficPolicy Cluster: masqueraded to the node", sel.cluster, "node")

        def uncaptured(why: str) -> tuple:
            # nat does not capture this address, but in iptables mode the filter rule for a
            # NodePort without (external) endpoints matches every LOCAL address, whatever
            # nodePortAddresses says (5.3), so it still REJECTs or DROPs; only otherwise
            # (or in a mode whose rule looks at the NodePort addresses only) nothing listens.
            if not mode.no_endpoint_nodeports_on_every_address:
                return ("refuse", f"{why}: nothing listens, refused", (), None)
            if not sel.has_any:
                return ("reject", f"{why}, but no endpoints: REJECT on every node address", (), None)
            if not p.has_external:
                return ("drop", f"{why}, but externalTrafficPolicy Local and no local endpoints: "
                                "DROP on every node address", (), None)
            return ("refuse", f"{why}: nothing listens, refused", (), None)

        if p.node_port:
            for ip in node_ips:
                if match_all or ip in np_ips:
                    add(p, "node-port", "client", client_ip, ip, p.node_port, external(client_ip, False))
                else:
                    add(p, "node-port", "client", client_ip, ip, p.node_port, uncaptured("not in nodePortAddresses"))
            if localhost:
                if not sel.has_any:
                    lo = ("reject", "no endpoints: REJECT", (), None)
                else:
                    # EXT: LOCAL sources are masqueraded and sent to the SVC chain, even with Local policy.
                    lo = ("answer", "from the node itself: masqueraded, every cluster endpoint", sel.cluster, "node")
                add(p, "localhost-node-port", "node", "127.0.0.1", "127.0.0.1", p.node_port, lo)
            else:
                off = ("localhost NodePorts off" if mode.localhost_nodeports
                       else f"--mode {settings.mode} answers no NodePort on 127.0.0.1")
                add(p, "localhost-node-port", "node", "127.0.0.1", "127.0.0.1", p.node_port,
                    uncaptured(f"{off}: not captured"))
        for eip in p.external_ips:
            add(p, "external-ip", "client", client_ip, eip, port, external(client_ip, False))
        for lb in p.lb_ips:
            add(p, "load-balancer", "client", client_ip, lb, port, external(client_ip, True))
    return out
