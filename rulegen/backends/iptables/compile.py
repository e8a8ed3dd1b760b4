"""Plan → iptables IR, rule for rule as kube-proxy's iptables proxier writes a full sync.

Owns kube-proxy's `syncProxyRules` (pkg/proxy/iptables/proxier.go): the
fixed chains and rules, then per service port the capture rules in
KUBE-SERVICES / KUBE-NODEPORTS / KUBE-EXTERNAL-SERVICES / KUBE-PROXY-FIREWALL,
the masquerade rule, the EXT, FW, SVC, SVL and SEP chains, and the
KUBE-NODEPORTS tail rule. Rule bodies are built by string formatting in the
hot loop (a 10k-Service cluster writes ~350k lines); everything else is
records. The comments name each part in kube-proxy's write order.
"""

from __future__ import annotations

from ...dataplane.xtables.comments import COMMENT_MAX, comment_arg
from ...dataplane.xtables.model import Rule, Ruleset, Table, local_match
from ...naming import IptablesNames
from ...plan import Plan, PortPlan, node_ip_in_ranges
from ...settings import Settings

_new = tuple.__new__  # Rule(...) goes through a Python-level __new__; this is ~2x cheaper

LARGE_CLUSTER_THRESHOLD = 1000  # kube-proxy's largeClusterEndpointsThreshold

# Room for the service port name in a comment: the longest words around it
# ("other traffic to ... will be dropped by KUBE-PROXY-FIREWALL", or " -> " and
# a bracketed IPv6 endpoint with its port) take 64 bytes of the 255.
SPN_ROOM = COMMENT_MAX - 64

FILTER_CHAINS = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL")
NAT_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
NODEPORTS_COMMENT = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'

