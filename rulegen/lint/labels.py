"""Label selectors for lint: exact matching, and the "almost matches" that betrays a typo.

A Service whose selector says `app: web-frontend` while the Pods carry
`app: web-frontnd` gets no endpoints and no error from anyone. This module
finds such near misses: the Pod matches every selector label but one, and
that one differs only by a small edit in its value, or sits under a key a
small edit away (`apps` for `app`). "Small" scales with the length and
numbers do not count, so `v1` against `v2` (a deliberate canary split) or
`web-1` against `web-2` is not a near miss while `prod` against `prd` is.
"""

from __future__ import annotations

import re


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance; labels are short, so the plain two-row table is enough."""
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


_DIGITS = re.compile(r"[0-9]+")


def similar(a: str, b: str) -> bool:
    """Different strings that look like one typo apart (case differences always count).

    Strings that differ only in their numbers (`app-1`/`app-2`, `v1`/`v2`)
    are numbered siblings, not typos.
    """
    if a == b:
        return False
    la, lb = a.lower(), b.lower()
    if la == lb:
        return True
    if _DIGITS.sub("#", la) == _DIGITS.sub("#", lb):
        return False
    d = edit_distance(la, lb)
    return d <= 2 and d <= max(len(a), len(b)) // 3


def near_miss(selector: dict[str, str], labels: dict[str, str]) -> str | None:
    """How `labels` misses `selector` by one small edit, or None (a match, or too far off)."""
    off = [(k, v) for k, v in selector.items() if labels.get(k) != v]
    if len(off) != 1:
        return None
    key, want = off[0]
    if key in labels:
        have = labels[key]
        if similar(have, want):
            return f"{key}={have} where the selector wants {key}={want}"
        return None
    for k, v in sorted(labels.items()):
        if k not in selector and similar(k, key) and (v == want or similar(v, want)):
            return f"{k}={v} where the selector wants {key}={want}"
    return None


def selector_text(selector: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _deletions(s: str, depth: int = 2) -> set[str]:
    """`s` with up to `depth` characters deleted: two strings within edit distance 2 share one."""
    out = {s}
    frontier = {s}
    for _ in range(depth):
        nxt = set()
        for t in frontier:
            for i in range(len(t)):
                nxt.add(t[:i] + t[i + 1:])
        out |= nxt
        frontier = nxt
    return out


class LabelIndex:
    """The distinct label sets of one namespace's Pods, indexed for selector and near-miss lookups.

    A cluster has thousands of Pods but far fewer distinct label sets
    (replicas share theirs), and a selector's near misses can be found from
    the values a small edit away without comparing against every Pod: each
    value is indexed under its two-deletion variants (the symmetric-delete
    trick), so only real candidates reach the edit-distance check.
    """

    def __init__(self, label_sets: list[dict[str, str]]):
        self.sets = label_sets
        self.by_pair: dict[tuple[str, str], list[int]] = {}
        self.by_key: dict[str, list[int]] = {}
        for i, labels in enumerate(label_sets):
            for kv in labels.items():
                self.by_pair.setdefault(kv, []).append(i)
                self.by_key.setdefault(kv[0], []).append(i)
        self._variants: dict[str, dict[str, set[str]]] = {}

    def matching(self, selector: dict[str, str]) -> list[int]:
        """Indexes of the label sets the (non-empty) selector matches."""
        lists = [self.by_pair.get(kv, []) for kv in selector.items()]
        smallest = min(lists, key=len)
        return [i for i in smallest if matches(selector, self.sets[i])]

    def _similar_values(self, key: str, value: str) -> list[str]:
        idx = self._variants.get(key)
        if idx is None:
            idx = {}
            for k, v in self.by_pair:
                if k == key:
                    for var in _deletions(v.lower()):
                        idx.setdefault(var, set()).add(v)
            self._variants[key] = idx
        found: set[str] = set()
        for var in _deletions(value.lower()):
            found |= idx.get(var, set())
        return sorted(v for v in found if similar(v, value))

    def near_misses(self, selector: dict[str, str]) -> list[tuple[int, str]]:
        """(label set index, what is off) for every set that misses the selector by one small edit."""
        found: dict[int, str] = {}
        for key, want in sorted(selector.items()):
            for have in self._similar_values(key, want):
                for i in self.by_pair.get((key, have), []):
                    if i not in found and (d := near_miss(selector, self.sets[i])):
                        found[i] = d
            for other in sorted(self.by_key):
                if other not in selector and similar(other, key):
                    for i in self.by_key[other]:
                        if i not in found and (d := near_miss(selector, self.sets[i])):
                            found[i] = d
        return sorted(found.items())
