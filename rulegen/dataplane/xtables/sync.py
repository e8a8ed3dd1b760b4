"""The shared xtables applier: bring a namespace's iptables tables to a compile, sending only what changed.

iptables mode uses it for its whole payload, IPVS mode (with its own jumps
and stale-chain rules) for its iptables glue; a `Target` says what one of
them wants. Compare the wanted tables chain by chain with what is live in
the namespace, and send per table one `iptables-restore --noflush` payload
that declares and rewrites only the new and changed chains, declares and
`-X`es the chains whose names carry one of the target's stale prefixes
that are live but no longer wanted (kube-proxy's partial sync), and leaves
exactly one copy of each of the target's jumps from the built-in chains:
missing ones inserted (`-I CHAIN 1` in the target's order, so the last
listed ends up first), extra copies (two applies that raced, a copy made
by hand) deleted by rule number. One table loads all or nothing; the other
tables are checked with `--test` before the first loads, and if the kernel
still refuses a later one, those loaded before it are put back from the
live rules, so a failed apply leaves the previous rules in place. Chains
that are not the target's are never touched. The kernel is reached only
through the `Kernel` bundle's `xtables` and `netns` clients, so tests run
on their fakes.

What is live comes from one of two places. The per-namespace cache
(`state_dir/NETNS/<target>-ipvF.json`) describes the live tables as the
last apply left them: for each chain whose rules are a compile's, the hash
of those rules as compiled and (when known) as the kernel prints them
back; for every other live chain (built-ins, foreign chains) its rules. It
is trusted whole only when it is provably fresh: same namespace (identity
= inode + namespace cookie + boot id, so a namespace made again is never
mistaken for the old one), same backend, and the nf_tables generation the
cache was written at equals the kernel's now. The kernel bumps that
generation on every committed change in the namespace, by anyone, so equal
means nothing changed since; and the cache records a generation only when
the generation after sending is exactly the one before plus the tables
this apply committed (read before anything else), so a change that slipped
in while we worked also voids it. Then nothing is read back: unchanged
chains are recognised by hash, and only the chains about to be rewritten
or deleted are listed (`iptables -S` of just those, for the rollback and
the stale-chain references), each checked against its cached hash where
known. Otherwise (legacy iptables has no generation; a foreign change; no
cache) the whole live table is read with iptables-save and compared per
chain: equal text, or the cached pair (compiled hash, live hash) for
spellings the canonical form cannot undo, or equal `spec.canonical` forms.
A stale cache can therefore cost time but never a wrong result. This is
kube-proxy's partial sync, which trusts its memory of what it wrote, with
the memory checked instead of trusted; kube-proxy's periodic full sync
corresponds to the slow path, taken whenever the check fails.
"""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from ...apply.result import ApplyResult, Clock
from ...apply.state import read_state_file, write_state_file
from ...files import StateFileError, remove_state
from ...gcpause import gc_paused
from .model import BUILTIN_CHAINS, Rule, TableView, chain_digest
from .parse import parse
from .restore import ApplyError, restore_reason, restore_tool, rule_target
from .spec import canonical

if TYPE_CHECKING:
    from ...apply.kernel import Kernel
    from .client import Xtables

_NFACCT_RE = re.compile(r"--nfacct-name\s+(\S+)")
CACHE_VERSION = 3
READBACK_MIN = 64  # sent chains from which reading them back beats comparing them next time
DECLARE_SORTED_MIN = 256  # declared chains from which they are sent in descending name order
LISTBACK_MAX = 256  # sent chains up to which a fast run lists them back to learn their spelling


@dataclass(frozen=True)
class Target:
    """What one xtables apply brings a namespace to.

    `name` names its state files (`NAME-ipv4.json`, `.gen`), so two
    targets never read each other's cache; `views` are the wanted tables;
    `jumps` the (table, built-in chain, rule) jumps installed outside the
    payload, each kept exactly once; `stale_prefixes` the prefixes of live
    chains to delete when no longer wanted; `sysctls` set in the namespace
    before the rules load.
    """

    name: str
    views: list[TableView]
    jumps: tuple[tuple[str, str, str], ...]
    stale_prefixes: tuple[str, ...]
    sysctls: tuple[tuple[str, str], ...] = ()


