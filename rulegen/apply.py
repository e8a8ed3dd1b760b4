"""Loading a compile into a network namespace, sending only what changed.

Owns `rulegen apply`: read what is live in the namespace, compare it chain
by chain with the compile, and send per table one `iptables-restore
--noflush` payload that declares and rewrites only the new and changed
KUBE-* chains, declares and `-X`es the KUBE-SVC-/SVL-/SEP-/FW-/EXT- chains
that are live but no longer wanted (kube-proxy's partial sync), and inserts
the missing jumps from the built-in chains (`-I CHAIN 1` in kube-proxy's
order, so the last listed ends up first). One table loads all or nothing;
the other tables are checked with `--test` before the first loads, and if
the kernel still refuses a later one, those loaded before it are put back
from the live dump, so a failed apply leaves the previous rules in place.
Chains that are not kube-proxy's are never touched. Live rules come in
iptables-save's spelling; chains are compared through `spec.canonical`, and
a per-namespace cache (each chain's hash as compiled and as the kernel
printed it back) recognises unchanged chains without canonicalising them
and covers spellings the canonical form misses. The kernel is reached only
through `rulegen.netns.Netns`, so tests run on its fake. Appliers are
registered by mode (`APPLIERS`); IPVS and nftables plug in beside iptables
as `fn(compiled, netns, ops, dry_run=, state_dir=) -> ApplyResult`.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import msgspec

from .backends.iptables.ir import Rule, Ruleset
from .diagnostics import UsageError
from .netns import ApplyError, Netns, RealNetns, check_name, restore_reason, restore_tool, rule_target

# Live chains with these prefixes belong to kube-proxy's per-service state
# and are deleted when the compile no longer has them (spec section 10).
STALE_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-")
_NFACCT_RE = re.compile(r"--nfacct-name\s+(\S+)")
CACHE_VERSION = 1
READBACK_MIN = 64  # sent chains from which reading them back beats comparing them next time
DEFAULT = object()  # "pick the usual state directory"


@dataclass
class ApplyResult:
    netns: str
    mode: str
    family: int
    added: list[tuple[str, str]] = field(default_factory=list)  # (table, chain)
    changed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    kept: list[tuple[str, str, str]] = field(default_factory=list)  # (table, stale chain, referenced by)
    jumps: list[tuple[str, str, str]] = field(default_factory=list)  # inserted (table, chain, args)
    payload: str = ""
    lines: int = 0  # rule, declaration, -I and -X lines sent (0 = nothing sent)
    seconds: float = 0.0
    dry_run: bool = False
    created: bool = False
    timings: list[tuple[str, float]] = field(default_factory=list)

    def summary(self) -> str:
        made = " (namespace created)" if self.created else ""
        jumps = "to insert" if self.dry_run else "inserted"
        sent = f"would send {self.lines} lines (dry run)" if self.dry_run else f"sent {self.lines} lines"
        s = (f"netns {self.netns}{made}: {len(self.added)} chains added, {len(self.changed)} changed, "
             f"{len(self.removed)} removed, {len(self.jumps)} jump rules {jumps}; "
             f"{sent} in {self.seconds:.3f} s")
        for table, chain, by in self.kept:
            s += f"\nnetns {self.netns}: kept stale {table} chain {chain}: still referenced by {by}"
        return s


class _Clock:
    def __init__(self) -> None:
        self.stages: list[tuple[str, float]] = []
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages.append((name, now - self._t))
        self._t = now


# ---------------------------------------------------------------------- entry


Applier = Callable[..., ApplyResult]
APPLIERS: dict[str, Applier] = {}


def applier(mode: str) -> Callable[[Applier], Applier]:
    def reg(f: Applier) -> Applier:
        APPLIERS[mode] = f
        return f
    return reg


def apply(compiled: Any, netns: str, create: bool = False, dry_run: bool = False,
          ops: Netns | None = None, state_dir: Any = DEFAULT) -> ApplyResult:
    """Bring namespace NETNS to the rules of COMPILED (a `pipeline.Compiled`).

    `state_dir` holds the per-namespace cache; None turns it off.
    """
    t0 = time.perf_counter()
    check_name(netns)
    mode = compiled.settings.mode
    fn = APPLIERS.get(mode)
    if fn is None:
        raise UsageError(f"rulegen apply --mode {mode}: not implemented yet (available: {', '.join(APPLIERS)})")
    ops = ops if ops is not None else RealNetns()
    ops.require_root("rulegen apply")
    created = False
    if not ops.exists(netns):
        if not create:
            raise UsageError(f"network namespace {netns!r} does not exist (use --create to make it)")
        if not dry_run:
            ops.create(netns)
            created = True
    t_ready = time.perf_counter()
    if state_dir is DEFAULT:
        state_dir = default_state_dir()
    res = fn(compiled, netns, ops, dry_run=dry_run, state_dir=state_dir)
    if not dry_run:
        prune_state(state_dir, ops)
    res.created = created
    if created:
        res.timings.insert(0, ("create", t_ready - t0))
    res.seconds = time.perf_counter() - t0
    return res


def default_state_dir() -> str | None:
    env = os.environ.get("RULEGEN_STATE_DIR")
    if env is not None:
        return env or None
    if os.geteuid() == 0:
        return "/run/rulegen"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "rulegen") if xdg else None


# ---------------------------------------------------------------------- iptables


def _live_reader() -> tuple[Callable[[str], Ruleset], Callable[[str], str]]:
    from .backends.iptables.parse import parse
    from .backends.iptables.spec import canonical

    return parse, canonical


def _digest(specs: Iterable[str]) -> str:
    return hashlib.blake2b("\n".join(specs).encode(), digest_size=12).hexdigest()


class _Cache(msgspec.Struct):
    """What the last apply left in one namespace: per table, chain → (compiled hash, live hash)."""

    version: int
    identity: str
    family: int
    tables: dict[str, dict[str, tuple[str, str]]]


def _cache_path(state_dir: str, netns: str, family: int) -> str:
    return os.path.join(state_dir, netns, f"iptables-ipv{family}.json")


def _load_cache(state_dir: str | None, netns: str, family: int, identity: str) -> dict[str, dict[str, tuple[str, str]]]:
    if not state_dir:
        return {}
    try:
        with open(_cache_path(state_dir, netns, family), "rb") as f:
            c = msgspec.json.decode(f.read(), type=_Cache)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return {}
    if c.version != CACHE_VERSION or c.identity != identity or c.family != family or not identity:
        return {}
    return c.tables


def prune_state(state_dir: str | None, ops: Netns) -> None:
    """Forget the caches of namespaces that are gone (only rulegen's own files)."""
    if not state_dir:
        return
    try:
        entries = os.listdir(state_dir)
    except OSError:
        return
    for name in entries:
        d = os.path.join(state_dir, name)
        try:
            if ops.exists(name) or not os.path.isdir(d):
                continue
        except UsageError:  # not a namespace name at all: not ours
            continue
        for fam in (4, 6):
            try:
                os.unlink(_cache_path(state_dir, name, fam))
            except OSError:
                pass
        try:
            os.rmdir(d)
        except OSError:
            pass


def _save_cache(state_dir: str | None, netns: str, family: int, identity: str,
                tables: dict[str, dict[str, tuple[str, str]]]) -> None:
    if not state_dir or not identity:
        return
    path = _cache_path(state_dir, netns, family)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode(_Cache(CACHE_VERSION, identity, family, tables)))
        os.replace(tmp, path)
    except OSError:
        pass  # the cache only saves work; without it chains are compared by meaning


