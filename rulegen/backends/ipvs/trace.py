"""IPVS mode's tracer: one new connection through the glue, IPVS's virtual servers, and the glue again.

A packet for a Service address goes through the iptables glue's nat
PREROUTING (or OUTPUT, from the node), whose KUBE-SERVICES rules match the
ipsets and mark what must be masqueraded. The address is local (bound to
kube-ipvs0, or a node address for NodePorts), so routing hands the packet
to INPUT, where the filter glue (KUBE-IPVS-FILTER, the source-range
firewall) may stop it. Then IPVS takes it if a virtual server has its
protocol, address and port, picks a real server under the scheduler and
sends the packet on to it as the node's own (OUTPUT, then POSTROUTING,
where KUBE-POSTROUTING masquerades marked packets and KUBE-LOOP-BACK the
hairpin ones). From the node itself IPVS takes the packet right after nat
OUTPUT. The xtables part is the shared walk (`dataplane/xtables/walk.py`),
fed with the state's sets for `-m set`; the IPVS part is the `Step` here.

What each scheduler lets the trace say about a new connection:

- rr: every real server of weight above 0 gets an equal share (the kernel's
  rr ignores the weights beyond skipping weight 0);
- wrr: weight over the sum of the weights (weight 0 left out);
- lc, wlc, sed, nq, lblc, lblcr, ovf, twos: the share depends on the live
  connection counts; the trace says so and shows each real server's weight;
- sh, mh: the client's source address (with its port under the `sh-port` /
  `mh-port` flag, which kube-proxy sets for mh) is hashed, so one client
  keeps reaching one real server: which one is not in the rules;
- dh: the destination address is hashed: every connection to this virtual
  server reaches the same one real server;
- fo: the real server with the highest weight (known when it is unique).

A virtual server without a usable real server answers ICMP port
unreachable (REJECT), as the kernel's IPVS does. Persistence (`-p`, a
Service's ClientIP affinity) is noted with its timeout.
"""

from __future__ import annotations

import os
from dataclasses import replace
from fractions import Fraction
from typing import Any

import msgspec

from ...dataplane.xtables.matchers import SetMembers, is_local
from ...dataplane.xtables.model import BUILTIN_CHAINS
from ...dataplane.xtables.spec import SpecError, parse_spec
from ...dataplane.xtables.parse import read_source
from ...dataplane.xtables.walk import RESENT, Branch, Engine, Rules
from ...settings import Settings
from ...trace import entry as E
from ...trace.model import Hop, Packet, TraceError, TraceResult
from .compile import JUMP_RULES
from .ir import FLAG_SCHED2, IPVSState, VirtualServer, sched_flag_names, set_name
from .parse import parse_ipset, read
from .render import FILES, hostport

BASE_CHAINS = frozenset(c for cs in BUILTIN_CHAINS.values() for c in cs)

# Schedulers whose choice follows the live connection counts, in the kernel's words.
LOAD_SCHEDULERS = {
    "lc": "least-connection: the real server with the fewest active connections",
    "wlc": "weighted least-connection: the fewest active connections per unit of weight",
    "sed": "shortest expected delay: the lowest (active connections + 1) / weight",
    "nq": "never queue: an idle real server if there is one, else the shortest expected delay",
    "lblc": "locality-based least-connection: the real server last used for this destination address, "
            "unless it is overloaded",
    "lblcr": "locality-based least-connection with replication: a set of real servers per destination address, "
             "the least loaded of them",
    "ovf": "overflow: the highest-weight real server until its active connections exceed its weight",
    "twos": "random two choices: two real servers drawn by weight, the less loaded of the two",
}
_PROTO_NAMES = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}


class IPVSTracer:
    def trace_compiled(self, compiled: Any, src: str | None, dst_ip: str, dst_port: int, proto: str = "tcp",
                       **kw: Any) -> TraceResult:
        kw.setdefault("source", "compiled rules")
        return trace_state(compiled.ir, compiled.settings, src, dst_ip, dst_port, proto, plan=compiled.plan,
                           jumps=JUMP_RULES, **kw)

    def read(self, path: str, ip_family: str | None) -> tuple[IPVSState, str]:
        fam = {"ipv4": 4, "ipv6": 6}.get(ip_family or "")
        return read(path, fam), path

    def trace_saved(self, ir: IPVSState, settings: Settings, src: str | None, dst_ip: str, dst_port: int,
                    proto: str = "tcp", **kw: Any) -> TraceResult:
        """A node's dump (ipvsadm -Sn, ipset save, iptables-save): the whole node, foreign chains included.

        kw `ipsets` (a path): the node's `ipset save`, in place of the dump's own
        ipset.rules (kube-ipvs0's addresses then come from its KUBE-IPVS-IPS).
        """
        path = kw.pop("ipsets", None)
        source = kw.get("source", "rules")
        sets_source = _sets_name(source)
        if path is not None:
            ir, sets_source = with_ipsets(ir, path)
        # A node's dump: what the walk cannot decide (a set the dump lacks, a CNI's module) splits the
        # trace into assumed branches instead of stopping it, as for an iptables node.
        kw.setdefault("strict", False)
        return trace_state(ir, settings, src, dst_ip, dst_port, proto, sets_source=sets_source, **kw)


