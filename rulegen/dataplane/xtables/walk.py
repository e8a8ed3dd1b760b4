"""The xtables walk: one new connection through a node's iptables rules as the kernel would (for the tracers).

Owns the order of tables within each hook (the neutral `trace.hooks`
sequence, with xtables' fixed priorities: raw -300, mangle -150, nat -100
for destination and 100 for source NAT, filter 0, security 50), the chain
walk (jump, goto, RETURN, policies), the effect of each target on the
packet and its connection (marks, connection marks, NAT, untracking), the
splitting of a walk into weighted paths at `statistic` rules, and into
assumed paths at matches it cannot decide.

Order, for a connection's first packet:

* from outside or from a pod: PREROUTING (raw, mangle, nat) → routing →
  to a node address: INPUT (mangle, filter, security, nat);
  otherwise: FORWARD (mangle, filter, security), then POSTROUTING
  (mangle, nat);
* from the node itself: routing → OUTPUT (raw, mangle, nat) → re-routing
  after destination NAT → OUTPUT (filter, security) → POSTROUTING (mangle,
  nat); to a node address the packet then loops back through `lo`
  (PREROUTING and INPUT again, without nat: the connection is NATed once).

nat is consulted only for a tracked connection: after NOTRACK or `CT
--notrack` in raw, no NAT happens. Tables missing from the rules are
skipped.

Two places in that order belong to the kernel's other packet handlers, not
to xtables: `local-in` (after filter and security INPUT, before nat INPUT:
where IPVS takes packets for a local address) and `local-out` (after nat
OUTPUT and re-routing: where IPVS takes the node's own packets). A tracer
that models such a handler passes a `Step` for it; without one the walk goes
straight on. A step may split the connection into branches whose shares it
cannot know (a scheduler that counts live connections): such a path carries
`probability=None`, the reason, and the share of the group it belongs to.
`-m set` matches read the sets a tracer passes (`sets`: name → a node's
`ipset save` record, or `matchers.SetMembers`), so IPVS mode's compiled sets
and a node's sets are read alike; with no sets given, a set match is an
open question (below).

Two ways to meet a match the tracer cannot decide. `strict` (rules
rulegen compiled): every part of a reached rule must be understood, and
anything else stops the trace with a `TraceError` naming the rule. Not
strict (a node's whole dump, with its CNI's, Docker's and the firewall's
chains): a match it cannot decide (an ipset whose members it was not
given, a module it does not evaluate) splits the path in two, one taking
the match as true and one as false, each carrying the `Assumption` and
its reason; the same question on one path always gets the same answer;
two assumed branches that reach the same state again join (the answer did
not matter); past `MAX_ASSUMED` assumed branches no more are made and the
rest are taken as not matching, said in `Engine.notes`.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Mapping, Protocol

from ...trace import hooks as H
from ...trace.model import Assumption, Hop, Packet, Path, TraceError
from ..ipset import members as ipset_members
from ..ipset.model import IPSet
from . import matchers as M
from .matchers import Unsupported
from .model import BUILTIN_CHAINS, Ruleset
from .spec import Match, Spec, SpecError, parse_spec

MAX_PATHS = 20000
MAX_STEPS = 2_000_000
MAX_DEPTH = 64  # deeper than any real chain nesting; the kernel refuses loops at load time
MAX_ASSUMED = 64  # assumed branches per trace; past this, undecidable matches are taken as not matching

# Each xtables table's base chains: hook → priority (the kernel's, `trace.hooks.PRIORITY`).
TABLE_PRIORITY: dict[str, dict[str, int]] = {
    "raw": {"PREROUTING": H.PRIORITY["raw"], "OUTPUT": H.PRIORITY["raw"]},
    "mangle": {h: H.PRIORITY["mangle"] for h in H.HOOKS},
    "nat": {"PREROUTING": H.PRIORITY["dstnat"], "OUTPUT": H.PRIORITY["dstnat"],
            "INPUT": H.PRIORITY["srcnat"], "POSTROUTING": H.PRIORITY["srcnat"]},
    "filter": {h: H.PRIORITY["filter"] for h in ("INPUT", "FORWARD", "OUTPUT")},
    "security": {h: H.PRIORITY["security"] for h in ("INPUT", "FORWARD", "OUTPUT")},
}
TABLE_ORDER = ("raw", "mangle", "nat", "filter", "security")
# The places a `Step` may take (see the module's docstring), at the kernel's priorities for IPVS's handlers.
STEP_STAGES = {"local-in": H.Stage("INPUT", H.IPVS_PRIORITY["INPUT"], "local-in"),
               "local-out": H.Stage("OUTPUT", H.IPVS_PRIORITY["OUTPUT"], "local-out")}
# A packet a step sends on again as the node's own (IPVS's NAT forwarding does): routed, the OUTPUT
# hooks but nat (the connection's destination NAT is settled), then POSTROUTING, where source NAT
# is still open. Names from `trace.hooks.ROUTES`' vocabulary.
RESENT = ("route-out", "OUTPUT-resent", "POSTROUTING", "loop")


def table_stages(tables) -> list[H.Stage]:
    """The `Stage`s of the xtables tables present, in a fixed order (ties are never between tables)."""
    out = []
    for t in TABLE_ORDER:
        if t in tables:
            out += [H.Stage(hook, prio, t, nat=t == "nat") for hook, prio in TABLE_PRIORITY[t].items()]
    return out


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
    then: tuple[str, ...] | None = None  # e.g. RESENT
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
    _kube_jumps: dict[tuple[str, str], tuple[int, ...]] | None = None
    _index: dict[tuple[str, str], "_ChainIndex | None"] = field(default_factory=dict)

    def index(self, table: str, chain: str) -> "_ChainIndex | None":
        """The chain's rules by destination, when most of them match one address, protocol and port only."""
        k = (table, chain)
        if k not in self._index:
            self._index[k] = _ChainIndex.of(self.chains[table][chain])
        return self._index[k]

    @classmethod
    def of(cls, rs: Ruleset, source: str,
           jumps: tuple[tuple[str, str, str], ...] = (), jump_source: str = "kube-proxy jump rules") -> "Rules":
        chains: dict[str, dict[str, list[str]]] = {}
        policies: dict[tuple[str, str], str] = {}
        for t in rs.tables:
            by = t.by_chain()
            for b in BUILTIN_CHAINS.get(t.name, ()):
                by.setdefault(b, [])
            if t.name in chains:  # a second *table section (two payloads in one file) adds to the first
                for c, specs in by.items():
                    chains[t.name].setdefault(c, []).extend(specs)
            else:
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

    @property
    def has_kube(self) -> bool:
        """Do the rules hold kube-proxy's chains (so other rules can be called foreign)?"""
        return any(c.startswith("KUBE-") for tab in self.chains.values() for c in tab)

    def kube_jumps(self, table: str, chain: str) -> tuple[int, ...]:
        """1-based numbers of the rules of built-in CHAIN that jump or go to a KUBE-* chain."""
        if self._kube_jumps is None:
            found: dict[tuple[str, str], tuple[int, ...]] = {}
            for t, tab in self.chains.items():
                for b in BUILTIN_CHAINS.get(t, ()):
                    nums = []
                    for i, s in enumerate(tab.get(b, ()), 1):
                        if " KUBE-" in s and _target_is_kube(s):
                            nums.append(i)
                    found[(t, b)] = tuple(nums)
            self._kube_jumps = found
        return self._kube_jumps.get((table, chain), ())

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


