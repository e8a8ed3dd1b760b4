"""nftables mode's diff view: kube-proxy's table as one side of `rulegen.diff`.

A side holds one group per table (`ip kube-proxy`, `ip6 kube-proxy`) and in
it every chain, set and map. A chain is an ordered container of rules (a
moved rule is a change: order decides which rule a packet meets first);
a set or map is an unordered container of elements (membership is all).
What each object is declared as — a base chain's type, hook and priority, a
set's type, flags and timeout, comments — is the container's declaration
(`Container.policy`, named "declaration" in reports), so a changed affinity
timeout or priority shows although no rule or element changed. Items
compare by the normal form of `dataplane/nft/state.py` (`canon_rule`,
`canon_atom`), so rulegen's script and what `nft list` prints back for it
compare equal: `mark set mark or 0x00004000` and `meta mark set meta mark |
0x00004000`, `dnat ip addr . port to` and `dnat ip to`, `priority -110` and
`priority dstnat - 10`, `10800s` and `3h`, merged ranges. Elements of
dynamic sets (affinity entries the kernel adds) are run-time state and left
out. kube-proxy's nftables mode installs nothing outside its table, so
there is nothing "outside" to add to a compile.

Sources: a script or listing file (`dump.read`: a whole `nft list ruleset`
contributes its kube-proxy tables only), or a namespace's live table through
the nft client (read only: `nft list table`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ...dataplane.nft.model import Map, Transaction, parse_priority
from ...dataplane.nft.state import TableState, canon_atom, canon_rule, canon_value, replay
from ...diff import Container, Layout, Side
from ...settings import Settings
from . import dump
from .compile import BASE_CHAINS
from .dump import TABLE, Dump

if TYPE_CHECKING:
    from ...apply.kernel import Kernel

_RANK = {"base": 0, "chain": 1, "set": 2, "map": 3}


class NftLayout(Layout):
    """Tables; in each, base chains (by hook and priority), then chains, sets and maps, each by name."""

    group_noun = "table"
    container_noun = "object"
    item_noun = "item"
    policy_noun = "declaration"
    scope = "table kube-proxy only"
    by_kind = True  # chains of rules, sets and maps of elements, each counted in its own nouns

    def __init__(self, ranks: dict[tuple[str, str], tuple] | None = None) -> None:
        self.ranks = ranks or {}

    def nouns(self, kind: str) -> tuple[str, str]:
        return kind, "rule" if kind == "chain" else "element"

    def group_order(self, names: Iterable[str]) -> list[str]:
        return sorted(set(names), key=lambda n: (n.split(" ")[-1] != TABLE, n))

    def container_order(self, group: str, names: Iterable[str]) -> list[str]:
        return sorted(set(names), key=lambda n: self.ranks.get((group, n), (1, 0, 0, n)))

    def canonical(self, kind: str) -> Callable[[str], str]:
        return canon_rule_item if kind == "chain" else canon_element_item


_TAIL = re.compile(r'^(.*?) comment "([^"]*)"$')


def rule_item(rule: str, comment: str | None) -> str:
    return rule + (f' comment "{comment}"' if comment is not None else "")


def canon_rule_item(text: str) -> str:
    m = _TAIL.match(text)
    if m is None:
        return canon_rule(text)
    return f'{canon_rule(m.group(1))} comment "{m.group(2)}"'


def element_item(key: tuple[str, ...], value: tuple[str, ...], comment: str | None) -> str:
    text = " . ".join(key)
    if comment is not None:
        text += f' comment "{comment}"'
    if value:
        text += " : " + " . ".join(value)
    return text


def canon_element_item(text: str) -> str:
    comment = None
    m = re.search(r' comment "([^"]*)"', text)
    if m is not None:
        comment = m.group(1)
        text = text[:m.start()] + text[m.end():]
    key, sep, value = text.partition(" : ")
    key_t = tuple(canon_atom(k.strip()) for k in key.split(" . "))
    value_t = tuple(canon_value(v) for v in value.split(" . ")) if sep else ()
    return element_item(key_t, value_t, comment)


def _declaration(decl) -> str:
    """What an object is declared as, in one spelling (the container's `policy`)."""
    parts = []
    if hasattr(decl, "hook"):  # a chain
        if decl.hook is not None:
            parts.append(f"type {decl.type} hook {decl.hook} priority {parse_priority(decl.priority)}")
        else:
            parts.append("regular chain")
    else:
        parts.append(f"type {' '.join(decl.type.split())}")
        if decl.flags:
            parts.append(f"flags {','.join(sorted(decl.flags))}")
        if decl.timeout is not None:
            parts.append(f"timeout {decl.timeout}s")
    if decl.comment is not None:
        parts.append(f'comment "{decl.comment}"')
    return "; ".join(parts)


def tables_of(ir: Any) -> dict[int, TableState]:
    """The kube-proxy tables of IR: a compile's Transaction, a Dump, or one TableState."""
    if isinstance(ir, Transaction):
        return {6 if ir.family == "ip6" else 4: replay(ir)}
    if isinstance(ir, TableState):
        return {6 if ir.family == "ip6" else 4: ir}
    return dict(ir.tables)


def side(ir: Any, name: str, kube_only: bool = False) -> Side:
    """IR as one side of a comparison: kube-proxy's tables, and with KUBE_ONLY off a ruleset's other tables."""
    groups: dict[str, dict[str, Container]] = {}
    ranks: dict[tuple[str, str], tuple] = {}
    tables = tables_of(ir)
    listed = [(st, {}) for _, st in sorted(tables.items())]
    if not kube_only and isinstance(ir, Dump):
        listed += [(t.state, t.policies) for t in ir.foreign]
    for st, policies in listed:
        gname = f"{st.family} {st.name}"
        out = groups[gname] = {}
        for cname, c in st.chains.items():
            d = c.decl
            decl = _declaration(d) + (f"; policy {policies[cname]}" if cname in policies else "")
            box = out[cname] = Container(kind="chain", ordered=True, policy=decl)
            box.items = [(i, rule_item(r.rule, r.comment)) for i, r in enumerate(c.rules, 1)]
            if d.hook is not None:
                ranks[(gname, cname)] = (0, _HOOKS.get(d.hook, 9), parse_priority(d.priority), cname)
            else:
                ranks[(gname, cname)] = (1, 0, 0, cname)
        for sname, s in st.sets.items():
            d = s.decl
            kind = "map" if isinstance(d, Map) else "set"
            key = sname if sname not in out else f"{sname} ({kind})"  # nft keeps chains and sets apart
            box = out[key] = Container(kind=kind, ordered=False, policy=_declaration(d))
            if "dynamic" not in d.flags:  # no position: an element has none (the report shows none)
                box.items = [(None, t) for t in sorted(element_item(e.key, e.value, e.comment)
                                                       for e in s.elements.values())]
            ranks[(gname, key)] = (_RANK[kind], 0, 0, key)
    family = 4 if 4 in tables or not tables else 6
    return Side(name, family, groups, NftLayout(ranks), kube_only)


_HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}