def _sets_name(source: str) -> str:
    """Where the dump's sets were read: a folder's ipset.rules, else the combined file's ipset section."""
    if os.path.isdir(source):
        return os.path.join(source, FILES["ipset"])
    return f"{source}'s ipset section"


def with_ipsets(state: IPVSState, path: str) -> tuple[IPVSState, str]:
    """STATE with the sets of PATH (`ipset save` output, `-` for standard input) and the name shown for it."""
    text, name = read_source(path)
    sets = parse_ipset(text, name)
    fam = state.family
    bound = next((s.entries for s in sets if s.name == set_name("KUBE-IPVS-IPS", fam)), ())
    return msgspec.structs.replace(state, ipsets=sets, bound=bound), name


TRACER = IPVSTracer()


def trace_state(state: IPVSState, settings: Settings, src: str | None, dst_ip: str, dst_port: int,
                proto: str = "tcp", *, plan: Any = None, source: str = "rules",
                jumps: tuple[tuple[str, str, str], ...] | None = None, in_iface: str | None = None,
                out_iface: str = E.OUTSIDE_IFACE, sport: int = E.DEFAULT_SPORT,
                pod_cidrs: tuple[str, ...] = (), strict: bool = True, sets_source: str = "",
                routes: tuple[tuple[str, str], ...] = (), pod_iface: str | None = None) -> TraceResult:
    """Follow one new connection `src → dst_ip:dst_port` through STATE (a compile, or a node's dumps).

    `jumps=None` means: the glue's built-in chains as the dump has them, or
    kube-proxy's jumps when it has none (said in the notes). A set the
    glue (or a foreign chain) matches that STATE lacks is undecided: with
    `strict=False` it splits the path into assumed branches naming the set
    and SETS_SOURCE. `routes` and `pod_iface` are the node's routes and pod
    interface, as for an iptables node's trace.
    """
    req = E.request(settings, src, dst_ip, dst_port, proto, state.family)
    fs = req.settings
    notes: list[str] = []
    rs = state.iptables
    if jumps is None:
        rules = Rules.of(rs, source)
        if not rules.has_builtin_rules():
            rules = Rules.of(rs, source, _existing_jumps(rules, JUMP_RULES))
            notes.append("the iptables rules hold no rules in the built-in chains; kube-proxy's IPVS-mode jumps "
                         "(PREROUTING/OUTPUT → KUBE-SERVICES, POSTROUTING → KUBE-POSTROUTING, FORWARD → "
                         "KUBE-FORWARD, INPUT → KUBE-NODE-PORT, KUBE-PROXY-FIREWALL, KUBE-IPVS-FILTER, OUTPUT → "
                         "KUBE-IPVS-OUT-FILTER) were assumed")
    else:
        rules = Rules.of(rs, source, tuple(jumps))

    eps = E.endpoint_nodes(plan)
    bound = frozenset(state.bound)
    entry, iface = E.entry(req.src, req.src_default, req.dst, req.dport, req.proto, fs, plan, eps, pod_cidrs,
                           in_iface, own=bound)
    entry, iface = E.from_pod_iface(entry, iface, fs, in_iface, pod_iface)
    head, tail = E.notes_for(req)
    if req.dst in bound:
        notes.append(f"{req.dst} is bound to kube-ipvs0, so the node takes it as its own address "
                     "(addrtype LOCAL, delivered to INPUT, where IPVS waits)")
        if entry.hook == "OUTPUT" and not E.is_local(req.src, frozenset()) and req.src != req.dst:
            notes.append(f"from the node, a socket that does not choose its source address gets {req.dst} "
                         "itself as the source (the route to a kube-ipvs0 address is local); "
                         f"the trace uses {req.src}")
    notes = head + notes + tail

    pod_if = E.pod_iface(fs)
    # A pod on a bridge (cni0, or the detector's bridge) comes in through a bridge port: physdev sees it.
    det = fs.local_detector()
    bridged = frozenset() if det.iface.endswith("+") else frozenset({pod_if})
    sets = {s.name: SetMembers(s.name, s.type, s.entries) for s in state.ipsets}
    local = frozenset(fs.node_ips) | bound
    step = IPVSStep(state, local)
    to_pod = E.local_pod_iface(fs, eps, pod_cidrs, pod_iface)
    engine = Engine(rules, local, out_iface, to_pod, sets=sets, bridged=bridged,
                    steps={"local-in": step, "local-out": step}, strict=strict,
                    sets_source=sets_source or f"{source}'s ipsets", route=E.router(routes))
    pkt = Packet(req.proto, req.src, sport, req.dst, req.dport, iface)
    paths = engine.run(pkt, entry.hook)
    notes += engine.notes
    waiting = step.lookup(pkt)
    if waiting is not None and any(_stopped_in_input(p) for p in paths):
        notes.append(f"IPVS virtual server {_vs_name(waiting)} never saw this connection: IPVS takes it after "
                     "filter INPUT (the address is local), so a DROP or REJECT reached from INPUT stops it first "
                     "(in iptables mode, DNATed in PREROUTING, a connection to a pod crosses FORWARD instead)")
    if not strict and any(" is not in " in a.reason and a.reason.startswith("ipset ") for p in paths
                          for a in p.assumptions):
        notes.append("some rules match ipsets the dump's sets do not hold: their branches are assumed; pass the "
                     "node's whole `ipset save` with --ipsets (or as the folder's ipset.rules) to decide them")
    if plan is None:
        entry = replace(entry, target=_target_from_state(state, pkt, fs) or entry.target)
    return E.fold(pkt, entry, paths, notes, fs, eps, source, plan is not None, BASE_CHAINS)


