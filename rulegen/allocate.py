"""Manifests not yet applied (`--allocate`): what the API server and the controllers add before kube-proxy sees them.

Helm, kustomize and documentation manifests hold Services without
`clusterIP` and Deployments instead of EndpointSlices; kube-proxy never sees
such objects, and without this step rulegen, like kube-proxy, writes no rules
for them. This module owns the step from such an input to the objects a
cluster would hold once it is applied: cluster IPs from the service CIDR and
node ports from 30000-32767 (the API server's allocators), EndpointSlices
from the pods of Deployments, StatefulSets, DaemonSets, ReplicaSets and Pods
(the EndpointSlice controller, fed by the workload controllers, the
scheduler and the CNI), and a Node when the input holds none. It reads the
loader's frozen `Inputs` and returns new ones (never changing its input),
before settings and plan, so every command and every backend sees the same
cluster. docs/allocate.md describes the rules.

Where the cluster draws at random (the allocators pick a random free
address or port, the scheduler balances load, pod names end in random
letters), rulegen draws deterministically: the same input gives the same
bytes, whatever Python's hash seed. A Service's address is found from a hash
of its namespace and name and probed forward to the next free one, so it
does not move when other Services are added; Services are taken in order of
namespace and name, so a collision always resolves the same way.
"""

from __future__ import annotations

import heapq
import ipaddress
from dataclasses import dataclass
from hashlib import blake2b
from socket import inet_ntoa as _ntoa
from typing import Any, Iterable

from msgspec import structs

from . import apinames
from .diagnostics import Report, UsageError
from .ipaddr import parse_ip
from .model import (
    ContainerPort,
    Endpoint,
    EndpointSlice,
    Inputs,
    Node,
    Pod,
    PodTemplate,
    ProxyConfig,
    Service,
    ServiceCIDR,
    ServicePort,
    SlicePort,
    Toleration,
    Workload,
)

# kubeadm's default --service-cidr, so the API server's range in most clusters.
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
# The pod network when the input names none: kubeadm + flannel's 10.244.0.0/16,
# and a ULA of the same shape for IPv6.
DEFAULT_POD_CIDRS = {4: "10.244.0.0/16", 6: "fd00:10:244::/56"}
# kube-controller-manager's --node-cidr-mask-size defaults: each node's podCIDR.
NODE_CIDR_PREFIX = {4: 24, 6: 64}
NODE_PORT_RANGE = (30000, 32767)  # the API server's --service-node-port-range default
DEFAULT_NODE = "node-1"
OS_LABEL = "kubernetes.io/os"
HOSTNAME_LABEL = "kubernetes.io/hostname"
SERVICE_CIDR_NAME = "kubernetes"  # the ServiceCIDR the API server makes from its own flag
MAX_SLICE_ENDPOINTS = 100  # the EndpointSlice controller's --max-endpoints-per-slice default
# The letters Kubernetes draws generated names from (no vowels, no look-alikes).
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# The DaemonSet controller adds these tolerations to every daemon pod, so a
# node's condition taints (not ready, under pressure, cordoned) do not keep them away.
DAEMON_TOLERATED = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable",
                    "node.kubernetes.io/disk-pressure", "node.kubernetes.io/memory-pressure",
                    "node.kubernetes.io/pid-pressure", "node.kubernetes.io/unschedulable")
DAEMON_HOST_NETWORK_TOLERATED = "node.kubernetes.io/network-unavailable"
TERMINAL_PHASES = ("Succeeded", "Failed")
SHOWN = 5  # names listed in one notice; the rest are counted


def _hash(text: str) -> int:
    """A stable 64-bit hash (Python's hash() changes with PYTHONHASHSEED)."""
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "big")


def _suffix(text: str, n: int = 5) -> str:
    """N letters of NAME_ALPHABET derived from TEXT: a generated name's random part, made repeatable."""
    h = _hash(text)
    out = []
    for _ in range(n):
        h, r = divmod(h, len(NAME_ALPHABET))
        out.append(NAME_ALPHABET[r])
    return "".join(out)


def _suffixes(text: str, count: int) -> list[str]:
    """COUNT distinct 5-letter suffixes for the pods of one workload (one hash, not one per pod)."""
    h = _hash(text)
    space = len(NAME_ALPHABET) ** 5
    out = []
    for i in range(count):
        v = (h + i * 7_777_777) % space  # 7777777 is prime to 27^5: distinct for every i below it
        letters = []
        for _ in range(5):
            v, r = divmod(v, len(NAME_ALPHABET))
            letters.append(NAME_ALPHABET[r])
        out.append("".join(letters))
    return out


def _fam(ip_or_cidr: str) -> int:
    return 6 if ":" in ip_or_cidr else 4


def _family_name(fam: int) -> str:
    return "IPv6" if fam == 6 else "IPv4"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


