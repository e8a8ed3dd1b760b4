"""Every way a connection can reach a Service port on this node, and the trace of each: the enumeration.

A scenario is one (Service port, client kind, entry point): who sends the
connection (an outside client, a pod on this node, a pod on another node,
the node itself, the node through localhost) and where it arrives (the
ClusterIP, the NodePort on each node address and on 127.0.0.1, each
external IP, each load-balancer IP, and, once per Service, a port of the
ClusterIP that is no Service port). `enumerate_scenarios` lists them from
the plan and settings alone, so the list is the same whatever the mode,
and two modes' traces pair up by `Scenario.key` (`rulegen migrate` compares
them; `rulegen explain` draws them). `trace_scenarios` traces each with the
mode's tracer through the registry.

Not every client meets every entry point. Those left out, and why:

- a pod on another node never arrives here for a ClusterIP, an external
  IP or a load-balancer IP: the kube-proxy on its own node catches those
  first (they are captured on every node). It does reach this node's
  NodePort, addressed to this node's address;
- localhost is only ever the source of a connection to localhost (a
  connection from the node to any other address gets a node address as its
  source); 127.0.0.1 is only ever reached from the node itself;
- IPv6 has no localhost NodePorts (::1 is never routed off the node);
- without a node address (no Node object, no --node-ip) the node's own
  connections and the NodePorts on its addresses cannot be placed, and are
  left out with a note.

The clients' addresses are invented, deterministically, so that they
collide with no address of the input: a pod on this node from the top of
this node's pod range (else the cluster CIDR), a pod on another node from
the top of the cluster CIDR outside this node's range, an outside client
from the documentation ranges outside every cluster range.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable

from .. import backends
from ..diagnostics import UsageError
from ..ipaddr import cidr_contains
from ..settings import LOOPBACK, Settings
from . import entry as E
from .model import TraceError, TraceResult

# Client kinds, in the order pages list them.
OUTSIDE, POD_HERE, POD_ELSEWHERE, NODE, LOCALHOST = "outside", "pod-here", "pod-elsewhere", "node", "localhost"
CLIENT_KINDS = (OUTSIDE, POD_HERE, POD_ELSEWHERE, NODE, LOCALHOST)
CLIENT_LABELS = {
    OUTSIDE: "outside client",
    POD_HERE: "pod on this node",
    POD_ELSEWHERE: "pod on another node",
    NODE: "the node itself",
    LOCALHOST: "localhost",
}

# Entry kinds, in the order pages list them.
CLUSTER_IP, NODE_PORT, LOCALHOST_NODE_PORT = "cluster-ip", "node-port", "localhost-node-port"
EXTERNAL_IP, LOAD_BALANCER, OTHER_PORT = "external-ip", "load-balancer", "other-port"
ENTRY_KINDS = (CLUSTER_IP, NODE_PORT, LOCALHOST_NODE_PORT, EXTERNAL_IP, LOAD_BALANCER, OTHER_PORT)
ENTRY_LABELS = {
    CLUSTER_IP: "ClusterIP",
    NODE_PORT: "NodePort",
    LOCALHOST_NODE_PORT: "NodePort on localhost",
    EXTERNAL_IP: "external IP",
    LOAD_BALANCER: "load-balancer IP",
    OTHER_PORT: "ClusterIP, no Service port",
}

# Which clients each entry point is traced from (the module's paragraph says why).
CLIENTS_OF = {
    CLUSTER_IP: (OUTSIDE, POD_HERE, NODE),
    NODE_PORT: (OUTSIDE, POD_HERE, POD_ELSEWHERE, NODE),
    LOCALHOST_NODE_PORT: (LOCALHOST,),
    EXTERNAL_IP: (OUTSIDE, POD_HERE, NODE),
    LOAD_BALANCER: (OUTSIDE, POD_HERE, NODE),
    OTHER_PORT: (POD_HERE, NODE),
}

OUTSIDE_CANDIDATES = {4: ("203.0.113.10", "198.51.100.10", "203.0.113.77", "198.51.100.77"),
                      6: ("2001:db8::10", "2001:db8::77", "2001:db8:1::10")}
# Pods when the input names no pod range at all (kube-proxy then has no local-traffic detector,
# so the address only has to collide with nothing; the interface still says where it comes from).
FALLBACK_POD_RANGES = {4: ("10.250.0.0/24", "10.250.1.0/24"), 6: ("fd00:250::/64", "fd00:250:1::/64")}
SEARCH = 4096  # addresses tried per range, from its top


@dataclass(frozen=True, slots=True)
class Client:
    kind: str  # one of CLIENT_KINDS
    src: str
    in_iface: str | None  # the interface it arrives on (None: sent by the node itself)

    @property
    def label(self) -> str:
        return CLIENT_LABELS[self.kind]


@dataclass(frozen=True, slots=True)
class EntryPoint:
    kind: str  # one of ENTRY_KINDS
    ip: str
    port: int
    proto: str

    @property
    def label(self) -> str:
        return ENTRY_LABELS[self.kind]

    @property
    def address(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class Scenario:
    """One connection to trace: a client, an entry point, and the Service port it belongs to."""

    service: str  # "namespace/name"
    spn: str  # the service port name ("ns/name:port"); for OTHER_PORT the Service's first port's
    client: Client
    entry: EntryPoint

    @property
    def key(self) -> tuple[str, str, str, str, int, str]:
        """What pairs one mode's trace with another's: the same Service port, client and destination."""
        e = self.entry
        return (self.spn, self.client.kind, e.kind, e.ip, e.port, e.proto)

    def describe(self) -> str:
        return f"{self.client.label} ({self.client.src}) → {self.entry.label} {self.entry.address}"


@dataclass(frozen=True)
class Scenarios:
    clients: dict[str, Client]  # kind → the client used (kinds that could not be placed are absent)
    scenarios: tuple[Scenario, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """A scenario and what its trace gave: a result, or the tracer's refusal in one line."""

    scenario: Scenario
    result: TraceResult | None
    error: str | None = None


