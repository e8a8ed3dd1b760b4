"""`rulegen migrate`: what changes for each Service when a node moves from one kube-proxy mode to another.

The same input is compiled in both modes (the settings resolved for each,
so each mode reads its own sections of the configuration), every
connection `trace.scenarios` enumerates (each Service port, client kind
and entry point) is traced with each mode's tracer through the registry,
and the two traces of each are compared (`trace.compare`). Only the
differences are kept, each named by `causes.explain`. With a second
configuration for the target mode (`settings_to`), the target is traced a
second time with it; the report is then of those settings, and says which
of the differences under the target's defaults they remove. Large inputs
are traced in groups of Services that share nothing (`groups`), so the
work grows with the Services, not with their square.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import backends
from ..diagnostics import Report, UsageError
from ..compiled import Compiled
from ..loader import load_config_file
from ..pipeline import Timings, compile_inputs, load_inputs
from ..plan import Plan
from ..trace.compare import Behaviour, Difference, behaviour, compare_behaviours
from ..trace.scenarios import (
    LOCALHOST_NODE_PORT,
    NODE_PORT,
    Outcome,
    Scenario,
    enumerate_scenarios,
    select_ports,
    trace_scenarios,
)
from .causes import Case, Explained, Side, explain


@dataclass(frozen=True)
class Traced:
    """What migrate keeps of one trace: its behaviour, or the tracer's refusal (the hops are not needed)."""

    scenario: Scenario
    behaviour: Behaviour | None
    error: str | None = None


def _kept(outcomes: list[Outcome]) -> list[Traced]:
    return [Traced(o.scenario, behaviour(o.result) if o.result is not None else None, o.error) for o in outcomes]


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
    # What the report stands on, for `rulegen lab --mode-compare`: both compiles (the target's is the
    # one the report is of: with --settings-to, that configuration's) and every scenario's two traces.
    compiled_from: Any = None
    compiled_to: Any = None
    traces: dict[tuple, tuple[Traced, Traced]] = field(default_factory=dict)
    clients: dict[str, Any] = field(default_factory=dict)  # client kind → the `Client` (its address) traced

    @property
    def differs(self) -> bool:
        return bool(self.differences)


def _check_tracer(flag: str, mode: str) -> None:
    b = backends.get(mode)
    if b.tracer() is None:
        have = [m for m in backends.modes() if backends.get(m).tracer() is not None]
        raise UsageError(f"{flag} {mode}: migrate traces every connection, and rulegen cannot trace {mode} mode "
                         f"yet (it can trace: {', '.join(have)})")


# From this many service ports on, each connection is traced through the rules of its own group of
# Services only (`groups`), not through the whole node's: a trace walks chains rule by rule, so
# tracing every connection through every rule grows with the square of the Services.
GROUP_FROM = 32