def state_files(name: str) -> tuple[str, ...]:
    """The file names a target called NAME keeps in a namespace's state folder."""
    return tuple(f"{name}-ipv{fam}.{ext}" for fam in (4, 6) for ext in ("json", "gen"))


@dataclass
class XtablesApplyResult(ApplyResult):
    """`ApplyResult` with the jump rules and the iptables backend, worded for chains."""

    jumps: list[tuple[str, str, str]] = field(default_factory=list)  # inserted (table, chain, args)
    jumps_removed: list[tuple[str, str, str]] = field(default_factory=list)  # extra copies deleted
    backend: str = ""  # "nft" / "legacy" (iptables backend used)

    def summary(self) -> str:
        made = " (namespace created)" if self.created else ""
        jumps = "to insert" if self.dry_run else "inserted"
        sent = f"would send {self.lines} lines (dry run)" if self.dry_run else f"sent {self.lines} lines"
        s = (f"netns {self.netns}{made}: {len(self.added)} chains added, {len(self.changed)} changed, "
             f"{len(self.removed)} removed, {len(self.jumps)} jump rules {jumps}")
        if self.jumps_removed:
            s += f", {len(self.jumps_removed)} duplicate jump rules {'to remove' if self.dry_run else 'removed'}"
        s += f"; {sent} in {self.seconds:.3f} s"
        if self.backend:
            where = "the cache" if self.source == "cache" else "iptables-save"
            s += f" (iptables-{self.backend}, live state from {where})"
        for table, chain, by in self.kept:
            s += f"\nnetns {self.netns}: kept stale {table} chain {chain}: still referenced by {by}"
        return s

    def to_json(self, warnings: list[dict[str, Any]], timings: list[tuple[str, float]]) -> dict[str, Any]:
        """What `rulegen apply --json` prints (its shape is documented in README.md).

        WARNINGS and TIMINGS are the whole command's (the compile's and this
        run's), which the caller puts together.
        """
        def jump_list(js: list[tuple[str, str, str]]) -> list[dict[str, str]]:
            return [{"table": t, "chain": c, "rule": a} for t, c, a in js]

        out: dict[str, Any] = {
            "netns": self.netns, "mode": self.mode, "family": self.family, "backend": self.backend,
            "created": self.created, "dry_run": self.dry_run, "live_state_from": self.source,
            "lines": self.lines,
            "chains": {"added": len(self.added), "changed": len(self.changed), "removed": len(self.removed),
                       "kept": [{"table": t, "chain": c, "referenced_by": by} for t, c, by in self.kept]},
            "jumps": {"inserted": jump_list(self.jumps), "removed": jump_list(self.jumps_removed)},
            "warnings": warnings,
            "seconds": round(self.seconds, 6),
            "timings": [{"stage": n, "seconds": round(t, 6)} for n, t in timings],
        }
        if self.dry_run:
            out["payload"] = self.payload
        return out


class _TableState(msgspec.Struct):
    """One live table: chains holding a compile's rules by hash, every other chain by its rules."""

    ours: dict[str, str]  # chain -> hash of the compiled rules it holds
    others: dict[str, list[str]]  # built-in and foreign chains (and compiled ones not recognised)
    spelt: dict[str, str] = {}  # chain in `ours` -> hash of its rules as the kernel prints them, where read


class _Cache(msgspec.Struct):
    version: int
    identity: str
    backend: str
    family: int
    serial: str  # names this file's contents; the generation file refers to it
    tables: dict[str, _TableState]


class _Generation(msgspec.Struct):
    """The nf_tables generation at which the cache with `serial` described the namespace."""

    serial: str
    generation: int


def _cache_path(state_dir: str, netns: str, family: int, name: str) -> str:
    return os.path.join(state_dir, netns, f"{name}-ipv{family}.json")