class NftablesView:
    def read(self, path: str, ip_family: str | None) -> tuple[Dump, str]:
        return dump.read(path, ip_family)

    def live(self, kernel: Kernel, netns: str, family: int) -> tuple[Dump, str]:
        fam = "ip6" if family == 6 else "ip"
        name = f"netns {netns} (nft list table {fam} {TABLE})"
        text = kernel.nft.list_table(netns, fam, TABLE)
        if text is None:  # no table yet: everything compiled is missing
            return Dump({family: TableState(fam, TABLE)}), name + ": no such table"
        return dump.read_text(text, name), name

    def side(self, ir: Any, name: str, kube_only: bool) -> Side:
        return side(ir, name, kube_only)

    def has_outside(self, ir: Any) -> bool:
        return False

    def outside_note(self, ir: Any, name: str) -> str | None:
        """One line: how many rules other tables hold in base chains on kube-proxy's hooks (not compared)."""
        if not isinstance(ir, Dump) or not ir.foreign:
            return None
        hooks = {c.decl.hook for st in ir.tables.values() for c in st.chains.values() if c.decl.hook} \
            or {h for _, _, h, _ in BASE_CHAINS}
        count, names = 0, []
        for t in ir.foreign:
            n = sum(len(t.state.chains[b].rules) for b, _, hook, _ in t.base_chains() if hook in hooks)
            if any(hook in hooks for _, _, hook, _ in t.base_chains()):
                names.append(t.where)
            count += n
        if not names:
            return None
        return (f"{name}: {count} foreign rule(s) sit in other tables' base chains on kube-proxy's hooks "
                f"({', '.join(names)}), not compared (--all shows them)")

    def with_outside(self, ir: Any, settings: Settings) -> Any:
        return ir

    def sniff(self, text: str) -> bool:
        return dump.looks_like_nft(text)

    def for_family(self, ir: Any, family: int) -> Any:
        """A saved file's tables narrowed to a compile's family (a ruleset may hold ip and ip6)."""
        tables = tables_of(ir)
        if family not in tables or len(tables) == 1:
            return ir
        return Dump({family: tables[family]}, getattr(ir, "others", ()), getattr(ir, "listing", False),
                    tuple(ir.node_tables(family)) if isinstance(ir, Dump) else ())


VIEW = NftablesView()