@dataclass
class _TablePlan:
    name: str
    sent: list[str]  # chains declared and rewritten (added + changed), compile order
    delete: list[str]  # stale chains declared and -X'ed
    jumps: list[tuple[str, str]]  # (built-in chain, args) to insert at 1, in order
    rules: list[Rule]

    def lines(self) -> list[str]:
        out = [f"*{self.name}"]
        out += [f":{c} - [0:0]" for c in self.sent + self.delete]
        out += [r.line() for r in self.rules]
        out += [f"-I {c} 1 {a}" for c, a in self.jumps]
        out += [f"-X {c}" for c in self.delete]
        out.append("COMMIT")
        return out


@applier("iptables")
def apply_iptables(compiled: Any, netns: str, ops: Netns, dry_run: bool = False,
                   state_dir: str | None = None) -> ApplyResult:
    from .backends.iptables.compile import jump_rules

    settings = compiled.settings
    want: Ruleset = compiled.ir
    fam = want.family
    res = ApplyResult(netns, settings.mode, fam, dry_run=dry_run)
    clock = _Clock()
    parse, canonical = _live_reader()

    exists = ops.exists(netns)
    live_text = ops.iptables_save(netns, fam) if exists else ""
    live = parse(live_text, source=f"netns {netns}", family=fam)
    identity = ops.identity(netns) if exists else ""
    cache = _load_cache(state_dir, netns, fam, identity)
    clock.lap("read-live")

    jumps_by_table: dict[str, list[tuple[str, str]]] = {}
    plans: list[_TablePlan] = []
    new_cache: dict[str, dict[str, tuple[str, str]]] = {}
    suspects = 0
    live_by: dict[str, dict[str, list[str]]] = {}
    for wt in want.tables:
        lt = live.table(wt.name)
        lchains = lt.by_chain() if lt else {}
        live_by[wt.name] = lchains
        wchains = wt.by_chain()
        tcache = cache.get(wt.name, {})
        tnew: dict[str, tuple[str, str]] = {}
        sent: list[str] = []
        for c in wt.chains:
            wspecs = wchains.get(c, [])
            wd = _digest(wspecs)
            if c not in lchains:
                res.added.append((wt.name, c))
                sent.append(c)
                continue
            lspecs = lchains[c]
            ld = _digest(lspecs)
            hit = tcache.get(c)
            if lspecs == wspecs or (hit is not None and hit[0] == wd and hit[1] == ld) or (
                    len(lspecs) == len(wspecs)
                    and all(canonical(a) == canonical(b) for a, b in zip(wspecs, lspecs))):
                tnew[c] = (wd, ld)
                continue
            res.changed.append((wt.name, c))
            sent.append(c)
            if hit is not None and hit[0] == wd and not hit[1]:
                # Sent exactly this last time and still not recognised: the
                # kernel's spelling defeats the canonical form, so learn it.
                suspects += 1
        new_cache[wt.name] = tnew

        wanted = set(wt.chains)
        stale = [c for c in (lt.chains if lt else ()) if c.startswith(STALE_PREFIXES) and c not in wanted]
        delete, kept = _deletable(lchains, stale, set(sent))
        res.removed += [(wt.name, c) for c in delete]
        res.kept += [(wt.name, c, by) for c, by in kept]
        sent_set = set(sent)
        rules = [r for r in wt.rules if r.chain in sent_set]
        plans.append(_TablePlan(wt.name, sent, delete, [], rules))
    clock.lap("diff")

    # Jumps from the built-in chains (spec section 9): present = `-C` says so.
    # A built-in chain with no rule jumping to the target cannot hold the jump,
    # which saves a process per rule on a fresh namespace.
    for table, chain, args in jump_rules(settings):
        target = rule_target(args)
        lrules = live_by.get(table, {}).get(chain, [])
        present = any(rule_target(s) == target for s in lrules) and ops.check_rule(netns, table, chain, args, fam)
        if not present:
            jumps_by_table.setdefault(table, []).append((chain, args))
            res.jumps.append((table, chain, args))
    for p in plans:
        p.jumps = jumps_by_table.pop(p.name, [])
    for table, js in jumps_by_table.items():  # a jump into a table the compile does not write
        plans.append(_TablePlan(table, [], [], js, []))
    clock.lap("jumps")

    plans = [p for p in plans if p.sent or p.delete or p.jumps]
    table_lines = [p.lines() for p in plans]
    res.payload = "".join(ln + "\n" for lines in table_lines for ln in lines)
    res.lines = sum(len(lines) - 2 for lines in table_lines)
    if dry_run or not plans:
        res.timings = clock.stages
        if not dry_run and state_dir and new_cache != cache:
            _save_cache(state_dir, netns, fam, identity, new_cache)
        return res

    counters = sorted(set(_NFACCT_RE.findall(res.payload)))
    if counters:
        ops.ensure_nfacct(netns, counters)
    if fam == 4 and settings.localhost_nodeports_effective(4):
        # kube-proxy lets NodePorts answer on 127.0.0.0/8 only with route_localnet.
        ops.set_sysctl(netns, "net.ipv4.conf.all.route_localnet", "1")
    clock.lap("prepare")
    _send(ops, netns, fam, plans, table_lines, live_by, clock)

    if state_dir:
        # The kernel prints rules back in its own spelling; remembering that
        # spelling of what was sent spares the next run the canonical compare.
        # For a few chains a whole dump costs more than that compare, so they
        # are remembered without it (live hash "") unless they were resent
        # for no visible reason (see `suspects`).
        readback = sum(len(p.sent) for p in plans) >= READBACK_MIN or suspects > 0
        after = parse(ops.iptables_save(netns, fam), source=f"netns {netns}", family=fam) if readback else None
        for p in plans:
            wt = want.table(p.name)
            wchains = wt.by_chain() if wt else {}
            at = after.table(p.name) if after else None
            achains = at.by_chain() if at else {}
            tnew = new_cache.setdefault(p.name, {})
            for c in p.sent:
                if after is None or c in achains:
                    tnew[c] = (_digest(wchains.get(c, [])), _digest(achains[c]) if after else "")
        _save_cache(state_dir, netns, fam, identity, new_cache)
        clock.lap("cache")
    res.timings = clock.stages
    return res