def _gen_path(state_dir: str, netns: str, family: int, name: str) -> str:
    return os.path.join(state_dir, netns, f"{name}-ipv{family}.gen")


def _load_cache(state_dir: str | None, netns: str, family: int, identity: str, backend: str,
                warn: list[str], name: str) -> _Cache | None:
    if not state_dir or not identity:
        return None
    raw = read_state_file(_cache_path(state_dir, netns, family, name), warn)
    if raw is None:
        return None
    try:
        c = msgspec.json.decode(raw, type=_Cache)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if c.version != CACHE_VERSION or c.identity != identity or c.family != family or c.backend != backend:
        return None
    return c


def _load_generation(state_dir: str, netns: str, family: int, warn: list[str], name: str) -> _Generation | None:
    raw = read_state_file(_gen_path(state_dir, netns, family, name), warn)
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=_Generation)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _save_cache(state_dir: str | None, netns: str, family: int, identity: str, backend: str,
                tables: dict[str, _TableState], generation: int | None, warn: list[str], name: str) -> None:
    if not state_dir or not identity:
        return
    serial = uuid.uuid4().hex
    # The generation file goes first (away) and last (back): a reader
    # never pairs a new generation with old contents, or the reverse.
    gen_path = _gen_path(state_dir, netns, family, name)
    try:
        remove_state(gen_path)
    except StateFileError:
        pass  # the folder is not ours: writing the cache below says so
    except OSError:
        return
    if not write_state_file(_cache_path(state_dir, netns, family, name),
                            msgspec.json.encode(_Cache(CACHE_VERSION, identity, backend, family, serial, tables)),
                            warn):
        return
    if generation is not None:
        write_state_file(gen_path, msgspec.json.encode(_Generation(serial, generation)), warn)


def _advance_other_family(state_dir: str | None, netns: str, family: int, before: int, after: int,
                          warn: list[str], name: str) -> None:
    """The generation counts both families' commits: carry the other family's cache over ours."""
    if not state_dir:
        return
    other = 6 if family == 4 else 4
    g = _load_generation(state_dir, netns, other, warn, name)
    if g is not None and g.generation == before:
        write_state_file(_gen_path(state_dir, netns, other, name), msgspec.json.encode(_Generation(g.serial, after)),
                         warn)


# ---------------------------------------------------------------------- the sync


@dataclass
class _Live:
    """What is live in one table, from the cache or from a dump.

    `specs`: rules of every chain whose rules are known (all of them after a
    dump; built-ins and foreign chains from the cache). `ours`: from a fresh
    cache, chains known only by the hash of the compile they hold. `chains`:
    live user chains, in order.
    """

    chains: list[str]
    specs: dict[str, list[str]]
    ours: dict[str, str]
    spelt: dict[str, str]


@dataclass
class _TablePlan:
    name: str
    sent: list[str]  # chains declared and rewritten (added + changed), compile order
    delete: list[str]  # stale chains declared and -X'ed
    jumps: list[tuple[str, str]]  # (built-in chain, args) to insert at 1, in order
    rules: list[Rule]
    drops: list[tuple[str, int, str]] = field(default_factory=list)  # (built-in chain, rule number, live
    # spec): extra copies of a jump, numbered as before this payload, highest first per chain

    def lines(self, backend: str = "") -> list[str]:
        out = [f"*{self.name}"]
        declare = self.sent + self.delete
        if backend == "legacy" and len(declare) > DECLARE_SORTED_MIN:
            # libiptc (iptables-legacy) inserts each new chain into its sorted
            # chain list walking from the nearest index entry; in descending
            # order every insert lands in front (halves a 10k-Service load).
            # Declaration order means nothing to the result. Not for nft: it
            # keeps chains in creation order, and iptables-nft-save's quicksort
            # (first element as pivot, recursive) overflows the stack on 100k
            # chains that are already in order.
            declare = sorted(declare, reverse=True)
        out += [f":{c} - [0:0]" for c in declare]
        out += [r.line() for r in self.rules]
        # By number, highest first, before any -I: each number still means
        # the rule it meant when the chain was read.
        out += [f"-D {c} {n}" for c, n, _ in self.drops]
        out += [f"-I {c} 1 {a}" for c, a in self.jumps]
        out += [f"-X {c}" for c in self.delete]
        out.append("COMMIT")
        return out