# ---------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    """What allocation takes from the flags and the configuration (None/empty: not given)."""

    service_cidrs: tuple[str, ...] = ()  # --service-cidr, else the ServiceCIDR objects
    hostname: str | None = None  # --hostname, else hostnameOverride: the Node made when there is none
    cluster_cidrs: tuple[str, ...] = ()  # --cluster-cidr, else clusterCIDR: where pod CIDRs come from
    node_ips: tuple[str, ...] = ()  # --node-ip: the addresses of the Node made when there is none


def options(flags: dict[str, Any], inputs: Inputs, file_config: ProxyConfig | None) -> Options:
    """Options with the precedence settings use: a flag, then --config, then the inputs' configuration.

    Flag values are checked again when settings are resolved; problems are
    reported there, once.
    """
    from .settings import _cidr_flag

    configs = ([file_config] if file_config else []) + list(inputs.configs)
    cfg = configs[0] if configs else ProxyConfig()
    quiet = Report()
    if flags.get("service_cidr"):
        service = _cidr_flag(flags["service_cidr"], "--service-cidr", quiet)
    else:
        service = tuple(c for s in inputs.service_cidrs for c in s.cidrs)
    if flags.get("cluster_cidr"):
        cluster = _cidr_flag(flags["cluster_cidr"], "--cluster-cidr", quiet)
    else:
        cluster = tuple(cfg.cluster_cidr or ())
    ips = []
    for raw in flags.get("node_ip") or ():
        ip = parse_ip(raw)
        if ip is None:
            raise UsageError(f"--node-ip: {raw!r} is not a valid IP address")
        if ip not in ips:
            ips.append(ip)
    return Options(service, flags.get("hostname") or cfg.hostname_override, cluster, tuple(ips))


# ---------------------------------------------------------------------- the API server: cluster IPs