def _deletable(lchains: dict[str, list[str]], stale: list[str],
               rewritten: set[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Stale chains that can go, and those kept because a chain we leave alone jumps to them.

    A chain that is rewritten or deleted in the same payload loses its old
    rules first, so only the others (built-in, foreign, unchanged) pin a
    stale chain, and a pinned stale chain pins what it jumps to.
    """
    stale_set = set(stale)
    kept: dict[str, str] = {}
    todo: list[tuple[str, str]] = []
    for c, specs in lchains.items():
        if c in rewritten or c in stale_set:
            continue
        for s in specs:
            t = rule_target(s)
            if t in stale_set and t not in kept:
                kept[t] = c
                todo.append((t, c))
    while todo:
        c, _ = todo.pop()
        for s in lchains.get(c, []):
            t = rule_target(s)
            if t in stale_set and t not in kept:
                kept[t] = c
                todo.append((t, c))
    delete = [c for c in stale if c not in kept]
    return delete, [(c, kept[c]) for c in stale if c in kept]


def _send(ops: Netns, netns: str, fam: int, plans: list[_TablePlan], table_lines: list[list[str]],
          live_by: dict[str, dict[str, list[str]]], clock: _Clock) -> None:
    """Load the tables one by one so that a refusal leaves the previous rules in place.

    One table loads all or nothing, so the largest goes first and the
    others are checked with `--test` before it (a full `--test` of a large
    table costs as much as loading it). If the kernel still refuses a later
    table, the tables loaded before it are put back from the live dump.
    """
    offsets, at = [], 0
    for lines in table_lines:
        offsets.append(at)
        at += len(lines)
    order = sorted(range(len(plans)), key=lambda i: -len(table_lines[i]))
    if len(order) > 1:
        rest = order[1:]
        test_lines = [ln for i in rest for ln in table_lines[i]]
        where = [(i, k) for i in rest for k in range(len(table_lines[i]))]
        try:
            ops.iptables_restore(netns, "".join(ln + "\n" for ln in test_lines), fam, test=True)
        except ApplyError as e:
            no = None
            if e.line_no and 0 < e.line_no <= len(where):
                i, k = where[e.line_no - 1]
                no = offsets[i] + k + 1
            raise _refused(fam, e, no, "nothing was sent, the previous rules are left in place") from None
        clock.lap("test")
    done: list[int] = []
    for i in order:
        p = plans[i]
        try:
            ops.iptables_restore(netns, "".join(ln + "\n" for ln in table_lines[i]), fam)
        except ApplyError as e:
            no = e.line_no + offsets[i] if e.line_no else None
            undone = []
            for j in reversed(done):
                q = plans[j]
                try:
                    ops.iptables_restore(netns, _rollback_payload(q, live_by.get(q.name, {})), fam)
                    undone.append(q.name)
                except ApplyError as e2:
                    raise _refused(fam, e, no, f"putting the {q.name} table back failed too: {e2}") from None
            tail = f"; {', '.join(undone)} put back as before" if undone else ""
            raise _refused(fam, e, no, f"the previous rules are left in place{tail}") from None
        done.append(i)
    clock.lap("restore")


def _refused(fam: int, e: ApplyError, no: int | None, outcome: str) -> ApplyError:
    """E, with its line number counted in the whole payload and what became of the rules."""
    if e.line:
        msg = f"{restore_tool(fam)} refused line {no} of the payload: {e.line}"
        reason = restore_reason(e.stderr)
        if reason:
            msg += f" ({reason})"
    else:
        msg = str(e)
    return ApplyError(f"{msg}; {outcome}", no, e.line, e.stderr, e.table)


def _rollback_payload(p: _TablePlan, lchains: dict[str, list[str]]) -> str:
    """The payload that undoes P, from the live rules read before it was sent."""
    restore = [c for c in p.sent if c in lchains] + list(p.delete)
    drop = [c for c in p.sent if c not in lchains]
    out = [f"*{p.name}"]
    out += [f":{c} - [0:0]" for c in restore + drop]
    for c in restore:
        out += [f"-A {c} {s}" if s else f"-A {c}" for s in lchains[c]]
    out += [f"-D {c} {a}" for c, a in p.jumps]
    out += [f"-X {c}" for c in drop]
    out.append("COMMIT")
    return "".join(ln + "\n" for ln in out)
