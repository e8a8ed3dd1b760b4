"""One backend-neutral plan per service port: its addresses, endpoints and choices.

This is kube-proxy's service change tracker and endpoint-slice cache,
collapsed into one pass for one IP family: Services become service ports
(ClusterIP of the family, external IPs, LB IPs, source ranges, policies),
EndpointSlices are joined by the `kubernetes.io/service-name` label and port
(name, protocol), de-duplicated and sorted byte-wise by `ip:port`, and the
shared `selection.categorize` decides which endpoints are used. Ports come out
in rulegen's deterministic order: namespace, name, port name, protocol.
"""

from __future__ import annotations

from collections import defaultdict

from msgspec import Struct

from .ipaddr import cidr_contains
from .model import EndpointSlice, Inputs, Service, ServicePort
from .naming import service_port_name
from .selection import EndpointInfo, Selection, categorize
from .settings import Settings


class PortPlan(Struct, frozen=True, gc=False):
    service: Service
    port: ServicePort
    spn: str  # "ns/name:port" or "ns/name"
    proto: str  # lower case
    cluster_ip: str
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]
    source_ranges: tuple[str, ...]
    node_port: int
    hc_node_port: int
    ext_local: bool
    int_local: bool
    externally_accessible: bool
    uses_cluster: bool
    uses_local: bool
    affinity: int  # ClientIP timeout in seconds; 0 = no affinity
    endpoints: tuple[EndpointInfo, ...]  # every endpoint, sorted
    sel: Selection

    @property
    def has_internal(self) -> bool:
        return self.sel.has_any and not (self.int_local and not self.sel.local)

    @property
    def has_external(self) -> bool:
        return self.sel.has_any and not (self.ext_local and not self.sel.local)


class Plan(Struct, frozen=True, gc=False):
    family: int
    ports: tuple[PortPlan, ...]
    endpoint_total: int  # for large-cluster mode


def skipped(svc: Service) -> bool:
    """kube-proxy's ShouldSkipService: headless, ExternalName, or no spec.clusterIP.

    spec.clusterIP alone decides: unset means not proxied, whatever
    spec.clusterIPs says. Lint's RG001 asks the same question.
    """
    return svc.headless or svc.type == "ExternalName" or not svc.cluster_ip


def cluster_ip_for(svc: Service, fam: int) -> str:
    """kube-proxy's GetClusterIPByFamily."""
    if skipped(svc):
        return ""
    want = "IPv6" if fam == 6 else "IPv4"
    if not svc.ip_families:
        ip = svc.cluster_ip
        return ip if ip and (":" in ip) == (fam == 6) else ""
    for i, f in enumerate(svc.ip_families):
        if f == want and i < len(svc.cluster_ips):
            ip = svc.cluster_ips[i]
            return ip if ip and (":" in ip) == (fam == 6) else ""
    return ""


def _accepts_external(svc: Service) -> bool:
    """The type-based test kube-proxy uses for externalTrafficPolicy."""
    return svc.type in ("NodePort", "LoadBalancer") or (svc.type == "ClusterIP" and bool(svc.external_ips))


def _endpoints_for(
    port: ServicePort, slices: list[EndpointSlice], fam: int, hostname: str | None
) -> tuple[EndpointInfo, ...]:
    atype = "IPv6" if fam == 6 else "IPv4"
    found: dict[str, EndpointInfo] = {}
    pname, proto = port.name, port.protocol
    for sl in slices:
        if sl.address_type != atype:
            continue
        for sp in sl.ports:
            if sp.name is None or not sp.port or sp.name != pname or sp.protocol != proto:
                continue
            num = sp.port
            suffix = f":{num}"
            for e in sl.endpoints:
                ip = e.ip
                ep = f"[{ip}]{suffix}" if fam == 6 else ip + suffix
                if e.terminating and ep in found:
                    continue
                found[ep] = EndpointInfo(
                    ip, num, ep, e.ready, e.serving, e.terminating,
                    e.node_name == hostname and hostname is not None,
                    e.node_name, e.zone_hints, e.node_hints,
                )
    if not found:
        return ()
    return tuple(map(found.__getitem__, sorted(found)))


def build(inputs: Inputs, settings: Settings) -> Plan:
    fam = settings.family
    want6 = fam == 6
    slices_by_svc: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
    for sl in inputs.slices:
        if sl.service_name:
            slices_by_svc[(sl.namespace, sl.service_name)].append(sl)
    for v in slices_by_svc.values():
        v.sort(key=lambda s: s.name)

    hostname = settings.hostname
    zone = settings.node_zone
    psn = settings.prefer_same_node
    ports: list[PortPlan] = []
    total = 0
    seen: set[tuple[str, str]] = set()
    for svc in sorted(inputs.services, key=lambda s: (s.namespace, s.name)):
        if (svc.namespace, svc.name) in seen:
            continue  # a later copy of the same Service was already reported; first wins
        seen.add((svc.namespace, svc.name))
        cip = cluster_ip_for(svc, fam)
        if not cip:
            continue
        ext_ips = tuple(ip for ip in svc.external_ips if (":" in ip) == want6)
        lb_ips = tuple(i.ip for i in svc.lb_ingress if (":" in i.ip) == want6 and i.ip_mode in (None, "VIP"))
        ranges = tuple(r for r in svc.source_ranges if (":" in r) == want6)
        ext_local = svc.external_traffic_policy == "Local" and _accepts_external(svc)
        int_local = svc.internal_traffic_policy == "Local"
        hc = svc.health_check_node_port if (svc.type == "LoadBalancer" and ext_local) else 0
        affinity = svc.affinity_timeout if svc.session_affinity == "ClientIP" else 0
        slices = slices_by_svc.get((svc.namespace, svc.name), [])
        for port in sorted(svc.ports, key=lambda p: (p.name, p.protocol)):
            ext_access = bool(port.node_port or lb_ips or ext_ips)
            uses_cluster = not int_local or ext_access
            uses_local = int_local or (ext_local and ext_access)
            eps = _endpoints_for(port, slices, fam, hostname)
            total += len(eps)
            sel = categorize(eps, uses_cluster, uses_local, hostname, zone, psn)
            ports.append(PortPlan(
                service=svc, port=port, spn=service_port_name(svc.namespace, svc.name, port.name),
                proto=port.protocol.lower(), cluster_ip=cip, external_ips=ext_ips, lb_ips=lb_ips,
                source_ranges=ranges, node_port=port.node_port, hc_node_port=hc,
                ext_local=ext_local, int_local=int_local, externally_accessible=ext_access,
                uses_cluster=uses_cluster, uses_local=uses_local, affinity=affinity,
                endpoints=eps, sel=sel,
            ))
    return Plan(fam, tuple(ports), total)


def node_ip_in_ranges(ranges: tuple[str, ...], node_ip: str | None) -> bool:
    return bool(node_ip) and any(cidr_contains(r, node_ip) for r in ranges)