class _ChainIndex:
    """A long chain's rules that need one protocol and destination port (and address), by (P, ADDR, N).

    kube-proxy's KUBE-SERVICES and KUBE-NODEPORTS hold one such rule per
    Service port (KUBE-NODEPORTS without the address): with 10,000 Services a walk that tried each would spend
    its time there. A rule of that shape cannot match a packet with another
    key, so the walk goes from one rule that can match to the next: the
    rules of its key and every rule of another shape, in chain order.
    """

    MIN_RULES = 32
    __slots__ = ("keyed", "others", "size")

    def __init__(self, keyed: dict[tuple, list[int]], others: list[int], size: int) -> None:
        self.keyed, self.others, self.size = keyed, others, size

    @classmethod
    def of(cls, specs: list[str]) -> "_ChainIndex | None":
        keyed: dict[tuple, list[int]] = {}
        others: list[int] = []
        for i, s in enumerate(specs):
            k = index_key(s)
            if k is None:
                others.append(i)
            else:
                keyed.setdefault(k, []).append(i)
        if len(others) * 2 > len(specs):
            return None  # not that kind of chain
        return cls(keyed, others, len(specs))

    def next(self, idx: int, pkt: Packet) -> int:
        """The first rule at or after IDX that may match PKT (the chain's length when none)."""
        best = self.size
        j = bisect_left(self.others, idx)
        if j < len(self.others):
            best = self.others[j]
        for key in ((pkt.proto, _addr_key(pkt.dst), pkt.dport), (pkt.proto, None, pkt.dport)):
            mine = self.keyed.get(key)
            if mine:
                j = bisect_left(mine, idx)
                if j < len(mine) and mine[j] < best:
                    best = mine[j]
        return best


_COMMENT = re.compile(r'-m comment --comment (?:"(?:[^"\\]|\\.)*"|\S+)(?: |$)')
_PORT_PROTOS = ("tcp", "udp", "sctp")


def _addr_key(ip: str) -> str:
    return ipaddress.ip_address(ip).compressed if ":" in ip else ip


def index_key(spec: str) -> tuple | None:
    """(proto, address or None, port): what a packet must have for the rule to match, or None when not that plain.

    Only `-p P`, `--dport N` and `-d ADDR/32` (not negated) are read; any
    other part of the rule only narrows it further, so a packet without the
    key can skip it (kube-proxy's no-endpoint DROPs add `-m addrtype`).
    """
    body = _COMMENT.sub("", spec)
    if '"' in body:
        return None  # a quoted value (a log prefix) could hide words that look like options
    words = body.split()
    proto = addr = port = None
    for i in range(len(words) - 1):
        k = words[i]
        if k not in ("-p", "-d", "--dport") or (i and words[i - 1] == "!"):
            continue
        v = words[i + 1]
        if k == "-p":
            proto = v if v in _PORT_PROTOS else None
            if proto is None:
                return None
        elif k == "-d":
            a, _, bits = v.partition("/")
            if not bits or bits in ("32", "128"):
                addr = a
        elif v.isdigit():
            port = int(v)
    if proto is None or port is None:
        return None
    try:
        return proto, None if addr is None else _addr_key(addr), port
    except ValueError:
        return None


def _target_is_kube(spec: str) -> bool:
    try:
        t = parse_spec(spec).target
    except SpecError:
        return False
    return bool(t) and t.startswith("KUBE-")


def is_kube_chain(chain: str) -> bool:
    return chain.startswith("KUBE-")


class Undecided(Exception):
    """A match the walk cannot decide: an open yes/no question about the packet.

    The match is true when the answer is yes, or when it is no and `negated`
    (`-m set ! --match-set X src` asks whether X holds the source).
    """

    def __init__(self, key: tuple, question: str, reason: str, negated: bool = False) -> None:
        super().__init__(reason)
        self.key, self.question, self.reason, self.negated = key, question, reason, negated