# ---------------------------------------------------------------- choosing ports


def parse_services(values: Iterable[str]) -> set[str]:
    """`--service NS/NAME` values → {"ns/name"}; UsageError for anything else."""
    out: set[str] = set()
    for v in values or ():
        ns, sep, name = v.partition("/")
        if not sep or not ns or not name or "/" in name:
            raise UsageError(f"--service {v!r}: expected NAMESPACE/NAME")
        out.add(f"{ns}/{name}")
    return out


def select_ports(plan: Any, inputs: Any, wanted: set[str]) -> tuple[Any, ...]:
    """The plan's ports of the WANTED Services (all when empty); a Service not there is a UsageError."""
    ports = tuple(plan.ports)
    if not wanted:
        return ports
    have = {f"{s.namespace}/{s.name}" for s in inputs.services} if inputs is not None else set()
    planned = {_service_of(p) for p in ports}
    for w in sorted(wanted):
        if w not in have:
            raise UsageError(f"--service {w}: no such Service in the input")
        if w not in planned:
            raise UsageError(f"--service {w}: kube-proxy writes no rules for it "
                             f"(headless, ExternalName, or no IPv{plan.family} cluster IP)")
    return tuple(p for p in ports if _service_of(p) in wanted)


def _service_of(p: Any) -> str:
    return f"{p.service.namespace}/{p.service.name}"


# ---------------------------------------------------------------- clients


