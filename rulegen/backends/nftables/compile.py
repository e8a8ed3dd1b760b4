"""Plan → nftables Transaction: the table kube-proxy's nftables proxier leaves after a full sync.

Owns kube-proxy's `setupNFTables` and `syncProxyRules` (pkg/proxy/nftables/
proxier.go, the v1.36 design; docs/nftables-mode.md says which source was
read and how each point the spec left open was settled). First the fixed
skeleton, written as data tables below: the table, its base chains (added and
deleted once, as kube-proxy's first sync does, so a changed priority takes
effect), the helper chains with the jump rules into them, the sets and maps
with their types and comments, and the fixed rules. Then, for each service
port in rulegen's order (namespace, name, port name), its chains (service,
local, external, firewall, and per-endpoint chains and affinity sets under
session affinity), their rules, and its elements in the shared sets and
maps. Every set and map kube-proxy keeps elements in is flushed before it is
filled, so the script leaves exactly the wanted elements whatever the table
held before; affinity sets are only added, as kube-proxy adds them, so live
affinity entries survive.

Rule bodies are built with f-strings in the hot loop (a 10k-Service cluster
writes ~150k operations); everything else is a typed record.
"""

from __future__ import annotations

import ipaddress
import operator
import re

from ...dataplane.nft.model import Chain, Element, Map, Set, Table, Transaction, truncate_comment
from ...diagnostics import UsageError
from ...naming import NftNames
from ...plan import Plan, PortPlan, node_ip_in_ranges
from ...settings import Settings

TABLE = "kube-proxy"
TABLE_COMMENT = "rules for kube-proxy"

# Fixed object names (kube-proxy's constants).
SERVICES = "services"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NODEPORT_IPS = "nodeport-ips"
CLUSTER_IPS = "cluster-ips"
HAIRPIN = "hairpin-connections"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
REJECT_CHAIN = "reject-chain"
CLUSTER_IPS_CHECK = "cluster-ips-check"
FIREWALL_IPS = "firewall-ips"
FIREWALL_CHECK = "firewall-check"
MASQUERADING = "masquerading"

# Base chains: (name, type, hook, priority). Filtering on the original
# destination (LoadBalancerSourceRanges) runs before DNAT; the checks for
# missing endpoints and unknown ClusterIPs run at filter priority, after it.
BASE_CHAINS: tuple[tuple[str, str, str, str], ...] = (
    ("filter-prerouting-pre-dnat", "filter", "prerouting", "dstnat-10"),
    ("filter-output-pre-dnat", "filter", "output", "dstnat-10"),
    ("filter-input", "filter", "input", "filter"),
    ("filter-forward", "filter", "forward", "filter"),
    ("filter-output", "filter", "output", "filter"),
    ("nat-prerouting", "nat", "prerouting", "dstnat"),
    ("nat-output", "nat", "output", "dstnat"),
    ("nat-postrouting", "nat", "postrouting", "srcnat"),
)

# Jumps from base chains: (target chain, from chain, match before `jump`).
# The order is the rule order inside each base chain.
JUMP_CHAINS: tuple[tuple[str, str, str], ...] = (
    (NODEPORT_ENDPOINTS_CHECK, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-forward", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-output", "ct state new"),
    (FIREWALL_CHECK, "filter-prerouting-pre-dnat", "ct state new"),
    (FIREWALL_CHECK, "filter-output-pre-dnat", "ct state new"),
    (SERVICES, "nat-output", ""),
    (SERVICES, "nat-prerouting", ""),
    (MASQUERADING, "nat-postrouting", ""),
    (CLUSTER_IPS_CHECK, "filter-forward", "ct state new"),
    (CLUSTER_IPS_CHECK, "filter-output", "ct state new"),
)

