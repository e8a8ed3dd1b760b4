"""ipsets as `ipset save` prints them: the records, the parser, and the errors.

An `IPSet` is one set: name, type (`hash:ip,port`, `bitmap:port`, ...), its
create options and its entries; an `IPSetEntry` is one member with its own
options (a comment, counters). `parse_save` reads `ipset save` output (the
same syntax `ipset restore` reads) into records; `render` writes records
back as a restore payload. Records are canonical, so two dumps of the same
sets compare equal whatever order the kernel listed them in: options (of
sets and of entries) are sorted by name and entries by member. The `initval` option is dropped: it
is the random seed of a hash set's hash function, chosen afresh whenever a
set is made, and says nothing about what the set holds.

`IPSetError` carries the line of a restore payload that failed and a `kind`
from a small fixed list (`KINDS`), so a caller (or a parity test) can act on
"the set exists already" without matching ipset's wording, which changes
between versions. `classify` maps ipset's messages to kinds.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Iterable

from ...diagnostics import UsageError

# Create options that are bare words; every other option takes a value.
# ("comment" is bare on `create` and takes the comment text on `add`.)
SET_FLAGS = frozenset({"counters", "comment", "skbinfo", "forceadd"})
ENTRY_FLAGS = frozenset({"nomatch"})
# Chosen by the kernel when a set is made, not by the user: left out of records.
VOLATILE_OPTIONS = frozenset({"initval"})

KINDS = (
    "set-exists",  # create: a set of that name exists (with other settings, under -exist)
    "no-set",  # the named set does not exist
    "entry-exists",  # add: the member is in the set already
    "no-entry",  # del: the member is not in the set
    "out-of-range",  # a bitmap member outside the set's range
    "type-mismatch",  # swap: the two sets are not of one type
    "in-use",  # destroy: a rule (iptables -m set) still refers to the set
    "full",  # the set holds maxelem members
    "syntax",  # a line ipset cannot read
    "unsupported",  # the fake does not model this (never from the real ipset)
    "other",
)


class IPSetError(UsageError):
    """`ipset restore` (or save) refused; LINE is the payload's 1-based line when known."""

    def __init__(self, message: str, kind: str = "other", line: int | None = None) -> None:
        super().__init__(message)
        assert kind in KINDS, kind
        self.kind = kind
        self.line = line


@dataclass(frozen=True, slots=True)
class IPSetEntry:
    member: str
    options: tuple[tuple[str, str], ...] = ()

    def text(self) -> str:
        return " ".join([self.member, *_option_words(self.options, ENTRY_FLAGS)])


@dataclass(frozen=True, slots=True)
class IPSet:
    name: str
    type: str
    options: tuple[tuple[str, str], ...] = ()  # sorted by name; a bare flag has the value ""
    entries: tuple[IPSetEntry, ...] = ()  # sorted by member

    def option(self, name: str, default: str | None = None) -> str | None:
        return dict(self.options).get(name, default)

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(e.member for e in self.entries)


def _option_words(options: Iterable[tuple[str, str]], bare: frozenset[str]) -> list[str]:
    words: list[str] = []
    for k, v in options:
        words.append(k)
        if k not in bare:
            words.append(_quote(v) if k == "comment" else v)
    return words


def _quote(text: str) -> str:
    return '"' + text + '"'


def canonical_options(options: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in options if k not in VOLATILE_OPTIONS))


def canonical_entries(entries: Iterable[IPSetEntry]) -> tuple[IPSetEntry, ...]:
    return tuple(sorted(entries, key=lambda e: (e.member, e.options)))


def split_options(words: list[str], flags: frozenset[str], where: str) -> list[tuple[str, str]]:
    """`key value` / bare-flag words → (key, value) pairs ("" for a bare flag)."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        k = words[i]
        if k in flags:
            out.append((k, ""))
            i += 1
            continue
        if i + 1 >= len(words):
            raise IPSetError(f"{where}: option {k!r} needs a value", "syntax")
        out.append((k, words[i + 1]))
        i += 2
    return out


def parse_save(text: str) -> list[IPSet]:
    """`ipset save` (or list -o save) output → records, sets in the order given."""
    order: list[str] = []
    heads: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    members: dict[str, list[IPSetEntry]] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            raise IPSetError(f"ipset save line {no}: unbalanced quotes: {line}", "syntax", no) from None
        cmd = words[0]
        if cmd == "create" and len(words) >= 3:
            name = words[1]
            heads[name] = (words[2], split_options(words[3:], SET_FLAGS, f"ipset save line {no}"))
            members.setdefault(name, [])
            order.append(name)
        elif cmd == "add" and len(words) >= 3:
            name = words[1]
            if name not in heads:
                raise IPSetError(f"ipset save line {no}: member of set {name!r} before its create line", "syntax", no)
            opts = split_options(words[3:], ENTRY_FLAGS, f"ipset save line {no}")
            members[name].append(IPSetEntry(words[2], tuple(sorted(opts))))
        else:
            raise IPSetError(f"ipset save line {no}: not a create or add line: {line}", "syntax", no)
    return [IPSet(n, heads[n][0], canonical_options(heads[n][1]), canonical_entries(members[n])) for n in order]


def render(sets: Iterable[IPSet]) -> str:
    """Records → `ipset restore` payload (create lines, then each set's add lines)."""
    out: list[str] = []
    for s in sets:
        out.append(" ".join(["create", s.name, s.type, *_option_words(s.options, SET_FLAGS)]) + "\n")
        out.extend(f"add {s.name} {e.text()}\n" for e in s.entries)
    return "".join(out)


# ipset's own words (ipset 7.x) → kind. The first match wins.
_KIND_PATTERNS = (
    (r"set with the same name already exists", "set-exists"),
    (r"set with the given name does not exist", "no-set"),
    (r"it's already added", "entry-exists"),
    (r"it's not added", "no-entry"),
    (r"out of the range", "out-of-range"),
    (r"type does not match|cannot be swapped", "type-mismatch"),
    (r"in use by a kernel component", "in-use"),
    (r"[Hh]ash is full|set is full", "full"),
    (r"Syntax error|[Uu]nknown argument|No command specified|[Mm]issing mandatory|[Ii]nvalid|"
     r"cannot be parsed|[Uu]nknown (?:settype|command|option)", "syntax"),
)
_LINE_RE = re.compile(r"Error in line (\d+):\s*")
_PREFIX_RE = re.compile(r"^ipset v[\d.]+:\s*")


def classify(stderr: str) -> tuple[str, int | None, str]:
    """ipset's complaint → (kind, line or None, the message without ipset's banner)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Try `ipset help")]
    text = _PREFIX_RE.sub("", lines[0]) if lines else "ipset failed"
    m = _LINE_RE.search(text)
    line = int(m.group(1)) if m else None
    message = _LINE_RE.sub("", text)
    for pattern, kind in _KIND_PATTERNS:
        if re.search(pattern, message):
            return kind, line, message
    return "other", line, message
