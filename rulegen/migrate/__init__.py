"""`rulegen migrate`: what changes for each Service when a node moves from one kube-proxy mode to another.

The same input is compiled in both modes (the settings resolved for each,
so each mode reads its own sections of the configuration), every
connection `trace.scenarios` enumerates (each Service port, client kind
and entry point) is traced with each mode's tracer through the registry,
and the two traces of each are compared (`trace.compare`). Only the
differences are kept, each named by `causes.explain`. With a second
configuration for the target mode (`settings_to`), the target is traced a
second time with it; the report is then of those settings, and says which
of the differences under the target's defaults they remove.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import backends
from ..diagnostics import Report, UsageError
from ..loader import load_config_file
from ..pipeline import Timings, compile_inputs, load_inputs
from ..trace.compare import Difference, behaviour, compare_outcomes
from ..trace.scenarios import Outcome, Scenario, enumerate_scenarios, select_ports, trace_scenarios
from .causes import Case, Explained, Side, explain


@dataclass(frozen=True)
class Found:
    """One connection that behaves differently, and why."""

    scenario: Scenario
    aspects: tuple[Difference, ...]
    a: Side
    b: Side
    why: Explained


@dataclass
class Result:
    from_mode: str
    to_mode: str
    node: str | None
    family: int
    traced: int  # connections traced in each mode
    ports: int  # service ports they cover
    differences: list[Found]
    notes: tuple[str, ...] = ()
    settings_to: str | None = None  # the target's configuration file, when one was given
    removed: list[Found] = field(default_factory=list)  # differences under the target's defaults those settings remove

    @property
    def differs(self) -> bool:
        return bool(self.differences)


def _check_tracer(flag: str, mode: str) -> None:
    b = backends.get(mode)
    if b.tracer() is None:
        have = [m for m in backends.modes() if backends.get(m).tracer() is not None]
        raise UsageError(f"{flag} {mode}: migrate traces every connection, and rulegen cannot trace {mode} mode "
                         f"yet (it can trace: {', '.join(have)})")


def _outcomes(c: Any, scenarios: tuple[Scenario, ...]) -> list[Outcome]:
    return trace_scenarios(c, scenarios, source=f"{c.settings.mode} mode")


def _found(plan: Any, a: Any, b: Any, oa: list[Outcome], ob: list[Outcome]) -> list[Found]:
    ports = {p.spn: p for p in plan.ports}
    by_a = {o.scenario.key: o for o in oa}
    by_b = {o.scenario.key: o for o in ob}
    out: list[Found] = []
    for key, diffs in compare_outcomes(oa, ob).items():
        o1, o2 = by_a.get(key), by_b.get(key)
        sc = (o1 or o2).scenario  # type: ignore[union-attr]
        s1 = Side(a, o1, behaviour(o1.result) if o1 and o1.result else None)
        s2 = Side(b, o2, behaviour(o2.result) if o2 and o2.result else None)
        case = Case(sc, ports[sc.spn], s1, s2, frozenset(d.aspect for d in diffs), plan.family)
        out.append(Found(sc, diffs, s1, s2, explain(case)))
    return out


def migrate(files: list[str], flags: dict[str, Any], to_mode: str, from_mode: str | None = None,
            config_path: str | None = None, settings_to: str | None = None,
            services: set[str] | None = None, report: Report | None = None) -> Result:
    """Compare every connection's behaviour in FROM_MODE (default: the configuration's, else iptables) and TO_MODE.

    FLAGS are the settings flags (both sides); CONFIG_PATH the
    configuration of the node as it is; SETTINGS_TO, when given, a
    configuration for the node in TO_MODE (in place of CONFIG_PATH there).
    """
    report = report if report is not None else Report()
    if flags.get("mode"):
        raise UsageError("--mode: migrate compares two modes; say them with --from and --to")
    timings = Timings()
    inputs = load_inputs(list(files), report, timings)
    a = compile_inputs(inputs, {**flags, "mode": from_mode}, report, timings, config_path)
    if settings_to is not None:
        cfg = load_config_file(settings_to, Report())
        if cfg is not None and cfg.mode and cfg.mode != to_mode:
            raise UsageError(f"--settings-to {settings_to}: its mode is {cfg.mode}, not the --to mode {to_mode}")
    if a.settings.mode == to_mode and settings_to is None:
        raise UsageError(f"--from and --to are both {to_mode}: nothing to compare (give --settings-to to compare "
                         f"settings in one mode)")
    _check_tracer("--from" if from_mode else "the configuration's mode", a.settings.mode)
    _check_tracer("--to", to_mode)
    # The target's defaults: the same flags and configuration, read as the target mode reads them.
    b = compile_inputs(inputs, {**flags, "mode": to_mode}, Report(), timings, config_path)
    assert a.plan is not None and b.plan is not None
    ports = select_ports(a.plan, a.inputs, services or set())
    sc = enumerate_scenarios(a.plan, a.settings, ports)
    oa = _outcomes(a, sc.scenarios)
    ob = _outcomes(b, sc.scenarios)
    found = _found(a.plan, a, b, oa, ob)
    result = Result(a.settings.mode, to_mode, a.settings.hostname, a.plan.family, len(sc.scenarios), len(ports),
                    found, sc.notes if sc.scenarios else ())
    if settings_to is not None:
        c = compile_inputs(inputs, {**flags, "mode": to_mode}, report, timings, settings_to)
        oc = _outcomes(c, sc.scenarios)
        with_settings = _found(a.plan, a, c, oa, oc)
        still = {f.scenario.key for f in with_settings}
        result.differences = with_settings
        result.settings_to = settings_to
        result.removed = [f for f in found if f.scenario.key not in still]
    return result
