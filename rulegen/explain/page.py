"""The explain page: inputs → traces of every scenario → one section per Service port → HTML.

`build` does the whole run: load the inputs once, compile them in the
mode (and, with `--compare`, in the other mode too), enumerate the
scenarios of the chosen Service ports (`trace.scenarios`, the same list
`rulegen migrate` uses), trace them with each mode's tracer from the
registry, compare the two modes' traces (`trace.compare`), lint the
inputs, and lay each Service port out as a graph (`graph`, `layout`,
`svg`). `render` hands the sections to templates/explain.html.j2, which
holds the page's layout and its inline stylesheet.

Cost: one trace per scenario, about five per Service port, and a trace
walks the rules linearly, so a page costs Service ports × rules: seconds
for a few hundred Services, hours for ten thousand. `--service` picks the
Services to draw (the rest are still compiled, so what a connection meets
on its way is exact), and more than `max_ports` Service ports without it
is refused with a message saying so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from markupsafe import Markup

from .. import backends
from ..diagnostics import Report, UsageError
from ..lint import input_findings, lint
from ..lint.findings import Finding, port_label
from ..pipeline import Timings, compile_inputs, load_inputs
from ..templating import render as render_template
from ..trace import entry as E
from ..trace.compare import Difference, behaviour, compare_outcomes, percent
from ..trace.scenarios import CLIENT_LABELS, Outcome, enumerate_scenarios, parse_services, select_ports, trace_scenarios
from . import graph as G
from . import layout as L
from . import svg as S

MAX_PORTS = 300


@dataclass
class Run:
    """What one explain run computed, before it is laid out (tests read it too)."""

    modes: list[str]
    compiled: list[Any]  # one per mode
    ports: tuple[Any, ...]
    outcomes: list[list[Outcome]]  # per mode, in scenario order
    differences: dict[tuple, tuple[Difference, ...]]
    findings: list[Finding]
    notes: list[str]
    report: Report
    files: list[str] = field(default_factory=list)


def run(files: list[str], flags: dict[str, Any], config_path: str | None = None, services: tuple[str, ...] = (),
        compare: str | None = None, max_ports: int = MAX_PORTS, report: Report | None = None,
        after_compile: Callable[[], None] | None = None) -> Run:
    """Compile, trace, compare and lint; AFTER_COMPILE runs once the input is read (to print its problems)."""
    if not files:
        raise UsageError("no input files given (use - for standard input)")
    wanted = parse_services(services)
    report = report if report is not None else Report()
    timings = Timings()
    inputs = load_inputs(list(files), report, timings)
    first = compile_inputs(inputs, flags, report, timings, config_path)
    if after_compile is not None:
        after_compile()
    modes = [first.settings.mode]
    compiled = [first]
    if compare is not None:
        if compare == first.settings.mode:
            raise UsageError(f"--compare {compare}: the page is already in mode {compare} "
                             "(name the other mode, or give --mode)")
        backends.get(compare)
    for m in modes + ([compare] if compare else []):
        backends.require(m, "tracer")  # before any work: a mode without a tracer cannot be drawn
    if compare is not None:
        second = compile_inputs(inputs, {**flags, "mode": compare}, Report(), Timings(), config_path)
        modes.append(compare)
        compiled.append(second)
    plan = first.plan
    ports = select_ports(plan, first.inputs, wanted)
    if not wanted and len(ports) > max_ports:
        raise UsageError(f"{len(ports)} Service ports: a page that large takes minutes to trace (each scenario "
                         f"walks the rules) and no one reads it; pick Services with --service NAMESPACE/NAME "
                         f"(repeatable), or raise --max-ports (now {max_ports})")
    sc = enumerate_scenarios(plan, first.settings, ports)
    source = "compiled from " + " ".join(files)
    outcomes = [trace_scenarios(c, sc.scenarios, source) for c in compiled]
    diffs = compare_outcomes(outcomes[0], outcomes[1]) if len(outcomes) == 2 else {}
    findings = lint(first.inputs, first.settings, plan) + input_findings(report)
    return Run(modes, compiled, ports, outcomes, diffs, findings, list(sc.notes), report, list(files))


# ---------------------------------------------------------------- sections


def _ident(i: int) -> str:
    return f"p{i + 1}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def port_settings(p: Any, s: Any, backend: Any) -> list[tuple[str, str]]:
    """The settings that shaped one Service port's flows, as (name, value) lines."""
    svc = p.service
    out = [("type", svc.type)]
    if p.externally_accessible:
        ext = svc.external_traffic_policy + ("" if p.ext_local or svc.external_traffic_policy == "Cluster"
                                             else " (not applied to this type)")
        out.append(("externalTrafficPolicy", ext))
    out.append(("internalTrafficPolicy", svc.internal_traffic_policy))
    out.append(("sessionAffinity", f"ClientIP, {p.affinity} s" if p.affinity else "None"))
    if p.node_port:
        raw = s.nodeport_addresses
        out.append(("nodePort", str(p.node_port)))
        out.append(("nodePortAddresses", ", ".join(raw) if raw else "unset (the mode's default)"))
        out.append(("localhost NodePorts", "on" if backend.localhost_nodeports and s.localhost_nodeports_effective()
                    else "off"))
    if p.hc_node_port:
        out.append(("healthCheckNodePort", str(p.hc_node_port)))
    if p.external_ips:
        out.append(("externalIPs", ", ".join(p.external_ips)))
    if p.lb_ips:
        out.append(("load-balancer IPs", ", ".join(p.lb_ips)))
    if p.source_ranges:
        out.append(("loadBalancerSourceRanges", ", ".join(p.source_ranges)))
    if s.masquerade_all:
        out.append(("masqueradeAll", "on"))
    sel = p.sel
    here = sum(1 for e in p.endpoints if e.local)
    out.append(("endpoints", f"{len(p.endpoints)} in the slices, {here} on this node; "
                             f"{len(sel.cluster)} used for cluster-wide traffic"
                             + (f", {len(sel.local)} for node-local traffic" if p.uses_local else "")))
    return out