def _top_free(cidr: str, used: set[str], avoid: tuple[str, ...] = ()) -> str | None:
    """The highest host address of CIDR not in USED and inside none of AVOID (None when none is found)."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    if net.num_addresses < 4:
        return None
    top = int(net.broadcast_address) - 1
    cls = type(net.network_address)
    for off in range(min(net.num_addresses - 2, SEARCH)):
        ip = str(cls(top - off))
        if ip not in used and not any(cidr_contains(c, ip) for c in avoid):
            return ip
    return None


def _used(plan: Any, s: Settings) -> set[str]:
    used = set(s.node_ips)
    for p in plan.ports:
        used.add(p.cluster_ip)
        used.update(p.external_ips)
        used.update(p.lb_ips)
        used.update(e.ip for e in p.endpoints)
    return used


def choose_clients(plan: Any, s: Settings) -> tuple[dict[str, Client], list[str]]:
    """One client of each kind for this node, with addresses that collide with nothing of the input."""
    fam = plan.family
    used = _used(plan, s)
    notes: list[str] = []
    clients: dict[str, Client] = {}
    cluster = s.cidrs_of(s.cluster_cidrs, fam)
    mine = s.cidrs_of(s.node_pod_cidrs, fam)
    service = s.cidrs_of(s.service_cidrs, fam)

    outside = next((ip for ip in OUTSIDE_CANDIDATES[fam]
                    if ip not in used and not any(cidr_contains(c, ip) for c in (*cluster, *mine, *service))), None)
    if outside is None:
        raise UsageError("every documentation address rulegen uses for an outside client is taken by the input")
    clients[OUTSIDE] = Client(OUTSIDE, outside, E.OUTSIDE_IFACE)
    used.add(outside)

    here = next((ip for c in (*mine, *cluster) for ip in [_top_free(c, used)] if ip), None)
    if here is None:
        here = next(ip for c in FALLBACK_POD_RANGES[fam] for ip in [_top_free(c, used)] if ip)
        notes.append(f"no pod range known (no clusterCIDR, no Node podCIDR): the pods that send are given "
                     f"{here} and the like; without a detector kube-proxy cannot tell them from outside clients")
    clients[POD_HERE] = Client(POD_HERE, here, E.pod_iface(s))
    used.add(here)

    elsewhere = next((ip for c in cluster for ip in [_top_free(c, used, mine)] if ip), None)
    if elsewhere is None:
        elsewhere = next(ip for c in FALLBACK_POD_RANGES[fam][::-1] for ip in [_top_free(c, used, mine)] if ip)
    clients[POD_ELSEWHERE] = Client(POD_ELSEWHERE, elsewhere, E.OUTSIDE_IFACE)

    primary = s.primary_ip(fam)
    if primary:
        clients[NODE] = Client(NODE, primary, None)
    else:
        notes.append("no node address known (no Node object, no --node-ip): the node's own connections and "
                     "the NodePorts on its addresses are left out")
    if fam == 4:
        clients[LOCALHOST] = Client(LOCALHOST, LOOPBACK[4], None)
    return clients, notes


# ---------------------------------------------------------------- the enumeration


def other_port(ports: list[int]) -> int:
    """A port of the ClusterIP that is no Service port: the lowest free one."""
    taken = set(ports)
    return next(n for n in range(1, 65536) if n not in taken)


def entry_points(p: Any, s: Settings, fam: int) -> list[EntryPoint]:
    """Every address and port where service port P is reachable on this node, in page order."""
    out = [EntryPoint(CLUSTER_IP, p.cluster_ip, p.port.port, p.proto)]
    if p.node_port:
        out += [EntryPoint(NODE_PORT, ip, p.node_port, p.proto) for ip in s.node_ips_of(fam)]
        if fam == 4:
            out.append(EntryPoint(LOCALHOST_NODE_PORT, LOOPBACK[4], p.node_port, p.proto))
    out += [EntryPoint(EXTERNAL_IP, ip, p.port.port, p.proto) for ip in p.external_ips]
    out += [EntryPoint(LOAD_BALANCER, ip, p.port.port, p.proto) for ip in p.lb_ips]
    return out


def enumerate_scenarios(plan: Any, s: Settings, ports: Iterable[Any] | None = None) -> Scenarios:
    """Every (service port, client kind, entry point) of PORTS (default: every port of PLAN).

    Depends on the plan and the settings, never on the mode: the same
    input gives the same scenarios in every mode, keyed alike.
    """
    fam = plan.family
    clients, notes = choose_clients(plan, s)
    chosen = tuple(plan.ports if ports is None else ports)
    # Every Service port on each ClusterIP (of any Service), so the "other port" is no Service's.
    on_ip: dict[str, list[int]] = {}
    for p in plan.ports:
        on_ip.setdefault(p.cluster_ip, []).append(p.port.port)
    out: list[Scenario] = []
    first_port_done: set[str] = set()
    for p in chosen:
        svc = _service_of(p)
        for ep in entry_points(p, s, fam):
            out += [Scenario(svc, p.spn, clients[k], ep) for k in CLIENTS_OF[ep.kind] if k in clients]
        if svc not in first_port_done:
            first_port_done.add(svc)
            ep = EntryPoint(OTHER_PORT, p.cluster_ip, other_port(on_ip[p.cluster_ip]), p.proto)
            out += [Scenario(svc, p.spn, clients[k], ep) for k in CLIENTS_OF[OTHER_PORT] if k in clients]
    return Scenarios(clients, tuple(out), tuple(notes))


def trace_scenarios(compiled: Any, scenarios: Iterable[Scenario], source: str = "compiled rules") -> list[Outcome]:
    """Trace each scenario with the mode's tracer (a mode without one: UsageError, exit 2).

    A scenario the tracer cannot follow (a rule it does not understand on
    the way) becomes an Outcome with the tracer's one-line reason, so one
    odd rule does not hide every other scenario.
    """
    tracer = backends.require(compiled.settings.mode, "tracer")
    pod_cidrs = compiled.settings.node_pod_cidrs
    out: list[Outcome] = []
    for sc in scenarios:
        c, e = sc.client, sc.entry
        try:
            r = tracer.trace_compiled(compiled, c.src, e.ip, e.port, e.proto, in_iface=c.in_iface,
                                      pod_cidrs=pod_cidrs, source=source)
        except TraceError as err:
            out.append(Outcome(sc, None, str(err)))
            continue
        out.append(Outcome(sc, r))
    return out
