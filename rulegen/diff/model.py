"""The records of a comparison: one side as a view lays it out, and what differs.

A `Side` is what a backend's diff view makes of one IR: groups (xtables
tables, nft tables, the IPVS table) holding containers (chains, sets, maps,
virtual servers), each an ordered list of items (rules) or an unordered
collection (elements, real servers), each item as text. Its `Layout` says
how the mode orders groups and containers, spells an item canonically, and
names things in reports. The result (`DiffResult`) lists only the
containers that differ, each with its item changes; its JSON is
`rulegen diff --json`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable


@dataclass
class Container:
    """One chain, set, map or virtual server of one side.

    `items` are (1-based position, text) in order for an ordered container;
    positions mean nothing for an unordered one (None: the report shows none). `fixed` containers exist on
    every node (built-in chains): they are compared but never reported as
    added or removed. `policy` is a built-in chain's policy when the side
    states one.
    """

    kind: str = "chain"
    ordered: bool = True
    fixed: bool = False
    policy: str | None = None
    items: list[tuple[int | None, str]] = field(default_factory=list)


class Layout:
    """How one mode's sides are ordered, compared and named (a diff view supplies it).

    `container_noun` and `item_noun` name containers and items in general
    (the summary's head, the "compared" counts); a layout whose containers
    are of several kinds (nft: chains of rules, sets and maps of elements)
    lists them in `kinds` and names each kind's items with `item_noun_of`,
    and with `count_nouns` its headings say "1 element added" rather than
    "1 added". `policy_noun` names what `Container.policy` carries.
    """

    group_noun = "table"
    container_noun = "chain"
    item_noun = "rule"
    policy_noun = "policy"
    kinds: tuple[str, ...] = ("chain",)
    count_nouns = False
    scope = "kube-proxy's chains only"  # said when a side keeps only kube-proxy's part

    def item_noun_of(self, kind: str) -> str:
        return self.item_noun

    def container_noun_of(self, kind: str) -> str:
        return self.container_noun if kind == "chain" else kind

    def item_nouns(self) -> list[str]:
        return list(dict.fromkeys(self.item_noun_of(k) for k in self.kinds))

    def container_nouns(self) -> list[str]:
        return list(dict.fromkeys(self.container_noun_of(k) for k in self.kinds))

    def group_order(self, names: Iterable[str]) -> list[str]:
        return sorted(set(names))

    def container_order(self, group: str, names: Iterable[str]) -> list[str]:
        return sorted(set(names))

    def canonical(self, kind: str) -> Callable[[str], str]:
        """The function that spells an item of a KIND container one way per meaning."""
        return lambda text: text


@dataclass
class Side:
    name: str
    family: int
    groups: dict[str, dict[str, Container]]
    layout: Layout
    kube_only: bool = False


@dataclass(frozen=True, slots=True)
class RuleChange:
    """One item that differs. Positions are 1-based in the whole container, as `iptables -L --line-numbers`."""

    op: str  # "added" | "removed" | "moved"
    rule: str  # the item as its side wrote it (the new side for added and moved)
    old_pos: int | None
    new_pos: int | None

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "rule": self.rule, "old_position": self.old_pos, "new_position": self.new_pos}


@dataclass(frozen=True, slots=True)
class ContainerDiff:
    group: str
    name: str
    status: str  # "added" | "removed" | "changed"
    changes: tuple[RuleChange, ...]
    old_policy: str | None = None
    new_policy: str | None = None
    kind: str = "chain"

    def count(self, op: str) -> int:
        return sum(1 for c in self.changes if c.op == op)

    @property
    def policy_changed(self) -> bool:
        return self.old_policy != self.new_policy

    def to_json(self) -> dict[str, Any]:
        # For a chain: {"table": ..., "chain": ...}; another kind names itself ({"set": ...}).
        return {
            "table": self.group,
            self.kind: self.name,
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
    containers: tuple[ContainerDiff, ...]  # only those that differ, in group then container order
    compared: tuple[int, int, int]  # groups, containers, items looked at (union of both sides)
    layout: Layout = field(default_factory=Layout)

    @property
    def empty(self) -> bool:
        return not self.containers

    def summary(self) -> dict[str, int]:
        lay = self.layout
        out: dict[str, int] = {}
        for noun in lay.item_nouns():
            for op in ("added", "removed", "moved"):
                out[f"{plural(noun)}_{op}"] = 0
        for noun in lay.container_nouns():
            for status in ("added", "removed", "changed"):
                out[f"{plural(noun)}_{status}"] = 0
        policies = f"{plural(lay.policy_noun)}_changed"
        out[policies] = 0
        for c in self.containers:
            out[f"{plural(lay.container_noun_of(c.kind))}_{c.status}"] += 1
            out[policies] += c.policy_changed
            item = plural(lay.item_noun_of(c.kind))
            for ch in c.changes:
                out[f"{item}_{ch.op}"] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        groups, containers, items = self.compared
        lay = self.layout
        return {
            "equal": self.empty,
            "old": {"source": self.old_name, "family": self.old_family},
            "new": {"source": self.new_name, "family": self.new_family},
            "kube_only": self.kube_only,
            "compared": {plural(lay.group_noun): groups, plural(lay.container_noun): containers,
                         plural(lay.item_noun): items},
            "summary": self.summary(),
            plural(lay.container_noun): [c.to_json() for c in self.containers],
        }


def plural(noun: str) -> str:
    """`rule` → `rules`, `policy` → `policies`, `entry` → `entries`."""
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
