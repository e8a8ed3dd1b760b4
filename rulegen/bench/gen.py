"""A deterministic generator of realistic clusters, for benchmarks and scaling tests.

Owns the synthetic inputs of `rulegen bench`: N Services with E endpoints
each, in the mix a production cluster shows (mostly ClusterIP; NodePort;
LoadBalancer with ingress IPs, some with loadBalancerSourceRanges and some
without node ports; externalTrafficPolicy / internalTrafficPolicy Local;
ClientIP affinity; multi-port services with named ports; UDP; a few
not-ready and terminating endpoints, a few headless services), endpoints
spread over ~100 pods per node, plus the Node the rules are for and a
KubeProxyConfiguration with the cluster CIDR. Everything is derived from one
`random.Random(seed)`, so a seed names an input exactly.

Each feature is dealt from a shuffled deck (`_Deck`) rather than drawn by a
coin flip: every 100 Services hold exactly the mix's share of it, so a 1,000
and a 10,000 Service cluster carry the same work per Service and the growth
budget compares sizes, not two samples of the mix. (With coin flips the 1k
cluster of seed 1 had 2.5% fewer ports per Service than the 10k one.)

Objects come in the order `kubectl get -A` lists them: each kind in turn,
sorted by namespace and name, as the API server returns them.
Output is multi-document YAML (block style, as `kubectl get -o yaml` prints
it) or `kubectl get -o json`-style JSON (`kind: List`). Both writers are
built for speed: JSON goes through the C encoder, YAML through a small
block emitter that is several times faster than PyYAML's C dumper.
"""

from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import dataclass
from typing import IO, Any, Iterable

import yaml

NODE_NAME = "node-0000"  # the node the rules are for
NODE_IP = "192.168.0.10"
CLUSTER_CIDR = "10.128.0.0/9"  # pods: one /23 per node
SERVICE_BASE = (10 << 24) | (96 << 16)  # 10.96.0.0/12
LB_BASE = (198 << 24) | (18 << 16)  # 198.18.0.0/16: load-balancer ingress IPs
EXTERNAL_BASE = (198 << 24) | (19 << 16)  # 198.19.0.0/16: externalIPs
POD_BASE = (10 << 24) | (128 << 16)
POD_BLOCK = 512  # addresses per node (/23)
PODS_PER_NODE = 100  # kubelet's max is 110; sizes the node count
SLICE_MAX = 100  # the EndpointSlice controller's maxEndpointsPerSlice
NODEPORT_RANGE = (30000, 32767)
ZONES = ("zone-a", "zone-b", "zone-c")
WORDS = ("api", "web", "auth", "cache", "db", "queue", "search", "metrics", "billing", "gateway",
         "orders", "users", "cart", "media", "mail", "report", "ingest", "store", "admin", "feed")


@dataclass(frozen=True)
class Mix:
    """Fractions of the cluster that get each feature (of all Services unless said)."""

    nodeport: float = 0.08
    loadbalancer: float = 0.10
    lb_no_nodeports: float = 0.5  # of LoadBalancers: allocateLoadBalancerNodePorts false
    lb_two_ingress: float = 0.1  # of LoadBalancers
    lb_source_ranges: float = 0.3  # of LoadBalancers
    external_ips: float = 0.02  # of ClusterIP Services
    external_local: float = 0.3  # of NodePort/LoadBalancer Services
    internal_local: float = 0.05
    affinity: float = 0.05
    headless: float = 0.01
    multi_port: float = 0.25
    dns_like: float = 0.03  # TCP + UDP on 53
    udp_only: float = 0.03
    unnamed_port: float = 0.3  # of single-port Services
    local_endpoint: float = 0.5  # of Local-policy Services: one endpoint on our node
    no_ready: float = 0.01  # Services whose endpoints are all not ready
    not_ready: float = 0.02  # of endpoints
    terminating: float = 0.01  # of endpoints (serving, terminating)


MIX = Mix()


