"""Loading an nftables table into a network namespace fast, and changing it by differences.

Three ways in, chosen by `Loader.apply` (docs/nftables-load.md has the
measurements behind each choice):

- **first apply** (the table is not there): the script is played into its
  end state (`script.parse`) and sent again as bounded transactions in an
  order that keeps every transaction small and the kernel's searches of
  the table's sets short (`plan_first`): the table, the regular chains and
  most named sets; the rules nft must send; the anonymous-map rules, at
  most `chunk_maps` per transaction (the kernel's cost per anonymous map
  grows with the transaction and with the sets of the table); the named
  sets few rules use, then those rules; the elements; and last, in one
  small transaction, the base chains and their rules. Until that last
  commit no hook leads into the table, so no packet ever meets a
  half-built state. Rules of kube-proxy's anonymous-map shapes, plain
  chains and plain elements go over raw netlink (`netlink`), the rest
  through `nft -f`. Any failure deletes the table: the namespace is as it
  was.
- **change** (the table is there and the cache of what was loaded is
  proven fresh: same namespace, same nf_tables generation): only the
  difference is sent (`script.diff`), in one transaction; over raw
  netlink bound to the cached generation when every command has an
  encoding (the kernel refuses it if anyone changed anything since), else
  through `nft -f`.
- **full sync** (the table is there, the cache is missing or stale):
  one transaction that rewrites every chain and set of the new state and
  deletes the chains and sets the table holds beyond it; what kube-proxy's
  own full sync does, and as slow.

A script the model does not cover (`script.Unsupported`) is sent as it is
in one `nft -f`, which is correct by definition.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ...gcpause import gc_paused
from ...kernel.netlink import NFNL_SUBSYS_NFTABLES as _NFNL_SUBSYS_NFTABLES
from ...kernel.netlink import NLM_F_DUMP as _NLM_F_DUMP
from ...kernel.netlink import NlAckError as _NlAckError
from ...kernel.netlink import nfgen as _nfgen
from ...kernel.netlink import nl_attrs as _nl_attrs
from ...kernel.netlink import nl_request as _nl_request
from ...kernel.netns import RealNamespaces
from . import netlink as nl
from . import script as sc

NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETSET = 1, 4, 10
_STDIN_LINE_RE = re.compile(r"^/dev/stdin:(\d+):", re.M)


class LoadError(Exception):
    """A transaction was refused; the namespace holds what it held before the apply."""

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


@dataclass
class Options:
    chunk_maps: int = 1000  # anonymous maps (sets) per transaction
    chunk_commands: int = 20000  # other commands per transaction
    netlink: bool = True  # raw netlink for the shapes `netlink.Encoder` knows
    elements_per_command: int = 200  # elements merged into one nft `add element` command
    nft: str = "nft"
    late_sets: bool = True  # rarely named sets without elements after the anonymous maps (see plan_first)


@dataclass
class Chunk:
    """One transaction of a load: `via` "nft" (script text) or "netlink" (messages)."""

    phase: str
    via: str
    commands: list[str] = field(default_factory=list)
    msgs: list[nl.Msg] = field(default_factory=list)
    maps: int = 0  # anonymous sets created
    elements: int = 0  # set elements added
    pending: list[tuple[str, str]] = field(default_factory=list)  # (chain, rule) to encode before sending
    ready: threading.Event | None = None  # set once `msgs` holds the encoded `pending`


@dataclass
class Loaded:
    """What rulegen last loaded into a namespace: the cache that lets the next apply send a difference."""

    identity: str
    table: sc.Table
    genid: int | None  # the generation right after our commit; None when not proven ours


@dataclass
class Report:
    path: str  # "first", "change-netlink", "change-nft", "full", "unchanged", "script"
    chunks: int = 0
    commands: int = 0
    seconds: float = 0.0
    timings: list[tuple[str, float]] = field(default_factory=list)
    failed: str = ""  # the transaction the kernel refused, if one was


class Kernel:
    """The real kernel side: `nft -f` and netlink in one namespace."""

    def __init__(self, netns: str, nft: str = "nft") -> None:
        self.netns = netns
        self.nft_bin = nft
        self._sock: socket.socket | None = None

    @property
    def sock(self) -> socket.socket:
        if self._sock is None:
            self._sock = nl.open_socket(self.netns)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def nft(self, text: str, timeout: float = 1800.0) -> None:
        try:
            cp = subprocess.run(["ip", "netns", "exec", self.netns, self.nft_bin, "-f", "-"], input=text,
                                capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LoadError(f"nft -f did not finish within {timeout:g} s") from None
        except FileNotFoundError as e:
            raise LoadError(f"cannot run {e.filename}: not installed") from None
        if cp.returncode != 0:
            raise nft_error(text, cp.stderr)

    def send(self, msgs: list[nl.Msg], gen: int | None = None) -> None:
        nl.send(self.sock, msgs, gen)

    def genid(self) -> int | None:
        return nl.genid(self.sock)

    def identity(self) -> str:
        return RealNamespaces().identity(self.netns)

    def has_table(self, family: str, table: str) -> bool:
        body = _nfgen(nl.FAMILIES.get(family, 0)) + nl._str(1, table)
        try:
            _nl_request(self.sock, (_NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, 0, body, 1)
        except _NlAckError:
            return False
        return True

    def names(self, family: str, table: str) -> tuple[set[str], dict[str, str]]:
        """The chains, and the named sets and maps (name → "set"/"map") of TABLE, from two netlink dumps."""
        fam = _nfgen(nl.FAMILIES.get(family, 0))
        chains: set[str] = set()
        for _, payload in _nl_request(self.sock, (_NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN, _NLM_F_DUMP,
                                      fam + nl._str(1, table), 2):
            a = _nl_attrs(payload)
            if a.get(1, b"").rstrip(b"\0").decode() == table and 3 in a:
                chains.add(a[3].rstrip(b"\0").decode())
        sets: dict[str, str] = {}
        for _, payload in _nl_request(self.sock, (_NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSET, _NLM_F_DUMP,
                                      fam + nl._str(1, table), 3):
            a = _nl_attrs(payload)
            flags = struct.unpack(">I", a[3])[0] if len(a.get(3, b"")) == 4 else 0
            if a.get(1, b"").rstrip(b"\0").decode() == table and 2 in a and not flags & nl.SET_ANONYMOUS:
                sets[a[2].rstrip(b"\0").decode()] = "map" if flags & nl.SET_MAP else "set"
        return chains, sets


def refused(e: nl.NetlinkError, msgs: list[nl.Msg], commands: list[str]) -> LoadError:
    """A netlink refusal as a LoadError naming the command (and the element) the kernel refused."""
    if e.index is None or not 0 <= e.index < len(msgs):
        return LoadError(str(e))
    m = msgs[e.index]
    cmd = commands[m.command] if 0 <= m.command < len(commands) else None
    if m.items and e.offset is not None:
        i = m.element_at(e.offset)
        if i is not None and i < len(m.items):
            verb = "delete" if m.mtype == nl.NFT_MSG_DELSETELEM else "add"
            cmd = f"{verb} element {cmd.split()[2]} {cmd.split()[3]} {cmd.split()[4]} {{ {m.items[i]} }}" \
                if cmd else m.items[i]
    why = e.detail or os.strerror(e.errno)
    return LoadError(f"nf_tables refused {cmd!r}: {why}" if cmd else str(e), cmd)


def nft_error(text: str, stderr: str) -> LoadError:
    """nft's complaint, with the command it names."""
    m = _STDIN_LINE_RE.search(stderr)
    command = None
    if m:
        lines = text.split("\n")
        no = int(m.group(1))
        command = lines[no - 1] if 0 < no <= len(lines) else None
    first = next((ln.strip() for ln in stderr.splitlines() if "Error" in ln), stderr.strip().split("\n")[0])
    first = re.sub(r"^/dev/stdin:\d+:(?:\d+-\d+:)?\s*(?:Error:\s*)?", "", first).strip()
    msg = f"nft refused {command!r}: {first}" if command else f"nft failed: {first}"
    return LoadError(msg, command)