class _CacheDisagrees(Exception):
    """A listed chain does not match the fresh cache: read the whole table instead."""


def sync(target: Target, netns: str, kernel: Kernel, *, mode: str, family: int, dry_run: bool = False,
         state_dir: str | None = None) -> XtablesApplyResult:
    """Bring NETNS's FAMILY tables to TARGET (MODE names the mode in the result)."""
    with gc_paused(freeze=False):
        try:
            return _sync(target, netns, kernel, mode, family, dry_run, state_dir, trust_cache=True)
        except _CacheDisagrees:
            return _sync(target, netns, kernel, mode, family, dry_run, state_dir, trust_cache=False)


def _sync(goal: Target, netns: str, kernel: Kernel, mode: str, fam: int, dry_run: bool, state_dir: str | None,
          trust_cache: bool) -> XtablesApplyResult:
    run = _Run(goal, netns, kernel, mode, fam, dry_run, state_dir)
    run.read_live(trust_cache)
    run.compare()
    if run.res.source == "cache":
        run.list_known_by_hash()
    run.plan_deletions()
    run.plan_jumps()
    table_lines = run.payload()
    if dry_run or not run.plans:
        run.keep_what_was_found()
    else:
        run.send(table_lines)
        run.update_cache()
    run.res.timings = run.clock.stages
    return run.res


