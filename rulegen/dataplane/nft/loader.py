"""Sending a table to nf_tables fast: the phased first load, and one transaction of differences.

Both work on `state.TableState`s and reach the kernel only through an
`Nft` client (`client.py`): nft text always, raw netlink batches where the
client has them (`Nft.netlink`; the fake has none, so fake-kernel tests
send everything as nft text). docs/nftables-load.md has the measurements
behind each choice.

- **first load** (`load_first`; the table is not there): the state is sent
  as bounded transactions in an order that keeps every transaction small
  and the kernel's searches of the table's sets short (`plan_first`): the
  table (`create`: one that appeared meanwhile is someone else's), the
  regular chains and most named sets; the rules nft must send; the
  anonymous-map rules, at most `chunk_maps` per transaction (the kernel's
  cost per anonymous map grows with the transaction and with the sets of
  the table); the named sets few rules use, then those rules; the
  elements; and last, in one small transaction, the base chains and their
  rules. Until that last commit no hook leads into the table, so no packet
  ever meets a half-built state. Rules of kube-proxy's anonymous-map
  shapes, plain chains and plain elements go over netlink (encoded on a
  second thread while the kernel commits the transaction before), the
  rest through `nft -f`. Any failure deletes the table: the namespace is
  as it was. Each commit must move the nf_tables generation by exactly
  one, or the load is not proven to be the only writer (the caller then
  keeps no cache it could trust).

  Where the time goes (10k Services × 10 of rulegen's compile, 13,431
  anonymous maps, 6,128 affinity sets; perf, kernel 6.18): about 85% of
  the samples are searches of the table's set list (`nf_tables_newset`,
  `nft_set_lookup_global`, and the `strlen` of `nla_strcmp` on every name
  they pass), 3% the transaction walk of `__nft_set_trans_bind`, 0.3% the
  commit's chain-graph validation. Each anonymous map searches all sets
  created before it three times, each affinity set four times, whatever
  the chunking: `chunk_maps` 250 to 4,000 changed nothing beyond the
  noise at 5k (4.6–5.5 s), and the affinity sets created before the maps
  cost more (5.8 s against 4.6 s at 5k; 32–34 s against 28 s at 10k). What
  helps is a cheaper step per set passed: the first load's anonymous maps
  are named `__<counter>.` (6 bytes, the kernel's 8-byte allocations)
  instead of `__<counter>.<tag>` (11 bytes): 10k first load 18.2–24.1 s
  against 19.3–31.5 s in four interleaved pairs, 5k 4.5 s against 4.75 s
  (medians of five pairs).
- **change** (`send_change`): one transaction of operations
  (`script.diff`); over netlink, bound to the generation the caller
  proved its view at, when every operation has an encoding (the kernel
  refuses the batch if anyone committed since: `Stale`); otherwise
  through `nft -f`, with the generation checked just before and after.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ...diagnostics import UsageError
from . import netlink as nl
from . import script as sc
from .client import Nft, NftRunError
from .model import ADD, Rule
from .render import line
from .state import TableState


class LoadError(UsageError):
    """A transaction was refused; `command` names the refused command where the kernel said which."""

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


class Stale(Exception):
    """The generation moved before a bound batch landed: nothing was sent, the caller's view is stale."""


@dataclass
class Options:
    chunk_maps: int = 1000  # anonymous maps (sets) per transaction
    chunk_commands: int = 20000  # other commands per transaction
    netlink: bool = True  # raw netlink for the shapes `netlink.Encoder` knows, where the client has it
    elements_per_command: int = 200  # elements merged into one nft `add element` command
    late_sets: bool = True  # rarely named sets without elements after the anonymous maps (see plan_first)
    short_names: bool = True  # untagged anonymous map names in a first load (see `nl.Encoder`)


@dataclass
class Chunk:
    """One transaction of a load: `via` "nft" (script text) or "netlink" (messages).

    `commands` is the nft text of what it sends either way (dry runs print
    it, a refusal names a command of it); a netlink chunk's messages each
    name their command (`Msg.command`).
    """

    phase: str
    via: str
    commands: list[str] = field(default_factory=list)
    msgs: list[nl.Msg] = field(default_factory=list)
    maps: int = 0  # anonymous sets created
    elements: int = 0  # set elements added
    pending: list[Rule] = field(default_factory=list)  # rules to encode before sending
    ready: threading.Event | None = None  # set once `msgs` holds the encoded `pending`


@dataclass
class Sent:
    """What a load or change did: transactions, commands, how, and the generation it proved (None: not)."""

    path: str  # "first", "change-netlink", "change-nft"
    chunks: list[Chunk] = field(default_factory=list)
    generation: int | None = None
    timings: list[tuple[str, float]] = field(default_factory=list)

    @property
    def commands(self) -> int:
        return sum(len(c.commands) for c in self.chunks)


