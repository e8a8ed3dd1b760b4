"""Semantic diff of two iptables rulesets: per table and chain, rules added, removed and moved.

Owns the comparison `rulegen diff` and `rulegen golden` report: two `Ruleset`s
(compiled, parsed from a file, or dumped from a live namespace) are compared
per table and chain by each rule's canonical spelling (`spec.canonical`), so
counters, `#` lines, chain declaration order, rule write order across chains
and spelling (`0x4000` / `0x00004000`, `-d 1.2.3.4` / `1.2.3.4/32`, option
order, `0.5000000000` / `0.50000000000`) never show up, while a rule that
changed, appeared, vanished or changed place inside its chain does. A moved
rule is one present on both sides whose order relative to the others
changed: the rules kept in place are a longest increasing subsequence of
matched positions (O(n log n), fine for a 20k-rule KUBE-SERVICES), the rest
of the matched ones are moves. `kube_only` narrows both sides to
kube-proxy's part of a node (KUBE-* chains and the built-in chains' rules
that jump to them), so a live node's Docker or host rules stay out.
`with_jumps` adds kube-proxy's jump rules to a compiled ruleset, placed as
kube-proxy inserts them.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Iterable

from .dataplane.xtables.model import BUILTIN_CHAINS, Rule, Ruleset, Table
from .dataplane.xtables.spec import SpecError, canonical, parse_spec
from .gcpause import gc_paused

TABLE_ORDER = ("filter", "nat", "mangle", "raw", "security")
# Empty marker chains kubelet and kube-proxy create outside the payload;
# with kube_only they are not part of the comparison.
MARKER_CHAINS = frozenset({"KUBE-PROXY-CANARY", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"})


@dataclass(frozen=True, slots=True)
class RuleChange:
    """One rule that differs. Positions are 1-based in the whole chain, as `iptables -L --line-numbers`."""

    op: str  # "added" | "removed" | "moved"
    rule: str  # the rule body as its side wrote it (the new side for added and moved)
    old_pos: int | None
    new_pos: int | None

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "rule": self.rule, "old_position": self.old_pos, "new_position": self.new_pos}


@dataclass(frozen=True, slots=True)
class ChainDiff:
    table: str
    chain: str
    status: str  # "added" | "removed" | "changed"
    changes: tuple[RuleChange, ...]
    old_policy: str | None = None
    new_policy: str | None = None

    def count(self, op: str) -> int:
        return sum(1 for c in self.changes if c.op == op)

    @property
    def policy_changed(self) -> bool:
        return self.old_policy != self.new_policy

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "chain": self.chain,
            "status": self.status,
            "policy": {"old": self.old_policy, "new": self.new_policy} if self.policy_changed else None,
            "changes": [c.to_json() for c in self.changes],
        }


@dataclass(frozen=True, slots=True)
class DiffResult:
    old_name: str
    new_name: str
    old_family: int
    new_family: int
    kube_only: bool
    chains: tuple[ChainDiff, ...]  # only chains that differ, in table then chain order
    compared: tuple[int, int, int]  # tables, chains, rules looked at (union of both sides)

    @property
    def empty(self) -> bool:
        return not self.chains

    def summary(self) -> dict[str, int]:
        out = {"rules_added": 0, "rules_removed": 0, "rules_moved": 0,
               "chains_added": 0, "chains_removed": 0, "chains_changed": 0, "policies_changed": 0}
        for c in self.chains:
            out[f"chains_{c.status}"] += 1
            out["policies_changed"] += c.policy_changed
            for ch in c.changes:
                out[f"rules_{ch.op}"] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        tables, chains, rules = self.compared
        return {
            "equal": self.empty,
            "old": {"source": self.old_name, "family": self.old_family},
            "new": {"source": self.new_name, "family": self.new_family},
            "kube_only": self.kube_only,
            "compared": {"tables": tables, "chains": chains, "rules": rules},
            "summary": self.summary(),
            "chains": [c.to_json() for c in self.chains],
        }


# ------------------------------------------------------------------ one side, ready to compare


class _Chain:
    __slots__ = ("policy", "rules")

    def __init__(self) -> None:
        self.policy: str | None = None
        self.rules: list[tuple[int, str]] = []  # (1-based position in the chain, body)


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


def _view(rs: Ruleset, kube_only: bool) -> dict[str, dict[str, _Chain]]:
    """Per table, per chain: what exists after the text is applied (same-named tables merged)."""
    out: dict[str, dict[str, _Chain]] = {}
    for t in rs.tables:
        chains = out.setdefault(t.name, {})
        for name in BUILTIN_CHAINS.get(t.name, ()):
            chains.setdefault(name, _Chain())
        for name, policy in t.policies:
            chains.setdefault(name, _Chain()).policy = policy
        for name in t.chains:
            chains.setdefault(name, _Chain())
        for r in t.rules:
            ch = chains.get(r.chain)
            if ch is None:
                ch = chains[r.chain] = _Chain()
            ch.rules.append((len(ch.rules) + 1, r.spec))
        for name in t.deletes:
            chains.pop(name, None)
    if kube_only:
        for tname, chains in out.items():
            builtins = BUILTIN_CHAINS.get(tname, ())
            for name in list(chains):
                ch = chains[name]
                if name in builtins:
                    ch.policy = None  # the host's business
                    ch.rules = [(p, s) for p, s in ch.rules if jumps_to_kube(s)]
                elif not name.startswith("KUBE-") or name in MARKER_CHAINS:
                    del chains[name]
    return out


# ------------------------------------------------------------------ one chain


def _keys(canon: list[str]) -> list[tuple[str, int]]:
    """(canonical, k): the k-th copy of a rule, so duplicates pair up in order."""
    seen: dict[str, int] = {}
    out = []
    for c in canon:
        k = seen.get(c, 0)
        seen[c] = k + 1
        out.append((c, k))
    return out


def _lis(seq: list[int]) -> set[int]:
    """Indexes into `seq` of one longest strictly increasing subsequence."""
    tails: list[int] = []  # values
    tail_idx: list[int] = []
    prev = [-1] * len(seq)
    for i, v in enumerate(seq):
        k = bisect_left(tails, v)
        if k == len(tails):
            tails.append(v)
            tail_idx.append(i)
        else:
            tails[k] = v
            tail_idx[k] = i
        prev[i] = tail_idx[k - 1] if k else -1
    out: set[int] = set()
    i = tail_idx[-1] if tail_idx else -1
    while i >= 0:
        out.add(i)
        i = prev[i]
    return out


def _chain_changes(old: list[tuple[int, str]], new: list[tuple[int, str]]) -> tuple[RuleChange, ...]:
    if len(old) == len(new) and all(x[1] == y[1] for x, y in zip(old, new)):
        return ()  # same text (two rulegen payloads): no need to canonicalise
    a = [canonical(s) for _, s in old]
    b = [canonical(s) for _, s in new]
    if a == b:
        return ()
    ka, kb = _keys(a), _keys(b)
    where_b = {k: j for j, k in enumerate(kb)}
    matched = [(i, where_b[k]) for i, k in enumerate(ka) if k in where_b]  # in old order
    kept_idx = _lis([j for _, j in matched])
    kept_new_of_old: dict[int, int] = {}
    moved_from: dict[int, int] = {}  # new index -> old index
    for n, (i, j) in enumerate(matched):
        if n in kept_idx:
            kept_new_of_old[i] = j
        else:
            moved_from[j] = i
    matched_old = {i for i, _ in matched}
    matched_new = {j for _, j in matched}

    # Order like a unified diff: a removed rule sits right after the kept rule before it.
    items: list[tuple[tuple[float, int, int], RuleChange]] = []
    anchor = -1
    for i, (pos, spec) in enumerate(old):
        if i in kept_new_of_old:
            anchor = kept_new_of_old[i]
        elif i not in matched_old:
            items.append(((anchor + 0.5, 0, i), RuleChange("removed", spec, pos, None)))
    for j, (pos, spec) in enumerate(new):
        if j in moved_from:
            items.append(((j, 1, j), RuleChange("moved", spec, old[moved_from[j]][0], pos)))
        elif j not in matched_new:
            items.append(((j, 1, j), RuleChange("added", spec, None, pos)))
    items.sort(key=lambda it: it[0])
    return tuple(c for _, c in items)


# ------------------------------------------------------------------ whole rulesets


def _table_order(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=lambda n: (TABLE_ORDER.index(n) if n in TABLE_ORDER else len(TABLE_ORDER), n))


def _chain_order(table: str, names: Iterable[str]) -> list[str]:
    builtins = BUILTIN_CHAINS.get(table, ())
    return sorted(set(names), key=lambda n: (0, builtins.index(n), "") if n in builtins else (1, 0, n))


def diff_rulesets(old: Ruleset, new: Ruleset, *, kube_only: bool = False,
                  old_name: str = "old", new_name: str = "new") -> DiffResult:
    """Compare `old` with `new` by meaning; the result lists only what differs."""
    # Canonicalising every rule of a large node makes millions of small
    # acyclic tuples; collector passes over them would cost more than the work.
    with gc_paused(freeze=False):
        return _diff(old, new, kube_only, old_name, new_name)


def _diff(old: Ruleset, new: Ruleset, kube_only: bool, old_name: str, new_name: str) -> DiffResult:
    va, vb = _view(old, kube_only), _view(new, kube_only)
    out: list[ChainDiff] = []
    n_tables = n_chains = n_rules = 0
    empty: dict[str, _Chain] = {}
    for tname in _table_order([*va, *vb]):
        ta, tb = va.get(tname, empty), vb.get(tname, empty)
        n_tables += 1
        builtins = BUILTIN_CHAINS.get(tname, ())
        for cname in _chain_order(tname, [*ta, *tb]):
            ca, cb = ta.get(cname), tb.get(cname)
            n_chains += 1
            n_rules += max(len(ca.rules) if ca else 0, len(cb.rules) if cb else 0)
            builtin = cname in builtins
            if ca is None and not builtin:
                changes = tuple(RuleChange("added", s, None, p) for p, s in cb.rules)
                out.append(ChainDiff(tname, cname, "added", changes))
                continue
            if cb is None and not builtin:
                changes = tuple(RuleChange("removed", s, p, None) for p, s in ca.rules)
                out.append(ChainDiff(tname, cname, "removed", changes))
                continue
            ra = ca.rules if ca else []
            rb = cb.rules if cb else []
            changes = _chain_changes(ra, rb)
            pa = ca.policy if ca else None
            pb = cb.policy if cb else None
            if pa is None or pb is None:  # a payload states no policy: nothing to compare
                pa = pb = None
            if changes or pa != pb:
                out.append(ChainDiff(tname, cname, "changed", changes, pa, pb))
    return DiffResult(old_name, new_name, old.family, new.family, kube_only, tuple(out),
                      (n_tables, n_chains, n_rules))


def with_jumps(rs: Ruleset, jumps: Iterable[tuple[str, str, str]]) -> Ruleset:
    """`rs` plus kube-proxy's jump rules, each inserted at position 1 of its built-in chain in list order.

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
    for name in _table_order(front):
        tables.append(Table(name, (), tuple(front[name])))
    return Ruleset(rs.family, tuple(tables))


