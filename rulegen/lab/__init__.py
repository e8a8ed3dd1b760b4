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
           "parse_service_filters", "report_text", "run"]


def run(compiled: Any, recompile: Callable[[dict], Any], plan: LabPlan, timeout: float,
        run_id: str | None = None) -> LabReport:
    """Build, apply, probe, judge and tear down; signals become LabInterrupted after cleanup."""
    t0 = time.time()
    lab = Lab(plan, run_id=run_id, deadline=t0 + timeout)
    notes = list(plan.notes)
    preflight = getattr(backends.require(compiled.settings.mode, "applier"), "preflight", None)
    if preflight is not None:  # a mode this kernel cannot run stops before anything is built
        preflight(compiled, lab.kernel)

    # A SIGINT ignored by whoever started us (a background job) stays ignored.
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    old = {s: signal.signal(s, lab.signals.handler) for s in sigs}
    stage = "building namespaces"
    try:
        _log(f"{lab.prefix}: building {plan.namespace_count} namespaces, {len(plan.pods)} endpoint server(s)")
        lab.build()
        stage = "applying the rules"
        if "-m nfacct" in compiled.text and not lab.nfacct_works():
            compiled = recompile({"nfacct": False})
            notes.append("nfacct counters cannot be created in this kernel: the rules were compiled "
                         "with --no-nfacct (only the -m nfacct matches differ)")
        lab.apply_rules(compiled)
        stage = "starting the endpoint servers"
        lab.start_servers()
        stage = "sending connections"
        _log(f"{lab.prefix}: sending {sum(p.count for p in plan.probes)} connections on {len(plan.probes)} path(s)")
        raw = lab.run_probes()
        results = [judge(pr, raw.get(pr.key, {}), plan.node_ips) for pr in plan.probes]
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
    return LabReport(plan, lab.prefix, results, notes, time.time() - t0, left)