# Sets and maps: (kind, name, type with {addr} for ipv4_addr/ipv6_addr, comment).
CONTAINERS: tuple[tuple[str, str, str, str], ...] = (
    ("set", CLUSTER_IPS, "{addr}", "Active ClusterIPs"),
    ("set", NODEPORT_IPS, "{addr}", "IPs that accept NodePort traffic"),
    ("set", HAIRPIN, "{addr} . {addr} . inet_proto . inet_service", "service hairpin connections"),
    ("map", NO_ENDPOINT_SERVICES, "{addr} . inet_proto . inet_service : verdict",
     "vmap to drop or reject packets to services with no endpoints"),
    ("map", NO_ENDPOINT_NODEPORTS, "inet_proto . inet_service : verdict",
     "vmap to drop or reject packets to service nodeports with no endpoints"),
    ("map", FIREWALL_IPS, "{addr} . inet_proto . inet_service : verdict",
     "destinations that are subject to LoadBalancerSourceRanges"),
    ("map", SERVICE_IPS, "{addr} . inet_proto . inet_service : verdict",
     "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    ("map", SERVICE_NODEPORTS, "inet_proto . inet_service : verdict", "NodePort traffic"),
)

REJECT_CHAIN_COMMENT = "helper for @no-endpoint-services / @no-endpoint-nodeports"
MASQ_CLUSTER_IP_COMMENT = "masquerade clusterIP traffic from outside cluster"
MASQ_ALL_CLUSTER_IP_COMMENT = "masquerade all clusterIP traffic"

REJECT_VERDICT = ("goto " + REJECT_CHAIN,)
DROP_VERDICT = ("drop",)


class Context:
    """What every service port's objects depend on besides the port itself (settings, one family)."""

    __slots__ = ("fam", "ipx", "addr", "mark", "masq", "masq_all", "if_local", "if_not_local", "node_ip",
                 "np_match_all", "np_ips", "service_cidrs", "no_localhost")

    def __init__(self, settings: Settings, fam: int):
        self.fam = fam
        self.ipx = "ip6" if fam == 6 else "ip"
        self.addr = "ipv6_addr" if fam == 6 else "ipv4_addr"
        self.no_localhost = "ip6 daddr != ::1" if fam == 6 else "ip daddr != 127.0.0.0/8"
        # kube-proxy writes the mark as Go's %#08x: 0x00004000 for bit 14.
        self.mark = settings.mark
        self.masq = f"mark set mark or {self.mark}"
        self.masq_all = settings.masquerade_all
        self.if_local, self.if_not_local = local_detector(settings, fam)
        self.node_ip = settings.primary_ip(fam)
        self.np_match_all, self.np_ips = settings.nft_nodeport_ips(fam)
        self.service_cidrs = sorted_cidrs(settings.cidrs_of(settings.service_cidrs, fam))


def local_detector(settings: Settings, fam: int) -> tuple[str, str]:
    """kube-proxy's LocalTrafficDetector, nftables spelling: (matches local pods, matches the rest); ("", "") for none."""
    det = settings.local_detector(fam)
    if not det.implemented:
        return "", ""
    if det.cidr:
        ipx = "ip6" if ":" in det.cidr else "ip"
        return f"{ipx} saddr {det.cidr}", f"{ipx} saddr != {det.cidr}"
    # The interface name comes from the configuration file and is written
    # unquoted, as kube-proxy writes it: only a real interface name may pass.
    if settings.detect_local_mode == "InterfaceNamePrefix":
        field, name = "detectLocal.interfaceNamePrefix", settings.interface_name_prefix or ""
    else:
        field, name = "detectLocal.bridgeInterface", det.iface
    if not _IFNAME.match(name):
        raise UsageError(f"{field}: {name!r} is not a network interface name")
    if field == "detectLocal.interfaceNamePrefix":
        name += "*"
    return f"iifname {name}", f"iifname != {name}"


_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")


def sorted_cidrs(cidrs) -> list[str]:
    """Service CIDRs once each, by address: kube-proxy's order is a Go set's, so any fixed order will do."""
    nets = {c: ipaddress.ip_network(c) for c in cidrs}
    return sorted(nets, key=lambda c: (nets[c].network_address, nets[c].prefixlen))


def compile_plan(plan: Plan, settings: Settings) -> Transaction:
    cx = Context(settings, plan.family)
    tx = Transaction("ip6" if plan.family == 6 else "ip", TABLE)
    skeleton(tx, cx)
    compile_ports(tx, plan.ports, cx)
    return tx


def skeleton(tx: Transaction, cx: Context) -> None:
    """The table, base and helper chains, sets and maps, and the fixed rules (kube-proxy's setupNFTables)."""
    ipx = cx.ipx
    tx.add(Table(TABLE_COMMENT))
    # Added and deleted once first, so a base chain whose hook or priority
    # changed is recreated instead of making the transaction fail.
    for name, *_ in BASE_CHAINS:
        tx.add(Chain(name))
        tx.delete(Chain(name))
    for name, type_, hook, prio in BASE_CHAINS:
        tx.add(Chain(name, type_, hook, prio))
        tx.flush(Chain(name))
    made: set[str] = set()

    def ensure(name: str, comment: str | None = None) -> None:
        if name not in made:
            made.add(name)
            if comment is None:
                tx.add_chain(name)
            else:
                tx.add(Chain(name, comment=comment))
                tx.flush(Chain(name))

    for target, source, match in JUMP_CHAINS:
        ensure(target)
        tx.add_rule(source, f"{match} jump {target}" if match else f"jump {target}")
    for name in (SERVICES, CLUSTER_IPS_CHECK, MASQUERADING):
        ensure(name)
    ensure(REJECT_CHAIN, REJECT_CHAIN_COMMENT)

    for kind, name, type_, comment in CONTAINERS:
        obj = (Set if kind == "set" else Map)(name, type_.format(addr=cx.addr), comment=comment)
        tx.add(obj)
        if name == NODEPORT_IPS and cx.np_match_all:
            tx.delete(obj)  # NodePorts are taken on every local address: no set
        else:
            tx.flush(obj)

    mark = cx.mark
    tx.add_rule(MASQUERADING, f"mark and {mark} != 0 mark set mark xor {mark} masquerade fully-random")
    tx.add_rule(MASQUERADING, f"ct status dnat {ipx} saddr . {ipx} daddr . meta l4proto . th dport "
                              f"@{HAIRPIN} masquerade fully-random")

    tx.add_rule(CLUSTER_IPS_CHECK, f"{ipx} daddr @{CLUSTER_IPS} reject",
                "Reject traffic to invalid ports of ClusterIPs")
    if cx.service_cidrs:
        tx.add_rule(CLUSTER_IPS_CHECK, f"{ipx} daddr {{ {','.join(cx.service_cidrs)} }} drop",
                    "Drop traffic to unallocated ClusterIPs")

    if not cx.np_match_all and cx.np_ips:
        tx.add_elements(NODEPORT_IPS, [((ip,), (), None) for ip in cx.np_ips])

    tx.add_rule(REJECT_CHAIN, "reject")
    tx.add_rule(SERVICE_ENDPOINTS_CHECK,
                f"{ipx} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}")
    np_match = cx.no_localhost if cx.np_match_all else f"{ipx} daddr @{NODEPORT_IPS}"
    tx.add_rule(NODEPORT_ENDPOINTS_CHECK, f"{np_match} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}")
    tx.add_rule(FIREWALL_CHECK, f"{ipx} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}")

    # Masquerading off-cluster traffic to ClusterIPs is decided once, here,
    # for every ClusterIP; without a local-traffic detector nothing can tell
    # pod traffic from the rest, and none is masqueraded (as in kube-proxy).
    if cx.masq_all:
        tx.add_rule(SERVICES, f"{ipx} daddr @{CLUSTER_IPS} {cx.masq}", MASQ_ALL_CLUSTER_IP_COMMENT)
    elif cx.if_not_local:
        tx.add_rule(SERVICES, f"{ipx} daddr @{CLUSTER_IPS} {cx.if_not_local} {cx.masq}", MASQ_CLUSTER_IP_COMMENT)
    tx.add_rule(SERVICES, f"{ipx} daddr . meta l4proto . th dport vmap @{SERVICE_IPS}")
    if cx.np_match_all:
        tx.add_rule(SERVICES, f"fib daddr type local {cx.no_localhost} meta l4proto . th dport "
                              f"vmap @{SERVICE_NODEPORTS}")
    else:
        tx.add_rule(SERVICES, f"{ipx} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}")


class _Elements:
    """kube-proxy's nftElementStorage for one set or map, within one transaction.

    An element already queued with the same key and value is not queued
    again; one with the same key and another value replaces it (delete, then
    add), so the last service port to claim a key wins.
    """

    __slots__ = ("name", "seen", "tx")

    def __init__(self, tx: Transaction, name: str):
        self.tx, self.name, self.seen = tx, name, {}

    def ensure(self, key: tuple[str, ...], value: tuple[str, ...] = (), comment: str | None = None) -> None:
        old = self.seen.get(key)
        if old is not None:
            if old == value:
                return
            is_map = bool(value)
            self.tx.delete(Element("" if is_map else self.name, self.name if is_map else "", key))
        self.seen[key] = value
        self.tx.add_element(self.name, key, value, comment)


def compile_ports(tx: Transaction, ports, cx: Context) -> None:
    E = {name: _Elements(tx, name) for name in (CLUSTER_IPS, SERVICE_IPS, NO_ENDPOINT_SERVICES, FIREWALL_IPS,
                                                  SERVICE_NODEPORTS, NO_ENDPOINT_NODEPORTS, HAIRPIN)}
    for p in ports:
        _service_port(tx, p, cx, E)


def _service_port(tx: Transaction, p: PortPlan, cx: Context, E) -> None:
    svc = p.service
    proto = p.proto
    names = NftNames(svc.namespace, svc.name, proto, p.port.name)
    sel = p.sel
    has_eps = sel.has_any
    ipx = cx.ipx
    add_chain, R = tx.add_chain, tx.add_rule

    cluster_chain, local_chain, ext_chain, fw_chain = names.svc, names.local, names.ext, names.fw
    uses_cluster_chain = bool(sel.cluster) and p.uses_cluster
    uses_local_chain = bool(sel.local) and p.uses_local
    internal_chain = local_chain if p.int_local else cluster_chain
    external_policy_chain = local_chain if p.ext_local else cluster_chain
    has_internal = p.has_internal
    has_external = p.has_external
    uses_ext_chain = has_eps and p.externally_accessible
    uses_fw = bool(p.lb_ips) and bool(p.source_ranges)
    if not has_eps:
        int_verdict = ext_verdict = REJECT_VERDICT
    else:
        int_verdict = ext_verdict = DROP_VERDICT

    # Endpoint objects: hairpin elements for local endpoints; under session
    # affinity a chain and an affinity set per endpoint (one hash for both).
    ep_bases: dict[str, str] = {}
    hairpin = E[HAIRPIN]
    for e in sel.all_reachable:
        if p.affinity:
            b = ep_bases[e.ep] = names.endpoint_base(e.ip, e.port)
            add_chain("endpoint-" + b)
        if e.local:
            port = str(e.port)
            hairpin.ensure((e.ip, e.ip, proto, port))
    for used, name in ((uses_cluster_chain, cluster_chain), (uses_local_chain, local_chain),
                       (uses_ext_chain, ext_chain)):
        if used:
            add_chain(name)

    comment = truncate_comment(p.spn)
    port = str(p.port.port)
    cip = p.cluster_ip
    E[CLUSTER_IPS].ensure((cip,))
    if has_internal:
        E[SERVICE_IPS].ensure((cip, proto, port), ("goto " + internal_chain,))
    else:
        E[NO_ENDPOINT_SERVICES].ensure((cip, proto, port), int_verdict, comment)

    to_ext = ("goto " + ext_chain,)
    for eip in p.external_ips:
        if has_eps:
            E[SERVICE_IPS].ensure((eip, proto, port), to_ext)
        if not has_external:
            E[NO_ENDPOINT_SERVICES].ensure((eip, proto, port), ext_verdict, comment)

    if uses_fw:
        add_chain(fw_chain)
    for lbip in p.lb_ips:
        if has_eps:
            E[SERVICE_IPS].ensure((lbip, proto, port), to_ext)
        if uses_fw:
            E[FIREWALL_IPS].ensure((lbip, proto, port), ("goto " + fw_chain,))
    if not has_external:
        for lbip in p.lb_ips:
            E[NO_ENDPOINT_SERVICES].ensure((lbip, proto, port), ext_verdict, comment)

    if p.node_port:
        np_key = (proto, str(p.node_port))
        if has_eps:
            E[SERVICE_NODEPORTS].ensure(np_key, to_ext)
        if not has_external:
            E[NO_ENDPOINT_NODEPORTS].ensure(np_key, ext_verdict, comment)

    # The external chain: masquerade and go to the cluster chain, or (policy
    # Local) keep the source, short-circuit pod and node traffic to the
    # cluster chain, and send the rest to the local endpoints.
    if uses_ext_chain:
        if not p.ext_local:
            R(ext_chain, cx.masq, "masquerade")
        else:
            if cx.if_local:
                R(ext_chain, f"{cx.if_local} goto {cluster_chain}", "short-circuit pod traffic")
            R(ext_chain, f"fib saddr type local {cx.masq}", "masquerade local traffic")
            R(ext_chain, f"fib saddr type local goto {cluster_chain}", "short-circuit local traffic")
        if has_external:
            R(ext_chain, f"goto {external_policy_chain}")

    if uses_fw:
        sources = list(p.source_ranges)
        # Traffic from this node to its own LB IP may arrive with the LB IP
        # as source (the VIP is often a local address): allow it when the
        # ranges allow the node.
        if node_ip_in_ranges(p.source_ranges, cx.node_ip):
            sources += p.lb_ips
        R(fw_chain, f"{ipx} saddr != {{ {' , '.join(sources)} }} drop")

    if p.affinity:
        for e in sel.all_reachable:
            tx.add(Set("affinity-" + ep_bases[e.ep], cx.addr, ("dynamic", "timeout"), p.affinity))

    if uses_cluster_chain:
        _to_endpoints(R, cluster_chain, sel.cluster, p, ipx, ep_bases)
    if uses_local_chain:
        _to_endpoints(R, local_chain, sel.local, p, ipx, ep_bases)

    if p.affinity:
        for e in sel.all_reachable:
            b = ep_bases[e.ep]
            R("endpoint-" + b, f"update @affinity-{b} {{ {ipx} saddr }}")
            R("endpoint-" + b, f"meta l4proto {proto} dnat to {e.ep}")


def _to_endpoints(R, chain: str, eps, p: PortPlan, ipx: str, ep_bases: dict[str, str]) -> None:
    """A service (or local) chain: pick an endpoint with numgen, remembering it under session affinity."""
    n = len(eps)
    if p.affinity:
        for e in eps:
            b = ep_bases[e.ep]
            R(chain, f"{ipx} saddr @affinity-{b} goto endpoint-{b}")
        vmap = " , ".join([f"{i} : goto endpoint-{ep_bases[e.ep]}" for i, e in enumerate(eps)])
        R(chain, f"numgen random mod {n} vmap {{ {vmap} }}")
        return
    if ipx == "ip":
        # IPv4 `ip:port` → `ip . port` with C-level calls: ~130k endpoints in a 10k-Service cluster.
        targets = " , ".join(map(_add, _INDEX[:n] if n <= len(_INDEX) else [f"{i} : " for i in range(n)],
                                 map(_ip_dot_port, map(_ep_of, eps))))
    else:
        targets = " , ".join([f"{i} : {e.ip} . {e.port}" for i, e in enumerate(eps)])
    R(chain, f"meta l4proto {p.proto} dnat {ipx} addr . port to numgen random mod {n} map {{ {targets} }}")


_INDEX = [f"{i} : " for i in range(256)]
_add = operator.add
_ep_of = operator.attrgetter("ep")
_ip_dot_port = operator.methodcaller("replace", ":", " . ")
