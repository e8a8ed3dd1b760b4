"""Plan → IPVS IR, as kube-proxy's IPVS proxier leaves a node after a full sync.

Owns the IPVS proxier's `syncProxyRules` and `writeIptablesRules`
(pkg/proxy/ipvs/proxier.go): per service port a virtual server for the
ClusterIP, each external IP, each load-balancer IP and, for a nodePort, each
NodePort address of the node; their real servers; every KUBE-* ipset entry;
the addresses bound to kube-ipvs0; and the iptables glue written after the
ports, whose set-matching rules appear only for sets kube-proxy filled.
Endpoint choice is the plan's (`selection.categorize`); this module only
applies the IPVS-specific fallback for Local policies. docs/ipvs-mode.md
records each point settled from kube-proxy's source.

Output is deterministic: virtual servers in the plan's service order, per
service port by kind (ClusterIP, external IPs, load-balancer IPs, NodePort
addresses) and address; set entries sorted.
"""

from __future__ import annotations

import socket

from ...dataplane.xtables.model import Rule, Ruleset, Table, local_match
from ...ipaddr import cidr_contains
from ...plan import Plan
from ...settings import LOOPBACK, Settings
from .ir import (
    BITMAP_OPTIONS,
    BITMAP_PORT,
    DEFAULT_SCHEDULER,
    FLAG_PERSISTENT,
    FLAG_SCHED2,
    HASH_OPTIONS,
    MAXELEM,
    SET_DEFS,
    IPSet,
    IPVSState,
    RealServer,
    VirtualServer,
    hash_family,
    set_name,
)

NAT_CHAINS = ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ")
FILTER_CHAINS = ("KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL",
                 "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER")