# ------------------------------------------------------------------ text output


_STYLES = {
    "removed": {"fg": "red"}, "added": {"fg": "green"}, "moved": {"fg": "yellow"},
    "old": {"fg": "red", "bold": True}, "new": {"fg": "green", "bold": True},
    "table": {"fg": "cyan", "bold": True}, "chain": {"bold": True},
}
_SIGN = {"removed": "-", "added": "+", "moved": "~"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _what(c: ChainDiff) -> str:
    if c.status in ("added", "removed"):
        return f"{c.status} ({_plural(len(c.changes), 'rule')})"
    parts = [f"{n} {op}" for op in ("added", "removed", "moved") if (n := c.count(op))]
    if c.policy_changed:
        parts.append(f"policy {c.old_policy} -> {c.new_policy}")
    return ", ".join(parts)


def _line(ch: RuleChange) -> str:
    if ch.op == "moved":
        pos = f"{ch.old_pos}->{ch.new_pos}"
    else:
        pos = str(ch.new_pos if ch.op == "added" else ch.old_pos)
    return f"{_SIGN[ch.op]} {pos:<7} {ch.rule}"


def summary_line(res: DiffResult) -> str:
    tables, chains, rules = res.compared
    if res.empty:
        return (f"no differences ({_plural(tables, 'table')}, {_plural(chains, 'chain')}, "
                f"{_plural(rules, 'rule')} compared" + (", kube-proxy's chains only" if res.kube_only else "") + ")")
    s = res.summary()
    n = len(res.chains)
    parts = [f"{s['rules_' + op]} {op}" for op in ("added", "removed", "moved") if s["rules_" + op]]
    if parts:
        first = parts[0].split(" ", 1)
        parts[0] = f"{first[0]} {'rule' if first[0] == '1' else 'rules'} {first[1]}"
    for key, word in (("chains_added", "added"), ("chains_removed", "removed")):
        if s[key]:
            parts.append(f"{_plural(s[key], 'chain')} {word}")
    if s["policies_changed"]:
        parts.append(f"{_plural(s['policies_changed'], 'policy')} changed".replace("policys", "policies"))
    return f"{n} {'chain differs' if n == 1 else 'chains differ'}: " + ", ".join(parts)


def render_text(res: DiffResult, color: bool = False, rules: bool = True) -> str:
    """The human report (templates/diff.j2); `rules=False` keeps only the chain headings."""
    import click

    from .templating import render

    def paint(text: str, kind: str) -> str:
        return click.style(text, **_STYLES[kind]) if color else text

    tables: list[dict[str, Any]] = []
    for c in res.chains:
        if not tables or tables[-1]["name"] != c.table:
            tables.append({"name": c.table, "chains": []})
        lines = [paint(_line(ch), ch.op) for ch in c.changes] if rules else []
        tables[-1]["chains"].append({"name": c.chain, "what": _what(c), "lines": lines})
    return render("diff.j2", old=res.old_name, new=res.new_name, tables=tables,
                  summary=summary_line(res), paint=paint)