# ------------------------------------------------------------------ planning


def rule_refs(t: sc.Table) -> dict[str, int]:
    """How many rules look each named set up by name (`@name`)."""
    n = dict.fromkeys(t.sets, 0)
    for c in t.chains.values():
        for r in c.rules:
            for ref in sc.set_refs(r):
                if ref in n:
                    n[ref] += 1
    return n


def plan_first(t: sc.Table, opts: Options, enc: nl.Encoder | None) -> list[Chunk]:
    """The transactions of a first apply of state T, in order (see the module's doc)."""
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
    late = set()
    if opts.late_sets:
        late = {name for name, n in rule_refs(t).items() if n <= 4 and not t.sets[name].items}

    # `create`: a table that appeared meanwhile is someone else's; fail, do not build on it.
    cur = start("skeleton", "nft")
    cur.commands.append(f"create table {t.ref}" + (f" {t.spec}" if t.spec else ""))
    plain: list[sc.Chain] = []
    for c in t.chains.values():
        if c.base:
            continue
        if enc is not None and c.spec is None:
            plain.append(c)
            continue
        cur = _room(cur, chunks, opts)
        cur.commands.append(sc.chain_cmd(t, c))
    for s in t.sets.values():
        if s.name not in late:
            cur = _room(cur, chunks, opts)
            cur.commands.append(sc.set_cmd(t, s))
    if plain:
        cur = start("skeleton", "netlink")
        for c in plain:
            cur = _room(cur, chunks, opts)
            cur.msgs.append(enc.new_chain(c.name))  # type: ignore[union-attr]
            cur.msgs[-1].command = len(cur.commands)
            cur.commands.append(sc.chain_cmd(t, c))

    # Rules of regular chains. A chain goes over netlink when every rule of it
    # has an encoding; the others go through nft first, while the table holds
    # few sets (nft makes the kernel search them five times per anonymous set,
    # netlink three); chains that name a late set wait for it.
    fast: list[sc.Chain] = []
    slow: list[sc.Chain] = []
    after_late: list[sc.Chain] = []
    for c in t.chains.values():
        if c.base or not c.rules:
            continue
        if late and any(ref in late for r in c.rules for ref in sc.set_refs(r)):
            after_late.append(c)
            continue
        if enc is not None and all(enc.shaped(r) for r in c.rules):
            fast.append(c)
        else:
            slow.append(c)
    cur = start("rules", "nft")
    for c in slow:
        cur = _rules_nft(t, c, cur, chunks, opts)
    # Encoded later, by `Loader`, while earlier transactions run in the kernel.
    cur = start("rules", "netlink")
    for c in fast:
        for r in c.rules:
            if cur.maps >= opts.chunk_maps or len(cur.commands) >= opts.chunk_commands:
                cur = start("rules", "netlink")
            cur.pending.append((c.name, r))
            cur.maps += 1  # each shape `Encoder.rule` knows makes one anonymous map
            cur.commands.append(f"add rule {t.ref} {c.name} {r}")
    if late:
        cur = start("late sets", "nft")
        for name in late:
            cur = _room(cur, chunks, opts)
            cur.commands.append(sc.set_cmd(t, t.sets[name]))
        cur = start("rules", "nft")
        for c in after_late:
            cur = _rules_nft(t, c, cur, chunks, opts)

    # Elements: every chain a verdict may name exists by now.
    cur = start("elements", "nft")
    step = max(1, opts.chunk_commands)
    for s in t.sets.values():
        items = list(s.items)
        for i in range(0, len(items), step):
            part = items[i:i + step]
            msgs = enc.elements("add", s.name, part) if enc is not None else None
            if msgs is not None:
                if cur.via != "netlink" or cur.elements + len(part) > step:
                    cur = start("elements", "netlink")
                for m in msgs:
                    m.command = len(cur.commands)
                cur.msgs += msgs
                cur.commands.append(f"add element {t.ref} {s.name} {{ {part[0]}"
                                    + (f", ... ({len(part)} elements) }}" if len(part) > 1 else " }"))
            else:
                for cmd in sc.element_cmds(t, s, part, per_command=opts.elements_per_command):
                    if cur.via != "nft" or cur.elements + opts.elements_per_command > step:
                        cur = start("elements", "nft")
                    cur.commands.append(cmd)
            cur.elements += len(part)

    # The one transaction that connects the table to the hooks.
    cur = start("activate", "nft")
    for c in t.chains.values():
        if c.base:
            cur.commands.append(sc.chain_cmd(t, c))
    for c in t.chains.values():
        if c.base:
            cur.commands += [f"add rule {t.ref} {c.name} {r}" for r in c.rules]
    return [c for c in chunks if c.commands]