def node_settings(c: Any) -> list[tuple[str, str]]:
    s = c.settings
    det = s.local_detector()
    detector = det.cidr or det.iface or "none (no pod range known)"
    return [
        ("node", s.hostname or "unknown (no Node object, no --hostname)"),
        ("node addresses", ", ".join(s.node_ips_of()) or "unknown"),
        ("pod range of this node", ", ".join(s.cidrs_of(s.node_pod_cidrs)) or "unknown"),
        ("local-traffic detector", f"{s.detect_local_mode}: {detector}"),
        ("nodePortAddresses", ", ".join(s.nodeport_addresses) if s.nodeport_addresses else "unset"),
        ("masqueradeAll", "on" if s.masquerade_all else "off"),
        ("IP family", f"IPv{s.family}"),
    ]


def port_findings(p: Any, findings: list[Finding], slices_of: dict[str, str]) -> list[Finding]:
    """The findings about P's Service (those narrowed to ports: only P's), and about its EndpointSlices."""
    svc = f"{p.service.namespace}/{p.service.name}"
    label = port_label(p.port.name, p.port.port, p.port.protocol)
    out = []
    for f in findings:
        if f.kind == "Service" and f.name == svc:
            if not f.port or label in f.port.split(", "):
                out.append(f)
        elif f.kind == "EndpointSlice" and slices_of.get(f.name) == svc:
            out.append(f)
    return out


def _dest_text(d: Any) -> str:
    if d.local is True:
        where = "this node"
    elif d.local is False:
        where = f"on {d.node}, extra hop"
    else:
        where = f"node {d.node}" if d.node else "node unknown"
    aff = f"; session affinity {d.affinity} s" if d.affinity else ""
    return (f"{d.endpoint} {percent(d.probability)} ({where}; "
            f"{'masqueraded' if d.masquerade else 'client address kept'}{aff})")


def _cell(o: Outcome, port: Any) -> dict[str, Any]:
    r = o.result
    if r is None:
        return {"verdict": "cannot trace", "dests": [o.error or ""], "masq": ""}
    b = behaviour(r)
    dests = [_dest_text(d) for d in r.destinations]
    if len(b.outcomes) > 1 and r.destinations:
        dests += [f"{v} {percent(c)}" for v, c in b.outcomes if v != "DNAT"]
    if not dests and r.verdict in G.STOPS and r.paths:
        last = r.paths[-1].hops[-1] if r.paths[-1].hops else None
        where = f" in {last.table + ' ' if last.table else ''}{last.chain}" if last else ""
        reason = G.stop_reason(o.scenario, port, r.verdict)
        dests = [f"stopped{where}" + (f": {reason}" if reason else "")]
    if not dests and r.verdict == "ACCEPT" and r.paths:
        local = E.is_local(r.paths[0].packet.dst, frozenset(r.node_ips))
        dests = ["not captured: " + ("to a socket on this node" if local else "routed on, unchanged")]
    return {"verdict": r.verdict, "dests": dests, "masq": "yes" if r.masquerade else "no"}