def _stopped_in_input(p) -> bool:
    """Did a rule or policy outside kube-proxy's chains, reached from filter INPUT, stop path P before IPVS?"""
    last = next((h for h in reversed(p.hops) if h.kind in ("rule", "policy")), None)
    if p.verdict not in ("DROP", "REJECT") or last is None or last.table != "filter" or last.chain.startswith("KUBE-"):
        return False
    if any(h.kind == "balance" for h in p.hops):
        return False
    entered = next((h.chain for h in reversed(p.hops) if h.table == "filter" and h.chain in BUILTIN_CHAINS["filter"]),
                   None)
    return entered == "INPUT"


def _existing_jumps(rules: Rules, jumps):
    out = []
    for table, chain, spec in jumps:
        try:
            target = parse_spec(spec).target
        except SpecError:
            continue
        if target in rules.chains.get(table, {}):
            out.append((table, chain, spec))
    return tuple(out)


def _target_from_state(state: IPVSState, pkt: Packet, s: Settings) -> str | None:
    """Without the Kubernetes objects, name the destination after the virtual server that has it."""
    vs = IPVSStep(state, frozenset()).lookup(pkt)
    if vs is None:
        return None
    kind = "a kube-ipvs0 address" if vs.address in state.bound else "a node address"
    return f"IPVS virtual server {_vs_name(vs)} on {kind} (per the rules)"


def _vs_name(vs: VirtualServer) -> str:
    if vs.protocol == "fwmark":
        return f"fwmark {vs.port}"
    return f"{_PROTO_NAMES.get(vs.protocol, vs.protocol.upper())} {hostport(vs.address, vs.port)}"


def _weigh(vs: VirtualServer, src: str) -> tuple[list[tuple[Any, Fraction | None, str]], str]:
    """(real server, share or None, why not known) for each candidate, and a line on the choice."""
    alive = [r for r in vs.reals if r.weight > 0]
    sched = vs.scheduler
    if len(alive) == 1:
        return [(alive[0], Fraction(1), "")], f"{sched}: the one real server of weight above 0"
    if sched == "rr":
        return [(r, Fraction(1, len(alive)), "") for r in alive], "round robin: each real server in turn"
    if sched == "wrr":
        total = sum(r.weight for r in alive)
        return ([(r, Fraction(r.weight, total), "") for r in alive],
                f"weighted round robin: weight over the sum of the weights ({total})")
    if sched == "fo":
        top = max(r.weight for r in alive)
        best = [r for r in alive if r.weight == top]
        if len(best) == 1:
            return [(best[0], Fraction(1), "")], "weighted failover: the real server with the highest weight"
        why = "weighted failover among real servers of equal weight: the first in the kernel's list, not in the rules"
        return [(r, None, why) for r in best], why
    if sched in LOAD_SCHEDULERS:
        why = f"depends on live load ({sched}: {LOAD_SCHEDULERS[sched]})"
        return [(r, None, why) for r in alive], why
    if sched in ("sh", "mh"):
        port = "sh-port" in sched_flag_names(sched, vs.flags) or (sched == "mh" and vs.flags & FLAG_SCHED2)
        key = f"source address and port ({src}:…)" if port else f"source address ({src})"
        table = "Maglev table" if sched == "mh" else "256-bucket table"
        why = (f"{sched} hashes the client's {key}: one key always reaches the same real server, which one the "
               f"kernel's {table} decides (over many clients each gets about its weight over the sum)")
        return [(r, None, why) for r in alive], why
    if sched == "dh":
        why = (f"dh hashes the destination address ({vs.address}): every connection to it reaches the same real "
               "server, which one the kernel's 256-bucket table decides")
        return [(r, None, why) for r in alive], why
    why = f"scheduler {sched!r}: rulegen does not know how it chooses"
    return [(r, None, why) for r in alive], why