class _Run:
    """One sync's state, stage by stage: what is live, what is wanted, and the plan per table."""

    def __init__(self, goal: Target, netns: str, kernel: Kernel, mode: str, fam: int, dry_run: bool,
                 state_dir: str | None) -> None:
        self.goal, self.netns, self.fam, self.state_dir = goal, netns, fam, state_dir
        self.name = goal.name
        self.res = XtablesApplyResult(netns, mode, fam, dry_run=dry_run)
        self.clock = Clock()
        self.xt, self.ns = kernel.xtables, kernel.netns
        self.live: dict[str, _Live] = {}
        self.known: dict[str, _TableState] = {}  # the cache's tables (fresh or not): hints for spelling
        self.wanted_by: dict[str, TableView] = {}
        self.wdig: dict[str, dict[str, str]] = {}
        self.plans: list[_TablePlan] = []
        self.before: dict[str, _TableState] = {}  # the live state as this run found it
        self.suspects = 0  # chains sent as compiled last time and still not recognised

    def read_live(self, trust_cache: bool) -> None:
        """What is live: from the cache when the kernel proves it fresh, else from iptables-save."""
        netns, fam, xt, res, name = self.netns, self.fam, self.xt, self.res, self.name
        self.exists = exists = self.ns.exists(netns)
        self.backend = backend = xt.backend_for(netns, fam)
        res.backend = backend
        self.identity = identity = self.ns.identity(netns) if exists else ""
        # Read before anything else: a change after this point shows as a gap.
        self.gen0 = gen0 = xt.generation(netns, fam) if exists else None
        cache = _load_cache(self.state_dir, netns, fam, identity, backend, res.warnings, name)
        self.tables_needed = {t.name for t in self.goal.views} | {t for t, _, _ in self.goal.jumps}
        fresh = False
        if trust_cache and cache is not None and gen0 is not None and self.state_dir:
            g = _load_generation(self.state_dir, netns, fam, res.warnings, name)
            fresh = (g is not None and g.serial == cache.serial and g.generation == gen0
                     and self.tables_needed <= set(cache.tables))
        live = self.live
        if fresh:
            assert cache is not None
            for tname, ts in cache.tables.items():
                builtin = BUILTIN_CHAINS.get(tname, ())
                names = list(ts.ours) + [c for c in ts.others if c not in builtin]  # no built-in holds a compile
                live[tname] = _Live(names, {c: list(s) for c, s in ts.others.items()}, dict(ts.ours),
                                    dict(ts.spelt))
            res.source = "cache"
            self.clock.lap("read-cache")
        else:
            dump = parse(xt.save(netns, fam) if exists else "", source=f"netns {netns}", family=fam)
            for t in dump.tables:
                live[t.name] = _Live(list(t.chains), t.by_chain(), {}, {})
            res.source = "dump"
            self.clock.lap("read-live")
        self.known = cache.tables if cache is not None else {}

    def compare(self) -> None:
        """Per wanted table: the chains to send (added and changed) and the stale chains to delete."""
        for wt in self.goal.views:
            self._compare_table(wt)
        self.clock.lap("diff")

    def _compare_table(self, wt: TableView) -> None:
        res = self.res
        lt = self.live.setdefault(wt.name, _Live([], {}, {}, {}))
        self.wanted_by[wt.name] = wt
        digests = self.wdig[wt.name] = wt.digests()
        tstate = self.known.get(wt.name)
        tours, tspelt = (tstate.ours, tstate.spelt) if tstate is not None else ({}, {})
        hashed = lt.ours  # from a fresh cache: chains that hold a compile, by its hash
        # Chains known by hash: unchanged exactly when the hashes agree (and
        # those this compile no longer wants stay as they are for now).
        ours: dict[str, str] = dict(hashed)
        spelt: dict[str, str] = dict(lt.spelt)
        if hashed:
            # Set operations in C: a 10k-Service table has ~140k chains and one changed.
            differ = {c for c, _ in digests.items() - hashed.items()}
            changed = differ & hashed.keys()
            unknown = sorted(differ - changed)
        else:
            changed, unknown = set(), wt.chains
        added: set[str] = set()
        for c in unknown:
            lspecs = lt.specs.get(c)
            if lspecs is None:
                added.add(c)
                continue
            wd = digests[c]
            ld = chain_digest(lspecs)
            hit = tours.get(c)
            hit_live = tspelt.get(c, "")
            if hit == wd and hit_live == ld:  # sent as compiled now, and the kernel still prints it so
                ours[c] = wd
                spelt[c] = ld
                continue
            wspecs = wt.specs(c)  # (an incremental compile may have to compile everything for this)
            if lspecs == wspecs or (
                    len(lspecs) == len(wspecs)
                    and all(canonical(a) == canonical(b) for a, b in zip(wspecs, lspecs))):
                ours[c] = wd
                spelt[c] = ld
                continue
            changed.add(c)
            if hit == wd and not hit_live:
                # Sent exactly this last time and still not recognised: the
                # kernel's spelling defeats the canonical form, so learn it.
                self.suspects += 1
        sent = _in_order(changed | added, wt.chains)
        res.added += [(wt.name, c) for c in sent if c in added]
        res.changed += [(wt.name, c) for c in sent if c in changed]
        self.before[wt.name] = _TableState(ours, {c: s for c, s in lt.specs.items() if c not in ours}, spelt)

        gone = {c for c in lt.chains if c not in digests} if not hashed else (
            lt.ours.keys() - digests.keys()) | {c for c in lt.specs if c not in digests}
        stale = _in_order({c for c in gone if c.startswith(self.goal.stale_prefixes)}, lt.chains)
        self.plans.append(_TablePlan(wt.name, sent, stale, [], []))

    def list_known_by_hash(self) -> None:
        """From a fresh cache: list the rules this run needs of chains known only by hash.

        Those about to be rewritten or deleted (for the rollback), and those
        the stale-chain check must read; each checked against its cached hash
        where known, the cache once more where it is cheap.
        """
        for p in self.plans:
            lt = self.live[p.name]
            wanted = self.wdig[p.name]
            need = [c for c in p.sent + p.delete if c in lt.ours and c not in lt.specs] + [
                c for c in lt.ours.keys() - wanted.keys() if c not in lt.specs and c not in p.delete]
            if not need:
                continue
            got = self.xt.list_chains(self.netns, self.fam, p.name, need)
            if got is None:
                raise _CacheDisagrees()
            for c in need:
                ld = lt.spelt.get(c, "")
                if ld and chain_digest(got[c]) != ld:
                    raise _CacheDisagrees()
                lt.specs[c] = got[c]
        self.clock.lap("list")

    def plan_deletions(self) -> None:
        """Which stale chains can go (none a kept chain still jumps to), and the rules of the chains sent."""
        res = self.res
        for p in self.plans:
            lt = self.live[p.name]
            if p.delete:
                # The rules of every live chain that stays as it is. A chain known
                # only by hash holds the compile's rules, and those jump only to
                # chains the compile declares (were one to jump to a chain deleted
                # here, the kernel would refuse the -X and nothing would change),
                # so only the chains whose rules are known can pin a stale one.
                lchains = {c: lt.specs[c] for c in list(BUILTIN_CHAINS.get(p.name, ())) + lt.chains
                           if c in lt.specs}
                delete, kept = _deletable(lchains, p.delete, set(p.sent))
                p.delete = delete
                res.removed += [(p.name, c) for c in delete]
                res.kept += [(p.name, c, by) for c, by in kept]
            wt = self.wanted_by.get(p.name)
            if wt is None or not p.sent:
                continue
            p.rules = wt.rules_of(p.sent)

    def plan_jumps(self) -> None:
        """Jumps from the built-in chains (installed outside the payload): exactly one copy of each.

        A copy is a rule there with the same meaning (canonical form). Where
        a jump has several, one is kept and the others are deleted, so two
        applies that raced or a copy made by hand are put right; the copy
        kept is the first that keeps the chain's jumps in the target's order
        (the last listed first), else the first. When no rule matches by
        form, `-C` may still find one in a spelling the canonical form cannot
        undo: then it is left as it is. A built-in chain with no rule jumping
        to the target cannot hold it.
        """
        res, live, plans = self.res, self.live, self.plans
        jumps_by_table: dict[str, list[tuple[str, str]]] = {}
        drops_by_table: dict[str, list[tuple[str, int, str]]] = {}
        found: dict[tuple[str, str], list[tuple[str, list[int]]]] = {}  # (table, chain) -> (args, copies)
        for table, chain, args in self.goal.jumps:
            target = rule_target(args)
            lspecs = live.get(table, _Live([], {}, {}, {})).specs.get(chain, [])
            same_target = [i for i, s in enumerate(lspecs) if rule_target(s) == target]
            copies: list[int] = []
            if same_target:
                want_c = canonical(args)
                copies = [i for i in same_target if canonical(lspecs[i]) == want_c]
                if not copies and self.xt.check_rule(self.netns, table, chain, args, self.fam):
                    continue
            if not copies:
                jumps_by_table.setdefault(table, []).append((chain, args))
                res.jumps.append((table, chain, args))
            else:
                found.setdefault((table, chain), []).append((args, copies))
        for (table, chain), got in found.items():
            lspecs = live[table].specs[chain]
            prev = -1
            for args, copies in reversed(got):  # the target's order in the chain
                keep = next((i for i in copies if i > prev), copies[0])
                prev = max(prev, keep)
                for i in copies:
                    if i != keep:
                        drops_by_table.setdefault(table, []).append((chain, i + 1, lspecs[i]))
                        res.jumps_removed.append((table, chain, args))
        for drops in drops_by_table.values():
            drops.sort(key=lambda d: (d[0], -d[1]))
        for p in plans:
            p.jumps = jumps_by_table.pop(p.name, [])
            p.drops = drops_by_table.pop(p.name, [])
        for table in sorted(jumps_by_table.keys() | drops_by_table.keys()):  # a table the compile does not write
            plans.append(_TablePlan(table, [], [], jumps_by_table.get(table, []), [], drops_by_table.get(table, [])))
        for table in self.tables_needed - set(self.before):
            lt = live.get(table, _Live([], {}, {}, {}))
            self.before[table] = _TableState(dict(lt.ours), {c: s for c, s in lt.specs.items() if c not in lt.ours},
                                             dict(lt.spelt))
        self.clock.lap("jumps")

    def payload(self) -> list[list[str]]:
        """The lines of each table to send (plans with nothing to send dropped); the result's payload."""
        self.plans = [p for p in self.plans if p.sent or p.delete or p.jumps or p.drops]
        table_lines = [p.lines(self.backend) for p in self.plans]
        self.res.payload = "".join(ln + "\n" for lines in table_lines for ln in lines)
        self.res.lines = sum(len(lines) - 2 for lines in table_lines)
        return table_lines

    def keep_what_was_found(self) -> None:
        """Nothing sent (a dry run, or nothing to do): cache what was read, if nothing moved meanwhile."""
        res = self.res
        if self.state_dir and self.exists:
            same = self.gen0 is not None and self.xt.generation(self.netns, self.fam) == self.gen0
            if res.source == "dump" or not same:
                _save_cache(self.state_dir, self.netns, self.fam, self.identity, self.backend, self.before,
                            self.gen0 if same else None, res.warnings, self.name)

    def send(self, table_lines: list[list[str]]) -> None:
        """nfacct counters and sysctls first, then the tables, each all or nothing (`_send`)."""
        counters = sorted(set(_NFACCT_RE.findall(self.res.payload)))
        if counters:
            self.xt.ensure_nfacct(self.netns, counters)
        for key, value in self.goal.sysctls:
            self.ns.set_sysctl(self.netns, key, value)
        self.clock.lap("prepare")
        live_by = {t: lt.specs for t, lt in self.live.items()}
        _send(self.xt, self.netns, self.fam, self.plans, table_lines, live_by, self.clock)

    def update_cache(self) -> None:
        """The cache of what is live now, vouched for by the generation only when nobody else committed."""
        xt, netns, fam, plans, gen0 = self.xt, self.netns, self.fam, self.plans, self.gen0
        gen1 = xt.generation(netns, fam)
        # Exactly one step per table loaded: nobody else committed meanwhile.
        fresh_after = gen0 is not None and gen1 is not None and gen1 == gen0 + len(plans)
        if not self.state_dir:
            return
        after = _after(self.before, plans, self.wdig)
        # The kernel prints rules back in its own spelling; remembering that
        # spelling spares a later full read the canonical compare. When the
        # generation vouches for the cache that read rarely happens, so it is
        # left to that run; otherwise it pays off from READBACK_MIN chains,
        # or when chains were resent for no visible reason.
        n_sent = sum(len(p.sent) for p in plans)
        readback = not fresh_after and (n_sent >= READBACK_MIN or self.suspects > 0)
        if fresh_after and 0 < n_sent <= LISTBACK_MAX:
            # A few chains: listing just them is cheap, and their spelling lets
            # the next fast run check them when it lists them again.
            for p in plans:
                got = xt.list_chains(netns, fam, p.name, p.sent) if p.sent else None
                if got is None:
                    continue
                ts = after[p.name]
                for c in p.sent:
                    ts.spelt[c] = chain_digest(got[c])
            if xt.generation(netns, fam) != gen1:
                fresh_after = False  # someone changed something while we listed: vouch for nothing
        if readback:
            dump = parse(xt.save(netns, fam), source=f"netns {netns}", family=fam)
            for p in plans:
                at = dump.table(p.name)
                achains = at.by_chain() if at else {}
                ts = after[p.name]
                for c in p.sent:
                    if c in achains:
                        ts.spelt[c] = chain_digest(achains[c])
        _save_cache(self.state_dir, netns, fam, self.identity, self.backend, after, gen1 if fresh_after else None,
                    self.res.warnings, self.name)
        if fresh_after and gen0 is not None and gen1 is not None:
            _advance_other_family(self.state_dir, netns, fam, gen0, gen1, self.res.warnings, self.name)
        self.clock.lap("cache")


