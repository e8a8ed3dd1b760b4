"""`rulegen lab`: a throw-away node in network namespaces that proves the compiled rules with real traffic.

`probes` plans what to send from the compile (addresses, and per service
port and access path the expected outcome), `topology` builds the node,
its client and pod namespaces, loads the rules through `rulegen.apply`
(the mode's applier) and runs the helper processes (`net`: the tiny
servers and the probe client), `judge` compares what came back with the
plan, and `report` lays the result out. `run` does one whole run and
removes everything it made, on success, error, SIGINT or SIGTERM.
"""

from __future__ import annotations

import signal
import time
from typing import Any, Callable

from .. import backends
from ..diagnostics import UsageError
from .judge import MIN_EXPECTED, P_FAIL, PathResult, chi2_sf, chi_square_p, gammaincc, judge
from .probes import (
    ANSWER_TIMEOUT,
    CLIENT_CANDIDATES,
    NEGATIVE_PROBES,
    NEGATIVE_TIMEOUT,
    NODE_IP_CANDIDATES,
    LabPlan,
    PodSpec,
    Probe,
    build_plan,
    parse_service_filters,
)
from .report import LabReport, report_text
from .topology import GIVE_UP, PREFIX, Interrupts, Lab, LabInterrupted, _log

__all__ = ["ANSWER_TIMEOUT", "CLIENT_CANDIDATES", "GIVE_UP", "MIN_EXPECTED", "NEGATIVE_PROBES", "NEGATIVE_TIMEOUT",
           "NODE_IP_CANDIDATES", "PREFIX", "P_FAIL", "Interrupts", "Lab", "LabInterrupted", "LabPlan", "LabReport",
           "PathResult", "PodSpec", "Probe", "build_plan", "chi2_sf", "chi_square_p", "gammaincc", "judge",
           "parse_service_filters", "report_text", "run", "run_modes"]


def run(compiled: Any, recompile: Callable[[dict], Any], plan: LabPlan, timeout: float,
        run_id: str | None = None) -> LabReport:
    """Build, apply, probe, judge and tear down; signals become LabInterrupted after cleanup."""
    return run_modes([(compiled, recompile, plan)], timeout, run_id)[0]


def run_modes(modes: list[tuple[Any, Callable[[dict], Any], LabPlan]], timeout: float,
              run_id: str | None = None) -> list[LabReport]:
    """One lab, one run per (compiled, recompile, plan) of MODES, in order, on the namespaces built once.

    The plans must share the topology (node addresses, clients, endpoint
    servers: `LabPlan` but for the probes); the first one's builds it.
    Between two runs `Lab.reset_rules` takes the last mode's objects out of
    the node (its rules, IPVS, ipsets, conntrack entries, sysctls), so
    each mode meets a node as fresh as the first did. One report per run.
    """
    t0 = time.time()
    lab = Lab(modes[0][2], run_id=run_id, deadline=t0 + timeout)
    for compiled, _, _ in modes:  # a mode this kernel cannot run stops before anything is built
        preflight = getattr(backends.require(compiled.settings.mode, "applier"), "preflight", None)
        if preflight is not None:
            preflight(compiled, lab.kernel)

    # A SIGINT ignored by whoever started us (a background job) stays ignored.
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    old = {s: signal.signal(s, lab.signals.handler) for s in sigs}
    stage = "building namespaces"
    done: list[tuple[LabPlan, list[PathResult], list[str], float]] = []
    try:
        _log(f"{lab.prefix}: building {lab.plan.namespace_count} namespaces, {len(lab.plan.pods)} endpoint server(s)")
        lab.build()
        sysctls = lab.snapshot_sysctls() if len(modes) > 1 else {}
        applied: list[str] = []
        for i, (compiled, recompile, plan) in enumerate(modes):
            t_mode = time.time()
            mode = compiled.settings.mode
            notes = list(plan.notes)
            if applied:
                stage = f"taking the {applied[-1]} rules out"
                lab.reset_rules(applied, sysctls)
            stage = f"applying the {mode} rules" if len(modes) > 1 else "applying the rules"
            if "-m nfacct" in compiled.text and not lab.nfacct_works():
                compiled = recompile({"nfacct": False})
                notes.append("nfacct counters cannot be created in this kernel: the rules were compiled "
                             "with --no-nfacct (only the -m nfacct matches differ)")
            lab.apply_rules(compiled)
            applied.append(mode)
            if i == 0:
                stage = "starting the endpoint servers"
                lab.start_servers()
            stage = "sending connections"
            lab.plan = plan
            what = f" in {mode} mode" if len(modes) > 1 else ""
            _log(f"{lab.prefix}: sending {sum(p.count for p in plan.probes)} connections on "
                 f"{len(plan.probes)} path(s){what}")
            raw = lab.run_probes()
            done.append((plan, [judge(pr, raw.get(pr.key, {}), plan.node_ips) for pr in plan.probes], notes,
                         time.time() - t_mode))
    except LabInterrupted:
        raise
    except Exception as e:
        if lab.signals.pending:  # the step failed because the interrupt killed its helper
            raise LabInterrupted(lab.signals.pending) from None
        if isinstance(e, UsageError):
            raise
        # A kernel or tool surprise: one line, after cleanup, never a traceback.
        raise UsageError(f"lab: failed while {stage}: {type(e).__name__}: {e}") from e
    finally:
        # Cleanup must finish: a signal during it is only remembered.
        late: list[int] = []
        for s in old:
            signal.signal(s, lambda signum, frame: late.append(signum))
        left: list[str] = []
        try:
            left = lab.close()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if left:
            _log("could not delete: " + ", ".join(left))
    if late or lab.signals.pending:
        raise LabInterrupted(lab.signals.pending or late[0])
    elapsed = time.time() - t0
    if len(modes) == 1:
        plan, results, notes, _ = done[0]
        return [LabReport(plan, lab.prefix, results, notes, elapsed, left)]
    return [LabReport(plan, lab.prefix, results, notes, took, left) for plan, results, notes, took in done]