# Jumps from the built-in chains, installed outside the payload: (table,
# built-in chain, rule args). kube-proxy inserts each at position 1 when
# missing, in this order, so the last one listed for a chain ends up first.
JUMP_RULES: tuple[tuple[str, str, str], ...] = (
    ("nat", "OUTPUT", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("nat", "PREROUTING", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("nat", "POSTROUTING", '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'),
    ("filter", "FORWARD", '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'),
    ("filter", "INPUT", '-m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT'),
    ("filter", "INPUT", '-m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL'),
    ("filter", "FORWARD", '-m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL'),
    ("filter", "INPUT", '-m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER'),
    ("filter", "OUTPUT", '-m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER'),
)

# Sets whose non-empty state adds one glue rule each, in kube-proxy's order:
# (IPv4 set name, table, from chain, target, set match, protocol match).
# Each Local set comes before its masquerading sibling so RETURN wins.
SET_RULES: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("KUBE-LOOP-BACK", "nat", "KUBE-POSTROUTING", "MASQUERADE", "dst,dst,src", ""),
    ("KUBE-LOAD-BALANCER", "nat", "KUBE-SERVICES", "KUBE-LOAD-BALANCER", "dst,dst", ""),
    ("KUBE-LOAD-BALANCER-LOCAL", "nat", "KUBE-LOAD-BALANCER", "RETURN", "dst,dst", ""),
    ("KUBE-NODE-PORT-LOCAL-TCP", "nat", "KUBE-NODE-PORT", "RETURN", "dst", "tcp"),
    ("KUBE-NODE-PORT-TCP", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "tcp"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "nat", "KUBE-NODE-PORT", "RETURN", "dst", "udp"),
    ("KUBE-NODE-PORT-UDP", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "udp"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "nat", "KUBE-NODE-PORT", "RETURN", "dst,dst", "sctp"),
    ("KUBE-NODE-PORT-SCTP-HASH", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst,dst", "sctp"),
    ("KUBE-LOAD-BALANCER-FW", "filter", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL", "dst,dst", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
)

_COMMENTS = {n: c for n, _, c in SET_DEFS}
_NODEPORT_SETS = {"tcp": ("KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-LOCAL-TCP"),
                  "udp": ("KUBE-NODE-PORT-UDP", "KUBE-NODE-PORT-LOCAL-UDP"),
                  "sctp": ("KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH")}


def _addr_key(ip: str) -> tuple[int, bytes]:
    """Numeric order of addresses (both families)."""
    return (6, socket.inet_pton(socket.AF_INET6, ip)) if ":" in ip else (4, socket.inet_pton(socket.AF_INET, ip))


def _is_node_address(ip: str) -> bool:
    """An address the kernel would list for the node: not loopback, not IPv6 link-local (fe80::/10)."""
    if ":" in ip:
        return ip != "::1" and not ip.lower().startswith(("fe8", "fe9", "fea", "feb"))
    return not ip.startswith("127.")


def _net_entry(cidr: str) -> str:
    """A CIDR as `ipset save` prints it in a hash:ip,port,net entry: host networks without the prefix."""
    if ":" in cidr:
        return cidr[:-4] if cidr.endswith("/128") else cidr
    return cidr[:-3] if cidr.endswith("/32") else cidr


def node_addresses(settings: Settings, fam: int) -> tuple[str, ...]:
    """The node's own addresses of the family, as kube-proxy reads them off its interfaces.

    kube-ipvs0's addresses aside, this is what decides whether an external
    or load-balancer IP is bound to kube-ipvs0, and (nodePortAddresses
    unset) where NodePorts listen. rulegen knows the node by its addresses
    (`--node-ip`, the Node object); loopback and IPv6 link-local are left
    out as kube-proxy leaves them out.
    """
    return tuple(ip for ip in settings.node_ips_of(fam) if _is_node_address(ip))


def nodeport_addresses(settings: Settings, fam: int) -> tuple[str, ...]:
    """The addresses that get a NodePort virtual server, in numeric order."""
    match_all, ips = settings.nodeport_ips(fam)
    chosen = node_addresses(settings, fam) if match_all else tuple(ip for ip in ips if _is_node_address(ip))
    return tuple(sorted(set(chosen), key=_addr_key))


def compile_plan(plan: Plan, settings: Settings) -> IPVSState:
    fam = plan.family
    scheduler = settings.scheduler or DEFAULT_SCHEDULER
    base_flags = FLAG_SCHED2 if scheduler == "mh" else 0
    on_node = set(node_addresses(settings, fam))
    np_ips = nodeport_addresses(settings, fam)
    # kube-proxy's node IP of the family falls back to loopback when unknown.
    node_ip = settings.primary_ip(fam) or LOOPBACK[fam]

    kernel: dict[str, set[str]] = {n: set() for n, _, _ in SET_DEFS}  # entries as the kernel holds them
    loop_back = kernel["KUBE-LOOP-BACK"].add
    cluster = kernel["KUBE-CLUSTER-IP"].add
    lb_set = kernel["KUBE-LOAD-BALANCER"].add
    lb_local = kernel["KUBE-LOAD-BALANCER-LOCAL"].add
    lb_fw = kernel["KUBE-LOAD-BALANCER-FW"].add
    lb_cidr = kernel["KUBE-LOAD-BALANCER-SOURCE-CIDR"].add
    lb_src_ip = kernel["KUBE-LOAD-BALANCER-SOURCE-IP"].add
    health = kernel["KUBE-HEALTH-CHECK-NODE-PORT"].add
    any_source_range = False  # kube-proxy counts a /0 range the kernel refuses
    bound: set[str] = set()
    # One IPVS service per (protocol, address, port): a second service port
    # re-syncs the same one, and its real servers are what stays. A dict keeps
    # the first one's place and takes the last one's value.
    services: dict[tuple[str, str, int], VirtualServer] = {}
    out_filter: list[tuple[str, str, int]] = []
    new_vs = VirtualServer
    new_rs = RealServer

    for p in plan.ports:
        proto = p.proto
        port = p.port.port
        sel = p.sel
        flags = base_flags | (FLAG_PERSISTENT if p.affinity else 0)
        timeout = p.affinity
        # IPVS's Local policies: the local endpoints, or when there are none,
        # the cluster endpoints (when the port computes them) instead of nothing.
        int_eps = sel.local if p.int_local and sel.local else sel.cluster
        ext_eps = sel.local if p.ext_local and sel.local else sel.cluster
        int_reals = tuple([new_rs(e.ip, e.port) for e in int_eps])
        ext_reals = int_reals if ext_eps is int_eps else tuple([new_rs(e.ip, e.port) for e in ext_eps])
        tail = f",{proto}:{port}"

        for e in p.endpoints:
            if e.local:  # hairpin SNAT, whatever the endpoint's conditions
                loop_back(f"{e.ip},{proto}:{e.port},{e.ip}")

        cip = p.cluster_ip
        cluster(cip + tail)
        services[(proto, cip, port)] = new_vs(proto, cip, port, scheduler, flags, timeout, int_reals)
        bound.add(cip)

        if p.external_ips:
            ext_set = kernel["KUBE-EXTERNAL-IP-LOCAL" if p.ext_local else "KUBE-EXTERNAL-IP"].add
            for eip in sorted(set(p.external_ips), key=_addr_key):
                ext_set(eip + tail)
                services[(proto, eip, port)] = new_vs(proto, eip, port, scheduler, flags, timeout, ext_reals)
                if eip not in on_node:
                    bound.add(eip)

        if p.lb_ips:
            for lbip in sorted(set(p.lb_ips), key=_addr_key):
                entry = lbip + tail
                lb_set(entry)
                if p.ext_local:
                    lb_local(entry)
                if p.source_ranges:
                    lb_fw(entry)
                    any_source_range = True
                    allow_node = False
                    for cidr in p.source_ranges:
                        if not cidr.endswith("/0"):  # the kernel refuses a /0 net; kube-proxy's add fails
                            lb_cidr(f"{entry},{_net_entry(cidr)}")
                        allow_node = allow_node or cidr_contains(cidr, node_ip)
                    if allow_node:
                        lb_src_ip(f"{entry},{lbip}")
                    else:
                        out_filter.append((lbip, proto, port))
                services[(proto, lbip, port)] = new_vs(proto, lbip, port, scheduler, flags, timeout, ext_reals)
                if lbip not in on_node:
                    bound.add(lbip)

        np_ = p.node_port
        if np_:
            if not np_ips:
                continue  # kube-proxy skips the rest of this port, health check entry included
            main, local = _NODEPORT_SETS[proto]
            entries = [f"{ip},sctp:{np_}" for ip in np_ips] if proto == "sctp" else [str(np_)]
            kernel[main].update(entries)
            if p.ext_local:
                kernel[local].update(entries)
            for ip in np_ips:
                services[(proto, ip, np_)] = new_vs(proto, ip, np_, scheduler, flags, timeout, ext_reals)

        if p.hc_node_port:
            health(str(p.hc_node_port))

    kernel["KUBE-IPVS-IPS"].update(bound)
    active = {n for n, entries_ in kernel.items() if entries_}
    if any_source_range:
        active.add("KUBE-LOAD-BALANCER-SOURCE-CIDR")
    ipsets = tuple(_ipset(name, typ, comment, kernel[name], fam) for name, typ, comment in SET_DEFS)
    return IPVSState(fam, tuple(services.values()), ipsets, ipsets[-1].entries,
                     glue(settings, fam, active, out_filter))


def _ipset(name: str, typ: str, comment: str, entries: set[str], fam: int) -> IPSet:
    if typ == BITMAP_PORT:
        ordered = tuple(map(str, sorted(map(int, entries))))
        return IPSet(set_name(name, fam), typ, "", BITMAP_OPTIONS, comment, ordered)
    # kube-proxy adds a set's missing entries in sorted order; past maxelem the kernel refuses the rest.
    return IPSet(set_name(name, fam), typ, hash_family(fam), HASH_OPTIONS, comment, tuple(sorted(entries)[:MAXELEM]))


def glue(settings: Settings, fam: int, active: set[str], out_filter: list[tuple[str, str, int]]) -> Ruleset:
    """The iptables payload kube-proxy's IPVS mode restores after the ports (nat, then filter)."""
    mark = settings.mark
    masked = f"{mark}/{mark}"
    nat: list[Rule] = []
    flt: list[Rule] = []
    N, F = nat.append, flt.append

    def name(n: str) -> str:
        return set_name(n, fam)

    def match(n: str, how: str) -> str:
        return f'-m comment --comment "{_COMMENTS[n]}" -m set --match-set {name(n)} {how}'

    N(Rule("KUBE-SERVICES", f"-s {'::1/128' if fam == 6 else '127.0.0.0/8'} -j RETURN"))
    for n, table, chain, target, how, proto in SET_RULES:
        if n in active:
            pm = f"-p {proto} " if proto else ""
            (N if table == "nat" else F)(Rule(chain, f"{pm}{match(n, how)} -j {target}"))

    if "KUBE-CLUSTER-IP" in active:
        head = match("KUBE-CLUSTER-IP", "")
        det = settings.local_detector(fam)
        detector = local_match(det.cidr, det.iface)
        if settings.masquerade_all:
            N(Rule("KUBE-SERVICES", f"{head}dst,dst -j KUBE-MARK-MASQ"))
        elif detector.implemented:
            N(Rule("KUBE-SERVICES", f"{head}dst,dst {detector.if_not_local} -j KUBE-MARK-MASQ"))
        else:
            # No way to tell pod traffic: masquerade node-originated traffic sourced from a VIP.
            N(Rule("KUBE-SERVICES", f"{head}src,dst -j KUBE-MARK-MASQ"))
    for n in ("KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL"):
        if n in active:
            head = match(n, "dst,dst")
            if n == "KUBE-EXTERNAL-IP":
                N(Rule("KUBE-SERVICES", f"{head} -j KUBE-MARK-MASQ"))
            N(Rule("KUBE-SERVICES", f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT"))
            N(Rule("KUBE-SERVICES", f"{head} -m addrtype --dst-type LOCAL -j ACCEPT"))
    N(Rule("KUBE-SERVICES", "-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT"))
    N(Rule("KUBE-LOAD-BALANCER", "-j KUBE-MARK-MASQ"))
    F(Rule("KUBE-SOURCE-RANGES-FIREWALL", "-j DROP"))
    for ip, proto, port in out_filter:
        F(Rule("KUBE-IPVS-OUT-FILTER", f"-s {ip} -m ipvs --vaddr {ip} --vproto {proto} --vport {port} -j DROP"))
    for n in ("KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER"):  # accept IPVS traffic, last in KUBE-SERVICES
        if n in active:
            N(Rule("KUBE-SERVICES", f"-m set --match-set {name(n)} dst,dst -j ACCEPT"))
    F(Rule("KUBE-FORWARD", f'-m comment --comment "kubernetes forwarding rules" -m mark --mark {masked} -j ACCEPT'))
    F(Rule("KUBE-FORWARD", '-m comment --comment "kubernetes forwarding conntrack rule" '
           "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"))
    F(Rule("KUBE-NODE-PORT", f"{match('KUBE-HEALTH-CHECK-NODE-PORT', 'dst')} -j ACCEPT"))
    for n in ("KUBE-LOAD-BALANCER", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL"):
        F(Rule("KUBE-IPVS-FILTER", f"-m set --match-set {name(n)} dst,dst -j RETURN"))
    F(Rule("KUBE-IPVS-FILTER", f"-m set --match-set {name('KUBE-HEALTH-CHECK-NODE-PORT')} dst -j RETURN"))
    F(Rule("KUBE-IPVS-FILTER", f"-m conntrack --ctstate NEW -m set --match-set {name('KUBE-IPVS-IPS')} dst -j REJECT"))
    N(Rule("KUBE-POSTROUTING", f"-m mark ! --mark {masked} -j RETURN"))
    N(Rule("KUBE-POSTROUTING", f"-j MARK --xor-mark {mark}"))
    masq = '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
    N(Rule("KUBE-POSTROUTING", masq + (" --random-fully" if settings.random_fully else "")))
    N(Rule("KUBE-MARK-MASQ", f"-j MARK --or-mark {mark}"))
    return Ruleset(fam, (Table("nat", NAT_CHAINS, tuple(nat)), Table("filter", FILTER_CHAINS, tuple(flt))))
