"""A node's other nftables tables, read leniently from `nft list ruleset` (for the whole-node tracer, lint and diff).

kube-proxy's own table is read strictly (`parse.parse_listing`): rulegen
knows every word kube-proxy writes. A node's other tables are not
rulegen's: firewalld's `inet firewalld`, a Docker or CNI `ip` table, a
hand-written `inet filter`, iptables-nft's `ip filter` / `ip nat`. Here
they are read into the same `TableState` the walk uses, plus what only a
foreign table has: each base chain's policy, each rule's handle (`nft -a`),
sets whose elements could not be read (a `typeof` key, a listing without
elements) and objects the walk does not need (flowtables, named counters,
ct helpers), which are skipped and named. A table that iptables-nft manages
(nft prints its warning comment, or its rules hold `xt` compat
expressions) is marked so: its rules mean what iptables-save says, and the
tracers send the user there. Nothing here fails on an unknown statement: a
rule's text is kept as printed and the walk decides what it can.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .model import Chain, Element, Map, NftError, Rule, Set, parse_priority
from .parse import _QUOTED_TAIL, _element_parts, gather_elements, parse_duration
from .state import ChainState, SetState, TableState

IPTABLES_NFT_WARNING = "is managed by iptables-nft"
_HANDLE = re.compile(r"\s+# handle (\d+)\s*\Z")
_BASE = re.compile(r"type (\S+) hook (\S+)(?: device \"?[^;\"]+\"?)?(?: devices = \{[^}]*\})? priority ([^;]+);"
                   r"(?:\s*policy (\S+);)?")
XT_TABLES = ("raw", "mangle", "nat", "filter", "security")
XT_CHAINS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
_SKIPPED_OBJECTS = ("flowtable", "counter", "quota", "ct", "limit", "secmark", "synproxy", "tunnel")


@dataclass
class NodeTable:
    """One table of a node's ruleset: its state as the walk reads it, and what a listing adds."""

    state: TableState
    policies: dict[str, str] = field(default_factory=dict)  # base chain → accept | drop
    handles: dict[tuple[str, int], int] = field(default_factory=dict)  # (chain, 1-based rule number) → handle
    unreadable: dict[str, str] = field(default_factory=dict)  # set or map → why its elements are unknown
    skipped: list[str] = field(default_factory=list)  # objects not read (flowtables, named counters, ...)
    iptables_nft: bool = False  # iptables-nft's table (its warning, or its shape: ip filter with FORWARD, ...)
    xt: list[str] = field(default_factory=list)  # rules holding xtables compat expressions (`xt match physdev`)
    line: int = 0  # the table's first line in the file

    @property
    def family(self) -> str:
        return self.state.family

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def where(self) -> str:
        return f"{self.state.family} {self.state.name}"

    def base_chains(self) -> list[tuple[str, str, str, int]]:
        """(name, type, hook, priority) of every base chain, in listing order."""
        out = []
        for name, c in self.state.chains.items():
            d = c.decl
            if d.hook is None:
                continue
            try:
                prio = parse_priority(d.priority or "0")
            except NftError:
                prio = 0
            out.append((name, d.type or "filter", d.hook, prio))
        return out


class RulesetError(ValueError):
    """A table block whose structure (not its rules) cannot be read."""


def read_table(block: str, family: str, name: str, first_line: int = 1) -> NodeTable:
    """One `table FAMILY NAME { ... }` block of `nft list ruleset` → NodeTable (lenient on rules)."""
    st = TableState(family, name)
    nt = NodeTable(st, line=first_line)
    lines = block.splitlines()
    i = 1  # past the header
    n = len(lines)
    while i < n:
        raw = lines[i].strip()
        i += 1
        if not raw:
            continue
        if raw.startswith("#"):
            if IPTABLES_NFT_WARNING in raw:
                nt.iptables_nft = True
            continue
        line = _HANDLE.sub("", raw)
        if line == "}":
            if family in ("ip", "ip6") and name in XT_TABLES and st.chains and all(
                    c.decl.hook is None or c.decl.name in XT_CHAINS for c in st.chains.values()):
                nt.iptables_nft = True  # nft 1.0 prints the warning on stderr only: known by its shape
            return nt
        if line.startswith("comment ") or line.startswith("flags "):
            continue
        m = re.fullmatch(r"(set|map|chain) (\S+) \{", line)
        if m is None:
            word = line.split(" ", 1)[0]
            if word in _SKIPPED_OBJECTS and line.endswith("{"):
                i = _skip_block(lines, i)
                nt.skipped.append(line[:-1].strip())
                continue
            raise RulesetError(f"line {first_line + i - 1}: cannot read {line[:80]!r} in table {family} {name}")
        kind, oname = m.groups()
        if kind == "chain":
            i = _chain(lines, i, nt, oname, first_line)
        else:
            i = _set(lines, i, nt, kind, oname, first_line)
    raise RulesetError(f"table {family} {name}: no closing '}}'")


