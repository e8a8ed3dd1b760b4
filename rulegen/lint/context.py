"""What every lint check looks things up in, indexed once per run.

The checks read the loader's `Inputs` (all objects, both families), the
resolved `Settings` (this node, its addresses, the CIDRs) and the `Plan`
(per service port, for the family being linted: the endpoints kube-proxy
would use, chosen by the shared `selection.categorize`). `Context` builds
the joins they share (slices per Service, the pods of each namespace, node
addresses, pod and service ranges) and carries `explained`: the Service
ports whose lack of endpoints a root-cause check (port mismatch, selector,
named targetPort) already reported, so the generic "no endpoints" check
does not say it twice.

The pods of a namespace are its Pods and the pod templates of its
workloads (Deployments, StatefulSets, DaemonSets, ReplicaSets) whose pods
the input does not hold (`allocate.standing_workloads`): a Helm chart's
Deployment is judged like the Pods it will make, and a `kubectl get all`
dump by the Pods it holds, each counted once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..allocate import standing_workloads
from ..diagnostics import Place
from ..model import ContainerPort, EndpointSlice, Inputs, PodTemplate, ProxyConfig, Service, ServicePort, Workload
from ..plan import Plan, PortPlan
from ..settings import Settings
from .findings import Finding, port_label
from .labels import LabelIndex
from .versions import Versions, parse_version

DEFAULT_NODEPORT_RANGE = (30000, 32767)


@dataclass(frozen=True, eq=False)
class Member:
    """A pod as lint sees it: a Pod of the input, or the pod template of a workload that stands for its pods."""

    kind: str  # Pod, or the workload's kind
    namespace: str
    name: str
    labels: dict[str, str]
    container_ports: tuple[ContainerPort, ...]
    workload: Workload | None = None
    place: Place | None = None

    @property
    def what(self) -> str:
        """`Pod web-1`, or `Deployment web` (whose pod template is meant)."""
        return f"{self.kind} {self.name}"

    @property
    def template(self) -> PodTemplate | None:
        return self.workload.template if self.workload else None


def members_of(inputs: Inputs) -> list[Member]:
    """Every pod lint judges Services by: the Pods, then the standing workloads' templates."""
    out = [Member("Pod", p.namespace, p.name, p.labels, p.container_ports, None, p.place) for p in inputs.pods]
    out += [Member(w.kind, w.namespace, w.name, w.template.labels, w.template.container_ports, w, w.place)
            for w in standing_workloads(inputs)]
    return out


def population(members: list[Member]) -> str:
    """`3 Pods`, `2 workloads`, `3 Pods and 1 workload`: what a namespace holds, for messages."""
    pods = sum(1 for m in members if m.kind == "Pod")
    loads = len(members) - pods
    parts = ([f"{pods} Pod{'s' if pods != 1 else ''}"] if pods else []) + (
        [f"{loads} workload{'s' if loads != 1 else ''}"] if loads else [])
    return " and ".join(parts)


