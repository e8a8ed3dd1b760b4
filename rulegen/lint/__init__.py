"""`rulegen lint`: what in a set of Services and EndpointSlices will break Service traffic.

Owns the checks (`checks.py`), their codes and severities (`findings.py`),
the shared lookups (`context.py`), near-miss label matching (`labels.py`)
and the output (`report.py`). Lint reads the same stages every backend
reads (loader → settings → plan), not a backend's IR, so it works whatever
`--mode` says and needs no compiler: a finding is about the cluster's
objects and how kube-proxy treats them, not about one rule syntax. A
pitfall of one mode only (IPVS mode's strictARP, nftables mode's kernel and
nft versions and its NodePort addresses) is that mode's check, asked of the
registry (`Backend.lint_checks`) and run after the shared ones; its code is
in the one table.
"""

from __future__ import annotations

from typing import Any, Iterable

from .. import backends
from ..diagnostics import Report, UsageError
from ..loader import load_config_file
from ..model import Inputs, ProxyConfig
from ..pipeline import Timings, load_inputs, plan_inputs
from ..plan import Plan
from ..settings import Settings
from .checks import CHECKS
from .context import DEFAULT_NODEPORT_RANGE, Context
from .findings import BY_SLUG, CODES, SEVERITIES, Finding
from .report import collapse, sort_findings
from .versions import Versions

__all__ = ["CODES", "SEVERITIES", "Finding", "Linted", "Versions", "lint", "lint_files", "parse_nodeport_range"]


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
         ignore: Iterable[str] = (), versions: Versions | None = None,
         config: ProxyConfig | None = None) -> list[Finding]:
    """Every finding for these objects, sorted by severity, code and object.

    The checks are the shared ones, then the mode's own (`Backend.lint_checks`):
    what only one data plane gets wrong is that backend's to say.
    """
    skip = set(ignore)
    cx = Context.build(inputs, settings, plan, nodeport_range, versions, config)
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
               ignore: Iterable[str] = (), versions: Versions | None = None, rules_path: str | None = None,
               ipsets_path: str | None = None) -> Linted:
    """Files → findings, through the loader, settings and plan (no backend).

    VERSIONS are the node's kernel and nft versions when the user gave them
    (`--kernel-version`, `--nft-version`); the kernel's is else read from the
    Node object. With RULES_PATH (a node's dump) the mode's node linter adds
    what in the dump gets in kube-proxy's way (RG9xx); FILES are then
    optional: without them the expected rules are the dump's own kube-proxy
    chains.
    """
    if not paths and rules_path is None:
        raise UsageError("no input files given (use - for standard input)")
    if ipsets_path is not None and rules_path is None:
        raise UsageError("--ipsets goes with --rules (the node's dump whose rules match those sets)")
    timings = Timings()
    inputs = load_inputs(paths, report, timings) if paths else Inputs([], [], [], [], [], [])
    inputs, settings, plan = plan_inputs(inputs, flags, report, timings, config_path)
    config = load_config_file(config_path, Report()) if config_path else None  # read once more: it reported already
    found = ((lint(inputs, settings, plan, nodeport_range, ignore, versions, config) if paths else [])
             + input_findings(report, ignore))
    if rules_path is not None:
        linter = backends.get(settings.mode).node_linter()
        if linter is None:
            raise UsageError(f"--rules: lint does not read {settings.mode} mode's node dumps yet")
        skip = set(ignore)
        try:
            node = linter.lint(rules_path, ipsets_path, settings, plan, bool(paths))
        except UsageError as e:
            raise backends.other_mode_hint(e, rules_path, settings.mode) from None
        found += [f for f in node if f.code not in skip]
    return Linted(sort_findings(found), inputs, settings, plan)
