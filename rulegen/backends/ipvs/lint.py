"""IPVS mode's own lint checks: what breaks only because the node runs kube-proxy in IPVS mode.

Two checks, asked of the registry by `rulegen lint` (`Backend.lint_checks`);
their codes are in the one table (`lint/findings.py`). The third IPVS
pitfall, a scheduler kube-proxy refuses, is found where the setting is
read (`settings._scheduler` reports it with the lint code's slug, so lint
shows the report as RG802).

- RG801, strictARP off while an in-cluster load balancer announces a
  LoadBalancer IP. IPVS mode binds every load-balancer IP to kube-ipvs0 on
  every node; with the kernel's default ARP settings every node then
  answers ARP for it, so a layer-2 announcer (MetalLB's L2 mode, kube-vip's
  ARP mode) loses the address to whichever node answered last.
  `ipvs.strictARP: true` makes kube-proxy set arp_ignore=1 and
  arp_announce=2. An IP counts as announced from inside the cluster when
  the Service says so (a MetalLB or kube-vip annotation or
  loadBalancerClass) or when the IP lies in the subnet of a node address
  of the input: the nodes' subnets are not in the input, so a /24 (IPv4)
  or /64 (IPv6) around each node address stands for them. An address in
  the nodes' own segment is exactly where ARP decides who receives the
  traffic; a cloud load balancer's address lies elsewhere.
- RG803, IPVS mode itself: deprecated since Kubernetes v1.35, with the
  nftables mode as its successor; said once, pointing at `rulegen migrate`.
"""

from __future__ import annotations

import ipaddress
from typing import Iterator

from ...lint.context import Context, place_text
from ...lint.findings import Finding
from ...model import Service

# Who announces an address from inside the cluster, as a Service shows it.
ANNOUNCERS = (
    ("MetalLB", ("metallb.universe.tf/", "metallb.io/"), "metallb"),
    ("kube-vip", ("kube-vip.io/",), "kube-vip"),
)
SUBNET_BITS = {4: 24, 6: 64}  # the node subnet assumed around a node address


def _announcer(svc: Service) -> str | None:
    """Why SVC's address is announced by an in-cluster load balancer, from its own fields (None: no sign)."""
    for product, prefixes, class_word in ANNOUNCERS:
        key = next((k for k in svc.annotation_keys if k.startswith(prefixes)), None)
        if key is not None:
            return f"a {product} annotation ({key.split('/', 1)[0]}/…)"
        if class_word in svc.lb_class.lower():
            return f"loadBalancerClass of {product}"
    return None


def _node_subnets(cx: Context) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
    out = []
    for ip, node in cx.node_addresses.items():
        try:
            a = ipaddress.ip_address(ip)
        except ValueError:
            continue
        if a.is_loopback:
            continue
        out.append((ipaddress.ip_network(f"{ip}/{SUBNET_BITS[a.version]}", strict=False), f"{node} ({ip})"))
    return out


def check_strict_arp(cx: Context) -> Iterator[Finding]:
    if cx.settings.strict_arp:
        return
    subnets = None
    for svc in cx.services:
        if svc.type != "LoadBalancer":
            continue
        ips = [i.ip for i in svc.lb_ingress if i.ip_mode != "Proxy"]  # Proxy-mode IPs are not bound to kube-ipvs0
        if not ips:
            continue
        why = _announcer(svc)
        if why is None:
            if subnets is None:
                subnets = _node_subnets(cx)
            for ip in ips:
                a = ipaddress.ip_address(ip)
                near = next((what for net, what in subnets if a.version == net.version and a in net), None)
                if near:
                    why = f"{ip} is in the subnet of node {near} (a /{SUBNET_BITS[a.version]} assumed)"
                    break
        if why is None:
            continue
        yield Finding(
            "RG801", "Service", svc.key,
            f"LoadBalancer IP {', '.join(ips)} is announced from inside the cluster ({why}), and ipvs.strictARP is "
            "off: IPVS mode binds it to kube-ipvs0 on every node, so every node answers ARP for it and the "
            "announcing node loses its traffic to whichever node answered last",
            "set ipvs.strictARP: true in the KubeProxyConfiguration (kube-proxy then sets arp_ignore=1 and "
            "arp_announce=2); MetalLB's and kube-vip's IPVS instructions require it",
            where=place_text(svc.place),
        )


def check_deprecated(cx: Context) -> Iterator[Finding]:
    yield Finding(
        "RG803", "kube-proxy", "mode ipvs",
        "kube-proxy's IPVS mode is deprecated (Kubernetes v1.35); the nftables mode is its successor, and moving "
        "changes behaviour in places (the Local-policy fallback to cluster endpoints, ClusterIPs on ports no "
        "Service uses, NodePorts on localhost)",
        "`rulegen migrate FILES --from ipvs --to nftables` lists, per Service, what changes and which setting "
        "restores the old behaviour; then set mode: nftables",
    )


CHECKS = (check_strict_arp, check_deprecated)
