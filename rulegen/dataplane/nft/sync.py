"""The nftables applier's lifecycle: bring one table of a namespace to a wanted state, sending only what changed.

The wanted state is a `state.TableState` (a compile replayed, or a script
played). The table is the applier's alone (`ip kube-proxy` / `ip6
kube-proxy`): no other table is read or touched. What is live comes from
one of two places:

- **the cache** (`state_dir/NETNS/nftables-ipvF.msgpack`, with its
  generation in `.gen`): the view (`script.View`, spellings as compiled)
  of what the last apply left, trusted only when the namespace's identity
  is the same and the nf_tables generation is still the one the apply's
  own commit produced (the kernel bumps it on every commit, by anyone).
  Then nothing is read back: the difference is computed against the cache
  and sent as one transaction (`loader.send_change`), over netlink bound
  to that generation when every operation has an encoding, so a commit
  that slips in between is refused by the kernel, not applied on a view
  that is gone.
- **the kernel** otherwise: `nft list table` of our table, parsed and
  compared in the normal form (`script.normal_view`), as kube-proxy's
  periodic full sync would; the difference goes as one transaction, bound
  to the generation read before the listing. A table nft lists in a form
  the parser does not read (objects kube-proxy never makes), or a change
  one transaction of differences cannot make in place (the table's
  comment, a regular chain's comment), is rebuilt: `delete table` and the
  whole state, in one transaction.

With no table at all it is the phased first load (`loader.load_first`).
Stale chains and sets are deleted in the same transaction that removes
what pointed at them (rules flushed, map elements deleted first): the
state after an apply is exactly a fresh full load's. kube-proxy instead
flushes stale chains and deletes them a second later, because before
Linux 6.2 the kernel noticed a deleted map element's reference to a chain
only a moment after the commit; should a kernel refuse the deletion so
(EBUSY), the transaction is sent again without the chain deletions, and
the chains (flushed, unreachable) are deleted by the next apply, which
finds them in the live table or the cache. Every transaction is all or
nothing: a refused one leaves the previous state, and the error names
the refused command.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import msgspec

from ...apply.result import ApplyResult, Clock
from ...apply.state import read_state_file, write_state_file
from ...files import StateFileError, remove_state
from ...gcpause import gc_paused
from . import loader as ld
from . import script as sc
from .model import ADD, DELETE, Chain, Element
from .parse import NftParseError, parse_listing
from .state import TableState

if TYPE_CHECKING:
    from ...apply.kernel import Kernel

STATE_NAME = "nftables"
CACHE_VERSION = 1
STALE_RETRIES = 3  # listings retried when the table changes under us between listing and sending


def state_files() -> tuple[str, ...]:
    return tuple(f"{STATE_NAME}-ipv{fam}.{ext}" for fam in (4, 6) for ext in ("msgpack", "gen"))


@dataclass
class NftApplyResult(ApplyResult):
    """`ApplyResult` worded for one nftables table: objects, elements, transactions and how they went."""

    table: str = ""  # "ip kube-proxy"
    path: str = ""  # first | change | rebuild | unchanged
    via: str = ""  # nft | netlink | both (what carried the transactions)
    transactions: int = 0
    elements_added: int = 0
    elements_removed: int = 0
    phases: list[tuple[str, float]] = field(default_factory=list)  # each transaction of a first load

    def summary(self) -> str:
        made = " (namespace created)" if self.created else ""
        where = {"cache": "the cache", "dump": "nft list table"}.get(self.source, "none: no table yet")
        if not self.lines:
            what = "nothing to change; nothing sent"
        else:
            what = (f"{len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed, "
                    f"{self.elements_added} elements added, {self.elements_removed} removed; ")
            how = {"both": "nft and netlink"}.get(self.via, self.via)
            if self.dry_run:
                what += f"would send {self.lines} commands in {self.transactions} transaction(s) (dry run)"
            else:
                what += f"sent {self.lines} commands in {self.transactions} transaction(s) ({how})"
        s = f"netns {self.netns}{made}: table {self.table}: {what} in {self.seconds:.3f} s (live state from {where})"
        for group, name, by in self.kept:
            s += f"\nnetns {self.netns}: kept stale {group} {name}: {by}"
        return s

    def to_json(self, warnings: list[dict[str, Any]], timings: list[tuple[str, float]]) -> dict[str, Any]:
        out = super().to_json(warnings, timings)
        out["nftables"] = {"table": self.table, "path": self.path, "via": self.via, "transactions": self.transactions,
                           "elements": {"added": self.elements_added, "removed": self.elements_removed}}
        return out


# ---------------------------------------------------------------- the cache

_ChainEntry = tuple[tuple[Optional[str], Optional[str], Optional[int], Optional[str]], str]
_SetEntry = tuple[tuple[str, str, tuple[str, ...], Optional[int], Optional[str]],
                  list[tuple[tuple[str, ...], tuple[str, ...], Optional[str]]]]


class _Cache(msgspec.Struct, array_like=True):
    version: int
    identity: str
    table: str  # "ip kube-proxy"
    serial: str  # names these contents; the generation file refers to it
    comment: Optional[str]
    chains: dict[str, _ChainEntry]
    sets: dict[str, _SetEntry]


class _Generation(msgspec.Struct):
    serial: str
    generation: int


def _paths(state_dir: str, netns: str, family: int) -> tuple[str, str]:
    base = os.path.join(state_dir, netns, f"{STATE_NAME}-ipv{family}")
    return base + ".msgpack", base + ".gen"


def _load(state_dir: str | None, netns: str, family: int, identity: str, table: str, gen_now: int | None,
          warn: list[str]) -> sc.View | None:
    """The cached view, when the kernel proves it fresh (same identity, the generation it was written at)."""
    if not state_dir or not identity or gen_now is None:
        return None
    cpath, gpath = _paths(state_dir, netns, family)
    graw = read_state_file(gpath, warn)
    if graw is None:
        return None
    try:
        g = msgspec.json.decode(graw, type=_Generation)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if g.generation != gen_now:
        return None
    raw = read_state_file(cpath, warn)
    if raw is None:
        return None
    try:
        c = msgspec.msgpack.decode(raw, type=_Cache)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if c.version != CACHE_VERSION or c.identity != identity or c.table != table or c.serial != g.serial:
        return None
    sets = {name: (decl, {k: (v, com) for k, v, com in els}) for name, (decl, els) in c.sets.items()}
    return sc.View(c.comment, dict(c.chains), sets)


def _save(state_dir: str | None, netns: str, family: int, identity: str, table: str, v: sc.View | None,
          generation: int | None, warn: list[str]) -> None:
    """Keep V as what NETNS holds; its generation file only when GENERATION vouches for it."""
    if not state_dir or not identity:
        return
    cpath, gpath = _paths(state_dir, netns, family)
    # The generation file goes first (away) and last (back): a reader never
    # pairs a new generation with old contents, or the reverse.
    try:
        remove_state(gpath)
    except StateFileError:
        pass  # the folder is not ours: writing the cache below says so
    except OSError:
        return
    if v is None:
        return
    serial = uuid.uuid4().hex
    sets = {name: (decl, [(k, val, com) for k, (val, com) in els.items()]) for name, (decl, els) in v.sets.items()}
    data = msgspec.msgpack.encode(_Cache(CACHE_VERSION, identity, table, serial, v.comment, v.chains, sets))
    if write_state_file(cpath, data, warn) and generation is not None:
        write_state_file(gpath, msgspec.json.encode(_Generation(serial, generation)), warn)


def _advance_other_family(state_dir: str | None, netns: str, family: int, before: int, after: int,
                          warn: list[str]) -> None:
    """The generation counts both families' commits: carry the other family's cache over ours."""
    if not state_dir:
        return
    other = 6 if family == 4 else 4
    gpath = _paths(state_dir, netns, other)[1]
    raw = read_state_file(gpath, warn)
    if raw is None:
        return
    try:
        g = msgspec.json.decode(raw, type=_Generation)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return
    if g.generation == before:
        write_state_file(gpath, msgspec.json.encode(_Generation(g.serial, after)), warn)


# ---------------------------------------------------------------- the sync


def sync(want: TableState, netns: str, kernel: Kernel, *, mode: str, family: int, dry_run: bool = False,
         state_dir: str | None = None, opts: ld.Options | None = None,
         on_chunk: Callable[[int, ld.Chunk], None] | None = None) -> NftApplyResult:
    """Bring table WANT of NETNS to WANT (MODE, FAMILY name the result); see the module's doc."""
    with gc_paused(freeze=False):
        return _Run(want, netns, kernel, mode, family, dry_run, state_dir, opts or ld.Options(), on_chunk).run()