def _in_order(few: set[str], chains: Any) -> list[str]:
    """FEW (a subset of CHAINS) in the order of CHAINS; a handful is found by C-level search."""
    if not few:
        return []
    if len(few) <= 16:
        return sorted(few, key=chains.index)
    return [c for c in chains if c in few]


def _after(before: dict[str, _TableState], plans: list[_TablePlan],
           wdig: dict[str, dict[str, str]]) -> dict[str, _TableState]:
    """BEFORE with PLANS loaded: sent chains hold the compile, deleted ones are gone, jumps in front."""
    out = {t: _TableState(dict(ts.ours), dict(ts.others), dict(ts.spelt)) for t, ts in before.items()}
    for p in plans:
        ts = out.setdefault(p.name, _TableState({}, {}))
        for c in p.sent:
            ts.others.pop(c, None)
            ts.ours[c] = wdig[p.name][c]
            ts.spelt.pop(c, None)
        for c in p.delete:
            ts.ours.pop(c, None)
            ts.spelt.pop(c, None)
            ts.others.pop(c, None)
        for chain, n, _ in p.drops:  # highest number first, as sent
            del ts.others[chain][n - 1]
        for chain, args in p.jumps:  # each `-I CHAIN 1` lands in front of the ones before it
            ts.others[chain] = [args] + ts.others.get(chain, [])
    return out


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

    def pin(s: str, by: str) -> None:
        t = rule_target(s)
        if t in stale_set and t not in kept:
            kept[t] = by
            todo.append((t, by))

    for c, specs in lchains.items():
        if c in rewritten or c in stale_set:
            continue
        for s in specs:
            # A jump to a user chain takes no target options, so the chain is
            # the last word (kube-proxy writes it so, iptables-save prints it
            # so); the full tokenizer confirms the few candidates.
            if s[s.rfind(" ") + 1:] in stale_set:
                pin(s, c)
    while todo:
        c, _ = todo.pop()
        for s in lchains.get(c, []):  # a pinned stale chain: every rule, no last-word filter
            pin(s, c)
    delete = [c for c in stale if c not in kept]
    return delete, [(c, kept[c]) for c in stale if c in kept]