class Link:
    """One namespace through an Nft client: nft text, netlink batches (when asked and there), the generation."""

    def __init__(self, nft: Nft, netns: str, netlink: bool = True) -> None:
        self.client = nft
        self.netns = netns
        self.netlink = netlink and nft.netlink

    def nft(self, text: str) -> None:
        try:
            self.client.run(self.netns, text)
        except NftRunError as e:
            raise LoadError(str(e), e.line) from None

    def send(self, msgs: list[nl.Msg], commands: list[str], gen: int | None = None) -> None:
        try:
            self.client.send(self.netns, msgs, gen)
        except nl.NetlinkError as e:
            if gen is not None and e.errno == errno.ERESTART:
                raise Stale() from None
            raise refused(e, msgs, commands) from None

    def genid(self) -> int | None:
        return self.client.generation(self.netns)

    def run(self, ch: Chunk, gen: int | None = None) -> None:
        if ch.via == "netlink":
            self.send(ch.msgs, ch.commands, gen)
        else:
            self.nft("".join(c + "\n" for c in ch.commands))


def refused(e: nl.NetlinkError, msgs: list[nl.Msg], commands: list[str]) -> LoadError:
    """A netlink refusal as a LoadError naming the command (and the element) the kernel refused."""
    if e.index is None or not 0 <= e.index < len(msgs):
        return LoadError(f"nf_tables refused the transaction: {e.detail or os.strerror(e.errno)}")
    m = msgs[e.index]
    cmd = commands[m.command] if 0 <= m.command < len(commands) else None
    if m.items and e.offset is not None:
        i = m.element_at(e.offset)
        if i is not None and i < len(m.items) and cmd:
            verb = "delete" if m.mtype == nl.NFT_MSG_DELSETELEM else "add"
            head = " ".join(cmd.split()[2:4])
            cmd = line(verb, m.items[i], head)
    why = e.detail or os.strerror(e.errno)
    return LoadError(f"nf_tables refused {cmd!r}: {why}" if cmd else f"nf_tables refused the transaction: {why}", cmd)


def _next(gen: int) -> int:
    return (gen + 1) & 0xFFFFFFFF


# ------------------------------------------------------------------ planning the first load


def rule_refs(st: TableState) -> dict[str, int]:
    """How many rules look each named set up by name (`@name`)."""
    n = dict.fromkeys(st.sets, 0)
    for c in st.chains.values():
        for r in c.rules:
            if "@" in r.rule:
                for name in sc.set_refs(r.rule):
                    if name in n:
                        n[name] += 1
    return n


