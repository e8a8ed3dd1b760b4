"""What one apply reports, whatever the mode: `ApplyResult` and the stage clock.

The neutral counts every applier fills: objects added, changed and removed
(each as (group, name): a table and a chain, a set, a virtual server), stale
objects kept because something still refers to them, the lines sent (or
that would be, on a dry run), where the live state came from, warnings and
stage times. A mode adds what is its alone in a subclass (xtables: the jump
rules inserted and removed, the iptables backend) with its own `summary`
and `to_json` wording.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ApplyResult:
    netns: str
    mode: str
    family: int
    added: list[tuple[str, str]] = field(default_factory=list)  # (group, object)
    changed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    kept: list[tuple[str, str, str]] = field(default_factory=list)  # (group, stale object, referenced by)
    payload: str = ""  # what was sent (a dry run: what would be)
    lines: int = 0  # lines sent (0 = nothing sent)
    seconds: float = 0.0
    dry_run: bool = False
    created: bool = False
    timings: list[tuple[str, float]] = field(default_factory=list)
    source: str = ""  # where the live state came from: "cache" (fresh, nothing read) or "dump"
    warnings: list[str] = field(default_factory=list)  # state files that could not be used, and the like

    def summary(self) -> str:
        made = " (namespace created)" if self.created else ""
        sent = f"would send {self.lines} lines (dry run)" if self.dry_run else f"sent {self.lines} lines"
        s = (f"netns {self.netns}{made}: {len(self.added)} added, {len(self.changed)} changed, "
             f"{len(self.removed)} removed; {sent} in {self.seconds:.3f} s")
        for group, name, by in self.kept:
            s += f"\nnetns {self.netns}: kept stale {group} {name}: still referenced by {by}"
        return s

    def to_json(self, warnings: list[dict[str, Any]], timings: list[tuple[str, float]]) -> dict[str, Any]:
        """What `rulegen apply --json` prints; WARNINGS and TIMINGS are the whole command's."""
        out: dict[str, Any] = {
            "netns": self.netns, "mode": self.mode, "family": self.family,
            "created": self.created, "dry_run": self.dry_run, "live_state_from": self.source,
            "lines": self.lines,
            "objects": {"added": len(self.added), "changed": len(self.changed), "removed": len(self.removed),
                        "kept": [{"group": g, "name": n, "referenced_by": by} for g, n, by in self.kept]},
            "warnings": warnings,
            "seconds": round(self.seconds, 6),
            "timings": [{"stage": n, "seconds": round(t, 6)} for n, t in timings],
        }
        if self.dry_run:
            out["payload"] = self.payload
        return out


class Clock:
    """Stage times of one apply: `lap(name)` closes the stage that began at the last lap."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, float]] = []
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages.append((name, now - self._t))
        self._t = now