def groups(plan: Any, node_ips: Any = ()) -> list[tuple[Any, ...]]:
    """The plan's ports in groups that share nothing a packet can tell apart: no Service, no address, no NodePort.

    Two service ports meet in the rules only where a packet could match
    both: the same ClusterIP (a Service's ports, or the ports of a ClusterIP
    on which a connection to a port no Service uses is traced), the same
    external or load-balancer IP, or the same NodePort (an external IP that
    is one of NODE_IPS also meets the NodePorts of its port). Ports joined by any
    of these are one group (union-find); a connection to one port of a
    group meets, in a compile of the group, exactly the rules it meets in
    the whole node's compile, since everything else there is another
    address's or port's. Groups keep the plan's order.
    """
    parent = list(range(len(plan.ports)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple, int] = {}
    node_ips = set(node_ips)
    for i, p in enumerate(plan.ports):
        keys = [("svc", p.service.namespace, p.service.name), ("ip", p.cluster_ip)]
        keys += [("ip", x) for x in (*p.external_ips, *p.lb_ips)]
        # An external or load-balancer IP that is a node address meets the NodePorts of its port number.
        keys += [("node-port", p.proto, p.port.port) for x in (*p.external_ips, *p.lb_ips) if x in node_ips]
        if p.node_port:
            keys.append(("node-port", p.proto, p.node_port))
        for k in keys:
            j = owner.setdefault(k, i)
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    out: dict[int, list[Any]] = {}
    for i, p in enumerate(plan.ports):
        out.setdefault(root(i), []).append(p)
    return [tuple(g) for g in out.values()]


def _outcomes(c: Any, scenarios: tuple[Scenario, ...], grouped: bool) -> list[Traced]:
    source = f"{c.settings.mode} mode"
    if not grouped:
        return _kept(trace_scenarios(c, scenarios, source=source))
    plan = c.plan
    by_spn: dict[str, int] = {}
    gs = groups(plan, c.settings.node_ips)
    for n, g in enumerate(gs):
        for p in g:
            by_spn[p.spn] = n
    wanted: dict[int, list[Scenario]] = {}
    for sc in scenarios:
        wanted.setdefault(by_spn[sc.spn], []).append(sc)
    got: dict[tuple, Traced] = {}
    for n, scs in wanted.items():
        # The group's own compile; the endpoint total stays the node's (iptables mode's large-cluster form).
        sub = Plan(plan.family, gs[n], plan.endpoint_total)
        part = Compiled(c.settings, c.report, c.timings, c.backend, c.services, inputs=c.inputs, plan=sub,
                        ir=c.backend.compile(sub, c.settings))
        for t in _kept(trace_scenarios(part, scs, source=source)):
            got[t.scenario.key] = t
    return [got[sc.key] for sc in scenarios]


def claims(plan: Any) -> dict[tuple, int]:
    """(address or "node-port", port, protocol) → how many service ports claim it."""
    out: dict[tuple, int] = {}
    for p in plan.ports:
        keys = [(ip, p.port.port, p.proto) for ip in (p.cluster_ip, *p.external_ips, *p.lb_ips)]
        if p.node_port:
            keys.append(("node-port", p.node_port, p.proto))
        for k in set(keys):
            out[k] = out.get(k, 0) + 1
    return out


def _claim_key(sc: Scenario) -> tuple:
    e = sc.entry
    return ("node-port", e.port, e.proto) if e.kind in (NODE_PORT, LOCALHOST_NODE_PORT) else (e.ip, e.port, e.proto)


def _found(plan: Any, a: Any, b: Any, ta: list[Traced], tb: list[Traced]) -> list[Found]:
    ports = {p.spn: p for p in plan.ports}
    claimed = claims(plan)
    by_b = {t.scenario.key: t for t in tb}
    out: list[Found] = []
    for t1 in ta:
        t2 = by_b[t1.scenario.key]  # both sides trace the same scenarios
        if t1.behaviour is None or t2.behaviour is None:
            if t1.behaviour is None and t2.behaviour is None:
                continue
            diffs: tuple[Difference, ...] = (Difference(
                "trace", "not traced: " + (t1.error or "") if t1.behaviour is None else "traced",
                "not traced: " + (t2.error or "") if t2.behaviour is None else "traced"),)
        else:
            diffs = compare_behaviours(t1.behaviour, t2.behaviour)
        if not diffs:
            continue
        sc = t1.scenario
        s1, s2 = Side(a, t1.error, t1.behaviour), Side(b, t2.error, t2.behaviour)
        case = Case(sc, ports[sc.spn], s1, s2, frozenset(d.aspect for d in diffs), plan.family,
                    claimed.get(_claim_key(sc), 0) > 1)
        out.append(Found(sc, diffs, s1, s2, explain(case)))
    return out


def migrate(files: list[str], flags: dict[str, Any], to_mode: str, from_mode: str | None = None,
            config_path: str | None = None, settings_to: str | None = None,
            services: set[str] | None = None, report: Report | None = None,
            grouped: bool | None = None) -> Result:
    """Compare every connection's behaviour in FROM_MODE (default: the configuration's, else iptables) and TO_MODE.

    FLAGS are the settings flags (both sides); CONFIG_PATH the
    configuration of the node as it is; SETTINGS_TO, when given, a
    configuration for the node in TO_MODE (in place of CONFIG_PATH there).
    GROUPED traces each connection through its group's rules only
    (`groups`); None: from GROUP_FROM service ports on.
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
    if grouped is None:
        grouped = len(a.plan.ports) >= GROUP_FROM
    oa = _outcomes(a, sc.scenarios, grouped)
    ob = _outcomes(b, sc.scenarios, grouped)
    found = _found(a.plan, a, b, oa, ob)
    result = Result(a.settings.mode, to_mode, a.settings.hostname, a.plan.family, len(sc.scenarios), len(ports),
                    found, sc.notes if sc.scenarios else (), compiled_from=a, compiled_to=b, clients=dict(sc.clients),
                    traces={t1.scenario.key: (t1, t2) for t1, t2 in zip(oa, ob)})
    if settings_to is not None:
        try:
            c = compile_inputs(inputs, {**flags, "mode": to_mode}, report, timings, settings_to)
        except UsageError as e:
            raise UsageError(f"--settings-to {settings_to}: {e}" if settings_to not in str(e) else str(e)) from None
        oc = _outcomes(c, sc.scenarios, grouped)
        with_settings = _found(a.plan, a, c, oa, oc)
        still = {f.scenario.key for f in with_settings}
        result.differences = with_settings
        result.settings_to = settings_to
        result.removed = [f for f in found if f.scenario.key not in still]
        result.compiled_to = c
        result.traces = {t1.scenario.key: (t1, t2) for t1, t2 in zip(oa, oc)}
    return result