def _skip_block(lines: list[str], i: int) -> int:
    depth = 1
    while i < len(lines) and depth:
        depth += lines[i].count("{") - lines[i].count("}")
        i += 1
    return i


def _chain(lines: list[str], i: int, nt: NodeTable, name: str, first_line: int) -> int:
    type_ = hook = prio = comment = None
    rules: list[Rule] = []
    n = len(lines)
    while i < n:
        raw = lines[i].strip()
        i += 1
        if not raw:
            continue
        if raw.startswith("#"):
            if IPTABLES_NFT_WARNING in raw:
                nt.iptables_nft = True
            continue
        hm = _HANDLE.search(raw)
        line = _HANDLE.sub("", raw)
        if line == "}":
            nt.state.chains[name] = ChainState(Chain(name, type_, hook, prio, comment), rules)
            return i
        if line.startswith("type ") and not rules:
            m = _BASE.match(line)
            if m is None:
                raise RulesetError(f"line {first_line + i - 1}: chain {name}: cannot read {line!r}")
            type_, hook = m.group(1), m.group(2)
            prio = m.group(3).replace(" ", "")
            nt.policies[name] = m.group(4) or "accept"
            continue
        if line.startswith("policy ") and not rules:  # some nft versions print it on its own line
            nt.policies[name] = line.split()[1].rstrip(";")
            continue
        cm = re.fullmatch(r'comment "([^"]*)"', line)
        if cm and not rules:
            comment = cm.group(1)
            continue
        if " xt " in f" {line} " or "# xt_" in raw or line.startswith("xt "):
            nt.iptables_nft = True
            nt.xt.append(f"{name} rule {len(rules) + 1}: {line}")
        body, rcomment = line, None
        qm = _QUOTED_TAIL.match(line)
        if qm is not None:
            body, rcomment = qm.group(1), qm.group(2)
        rules.append(Rule(name, body, rcomment))
        if hm is not None:
            nt.handles[(name, len(rules))] = int(hm.group(1))
    raise RulesetError(f"chain {name}: no closing '}}'")


def _set(lines: list[str], i: int, nt: NodeTable, kind: str, name: str, first_line: int) -> int:
    props: dict[str, str] = {}
    elements: list[str] = []
    n = len(lines)
    while i < n:
        line = _HANDLE.sub("", lines[i].strip())
        i += 1
        if not line:
            continue
        if line == "}":
            break
        if line.startswith("elements = {"):
            elements, i = gather_elements(lines, i, line, f"{kind} {name}", RulesetError)
            continue
        word, _, value = line.partition(" ")
        props[word] = value.rstrip(";").strip()
    else:
        raise RulesetError(f"{kind} {name}: no closing '}}'")
    type_ = props.get("type")
    if type_ is None and "typeof" in props:
        type_ = props["typeof"]  # `typeof ip saddr . tcp dport`: the walk needs only the key's arity and the values
    flags = tuple(props["flags"].replace(" ", "").split(",")) if "flags" in props else ()
    try:
        timeout = parse_duration(props["timeout"]) if "timeout" in props else None
    except ValueError:
        timeout = None
    decl = (Set if kind == "set" else Map)(name, type_ or "", flags, timeout, None)
    s = SetState(decl)
    for text in elements:
        key, value, ecomment = _element_parts(re.sub(r" (?:timeout|expires) \S+", "", text))
        if kind == "map" and not value:
            nt.unreadable[name] = f"map @{name}: element {text[:60]!r} has no value"
            continue
        e = Element("", name, key, value, ecomment) if kind == "map" else Element(name, "", key, (), ecomment)
        s.elements[key] = e
    if not type_:
        nt.unreadable[name] = f"@{name} has no type in the listing"
    nt.state.sets[name] = s
    return i
