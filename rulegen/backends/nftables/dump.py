"""A saved nftables file as this mode reads it for `trace --rules` and `diff`: the kube-proxy tables in it.

The file is rulegen's (knftables') script, `nft list table ip kube-proxy`,
or `nft list ruleset` of a whole node. From a ruleset the `kube-proxy`
tables (`ip`, `ip6`) are read strictly (every word is kube-proxy's); the
others — firewalld's `inet firewalld`, a Docker or CNI table, a hand-made
`inet filter`, iptables-nft's `ip filter` / `ip nat` — are cut out by
their braces and read leniently (`dataplane/nft/ruleset.py`: policies,
handles, counters, statements the walk does not know kept as text), for
the whole-node tracer, lint and `diff --all`. A foreign table whose
structure cannot be read is named, not fatal. Errors are UsageErrors naming
the file.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ...dataplane.nft.parse import NftParseError, parse_listing, parse_script
from ...dataplane.nft.ruleset import NodeTable, RulesetError, read_table
from ...dataplane.nft.state import TableState, replay
from ...diagnostics import UsageError

TABLE = "kube-proxy"
FAMILIES = {"ipv4": "ip", "ipv6": "ip6"}


@dataclass(frozen=True)
class Dump:
    """The kube-proxy table of each family a file holds (4 → `ip`, 6 → `ip6`), and the other tables it named."""

    tables: dict[int, TableState]
    others: tuple[str, ...] = ()
    listing: bool = False  # an `nft list` output, not a script
    foreign: tuple[NodeTable, ...] = ()  # the other tables, read leniently, in listing order
    unread: tuple[str, ...] = ()  # other tables whose structure could not be read, each with why
    kube_lines: dict[int, int] | None = None  # family → the first line of its kube-proxy table

    def node_tables(self, fam: int) -> list[NodeTable]:
        """The other tables whose base chains see family FAM's packets (ip or ip6, and inet)."""
        want = ("ip6" if fam == 6 else "ip", "inet")
        return [t for t in self.foreign if t.family in want]

    def table(self, fam: int) -> TableState | None:
        return self.tables.get(fam)


def read(path: str, ip_family: str | None = None) -> tuple[Dump, str]:
    """PATH (`-` for standard input) → (Dump, PATH); ip_family (`ipv4`/`ipv6`) keeps only that family."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    return read_text(text, path, ip_family), path


def read_text(text: str, source: str, ip_family: str | None = None, allow_none: bool = False) -> Dump:
    """TEXT → Dump; ALLOW_NONE accepts a ruleset without kube-proxy's table (lint reports that)."""
    want = FAMILIES.get(ip_family or "")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
    if not first:
        raise UsageError(f"{source}: empty: no nftables script or listing")
    if first.startswith("table "):
        return _listing(text, source, want, allow_none)
    try:
        tx = parse_script(text)
    except NftParseError as e:
        raise UsageError(f"{source}: {e}") from None
    if tx.table != TABLE or (want is not None and tx.family != want):
        raise UsageError(f"{source}: the script is for table {tx.family} {tx.table}, not "
                         f"{want or 'ip/ip6'} {TABLE}")
    return Dump({6 if tx.family == "ip6" else 4: replay(tx)})


_HEADER = re.compile(r"table (\S+) (\S+) \{\s*(?:# handle \d+\s*)?\Z")
_COMMAND = re.compile(r"(add|flush|delete) (table|chain|rule|set|map|element) (ip6?|inet|arp|bridge|netdev) ")


def looks_like_nft(text: str) -> bool:
    """Is TEXT an nftables script or listing (its first command or `table` block), rather than another mode's file?"""
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
    return bool(_HEADER.match(first) or _COMMAND.match(first))


def _listing(text: str, source: str, want: str | None, allow_none: bool = False) -> Dump:
    mine: dict[int, TableState] = {}
    others: list[str] = []
    foreign: list[NodeTable] = []
    unread: list[str] = []
    lines: dict[int, int] = {}
    for family, name, block, lineno in table_blocks(text, source):
        if name != TABLE or family not in ("ip", "ip6") or (want is not None and family != want):
            others.append(f"{family} {name}")
            try:
                foreign.append(read_table(block, family, name, lineno))
            except (RulesetError, NftParseError, ValueError) as e:
                unread.append(f"table {family} {name} (line {lineno}): {e}")
            continue
        try:
            (st,) = parse_listing(block)
        except NftParseError as e:
            raise UsageError(f"{source}: table {family} {name} (from line {lineno}): {e}") from None
        mine[6 if family == "ip6" else 4] = st
        lines[6 if family == "ip6" else 4] = lineno
    if not mine and not (allow_none and foreign):
        seen = ", ".join(others) or "none"
        raise UsageError(f"{source}: no table {want or 'ip/ip6'} {TABLE} in the listing (tables: {seen})")
    return Dump(mine, tuple(others), listing=True, foreign=tuple(foreign), unread=tuple(unread), kube_lines=lines)


def table_blocks(text: str, source: str) -> list[tuple[str, str, str, int]]:
    """`nft list ruleset` → (family, name, the block's text, its first line) per top-level table."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        m = _HEADER.match(line)
        if m is None:
            raise UsageError(f"{source}: line {i + 1}: expected 'table FAMILY NAME {{', found {line[:80]!r}")
        start, depth = i, 0
        while i < len(lines):
            depth += _depth(lines[i])
            i += 1
            if depth == 0:
                break
        else:
            raise UsageError(f"{source}: table {m.group(1)} {m.group(2)} (line {start + 1}) has no closing '}}'")
        out.append((m.group(1), m.group(2), "\n".join(lines[start:i]) + "\n", start + 1))
    return out


def _depth(line: str) -> int:
    """The change of brace depth over LINE, quotes skipped."""
    d, quoted = 0, False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            if ch == "{":
                d += 1
            elif ch == "}":
                d -= 1
    return d