class _Deck:
    """Dealt outcomes whose shares are exact over every full deck: a stratified coin.

    OUTCOMES maps each outcome to its share (the shares sum to 1). The deck
    holds the fewest cards (10, 100, ... 10,000) that give every share a
    whole number of cards; it is shuffled with the cluster's generator and
    reshuffled each time it runs out.
    """

    def __init__(self, rng: random.Random, outcomes: dict[Any, float]):
        self.rng = rng
        size = next((n for n in (10, 100, 1000) if all(abs(p * n - round(p * n)) < 1e-9 for p in outcomes.values())),
                    10000)
        cards: list[Any] = []
        for outcome, p in outcomes.items():
            cards += [outcome] * round(p * size)
        if not cards:
            raise ValueError("a deck needs at least one card")
        self.cards = cards
        self.left: list[Any] = []

    def deal(self) -> Any:
        if not self.left:
            self.left = self.cards[:]
            self.rng.shuffle(self.left)
        return self.left.pop()




def _ip(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


class _Pods:
    """Pod addresses: each node owns a /23 of the cluster CIDR; pods go to random nodes."""

    def __init__(self, rng: random.Random, nodes: int):
        self.rng = rng
        self.nodes = nodes
        self.used = [0] * nodes

    def place(self, node: int | None = None) -> tuple[str, int]:
        if node is None or self.used[node] >= POD_BLOCK - 2:
            node = self.rng.randrange(self.nodes)
            while self.used[node] >= POD_BLOCK - 2:  # full: kubelet would refuse it too
                node = (node + 1) % self.nodes
        self.used[node] += 1
        return _ip(POD_BASE + node * POD_BLOCK + self.used[node]), node


def _shares(*pairs: tuple[Any, float]) -> dict[Any, float]:
    """Outcome → share, in order, each clipped to what is left; the last outcome takes the rest."""
    out: dict[Any, float] = {}
    left = 1.0
    for outcome, p in pairs[:-1]:
        p = min(max(p, 0.0), left)
        out[outcome] = p
        left -= p
    out[pairs[-1][0]] = left
    return out


def _coin(rng: random.Random, p: float) -> _Deck:
    """A deck that deals True with share P (clipped to 0..1)."""
    return _Deck(rng, _shares((True, p), (False, 0.0)))


class _Decks:
    """One deck per choice the generator makes, all shuffled by the cluster's generator."""

    def __init__(self, rng: random.Random, mix: Mix):
        self.ports = _Deck(rng, _shares(("dns", mix.dns_like), ("udp", mix.udp_only), ("multi", mix.multi_port),
                                        ("single", 0.0)))
        self.third_port = _coin(rng, 0.3)
        self.unnamed = _coin(rng, mix.unnamed_port)
        self.type = _Deck(rng, _shares(("NodePort", mix.nodeport), ("LoadBalancer", mix.loadbalancer),
                                       ("ClusterIP", 0.0)))
        self.headless = _coin(rng, mix.headless)
        self.lb_no_nodeports = _coin(rng, mix.lb_no_nodeports)
        self.external_local = _coin(rng, mix.external_local)
        self.external_ips = _coin(rng, mix.external_ips)
        self.internal_local = _coin(rng, mix.internal_local)
        self.affinity = _coin(rng, mix.affinity)
        self.affinity_timeout = _coin(rng, 0.5)
        self.lb_two_ingress = _coin(rng, mix.lb_two_ingress)
        self.lb_source_ranges = _coin(rng, mix.lb_source_ranges)
        self.ranges_admit_node = _coin(rng, 0.5)
        self.no_ready = _coin(rng, mix.no_ready)
        self.local_endpoint = _coin(rng, mix.local_endpoint)
        self.condition = _Deck(rng, _shares(("not-ready", mix.not_ready), ("terminating", mix.terminating),
                                            ("ready", 0.0)))


def _ports(d: _Decks) -> list[tuple[str, str, int, int]]:
    """(name, protocol, port, targetPort) of one Service."""
    kind = d.ports.deal()
    if kind == "dns":
        return [("dns", "UDP", 53, 53), ("dns-tcp", "TCP", 53, 53)]
    if kind == "udp":
        return [("syslog", "UDP", 514, 5514)]
    if kind == "multi":
        ports = [("http", "TCP", 80, 8080), ("https", "TCP", 443, 8443)]
        if d.third_port.deal():
            ports.append(("metrics", "TCP", 9090, 9090))
        return ports
    if d.unnamed.deal():
        return [("", "TCP", 80, 8080)]
    return [("http", "TCP", 80, 8080)]


def generate(services: int, endpoints: int, seed: int = 1, mix: Mix = MIX) -> list[dict[str, Any]]:
    """The cluster's objects as `kubectl get -A -o json` lists them: the Node and the
    KubeProxyConfiguration, then every Service, then every EndpointSlice, each kind
    sorted by namespace and name."""
    if services < 0 or endpoints < 0:
        raise ValueError("services and endpoints must not be negative")
    rng = random.Random(seed)
    total_pods = services * endpoints
    nodes = max(3, -(-total_pods // PODS_PER_NODE))
    pods = _Pods(rng, nodes)
    node_names = [f"node-{i:04d}" for i in range(nodes)]
    nodeports = list(range(NODEPORT_RANGE[0], NODEPORT_RANGE[1] + 1))
    rng.shuffle(nodeports)
    namespaces = max(1, services // 40)

    objs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME,
                                                        "topology.kubernetes.io/zone": ZONES[0]}},
            "spec": {"podCIDR": _ip(POD_BASE) + "/23", "podCIDRs": [_ip(POD_BASE) + "/23"]},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP},
                                     {"type": "Hostname", "address": NODE_NAME}]},
        },
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "clusterCIDR": CLUSTER_CIDR,
        },
    ]
    services_out: list[dict[str, Any]] = []
    slices_out: list[dict[str, Any]] = []
    lb_next = 1
    ext_next = 1
    d = _Decks(rng, mix)
    for i in range(services):
        ns = f"team-{i % namespaces:03d}"
        name = f"{WORDS[i % len(WORDS)]}-{i:05d}"
        ports = _ports(d)
        stype = d.type.deal()
        headless = stype == "ClusterIP" and d.headless.deal()
        cip = "None" if headless else _ip(SERVICE_BASE + 10 + i)
        spec: dict[str, Any] = {
            "clusterIP": cip, "clusterIPs": [cip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "selector": {"app": name}, "type": stype,
        }
        status: dict[str, Any] = {"loadBalancer": {}}
        external = stype != "ClusterIP"
        allocate = stype == "NodePort" or (stype == "LoadBalancer" and not d.lb_no_nodeports.deal())
        if allocate and len(nodeports) < len(ports) + 1:
            # The range is used up: the API server would refuse; keep the Service without node ports.
            allocate = False
            if stype == "NodePort":
                stype = spec["type"] = "ClusterIP"
                external = False
        if stype == "LoadBalancer" and not allocate:
            spec["allocateLoadBalancerNodePorts"] = False
        spec["ports"] = [
            {**({"name": pn} if pn else {}), "protocol": proto, "port": port, "targetPort": target,
             **({"nodePort": nodeports.pop()} if allocate else {})}
            for pn, proto, port, target in ports
        ]
        local_policy = False
        if external:
            local_policy = d.external_local.deal()
            spec["externalTrafficPolicy"] = "Local" if local_policy else "Cluster"
            if local_policy and stype == "LoadBalancer" and nodeports:
                spec["healthCheckNodePort"] = nodeports.pop()
        elif not headless and d.external_ips.deal():
            spec["externalIPs"] = [_ip(EXTERNAL_BASE + ext_next)]
            ext_next += 1
        if d.internal_local.deal():
            spec["internalTrafficPolicy"] = "Local"
            local_policy = True
        else:
            spec["internalTrafficPolicy"] = "Cluster"
        if d.affinity.deal():
            spec["sessionAffinity"] = "ClientIP"
            if d.affinity_timeout.deal():
                spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 3600}}
        else:
            spec["sessionAffinity"] = "None"
        if stype == "LoadBalancer":
            ingress = []
            for _ in range(2 if d.lb_two_ingress.deal() else 1):
                ingress.append({"ip": _ip(LB_BASE + lb_next), "ipMode": "VIP"})
                lb_next += 1
            status = {"loadBalancer": {"ingress": ingress}}
            if d.lb_source_ranges.deal():
                # Half of them admit the node's own network, so the FW chain also gets LB-IP rules.
                spec["loadBalancerSourceRanges"] = (["192.168.0.0/16", "198.51.100.0/24"] if d.ranges_admit_node.deal()
                                                    else ["203.0.113.0/24"])
        services_out.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name},
                         "uid": f"{rng.getrandbits(128):032x}", "resourceVersion": str(1000 + i),
                         "creationTimestamp": "2024-05-01T12:00:00Z"},
            "spec": spec, "status": status,
        })

        no_ready = d.no_ready.deal()
        on_us = local_policy and d.local_endpoint.deal()
        eps = []
        for j in range(endpoints):
            ip, node = pods.place(0 if (on_us and j == 0) else None)
            state = d.condition.deal()
            if no_ready or state == "not-ready":
                cond = {"ready": False, "serving": False, "terminating": False}
            elif state == "terminating":
                cond = {"ready": False, "serving": True, "terminating": True}
            else:
                cond = {"ready": True, "serving": True, "terminating": False}
            eps.append({
                "addresses": [ip], "conditions": cond, "nodeName": node_names[node],
                "targetRef": {"kind": "Pod", "name": f"{name}-{rng.getrandbits(32):08x}", "namespace": ns},
                "zone": ZONES[node % len(ZONES)],
            })
        slice_ports = [{"name": pn, "port": target, "protocol": proto} for pn, proto, _, target in ports]
        for k in range(0, max(len(eps), 1), SLICE_MAX):
            slices_out.append({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-{rng.getrandbits(20):05x}", "namespace": ns,
                             "labels": {"kubernetes.io/service-name": name,
                                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                "addressType": "IPv4",
                "endpoints": eps[k:k + SLICE_MAX],
                "ports": slice_ports,
            })
    # kubectl's order: each kind in turn, sorted by namespace and name (the API server's list order).
    by_name = lambda o: (o["metadata"]["namespace"], o["metadata"]["name"])  # noqa: E731
    return objs + sorted(services_out, key=by_name) + sorted(slices_out, key=by_name)


# --------------------------------------------------------------------------- writers


def to_json(objs: list[dict[str, Any]]) -> str:
    """`kubectl get -o json` shape: one List. Compact, so the C encoder does all the work."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objs, "metadata": {"resourceVersion": ""}},
                      separators=(",", ":"))


_PLAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_./:-]*[A-Za-z0-9_./-])?\Z")
_resolver = yaml.resolver.Resolver()
_STR_TAG = "tag:yaml.org,2002:str"


class _Scalars(dict):
    """str → its YAML text: plain when a YAML 1.1 reader reads it back as the same string."""

    def __missing__(self, s: str) -> str:
        if _PLAIN.match(s) and _resolver.resolve(yaml.ScalarNode, s, (True, False)) == _STR_TAG:
            text = s
        else:
            text = json.dumps(s)  # a JSON string is a valid double-quoted YAML scalar
        if len(self) < 1 << 16:
            self[s] = text
        return text


_scalars = _Scalars()


def _scalar(v: Any) -> str:
    if isinstance(v, str):
        return _scalars[v]
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    raise TypeError(f"cannot write {type(v).__name__} as YAML")


def _map(out: list[str], m: dict, pad: str) -> None:
    for k, v in m.items():
        key = _scalar(k)
        if isinstance(v, dict):
            if v:
                out.append(f"{pad}{key}:\n")
                _map(out, v, pad + "  ")
            else:
                out.append(f"{pad}{key}: {{}}\n")
        elif isinstance(v, list):
            if v:
                out.append(f"{pad}{key}:\n")
                _seq(out, v, pad)  # sequences sit at their key's indent, as kubectl writes them
            else:
                out.append(f"{pad}{key}: []\n")
        else:
            out.append(f"{pad}{key}: {_scalar(v)}\n")


def _seq(out: list[str], items: list, pad: str) -> None:
    inner = pad + "  "
    cut = len(inner)
    for v in items:
        if isinstance(v, dict) and v:
            start = len(out)
            _map(out, v, inner)
            out[start] = f"{pad}- {out[start][cut:]}"
        elif isinstance(v, (dict, list)):
            if v:
                raise TypeError("nested sequences are not written")
            out.append(f"{pad}- {'{}' if isinstance(v, dict) else '[]'}\n")
        else:
            out.append(f"{pad}- {_scalar(v)}\n")


def to_yaml(objs: Iterable[dict[str, Any]]) -> str:
    """Multi-document block YAML, one document per object."""
    out: list[str] = []
    for i, o in enumerate(objs):
        if i:
            out.append("---\n")
        _map(out, o, "")
    return "".join(out)


def write(objs: list[dict[str, Any]], fmt: str, dest: IO[str] | None = None) -> None:
    text = to_json(objs) + "\n" if fmt == "json" else to_yaml(objs)
    (dest or sys.stdout).write(text)