@dataclass
class Context:
    inputs: Inputs
    settings: Settings
    plan: Plan
    nodeport_range: tuple[int, int] = DEFAULT_NODEPORT_RANGE
    services: list[Service] = field(default_factory=list)
    service_keys: set[tuple[str, str]] = field(default_factory=set)
    slices_by_service: dict[tuple[str, str], list[EndpointSlice]] = field(default_factory=dict)
    ports_by_service: dict[tuple[str, str], list[PortPlan]] = field(default_factory=dict)
    pods_by_namespace: dict[str, list[Member]] = field(default_factory=dict)
    # Replicas share their labels, so selectors are matched once per distinct label set.
    label_index: dict[str, LabelIndex] = field(default_factory=dict)
    label_pods: dict[str, list[list[Member]]] = field(default_factory=dict)  # per namespace, by set index
    claimed: dict[str, set[int]] = field(default_factory=dict)  # label sets some Service selects
    node_addresses: dict[str, str] = field(default_factory=dict)  # ip -> node name
    pod_ranges: list[tuple[str, str]] = field(default_factory=list)  # (cidr, what it is)
    explained: set[tuple[str, str, str, str]] = field(default_factory=set)  # (ns, name, port, proto)
    # The node's kernel and nft versions (flags, else the Node's nodeInfo), and the configuration
    # the settings were read from (--config, else the first KubeProxyConfiguration of the input).
    versions: Versions = field(default_factory=Versions)
    config: ProxyConfig | None = None

    @classmethod
    def build(cls, inputs: Inputs, settings: Settings, plan: Plan,
              nodeport_range: tuple[int, int] = DEFAULT_NODEPORT_RANGE, versions: Versions | None = None,
              config: ProxyConfig | None = None) -> "Context":
        cx = cls(inputs, settings, plan, nodeport_range)
        cx.config = config if config is not None else (inputs.configs[0] if inputs.configs else None)
        v = versions or Versions()
        if v.kernel is None:
            node = next((n for n in inputs.nodes if n.name == settings.hostname), None)
            got = parse_version(node.kernel_version) if node is not None and node.kernel_version else None
            if got is not None:
                v = Versions(got, f"Node {node.name} status.nodeInfo.kernelVersion {node.kernel_version}",
                             v.nft, v.nft_from)
        cx.versions = v
        # The first copy of a duplicated Service wins, as in the plan.
        for svc in sorted(inputs.services, key=lambda s: (s.namespace, s.name)):
            if (svc.namespace, svc.name) not in cx.service_keys:
                cx.service_keys.add((svc.namespace, svc.name))
                cx.services.append(svc)
        by_svc: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
        for sl in inputs.slices:
            if sl.service_name:
                by_svc[(sl.namespace, sl.service_name)].append(sl)
        cx.slices_by_service = dict(by_svc)
        ports: dict[tuple[str, str], list[PortPlan]] = defaultdict(list)
        for pp in plan.ports:
            ports[(pp.service.namespace, pp.service.name)].append(pp)
        cx.ports_by_service = dict(ports)
        pods: dict[str, list[Member]] = defaultdict(list)
        for m in members_of(inputs):
            pods[m.namespace].append(m)
        cx.pods_by_namespace = dict(pods)
        for ns, members in cx.pods_by_namespace.items():
            groups: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[Member]]] = {}
            for pod in members:
                key = tuple(sorted(pod.labels.items()))
                groups.setdefault(key, (pod.labels, []))[1].append(pod)
            cx.label_index[ns] = LabelIndex([labels for labels, _ in groups.values()])
            cx.label_pods[ns] = [pods for _, pods in groups.values()]
        for svc in cx.services:
            index = cx.label_index.get(svc.namespace)
            if index is not None and svc.selector and svc.type != "ExternalName":
                cx.claimed.setdefault(svc.namespace, set()).update(index.matching(svc.selector))

        for ip in settings.node_ips:
            cx.node_addresses.setdefault(ip, settings.hostname or "this node")
        for node in inputs.nodes:
            for ip in node.addresses:
                cx.node_addresses.setdefault(ip, node.name)

        seen: set[str] = set()

        def add_range(cidr: str, what: str) -> None:
            if cidr not in seen:
                seen.add(cidr)
                cx.pod_ranges.append((cidr, what))

        for c in settings.cluster_cidrs:
            add_range(c, "the cluster CIDR")
        for cfg in inputs.configs:
            for c in cfg.cluster_cidr or ():
                add_range(c, "the cluster CIDR")
        for node in inputs.nodes:
            for c in node.pod_cidrs:
                add_range(c, f"node {node.name}'s podCIDR")
        return cx

    # ------------------------------------------------------------------ helpers

    @property
    def hostname(self) -> str | None:
        return self.settings.hostname

    def slices_of(self, svc: Service) -> list[EndpointSlice]:
        return self.slices_by_service.get((svc.namespace, svc.name), [])

    def family_slices_of(self, svc: Service) -> list[EndpointSlice]:
        want = "IPv6" if self.settings.family == 6 else "IPv4"
        return [sl for sl in self.slices_of(svc) if sl.address_type == want]

    def selected_pods(self, svc: Service) -> list[Member] | None:
        """Pods (and standing workloads) the selector picks; None when there is nothing to judge by.

        Nothing to judge by: no selector, or no Pod or workload of the
        Service's namespace in the input (the user linted Services without
        their workloads).
        """
        if not svc.selector:
            return None
        index = self.label_index.get(svc.namespace)
        if index is None:
            return None
        pods = self.label_pods[svc.namespace]
        return [p for i in index.matching(svc.selector) for p in pods[i]]

    def near_misses(self, svc: Service) -> list[tuple[Member, str]]:
        """Pods the selector misses by one small edit, with what is off.

        A Pod another Service selects is that Service's on purpose (`web-a`
        and `web-b` are one edit apart and both fine), so only Pods no
        selector claims count: the ones a typo orphaned.
        """
        index = self.label_index.get(svc.namespace)
        if index is None or not svc.selector:
            return []
        pods = self.label_pods[svc.namespace]
        claimed = self.claimed.get(svc.namespace, set())
        return [(p, diff) for i, diff in index.near_misses(svc.selector) if i not in claimed for p in pods[i]]

    def explain(self, svc: Service, port: ServicePort) -> None:
        self.explained.add((svc.namespace, svc.name, port.name, port.protocol))

    def is_explained(self, svc: Service, port: ServicePort) -> bool:
        return (svc.namespace, svc.name, port.name, port.protocol) in self.explained

    def finding(self, code: str, svc: Service, message: str, hint: str,
                port: ServicePort | None = None) -> Finding:
        return Finding(
            code=code, kind="Service", name=svc.key, message=message, hint=hint,
            port=port_label(port.name, port.port, port.protocol) if port else "",
            where=place_text(svc.place),
        )


def place_text(place) -> str:
    """`file: document N` (and the List item): the object's kind and name are in the finding already."""
    if place is None:
        return ""
    item = f" item {place.item}" if place.item else ""
    return f"{place.file}: document {place.document}{item}"