def _room(cur: Chunk, chunks: list[Chunk], opts: Options) -> Chunk:
    if len(cur.commands) < opts.chunk_commands:
        return cur
    c = Chunk(cur.phase, cur.via)
    chunks.append(c)
    return c


def _rules_nft(t: sc.Table, c: sc.Chain, cur: Chunk, chunks: list[Chunk], opts: Options) -> Chunk:
    for r in c.rules:
        maps = sc.anon_sets(r)
        if cur.maps + maps > opts.chunk_maps or len(cur.commands) >= opts.chunk_commands:
            cur = Chunk("rules", "nft")
            chunks.append(cur)
        cur.commands.append(f"add rule {t.ref} {c.name} {r}")
        cur.maps += maps
    return cur


# ------------------------------------------------------------------ loading


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
            for i, (chain, body) in enumerate(c.pending):
                m = self.enc.rule(chain, body)
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


def _encode_in_background(enc: nl.Encoder, chunks: list[Chunk]) -> _Worker | None:
    return _Worker(enc, chunks) if any(c.pending for c in chunks) else None


class Loader:
    """Applies scripts to one namespace. `on_chunk(i, chunk)` runs after each committed transaction."""

    def __init__(self, netns: str, opts: Options | None = None, kernel: Kernel | None = None,
                 on_chunk: Callable[[int, Chunk], None] | None = None) -> None:
        self.opts = opts or Options()
        self.kernel = kernel or Kernel(netns, self.opts.nft)
        self.on_chunk = on_chunk
        self.report = Report("none")

    def close(self) -> None:
        self.kernel.close()

    def apply(self, text: str, cache: Loaded | None = None) -> Loaded | None:
        """Bring the namespace's table to what script TEXT leaves; return the new cache (None: unknown)."""
        # Parsing and encoding make ~1M small acyclic objects at 10k Services.
        with gc_paused(freeze=False):
            return self._apply(text, cache)

    def _apply(self, text: str, cache: Loaded | None) -> Loaded | None:
        t0 = time.perf_counter()
        try:
            table = sc.parse(text)
        except sc.Unsupported:
            self.report = Report("script", 1, text.count("\n"))
            self.kernel.nft(text)
            self.report.seconds = time.perf_counter() - t0
            return None
        except sc.ScriptError as e:
            raise LoadError(f"the script cannot be loaded: {e}") from None
        ident = self.kernel.identity()
        if not self.kernel.has_table(table.family, table.name):
            out = self.first_apply(table, ident)
        elif cache is not None and cache.genid is not None and cache.identity == ident \
                and cache.table.ref == table.ref and self.kernel.genid() == cache.genid:
            out = self.change(cache, table)
        else:
            out = self.full_sync(table, ident)
        self.report.seconds = time.perf_counter() - t0
        return out

    # -- first apply

    def first_apply(self, table: sc.Table, ident: str) -> Loaded:
        enc = None
        if self.opts.netlink and table.family in nl.FAMILIES:
            enc = nl.Encoder(table.family, table.name)
            enc.learn_sets(table.sets.values())
        chunks = plan_first(table, self.opts, enc)
        self.report = Report("first", len(chunks), sum(len(c.commands) for c in chunks))
        worker = _encode_in_background(enc, chunks) if enc is not None else None
        try:
            return self._first_chunks(table, ident, chunks)
        finally:
            if worker is not None:
                worker.stop()

    def _first_chunks(self, table: sc.Table, ident: str, chunks: list[Chunk]) -> Loaded:
        created = False
        before: int | None = None
        for i, ch in enumerate(chunks):
            t = time.perf_counter()
            if i == len(chunks) - 1:
                before = self.kernel.genid()
            if ch.ready is not None:
                ch.ready.wait()
            try:
                self._run(ch)
            except (LoadError, nl.NetlinkError) as e:
                if created:
                    self._drop_table(table, e)
                self.report.failed = f"{ch.phase} ({ch.via})"
                if isinstance(e, nl.NetlinkError):
                    raise refused(e, ch.msgs, ch.commands) from None
                raise
            created = True
            self.report.timings.append((f"{ch.phase} ({ch.via}, {len(ch.commands)})", time.perf_counter() - t))
            if self.on_chunk is not None and i < len(chunks) - 1:
                self.on_chunk(i, ch)
        after = self.kernel.genid()
        # Ours only if the last commit was the only one since `before`.
        proven = before is not None and after == (before + 1) & 0xFFFFFFFF
        if self.on_chunk is not None:
            self.on_chunk(len(chunks) - 1, chunks[-1])
        return Loaded(ident, table, after if proven else None)

    def _run(self, ch: Chunk) -> None:
        if ch.via == "netlink":
            self.kernel.send(ch.msgs)
        else:
            self.kernel.nft("\n".join(ch.commands) + "\n")

    def _drop_table(self, table: sc.Table, cause: Exception) -> None:
        try:
            self.kernel.nft(f"delete table {table.ref}\n")
        except LoadError as e:
            raise LoadError(f"{cause}; and removing the half-built table failed too: {e}") from None

    # -- change

    def change(self, cache: Loaded, table: sc.Table) -> Loaded | None:
        try:
            cmds = sc.diff(cache.table, table)
        except sc.Unsupported:
            return self.full_sync(table, cache.identity)
        if not cmds:
            self.report = Report("unchanged")
            return Loaded(cache.identity, table, cache.genid)
        msgs: list[nl.Msg] | None = None
        if self.opts.netlink and table.family in nl.FAMILIES:
            enc = nl.Encoder(table.family, table.name)
            enc.learn_sets(table.sets.values())
            msgs = []
            for i, cmd in enumerate(cmds):
                m = enc.command(cmd)
                if m is None:
                    msgs = None
                    break
                for x in m:
                    x.command = i
                msgs += m
        if msgs is not None:
            self.report = Report("change-netlink", 1, len(cmds))
            try:
                self.kernel.send(msgs, cache.genid)
            except nl.NetlinkError as e:
                if e.errno == errno.ERESTART:  # someone committed since the cache was taken
                    return self.full_sync(table, cache.identity)
                raise refused(e, msgs, cmds) from None
            # The batch was bound to cache.genid and a commit adds exactly one.
            return Loaded(cache.identity, table, (cache.genid + 1) & 0xFFFFFFFF)  # type: ignore[operator]
        self.report = Report("change-nft", 1, len(cmds))
        before = cache.genid
        self.kernel.nft("\n".join(cmds) + "\n")
        after = self.kernel.genid()
        # Proven ours only if nobody else committed between the check and nft's commit.
        proven = before is not None and after == (before + 1) & 0xFFFFFFFF
        return Loaded(cache.identity, table, after if proven else None)

    # -- full sync

    def full_sync(self, table: sc.Table, ident: str) -> Loaded | None:
        chains, sets = self.kernel.names(table.family, table.name)
        t = table
        out = [f"add table {t.ref}" + (f" {t.spec}" if t.spec else "")]
        for c in t.chains.values():
            out += [sc.chain_cmd(t, c), f"flush chain {t.ref} {c.name}"]
        for s in t.sets.values():
            out += [sc.set_cmd(t, s), f"flush {s.kind} {t.ref} {s.name}"]
        out += [f"flush chain {t.ref} {name}" for name in sorted(chains - set(t.chains))]
        for c in t.chains.values():
            out += [f"add rule {t.ref} {c.name} {r}" for r in c.rules]
        for s in t.sets.values():
            out += sc.element_cmds(t, s, s.items, per_command=self.opts.elements_per_command)
        out += [f"delete {kind} {t.ref} {name}" for name, kind in sorted(sets.items()) if name not in t.sets]
        out += [f"delete chain {t.ref} {name}" for name in sorted(chains - set(t.chains))]
        self.report = Report("full", 1, len(out))
        before = self.kernel.genid()
        self.kernel.nft("\n".join(out) + "\n")
        after = self.kernel.genid()
        proven = before is not None and after == (before + 1) & 0xFFFFFFFF
        return Loaded(ident, table, after if proven else None)


def naive(netns: str, text: str, nft: str = "nft") -> None:
    """The reference: the whole script as one `nft -f` (one transaction)."""
    Kernel(netns, nft).nft(text)