def plan_first(st: TableState, opts: Options, enc: nl.Encoder | None) -> list[Chunk]:
    """The transactions of a first load of ST, in order (see the module's doc)."""
    head = sc.ref(st)
    chunks: list[Chunk] = []

    def start(phase: str, via: str) -> Chunk:
        c = Chunk(phase, via)
        chunks.append(c)
        return c

    # Named sets without elements that few rules name (kube-proxy's affinity
    # sets) come after the anonymous maps. Every search of the table's sets by
    # name visits all sets created before the one it finds (or all of them),
    # measuring each name: created early, thousands of long-named sets would
    # be visited three times by each of thousands of anonymous maps; created
    # late, each is visited only by its own few lookups.
    late: set[str] = set()
    if opts.late_sets:
        late = {name for name, n in rule_refs(st).items() if n <= 4 and not st.sets[name].elements}

    cur = start("skeleton", "nft")
    cur.commands.append(f"create table {head}"
                        + (f' {{ comment "{st.comment}" ; }}' if st.comment is not None else ""))
    plain = []
    for c in st.chains.values():
        if sc.is_base(c):
            continue
        if enc is not None and c.decl.comment is None:
            plain.append(c)
            continue
        cur = _room(cur, chunks, opts)
        cur.commands.append(line(ADD, c.decl, head))
    for s in st.sets.values():
        if s.decl.name not in late:
            cur = _room(cur, chunks, opts)
            cur.commands.append(line(ADD, s.decl, head))
    if plain:
        cur = start("skeleton", "netlink")
        for c in plain:
            cur = _room(cur, chunks, opts)
            cur.msgs.append(enc.new_chain(c.decl.name))  # type: ignore[union-attr]
            cur.msgs[-1].command = len(cur.commands)
            cur.commands.append(f"add chain {head} {c.decl.name}")

    # Rules of regular chains. A chain goes over netlink when every rule of it
    # has an encoding; the others go through nft first, while the table holds
    # few sets (nft makes the kernel search them five times per anonymous set,
    # netlink three); chains that name a late set wait for it.
    early, after_late = [], []
    for c in st.chains.values():
        if sc.is_base(c) or not c.rules:
            continue
        if late and any(ref in late for r in c.rules if "@" in r.rule for ref in sc.set_refs(r.rule)):
            after_late.append(c)
        else:
            early.append(c)
    _rules(head, early, enc, chunks, opts)
    if late:
        msgs = [enc.named_set(st.sets[name].decl) for name in late] if enc is not None else None
        if msgs is not None and all(m is not None for m in msgs):
            cur = start("late sets", "netlink")
            for name, m in zip(late, msgs):
                cur = _room(cur, chunks, opts)
                m.command = len(cur.commands)  # type: ignore[union-attr]
                cur.msgs.append(m)  # type: ignore[arg-type]
                cur.commands.append(line(ADD, st.sets[name].decl, head))
        else:
            cur = start("late sets", "nft")
            for name in late:
                cur = _room(cur, chunks, opts)
                cur.commands.append(line(ADD, st.sets[name].decl, head))
        _rules(head, after_late, enc, chunks, opts)

    # Elements: every chain a verdict may name exists by now.
    cur = start("elements", "nft")
    step = max(1, opts.chunk_commands)
    per = max(1, opts.elements_per_command)
    for s in st.sets.values():
        items = list(s.elements.values())
        for i in range(0, len(items), step):
            part = items[i:i + step]
            msgs = enc.elements("add", s.decl.name, part) if enc is not None else None
            texts = sc.commands(head, [(ADD, e) for e in part], per)
            if msgs is not None:
                if cur.via != "netlink" or cur.elements + len(part) > step:
                    cur = start("elements", "netlink")
                base, done = len(cur.commands), 0
                for m in msgs:  # each message names the merged command holding its first element
                    m.command = base + done // per
                    done += len(m.items or ())
                cur.msgs += msgs
                cur.commands += texts
            else:
                for cmd in texts:
                    if cur.via != "nft" or cur.elements + per > step:
                        cur = start("elements", "nft")
                    cur.commands.append(cmd)
                    cur.elements += per
                continue
            cur.elements += len(part)

    # The one transaction that connects the table to the hooks.
    cur = start("activate", "nft")
    for c in st.chains.values():
        if sc.is_base(c):
            cur.commands.append(line(ADD, c.decl, head))
    for c in st.chains.values():
        if sc.is_base(c):
            cur.commands += [line(ADD, r, head) for r in c.rules]
    return [c for c in chunks if c.commands]


def _room(cur: Chunk, chunks: list[Chunk], opts: Options) -> Chunk:
    if len(cur.commands) < opts.chunk_commands:
        return cur
    c = Chunk(cur.phase, cur.via)
    chunks.append(c)
    return c


def _rules(head: str, chains: list, enc: nl.Encoder | None, chunks: list[Chunk], opts: Options) -> None:
    """The rules of CHAINS: nft first for chains with a rule netlink cannot carry, then netlink ones."""
    fast = [c for c in chains if enc is not None and all(r.comment is None and enc.shaped(r.rule) for r in c.rules)]
    fast_ids = {id(c) for c in fast}
    slow = [c for c in chains if id(c) not in fast_ids]
    cur = Chunk("rules", "nft")
    chunks.append(cur)
    for c in slow:
        for r in c.rules:
            maps = sc.anon_sets(r.rule)
            if cur.maps + maps > opts.chunk_maps or len(cur.commands) >= opts.chunk_commands:
                cur = Chunk("rules", "nft")
                chunks.append(cur)
            cur.commands.append(line(ADD, r, head))
            cur.maps += maps
    # Encoded later, by `_Worker`, while earlier transactions run in the kernel.
    cur = Chunk("rules", "netlink")
    chunks.append(cur)
    for c in fast:
        for r in c.rules:
            maps = sc.anon_sets(r.rule)
            if cur.maps + maps > opts.chunk_maps or len(cur.commands) >= opts.chunk_commands:
                cur = Chunk("rules", "netlink")
                chunks.append(cur)
            cur.pending.append(r)
            cur.maps += maps
            cur.commands.append(f"add rule {head} {r.chain} {r.rule}")


# ------------------------------------------------------------------ the first load


class _Worker:
    """Encodes the pending rules of netlink chunks, in order, on a thread of its own.

    Sending releases the interpreter lock while the kernel works, so the
    next chunk is encoded meanwhile. A chunk with a rule the encoder refuses
    (an address it cannot read) is turned into an nft chunk: same commands,
    same order.
    """

    def __init__(self, enc: nl.Encoder, chunks: list[Chunk]) -> None:
        self.enc = enc
        self.todo = [c for c in chunks if c.pending]
        for c in self.todo:
            c.ready = threading.Event()
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="nft-encode", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for c in self.todo:
            if self._stop:
                break
            msgs: list[nl.Msg] = []
            for i, r in enumerate(c.pending):
                m = self.enc.rule(r.chain, r.rule)
                if m is None:
                    msgs = []
                    c.via = "nft"
                    break
                for x in m:
                    x.command = i
                msgs += m
            c.msgs = msgs
            c.ready.set()  # type: ignore[union-attr]
        for c in self.todo:  # stopped early: let no waiter hang
            c.ready.set()  # type: ignore[union-attr]

    def stop(self) -> None:
        self._stop = True
        self.thread.join()