@dataclass
class _Walk:
    """One path while it is being walked; `fork` copies it at a random rule or an open question."""

    pkt: Packet
    prob: Fraction
    hops: list[Hop]
    steps: list[tuple]  # what is left: ("stage", Stage) | ("route", which) | ("deliver", where)
    stack: list[list]  # frames [chain, next rule index]
    orig: Packet  # as it entered (the connection's original direction, for --ctorig*)
    masq: bool = False
    affinity: int | None = None
    key: list[int] = field(default_factory=list)  # random choices (0 = took the random rule)
    notes: list[str] = field(default_factory=list)
    ctmark: int = 0
    untracked: bool = False
    answers: dict[tuple, Assumption] = field(default_factory=dict)
    akey: list[int] = field(default_factory=list)  # assumed choices (0 = took the match as true)
    unknown: str = ""  # why this path's share is not known (a step could not say)
    group: tuple | None = None  # (branch key, share) of the group of paths an unknown split made
    weight: int | None = None

    def fork(self) -> "_Walk":
        return _Walk(self.pkt, self.prob, list(self.hops), list(self.steps), [list(f) for f in self.stack],
                     self.orig, self.masq, self.affinity, list(self.key), list(self.notes), self.ctmark,
                     self.untracked, dict(self.answers), list(self.akey), self.unknown, self.group, self.weight)

    def state(self) -> tuple:
        """What decides the rest of the walk (two walks with equal states end the same way)."""
        return (self.pkt, self.prob, tuple(self.steps), self.masq, self.affinity, self.ctmark, self.untracked,
                tuple(self.key), self.unknown, self.group, self.weight)


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
    interfaces, not to its uplink); `route(dst)` may name the interface for
    any destination first (the node's own routes: a Docker bridge, a
    tunnel). `sets` are the ipsets `-m set` reads (a node's `ipset save`
    records, or IPVS mode's compiled sets as `matchers.SetMembers`), None
    when not given; `bridged` the interfaces that are bridges (a packet in
    on one came through a bridge port: `physdev --physdev-is-in`); `steps`
    the handlers for the `local-in` / `local-out` places (see the module's
    docstring); `strict` fails on what it cannot decide instead of
    splitting.
    """

    def __init__(self, rules: Rules, node_ips: tuple[str, ...] | frozenset[str], out_iface: str = "eth0",
                 pod_iface: Callable[[str], str | None] | None = None, *, strict: bool = True,
                 sets: Mapping[str, IPSet | M.SetMembers] | None = None, sets_source: str = "",
                 bridged: frozenset[str] = frozenset(), steps: Mapping[str, Step] | None = None,
                 route: Callable[[str], str | None] | None = None, max_assumed: int = MAX_ASSUMED) -> None:
        self.rules = rules
        self.local = frozenset(node_ips)
        self.out_iface = out_iface
        self.pod_iface = pod_iface
        self.route_iface = route
        self.strict = strict
        self.sets = sets
        self.sets_source = sets_source
        self.bridged = bridged
        self.handlers = dict(steps or {})
        self.stages = table_stages(rules.chains) + [STEP_STAGES[n] for n in STEP_STAGES if n in self.handlers]
        self.max_assumed = max_assumed
        self.steps = 0
        self.assumed_branches = 0
        self.cut: list[str] = []  # open questions past the cap, taken as not matching
        self.taken: list[str] = []  # matches taken as matching without evaluation (limit, owner, ...)
        self._seq: dict[tuple[str, bool], tuple[H.Stage, ...]] = {}

    @property
    def notes(self) -> list[str]:
        """What the caller should tell about the walk as a whole (matches taken as true, branches cut)."""
        out = list(dict.fromkeys(self.taken))
        if self.cut:
            shown = "; ".join(self.cut[:5]) + (f"; and {len(self.cut) - 5} more" if len(self.cut) > 5 else "")
            out.append(f"more than {self.max_assumed} assumed branches: {len(self.cut)} further undecidable "
                       f"match(es) were taken as not matching, without a branch of their own: {shown}")
        return out

    def _out(self, dst: str) -> tuple[str, str]:
        """The interface routing picks for `dst` (not a node address), and why, for the hop text."""
        iface = self.route_iface(dst) if self.route_iface is not None else None
        if iface:
            return iface, f"out {iface}, by the node's route"
        iface = self.pod_iface(dst) if self.pod_iface is not None else None
        if iface:
            return iface, f"out {iface}, to a pod on this node"
        return self.out_iface, f"out {self.out_iface}"

    # ------------------------------------------------------------------ errors

    def _err(self, ctx: _Ctx, message: str) -> TraceError:
        src = self.rules.origin.get((ctx.table, ctx.chain), self.rules.source)
        return TraceError(src, ctx.table, ctx.chain, ctx.number, ctx.spec, message)

    # ------------------------------------------------------------------ the order of things

    def _hook_steps(self, hook: str, looped: bool = False) -> list[tuple]:
        k = (hook, looped)
        seq = self._seq.get(k)
        if seq is None:
            stages = list(self.stages)
            if hook == "OUTPUT":
                stages.append(H.Stage("OUTPUT", H.REROUTE_PRIORITY, "reroute"))
            seq = H.sequence(hook, stages)
            if looped:  # the connection is NATed once: nat and steps are not consulted again
                seq = tuple(s for s in seq if not s.nat and s.name not in self.handlers and s.name != "reroute")
            self._seq[k] = seq
        return [("stage", s) for s in seq]

    def _expand(self, names: tuple[str, ...], looped: bool = False) -> list[tuple]:
        out: list[tuple] = []
        for n in names:
            if n in H.HOOKS:
                out += self._hook_steps(n, looped)
            elif n == "OUTPUT-resent":  # sent on by a step: no second NAT, step or re-route
                out += self._hook_steps("OUTPUT", True)
            elif n.startswith("route-"):
                out.append(("route", n[6:]))
            elif n == "loop":
                out.append(("route", "loop"))
            elif n.startswith("deliver-"):
                out.append(("deliver", n[8:]))
            else:
                raise ValueError(f"unknown step {n!r}")
        return out

    # ------------------------------------------------------------------ the walk

    def run(self, pkt: Packet, hook: str) -> list[Path]:
        start = H.ROUTES["from-node"] if hook == "OUTPUT" else H.ROUTES["from-outside"]
        work = [_Walk(pkt, Fraction(1), [], self._expand(start), [], pkt)]
        done: list[Path] = []
        while work:
            later: list[_Walk] = []
            while work:
                w = work.pop()
                end = self._step(w, work)
                if end is not None:
                    done.append(end)
                else:
                    later.append(w)
                if len(done) + len(work) + len(later) > MAX_PATHS:
                    raise TraceError(self.rules.source, "-", "-", 0, "",
                                     f"more than {MAX_PATHS} possible paths; the trace would not be readable")
            work = self._join(later)
        done.sort(key=lambda p: p.key)
        return done

    def _step(self, w: _Walk, work: list[_Walk]) -> Path | None:
        """Take W through its next stage (forks join WORK); the finished Path, or None to go on."""
        if not w.steps:
            return self._finish(w, "DNAT" if w.pkt.dnat else "ACCEPT", "out")
        kind, what = w.steps[0]
        if kind == "end":  # stopped by a stage that forked it (its hop says how)
            return self._finish(w, what, "")
        if kind == "route":
            w.steps.pop(0)
            self._route(w, what)
            return None
        if kind == "deliver":
            return self._finish(w, "DNAT" if w.pkt.dnat else "ACCEPT", what)
        stage: H.Stage = what
        if stage.name == "reroute":
            w.steps.pop(0)
            self._route(w, "again")
            return None
        if stage.nat and w.untracked:
            w.steps.pop(0)
            return None
        handler = self.handlers.get(stage.name)
        if handler is not None:
            w.steps.pop(0)
            self._run_step(w, handler(w.pkt) or [], work)
            return None
        if stage.name not in self.rules.chains:
            w.steps.pop(0)
            return None
        verdict = self._hook(w, stage.name, stage.hook, work)
        w.steps.pop(0)
        w.stack = []
        if verdict != "ACCEPT":
            return self._finish(w, verdict, "")
        return None

    def _run_step(self, w: _Walk, branches: list[Branch], work: list[_Walk]) -> None:
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
                x.steps = [("end", b.verdict)]
            elif b.then is not None:
                x.steps = self._expand(b.then)
        work.extend(walks[1:])

    def _join(self, walks: list[_Walk]) -> list[_Walk]:
        """Join assumed branches that reach the same state again: their open question did not matter."""
        if not any(w.answers for w in walks):
            return walks
        groups: dict[tuple, list[_Walk]] = {}
        for w in walks:
            groups.setdefault(w.state(), []).append(w)
        out: list[_Walk] = []
        for ws in groups.values():
            changed = True
            while changed and len(ws) > 1:
                changed = False
                for i in range(len(ws)):
                    for j in range(i + 1, len(ws)):
                        q = _one_difference(ws[i].answers, ws[j].answers)
                        if q is None:
                            continue
                        a, b = ws[i], ws[j]
                        keep = a if len(a.hops) <= len(b.hops) else b
                        question = keep.answers.pop(q).question
                        for n in (b if keep is a else a).notes:
                            if n not in keep.notes:
                                keep.notes.append(n)
                        keep.hops.append(Hop("assume", "", "", 0,
                                             f"whether {question} or not, the packet is in the same state here",
                                             "the two assumed branches join again"))
                        ws = [x for k, x in enumerate(ws) if k not in (i, j)] + [keep]
                        changed = True
                        break
                    if changed:
                        break
            out += ws
        return out

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
        return Path(None if w.unknown else w.prob, verdict, tuple(w.hops), p, w.masq, w.affinity,
                    tuple(w.key) + tuple(w.akey), notes, tuple(w.answers.values()), w.unknown,
                    w.group if w.unknown else None, w.weight)

    def _route(self, w: _Walk, which: str) -> None:
        p = w.pkt
        local = M.is_local(p.dst, self.local)
        if which == "in":
            if local:
                w.steps[0:0] = self._expand(H.ROUTES["to-local"])
                w.hops.append(Hop("route", "", "", 0, f"routing: {p.dst} is an address of this node",
                                  "to the node itself (INPUT)"))
            else:
                out, why = self._out(p.dst)
                w.pkt = replace(p, out_iface=out)
                w.steps[0:0] = self._expand(H.ROUTES["forwarded"])
                w.hops.append(Hop("route", "", "", 0, f"routing: {p.dst} is not an address of this node",
                                  f"forwarded (FORWARD, {why})"))
        elif which in ("out", "again"):
            # "out": the node's own packet is routed before OUTPUT (raw, mangle and nat see that
            # interface); "again": after nat OUTPUT it is routed by its final destination, which is
            # the decision the hops show.
            out, why = ("lo", "out lo") if local else self._out(p.dst)
            w.pkt = replace(p, out_iface=out)
            if which == "again":
                w.hops.append(Hop("route", "", "", 0, f"routing: {p.dst} is " +
                                  ("an address of this node" if local else "not an address of this node"), why))
        elif which == "loop":
            if local:
                w.pkt = replace(p, in_iface="lo", out_iface=None)
                w.steps[0:0] = self._expand(H.ROUTES["looped"], looped=True)
                w.hops.append(Hop("route", "", "", 0, "the packet loops back through lo to this node",
                                  "to the node itself (INPUT)"))
            else:
                w.steps[0:0] = [("deliver", "out")]

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
            ix = self.rules.index(table, cname) if len(specs) >= _ChainIndex.MIN_RULES else None
            if ix is not None:
                idx = ix.next(idx, w.pkt)
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
            res, sets, open_ = self._matches(sp, w, ctx)
            if res is False:
                continue
            if open_:
                u = open_[0]
                if self._open(w, u, ctx, work):
                    frame[1] = idx  # the answer is recorded: evaluate the rule again
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
            verdict, text = self._target(w, sp, ctx, work)
            w.hops.append(Hop("rule", table, cname, idx + 1, _line(cname, specs[idx]), text, chance))
            if verdict is not None:
                if verdict in ("DROP", "REJECT") and sp.comment and is_kube_chain(cname):
                    w.notes.append(f"{verdict} in {table} {cname}: {sp.comment}")
                self._name_foreign(w, ctx, verdict, text)
                return verdict
        pol = self.rules.policies.get((table, hook), "ACCEPT")
        if pol not in ("ACCEPT", "DROP"):
            raise TraceError(self.rules.source, table, hook, 0, "", f"unknown policy {pol}")
        if pol != "ACCEPT":
            w.hops.append(Hop("policy", table, hook, 0, f":{hook} {pol}", f"policy {pol}"))
            w.notes.append(f"{pol} by the policy of {table} {hook}: no rule there accepted the packet")
        return pol

    def _name_foreign(self, w: _Walk, ctx: _Ctx, verdict: str, text: str) -> None:
        """Say so when a verdict comes from a rule outside kube-proxy's chains, naming the rule."""
        if is_kube_chain(ctx.chain) or (ctx.table, ctx.chain) in self.rules.origin:
            return
        bottom = w.stack[0][0] if w.stack else ctx.hook
        pos = w.stack[0][1] if w.stack else 0
        later = [n for n in self.rules.kube_jumps(ctx.table, bottom) if n > pos]
        where = f"{ctx.table} {ctx.chain} rule {ctx.number}, outside kube-proxy's chains"
        if later:
            where += f" (before kube-proxy's jump at {ctx.table} {bottom} rule {later[0]})"
        rule = _line(ctx.chain, ctx.spec)
        if verdict in ("DROP", "REJECT"):
            w.notes.append(f"{verdict} by {where}: {rule}")
        elif text.startswith(("DNAT ", "REDIRECT ")) and self.rules.has_kube:
            w.notes.append(f"{text.split(' ', 1)[0]} by {where}: {rule}"
                           + ("; kube-proxy's rules never see this connection" if later else ""))
        elif later and ctx.table in ("nat", "filter") and (verdict == "ACCEPT" or text.startswith(("SNAT", "MASQ"))):
            if ctx.table == "filter":
                then = "kube-proxy's filter rules there are skipped"
            elif bottom in ("PREROUTING", "OUTPUT"):
                then = "no Service DNAT happens in this hook"
            else:
                then = "kube-proxy's masquerade rules there are skipped"
            w.notes.append(f"{text.split(':')[0]} by {where}: {rule}; {then}")

    def _open(self, w: _Walk, u: Undecided, ctx: _Ctx, work: list[_Walk]) -> bool:
        """Meet an open question on W's way; True when W now has an answer (its rule is evaluated again)."""
        if self.strict:
            raise self._err(ctx, u.reason)
        line = _line(ctx.chain, ctx.spec)
        if self.assumed_branches >= self.max_assumed:
            self.cut.append(f"{ctx.table} {ctx.chain} rule {ctx.number} ({u.question})")
            w.answers[u.key] = Assumption(u.question, u.negated, u.reason + " (taken as not matching: "
                                          "too many branches)")
            w.hops.append(Hop("assume", ctx.table, ctx.chain, ctx.number, line,
                              f"taken as not matching, without a branch: {u.reason}"))
            return True
        self.assumed_branches += 1
        alt = w.fork()
        alt.answers[u.key] = Assumption(u.question, u.negated, u.reason)
        alt.akey.append(1)
        alt.hops.append(Hop("assume", ctx.table, ctx.chain, ctx.number, line,
                            f"assumed not to match ({u.question}: {'yes' if u.negated else 'no'}): {u.reason}"))
        work.append(alt)
        w.answers[u.key] = Assumption(u.question, not u.negated, u.reason)
        w.akey.append(0)
        w.hops.append(Hop("assume", ctx.table, ctx.chain, ctx.number, line,
                          f"assumed to match ({u.question}: {'no' if u.negated else 'yes'}): {u.reason}"))
        return True

    # ------------------------------------------------------------------ checking a rule (strict)

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

    def _matches(self, sp: Spec, w: _Walk, ctx: _Ctx) -> tuple[bool | Fraction, list[str], list[Undecided]]:
        """Does the rule match W's packet: (True/False/share, recent lists it sets, open questions)."""
        if self.strict:
            self._check(sp, ctx)
        pkt = w.pkt
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
                    return False, [], []
        except Unsupported as e:
            if self.strict:
                raise self._err(ctx, str(e)) from None
            return True, [], [Undecided(("base", ctx.spec), f"'{ctx.spec}' matches", str(e))]
        prob = Fraction(1)
        sets: list[str] = []
        open_: list[Undecided] = []
        for m in sp.matches:
            try:
                if not self.strict and m.module != "physdev":
                    _check_match(m)
                fn = _MATCHES.get(m.module)
                if fn is None:
                    raise Undecided(_match_key(m, pkt), f"'{_match_text(m)}' matches",
                                    f"unknown match module {m.module!r} (not evaluated by the tracer)")
                r = fn(self, m, w, sets)
            except Unsupported as e:
                if self.strict:
                    raise self._err(ctx, str(e)) from None
                r = self._answer(w, Undecided(_match_key(m, pkt), f"'{_match_text(m)}' matches", str(e)), open_)
            except Undecided as u:
                if self.strict:
                    raise self._err(ctx, u.reason) from None
                r = self._answer(w, u, open_)
            if r is False:
                return False, [], []
            if r is not True and r is not None:
                prob *= r
        if prob == 0:
            return False, [], []
        return (True if prob == 1 else prob), sets, open_

    @staticmethod
    def _answer(w: _Walk, u: Undecided, open_: list[Undecided]) -> bool | None:
        """The match's value from W's earlier answer to the same question, or None (and U is open)."""
        a = w.answers.get(u.key)
        if a is None:
            open_.append(u)
            return None
        return a.holds != u.negated

    def _m_proto(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        pkt = w.pkt
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

    def _m_other_proto(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        return False  # icmp, udplite, ...: the traced connection is TCP, UDP or SCTP, and its own module decides

    def _m_noop(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        return True

    def _m_taken(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        why = _TAKEN[m.module]
        self.taken.append(f"-m {m.module} is taken as matching: {why}")
        return True

    def _m_addrtype(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        limit = [o.name for o in m.opts if o.name in ("--limit-iface-in", "--limit-iface-out")]
        if limit:
            raise Undecided(_match_key(m, w.pkt), f"'{_match_text(m)}' matches",
                            f"addrtype {limit[0]}: the tracer does not know which addresses sit on which interface")
        for o in m.opts:
            ip = w.pkt.src if o.name == "--src-type" else w.pkt.dst
            if M.addrtype_match(ip, o.values[0], self.local) == o.negated:
                return False
        return True

    def _m_mark(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        for o in m.opts:
            if M.mark_match(w.pkt.mark, o.values[0]) == o.negated:
                return False
        return True

    def _m_connmark(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        if w.untracked:
            return False  # no connection, no connection mark
        for o in m.opts:
            if M.mark_match(w.ctmark, o.values[0]) == o.negated:
                return False
        return True

    def _m_statistic(self, m: Match, w: _Walk, sets: list[str]) -> bool | Fraction:
        p = Fraction(1)
        for o in m.opts:
            if o.name == "--probability":
                q = M.probability(o.values[0])
                p *= (1 - q) if o.negated else q
        return True if p == 1 else (False if p == 0 else p)

    def _m_recent(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        cmd = next(o for o in m.opts if o.name in _RECENT_CMDS)
        name = m.get("--name")
        list_name = name.values[0] if name and name.values else "DEFAULT"
        if cmd.name == "--set":
            if not cmd.negated:
                sets.append(list_name)
            return not cmd.negated
        # A new connection from this client: the list has no entry for it yet.
        return cmd.negated

    def _m_conntrack(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        pkt, orig = w.pkt, w.orig
        for o in m.opts:
            n, v = o.name, o.values[0]
            if n in ("--ctstate", "--state"):
                r = M.ctstate_match(v, pkt.dnat, pkt.snat, w.untracked)
            elif w.untracked:
                r = False  # no connection: only the state can match
            elif n == "--ctstatus":
                r = M.ctstatus_match(v)
            elif n == "--ctdir":
                if v.upper() not in ("ORIGINAL", "REPLY"):
                    raise Unsupported(f"--ctdir {v}")
                r = v.upper() == "ORIGINAL"
            elif n == "--ctproto":
                r = M.proto_match(orig.proto, v)
            elif n == "--ctorigsrc":
                r = M.in_cidr(orig.src, v)
            elif n == "--ctorigdst":
                r = M.in_cidr(orig.dst, v)
            elif n == "--ctreplsrc":  # the reply comes from where the packet now goes
                r = M.in_cidr(pkt.dst, v)
            elif n == "--ctrepldst":
                r = M.in_cidr(pkt.src, v)
            elif n == "--ctorigsrcport":
                r = M.port_match(orig.sport, v)
            elif n == "--ctorigdstport":
                r = M.port_match(orig.dport, v)
            elif n == "--ctreplsrcport":
                r = M.port_match(pkt.dport, v)
            elif n == "--ctrepldstport":
                r = M.port_match(pkt.sport, v)
            else:
                raise Unsupported(f"conntrack {n}")
            if r == o.negated:
                return False
        return True

    def _m_multiport(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        pkt = w.pkt
        if pkt.proto not in ("tcp", "udp", "sctp"):
            return False
        for o in m.opts:
            v = o.values[0]
            if o.name in ("--dports", "--destination-ports"):
                r = M.ports_match(pkt.dport, v)
            elif o.name in ("--sports", "--source-ports"):
                r = M.ports_match(pkt.sport, v)
            else:  # --ports: either side
                r = M.ports_match(pkt.sport, v) or M.ports_match(pkt.dport, v)
            if r == o.negated:
                return False
        return True

    def _m_iprange(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        for o in m.opts:
            ip = w.pkt.src if o.name == "--src-range" else w.pkt.dst
            if M.iprange_match(ip, o.values[0]) == o.negated:
                return False
        return True

    def _m_pkttype(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        kind = M.addr_type(w.pkt.dst, self.local)
        have = {"MULTICAST": "multicast", "BROADCAST": "broadcast"}.get(kind, "unicast")
        for o in m.opts:
            v = o.values[0].lower()
            if v not in ("unicast", "broadcast", "multicast", "host", "otherhost"):
                raise Unsupported(f"--pkt-type {v}")
            r = v == have or (v == "host" and M.is_local(w.pkt.dst, self.local))
            if r == o.negated:
                return False
        return True

    def _m_policy(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        # The traced connection is plain IP: no IPsec policy applies to it.
        pol = m.get("--pol")
        if pol is None or pol.values[0] not in ("none", "ipsec"):
            raise Unsupported("policy without --pol none|ipsec")
        return (pol.values[0] == "none") != pol.negated

    def _m_rpfilter(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        self.taken.append("-m rpfilter is taken as passing the reverse-path check: the trace's packet "
                          "comes in on the interface the node would use to reach its source")
        return not any(o.name == "--invert" for o in m.opts)

    def _m_set(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        ms = m.get("--match-set")
        if ms is None:
            raise Unsupported("set without --match-set")
        name, flagtext = ms.values[0], ms.values[1]
        flags = tuple(flagtext.split(","))
        if any(f not in ("src", "dst") for f in flags):
            raise Unsupported(f"--match-set flags {flagtext!r}")
        for o in m.opts:
            if o.name.startswith(("--packets-", "--bytes-")):
                raise Undecided(_match_key(m, w.pkt), f"'{_match_text(m)}' matches",
                                f"ipset {name}: the counters of its members are not known")
        if m.get("--return-nomatch") is not None:
            raise Unsupported(f"ipset {name}: option --return-nomatch of match 'set'")
        question, key = _set_question(name, flags, w.pkt)
        s = self.sets.get(name) if self.sets is not None else None
        if s is None and self.strict:  # the tracer's own rules name a set it did not pass
            raise Unsupported(f"set {name} is not known (no ipset listing holds it)")
        if self.sets is None:
            raise Undecided(key, question, f"ipset {name} unknown: pass --ipsets", ms.negated)
        if s is None:
            raise Undecided(key, question, f"ipset {name} is not in {self.sets_source or 'the saved sets'}",
                            ms.negated)
        pkt = w.pkt
        if isinstance(s, M.SetMembers):  # a tracer's own sets (IPVS mode's compile)
            try:
                r = M.set_match(self.sets, name, flagtext, pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
            except Unsupported as e:
                raise Undecided(key, question, f"ipset {name}: {e}", ms.negated) from None
            return r != ms.negated

        def get(kind: str, flag: str) -> object:
            if kind == "ip":
                return pkt.src if flag == "src" else pkt.dst
            if kind == "port":
                return (pkt.proto, pkt.sport if flag == "src" else pkt.dport)
            if kind == "iface":
                return pkt.in_iface if flag == "src" else pkt.out_iface
            return pkt.mark

        try:
            r = ipset_members.holds(s, flags, get, self.sets, self.rules.family)  # type: ignore[arg-type]
        except ipset_members.Unknown as e:
            raise Undecided(key, question, f"ipset {name}: {e}", ms.negated) from None
        return r != ms.negated

    def _m_ipvs(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        # The kernel's rule: a packet IPVS did not handle matches only a negated --ipvs.
        pkt = w.pkt
        if pkt.virtual is None:
            o = m.get("--ipvs")
            return o is not None and o.negated
        for o in m.opts:
            if M.ipvs_match(pkt.virtual, o.name, o.values[0] if o.values else None) == o.negated:
                return False
        return True

    def _m_physdev(self, m: Match, w: _Walk, sets: list[str]) -> bool:
        for o in m.opts:
            if o.name == "--physdev-is-in":  # came in through a bridge port
                r = w.pkt.in_iface in self.bridged
            elif o.name == "--physdev-is-bridged":  # a routed packet is never being bridged
                r = False
            else:  # a bridge port's name (only reached in a dump: strict rules refuse it)
                self.taken.append(f"-m physdev {o.name} is taken as matching: {_TAKEN['physdev']}")
                continue
            if r == o.negated:
                return False
        return True

    # ------------------------------------------------------------------ targets

    def _target(self, w: _Walk, sp: Spec, ctx: _Ctx, work: list[_Walk]) -> tuple[str | None, str]:
        """Apply the rule's target; (verdict that ends this hook or None, what happened)."""
        t = sp.target
        table = ctx.table
        if t is None:
            return None, "no target: continue with the next rule"
        tab = self.rules.chains[table]
        if t in tab and t not in BUILTIN_CHAINS.get(table, ()):  # a user chain
            if any(f[0] == t for f in w.stack) or len(w.stack) >= MAX_DEPTH:
                raise self._err(ctx, f"jump to {t} loops back into a chain already being walked")
            if sp.goto:
                w.stack.pop()
                w.stack.append([t, 0])
                return None, f"goto {t}"
            w.stack.append([t, 0])
            return None, f"jump {t}"
        try:
            return self._builtin_target(w, sp, ctx)
        except Unsupported as e:
            if self.strict:
                raise self._err(ctx, str(e)) from None
            return self._open_target(w, sp, ctx, str(e), work)

    def _open_target(self, w: _Walk, sp: Spec, ctx: _Ctx, why: str, work: list[_Walk]) -> tuple[str | None, str]:
        """A target the tracer cannot apply: does the packet go on past it, or is it stopped there?"""
        t = sp.target or ""
        key = ("target", ctx.table, ctx.chain, ctx.spec, w.pkt)
        question = f"the packet goes on past -j {t}"
        a = w.answers.get(key)
        if a is None:
            if self.assumed_branches >= self.max_assumed:
                self.cut.append(f"{ctx.table} {ctx.chain} rule {ctx.number} ({question})")
                a = Assumption(question, True, why + " (taken as going on: too many branches)")
                w.answers[key] = a
            else:
                self.assumed_branches += 1
                alt = w.fork()
                alt.answers[key] = Assumption(question, False, why)
                alt.akey.append(1)
                alt.hops.append(Hop("rule", ctx.table, ctx.chain, ctx.number, _line(ctx.chain, ctx.spec),
                                    f"DROP (assumed: -j {t} stops the packet; {why})"))
                alt.stack = []
                alt.steps = [("end", "DROP")]
                work.append(alt)
                a = Assumption(question, True, why)
                w.answers[key] = a
                w.akey.append(0)
        if a.holds:
            return None, f"assumed: -j {t} lets the packet go on ({why})"
        return "DROP", f"DROP (assumed: -j {t} stops the packet; {why})"

    def _builtin_target(self, w: _Walk, sp: Spec, ctx: _Ctx) -> tuple[str | None, str]:
        t = sp.target or ""
        table = ctx.table
        if t in BUILTIN_CHAINS.get(table, ()):
            raise Unsupported(f"jump to the built-in chain {t}")
        if t not in _TARGET_OPTS and t not in _CONTINUE_TARGETS:
            raise Unsupported(f"unknown target {t!r} (neither a chain of table {table} "
                              "nor a target the tracer evaluates)")
        if t in _TARGET_OPTS:
            known = _TARGET_OPTS[t]
            for o in sp.target_opts:
                if o.name not in known or o.negated:
                    raise Unsupported(f"option {o.name} of target {t}")
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
            if not sp.target_opts:
                raise Unsupported("MARK without an option")
            for o in sp.target_opts:
                mark = M.mark_target(mark, o.name, o.values[0])
            w.pkt = replace(w.pkt, mark=mark)
            return None, f"mark is now {hex(mark)}"
        if t == "CONNMARK":
            if w.untracked:
                return None, "CONNMARK: the packet is untracked, there is no connection to mark"
            opts = {o.name: (o.values[0] if o.values else "") for o in sp.target_opts}
            ctmark, mark = M.connmark_target(w.ctmark, w.pkt.mark, opts)
            w.ctmark = ctmark
            if mark != w.pkt.mark:
                w.pkt = replace(w.pkt, mark=mark)
            return None, f"connection mark is now {hex(ctmark)}, packet mark {hex(mark)}"
        if t in ("NOTRACK", "CT"):
            if table != "raw":
                raise Unsupported(f"{t} in {table} (only raw)")
            if t == "NOTRACK" or sp.target_opt("--notrack") is not None:
                w.untracked = True
                w.notes.append(f"untracked by {table} {ctx.chain} rule {ctx.number}: no NAT happens "
                               "for this connection")
                return None, "untracked: conntrack and NAT leave this packet alone"
            return None, "CT: connection settings (zone, helper, timeout); continue"
        if t in ("DNAT", "REDIRECT", "NETMAP") and (table != "nat" or ctx.hook not in ("PREROUTING", "OUTPUT")):
            if t != "NETMAP" or table != "nat":
                raise Unsupported(f"{t} in {table} {ctx.hook} (only nat PREROUTING/OUTPUT)")
        if t == "DNAT":
            return self._dnat(w, sp, ctx)
        if t == "REDIRECT":
            return self._redirect(w, sp, ctx)
        if t == "NETMAP":
            to = sp.target_opt("--to")
            if to is None:
                raise Unsupported("NETMAP without --to")
            if ctx.hook in ("PREROUTING", "OUTPUT"):
                before = w.pkt.dst_endpoint
                w.pkt = replace(w.pkt, dst=M.netmap(w.pkt.dst, to.values[0]), dnat=True)
                return "ACCEPT", f"DNAT {before} → {w.pkt.dst_endpoint} (NETMAP)"
            src = M.netmap(w.pkt.src, to.values[0])
            w.pkt = replace(w.pkt, src=src, snat=True)
            w.masq = True
            return "ACCEPT", f"SNAT: the source becomes {src} (NETMAP)"
        if t in ("MASQUERADE", "SNAT"):
            if table != "nat" or ctx.hook not in ("POSTROUTING", "INPUT") or (
                    t == "MASQUERADE" and ctx.hook != "POSTROUTING"):
                raise Unsupported(f"{t} in {table} {ctx.hook}")
            if t == "MASQUERADE":
                text = "MASQUERADE: the source becomes the node's address on " + (w.pkt.out_iface or "the way out")
                w.pkt = replace(w.pkt, snat=True)
            else:
                to = sp.target_opt("--to-source")
                if to is None:
                    raise Unsupported("SNAT without --to-source")
                value = to.values[0]
                if not self.strict:
                    value, ranged = M.first_of_range(value)
                    if ranged:
                        w.notes.append(f"SNAT to a range ({to.values[0]}): the kernel picks one; the trace names the first")
                ip, _ = M.split_endpoint(value)
                text = f"SNAT: the source becomes {ip}"
                w.pkt = replace(w.pkt, src=ip, snat=True)
            w.masq = True
            return "ACCEPT", text
        if t in ("LOG", "NFLOG", "ULOG"):
            return None, f"{t}, continue"
        if t in _CONTINUE_TARGETS:
            return None, f"{t}: changes nothing the rules look at; continue"
        raise Unsupported(f"target {t}")  # pragma: no cover - every known target is handled above

    def _dnat(self, w: _Walk, sp: Spec, ctx: _Ctx) -> tuple[str, str]:
        to = sp.target_opt("--to-destination")
        if to is None:
            raise Unsupported("DNAT without --to-destination")
        value = to.values[0]
        if not self.strict:
            value, ranged = M.first_of_range(value)
            if ranged:
                w.notes.append(f"DNAT to a range ({to.values[0]}): the kernel picks one; the trace follows the first")
        ip, port = M.split_endpoint(value)
        if (":" in ip) != (":" in w.pkt.dst):
            raise Unsupported(f"DNAT to {ip}, another address family")
        before = w.pkt.dst_endpoint
        w.pkt = replace(w.pkt, dst=ip, dport=port if port is not None else w.pkt.dport, dnat=True)
        return "ACCEPT", f"DNAT {before} → {w.pkt.dst_endpoint}"

    def _redirect(self, w: _Walk, sp: Spec, ctx: _Ctx) -> tuple[str, str]:
        six = ":" in w.pkt.dst
        if ctx.hook == "OUTPUT":
            ip = "::1" if six else "127.0.0.1"
        else:
            mine = sorted(a for a in self.local if (":" in a) == six)
            if not mine:
                raise Unsupported("REDIRECT: the node's address on the incoming interface is unknown (give --node-ip)")
            ip = mine[0]
        port = w.pkt.dport
        tp = sp.target_opt("--to-ports")
        if tp is not None:
            first = tp.values[0].split("-", 1)[0]
            if not first.isdigit():
                raise Unsupported(f"REDIRECT --to-ports {tp.values[0]}")
            port = int(first)
        before = w.pkt.dst_endpoint
        w.pkt = replace(w.pkt, dst=ip, dport=port, dnat=True)
        return "ACCEPT", f"REDIRECT {before} → {w.pkt.dst_endpoint} (this node)"


def _one_difference(a: dict[tuple, Assumption], b: dict[tuple, Assumption]) -> tuple | None:
    """The one question A and B answer differently, when they agree on every other (and ask the same)."""
    if a.keys() != b.keys():
        return None
    diff = [k for k in a if a[k].holds != b[k].holds]
    return diff[0] if len(diff) == 1 else None


def _line(chain: str, spec: str) -> str:
    return f"-A {chain} {spec}" if spec else f"-A {chain}"


def _match_text(m: Match) -> str:
    parts = ["-m", m.module]
    for o in m.opts:
        if o.negated:
            parts.append("!")
        parts.append(o.name)
        parts += [f'"{v}"' if " " in v or not v else v for v in o.values]
    return " ".join(parts)


def _match_key(m: Match, pkt: Packet) -> tuple:
    return ("match", _match_text(m), pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.in_iface,
            pkt.out_iface, pkt.mark)


def _set_question(name: str, flags: tuple[str, ...], pkt: Packet) -> tuple[str, tuple]:
    """The yes/no question a set match asks of the packet, and its key (the same on every rule that asks it)."""
    if len(flags) == 1:
        ip = pkt.src if flags[0] == "src" else pkt.dst
        return f"ipset {name} holds {ip} ({flags[0]})", ("set", name, ip)
    text = (f"ipset {name} holds the {','.join(flags)} of {pkt.proto} "
            f"{pkt.src}:{pkt.sport} → {pkt.dst}:{pkt.dport}")
    return text, ("set", name, flags, pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.in_iface,
                  pkt.out_iface, pkt.mark)


# Options each match understands, with how many values each takes (None: any options, any values).
_PORTS = {"--dport": 1, "--destination-port": 1, "--sport": 1, "--source-port": 1}
_MATCH_OPTS: dict[str, dict[str, int] | None] = {
    "tcp": {**_PORTS, "--syn": 0, "--tcp-flags": 2},
    "udp": dict(_PORTS),
    "sctp": dict(_PORTS),
    "comment": {"--comment": 1},
    "nfacct": {"--nfacct-name": 1},
    "addrtype": {"--src-type": 1, "--dst-type": 1, "--limit-iface-in": 0, "--limit-iface-out": 0},
    "mark": {"--mark": 1},
    "connmark": {"--mark": 1},
    "statistic": {"--mode": 1, "--probability": 1},
    "recent": {"--name": 1, "--set": 0, "--rcheck": 0, "--update": 0, "--remove": 0, "--seconds": 1, "--reap": 0,
               "--hitcount": 1, "--rttl": 0, "--rsource": 0, "--rdest": 0, "--mask": 1},
    "conntrack": {"--ctstate": 1, "--ctstatus": 1, "--ctdir": 1, "--ctproto": 1, "--ctorigsrc": 1,
                  "--ctorigdst": 1, "--ctreplsrc": 1, "--ctrepldst": 1, "--ctorigsrcport": 1,
                  "--ctorigdstport": 1, "--ctreplsrcport": 1, "--ctrepldstport": 1},
    "state": {"--state": 1},
    "set": {"--match-set": 2, "--update-counters": 0, "--update-subcounters": 0,
            "--packets-eq": 1, "--packets-lt": 1, "--packets-gt": 1, "--bytes-eq": 1, "--bytes-lt": 1,
            "--bytes-gt": 1},
    "multiport": {"--dports": 1, "--destination-ports": 1, "--sports": 1, "--source-ports": 1, "--ports": 1},
    "iprange": {"--src-range": 1, "--dst-range": 1},
    "pkttype": {"--pkt-type": 1},
    "policy": {"--dir": 1, "--pol": 1, "--strict": 0, "--reqid": 1, "--spi": 1, "--proto": 1, "--mode": 1,
               "--tunnel-src": 1, "--tunnel-dst": 1, "--next": 0},
    "rpfilter": {"--loose": 0, "--validmark": 0, "--accept-local": 0, "--invert": 0},
    "physdev": {"--physdev-is-in": 0, "--physdev-is-bridged": 0},
    "ipvs": {"--ipvs": 0, "--vproto": 1, "--vaddr": 1, "--vport": 1, "--vdir": 1},
    "owner": None,
    "limit": None,
    "hashlimit": None,
    "icmp": None,
    "icmp6": None,
    "udplite": None,
    "dccp": None,
}
# Matches taken as matching without evaluation, and why (said once per trace).
_TAKEN = {
    "physdev": "which bridge port a packet crosses is not modelled",
    "owner": "the trace does not know which user or process sends",
    "limit": "a first connection is within any rate limit",
    "hashlimit": "a first connection is within any rate limit",
}
_RECENT_CMDS = ("--set", "--rcheck", "--update", "--remove")
_LOG_OPTS = {"--log-prefix": 1, "--log-level": 1, "--log-tcp-sequence": 0, "--log-tcp-options": 0,
             "--log-ip-options": 0, "--log-uid": 0, "--log-macdecode": 0}
_NAT_OPTS = {"--random": 0, "--random-fully": 0, "--persistent": 0}
_TARGET_OPTS: dict[str, dict[str, int]] = {
    "RETURN": {}, "ACCEPT": {}, "DROP": {},
    "REJECT": {"--reject-with": 1},
    "MARK": {"--set-xmark": 1, "--set-mark": 1, "--or-mark": 1, "--and-mark": 1, "--xor-mark": 1},
    "CONNMARK": {"--set-xmark": 1, "--set-mark": 1, "--or-mark": 1, "--and-mark": 1, "--xor-mark": 1,
                 "--save-mark": 0, "--restore-mark": 0, "--nfmask": 1, "--ctmask": 1, "--mask": 1},
    "DNAT": {"--to-destination": 1, **_NAT_OPTS},
    "SNAT": {"--to-source": 1, **_NAT_OPTS},
    "MASQUERADE": {"--to-ports": 1, **_NAT_OPTS},
    "REDIRECT": {"--to-ports": 1, "--random": 0},
    "NETMAP": {"--to": 1},
    "NOTRACK": {},
    "CT": {"--notrack": 0, "--zone": 1, "--zone-orig": 1, "--zone-reply": 1, "--helper": 1, "--timeout": 1,
           "--ctevents": 1, "--expevents": 1},
    "LOG": _LOG_OPTS,
    "NFLOG": {"--nflog-group": 1, "--nflog-prefix": 1, "--nflog-range": 1, "--nflog-size": 1,
              "--nflog-threshold": 1},
    "ULOG": {"--ulog-nlgroup": 1, "--ulog-prefix": 1, "--ulog-cprange": 1, "--ulog-qthreshold": 1},
}
# Targets that change nothing a rule or the trace looks at, and let the packet go on (any options).
_CONTINUE_TARGETS = frozenset({"TCPMSS", "CLASSIFY", "CHECKSUM", "DSCP", "TOS", "TTL", "HL", "ECN", "SECMARK",
                               "CONNSECMARK", "IDLETIMER", "LED", "RATEEST", "TRACE", "AUDIT", "TEE", "SET"})


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
    if t is None or t in _TARGET_OPTS or t in _CONTINUE_TARGETS and t not in chains:
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
        if m.module not in _MATCH_OPTS:
            raise Unsupported(f"unknown match module {m.module!r}")
        _check_match(m)
    t = sp.target
    if t is None:
        if sp.target_opts:
            raise Unsupported("target options without a target")
        return
    known = _TARGET_OPTS.get(t)
    if known is None:
        return  # a chain, or a target that changes nothing: _check_chain_target
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
    elif t == "CONNMARK":
        M.connmark_target(0, 0, {o.name: (o.values[0] if o.values else "") for o in sp.target_opts})
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


def _check_match(m: Match) -> None:
    """Does the tracer understand every option of match M (their names, counts and values)?"""
    if m.module not in _MATCH_OPTS:
        return  # not evaluated at all: the walk says so by the module's name
    known = _MATCH_OPTS[m.module]
    if known is None:
        return
    mode = m.get("--mode")
    if m.module == "statistic" and mode is not None and mode.values != ("random",):
        raise Unsupported("statistic other than --mode random (nth counts packets; "
                          "which connection is the nth cannot be known)")
    for o in m.opts:
        if o.name not in known:
            raise Unsupported(f"option {o.name} of match {m.module!r}")
        if len(o.values) != known[o.name]:
            raise Unsupported(f"option {o.name} of match {m.module!r} takes {known[o.name]} value(s)")
    mod = m.module
    if mod in ("tcp", "udp", "sctp"):
        for o in m.opts:
            if o.name == "--tcp-flags":
                M.tcp_flags_match(o.values[0], o.values[1])
            elif o.values:
                M.port_match(0, o.values[0])
    elif mod == "addrtype":
        for o in m.opts:
            if o.values:
                M.addrtype_match("127.0.0.1", o.values[0], ())
    elif mod in ("mark", "connmark"):
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
            if o.name in ("--ctstate", "--state"):
                M.ctstate_match(o.values[0], False, False)
            elif o.name == "--ctstatus":
                M.ctstatus_match(o.values[0])
    elif mod == "multiport":
        for o in m.opts:
            M.ports_match(0, o.values[0])
    elif mod == "set":
        for o in m.opts:
            if o.name == "--match-set" and any(w not in ("src", "dst") for w in o.values[1].split(",")):
                raise Unsupported(f"set flags {o.values[1]!r} (src and dst are evaluated)")
    elif mod == "ipvs":
        for o in m.opts:
            if o.values:
                M.ipvs_match(("tcp", "0.0.0.0", 0), o.name, o.values[0])
    elif mod == "iprange":
        for o in m.opts:
            M.iprange_match("0.0.0.0" if ":" not in o.values[0] else "::", o.values[0])


_MATCHES: dict[str, Callable] = {
    "tcp": Engine._m_proto,
    "udp": Engine._m_proto,
    "sctp": Engine._m_proto,
    "icmp": Engine._m_other_proto,
    "icmp6": Engine._m_other_proto,
    "udplite": Engine._m_other_proto,
    "dccp": Engine._m_other_proto,
    "comment": Engine._m_noop,
    "nfacct": Engine._m_noop,
    "addrtype": Engine._m_addrtype,
    "mark": Engine._m_mark,
    "connmark": Engine._m_connmark,
    "statistic": Engine._m_statistic,
    "recent": Engine._m_recent,
    "conntrack": Engine._m_conntrack,
    "state": Engine._m_conntrack,
    "set": Engine._m_set,
    "multiport": Engine._m_multiport,
    "iprange": Engine._m_iprange,
    "pkttype": Engine._m_pkttype,
    "policy": Engine._m_policy,
    "rpfilter": Engine._m_rpfilter,
    "physdev": Engine._m_physdev,
    "ipvs": Engine._m_ipvs,
    "owner": Engine._m_taken,
    "limit": Engine._m_taken,
    "hashlimit": Engine._m_taken,
}
