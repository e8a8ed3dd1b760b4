"""Lint output: merging, ordering, JSON records and the text page (templates/lint.j2).

A problem shared by several ports of one Service with the same words (an
uneven Local-policy spread, say) is said once for the Service, its ports
listed together. Order is severity, then code, then object, so the errors
lead and a CI log diffs cleanly between runs. The JSON form has exactly the
keys `code, severity, object, message, hint`; the text form is laid out by
the template, wrapped to the terminal only when it is one.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..templating import render
from .findings import SEVERITIES, Finding


def collapse(findings: list[Finding]) -> list[Finding]:
    """One finding per (code, object, words): ports with the same finding are listed together."""
    merged: dict[tuple, Finding] = {}
    for f in findings:
        key = (f.code, f.kind, f.name, f.message, f.hint, bool(f.port))
        prev = merged.get(key)
        if prev is None:
            merged[key] = f
        elif f.port and f.port not in prev.port.split(", "):
            merged[key] = Finding(prev.code, prev.kind, prev.name, prev.message, prev.hint,
                                  f"{prev.port}, {f.port}", prev.where)
    return list(merged.values())


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=Finding.sort_key)


def to_json(findings: list[Finding]) -> list[dict[str, str]]:
    return [f.to_json() for f in findings]


def summary(findings: list[Finding]) -> str:
    counts = Counter(f.severity for f in findings)
    if not findings:
        return "no findings"
    parts = []
    for sev in SEVERITIES:
        n = counts.get(sev, 0)
        if n:
            parts.append(f"{n} {sev}{'s' if n != 1 and sev != 'info' else ''}")
    return ", ".join(parts)


def render_text(findings: list[Finding], scope: dict[str, Any], width: int | None = None) -> str:
    """The terminal page; `width` wraps messages (None: one line per field, for pipes and grep)."""
    return render("lint.j2", findings=findings, summary=summary(findings), scope=scope, width=width or 0)
