"""An xtables `Ruleset` as one side of `rulegen.diff`: tables of ordered chains, compared by canonical spelling.

Owns what every iptables-based mode's diff view shares: per table (same-named
tables merged), per chain its rules in order, after the text is applied
(`-X` deletes drop a chain); built-in chains present in every table and
never added or removed; policies where a dump states them; tables in
iptables' own order, built-in chains first. Rules compare by
`spec.canonical`, so counters, `#` lines, chain declaration order, rule write
order across chains and spelling (`0x4000` / `0x00004000`, `-d 1.2.3.4` /
`1.2.3.4/32`, option order, `0.5000000000` / `0.50000000000`) never show up.
`kube_only` narrows a side to kube-proxy's part of a node (KUBE-* chains and
the built-in chains' rules that jump to them), so a live node's Docker or
host rules stay out; `with_jumps` adds the jumps kube-proxy installs from
the built-in chains to a compiled ruleset, placed as kube-proxy inserts them.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ...diff import Container, DiffResult, Layout, Side, compare
from .model import BUILTIN_CHAINS, Rule, Ruleset, Table
from .spec import SpecError, canonical, parse_spec

TABLE_ORDER = ("filter", "nat", "mangle", "raw", "security")
# Empty marker chains kubelet and kube-proxy create outside the payload;
# with kube_only they are not part of the comparison.
MARKER_CHAINS = frozenset({"KUBE-PROXY-CANARY", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"})


class XtablesLayout(Layout):
    def group_order(self, names: Iterable[str]) -> list[str]:
        return sorted(set(names), key=lambda n: (TABLE_ORDER.index(n) if n in TABLE_ORDER else len(TABLE_ORDER), n))

    def container_order(self, group: str, names: Iterable[str]) -> list[str]:
        builtins = BUILTIN_CHAINS.get(group, ())
        return sorted(set(names), key=lambda n: (0, builtins.index(n), "") if n in builtins else (1, 0, n))

    def canonical(self, kind: str) -> Callable[[str], str]:
        return canonical


LAYOUT = XtablesLayout()


def jumps_to_kube(spec: str) -> bool:
    """Does this rule jump (or go) to a KUBE-* chain?"""
    try:
        target = parse_spec(spec).target
    except SpecError:
        return " -j KUBE-" in " " + spec or " -g KUBE-" in " " + spec
    return bool(target) and target.startswith("KUBE-")


def has_kube_jumps(rs: Ruleset) -> bool:
    """Does any built-in chain jump into kube-proxy's chains (a live node's dump does)?"""
    for t in rs.tables:
        builtins = BUILTIN_CHAINS.get(t.name, ())
        if any(r.chain in builtins and jumps_to_kube(r.spec) for r in t.rules):
            return True
    return False


def side(rs: Ruleset, name: str, kube_only: bool = False) -> Side:
    """RS as one side of a comparison (same-named tables merged, `-X` applied)."""
    out: dict[str, dict[str, Container]] = {}
    for t in rs.tables:
        builtins = BUILTIN_CHAINS.get(t.name, ())
        chains = out.setdefault(t.name, {})
        for c in builtins:
            chains.setdefault(c, Container(fixed=True))
        for c, policy in t.policies:
            chains.setdefault(c, Container(fixed=c in builtins)).policy = policy
        for c in t.chains:
            chains.setdefault(c, Container(fixed=c in builtins))
        for r in t.rules:
            ch = chains.get(r.chain)
            if ch is None:
                ch = chains[r.chain] = Container(fixed=r.chain in builtins)
            ch.items.append((len(ch.items) + 1, r.spec))
        for c in t.deletes:
            chains.pop(c, None)
    if kube_only:
        for tname, chains in out.items():
            builtins = BUILTIN_CHAINS.get(tname, ())
            for c in list(chains):
                ch = chains[c]
                if c in builtins:
                    ch.policy = None  # the host's business
                    ch.items = [(p, s) for p, s in ch.items if jumps_to_kube(s)]
                elif not c.startswith("KUBE-") or c in MARKER_CHAINS:
                    del chains[c]
    return Side(name, rs.family, out, LAYOUT, kube_only)


def outside_rules(rs: Ruleset) -> tuple[int, int]:
    """What a kube-only comparison leaves out of RS: (rules in built-in chains that do not jump to a KUBE-*
    chain, chains that are neither built-in nor KUBE-*)."""
    rules = chains = 0
    for t in rs.tables:
        builtins = BUILTIN_CHAINS.get(t.name, ())
        rules += sum(1 for r in t.rules if r.chain in builtins and not jumps_to_kube(r.spec))
        chains += sum(1 for c in t.chains if c not in builtins and not c.startswith("KUBE-"))
    return rules, chains


def diff_rulesets(old: Ruleset, new: Ruleset, *, kube_only: bool = False,
                  old_name: str = "old", new_name: str = "new") -> DiffResult:
    """Compare two rulesets by meaning; the result lists only what differs."""
    return compare(side(old, old_name, kube_only), side(new, new_name, kube_only))


def with_jumps(rs: Ruleset, jumps: Iterable[tuple[str, str, str]]) -> Ruleset:
    """`rs` plus jump rules, each inserted at position 1 of its built-in chain in list order.

    So within one chain the last jump listed ends up first, as on a node
    where kube-proxy ran `iptables -I CHAIN 1 ...` for each missing jump.
    """
    front: dict[str, list[Rule]] = {}
    for table, chain, args in jumps:
        front.setdefault(table, []).insert(0, Rule(chain, args))
    tables = []
    for t in rs.tables:
        extra = front.pop(t.name, [])
        tables.append(Table(t.name, t.chains, tuple(extra) + t.rules, t.policies, t.deletes) if extra else t)
    for name in LAYOUT.group_order(front):
        tables.append(Table(name, (), tuple(front[name])))
    return Ruleset(rs.family, tuple(tables))
