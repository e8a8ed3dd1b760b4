"""kube-proxy-shaped nftables scripts of any size, for loader benchmarks and tests.

A stand-in for the nftables compiler until it lands: `script(N, E)` writes
the `nft -f` text a kube-proxy full sync would send for N Services with E
endpoints each into table `ip kube-proxy`, in knftables' syntax (plain
`add` / `flush` commands, one object each, no `{ }` blocks). The layout is
kube-proxy's v1.36 design: the fixed skeleton of verdict maps and helper
chains, one `service-…` chain per service port picking its endpoint with one
`numgen random mod N map { … }` DNAT rule (an anonymous map), `external-…`
chains for NodePort / LoadBalancer / external-IP ports, `firewall-…` chains
for loadBalancerSourceRanges, and `endpoint-…` chains plus `affinity-…` sets
only for session affinity. `layout="endpoint-chains"` writes the older
design instead (an `endpoint-…` chain per endpoint and a
`numgen … vmap { 0 : goto endpoint-… }` rule), which is what early
measurements of kube-proxy's load time were taken on. The mix of service
kinds (`Mix`) is seeded and deterministic; addresses are invented
(ClusterIPs in 10.96.0.0/12, pods in 10.128.0.0/9, the node 192.168.0.10).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..naming import nft_name

TABLE = "ip kube-proxy"
MASQ = "0x4000"
NODE_IP = "192.168.0.10"
POD_CIDR = "10.128.0.0/9"
SERVICE_CIDR = "10.96.0.0/12"


@dataclass(frozen=True)
class Mix:
    """Shares of service kinds (each drawn per Service with the seeded generator)."""

    nodeport: float = 0.08  # type NodePort
    loadbalancer: float = 0.04  # type LoadBalancer (one ingress IP, a nodePort too)
    firewall: float = 0.25  # of LoadBalancers: with loadBalancerSourceRanges
    external_ip: float = 0.02  # of ClusterIP Services: one externalIP
    local_policy: float = 0.25  # of externally accessible: externalTrafficPolicy Local
    affinity: float = 0.03  # sessionAffinity ClientIP
    no_endpoints: float = 0.01  # no endpoints at all (reject elements)
    udp: float = 0.05  # the port is UDP
    local_share: float = 0.2  # share of endpoints on this node (hairpin elements)


def _ip(base: int, i: int) -> str:
    n = base + i
    return f"{n >> 24 & 255}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


_CIP_BASE = (10 << 24) | (96 << 16) + 1
_POD_BASE = (10 << 24) | (128 << 16) + 1
_EXT_BASE = (203 << 24) | (0 << 16) | (113 << 8)  # 203.0.113.0/24 then onwards
_LB_BASE = (198 << 24) | (18 << 16)  # 198.18.0.0/15


def skeleton(out: list[str]) -> None:
    """The fixed part of kube-proxy's table (spec of its v1.36 full sync), appended to OUT."""
    t = TABLE
    a = out.append
    a(f'add table {t} {{ comment "rules for kube-proxy" ; }}')
    base = (
        ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
        ("filter-output-pre-dnat", "filter", "output", -110),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("filter-input", "filter", "input", 0),
        ("filter-forward", "filter", "forward", 0),
        ("filter-output", "filter", "output", 0),
        ("nat-postrouting", "nat", "postrouting", 100),
    )
    for name, typ, hook, prio in base:
        a(f"add chain {t} {name} {{ type {typ} hook {hook} priority {prio} ; }}")
        a(f"flush chain {t} {name}")
    for name in ("services", "masquerading", "firewall-check", "service-endpoints-check",
                 "nodeport-endpoints-check", "cluster-ips-check"):
        a(f"add chain {t} {name}")
        a(f"flush chain {t} {name}")
    a(f'add chain {t} reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}')
    a(f"flush chain {t} reject-chain")
    sets = (
        ("set", "cluster-ips", "ipv4_addr", "Active ClusterIPs"),
        ("set", "nodeport-ips", "ipv4_addr", "IPs that accept NodePort traffic"),
        ("set", "hairpin-connections", "ipv4_addr . ipv4_addr . inet_proto . inet_service",
         "service hairpin connections"),
        ("map", "service-ips", "ipv4_addr . inet_proto . inet_service : verdict",
         "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
        ("map", "service-nodeports", "inet_proto . inet_service : verdict", "NodePort traffic"),
        ("map", "firewall-ips", "ipv4_addr . inet_proto . inet_service : verdict",
         "destinations that are subject to LoadBalancerSourceRanges"),
        ("map", "no-endpoint-services", "ipv4_addr . inet_proto . inet_service : verdict",
         "vmap to drop or reject packets to services with no endpoints"),
        ("map", "no-endpoint-nodeports", "inet_proto . inet_service : verdict",
         "vmap to drop or reject packets to service nodeports with no endpoints"),
    )
    for kind, name, typ, comment in sets:
        a(f'add {kind} {t} {name} {{ type {typ} ; comment "{comment}" ; }}')
        a(f"flush {kind} {t} {name}")
    a(f"add element {t} nodeport-ips {{ {NODE_IP} }}")
    for chain, rule in (
        ("filter-prerouting-pre-dnat", "ct state new jump firewall-check"),
        ("filter-output-pre-dnat", "ct state new jump firewall-check"),
        ("nat-prerouting", "jump services"),
        ("nat-output", "jump services"),
        ("filter-input", "ct state new jump nodeport-endpoints-check"),
        ("filter-input", "ct state new jump service-endpoints-check"),
        ("filter-forward", "ct state new jump service-endpoints-check"),
        ("filter-forward", "ct state new jump cluster-ips-check"),
        ("filter-output", "ct state new jump service-endpoints-check"),
        ("filter-output", "ct state new jump cluster-ips-check"),
        ("nat-postrouting", "jump masquerading"),
        ("services", f"ip daddr @cluster-ips ip saddr != {POD_CIDR} mark set mark or {MASQ} "
                     'comment "masquerade clusterIP traffic from outside cluster"'),
        ("services", "ip daddr . meta l4proto . th dport vmap @service-ips"),
        ("services", "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"),
        ("masquerading", f"mark and {MASQ} != 0 mark set mark xor {MASQ} masquerade fully-random"),
        ("masquerading", "ct status dnat ip saddr . ip daddr . meta l4proto . th dport "
                         "@hairpin-connections masquerade fully-random"),
        ("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips"),
        ("service-endpoints-check", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services"),
        ("nodeport-endpoints-check",
         "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"),
        ("reject-chain", "reject"),
        ("cluster-ips-check", 'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"'),
        ("cluster-ips-check", f'ip daddr {{ {SERVICE_CIDR} }} drop comment "Drop traffic to unallocated ClusterIPs"'),
    ):
        a(f"add rule {t} {chain} {rule}")


def script(services: int, endpoints: int, *, seed: int = 1, mix: Mix = Mix(),
           layout: str = "v1.36", moved: int | None = None) -> str:
    """The full-sync script for SERVICES Services of ENDPOINTS endpoints each (one port each).

    MOVED is the index of a Service whose first endpoint was replaced by a
    new pod (another address): the one-endpoint change of a partial sync.
    (The next Service with endpoints, if that one has none.)
    """
    if layout not in ("v1.36", "endpoint-chains"):
        raise ValueError(f"layout {layout!r}: choose v1.36 or endpoint-chains")
    rnd = random.Random(seed)
    out: list[str] = []
    skeleton(out)
    a = out.append
    t = TABLE
    pod = 0
    next_node_port = 30000  # NodePorts are unique per node: 2768 of them, then none
    hairpin: set[str] = set()
    for i in range(services):
        ns, name = f"ns{i % 97}", f"svc-{i}"
        proto = "udp" if rnd.random() < mix.udp else "tcp"
        port, tport = (53, 5353) if proto == "udp" else (80 + i % 3, 8080)
        spn = f"{ns}/{name}:p{port}"
        base = f"{ns}/{name}/{proto}/p{port}"
        cip = _ip(_CIP_BASE, i)
        r = rnd.random()
        kind = ("loadbalancer" if r < mix.loadbalancer else
                "nodeport" if r < mix.loadbalancer + mix.nodeport else "clusterip")
        ext_ips = [_ip(_EXT_BASE, i)] if kind == "clusterip" and rnd.random() < mix.external_ip else []
        lb_ips = [_ip(_LB_BASE, i)] if kind == "loadbalancer" else []
        node_port = 0
        if kind != "clusterip" and next_node_port <= 32767:
            node_port, next_node_port = next_node_port, next_node_port + 1
        fw = bool(lb_ips) and rnd.random() < mix.firewall
        external = bool(ext_ips or lb_ips or node_port)
        local_policy = external and rnd.random() < mix.local_policy
        affinity = rnd.random() < mix.affinity
        n_eps = 0 if rnd.random() < mix.no_endpoints else endpoints
        eps = []
        for j in range(n_eps):
            ip = _ip(_POD_BASE, pod)
            if moved is not None and i >= moved and j == 0:
                ip = _ip(_POD_BASE, services * endpoints + 1000)  # a pod no Service has yet
                moved = None
            eps.append((ip, rnd.random() < mix.local_share))
            pod += 1
        eps.sort(key=lambda e: f"{e[0]}:{tport}")
        local_eps = [ip for ip, loc in eps if loc]
        svc_chain = nft_name("service-", base)
        ext_chain = nft_name("external-", base)
        fw_chain = nft_name("firewall-", base)
        local_chain = nft_name("local-", base)
        key = f"{proto} . {port}"
        ep_chains = {}
        if eps and (affinity or layout == "endpoint-chains"):
            for ip, _ in eps:
                ep_base = f"{base}__{ip}/{tport}"
                ep_chains[ip] = (nft_name("endpoint-", ep_base), nft_name("affinity-", ep_base))
                a(f"add chain {t} {ep_chains[ip][0]}")
                a(f"flush chain {t} {ep_chains[ip][0]}")
        if eps:
            a(f"add chain {t} {svc_chain}")
            a(f"flush chain {t} {svc_chain}")
        use_local = local_policy and bool(local_eps)
        if use_local:
            a(f"add chain {t} {local_chain}")
            a(f"flush chain {t} {local_chain}")
        if eps and external:
            a(f"add chain {t} {ext_chain}")
            a(f"flush chain {t} {ext_chain}")
        # Elements, in kube-proxy's order: ClusterIP, external IPs, LB IPs, nodePort.
        ext_verdict = "goto reject-chain" if not eps else "drop" if local_policy and not local_eps else ""
        a(f"add element {t} cluster-ips {{ {cip} }}")
        if eps:
            a(f"add element {t} service-ips {{ {cip} . {key} : goto {svc_chain} }}")
        else:
            a(f'add element {t} no-endpoint-services {{ {cip} . {key} comment "{spn}" : goto reject-chain }}')
        for ip in ext_ips:
            if eps:
                a(f"add element {t} service-ips {{ {ip} . {key} : goto {ext_chain} }}")
            if ext_verdict:
                a(f'add element {t} no-endpoint-services {{ {ip} . {key} comment "{spn}" : {ext_verdict} }}')
        if fw:
            a(f"add chain {t} {fw_chain}")
            a(f"flush chain {t} {fw_chain}")
        for ip in lb_ips:
            if eps:
                a(f"add element {t} service-ips {{ {ip} . {key} : goto {ext_chain} }}")
            if fw:
                a(f"add element {t} firewall-ips {{ {ip} . {key} : goto {fw_chain} }}")
        if ext_verdict:
            for ip in lb_ips:
                a(f'add element {t} no-endpoint-services {{ {ip} . {key} comment "{spn}" : {ext_verdict} }}')
        if node_port:
            if eps:
                a(f"add element {t} service-nodeports {{ {proto} . {node_port} : goto {ext_chain} }}")
            if ext_verdict:
                a(f'add element {t} no-endpoint-nodeports {{ {proto} . {node_port} comment "{spn}" : {ext_verdict} }}')
        if not eps:
            continue
        # Rules.
        if external:
            if not local_policy:
                a(f'add rule {t} {ext_chain} mark set mark or {MASQ} comment "masquerade"')
                a(f"add rule {t} {ext_chain} goto {svc_chain}")
            else:
                a(f'add rule {t} {ext_chain} ip saddr {POD_CIDR} goto {svc_chain} comment "short-circuit pod traffic"')
                a(f'add rule {t} {ext_chain} fib saddr type local mark set mark or {MASQ} comment "masquerade local traffic"')
                a(f'add rule {t} {ext_chain} fib saddr type local goto {svc_chain} comment "short-circuit local traffic"')
                if use_local:
                    a(f"add rule {t} {ext_chain} goto {local_chain}")
        if fw:
            a(f"add rule {t} {fw_chain} ip saddr != {{ 192.0.2.0/24, 198.51.100.0/24 }} drop")
        if affinity:
            for ip, _ in eps:
                a(f"add set {t} {ep_chains[ip][1]} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }}")
        chains = [(svc_chain, [ip for ip, _ in eps])] + ([(local_chain, local_eps)] if use_local else [])
        for chain, ips in chains:
            if affinity:
                for ip in ips:
                    a(f"add rule {t} {chain} ip saddr @{ep_chains[ip][1]} goto {ep_chains[ip][0]}")
            if affinity or layout == "endpoint-chains":
                vmap = " , ".join(f"{k} : goto {ep_chains[ip][0]}" for k, ip in enumerate(ips))
                a(f"add rule {t} {chain} numgen random mod {len(ips)} vmap {{ {vmap} }}")
            else:
                m = " , ".join(f"{k} : {ip} . {tport}" for k, ip in enumerate(ips))
                a(f"add rule {t} {chain} meta l4proto {proto} dnat ip addr . port to numgen random mod {len(ips)} map {{ {m} }}")
        for ip in ep_chains:
            chain, aff = ep_chains[ip]
            if layout == "endpoint-chains":
                a(f"add rule {t} {chain} ip saddr {ip} mark set mark or {MASQ}")
            if affinity:
                a(f"add rule {t} {chain} update @{aff} {{ ip saddr }}")
            a(f"add rule {t} {chain} meta l4proto {proto} dnat to {ip}:{tport}")
        for ip in local_eps:
            h = f"{ip} . {ip} . {proto} . {tport}"
            if h not in hairpin:
                hairpin.add(h)
                a(f"add element {t} hairpin-connections {{ {h} }}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m rulegen.bench.nftshape",
                                description="Write a kube-proxy-shaped nft -f script.")
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--layout", choices=("v1.36", "endpoint-chains"), default="v1.36")
    args = p.parse_args(argv)
    sys.stdout.write(script(args.services, args.endpoints, seed=args.seed, layout=args.layout))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
