"""The state a table is left in, and its normal form: what two nftables rule sets are compared by.

A `TableState` is one table's objects after some operations: declared
chains with their rules in order, sets and maps with their elements. It is
built by replaying a `Transaction` (what nft would leave after running the
script in an empty table, the way knftables' fake does) or by `parse.py`
reading `nft list table` output.

`normalise` turns a TableState into a `NormTable`, the form kube-proxy's
own tests compare (knftables' sorted dump): objects sorted by name, each
chain's rules kept in order, each set's and map's elements an unordered set.
It also removes the differences of spelling between what goes into nft and
what `nft list` prints back: `mark set mark or 0x4000` is listed as
`meta mark set meta mark | 0x00004000`, `dnat ip addr . port to` as
`dnat ip to`, named priorities (`dstnat - 10`) as numbers, `{ a , b }` as
`{ a, b }`, a one-element anonymous set without braces, overlapping ranges
of an anonymous set merged, timeouts as `3h`, interface names quoted, and
the `size` nft adds to dynamic sets. Elements of dynamic sets (session
affinity entries the kernel adds at run time) are not configuration and are
left out. The rewrites cover exactly the vocabulary kube-proxy's nftables
mode writes; `canon_rule` keeps anything else as it is, token for token.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from .model import ADD, DELETE, FLUSH, Chain, Element, Map, Rule, Set, Table, Transaction, parse_priority


@dataclass
class ChainState:
    decl: Chain
    rules: list[Rule] = field(default_factory=list)


@dataclass
class SetState:
    decl: Set | Map
    elements: dict[tuple[str, ...], Element] = field(default_factory=dict)

    @property
    def is_map(self) -> bool:
        return isinstance(self.decl, Map)


@dataclass
class TableState:
    family: str
    name: str
    comment: str | None = None
    chains: dict[str, ChainState] = field(default_factory=dict)
    sets: dict[str, SetState] = field(default_factory=dict)  # sets and maps, one namespace


def replay(tx: Transaction, state: TableState | None = None) -> TableState:
    """The table after running TX (on STATE, else on an empty table), as nft would leave it."""
    st = state if state is not None else TableState(tx.family, tx.table)
    for verb, obj in tx.ops:
        t = type(obj)
        if t is Rule:
            st.chains[obj.chain].rules.append(obj)
        elif t is Element:
            s = st.sets[obj.set or obj.map]
            if verb == ADD:
                s.elements.setdefault(obj.key, obj)
            else:
                s.elements.pop(obj.key, None)
        elif t is Chain:
            if verb == ADD:
                old = st.chains.get(obj.name)
                if old is None:
                    st.chains[obj.name] = ChainState(obj)
                elif obj.type is not None or obj.comment is not None:
                    old.decl = obj
            elif verb == FLUSH:
                st.chains[obj.name].rules.clear()
            else:
                del st.chains[obj.name]
        elif t in (Set, Map):
            if verb == ADD:
                st.sets.setdefault(obj.name, SetState(obj))
            elif verb == FLUSH:
                st.sets[obj.name].elements.clear()
            else:
                del st.sets[obj.name]
        elif t is Table:
            if verb == ADD:
                if obj.comment is not None:
                    st.comment = obj.comment
            elif verb == DELETE:
                st.chains.clear()
                st.sets.clear()
                st.comment = None
    return st


# ------------------------------------------------------------------ the normal form


class NormChain(NamedTuple):
    name: str
    type: str | None
    hook: str | None
    priority: int | None
    comment: str | None
    rules: tuple[tuple[str, str | None], ...]  # (canonical rule, comment), in order


class NormSet(NamedTuple):
    kind: str  # "set" | "map"
    name: str
    type: str
    flags: frozenset[str]
    timeout: int | None
    comment: str | None
    elements: frozenset[tuple[tuple[str, ...], tuple[str, ...], str | None]]


class NormTable(NamedTuple):
    family: str
    name: str
    comment: str | None
    chains: tuple[NormChain, ...]  # sorted by name
    sets: tuple[NormSet, ...]  # sets and maps, sorted by name

    def chain(self, name: str) -> NormChain | None:
        return next((c for c in self.chains if c.name == name), None)

    def set(self, name: str) -> NormSet | None:
        return next((s for s in self.sets if s.name == name), None)


def normalise(st: TableState) -> NormTable:
    chains = []
    for name in sorted(st.chains):
        c = st.chains[name]
        d = c.decl
        prio = parse_priority(d.priority) if d.priority is not None else None
        rules = tuple((canon_rule(r.rule), r.comment) for r in c.rules)
        chains.append(NormChain(name, d.type, d.hook, prio, d.comment, rules))
    sets = []
    for name in sorted(st.sets):
        s = st.sets[name]
        d = s.decl
        flags = frozenset(d.flags)
        if "dynamic" in flags:
            elements: frozenset = frozenset()
        else:
            elements = frozenset((tuple(canon_atom(k) for k in e.key), tuple(canon_value(v) for v in e.value), e.comment)
                                 for e in s.elements.values())
        sets.append(NormSet("map" if s.is_map else "set", name, " ".join(d.type.split()), flags, d.timeout,
                            d.comment, elements))
    return NormTable(st.family, st.name, st.comment, tuple(chains), tuple(sets))


def dump(n: NormTable) -> str:
    """The normal form as text, for diffs: declarations, then rules by chain, then elements, all sorted."""
    out = [f"table {n.family} {n.name}" + (f' comment "{n.comment}"' if n.comment is not None else "")]
    for c in n.chains:
        base = f" type {c.type} hook {c.hook} priority {c.priority}" if c.type else ""
        com = f' comment "{c.comment}"' if c.comment is not None else ""
        out.append(f"chain {c.name}{base}{com}")
    for s in n.sets:
        flags = f" flags {','.join(sorted(s.flags))}" if s.flags else ""
        to = f" timeout {s.timeout}s" if s.timeout is not None else ""
        com = f' comment "{s.comment}"' if s.comment is not None else ""
        out.append(f"{s.kind} {s.name} type {s.type}{flags}{to}{com}")
    for c in n.chains:
        for rule, com in c.rules:
            out.append(f"rule {c.name} {rule}" + (f' comment "{com}"' if com is not None else ""))
    for s in n.sets:
        for line in sorted(_element_text(e) for e in s.elements):
            out.append(f"element {s.name} {line}")
    return "\n".join(out) + "\n"


def _element_text(e) -> str:
    key, value, comment = e
    text = " . ".join(key)
    if comment is not None:
        text += f' comment "{comment}"'
    if value:
        text += " : " + " . ".join(value)
    return text


def compare(a: NormTable, b: NormTable) -> list[str]:
    """The differences from A to B, one line each: chains as ordered rule lists, sets as element sets."""
    out: list[str] = []
    if (a.family, a.name, a.comment) != (b.family, b.name, b.comment):
        out.append(f"table: {a.family} {a.name} {a.comment!r} -> {b.family} {b.name} {b.comment!r}")
    ac, bc = {c.name: c for c in a.chains}, {c.name: c for c in b.chains}
    for name in sorted(ac.keys() | bc.keys()):
        x, y = ac.get(name), bc.get(name)
        if x is None:
            out.append(f"chain {name}: only in the second")
        elif y is None:
            out.append(f"chain {name}: only in the first")
        else:
            if x[1:5] != y[1:5]:
                out.append(f"chain {name}: declared {x[1:5]} -> {y[1:5]}")
            if x.rules != y.rules:
                out.extend(_rule_diff(name, x.rules, y.rules))
    asets, bsets = {s.name: s for s in a.sets}, {s.name: s for s in b.sets}
    for name in sorted(asets.keys() | bsets.keys()):
        x, y = asets.get(name), bsets.get(name)
        if x is None:
            out.append(f"{y.kind} {name}: only in the second")
        elif y is None:
            out.append(f"{x.kind} {name}: only in the first")
        else:
            if x[:6] != y[:6]:
                out.append(f"{x.kind} {name}: declared {x[:6]} -> {y[:6]}")
            for e in sorted(_element_text(e) for e in x.elements - y.elements):
                out.append(f"{x.kind} {name}: element only in the first: {e}")
            for e in sorted(_element_text(e) for e in y.elements - x.elements):
                out.append(f"{x.kind} {name}: element only in the second: {e}")
    return out


def _rule_diff(chain: str, x, y) -> list[str]:
    import difflib

    fmt = [f"{r}" + (f' comment "{c}"' if c is not None else "") for r, c in x]
    fmt2 = [f"{r}" + (f' comment "{c}"' if c is not None else "") for r, c in y]
    out = []
    for line in difflib.unified_diff(fmt, fmt2, lineterm="", n=0):
        if line.startswith(("---", "+++", "@@")):
            continue
        out.append(f"chain {chain}: {'only in the first' if line[0] == '-' else 'only in the second'}: {line[1:]}")
    if not out:
        out.append(f"chain {chain}: rules in another order")
    return out


# ------------------------------------------------------------------ spellings

_TOKEN = re.compile(r'"[^"]*"|[{}]|,|[^\s{},]+')
_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_OPS = {"or": "|", "and": "&", "xor": "^"}
_ADDR_KEYWORDS = ("saddr", "daddr")


@lru_cache(maxsize=1 << 16)
def canon_rule(text: str) -> str:
    """One spelling for a rule, whether written for `nft -f` or printed by `nft list`."""
    toks = _TOKEN.findall(text)
    out: list[str] = []
    i, n = 0, len(toks)
    while i < n:
        t = toks[i]
        if t == "{":
            j = i + 1
            depth = 1
            while j < n:
                if toks[j] == "{":
                    depth += 1
                elif toks[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            inner = toks[i + 1:j]
            prev = out[-1] if out else ""
            if prev in ("map", "vmap"):
                out.append(_canon_map(inner))
            elif prev.startswith("@"):
                out.append("{ " + " ".join(x for x in inner if x != ",") + " }")
            else:
                out.append(_canon_setlit(inner))
            i = j + 1
            continue
        prev = out[-1] if out else ""
        if t == "mark" and prev not in ("meta", "ct"):
            out += ["meta", "mark"]
        elif t in _OPS and prev == "mark":
            out.append(_OPS[t])
        elif t == "addr" and prev in ("ip", "ip6") and len(out) >= 2 and out[-2] == "dnat" \
                and toks[i + 1:i + 3] == [".", "port"]:
            i += 3  # `dnat ip addr . port to` is listed as `dnat ip to`
            continue
        elif _HEX.match(t):
            out.append(hex(int(t, 16)))
        elif t.isdigit() and prev == "!=" and len(out) >= 3 and out[-3] == "&":
            out.append(hex(int(t)))
        elif t.startswith('"') and t.endswith('"') and len(t) >= 2:
            out.append(t[1:-1])
        elif (prev in _ADDR_KEYWORDS or (prev == "!=" and len(out) >= 2 and out[-2] in _ADDR_KEYWORDS)) \
                and _interval(t) is not None:
            out.append(_canon_setlit([t]))
        else:
            out.append(t)
        i += 1
    return " ".join(out)


def _split_commas(tokens: list[str]) -> list[str]:
    items, cur = [], []
    for t in tokens:
        if t == ",":
            if cur:
                items.append(" ".join(cur))
            cur = []
        else:
            cur.append(t)
    if cur:
        items.append(" ".join(cur))
    return items


def _canon_map(tokens: list[str]) -> str:
    entries = []
    for item in _split_commas(tokens):
        k, _, v = item.partition(" : ")
        v = " ".join(canon_atom(x) if x not in (".", "goto", "jump") else x for x in v.split())
        entries.append((int(k) if k.strip().isdigit() else k.strip(), k.strip(), v))
    entries.sort(key=lambda e: (isinstance(e[0], str), e[0]))
    return "{ " + ", ".join(f"{k} : {v}" for _, k, v in entries) + " }"


def _interval(text: str):
    """(version, first, last) of an address, CIDR or `a-b` range; None when TEXT is none of them."""
    try:
        if "-" in text and "/" not in text:
            a, b = text.split("-", 1)
            lo, hi = ipaddress.ip_address(a), ipaddress.ip_address(b)
            return (lo.version, int(lo), int(hi)) if lo.version == hi.version else None
        net = ipaddress.ip_network(text, strict=False)
        return (net.version, int(net.network_address), int(net.broadcast_address))
    except ValueError:
        return None


def _canon_setlit(tokens: list[str]) -> str:
    items = _split_commas(tokens)
    ivs = [_interval(x) for x in items]
    if not items or any(iv is None for iv in ivs):
        return "{ " + ", ".join(sorted(set(canon_atom(x) for x in items))) + " }"
    merged: list[list[int]] = []
    for ver, lo, hi in sorted(ivs):
        if merged and merged[-1][0] == ver and lo <= merged[-1][2] + 1:
            merged[-1][2] = max(merged[-1][2], hi)
        else:
            merged.append([ver, lo, hi])
    return "{ " + ", ".join(_range_text(*m) for m in merged) + " }"


def _range_text(ver: int, lo: int, hi: int) -> str:
    cls = ipaddress.IPv4Address if ver == 4 else ipaddress.IPv6Address
    if lo == hi:
        return str(cls(lo))
    nets = list(ipaddress.summarize_address_range(cls(lo), cls(hi)))
    if len(nets) == 1:
        return str(nets[0])
    return f"{cls(lo)}-{cls(hi)}"


@lru_cache(maxsize=1 << 16)
def canon_atom(text: str) -> str:
    """An element's key part or value: addresses in canonical form, the rest as is."""
    if ":" in text and not text.startswith("["):
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            return text
    return text


def canon_value(text: str) -> str:
    return " ".join(text.split())
