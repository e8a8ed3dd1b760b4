"""A `DiffResult` as the report a person reads (templates/diff.j2): per group and container, the item lines.

Headings name each container by its kind (`chain KUBE-SVC-...`, `set ...`),
item lines carry their sign (`-` removed, `+` added, `~` moved) and their
position (none for unordered containers), and one summary line counts
everything in the layout's own nouns.
"""

from __future__ import annotations

from typing import Any

from .model import ContainerDiff, DiffResult, RuleChange

_STYLES = {
    "removed": {"fg": "red"}, "added": {"fg": "green"}, "moved": {"fg": "yellow"},
    "old": {"fg": "red", "bold": True}, "new": {"fg": "green", "bold": True},
    "table": {"fg": "cyan", "bold": True}, "chain": {"bold": True},
}
_SIGN = {"removed": "-", "added": "+", "moved": "~"}


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    if word.endswith("y"):
        return f"{n} {word[:-1]}ies"
    return f"{n} {word}es" if word.endswith("s") else f"{n} {word}s"


def _what(c: ContainerDiff, item: str, policy: str = "policy") -> str:
    if c.status in ("added", "removed"):
        return f"{c.status} ({_plural(len(c.changes), item)})"
    parts = [f"{n} {op}" for op in ("added", "removed", "moved") if (n := c.count(op))]
    if c.policy_changed:
        parts.append(f"{policy} {c.old_policy} -> {c.new_policy}")
    return ", ".join(parts)


def _line(ch: RuleChange) -> str:
    if ch.op == "moved":
        pos = f"{ch.old_pos}->{ch.new_pos}"
    else:
        p = ch.new_pos if ch.op == "added" else ch.old_pos
        pos = "" if p is None else str(p)
    return f"{_SIGN[ch.op]} {pos:<7} {ch.rule}"


def _summary_by_kind(res: DiffResult) -> str:
    """The summary of a side of several kinds: each kind counted in its own nouns."""
    lay = res.layout
    kinds: dict[str, list[ContainerDiff]] = {}
    for c in res.containers:
        kinds.setdefault(c.kind, []).append(c)
    heads, parts = [], []
    for kind, cs in kinds.items():
        cont, item = lay.nouns(kind)
        heads.append(_plural(len(cs), cont))
        ops = [f"{sum(c.count(op) for c in cs)} {op}" for op in ("added", "removed", "moved")
               if any(c.count(op) for c in cs)]
        if ops:
            n, rest = ops[0].split(" ", 1)
            ops[0] = f"{n} {item if n == '1' else _plural(2, item)[2:]} {rest}"
        for op in ("added", "removed"):
            k = sum(1 for c in cs if c.status == op)
            if k:
                ops.append(f"{_plural(k, cont)} {op}")
        k = sum(1 for c in cs if c.policy_changed)
        if k:
            ops.append(f"{k} {lay.policy_noun} changed")
        parts.append(", ".join(ops))
    verb = "differs" if len(res.containers) == 1 else "differ"
    return f"{', '.join(heads)} {verb}: " + "; ".join(p for p in parts if p)


def summary_line(res: DiffResult) -> str:
    lay = res.layout
    group, cont, item = lay.group_noun, lay.container_noun, lay.item_noun
    groups, containers, items = res.compared
    if res.empty:
        return (f"no differences ({_plural(groups, group)}, {_plural(containers, cont)}, "
                f"{_plural(items, item)} compared" + (f", {lay.scope}" if res.kube_only else "") + ")")
    if lay.by_kind:
        return _summary_by_kind(res)
    s = res.summary()
    n = len(res.containers)
    parts = [f"{s[f'{item}s_{op}']} {op}" for op in ("added", "removed", "moved") if s[f"{item}s_{op}"]]
    if parts:
        first = parts[0].split(" ", 1)
        parts[0] = f"{first[0]} {item if first[0] == '1' else item + 's'} {first[1]}"
    for op in ("added", "removed"):
        if s[f"{cont}s_{op}"]:
            parts.append(f"{_plural(s[f'{cont}s_{op}'], cont)} {op}")
    if s["policies_changed"]:
        parts.append(f"{_plural(s['policies_changed'], 'policy')} changed")
    return f"{n} {cont + ' differs' if n == 1 else cont + 's differ'}: " + ", ".join(parts)


def render_text(res: DiffResult, color: bool = False, rules: bool = True) -> str:
    """The human report (templates/diff.j2); `rules=False` keeps only the container headings."""
    import click

    from ..templating import render

    def paint(text: str, kind: str) -> str:
        return click.style(text, **_STYLES[kind]) if color else text

    lay = res.layout
    groups: list[dict[str, Any]] = []
    for c in res.containers:
        if not groups or groups[-1]["name"] != c.group:
            groups.append({"name": c.group, "title": lay.group_title(c.group), "chains": []})
        lines = [paint(lay.item_line(c.kind, c.name, ch) or _line(ch), ch.op) for ch in c.changes] if rules else []
        cont, item = lay.nouns(c.kind)
        kind = cont if lay.by_kind else c.kind
        groups[-1]["chains"].append({"kind": kind, "name": c.name, "what": _what(c, item, lay.policy_noun),
                                     "lines": lines})
    return render("diff.j2", old=res.old_name, new=res.new_name, tables=groups,
                  summary=summary_line(res), paint=paint, group=lay.group_noun)
