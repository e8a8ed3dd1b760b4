"""A `DiffResult` as the report a person reads (templates/diff.j2): per group and container, the item lines.

Headings name each container by its kind (`chain KUBE-SVC-...`, `set ...`),
item lines carry their sign (`-` removed, `+` added, `~` moved) and their
position (none for unordered containers), and one summary line counts
everything in the layout's own nouns.
"""

from __future__ import annotations

from typing import Any

from .model import ContainerDiff, DiffResult, Layout, RuleChange, plural

_STYLES = {
    "removed": {"fg": "red"}, "added": {"fg": "green"}, "moved": {"fg": "yellow"},
    "old": {"fg": "red", "bold": True}, "new": {"fg": "green", "bold": True},
    "table": {"fg": "cyan", "bold": True}, "chain": {"bold": True},
}
_SIGN = {"removed": "-", "added": "+", "moved": "~"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural(word)}"


def _what(c: ContainerDiff, lay: Layout) -> str:
    item = lay.item_noun_of(c.kind)
    if c.status in ("added", "removed"):
        return f"{c.status} ({_plural(len(c.changes), item)})"
    parts = [f"{n} {op}" for op in ("added", "removed", "moved") if (n := c.count(op))]
    if parts and lay.count_nouns:
        n, op = parts[0].split(" ", 1)
        parts[0] = f"{n} {item if n == '1' else plural(item)} {op}"
    if c.policy_changed:
        parts.append(f"{lay.policy_noun} {c.old_policy} -> {c.new_policy}")
    return ", ".join(parts)


def _line(ch: RuleChange) -> str:
    if ch.op == "moved":
        pos = f"{ch.old_pos}->{ch.new_pos}"
    else:
        p = ch.new_pos if ch.op == "added" else ch.old_pos
        pos = "" if p is None else str(p)
    return f"{_SIGN[ch.op]} {pos:<7} {ch.rule}"


def summary_line(res: DiffResult) -> str:
    lay = res.layout
    group, cont, item = lay.group_noun, lay.container_noun, lay.item_noun
    groups, containers, items = res.compared
    if res.empty:
        return (f"no differences ({_plural(groups, group)}, {_plural(containers, cont)}, "
                f"{_plural(items, item)} compared" + (f", {lay.scope}" if res.kube_only else "") + ")")
    s = res.summary()
    n = len(res.containers)
    parts: list[str] = []
    for noun in lay.item_nouns():
        sub = [f"{s[f'{plural(noun)}_{op}']} {op}" for op in ("added", "removed", "moved")
               if s[f"{plural(noun)}_{op}"]]
        if sub:
            first = sub[0].split(" ", 1)
            sub[0] = f"{first[0]} {noun if first[0] == '1' else plural(noun)} {first[1]}"
        parts += sub
    for noun in lay.container_nouns():
        for op in ("added", "removed"):
            if s[f"{plural(noun)}_{op}"]:
                parts.append(f"{_plural(s[f'{plural(noun)}_{op}'], noun)} {op}")
    changed = s[f"{plural(lay.policy_noun)}_changed"]
    if changed:
        parts.append(f"{_plural(changed, lay.policy_noun)} changed")
    return f"{n} {cont + ' differs' if n == 1 else plural(cont) + ' differ'}: " + ", ".join(parts)


def render_text(res: DiffResult, color: bool = False, rules: bool = True) -> str:
    """The human report (templates/diff.j2); `rules=False` keeps only the container headings."""
    import click

    from ..templating import render

    def paint(text: str, kind: str) -> str:
        return click.style(text, **_STYLES[kind]) if color else text

    groups: list[dict[str, Any]] = []
    for c in res.containers:
        if not groups or groups[-1]["name"] != c.group:
            groups.append({"name": c.group, "chains": []})
        lines = [paint(_line(ch), ch.op) for ch in c.changes] if rules else []
        groups[-1]["chains"].append({"kind": c.kind, "name": c.name, "what": _what(c, res.layout), "lines": lines})
    return render("diff.j2", old=res.old_name, new=res.new_name, tables=groups,
                  summary=summary_line(res), paint=paint, group=res.layout.group_noun)
