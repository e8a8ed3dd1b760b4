"""Frozen typed records for the Kubernetes subset rulegen reads.

These hold what the loader accepted, already checked: addresses in
canonical form (both families; the plan picks one), ports in range, enums
spelt as the API spells them. They are msgspec Structs because a 10,000
Service cluster has 100,000 endpoints and Struct construction is several
times cheaper than a frozen dataclass. Nothing here knows about a data
plane.
"""

from __future__ import annotations

from msgspec import Struct

from .diagnostics import Place


class ServicePort(Struct, frozen=True, gc=False):
    name: str
    protocol: str  # TCP | UDP | SCTP
    port: int
    node_port: int = 0
    target_port: int | str | None = None
    index: int = 0  # position in spec.ports, for messages


class LBIngress(Struct, frozen=True, gc=False):
    ip: str  # canonical address
    ip_mode: str | None = None


class Service(Struct, frozen=True, gc=False):
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ip: str = ""  # canonical spec.clusterIP ("" when unset, bad or None)
    cluster_ips: tuple[str, ...] = ()  # canonical spec.clusterIPs, "" where an entry was bad
    headless: bool = False
    ip_families: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    external_ips: tuple[str, ...] = ()
    lb_ingress: tuple[LBIngress, ...] = ()
    source_ranges: tuple[str, ...] = ()  # canonical networks
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0
    session_affinity: str = "None"
    affinity_timeout: int = 10800
    selector: dict[str, str] | None = None
    place: Place | None = None
    # What the API server fills in on create, read for `--allocate`:
    no_cluster_ip: bool = False  # spec.clusterIP unset or "": a manifest not yet applied
    ip_family_policy: str | None = None  # SingleStack | PreferDualStack | RequireDualStack
    allocate_lb_node_ports: bool = True  # spec.allocateLoadBalancerNodePorts
    publish_not_ready: bool = False  # spec.publishNotReadyAddresses
    # Who announces a LoadBalancer's address (lint asks: MetalLB, kube-vip ...): read for type LoadBalancer only.
    lb_class: str = ""  # spec.loadBalancerClass
    annotation_keys: tuple[str, ...] = ()  # metadata.annotations' keys

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Endpoint(Struct, frozen=True, gc=False):
    ip: str  # canonical first address
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    zone_hints: tuple[str, ...] | None = None
    node_hints: tuple[str, ...] | None = None


class SlicePort(Struct, frozen=True, gc=False):
    name: str | None
    protocol: str
    port: int | None


class EndpointSlice(Struct, frozen=True, gc=False):
    namespace: str
    name: str
    service_name: str | None
    address_type: str
    ports: tuple[SlicePort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    place: Place | None = None


class Node(Struct, frozen=True, gc=False):
    name: str
    addresses: tuple[str, ...] = ()  # canonical; InternalIPs first, then ExternalIPs (kube-proxy primary IP order)
    pod_cidrs: tuple[str, ...] = ()
    zone: str | None = None
    labels: dict[str, str] = {}
    taints: tuple[tuple[str, str, str], ...] = ()  # (key, value, effect); spec.unschedulable is one too


class ServiceCIDR(Struct, frozen=True, gc=False):
    name: str
    cidrs: tuple[str, ...]


# A container port: (name, port, protocol); the ports of sidecars (init containers
# with restartPolicy Always) follow the containers', as the EndpointSlice
# controller looks them up in that order.
ContainerPort = tuple[str, int, str]
# A toleration: (key, operator, value, effect); "" where the field is unset.
Toleration = tuple[str, str, str, str]


class Pod(Struct, frozen=True, gc=False):
    namespace: str
    name: str
    labels: dict[str, str] = {}
    ip: str | None = None
    node_name: str | None = None
    container_ports: tuple[ContainerPort, ...] = ()
    ips: tuple[str, ...] = ()  # status.podIPs (else podIP), canonical
    phase: str = ""  # status.phase; "" for a manifest never applied
    ready: bool = True  # the Ready condition (True when the status names none)
    terminating: bool = False  # metadata.deletionTimestamp is set
    owner: tuple[str, str] | None = None  # (kind, name) of its controller, a workload kind only
    node_selector: dict[str, str] = {}
    tolerations: tuple[Toleration, ...] = ()
    host_network: bool = False
    place: Place | None = None


class PodTemplate(Struct, frozen=True, gc=False):
    """What a workload's pods are made of, as far as Services and scheduling see them."""

    labels: dict[str, str] = {}
    container_ports: tuple[ContainerPort, ...] = ()
    node_selector: dict[str, str] = {}
    node_name: str | None = None
    tolerations: tuple[Toleration, ...] = ()
    host_network: bool = False


# A matchExpressions entry: (key, operator, values); operator In | NotIn | Exists | DoesNotExist.
SelectorRequirement = tuple[str, str, tuple[str, ...]]


class Workload(Struct, frozen=True, gc=False):
    """A Deployment, StatefulSet, DaemonSet or ReplicaSet: the pods it asks for."""

    kind: str
    namespace: str
    name: str
    replicas: int | None  # None for a DaemonSet: one pod per eligible node
    match_labels: dict[str, str]
    match_expressions: tuple[SelectorRequirement, ...]
    template: PodTemplate
    owner: tuple[str, str] | None = None  # (kind, name) of its controller (a ReplicaSet's Deployment)
    place: Place | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class ProxyConfig(Struct, frozen=True, gc=False):
    """The KubeProxyConfiguration fields rulegen uses; None = not set."""

    mode: str | None = None
    cluster_cidr: tuple[str, ...] | None = None
    hostname_override: str | None = None
    nodeport_addresses: tuple[str, ...] | None = None
    detect_local_mode: str | None = None
    bridge_interface: str | None = None
    interface_name_prefix: str | None = None
    masquerade_all: bool | None = None
    masquerade_bit: int | None = None
    localhost_nodeports: bool | None = None
    scheduler: str | None = None
    strict_arp: bool | None = None
    nft_masquerade_all: bool | None = None
    nft_masquerade_bit: int | None = None


class Inputs(Struct):
    """Everything the loader read, in input order."""

    services: list[Service]
    slices: list[EndpointSlice]
    nodes: list[Node]
    service_cidrs: list[ServiceCIDR]
    configs: list[ProxyConfig]
    pods: list[Pod]
    workloads: list[Workload] = []