class _Run:
    def __init__(self, want: TableState, netns: str, kernel: Kernel, mode: str, family: int, dry_run: bool,
                 state_dir: str | None, opts: ld.Options, on_chunk) -> None:
        self.want, self.netns, self.family, self.state_dir, self.opts = want, netns, family, state_dir, opts
        self.table = sc.ref(want)
        self.res = NftApplyResult(netns, mode, family, dry_run=dry_run, table=self.table)
        self.clock = Clock()
        self.kernel = kernel
        self.link = ld.Link(kernel.nft, netns, opts.netlink)
        self.on_chunk = on_chunk
        self.wview: sc.View | None = None

    def run(self) -> NftApplyResult:
        try:
            self._run()
        finally:
            self.res.timings = self.clock.stages
        return self.res

    def wanted_view(self) -> sc.View:
        if self.wview is None:
            self.wview = sc.view(self.want)
        return self.wview

    def _run(self) -> None:
        res, ns = self.res, self.kernel.netns
        exists = ns.exists(self.netns)
        self.identity = ns.identity(self.netns) if exists else ""
        for attempt in range(STALE_RETRIES + 1):
            gen0 = self.link.genid() if exists else None
            old = _load(self.state_dir, self.netns, self.family, self.identity, self.table, gen0, res.warnings)
            if old is not None:
                res.source = "cache"
                self.clock.lap("read-cache")
                new = self.wanted_view()
                live = None
            else:
                text = self.kernel.nft.list_table(self.netns, self.want.family, self.want.name) if exists else None
                self.clock.lap("read-live")
                if text is None:
                    res.source = ""
                    self.first(gen0)
                    return
                res.source = "dump"
                try:
                    live = _only_table(parse_listing(text), self.want)
                    old = sc.normal_view(live)
                except (NftParseError, ValueError):
                    self.rebuild(gen0, "nft list table shows objects rulegen does not read")
                    return
                new = sc.normal_view(self.want)
                self.clock.lap("parse")
            try:
                ops = sc.diff(old, new, self.want)
            except sc.Unsupported as e:
                self.rebuild(gen0, e.reason)
                return
            self.count(old, new, ops)
            self.clock.lap("diff")
            try:
                self.change(ops, gen0, old)
                return
            except ld.Stale:
                res.added, res.changed, res.removed = [], [], []
                res.elements_added = res.elements_removed = 0
                res.warnings.append("the table changed while rulegen read it; read again")
                continue
        raise ld.LoadError(f"netns {self.netns}: table {self.table} kept changing while rulegen read it "
                           f"({STALE_RETRIES + 1} tries); nothing was changed")

    # -- what the operations do, for the result

    def count(self, old: sc.View, new: sc.View, ops: list[sc.Op]) -> None:
        res = self.res
        res.added = [("chain", n) for n in new.chains if n not in old.chains]
        res.added += [(v[0][0], n) for n, v in new.sets.items() if n not in old.sets]
        res.changed = [("chain", n) for n, v in new.chains.items() if n in old.chains and old.chains[n] != v]
        res.changed += [(v[0][0], n) for n, v in new.sets.items() if n in old.sets and old.sets[n] != v]
        res.removed = [("chain", n) for n in old.chains if n not in new.chains]
        res.removed += [(v[0][0], n) for n, v in old.sets.items() if n not in new.sets]
        res.elements_added = sum(1 for v, o in ops if v == ADD and type(o) is Element)
        res.elements_removed = sum(1 for v, o in ops if v == DELETE and type(o) is Element)

    # -- the paths

    def first(self, gen0: int | None) -> None:
        res = self.res
        res.path = "first"
        enc = ld.encoder(self.link, self.want)
        chunks = ld.plan_first(self.want, self.opts, enc)
        self.clock.lap("plan")
        res.added = [("chain", n) for n in self.want.chains]
        res.added += [("map" if s.is_map else "set", n) for n, s in self.want.sets.items()]
        res.elements_added = sum(len(s.elements) for s in self.want.sets.values())
        self._report(chunks)
        if res.dry_run:
            return
        sent = ld.load_first(self.link, self.want, self.opts, gen0, self.on_chunk, chunks)
        res.phases = sent.timings
        self.clock.lap("load")
        self.saved(sent.generation, gen0, len(chunks))

    def change(self, ops: list[sc.Op], gen0: int | None, old: sc.View) -> None:
        res = self.res
        if not ops:
            res.path = "unchanged"
            if not res.dry_run and res.source == "dump":
                # What is live means the compile: remember that, vouched for if nothing moved meanwhile.
                same = gen0 is not None and self.link.genid() == gen0
                _save(self.state_dir, self.netns, self.family, self.identity, self.table, self.wanted_view(),
                      gen0 if same else None, res.warnings)
                self.clock.lap("cache")
            return
        res.path = "change"
        ch = ld.change_chunk(self.link, self.want, ops)
        self._report([ch])
        if res.dry_run:
            return
        try:
            sent = ld.send_change(self.link, self.want, ch, gen0)
        except ld.LoadError as e:
            sent = self._without_busy_deletes(e, ops, gen0)
        self.clock.lap("send")
        self.saved(sent.generation, gen0, 1)

    def _without_busy_deletes(self, e: ld.LoadError, ops: list[sc.Op], gen0: int | None) -> ld.Sent:
        """A kernel that still counts a just-deleted element's reference refuses to delete its chain (EBUSY):
        send the rest, keep those chains flushed for the next apply (see the module's doc)."""
        busy = "busy" in str(e).lower()
        gone = [o.name for v, o in ops if v == DELETE and type(o) is Chain]
        if not busy or not gone:
            raise ld.LoadError(f"{e}; nothing was changed, the previous state is left in place", e.command) from None
        rest = [(v, o) for v, o in ops if not (v == DELETE and type(o) is Chain)]
        ch = ld.change_chunk(self.link, self.want, rest)
        self._report([ch])
        sent = ld.send_change(self.link, self.want, ch, gen0)
        self.res.removed = [(g, n) for g, n in self.res.removed if not (g == "chain" and n in gone)]
        self.res.kept += [("chain", n, "the kernel still counted a reference to it; flushed now, deleted by the "
                                       "next apply") for n in gone]
        # The cache must not claim they are gone: the next apply reads the table and deletes them.
        sent.generation = None
        return sent

    def rebuild(self, gen0: int | None, why: str) -> None:
        """One transaction: delete our table and load the whole state (what no difference can do in place)."""
        res = self.res
        res.path = "rebuild"
        res.warnings.append(f"table {self.table} is rebuilt in one transaction: {why}")
        head = self.table
        commands = [f"delete table {head}"] + sc.commands(head, sc.state_ops(self.want),
                                                            self.opts.elements_per_command)
        ch = ld.Chunk("rebuild", "nft", commands)
        res.added = [("chain", n) for n in self.want.chains]
        res.added += [("map" if s.is_map else "set", n) for n, s in self.want.sets.items()]
        res.elements_added = sum(len(s.elements) for s in self.want.sets.values())
        self._report([ch])
        if res.dry_run:
            return
        if gen0 is not None and self.link.genid() != gen0:
            raise ld.LoadError(f"netns {self.netns}: table {self.table} changed while rulegen read it; "
                               "nothing was changed, run apply again")
        try:
            self.link.run(ch)
        except ld.LoadError as e:
            raise ld.LoadError(f"{e}; nothing was changed, the previous state is left in place", e.command) from None
        now = self.link.genid()
        self.clock.lap("send")
        self.saved(now if gen0 is not None and now == (gen0 + 1) & 0xFFFFFFFF else None, gen0, 1)

    def _report(self, chunks: list[ld.Chunk]) -> None:
        res = self.res
        res.transactions = len(chunks)
        res.lines = sum(len(c.commands) for c in chunks)
        vias = {c.via for c in chunks}
        res.via = "both" if len(vias) > 1 else next(iter(vias), "")
        if res.dry_run:
            if len(chunks) == 1:
                res.payload = "".join(c + "\n" for c in chunks[0].commands)
            else:
                res.payload = "".join(
                    f"# transaction {i + 1} of {len(chunks)}: {c.phase} ({c.via})\n"
                    + "".join(cmd + "\n" for cmd in c.commands) for i, c in enumerate(chunks))

    def saved(self, generation: int | None, gen0: int | None, commits: int) -> None:
        """Keep the wanted view as what is live; vouched for by GENERATION (None: not proven ours alone)."""
        _save(self.state_dir, self.netns, self.family, self.identity, self.table, self.wanted_view(), generation,
              self.res.warnings)
        if generation is not None and gen0 is not None:
            _advance_other_family(self.state_dir, self.netns, self.family, gen0, generation, self.res.warnings)
        self.clock.lap("cache")


def _only_table(tables: list[TableState], want: TableState) -> TableState:
    got = [t for t in tables if (t.family, t.name) == (want.family, want.name)]
    if len(got) != 1:
        raise NftParseError(f"nft list table did not list table {sc.ref(want)}")
    return got[0]
