"""The one direction every command follows: files → model → settings → plan → IR → text.

Each stage is timed (`--timings` prints them), so users see where a large
cluster's time goes. Commands call `compile_files` and then use the IR
(apply, diff, trace) or the text (compile, golden). The mode's backend
comes from the registry (`rulegen.backends`); the pipeline never names one.
"""

from __future__ import annotations

from typing import Any

from . import allocate, backends, loader
from . import plan as planmod
from .compiled import Compiled, Timings, timing_line
from .diagnostics import Report
from .gcpause import gc_paused
from .model import Inputs
from .settings import Settings, resolve

__all__ = ["Compiled", "Timings", "timing_line", "load_inputs", "plan_inputs", "compile_inputs", "compile_files",
           "compile_files_cached"]


def load_inputs(paths: list[str], report: Report, timings: Timings) -> Inputs:
    with timings.stage("load"), gc_paused():
        return loader.load(paths, report)


def prepare(inputs: Inputs, flags: dict[str, Any], report: Report, timings: Timings,
            config_path: str | None = None) -> tuple[Inputs, Settings]:
    """The inputs as the cluster holds them, and the settings.

    With `--allocate`, what the API server and the controllers would add to
    manifests not yet applied (`rulegen.allocate`), before settings are
    resolved (the Node it may add is the node of the settings). Without it,
    one notice says when the input looks like such manifests.
    """
    file_cfg = loader.load_config_file(config_path, report) if config_path else None
    if flags.get("allocate"):
        with timings.stage("allocate"), gc_paused():
            inputs = allocate.allocate(inputs, allocate.options(flags, inputs, file_cfg), report)
    else:
        note = allocate.unallocated_notice(inputs)
        if note:
            report.note(note)
    return inputs, resolve(flags, inputs, report, file_cfg, config_path)


def plan_inputs(inputs: Inputs, flags: dict[str, Any], report: Report, timings: Timings,
                config_path: str | None = None) -> tuple[Inputs, Settings, planmod.Plan]:
    """The inputs (allocated with `--allocate`), settings and the backend-neutral plan, without any backend (lint)."""
    inputs, settings = prepare(inputs, flags, report, timings, config_path)
    with timings.stage("plan"), gc_paused():
        return inputs, settings, planmod.build(inputs, settings)


def compile_inputs(inputs: Inputs, flags: dict[str, Any], report: Report, timings: Timings,
                   config_path: str | None = None) -> Compiled:
    inputs, settings = prepare(inputs, flags, report, timings, config_path)
    backend = backends.get(settings.mode)
    with gc_paused():
        with timings.stage("plan"):
            p = planmod.build(inputs, settings)
        with timings.stage("compile"):
            ir = backend.compile(p, settings)
    return Compiled(settings, report, timings, backend, len(inputs.services), inputs=inputs, plan=p, ir=ir)


def compile_files(paths: list[str], flags: dict[str, Any], report: Report | None = None,
                  config_path: str | None = None) -> Compiled:
    report = report if report is not None else Report()
    timings = Timings()
    inputs = load_inputs(paths, report, timings)
    return compile_inputs(inputs, flags, report, timings, config_path)


def compile_files_cached(paths: list[str], flags: dict[str, Any], report: Report, config_path: str | None,
                         cache_file: str | None, warn: list[str] | None = None) -> Compiled:
    """`compile_files` that re-uses the compile cached in CACHE_FILE for what did not change.

    The incremental compile is the backend's (`Backend.incremental`), asked
    of the mode --mode names (else the default mode); a mode without one,
    or settings that resolve to another mode, compile in full. The caller
    saves the new cache (`save_cache(path)`) once the result is used. A
    cache file that cannot be used (not a regular file) is said in WARN.
    """
    if flags.get("allocate"):
        # Allocation reads the whole input at once (one Service's address depends on
        # every other's), which a per-unit cache cannot follow: compile in full.
        return compile_files(paths, flags, report, config_path)
    inc = backends.get(flags.get("mode") or backends.DEFAULT_MODE).incremental()
    if inc is not None:
        timings = Timings()
        with gc_paused():
            c = inc.compile_cached(paths, flags, report, timings, config_path, cache_file, warn)
        if c is not None:
            return c
    return compile_files(paths, flags, report, config_path)