def sections(r: Run) -> list[dict[str, Any]]:
    first = r.compiled[0]
    slices_of = {f"{sl.namespace}/{sl.name}": f"{sl.namespace}/{sl.service_name}"
                 for sl in (first.inputs.slices if first.inputs else ()) if sl.service_name}
    by_port: list[dict[str, list[Outcome]]] = []
    for outs in r.outcomes:
        d: dict[str, list[Outcome]] = {}
        for o in outs:
            d.setdefault(o.scenario.spn, []).append(o)
        by_port.append(d)
    out = []
    for i, p in enumerate(r.ports):
        ident = _ident(i)
        per_mode = [d.get(p.spn, []) for d in by_port]
        differs = {k for k in r.differences if k[0] == p.spn}
        diagrams = []
        tallest = 0.0
        for mode, outs in zip(r.modes, per_mode):
            g = G.build(outs, p, differs)
            lay = L.layout(g)
            tallest = max(tallest, lay.height)
            title = f"{p.spn} ({p.proto.upper()}) in {mode} mode"
            desc = (f"Flow diagram: {len(outs)} traced connections from "
                    f"{len({o.scenario.client.kind for o in outs})} kinds of client through "
                    f"{sum(1 for n in g.node_list() if n.kind == 'chain')} chains to "
                    f"{sum(1 for n in g.node_list() if n.kind == 'endpoint')} endpoints. "
                    "The table below lists the same flows.")
            diagrams.append({"mode": mode, "svg": Markup(S.render(g, lay, title, desc, f"{ident}-{_slug(mode)}"))})
        rows = []
        for j, o in enumerate(per_mode[0]):
            sc = o.scenario
            cells = [_cell(outs[j], p) for outs in per_mode if j < len(outs)]
            diff = r.differences.get(sc.key, ())
            rows.append({"client": CLIENT_LABELS[sc.client.kind], "src": sc.client.src, "entry": sc.entry.label,
                         "address": f"{sc.entry.address} {sc.entry.proto.upper()}", "cells": cells,
                         "differs": [f"{d.aspect}: {d.a} → {d.b}" for d in diff]})
        notes: list[str] = []
        for outs in per_mode:
            for o in outs:
                for n in (o.result.notes if o.result else ()):
                    if n not in notes:
                        notes.append(n)
        svc = p.service
        out.append({
            "id": ident,
            "spn": p.spn,
            "service": f"{svc.namespace}/{svc.name}",
            "heading": f"{svc.namespace}/{svc.name}, port "
                       + (f"{p.port.name} " if p.port.name else "") + f"{p.port.port}/{p.port.protocol}",
            "settings": port_settings(p, first.settings, first.backend),
            "findings": port_findings(p, r.findings, slices_of),
            "diagrams": diagrams,
            "rows": rows,
            "ndiffer": sum(1 for row in rows if row["differs"]),
            "notes": notes,
            # What the browser reserves for a section it has not laid out yet (content-visibility).
            "height": round(max(tallest + 60, 420) + 34 * (len(rows) + 2)),
        })
    return out


def render(r: Run) -> str:
    first = r.compiled[0]
    secs = sections(r)
    chosen = {s["service"] for s in secs}
    other = [f for f in r.findings if not (f.kind == "Service" and f.name in chosen)
             and f.kind != "EndpointSlice"]
    modes = r.modes
    title = "rulegen explain: " + " ".join(r.files) + (f" ({modes[0]} vs {modes[1]})" if len(modes) == 2
                                                        else f" ({modes[0]})")
    problems = r.report.lines()
    return render_template(
        "explain.html.j2", title=title, files=r.files, modes=modes, node=node_settings(first),
        sections=secs, notes=r.notes, other_findings=other, problems=problems, defs=Markup(S.DEFS),
        ndiffer=sum(s["ndiffer"] for s in secs),
    )