def encoder(link: Link, st: TableState, fresh: bool = False) -> nl.Encoder | None:
    """An encoder for ST's table when LINK sends netlink and the family has an encoding (FRESH: see `nl.Encoder`)."""
    if not link.netlink or st.family not in nl.FAMILIES:
        return None
    enc = nl.Encoder(st.family, st.name, fresh)
    enc.learn_sets(st.sets.values())
    return enc


def load_first(link: Link, st: TableState, opts: Options, gen0: int | None,
               on_chunk: Callable[[int, Chunk], None] | None = None, chunks: list[Chunk] | None = None) -> Sent:
    """Load ST into a namespace without its table, chunk by chunk (CHUNKS: from `plan_first`, else planned here).

    GEN0 is the generation read before anything was sent; the result's
    generation is the one after the last commit, when every commit moved
    it by exactly one. ON_CHUNK(i, chunk) runs after each commit (tests
    inspect the half-built table with it).
    """
    enc = encoder(link, st, fresh=opts.short_names)  # the only encoder making anonymous maps in this load
    if chunks is None:
        chunks = plan_first(st, opts, enc)
    sent = Sent("first", chunks)
    worker = _Worker(enc, chunks) if enc is not None and any(c.pending for c in chunks) else None
    proven = gen0 is not None
    gen = gen0
    created = False
    try:
        for i, ch in enumerate(chunks):
            t = time.perf_counter()
            if ch.ready is not None:
                ch.ready.wait()
            try:
                link.run(ch)
            except LoadError as e:
                if created:
                    _drop_table(link, st, e)
                raise LoadError(f"{e}; in transaction {i + 1} of {len(chunks)} ({ch.phase}, {ch.via}) of the first "
                                f"load: the table was removed again, the namespace is as it was", e.command) from None
            created = True
            now = link.genid()
            proven = proven and now is not None and gen is not None and now == _next(gen)
            gen = now
            sent.timings.append((f"{ch.phase} ({ch.via}, {len(ch.commands)})", time.perf_counter() - t))
            if on_chunk is not None:
                on_chunk(i, ch)
    finally:
        if worker is not None:
            worker.stop()
    sent.generation = gen if proven else None
    return sent


def _drop_table(link: Link, st: TableState, cause: Exception) -> None:
    try:
        link.nft(f"delete table {sc.ref(st)}\n")
    except LoadError as e:
        raise LoadError(f"{cause}; and removing the half-built table failed too: {e}") from None


# ------------------------------------------------------------------ one transaction of differences


def change_chunk(link: Link, st: TableState, ops: list[sc.Op]) -> Chunk:
    """OPS as one transaction: netlink when LINK has it and every operation an encoding, else nft text."""
    head = sc.ref(st)
    enc = encoder(link, st)
    msgs = enc.ops(ops) if enc is not None else None
    if msgs is not None:
        return Chunk("change", "netlink", sc.commands(head, ops), msgs)
    return Chunk("change", "nft", sc.commands(head, ops))


def send_change(link: Link, st: TableState, ch: Chunk, gen: int | None) -> Sent:
    """Send CH, prepared against the view the kernel held at generation GEN (None: not proven).

    Over netlink the batch is bound to GEN, so it lands only on that
    view (else `Stale`, nothing sent); through nft, GEN is checked just
    before (a mismatch is `Stale` too). The result's generation is GEN + 1
    when the commit was proven the only one since.
    """
    sent = Sent(f"change-{ch.via}", [ch])
    t = time.perf_counter()
    if ch.via == "netlink":
        link.run(ch, gen)
        after = _next(gen) if gen is not None else None
    else:
        if gen is not None and link.genid() != gen:
            raise Stale()
        link.run(ch)
        now = link.genid()
        after = now if gen is not None and now is not None and now == _next(gen) else None
    sent.generation = after
    sent.timings.append((f"change ({ch.via}, {len(ch.commands)})", time.perf_counter() - t))
    return sent


def naive(nft: Nft, netns: str, text: str) -> None:
    """The reference: a whole script as one `nft -f` (one transaction), as a kube-proxy full sync sends it."""
    Link(nft, netns, netlink=False).nft(text)


__all__ = ["Chunk", "Link", "LoadError", "Options", "Sent", "Stale", "change_chunk", "load_first",
           "naive", "plan_first", "rule_refs", "send_change"]
