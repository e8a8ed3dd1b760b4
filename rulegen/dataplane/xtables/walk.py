"""The xtables walk: one new connection through iptables rules as the kernel would (for the tracers).

Owns the order of hooks and tables for a new connection, the chain walk
(jump, goto, RETURN, policies), the effect of each target on the packet,
and the splitting of a walk into weighted paths at `statistic` rules.

Order (netfilter hook priorities; nat is consulted only for a connection's
first packet, destination NAT before routing, source NAT at the last hook):

* from outside or from a pod: raw, mangle, nat PREROUTING → routing →
  to a node address: mangle, filter, security, nat INPUT;
  otherwise: mangle, filter, security FORWARD, then mangle, nat POSTROUTING;
* from the node itself: raw, mangle, nat OUTPUT → re-routing → filter,
  security OUTPUT → mangle, nat POSTROUTING; to a node address the packet
  then loops back through `lo` (raw, mangle PREROUTING, mangle, filter,
  security INPUT; nat is not consulted again, the connection is already NATed).

Tables missing from the rules are skipped. The tracer understands exactly
what `matchers` evaluates; any other match, option or target stops the
trace with a `TraceError` naming the rule (only rules the packet reaches
are evaluated, so unknown rules elsewhere in a node's dump do no harm).

Two places in that order belong to the kernel's other packet handlers, not
to xtables: `local-in` (after filter and security INPUT, before nat INPUT:
where IPVS takes packets for a local address) and `local-out` (after nat
OUTPUT and re-routing: where IPVS takes the node's own packets). A tracer
that models such a handler passes a `Step` for it; without one the walk goes
straight on. A step may split the connection into branches whose shares it
cannot know (a scheduler that counts live connections): such a path carries
`probability=None`, the reason, and the share of the group it belongs to.
`-m set` matches read the sets a tracer passes (`sets`: name →
`matchers.SetMembers`), so IPVS mode's compiled sets and a node's
`ipset save` are read alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Mapping, Protocol

from ...trace.model import Hop, Packet, Path, TraceError
from . import matchers as M
from .matchers import Unsupported
from .model import BUILTIN_CHAINS, Ruleset
from .spec import Match, Spec, SpecError, parse_spec

PRE = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("nat", "PREROUTING"), ("route", "in"))
TO_LOCAL = (("mangle", "INPUT"), ("filter", "INPUT"), ("security", "INPUT"), ("step", "local-in"), ("nat", "INPUT"),
            ("deliver", "local"))
FORWARD = (("mangle", "FORWARD"), ("filter", "FORWARD"), ("security", "FORWARD"),
           ("mangle", "POSTROUTING"), ("nat", "POSTROUTING"), ("deliver", "out"))
OUT = (("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("nat", "OUTPUT"), ("route", "out"), ("step", "local-out"),
       ("filter", "OUTPUT"), ("security", "OUTPUT"), ("mangle", "POSTROUTING"), ("nat", "POSTROUTING"),
       ("route", "loop"))
# A packet a step sends on again as the node's own (IPVS's NAT forwarding does):
# the OUTPUT hooks but nat (the connection's destination NAT is settled), then
# POSTROUTING, where source NAT is still open.
RESENT = (("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("route", "out"), ("filter", "OUTPUT"), ("security", "OUTPUT"),
          ("mangle", "POSTROUTING"), ("nat", "POSTROUTING"), ("route", "loop"))
LOOP_IN = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("mangle", "INPUT"), ("filter", "INPUT"),
           ("security", "INPUT"), ("deliver", "local"))

MAX_PATHS = 20000
MAX_STEPS = 2_000_000
MAX_DEPTH = 64  # deeper than any real chain nesting; the kernel refuses loops at load time


@dataclass(frozen=True)
class Branch:
    """One way a step sends the packet on.

    `share` is the fraction of the connections reaching the step that take
    this branch, or None when the step cannot know it (`unknown` says why;
    `weight` is what the step weighs it by). `then` replaces the hooks
    still to come (None: carry on), `verdict` ends the path there.
    """

    share: Fraction | None
    packet: Packet
    hop: Hop
    then: tuple[tuple[str, str], ...] | None = None
    verdict: str | None = None
    unknown: str = ""
    weight: int | None = None
    affinity: int | None = None
    notes: tuple[str, ...] = ()


class Step(Protocol):
    """A packet handler outside xtables: None (or no branch) when the packet is not for it."""

    def __call__(self, pkt: Packet) -> list[Branch] | None: ...


@dataclass
class Rules:
    """The rules to walk: table → chain → rule specs, with built-in policies.

    `origin` names where a built-in chain's rules came from when the tracer
    supplied them itself (kube-proxy's jump rules), for error messages.
    """

    source: str
    family: int
    chains: dict[str, dict[str, list[str]]]
    policies: dict[tuple[str, str], str] = field(default_factory=dict)
    origin: dict[tuple[str, str], str] = field(default_factory=dict)
    _recent: dict[str, int] | None = None

    @classmethod
    def of(cls, rs: Ruleset, source: str,
           jumps: tuple[tuple[str, str, str], ...] = (), jump_source: str = "kube-proxy jump rules") -> "Rules":
        chains: dict[str, dict[str, list[str]]] = {}
        policies: dict[tuple[str, str], str] = {}
        for t in rs.tables:
            by = t.by_chain()
            for b in BUILTIN_CHAINS.get(t.name, ()):
                by.setdefault(b, [])
            chains[t.name] = by
            for name, pol in t.policies:
                policies[(t.name, name)] = pol
        origin: dict[tuple[str, str], str] = {}
        # Each jump is inserted at position 1, in list order: the last one for a chain ends up first.
        for table, chain, spec in jumps:
            tab = chains.setdefault(table, {b: [] for b in BUILTIN_CHAINS.get(table, ())})
            tab.setdefault(chain, []).insert(0, spec)
            origin[(table, chain)] = jump_source
        return cls(source, rs.family, chains, policies, origin)

    def has_builtin_rules(self, tables: tuple[str, ...] = ("filter", "nat")) -> bool:
        for t in tables:
            for b in BUILTIN_CHAINS.get(t, ()):
                if self.chains.get(t, {}).get(b):
                    return True
        return False

    def recent_seconds(self, name: str) -> int | None:
        """The `--seconds` of the rules that check recent list `name` (the affinity timeout)."""
        if self._recent is None:
            found: dict[str, int] = {}
            for tab in self.chains.values():
                for specs in tab.values():
                    for s in specs:
                        if "--rcheck" not in s and "--update" not in s:
                            continue
                        try:
                            m = parse_spec(s).match("recent")
                        except SpecError:
                            continue
                        if m is None:
                            continue
                        n, sec = m.get("--name"), m.get("--seconds")
                        if n and n.values and sec and sec.values and sec.values[0].isdigit():
                            found.setdefault(n.values[0], int(sec.values[0]))
            self._recent = found
        return self._recent.get(name)


@dataclass
class _Walk:
    """One path while it is being walked; `fork` copies it at a random rule."""

    pkt: Packet
    prob: Fraction
    hops: list[Hop]
    hooks: list[tuple[str, str]]
    stack: list[list]  # frames [chain, next rule index]
    masq: bool = False
    affinity: int | None = None
    key: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unknown: str = ""  # why this path's share is not known (a step could not say)
    group: tuple | None = None  # (branch key, share) of the group of paths an unknown split made
    weight: int | None = None

    def fork(self) -> "_Walk":
        return _Walk(self.pkt, self.prob, list(self.hops), list(self.hooks), [list(f) for f in self.stack],
                     self.masq, self.affinity, list(self.key), list(self.notes), self.unknown, self.group,
                     self.weight)


@dataclass(frozen=True)
class _Ctx:
    table: str
    chain: str
    number: int
    spec: str
    hook: str  # the built-in chain being traversed


class Engine:
    """Walks packets through `rules` for a node owning `node_ips`.

    `out_iface` is where routing sends a packet that leaves the node; a
    packet for a pod on this node leaves on `pod_iface(dst)` instead, when
    that names one (the node routes its own pods' addresses to their
    interfaces, not to its uplink).
    """

    def __init__(self, rules: Rules, node_ips: tuple[str, ...] | frozenset[str], out_iface: str = "eth0",
                 pod_iface: Callable[[str], str | None] | None = None, *,
                 sets: Mapping[str, M.SetMembers] | None = None, bridged: frozenset[str] = frozenset(),
                 steps: Mapping[str, Step] | None = None) -> None:
        """NODE_IPS: every address LOCAL to the node; SETS: the ipsets `-m set` reads; BRIDGED: interfaces
        that are bridges (a packet in on one came through a bridge port: `physdev --physdev-is-in`);
        STEPS: handlers for the `local-in` / `local-out` places (see the module's docstring)."""
        self.rules = rules
        self.local = frozenset(node_ips)
        self.out_iface = out_iface
        self.pod_iface = pod_iface
        self.sets = sets
        self.bridged = bridged
        self.handlers = dict(steps or {})
        self.steps = 0

    def _out(self, dst: str) -> tuple[str, str]:
        """The interface routing picks for `dst` (not a node address), and why, for the hop text."""
        iface = self.pod_iface(dst) if self.pod_iface is not None else None
        if iface:
            return iface, f"out {iface}, to a pod on this node"
        return self.out_iface, f"out {self.out_iface}"

    # ------------------------------------------------------------------ errors

    def _err(self, ctx: _Ctx, message: str) -> TraceError:
        src = self.rules.origin.get((ctx.table, ctx.chain), self.rules.source)
        return TraceError(src, ctx.table, ctx.chain, ctx.number, ctx.spec, message)

    # ------------------------------------------------------------------ the walk

    def run(self, pkt: Packet, hook: str) -> list[Path]:
        hooks = list(OUT if hook == "OUTPUT" else PRE)
        work = [_Walk(pkt, Fraction(1), [], hooks, [])]
        done: list[Path] = []
        while work:
            w = work.pop()
            done.append(self._advance(w, work))
            if len(done) + len(work) > MAX_PATHS:
                raise TraceError(self.rules.source, "-", "-", 0, "",
                                 f"more than {MAX_PATHS} possible paths; the trace would not be readable")
        done.sort(key=lambda p: p.key)
        return done

    def _advance(self, w: _Walk, work: list[_Walk]) -> Path:
        while w.hooks:
            table, chain = w.hooks[0]
            if table == "route":
                w.hooks.pop(0)
                self._route(w, chain)
                continue
            if table == "step":
                w.hooks.pop(0)
                handler = self.handlers.get(chain)
                if handler is not None:
                    self._step(w, handler(w.pkt) or [], work)
                continue
            if table == "end":
                return self._finish(w, chain, "")
            if table == "deliver":
                return self._finish(w, "DNAT" if w.pkt.dnat else "ACCEPT", chain)
            if table not in self.rules.chains:
                w.hooks.pop(0)
                continue
            verdict = self._hook(w, table, chain, work)
            w.hooks.pop(0)
            w.stack = []
            if verdict != "ACCEPT":
                return self._finish(w, verdict, "")
        return self._finish(w, "DNAT" if w.pkt.dnat else "ACCEPT", "out")

    def _finish(self, w: _Walk, verdict: str, where: str) -> Path:
        p = w.pkt
        if verdict in ("DNAT", "ACCEPT"):
            dest = p.dst_endpoint
            if where == "local":
                text = f"delivered to {dest} on this node"
            else:
                text = f"sent on to {dest}" + (f" via {p.out_iface}" if p.out_iface else "")
            w.hops.append(Hop("deliver", "", "", 0, text, verdict))
        notes = tuple(n.replace("{endpoint}", p.dst_endpoint) for n in w.notes)
        if w.unknown:
            return Path(None, verdict, tuple(w.hops), p, w.masq, w.affinity, tuple(w.key), notes,
                        w.unknown, w.group, w.weight)
        return Path(w.prob, verdict, tuple(w.hops), p, w.masq, w.affinity, tuple(w.key), notes, weight=w.weight)

    def _step(self, w: _Walk, branches: list[Branch], work: list[_Walk]) -> None:
        """Send W on along each branch a step chose (forks for all but the first)."""
        if not branches:
            return
        key, share = tuple(w.key), w.prob
        walks = [w] + [w.fork() for _ in branches[1:]]
        for i, (b, x) in enumerate(zip(branches, walks)):
            if len(branches) > 1:
                x.key.append(i)
            if b.share is None:
                x.unknown, x.group = b.unknown, (key, share)
            else:
                x.prob = share * b.share
            x.pkt = b.packet
            x.hops.append(b.hop)
            x.notes.extend(b.notes)
            x.weight = b.weight
            if b.affinity is not None:
                x.affinity = b.affinity
            if b.verdict is not None:
                x.hooks = [("end", b.verdict)]
            elif b.then is not None:
                x.hooks = list(b.then)
            if x is not w:
                work.append(x)

    def _route(self, w: _Walk, which: str) -> None:
        p = w.pkt
        local = M.is_local(p.dst, self.local)
        if which == "in":
            if local:
                w.hooks[0:0] = TO_LOCAL
                w.hops.append(Hop("route", "", "", 0, f"routing: {p.dst} is an address of this node",
                                  "to the node itself (INPUT)"))
            else:
                out, why = self._out(p.dst)
                w.pkt = replace(p, out_iface=out)
                w.hooks[0:0] = FORWARD
                w.hops.append(Hop("route", "", "", 0, f"routing: {p.dst} is not an address of this node",
                                  f"forwarded (FORWARD, {why})"))
        elif which == "out":
            out, why = ("lo", "out lo") if local else self._out(p.dst)
            w.pkt = replace(p, out_iface=out)
            w.hops.append(Hop("route", "", "", 0, f"routing: {p.dst} is " +
                              ("an address of this node" if local else "not an address of this node"), why))
        elif which == "loop":
            if local:
                w.pkt = replace(p, in_iface="lo", out_iface=None)
                w.hooks[0:0] = LOOP_IN
                w.hops.append(Hop("route", "", "", 0, "the packet loops back through lo to this node",
                                  "to the node itself (INPUT)"))
            else:
                w.hooks[0:0] = (("deliver", "out"),)

    def _hook(self, w: _Walk, table: str, hook: str, work: list[_Walk]) -> str:
        tab = self.rules.chains[table]
        if hook not in tab:
            return "ACCEPT"
        if not w.stack:
            w.stack.append([hook, 0])
        while w.stack:
            frame = w.stack[-1]
            cname, idx = frame
            specs = tab[cname]
            if idx >= len(specs):
                w.stack.pop()
                continue
            frame[1] = idx + 1
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise TraceError(self.rules.source, table, cname, idx + 1, specs[idx],
                                 f"more than {MAX_STEPS} rule evaluations (a loop through goto?)")
            ctx = _Ctx(table, cname, idx + 1, specs[idx], hook)
            try:
                sp = parse_spec(specs[idx])
            except SpecError as e:
                raise self._err(ctx, f"cannot read the rule: {e}") from None
            res, sets = self._matches(sp, w.pkt, ctx)
            if res is False:
                continue
            chance = None
            if res is not True:
                alt = w.fork()
                alt.prob *= 1 - res
                alt.key.append(1)
                alt.hops.append(Hop("skip", table, cname, idx + 1, _line(cname, specs[idx]),
                                    "not taken", 1 - res))
                work.append(alt)
                w.prob *= res
                w.key.append(0)
                chance = res
            for name in sets:
                secs = self.rules.recent_seconds(name)
                w.affinity = secs
                if secs:
                    w.notes.append(f"session affinity: later connections from {w.pkt.src} within {secs} seconds "
                                   f"of the last one go to the same endpoint ({{endpoint}}) (recent list {name}); "
                                   "this trace is a first connection, so no earlier choice applies")
                else:
                    w.notes.append(f"recent list {name} records {w.pkt.src}; no rule checks it")
            verdict, text = self._target(w, sp, ctx)
            w.hops.append(Hop("rule", table, cname, idx + 1, _line(cname, specs[idx]), text, chance))
            if verdict is not None:
                if verdict in ("DROP", "REJECT") and sp.comment:
                    w.notes.append(f"{verdict} in {table} {cname}: {sp.comment}")
                return verdict
        pol = self.rules.policies.get((table, hook), "ACCEPT")
        if pol not in ("ACCEPT", "DROP"):
            raise TraceError(self.rules.source, table, hook, 0, "", f"unknown policy {pol}")
        if pol != "ACCEPT":
            w.hops.append(Hop("policy", table, hook, 0, f":{hook} {pol}", f"policy {pol}"))
            w.notes.append(f"{pol} by the policy of {table} {hook}: no rule there accepted the packet")
        return pol

    # ------------------------------------------------------------------ checking a rule

    def _check(self, sp: Spec, ctx: _Ctx) -> None:
        """Every part of a reached rule must be understood, matched or not."""
        why = _check_text(ctx.spec)
        if why is None:
            try:
                _check_chain_target(sp, self.rules.chains[ctx.table], ctx.table)
                return
            except Unsupported as e:
                why = str(e)
        raise self._err(ctx, why)

    # ------------------------------------------------------------------ matches

    def _matches(self, sp: Spec, pkt: Packet, ctx: _Ctx) -> tuple[bool | Fraction, list[str]]:
        self._check(sp, ctx)
        try:
            for o in sp.base:
                v = o.values[0]
                n = o.name
                if n == "-s":
                    r = M.in_cidr(pkt.src, v)
                elif n == "-d":
                    r = M.in_cidr(pkt.dst, v)
                elif n == "-p":
                    r = M.proto_match(pkt.proto, v)
                elif n == "-i":
                    r = M.iface_match(pkt.in_iface, v)
                else:  # -o
                    r = M.iface_match(pkt.out_iface, v)
                if r == o.negated:
                    return False, []
            prob = Fraction(1)
            sets: list[str] = []
            for m in sp.matches:
                r = _MATCHES[m.module](self, m, pkt, sets)
                if r is False:
                    return False, []
                if r is not True:
                    prob *= r
            if prob == 0:
                return False, []
            return (True if prob == 1 else prob), sets
        except Unsupported as e:
            raise self._err(ctx, str(e)) from None

    def _m_proto(self, m: Match, pkt: Packet, sets: list[str]) -> bool:
        if pkt.proto != m.module:
            return False
        for o in m.opts:
            n, vals = o.name, o.values
            if n in ("--dport", "--destination-port"):
                r = M.port_match(pkt.dport, vals[0])
            elif n in ("--sport", "--source-port"):
                r = M.port_match(pkt.sport, vals[0])
            elif n == "--syn":
                r = True  # the first packet of a TCP connection is a bare SYN
            else:  # --tcp-flags
                r = M.tcp_flags_match(vals[0], vals[1])
            if r == o.negated:
                return False
        return True

    def _m_noop(self, m: Match, pkt: Packet, sets: list[str]) -> bool:
        return True

    def _m_addrtype(self, m: Match, pkt: Packet, sets: list[str]) -> bool:
        for o in m.opts:
            ip = pkt.src if o.name == "--src-type" else pkt.dst
            if M.addrtype_match(ip, o.values[0], self.local) == o.negated:
                return False
        return True

    def _m_mark(self, m: Match, pkt: Packet, sets: list[str]) -> bool:
        for o in m.opts:
            if M.mark_match(pkt.mark, o.values[0]) == o.negated:
                return False
        return True

    def _m_statistic(self, m: Match, pkt: Packet, sets: list[str]) -> bool | Fraction:
        p = Fraction(1)
        for o in m.opts:
            if o.name == "--probability":
                q = M.probability(o.values[0])
                p *= (1 - q) if o.negated else q
        return True if p == 1 else (False if p == 0 else p)

    def _m_recent(self, m: Match, pkt: Packet, sets: list[str]) -> bool:
        cmd = next(o for o in m.opts if o.name in _RECENT_CMDS)
        name = m.get("--name")
        list_name = name.values[0] if name and name.values else "DEFAULT"
        if cmd.name == "--set":
            if not cmd.negated:
                sets.append(list_name)
            return not cmd.negated
        # A new connection from this client: the list has no entry for it yet.
        return cmd.negated

    def _m_conntrack(self, m: Match, pkt: Packet, sets: list[str]) -> bool:
        for o in m.opts:
            if M.ctstate_match(o.values[0], pkt.dnat, pkt.snat) == o.negated:
                return False
        return True

    def _m_set(self, m: Match, pkt: Packet, sets: list[str]) -> bool:
        for o in m.opts:
            name, flags = o.values
            if M.set_match(self.sets, name, flags, pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport) == o.negated:
                return False
        return True

    def _m_ipvs(self, m: Match, pkt: Packet, sets: list[str]) -> bool:
        # The kernel's rule: a packet IPVS did not handle matches only a negated --ipvs.
        if pkt.virtual is None:
            o = m.get("--ipvs")
            return o is not None and o.negated
        for o in m.opts:
            if M.ipvs_match(pkt.virtual, o.name, o.values[0] if o.values else None) == o.negated:
                return False
        return True

    def _m_physdev(self, m: Match, pkt: Packet, sets: list[str]) -> bool:
        for o in m.opts:
            # Came in through a bridge port; a routed packet is never being bridged.
            r = pkt.in_iface in self.bridged if o.name == "--physdev-is-in" else False
            if r == o.negated:
                return False
        return True

    # ------------------------------------------------------------------ targets

    def _target(self, w: _Walk, sp: Spec, ctx: _Ctx) -> tuple[str | None, str]:
        """Apply the rule's target; (verdict that ends this hook or None, what happened)."""
        t = sp.target
        table = ctx.table
        if t is None:
            return None, "no target: continue with the next rule"
        if t not in _TARGET_OPTS:  # a user chain (_check made sure it exists)
            if any(f[0] == t for f in w.stack) or len(w.stack) >= MAX_DEPTH:
                raise self._err(ctx, f"jump to {t} loops back into a chain already being walked")
            if sp.goto:
                w.stack.pop()
                w.stack.append([t, 0])
                return None, f"goto {t}"
            w.stack.append([t, 0])
            return None, f"jump {t}"
        try:
            if t == "RETURN":
                w.stack.pop()
                return None, "RETURN" + (" (end of the built-in chain: its policy decides)" if not w.stack else "")
            if t == "ACCEPT":
                return "ACCEPT", "ACCEPT"
            if t == "DROP":
                return "DROP", "DROP"
            if t == "REJECT":
                return "REJECT", "REJECT"
            if t == "MARK":
                mark = w.pkt.mark
                for o in sp.target_opts:
                    mark = M.mark_target(mark, o.name, o.values[0])
                w.pkt = replace(w.pkt, mark=mark)
                return None, f"mark is now {hex(mark)}"
            if t == "DNAT":
                if table != "nat" or ctx.hook not in ("PREROUTING", "OUTPUT"):
                    raise Unsupported(f"DNAT in {table} {ctx.hook} (only nat PREROUTING/OUTPUT)")
                ip, port = M.split_endpoint(sp.target_opt("--to-destination").values[0])
                if (":" in ip) != (":" in w.pkt.dst):
                    raise Unsupported(f"DNAT to {ip}, another address family")
                before = w.pkt.dst_endpoint
                w.pkt = replace(w.pkt, dst=ip, dport=port if port is not None else w.pkt.dport, dnat=True)
                return "ACCEPT", f"DNAT {before} → {w.pkt.dst_endpoint}"
            if t in ("MASQUERADE", "SNAT"):
                if table != "nat" or ctx.hook not in ("POSTROUTING", "INPUT") or (
                        t == "MASQUERADE" and ctx.hook != "POSTROUTING"):
                    raise Unsupported(f"{t} in {table} {ctx.hook}")
                if t == "MASQUERADE":
                    text = "MASQUERADE: the source becomes the node's address on " + (w.pkt.out_iface or "the way out")
                    w.pkt = replace(w.pkt, snat=True)
                else:
                    ip, _ = M.split_endpoint(sp.target_opt("--to-source").values[0])
                    text = f"SNAT: the source becomes {ip}"
                    w.pkt = replace(w.pkt, src=ip, snat=True)
                w.masq = True
                return "ACCEPT", text
            # LOG
            return None, "LOG, continue"
        except Unsupported as e:
            raise self._err(ctx, str(e)) from None


def _line(chain: str, spec: str) -> str:
    return f"-A {chain} {spec}" if spec else f"-A {chain}"


# Options each match understands, with how many values each takes.
_PORTS = {"--dport": 1, "--destination-port": 1, "--sport": 1, "--source-port": 1}
_MATCH_OPTS: dict[str, dict[str, int]] = {
    "tcp": {**_PORTS, "--syn": 0, "--tcp-flags": 2},
    "udp": dict(_PORTS),
    "sctp": dict(_PORTS),
    "comment": {"--comment": 1},
    "nfacct": {"--nfacct-name": 1},
    "addrtype": {"--src-type": 1, "--dst-type": 1},
    "mark": {"--mark": 1},
    "statistic": {"--mode": 1, "--probability": 1},
    "recent": {"--name": 1, "--set": 0, "--rcheck": 0, "--update": 0, "--remove": 0, "--seconds": 1, "--reap": 0,
               "--hitcount": 1, "--rttl": 0, "--rsource": 0, "--rdest": 0, "--mask": 1},
    "conntrack": {"--ctstate": 1},
    "state": {"--state": 1},
    "set": {"--match-set": 2},
    "ipvs": {"--ipvs": 0, "--vproto": 1, "--vaddr": 1, "--vport": 1, "--vdir": 1},
    "physdev": {"--physdev-is-in": 0, "--physdev-is-bridged": 0},
}
_RECENT_CMDS = ("--set", "--rcheck", "--update", "--remove")
_LOG_OPTS = {"--log-prefix": 1, "--log-level": 1, "--log-tcp-sequence": 0, "--log-tcp-options": 0,
             "--log-ip-options": 0, "--log-uid": 0, "--log-macdecode": 0}
_TARGET_OPTS: dict[str, dict[str, int]] = {
    "RETURN": {}, "ACCEPT": {}, "DROP": {},
    "REJECT": {"--reject-with": 1},
    "MARK": {"--set-xmark": 1, "--set-mark": 1, "--or-mark": 1, "--and-mark": 1, "--xor-mark": 1},
    "DNAT": {"--to-destination": 1, "--random": 0, "--persistent": 0},
    "SNAT": {"--to-source": 1, "--random": 0, "--random-fully": 0, "--persistent": 0},
    "MASQUERADE": {"--random": 0, "--random-fully": 0, "--to-ports": 1},
    "LOG": _LOG_OPTS,
}


@lru_cache(maxsize=1 << 16)
def _check_text(spec: str) -> str | None:
    """Why the tracer cannot evaluate this rule body (a chain target's existence aside), or None."""
    try:
        _check_parts(parse_spec(spec))
    except SpecError as e:
        return f"cannot read the rule: {e}"
    except Unsupported as e:
        return str(e)
    return None


def _check_chain_target(sp: Spec, chains: dict[str, list[str]], table: str) -> None:
    t = sp.target
    if t is None or t in _TARGET_OPTS:
        return
    if t in BUILTIN_CHAINS.get(table, ()):
        raise Unsupported(f"jump to the built-in chain {t}")
    if t not in chains:
        raise Unsupported(f"unknown target {t!r} (neither a chain of table {table} "
                          "nor a target the tracer evaluates)")
    if sp.target_opts:
        raise Unsupported(f"options after the chain name {t}")


def _check_parts(sp: Spec) -> None:
    for o in sp.base:
        v = o.values[0]
        if o.name in ("-s", "-d"):
            M.network(v)
        elif o.name == "-p":
            M.proto_match("tcp", v)
    for m in sp.matches:
        known = _MATCH_OPTS.get(m.module)
        if known is None:
            raise Unsupported(f"unknown match module {m.module!r}")
        for o in m.opts:
            if o.name not in known:
                raise Unsupported(f"option {o.name} of match {m.module!r}")
            if len(o.values) != known[o.name]:
                raise Unsupported(f"option {o.name} of match {m.module!r} takes {known[o.name]} value(s)")
        _check_values(m)
    t = sp.target
    if t is None:
        if sp.target_opts:
            raise Unsupported("target options without a target")
        return
    known = _TARGET_OPTS.get(t)
    if known is None:
        return  # a chain: _check_chain_target
    for o in sp.target_opts:
        if o.name not in known or o.negated:
            raise Unsupported(f"option {o.name} of target {t}")
        if len(o.values) != known[o.name]:
            raise Unsupported(f"option {o.name} of target {t} takes {known[o.name]} value(s)")
    if t == "MARK":
        if not sp.target_opts:
            raise Unsupported("MARK without an option")
        for o in sp.target_opts:
            M.mark_target(0, o.name, o.values[0])
    elif t == "DNAT":
        to = sp.target_opt("--to-destination")
        if to is None:
            raise Unsupported("DNAT without --to-destination")
        M.split_endpoint(to.values[0])
    elif t == "SNAT":
        to = sp.target_opt("--to-source")
        if to is None:
            raise Unsupported("SNAT without --to-source")
        M.split_endpoint(to.values[0])


def _check_values(m: Match) -> None:
    mod = m.module
    if mod in ("tcp", "udp", "sctp"):
        for o in m.opts:
            if o.name == "--tcp-flags":
                M.tcp_flags_match(o.values[0], o.values[1])
            elif o.values:
                M.port_match(0, o.values[0])
    elif mod == "addrtype":
        for o in m.opts:
            M.addrtype_match("127.0.0.1", o.values[0], ())
    elif mod == "mark":
        for o in m.opts:
            M.mark_match(0, o.values[0])
    elif mod == "statistic":
        mode = m.get("--mode")
        if mode is None or mode.values != ("random",):
            raise Unsupported("statistic other than --mode random (nth counts packets; "
                              "which connection is the nth cannot be known)")
        if m.get("--probability") is None:
            raise Unsupported("statistic --mode random without --probability")
        for o in m.opts:
            if o.name == "--probability":
                M.probability(o.values[0])
    elif mod == "recent":
        cmds = [o for o in m.opts if o.name in _RECENT_CMDS]
        if len(cmds) != 1:
            raise Unsupported("recent needs exactly one of --set, --rcheck, --update, --remove")
    elif mod in ("conntrack", "state"):
        for o in m.opts:
            M.ctstate_match(o.values[0], False, False)
    elif mod == "set":
        for o in m.opts:
            if any(w not in ("src", "dst") for w in o.values[1].split(",")):
                raise Unsupported(f"set flags {o.values[1]!r} (src and dst are evaluated)")
    elif mod == "ipvs":
        for o in m.opts:
            if o.values:
                M.ipvs_match(("tcp", "0.0.0.0", 0), o.name, o.values[0])


_MATCHES: dict[str, Callable] = {
    "tcp": Engine._m_proto,
    "udp": Engine._m_proto,
    "sctp": Engine._m_proto,
    "comment": Engine._m_noop,
    "nfacct": Engine._m_noop,
    "addrtype": Engine._m_addrtype,
    "mark": Engine._m_mark,
    "statistic": Engine._m_statistic,
    "recent": Engine._m_recent,
    "conntrack": Engine._m_conntrack,
    "state": Engine._m_conntrack,
    "set": Engine._m_set,
    "ipvs": Engine._m_ipvs,
    "physdev": Engine._m_physdev,
}