def _send(xt: Xtables, netns: str, fam: int, plans: list[_TablePlan], table_lines: list[list[str]],
          live_by: dict[str, dict[str, list[str]]], clock: Clock) -> None:
    """Load the tables one by one so that a refusal leaves the previous rules in place.

    One table loads all or nothing, so the largest goes first and the
    others are checked with `--test` before it (a full `--test` of a large
    table costs as much as loading it). If the kernel still refuses a later
    table, the tables loaded before it are put back from the live rules.
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
            xt.restore(netns, "".join(ln + "\n" for ln in test_lines), fam, test=True)
        except ApplyError as e:
            no = None
            if e.line_no and 0 < e.line_no <= len(where):
                i, k = where[e.line_no - 1]
                no = offsets[i] + k + 1
            raise _refused(fam, e, no, "nothing was sent, the previous rules are left in place") from None
        clock.lap("test")
    done: list[int] = []
    for i in order:
        try:
            xt.restore(netns, "".join(ln + "\n" for ln in table_lines[i]), fam)
        except ApplyError as e:
            no = e.line_no + offsets[i] if e.line_no else None
            undone = []
            for j in reversed(done):
                q = plans[j]
                try:
                    xt.restore(netns, _rollback_payload(q, live_by.get(q.name, {})), fam)
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
        out += [f"-A {c} {s}" if s else f"-A {c}" for s in lchains.get(c, [])]
    out += [f"-D {c} {a}" for c, a in p.jumps]
    out += [f"-I {c} {n} {spec}" for c, n, spec in reversed(p.drops)]  # lowest first: each back at its number
    out += [f"-X {c}" for c in drop]
    out.append("COMMIT")
    return "".join(ln + "\n" for ln in out)