class IPVSStep:
    """IPVS in the kernel's packet path: finds the virtual server, weighs its real servers, forwards."""

    def __init__(self, state: IPVSState, local: frozenset[str]) -> None:
        self.local = local
        self.by_key = {vs.key: vs for vs in state.virtual_servers}
        self.by_mark = {vs.port: vs for vs in state.virtual_servers if vs.protocol == "fwmark"}

    def lookup(self, pkt: Packet) -> VirtualServer | None:
        # The kernel's order: a firewall-mark service first, then protocol/address/port, then port 0.
        if pkt.mark and pkt.mark in self.by_mark:
            vs = self.by_mark[pkt.mark]
            if (vs.address == "::") == (":" in pkt.dst):
                return vs
        return self.by_key.get((pkt.proto, pkt.dst, pkt.dport)) or self.by_key.get((pkt.proto, pkt.dst, 0))

    def __call__(self, pkt: Packet) -> list[Branch] | None:
        if pkt.virtual is not None:
            return None  # IPVS already handled it (ipvs_property): not scheduled twice
        vs = self.lookup(pkt)
        if vs is None:
            return None
        name = _vs_name(vs)
        settings_ = " ".join(["-s", vs.scheduler] + (["-p", str(vs.timeout)] if vs.persistent else [])
                             + (["-b", ",".join(sched_flag_names(vs.scheduler, vs.flags))]
                                if sched_flag_names(vs.scheduler, vs.flags) else []))
        rule = f"IPVS virtual server {name} ({settings_})"
        if not any(r.weight > 0 for r in vs.reals):
            none = "no real server" if not vs.reals else "no real server of weight above 0"
            hop = Hop("balance", "ipvs", f"IPVS {vs.scheduler}", 0, rule,
                      f"{none}: the kernel answers ICMP port unreachable")
            return [Branch(Fraction(1), pkt, hop, verdict="REJECT",
                           notes=(f"REJECT by IPVS: virtual server {name} has {none}",))]
        weighed, how = _weigh(vs, pkt.src)
        notes: tuple[str, ...] = ()
        if vs.persistent:
            notes = (f"persistence (sessionAffinity ClientIP): later connections from {pkt.src} within "
                     f"{vs.timeout} seconds go to the same real server ({{endpoint}}) of {name}; this trace is a "
                     "first connection, so no earlier choice applies",)
        out = []
        virtual = (vs.protocol, vs.address, vs.port)
        for r, share, why in weighed:
            if r.method != "m":
                raise ForwardingError(vs, r)
            port = r.port or pkt.dport
            moved = replace(pkt, dst=r.address, dport=port, dnat=True, virtual=virtual)
            chose = (f"{share} of new connections" if share is not None else f"share not fixed by the rules: {why}")
            hop = Hop("balance", "ipvs", f"IPVS {vs.scheduler}", 0, f"{rule}: {how}",
                      f"real server {hostport(r.address, port)} (weight {r.weight}), {chose}; "
                      f"masquerading forward: destination now {moved.dst_endpoint}", share)
            # A real server on this node is delivered here; any other is sent on as the node's own packet.
            then = None if is_local(r.address, self.local) else RESENT
            out.append(Branch(share, moved, hop, then=then, unknown=why, weight=r.weight,
                              affinity=vs.timeout if vs.persistent else None, notes=notes))
        return out


class ForwardingError(TraceError):
    """A real server forwarded otherwise than by masquerading: where the packet goes is not followed."""

    def __init__(self, vs: VirtualServer, r: Any) -> None:
        method = {"g": "direct routing", "i": "tunnelling"}.get(r.method, r.method)
        self.source, self.table, self.chain, self.number = "IPVS", "ipvs", _vs_name(vs), 0
        self.spec = f"-r {hostport(r.address, r.port)} -{r.method}"
        self.message = f"real server forwarded by {method}: the tracer follows masquerading (NAT) only"
        ValueError.__init__(self, f"IPVS virtual server {_vs_name(vs)}, real server "
                                  f"{hostport(r.address, r.port)}: {self.message}")