# Jumps from the built-in chains, which kube-proxy installs outside the payload:
# (table, built-in chain, rule args). Each is inserted at position 1 when
# missing, in this order, so the last one listed for a chain ends up first.
JUMP_RULES: tuple[tuple[str, str, str], ...] = (
    ("filter", "INPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES'),
    ("filter", "FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES'),
    ("filter", "INPUT", '-m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS'),
    ("filter", "FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("filter", "OUTPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("filter", "FORWARD", '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'),
    ("filter", "INPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
    ("filter", "OUTPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
    ("filter", "FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
    ("nat", "OUTPUT", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("nat", "PREROUTING", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("nat", "POSTROUTING", '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'),
)
# kubelet's KUBE-FIREWALL jumps, recreated by kube-proxy (IPv4 with localhost NodePorts).
FIREWALL_JUMPS: tuple[tuple[str, str, str], ...] = (
    ("filter", "INPUT", "-j KUBE-FIREWALL"),
    ("filter", "OUTPUT", "-j KUBE-FIREWALL"),
)


def jump_rules(settings: Settings) -> tuple[tuple[str, str, str], ...]:
    if settings.family == 4 and settings.localhost_nodeports_effective():
        return JUMP_RULES + FIREWALL_JUMPS
    return JUMP_RULES


_prob_cache: dict[int, str] = {}


def probability(n: int) -> str:
    """1/n with exactly 10 decimals, as Go's %0.10f prints it."""
    p = _prob_cache.get(n)
    if p is None:
        p = _prob_cache[n] = f"{1.0 / n:.10f}"
    return p


class Context:
    """What every service port's rules depend on besides the port itself (settings, one family)."""

    __slots__ = ("fam", "is4", "mark", "masked", "detector", "localhost_np", "masq_all", "node_ip", "nfacct_np")

    def __init__(self, settings: Settings, fam: int):
        self.fam = fam
        self.is4 = fam == 4
        self.mark = settings.mark
        self.masked = f"{self.mark}/{self.mark}"
        det = settings.local_detector(fam)
        self.detector = local_match(det.cidr, det.iface)
        self.localhost_np = self.is4 and settings.localhost_nodeports_effective(fam)
        self.masq_all = settings.masquerade_all
        self.node_ip = settings.primary_ip(fam)
        self.nfacct_np = self.localhost_np and settings.nfacct


def compile_plan(plan: Plan, settings: Settings) -> Ruleset:
    cx = Context(settings, plan.family)
    large = is_large(plan.endpoint_total)
    fchains, frules, nchains, nrules = head(cx, settings)
    compile_ports(plan.ports, cx, large, nrules, frules, nchains)
    return finish(cx, settings, fchains, frules, nchains, nrules)


def is_large(endpoint_total: int) -> bool:
    return endpoint_total > LARGE_CLUSTER_THRESHOLD


def compile_ports(ports, cx: Context, large: bool, nrules: list[Rule], frules: list[Rule],
                  nchains: list[str]) -> None:
    """Every service port's rules, appended in kube-proxy's write order."""
    N, F = nrules.append, frules.append
    detector, masq_all, nfacct_np, node_ip = cx.detector, cx.masq_all, cx.nfacct_np, cx.node_ip
    for p in ports:
        _service_port(p, N, F, nchains, detector, masq_all, large, nfacct_np, node_ip)


def head(cx: Context, settings: Settings) -> tuple[list[str], list[Rule], list[str], list[Rule]]:
    """The fixed chains and the rules written before any service port (fixed nat rules, KUBE-FIREWALL)."""
    mark, masked = cx.mark, cx.masked
    fchains: list[str] = list(FILTER_CHAINS)
    frules: list[Rule] = []
    nchains: list[str] = list(NAT_CHAINS)
    nrules: list[Rule] = []
    N = nrules.append

    # fixed nat rules
    N(Rule("KUBE-POSTROUTING", f"-m mark ! --mark {masked} -j RETURN"))
    N(Rule("KUBE-POSTROUTING", f"-j MARK --xor-mark {mark}"))
    masq = '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
    N(Rule("KUBE-POSTROUTING", masq + (" --random-fully" if settings.random_fully else "")))
    N(Rule("KUBE-MARK-MASQ", f"-j MARK --or-mark {mark}"))

    # KUBE-FIREWALL
    if cx.localhost_np:
        fchains.append("KUBE-FIREWALL")
        frules.append(Rule("KUBE-FIREWALL", '-m comment --comment "block incoming localnet connections" '
                           "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"))
    return fchains, frules, nchains, nrules


def finish(cx: Context, settings: Settings, fchains: list[str], frules: list[Rule], nchains: list[str],
           nrules: list[Rule]) -> Ruleset:
    """The rules written after every service port (the KUBE-SERVICES tail, KUBE-FORWARD), and the Ruleset."""
    N, F = nrules.append, frules.append
    is4, fam = cx.is4, cx.fam

    # the last KUBE-SERVICES rule
    match_all, addrs = settings.nodeport_ips(fam)
    if match_all:
        if not is4:
            tail = "-m addrtype --dst-type LOCAL ! -d ::1/128"
        elif cx.localhost_np:
            tail = "-m addrtype --dst-type LOCAL"
        else:
            tail = "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8"
        N(Rule("KUBE-SERVICES", f"-m comment --comment {NODEPORTS_COMMENT} {tail} -j KUBE-NODEPORTS"))
    else:
        for ip in addrs:
            if ip in ("127.0.0.1", "::1") and (not is4 or not cx.localhost_np):
                continue
            N(Rule("KUBE-SERVICES", f"-m comment --comment {NODEPORTS_COMMENT} -d {ip} -j KUBE-NODEPORTS"))

    # KUBE-FORWARD, always last in filter
    if not settings.tcp_be_liberal:
        acct = " -m nfacct --nfacct-name ct_state_invalid_dropped_pkts" if settings.nfacct else ""
        F(Rule("KUBE-FORWARD", f"-m conntrack --ctstate INVALID{acct} -j DROP"))
    F(Rule("KUBE-FORWARD", f'-m comment --comment "kubernetes forwarding rules" -m mark --mark {cx.masked} -j ACCEPT'))
    F(Rule("KUBE-FORWARD", '-m comment --comment "kubernetes forwarding conntrack rule" '
           "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"))

    return Ruleset(fam, (
        Table("filter", tuple(fchains), tuple(frules)),
        Table("nat", tuple(nchains), tuple(nrules)),
    ))


def _service_port(p: PortPlan, N, F, nchains: list[str], detector, masq_all: bool, large: bool,
                  nfacct_np: bool, node_ip: str | None) -> None:
    proto = p.proto
    names = IptablesNames(p.spn, proto)
    # The service port name in comments: `bare` where kube-proxy writes it as the
    # whole argument, `spn` inside its quoted phrases. The same text for every
    # name the API server allows; quoted and escaped (comments.py) for any other.
    spn = bare = comment_arg(p.spn, SPN_ROOM)
    if bare is not p.spn:
        spn = bare[1:-1]
    sel = p.sel
    has_eps = sel.has_any
    has_int = p.has_internal
    has_ext = p.has_external
    internal_chain = names.svl if p.int_local else names.svc
    ext_policy_chain = names.svl if p.ext_local else names.svc
    ext_chain = names.ext
    uses_ext = has_eps and p.externally_accessible
    uses_fw = has_eps and bool(p.lb_ips) and bool(p.source_ranges)
    lb_chain = names.fw if uses_fw else ext_chain
    if not has_eps:
        int_target = ext_target = "REJECT"
        int_comment = ext_comment = f'"{spn} has no endpoints"'
    else:
        int_target = ext_target = "DROP"
        int_comment = ext_comment = f'"{spn} has no local endpoints"'

    pp = f"-m {proto} -p {proto}"
    cip = p.cluster_ip
    port = p.port.port
    dport = f"--dport {port}"

    # capture rules
    if has_int:
        N(_new(Rule, ("KUBE-SERVICES", f'-m comment --comment "{spn} cluster IP" {pp} -d {cip} {dport} -j {internal_chain}')))
    else:
        F(_new(Rule, ("KUBE-SERVICES", f"-m comment --comment {int_comment} {pp} -d {cip} {dport} -j {int_target}")))
    for eip in p.external_ips:
        if has_eps:
            N(_new(Rule, ("KUBE-SERVICES", f'-m comment --comment "{spn} external IP" {pp} -d {eip} {dport} -j {ext_chain}')))
        if not has_ext:
            F(_new(Rule, ("KUBE-EXTERNAL-SERVICES", f"-m comment --comment {ext_comment} {pp} -d {eip} {dport} -j {ext_target}")))
    for lbip in p.lb_ips:
        if has_eps:
            N(_new(Rule, ("KUBE-SERVICES", f'-m comment --comment "{spn} loadbalancer IP" {pp} -d {lbip} {dport} -j {lb_chain}')))
        if uses_fw:
            F(_new(Rule, ("KUBE-PROXY-FIREWALL", f'-m comment --comment "{spn} traffic not accepted by {names.fw}" '
                   f"{pp} -d {lbip} {dport} -j DROP")))
    if not has_ext:
        for lbip in p.lb_ips:
            F(_new(Rule, ("KUBE-EXTERNAL-SERVICES", f"-m comment --comment {ext_comment} {pp} -d {lbip} {dport} -j {ext_target}")))

    # NodePort
    np_ = p.node_port
    if np_:
        if has_eps:
            if nfacct_np:
                N(_new(Rule, ("KUBE-NODEPORTS", f"-m comment --comment {bare} {pp} -d 127.0.0.0/8 --dport {np_} "
                       f"-m nfacct --nfacct-name localhost_nps_accepted_pkts -j {ext_chain}")))
            N(_new(Rule, ("KUBE-NODEPORTS", f"-m comment --comment {bare} {pp} --dport {np_} -j {ext_chain}")))
        if not has_ext:
            F(_new(Rule, ("KUBE-EXTERNAL-SERVICES", f"-m comment --comment {ext_comment} -m addrtype --dst-type LOCAL "
                   f"{pp} --dport {np_} -j {ext_target}")))
    if p.hc_node_port:
        F(_new(Rule, ("KUBE-NODEPORTS", f'-m comment --comment "{spn} health check node port" -m tcp -p tcp '
               f"--dport {p.hc_node_port} -j ACCEPT")))

    # cluster-IP masquerade rule
    if has_int:
        head = f'-m comment --comment "{spn} cluster IP" {pp} -d {cip} {dport}'
        if masq_all:
            N(_new(Rule, (internal_chain, f"{head} -j KUBE-MARK-MASQ")))
        elif detector.implemented:
            N(_new(Rule, (internal_chain, f"{head} {detector.if_not_local} -j KUBE-MARK-MASQ")))

    # EXT chain
    if uses_ext:
        nchains.append(ext_chain)
        if not p.ext_local:
            N(_new(Rule, (ext_chain, f'-m comment --comment "masquerade traffic for {spn} external destinations" -j KUBE-MARK-MASQ')))
        else:
            if detector.implemented:
                N(_new(Rule, (ext_chain, f'-m comment --comment "pod traffic for {spn} external destinations" '
                       f"{detector.if_local} -j {names.svc}")))
            N(_new(Rule, (ext_chain, f'-m comment --comment "masquerade LOCAL traffic for {spn} external destinations" '
                   "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ")))
            N(_new(Rule, (ext_chain, f'-m comment --comment "route LOCAL traffic for {spn} external destinations" '
                   f"-m addrtype --src-type LOCAL -j {names.svc}")))
        if has_ext:
            N(_new(Rule, (ext_chain, f"-j {ext_policy_chain}")))

    # FW chain
    if uses_fw:
        fw = names.fw
        nchains.append(fw)
        head = f'-m comment --comment "{spn} loadbalancer IP"'
        for r in p.source_ranges:
            N(_new(Rule, (fw, f"{head} -s {r} -j {ext_chain}")))
        if node_ip_in_ranges(p.source_ranges, node_ip):
            for lbip in p.lb_ips:
                N(_new(Rule, (fw, f"{head} -s {lbip} -j {ext_chain}")))
        N(_new(Rule, (fw, f'-m comment --comment "other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"')))

    # SVC / SVL chains. Every endpoint that gets a jump also gets a SEP
    # chain (selection.categorize makes the cluster and local lists subsets of
    # all_reachable), so the SEP names are hashed once, here, and looked up afterwards.
    sep_name = names.sep
    seps = {e.ep: sep_name(e.ep) for e in sel.all_reachable}
    if sel.cluster and p.uses_cluster:
        nchains.append(names.svc)
        _to_endpoints(N, names.svc, spn, sel.cluster, p.affinity, large, seps)
    if sel.local and p.uses_local:
        nchains.append(names.svl)
        _to_endpoints(N, names.svl, spn, sel.local, p.affinity, large, seps)

    # SEP chains
    c = "" if large else f"-m comment --comment {bare} "
    dnat = f"{pp} -j DNAT --to-destination "
    recent = p.affinity
    C = nchains.append
    for e in sel.all_reachable:
        sep = seps[e.ep]
        C(sep)
        N(_new(Rule, (sep, f"{c}-s {e.ip} -j KUBE-MARK-MASQ")))
        if recent:
            N(_new(Rule, (sep, f"{c}-m recent --name {sep} --set {dnat}{e.ep}")))
        else:
            N(_new(Rule, (sep, f"{c}{dnat}{e.ep}")))


def _to_endpoints(N, chain: str, spn: str, eps, affinity: int, large: bool, seps) -> None:
    if affinity:
        for e in eps:
            sep = seps[e.ep]
            c = "" if large else f'-m comment --comment "{spn} -> {e.ep}" '
            N(_new(Rule, (chain, f"{c}-m recent --name {sep} --rcheck --seconds {affinity} --reap -j {sep}")))
    n = len(eps)
    if large:
        for i in range(n - 1):
            N(_new(Rule, (chain, f"-m statistic --mode random --probability {_prob_cache.get(n - i) or probability(n - i)} "
                                 f"-j {seps[eps[i].ep]}")))
        N(_new(Rule, (chain, f"-j {seps[eps[-1].ep]}")))
        return
    last = n - 1
    for i, e in enumerate(eps):
        c = f'-m comment --comment "{spn} -> {e.ep}" '
        if i < last:
            N(_new(Rule, (chain, f"{c}-m statistic --mode random --probability {probability(n - i)} -j {seps[e.ep]}")))
        else:
            N(_new(Rule, (chain, f"{c}-j {seps[e.ep]}")))