def _range_offset(size: int, least: int, most: int, step: int) -> int:
    """Where the API server's allocators split a range: below, static requests; above, dynamic ones first."""
    if size <= least:
        return 0
    return min(max(least, size // step), most)


class _Band:
    """Part of a range the allocator searches on its own: from LO to HI, with how much of it is taken."""

    __slots__ = ("lo", "hi", "used")

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi, self.used = lo, hi, -1  # -1: not counted yet

    def pick(self, key: str, taken: set[int]) -> int | None:
        """The first free value from KEY's hash on, wrapping round; None when the band is full."""
        size = self.hi - self.lo + 1
        if size <= 0:
            return None
        if self.used < 0:  # counted once; every value taken afterwards is taken through pick
            self.used = sum(1 for t in taken if self.lo <= t <= self.hi)
        if self.used >= size:
            return None
        at = _hash(key) % size
        while self.lo + at in taken:
            at = (at + 1) % size
        taken.add(self.lo + at)
        self.used += 1
        return self.lo + at


class _IPRange:
    """One service CIDR as the API server allocates from it.

    Its network address is never given out (nor, in IPv4, its broadcast
    address); the first address after it is the `kubernetes` Service's.
    Dynamic allocation tries the upper part of the range first (KEP-3070
    keeps the lowest min(max(16, size/16), 256) addresses for clusterIPs
    users choose) and then the lower part, each from a start point the API
    server draws at random and rulegen takes from the hash.
    """

    def __init__(self, cidr: str):
        net = ipaddress.ip_network(cidr)
        self.cidr = cidr
        self.family = net.version
        self.first = int(net.network_address) + 1
        last = int(net.broadcast_address) - (1 if net.version == 4 else 0)
        split = self.first + _range_offset(net.num_addresses, 16, 256, 16)
        self.bands = (_Band(split, last), _Band(self.first, split - 1))
        self._ip = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address

    def text(self, n: int) -> str:
        return str(self._ip(n))

    def pick(self, key: str, taken: set[int]) -> int | None:
        for band in self.bands:
            got = band.pick(key, taken)
            if got is not None:
                return got
        return None


def _ip_int(ip: str) -> int:
    return int(ipaddress.ip_address(ip))


@dataclass
class _Allocated:
    """What allocation did, for the one summary line."""

    cluster_ips: int = 0
    node_ports: int = 0
    slices: int = 0
    endpoints: int = 0
    services_with_slices: int = 0


class _Refuse(Exception):
    """The API server would refuse to create this Service: FIELD, why."""

    def __init__(self, fld: str, message: str):
        super().__init__(message)
        self.field = fld
        self.message = message


def _families(svc: Service, cluster: list[int]) -> list[int]:
    """The Service's IP families as the API server completes them on create (ipFamilies, ipFamilyPolicy)."""
    given = [ip for ip in (svc.cluster_ips or ((svc.cluster_ip,) if svc.cluster_ip else ())) if ip]
    fams = [6 if f == "IPv6" else 4 for f in svc.ip_families]
    for i, ip in enumerate(given):
        if i >= len(fams):
            fams.append(_fam(ip))
    policy = svc.ip_family_policy
    if policy is None:
        # Headless without a selector defaults to both families; everything else to one.
        policy = "RequireDualStack" if svc.headless and not svc.selector else "SingleStack"
    if policy == "SingleStack" and (len(fams) > 1 or len(given) > 1):
        raise _Refuse("spec.ipFamilyPolicy", "SingleStack with two IP families or cluster IPs")
    if not svc.headless:
        if policy == "RequireDualStack" and len(cluster) < 2:
            raise _Refuse("spec.ipFamilyPolicy", "RequireDualStack, but the service CIDRs "
                          f"are of one family only ({_family_name(cluster[0])})")
        for i, f in enumerate(fams):
            if f not in cluster:
                raise _Refuse(f"spec.ipFamilies[{i}]", f"{_family_name(f)} is not a family of the service CIDRs")
    if not fams:
        fams = [cluster[0]]
    if policy != "SingleStack" and len(fams) == 1 and (len(cluster) == 2 or (svc.headless and not svc.selector)):
        fams.append(10 - fams[0])  # 4 <-> 6
    return fams


class _ServiceAllocator:
    """Cluster IPs and node ports for every Service the input leaves without them."""

    def __init__(self, cidrs: list[str], services: list[Service]):
        self.ranges = [_IPRange(c) for c in cidrs]
        self.families: list[int] = []
        for r in self.ranges:
            if r.family not in self.families:
                self.families.append(r.family)
        self.taken: dict[int, set[int]] = {4: set(), 6: set()}
        self.ports: set[int] = set()
        for svc in services:
            for ip in (svc.cluster_ip, *svc.cluster_ips):
                if ip:
                    self.taken[_fam(ip)].add(_ip_int(ip))
            for p in svc.ports:
                if p.node_port:
                    self.ports.add(p.node_port)
            if svc.health_check_node_port:
                self.ports.add(svc.health_check_node_port)
        # The first address of each family's primary range is the `kubernetes` Service's.
        self.reserved: dict[int, int] = {}
        for r in self.ranges:
            if r.family not in self.reserved:
                self.reserved[r.family] = r.first
                self.taken[r.family].add(r.first)
        # The node-port allocator keeps min(max(16, size/32), 128) ports at the bottom for requested ones too.
        lo, hi = NODE_PORT_RANGE
        split = lo + _range_offset(hi - lo + 1, 16, 128, 32)
        self.port_bands = (_Band(split, hi), _Band(lo, split - 1))

    def cluster_ips(self, svc: Service) -> tuple[Service, int]:
        """SVC with the cluster IPs the API server would give it on create, and how many it made."""
        if svc.headless or not svc.no_cluster_ip:
            return svc, 0
        fams = _families(svc, self.families)
        given = [ip for ip in svc.cluster_ips if ip]
        ips: list[str] = []
        for i, fam in enumerate(fams):
            if i < len(given):
                ips.append(given[i])
                continue
            if svc.namespace == "default" and svc.name == "kubernetes" and fam in self.reserved:
                n = self.reserved.pop(fam)
                ips.append(next(r for r in self.ranges if r.family == fam).text(n))
                continue
            got = None
            for r in self.ranges:
                if r.family == fam:
                    n = r.pick(f"{svc.namespace}/{svc.name}", self.taken[fam])
                    if n is not None:
                        got = r.text(n)
                        break
            if got is None:
                ranges = ", ".join(r.cidr for r in self.ranges if r.family == fam)
                raise _Refuse("spec.clusterIP", f"no free address left in the service range {ranges}")
            ips.append(got)
        return (structs.replace(svc, cluster_ip=ips[0], cluster_ips=tuple(ips),
                                ip_families=tuple(_family_name(f) for f in fams)), len(ips) - len(given))

    def slice_families(self, svc: Service) -> list[str]:
        """The address types of SVC's EndpointSlices: its IP families (the API server's defaults where unset)."""
        if svc.ip_families:
            return list(svc.ip_families)
        if svc.cluster_ip:
            return [_family_name(_fam(svc.cluster_ip))]
        try:
            return [_family_name(f) for f in _families(svc, self.families)]
        except _Refuse:
            return [_family_name(self.families[0])]

    def _port(self, key: str) -> int | None:
        for band in self.port_bands:
            got = band.pick(key, self.ports)
            if got is not None:
                return got
        return None

    def node_ports(self, svc: Service) -> tuple[Service, int]:
        """SVC with node ports (NodePort, LoadBalancer) and a health-check port (LoadBalancer, Local) allocated."""
        made = 0
        ports = list(svc.ports)
        if svc.type in ("NodePort", "LoadBalancer"):
            fresh = svc.type == "NodePort" or svc.allocate_lb_node_ports
            by_number: dict[int, int] = {}
            for i, p in enumerate(ports):
                if p.node_port:
                    by_number.setdefault(p.port, p.node_port)
                    continue
                if not fresh:
                    continue  # allocateLoadBalancerNodePorts: false
                # Ports with the same number (TCP and UDP of one service) share one node port,
                # a requested one first.
                np_ = by_number.get(p.port) or next(
                    (q.node_port for q in ports[i + 1:] if q.port == p.port and q.node_port), 0)
                if not np_:
                    np_ = self._port(f"{svc.namespace}/{svc.name}:{p.port}") or 0
                    if not np_:
                        raise _Refuse(f"spec.ports[{p.index}].nodePort",
                                      f"no free node port left in {NODE_PORT_RANGE[0]}-{NODE_PORT_RANGE[1]}")
                    made += 1
                by_number[p.port] = np_
                ports[i] = structs.replace(p, node_port=np_)
        hc = svc.health_check_node_port
        if svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local" and not hc:
            hc = self._port(f"{svc.namespace}/{svc.name}/health-check") or 0
            if not hc:
                raise _Refuse("spec.healthCheckNodePort",
                              f"no free node port left in {NODE_PORT_RANGE[0]}-{NODE_PORT_RANGE[1]}")
            made += 1
        if not made:
            return svc, 0
        return structs.replace(svc, ports=tuple(ports), health_check_node_port=hc), made


# ---------------------------------------------------------------------- nodes and their pod ranges


def _synthetic_node(opts: Options, families: list[int]) -> Node:
    name = opts.hostname or DEFAULT_NODE
    why = apinames.node_name(name)
    if why:
        raise UsageError(f"--hostname: {apinames.shown(name)} is not a valid node name: {why}")
    cidrs = []
    for fam in families:
        given = [c for c in opts.cluster_cidrs if _fam(c) == fam]
        net = ipaddress.ip_network(given[0] if given else DEFAULT_POD_CIDRS[fam])
        prefix = max(NODE_CIDR_PREFIX[fam], net.prefixlen)
        cidrs.append(str(next(net.subnets(new_prefix=prefix))))
    return Node(name, opts.node_ips, tuple(cidrs), None, {OS_LABEL: "linux", HOSTNAME_LABEL: name})


def _pod_ranges(nodes: list[Node], opts: Options, families: list[int]) -> dict[str, dict[int, Any]]:
    """Each node's pod range per family: its podCIDRs, else the next free node-sized part of the pod network."""
    out: dict[str, dict[int, Any]] = {}
    used: list[Any] = []
    for node in sorted(nodes, key=lambda n: n.name):
        mine = out.setdefault(node.name, {})
        for c in node.pod_cidrs:
            net = ipaddress.ip_network(c)
            mine.setdefault(net.version, net)
            used.append(net)
    for fam in families:
        given = [c for c in opts.cluster_cidrs if _fam(c) == fam]
        pool = ipaddress.ip_network(given[0] if given else DEFAULT_POD_CIDRS[fam])
        parts = pool.subnets(new_prefix=max(NODE_CIDR_PREFIX[fam], pool.prefixlen))
        for name in sorted(out):
            if fam in out[name]:
                continue
            for part in parts:
                if not any(part.overlaps(u) for u in used if u.version == fam):
                    out[name][fam] = part
                    used.append(part)
                    break
    return out


class _Addresses:
    """Pod IPs per node and family, handed out in order as host-local IPAM does.

    The network address and the first address (the node's bridge, cni0, in
    the common CNI set-ups) are skipped; so, in IPv4, is the broadcast
    address.
    """

    def __init__(self, ranges: dict[str, dict[int, Any]], taken: Iterable[str]):
        self.ranges = ranges
        self.next: dict[tuple[str, int], int] = {}
        self.taken = {_ip_int(ip) for ip in taken}

    def take(self, node: str, fam: int) -> str | None:
        net = self.ranges.get(node, {}).get(fam)
        if net is None:
            return None
        first = int(net.network_address) + 2
        last = int(net.broadcast_address) - (1 if fam == 4 else 0)
        n = self.next.get((node, fam), first)
        while n <= last and n in self.taken:
            n += 1
        if n > last:
            return None
        self.next[(node, fam)] = n + 1
        self.taken.add(n)
        return _ntoa(n.to_bytes(4, "big")) if fam == 4 else str(ipaddress.IPv6Address(n))


# ---------------------------------------------------------------------- the workload controllers and the scheduler


@dataclass
class _PodPlan:
    """One pod that will exist: from the input, or made for a workload."""

    namespace: str
    name: str
    labels: dict[str, str]
    ports: tuple[ContainerPort, ...]
    node: str | None
    ips: tuple[str, ...] = ()
    ready: bool = True
    terminating: bool = False
    host_network: bool = False


def standing_workloads(inputs: Inputs) -> list[Workload]:
    """The workloads whose pods the input does not hold, so they stand for them (sorted).

    A workload that owns a Pod of the input (directly, or a Deployment
    through its ReplicaSet) is represented by those Pods, as a `kubectl get
    all` dump holds them. A ReplicaSet whose Deployment is in the input is
    left to that Deployment, which asks for the same pods.
    """
    kinds = {(w.namespace, w.kind, w.name): w for w in inputs.workloads}
    realized: set[tuple[str, str, str]] = set()
    for pod in inputs.pods:
        if pod.owner is None:
            continue
        key = (pod.namespace, *pod.owner)
        if key not in kinds and pod.owner[0] == "ReplicaSet":
            # The ReplicaSet is not in the input (`kubectl get deploy,pods`): its name is its
            # Deployment's and a pod-template hash.
            key = (pod.namespace, "Deployment", pod.owner[1].rpartition("-")[0])
        while key in kinds and key not in realized:
            realized.add(key)
            owner = kinds[key].owner
            if owner is None:
                break
            key = (key[0], *owner)
    out = []
    for key in sorted(kinds):
        w = kinds[key]
        if key in realized:
            continue
        if w.kind == "ReplicaSet" and w.owner is not None and (w.namespace, *w.owner) in kinds:
            continue
        out.append(w)
    return out


def _tolerates(taint: tuple[str, str, str], tolerations: tuple[Toleration, ...]) -> bool:
    key, value, effect = taint
    for t_key, op, t_value, t_effect in tolerations:
        if t_effect and t_effect != effect:
            continue
        if not t_key and op == "Exists":
            return True
        if t_key == key and (op == "Exists" or t_value == value):
            return True
    return False


def _fits(node: Node, tpl: PodTemplate, tolerations: tuple[Toleration, ...]) -> str:
    """Why a pod of TPL cannot run on NODE ("" when it can): its nodeName, nodeSelector, or an untolerated taint."""
    if tpl.node_name and tpl.node_name != node.name:
        return "nodeName"
    if any(node.labels.get(k) != v for k, v in tpl.node_selector.items()):
        return "nodeSelector"
    for taint in node.taints:
        if taint[2] in ("NoSchedule", "NoExecute") and not _tolerates(taint, tolerations):
            return f"taint {taint[0]}{'=' + taint[1] if taint[1] else ''}:{taint[2]}"
    return ""


def _why_pending(nodes: list[Node], tpl: PodTemplate, tolerations: tuple[Toleration, ...]) -> str:
    """The notice's words for a pod that fits no node."""
    names = sorted(n.name for n in nodes)
    where = f"node {names[0]}" if len(names) == 1 else f"any of the {len(names)} Nodes ({_listed(names)})"
    if tpl.node_name and tpl.node_name not in names:
        return f"spec.nodeName {tpl.node_name} is not {'node ' + names[0] if len(names) == 1 else 'among the Nodes'}"
    reasons = sorted({_fits(n, tpl, tolerations) for n in nodes})
    if reasons == ["nodeSelector"]:
        sel = ",".join(f"{k}={v}" for k, v in sorted(tpl.node_selector.items()))
        return f"the nodeSelector {sel} does not match {where}"
    return f"no Node fits it ({'; '.join(f'{n.name}: {_fits(n, tpl, tolerations)}' for n in sorted(nodes, key=lambda n: n.name)[:SHOWN])})"


def _placement(w: Workload) -> tuple[PodTemplate, tuple[Toleration, ...]]:
    """What decides where W's pods may run: its template, and its tolerations with the DaemonSet controller's."""
    tpl = w.template
    if w.kind != "DaemonSet":
        return tpl, tpl.tolerations
    extra = (DAEMON_HOST_NETWORK_TOLERATED,) if tpl.host_network else ()
    tol = tpl.tolerations + tuple((k, "Exists", "", "") for k in (*DAEMON_TOLERATED, *extra))
    # The DaemonSet controller sets each pod's nodeName itself.
    return structs.replace(tpl, node_name=None), tol


def unschedulable(w: Workload, nodes: list[Node]) -> str:
    """Why no pod of W fits any of NODES, in a notice's words; "" when one fits."""
    tpl, tol = _placement(w)
    if any(not _fits(n, tpl, tol) for n in nodes):
        return ""
    return _why_pending(nodes, tpl, tol)


def _template_of(pod: Pod) -> PodTemplate:
    return PodTemplate(pod.labels, pod.container_ports, pod.node_selector, pod.node_name, pod.tolerations,
                       pod.host_network)


class _Scheduler:
    """Where each pod runs: the least loaded node that fits it, ties to the first by name.

    The real scheduler scores nodes by their free resources and spreads a
    workload's replicas; counting the pods already on each node gives the
    same even spread, deterministically. Nodes that fit a template are found
    once per distinct nodeSelector/nodeName/tolerations, and each such set
    keeps a heap of (pods, node) whose stale entries are refreshed when met.
    """

    def __init__(self, nodes: list[Node]):
        self.nodes = sorted(nodes, key=lambda n: n.name)
        self.load = {n.name: 0 for n in self.nodes}
        self._fits: dict[Any, list[Node]] = {}
        self._heaps: dict[Any, list[tuple[int, str]]] = {}

    @staticmethod
    def _key(tpl: PodTemplate, tol: tuple[Toleration, ...]) -> Any:
        return tuple(sorted(tpl.node_selector.items())), tpl.node_name, tol

    def fitting(self, tpl: PodTemplate, tol: tuple[Toleration, ...]) -> list[Node]:
        key = self._key(tpl, tol)
        got = self._fits.get(key)
        if got is None:
            got = self._fits[key] = [n for n in self.nodes if not _fits(n, tpl, tol)]
        return got

    def place(self, tpl: PodTemplate, tol: tuple[Toleration, ...]) -> str | None:
        key = self._key(tpl, tol)
        fits = self.fitting(tpl, tol)
        if not fits:
            return None
        heap = self._heaps.get(key)
        if heap is None:
            heap = self._heaps[key] = [(self.load[n.name], n.name) for n in fits]
            heapq.heapify(heap)
        while True:
            count, name = heap[0]
            if count != self.load[name]:  # pods were put there through another set: refresh
                heapq.heapreplace(heap, (self.load[name], name))
                continue
            self.load[name] = count + 1
            heapq.heapreplace(heap, (count + 1, name))
            return name

    def count(self, node: str | None) -> None:
        """A pod put on NODE by other means (its nodeName, the DaemonSet controller, the input)."""
        if node in self.load:
            self.load[node] += 1


def _pods(inputs: Inputs, nodes: list[Node], report: Report) -> list[_PodPlan]:
    """Every pod the cluster would run: the input's, and the ones its workloads ask for, each on a node."""
    sched = _Scheduler(nodes)
    out: list[_PodPlan] = []
    waiting: list[Pod] = []
    for pod in inputs.pods:
        if pod.phase in TERMINAL_PHASES:
            continue  # finished: the EndpointSlice controller leaves it out
        if pod.ips or pod.phase:
            # Applied: its address (or, Pending, its lack of one) is the cluster's.
            out.append(_PodPlan(pod.namespace, pod.name, pod.labels, pod.container_ports, pod.node_name, pod.ips,
                                pod.ready, pod.terminating, pod.host_network))
            sched.count(pod.node_name)
        else:
            waiting.append(pod)
    for pod in sorted(waiting, key=lambda p: (p.namespace, p.name)):
        tpl = _template_of(pod)
        node = sched.place(tpl, pod.tolerations)
        if node is None:
            report.add(pod.place, "spec", f"{_why_pending(nodes, tpl, pod.tolerations)}: the Pod stays Pending "
                       "(no endpoint)", notice=True)
            continue
        out.append(_PodPlan(pod.namespace, pod.name, pod.labels, pod.container_ports, node,
                            host_network=pod.host_network))
    for w in standing_workloads(inputs):
        tpl, tol = _placement(w)
        placed: list[tuple[str, str | None]]
        if w.kind == "DaemonSet":
            fits = sched.fitting(tpl, tol)
            if not fits:
                report.add(w.place, "spec.template.spec", f"{_why_pending(nodes, tpl, tol)}: the DaemonSet runs "
                           "no pod (no endpoint)", notice=True)
            for n in fits:
                sched.count(n.name)
            placed = [(f"{w.name}-{_suffix(f'{w.key}/{n.name}')}", n.name) for n in fits]
        else:
            count = w.replicas or 0
            if count and not sched.fitting(tpl, tol):
                report.add(w.place, "spec.template.spec", f"{_why_pending(nodes, tpl, tol)}: its "
                           f"{_plural(count, 'pod')} stay Pending (no endpoints)", notice=True)
                continue
            if w.kind == "StatefulSet":
                names = [f"{w.name}-{i}" for i in range(count)]
            elif w.kind == "Deployment":
                # NAME-<pod-template-hash>-<5 letters>, as the Deployment and ReplicaSet controllers name them.
                rs = f"{w.name}-{_suffix(repr(tpl), 10)}"
                names = [f"{rs}-{x}" for x in _suffixes(w.key, count)]
            else:
                names = [f"{w.name}-{x}" for x in _suffixes(w.key, count)]
            placed = [(n, sched.place(tpl, tol)) for n in names]
        for name, node in placed:
            out.append(_PodPlan(w.namespace, name, tpl.labels, tpl.container_ports, node,
                                host_network=tpl.host_network))
    return out


def _address_pods(pods: list[_PodPlan], nodes: list[Node], ranges: dict[str, dict[int, Any]],
                  report: Report) -> None:
    """Give every running pod without an address its IPs: the node's for hostNetwork, else from the node's pod range."""
    by_name = {n.name: n for n in nodes}
    taken = [ip for p in pods for ip in p.ips] + [ip for n in nodes for ip in n.addresses]
    addresses = _Addresses(ranges, taken)
    no_address: dict[str, list[str]] = {}
    no_range: dict[str, list[str]] = {}
    full: dict[str, list[str]] = {}
    for p in sorted(pods, key=lambda p: (p.namespace, p.name)):
        if p.ips or p.node is None:
            continue
        if p.host_network:
            node = by_name.get(p.node)
            p.ips = node.addresses if node else ()
            if not p.ips:
                no_address.setdefault(p.node, []).append(f"{p.namespace}/{p.name}")
            continue
        if not ranges.get(p.node):
            no_range.setdefault(p.node, []).append(f"{p.namespace}/{p.name}")
            continue
        ips = []
        for fam in sorted(ranges[p.node]):
            ip = addresses.take(p.node, fam)
            if ip is None:
                full.setdefault(f"{p.node} ({ranges[p.node][fam]})", []).append(f"{p.namespace}/{p.name}")
            else:
                ips.append(ip)
        p.ips = tuple(ips)
    for node, names in sorted(no_address.items()):
        report.note(f"--allocate: node {node} has no address (give --node-ip), so its hostNetwork pods "
                    f"{_listed(names)} have none and are no endpoints")
    for node, names in sorted(no_range.items()):
        report.note(f"--allocate: node {node} has no podCIDR and the pod network has no room left for one: "
                    f"pods {_listed(names)} get no address (no endpoints)")
    for where, names in sorted(full.items()):
        report.note(f"--allocate: the pod range of node {where} is full: pods {_listed(names)} get no "
                    "address there (no endpoints)")


# ---------------------------------------------------------------------- the EndpointSlice controller


def _find_port(sp: ServicePort, ports: tuple[ContainerPort, ...]) -> int | None:
    """The endpoint port of Service port SP on a pod: the targetPort number, or the container port it names."""
    tp = sp.target_port
    if tp is None or tp == "":
        return sp.port
    if isinstance(tp, int):
        return tp
    for name, num, proto in ports:
        if name == tp and proto == sp.protocol:
            return num
    return None


class _PodIndex:
    """A namespace's pods grouped by label set, indexed by label pair, for selector lookups."""

    def __init__(self, pods: list[_PodPlan]):
        groups: dict[tuple[tuple[str, str], ...], list[_PodPlan]] = {}
        for p in pods:
            groups.setdefault(tuple(sorted(p.labels.items())), []).append(p)
        self.groups = list(groups.values())
        self.by_pair: dict[tuple[str, str], list[int]] = {}
        for i, members in enumerate(self.groups):
            for kv in members[0].labels.items():
                self.by_pair.setdefault(kv, []).append(i)

    def select(self, selector: dict[str, str]) -> list[_PodPlan]:
        lists = [self.by_pair.get(kv, []) for kv in selector.items()]
        smallest = min(lists, key=len)
        out = [p for i in smallest if all(self.groups[i][0].labels.get(k) == v for k, v in selector.items())
               for p in self.groups[i]]
        return sorted(out, key=lambda p: p.name)


def _slices(svc: Service, families: list[str], chosen: list[_PodPlan],
            zones: dict[str, str | None]) -> list[EndpointSlice]:
    """The EndpointSlices the controller keeps for SVC: per family, per set of resolved ports, 100 endpoints each.

    Each port carries the Service port's name and protocol and the number
    found in the pod (a named targetPort is looked up in its containers); a
    pod where a named port is not found is an endpoint without that port. A
    Service that selects nothing still gets one empty slice per family.
    """
    out = []
    for fname in families:
        fam = 6 if fname == "IPv6" else 4
        groups: dict[tuple[SlicePort, ...], list[Endpoint]] = {}
        for p in chosen:
            ip = next((a for a in p.ips if _fam(a) == fam), None)
            if ip is None:
                continue
            ports = []
            for sp in svc.ports:
                num = _find_port(sp, p.ports)
                if num is not None:
                    ports.append(SlicePort(sp.name, sp.protocol, num))
            ready = svc.publish_not_ready or (p.ready and not p.terminating)
            groups.setdefault(tuple(ports), []).append(
                Endpoint(ip, ready, p.ready, p.terminating, p.node, zones.get(p.node or "")))
        if not groups:
            groups[()] = []
        n = 0
        for ports, eps in groups.items():
            for at in range(0, max(len(eps), 1), MAX_SLICE_ENDPOINTS):
                name = f"{svc.name}-{_suffix(f'{svc.namespace}/{svc.name}/{fname}/{n}')}"
                out.append(EndpointSlice(svc.namespace, name, svc.name, fname, ports,
                                         tuple(eps[at:at + MAX_SLICE_ENDPOINTS])))
                n += 1
    return out


# ---------------------------------------------------------------------- the whole step


def allocate(inputs: Inputs, opts: Options, report: Report) -> Inputs:
    """INPUTS as a cluster would hold them once applied: new objects, INPUTS untouched."""
    done = _Allocated()
    cidrs = list(opts.service_cidrs) or [DEFAULT_SERVICE_CIDR]
    service_cidrs = list(inputs.service_cidrs)
    if not opts.service_cidrs:
        service_cidrs.append(ServiceCIDR(SERVICE_CIDR_NAME, (DEFAULT_SERVICE_CIDR,)))
    alloc = _ServiceAllocator(cidrs, inputs.services)

    # Services in namespace/name order, so who gets a contested address never depends on file order.
    services: dict[int, Service | None] = {}
    first: set[tuple[str, str]] = set()
    for i in sorted(range(len(inputs.services)), key=lambda i: (inputs.services[i].namespace,
                                                                 inputs.services[i].name, i)):
        svc = inputs.services[i]
        if svc.type == "ExternalName" or (svc.namespace, svc.name) in first:
            services[i] = svc  # nothing to allocate; a second copy is left as it is (the plan keeps the first)
            continue
        first.add((svc.namespace, svc.name))
        try:
            new, made = alloc.cluster_ips(svc)
            done.cluster_ips += made
            new, made = alloc.node_ports(new)
            done.node_ports += made
            services[i] = new
        except _Refuse as e:
            report.add(svc.place, e.field, f"{e.message} (the API server refuses the Service: left out)")
            services[i] = None
    new_services = [s for i in range(len(inputs.services)) if (s := services[i]) is not None]

    families = list(alloc.families)
    for c in opts.cluster_cidrs:
        if _fam(c) not in families:
            families.append(_fam(c))
    nodes = list(inputs.nodes) or [_synthetic_node(opts, families)]
    pods = _pods(inputs, nodes, report)
    ranges = _pod_ranges(nodes, opts, families)
    _address_pods(pods, nodes, ranges, report)

    by_ns: dict[str, list[_PodPlan]] = {}
    for p in pods:
        if p.ips:
            by_ns.setdefault(p.namespace, []).append(p)
    index = {ns: _PodIndex(members) for ns, members in by_ns.items()}
    have = {(sl.namespace, sl.service_name) for sl in inputs.slices if sl.service_name}
    zones = {n.name: n.zone for n in nodes}
    made: list[EndpointSlice] = []
    seen: set[tuple[str, str]] = set()
    for svc in sorted(new_services, key=lambda s: (s.namespace, s.name)):
        key = (svc.namespace, svc.name)
        if key in seen or key in have or not svc.selector or svc.type == "ExternalName":
            continue  # its slices are in the input, or someone other than the controller writes them
        seen.add(key)
        idx = index.get(svc.namespace)
        chosen = idx.select(svc.selector) if idx is not None else []
        got = _slices(svc, alloc.slice_families(svc), chosen, zones)
        made += got
        done.slices += len(got)
        done.endpoints += sum(len(sl.endpoints) for sl in got)
        done.services_with_slices += 1
    report.note(_summary(done, cidrs, nodes, inputs))
    return Inputs(new_services, list(inputs.slices) + made, nodes, service_cidrs, list(inputs.configs),
                  list(inputs.pods), list(inputs.workloads))


def _summary(done: _Allocated, cidrs: list[str], nodes: list[Node], inputs: Inputs) -> str:
    parts = []
    if done.cluster_ips:
        parts.append(f"{_plural(done.cluster_ips, 'cluster IP')} from {', '.join(cidrs)}")
    if done.node_ports:
        parts.append(_plural(done.node_ports, "node port"))
    if done.services_with_slices:
        parts.append(f"{_plural(done.slices, 'EndpointSlice')} with {_plural(done.endpoints, 'endpoint')} "
                     f"for {_plural(done.services_with_slices, 'Service')}")
    if not inputs.nodes:
        parts.append(f"node {nodes[0].name} (podCIDR {', '.join(nodes[0].pod_cidrs)})")
    if not parts:
        return "--allocate: nothing to allocate (every Service has its cluster IP, node ports and EndpointSlices)"
    return "--allocate: " + "; ".join(parts)


def census(inputs: Inputs) -> tuple[int, int, int, int, int]:
    """What `notice_for` weighs: Services, those without clusterIP, those a controller would make slices for,
    EndpointSlices, and workloads and Pods. Counts add up over parts of the input (the incremental compile's units).
    """
    return (len(inputs.services), sum(1 for s in inputs.services if s.no_cluster_ip),
            sum(1 for s in inputs.services if s.selector and not s.headless and s.type != "ExternalName"),
            len(inputs.slices), len(inputs.workloads) + len(inputs.pods))


def unallocated_notice(inputs: Inputs) -> str | None:
    """Without --allocate: the one line that says the input looks not yet applied, or None."""
    return notice_for(census(inputs))


def notice_for(counts: Iterable[int]) -> str | None:
    """The notice for the counts of `census`, or None."""
    services, missing, selecting, slices, workloads = counts
    if missing:
        return (f"{_plural(missing, 'Service')} of {services} {'has' if missing == 1 else 'have'} "
                "no clusterIP (manifests not yet applied?): kube-proxy writes no rules for them; --allocate "
                "compiles them as the API server and controllers would (cluster IPs, node ports, "
                "EndpointSlices from the workloads)")
    if slices or not workloads or not selecting:
        return None
    return (f"{_plural(selecting, 'Service')} with a selector and no EndpointSlice in the input: kube-proxy "
            "rejects their connections; --allocate makes the EndpointSlices the controller would, from the "
            "workloads and Pods of the input")
