"""The neutral comparison: two `Side`s in, the containers that differ out.

Items are compared by their canonical spelling (the view's `Layout`), so
what only looks different (counters, spelling the kernel changes on the way
back, declaration order, write order across containers) never shows, while
an item that changed, appeared, vanished or changed place inside its
ordered container does. In an ordered container a moved item is one
present on both sides whose order relative to the others changed: the
items kept in place are a longest increasing subsequence of matched
positions (O(n log n), fine for a 20k-rule KUBE-SERVICES), the rest of the
matched ones are moves. In an unordered one (set elements, real servers)
only membership counts: added and removed, never moved. A `fixed`
container (a built-in chain) is compared but never added or removed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import Callable

from ..gcpause import gc_paused
from .model import Container, ContainerDiff, DiffResult, RuleChange, Side


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


def ordered_changes(old: list[tuple[int, str]], new: list[tuple[int, str]],
                    canonical: Callable[[str], str]) -> tuple[RuleChange, ...]:
    """Items added, removed and moved between two ordered containers (moves: outside one LIS)."""
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


def unordered_changes(old: list[tuple[int, str]], new: list[tuple[int, str]],
                      canonical: Callable[[str], str]) -> tuple[RuleChange, ...]:
    """Items removed and added between two unordered containers (copies count), each in its side's order."""
    if [s for _, s in old] == [s for _, s in new]:
        return ()
    ka = [canonical(s) for _, s in old]
    kb = [canonical(s) for _, s in new]
    left, right = Counter(kb), Counter(ka)
    removed, added = [], []
    for (pos, s), k in zip(old, ka):
        if left[k]:
            left[k] -= 1
        else:
            removed.append(RuleChange("removed", s, pos, None))
    for (pos, s), k in zip(new, kb):
        if right[k]:
            right[k] -= 1
        else:
            added.append(RuleChange("added", s, None, pos))
    return tuple(removed + added)


def compare(old: Side, new: Side) -> DiffResult:
    """Compare OLD with NEW by meaning; the result lists only what differs."""
    # Canonicalising every item of a large node makes millions of small
    # acyclic tuples; collector passes over them would cost more than the work.
    with gc_paused(freeze=False):
        return _compare(old, new)


def _compare(old: Side, new: Side) -> DiffResult:
    lay = new.layout
    va, vb = old.groups, new.groups
    out: list[ContainerDiff] = []
    n_groups = n_containers = n_items = 0
    empty: dict[str, Container] = {}
    canon_of: dict[str, Callable[[str], str]] = {}
    for gname in lay.group_order([*va, *vb]):
        ta, tb = va.get(gname, empty), vb.get(gname, empty)
        n_groups += 1
        for cname in lay.container_order(gname, [*ta, *tb]):
            ca, cb = ta.get(cname), tb.get(cname)
            n_containers += 1
            n_items += max(len(ca.items) if ca else 0, len(cb.items) if cb else 0)
            c = ca if ca is not None else cb
            assert c is not None
            fixed = c.fixed
            if ca is None and not fixed:
                changes = tuple(RuleChange("added", s, None, p) for p, s in cb.items)
                out.append(ContainerDiff(gname, cname, "added", changes, kind=c.kind))
                continue
            if cb is None and not fixed:
                changes = tuple(RuleChange("removed", s, p, None) for p, s in ca.items)
                out.append(ContainerDiff(gname, cname, "removed", changes, kind=c.kind))
                continue
            ra = ca.items if ca else []
            rb = cb.items if cb else []
            canon = canon_of.get(c.kind)
            if canon is None:
                canon = canon_of[c.kind] = lay.canonical(c.kind)
            changes = (ordered_changes if c.ordered else unordered_changes)(ra, rb, canon)
            pa = ca.policy if ca else None
            pb = cb.policy if cb else None
            if pa is None or pb is None:  # a payload states no policy: nothing to compare
                pa = pb = None
            if changes or pa != pb:
                out.append(ContainerDiff(gname, cname, "changed", changes, pa, pb, c.kind))
    return DiffResult(old.name, new.name, old.family, new.family, new.kube_only, tuple(out),
                      (n_groups, n_containers, n_items), lay)
