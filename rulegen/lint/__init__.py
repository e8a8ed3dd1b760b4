"""`rulegen lint`: what in a set of Services and EndpointSlices will break Service traffic.

Owns the checks (`checks.py`), their codes and severities (`findings.py`),
the shared lookups (`context.py`), near-miss label matching (`labels.py`)
and the output (`report.py`). Lint reads the same stages every backend
reads (loader → settings → plan), not a backend's IR, so it works whatever
`--mode` says and needs no compiler: a finding is about the cluster's
objects and how kube-proxy treats them, not about one rule syntax. A
pitfall of one mode only (IPVS mode's strictARP) is that mode's check,
asked of the registry (`Backend.lint_checks`); its code is in the one table.
"""

from __future__ import annotations

from typing import Any, Iterable

from .. import backends
from ..diagnostics import Report, UsageError
from ..model import Inputs
from ..pipeline import Timings, load_inputs, plan_inputs
from ..plan import Plan
from ..settings import Settings
from .checks import CHECKS
from .context import DEFAULT_NODEPORT_RANGE, Context
from .findings import BY_SLUG, CODES, SEVERITIES, Finding
from .report import collapse, sort_findings

__all__ = ["CODES", "SEVERITIES", "Finding", "Linted", "lint", "lint_files", "parse_nodeport_range"]


class Linted:
    """One lint run: its findings and what they were computed from."""

    def __init__(self, findings: list[Finding], inputs: Inputs, settings: Settings, plan: Plan):
        self.findings = findings
        self.inputs = inputs
        self.settings = settings
        self.plan = plan

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)


def parse_nodeport_range(text: str) -> tuple[int, int]:
    """The apiserver's --service-node-port-range syntax: `30000-32767` or `30000+2767`."""
    t = text.strip()
    try:
        if "+" in t:
            base, _, size = t.partition("+")
            lo, hi = int(base), int(base) + int(size)
        else:
            a, sep, b = t.partition("-")
            if not sep:
                raise ValueError
            lo, hi = int(a), int(b)
    except ValueError:
        raise UsageError(f"--service-node-port-range: {text!r} is not FROM-TO (e.g. 30000-32767) or FROM+SIZE") from None
    if not 1 <= lo <= hi <= 65535:
        raise UsageError(f"--service-node-port-range: {text!r} is not a range of ports within 1-65535")
    return lo, hi


def check_codes(codes: Iterable[str]) -> set[str]:
    out = set()
    for c in codes:
        for part in c.split(","):
            code = part.strip().upper()
            if code and code not in CODES:
                raise UsageError(f"--ignore: {part.strip()!r} is not a lint code (see docs/lint.md)")
            if code:
                out.add(code)
    return out


def lint(inputs: Inputs, settings: Settings, plan: Plan,
         nodeport_range: tuple[int, int] = DEFAULT_NODEPORT_RANGE,
         ignore: Iterable[str] = ()) -> list[Finding]:
    """Every finding for these objects, sorted by severity, code and object."""
    skip = set(ignore)
    cx = Context.build(inputs, settings, plan, nodeport_range)
    checks = CHECKS + tuple(backends.get(settings.mode).lint_checks())  # the mode's own pitfalls last
    found = [f for check in checks for f in check(cx) if f.code not in skip]
    return sort_findings(collapse(found))


def input_findings(report: Report, ignore: Iterable[str] = ()) -> list[Finding]:
    """The loader's reports that a lint code also covers (a name the API server refuses), as findings.

    The object is left out of the inputs, so no check can see it: its finding
    is the loader's own words, with the object and field they name.
    """
    skip = set(ignore)
    out = []
    for p in report.problems:
        c = BY_SLUG.get(p.lint) if p.lint else None
        if c is not None and c.code not in skip:
            message = f"{p.field}: {p.message}" if p.field else p.message
            out.append(Finding(c.code, p.place.kind, p.place.name, message, c.fix, where=str(p.place)))
    return out


def lint_files(paths: list[str], flags: dict[str, Any], report: Report, config_path: str | None = None,
               nodeport_range: tuple[int, int] = DEFAULT_NODEPORT_RANGE,
               ignore: Iterable[str] = ()) -> Linted:
    """Files → findings, through the loader, settings and plan (no backend)."""
    if not paths:
        raise UsageError("no input files given (use - for standard input)")
    timings = Timings()
    inputs = load_inputs(paths, report, timings)
    inputs, settings, plan = plan_inputs(inputs, flags, report, timings, config_path)
    found = lint(inputs, settings, plan, nodeport_range, ignore) + input_findings(report, ignore)
    return Linted(sort_findings(found), inputs, settings, plan)
