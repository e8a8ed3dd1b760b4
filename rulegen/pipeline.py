"""The one direction every command follows: files → model → settings → plan → IR → text.

Each stage is timed (`--timings` prints them), so users see where a large
cluster's time goes. Commands call `compile_files` and then use the IR
(apply, diff, trace) or the text (compile, golden).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from . import allocate, backends, loader, plan as planmod
from .diagnostics import Report
from .gcpause import gc_paused
from .model import Inputs
from .settings import Settings, resolve


@dataclass
class Timings:
    stages: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages.append((name, time.perf_counter() - t0))

    def lines(self) -> list[str]:
        total = sum(t for _, t in self.stages)
        return [timing_line(name, t) for name, t in (*self.stages, ("total", total))]


def timing_line(name: str, seconds: float) -> str:
    """One line of `--timings` output."""
    return f"{name:<10} {seconds * 1000:9.1f} ms"


@dataclass
class Compiled:
    inputs: Inputs
    settings: Settings
    plan: planmod.Plan
    ir: Any
    timings: Timings
    report: Report
    _text: str | None = None

    def render_files(self) -> dict[str, str] | None:
        """{file name: text} for a mode that writes several files (`render.files`), else None."""
        _, render = backends.get(self.settings.mode)
        files = getattr(render, "files", None)
        if files is None:
            return None
        with self.timings.stage("render"), gc_paused():
            return files(self.ir)

    @property
    def text(self) -> str:
        if self._text is None:
            _, render = backends.get(self.settings.mode)
            with self.timings.stage("render"), gc_paused():
                self._text = render.render(self.ir)
        return self._text


def load_inputs(paths: list[str], report: Report, timings: Timings) -> Inputs:
    with timings.stage("load"), gc_paused():
        return loader.load(paths, report)


def resolve_settings(inputs: Inputs, flags: dict[str, Any], report: Report,
                     config_path: str | None = None) -> Settings:
    """The settings: flags over the --config file over the inputs' own objects."""
    file_cfg = loader.load_config_file(config_path, report) if config_path else None
    return resolve(flags, inputs, report, file_cfg, config_path)


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
    comp, _ = backends.get(settings.mode)
    with gc_paused():
        with timings.stage("plan"):
            p = planmod.build(inputs, settings)
        with timings.stage("compile"):
            ir = comp.compile_plan(p, settings)
    return Compiled(inputs, settings, p, ir, timings, report)


def compile_files(paths: list[str], flags: dict[str, Any], report: Report | None = None,
                  config_path: str | None = None) -> Compiled:
    report = report if report is not None else Report()
    timings = Timings()
    inputs = load_inputs(paths, report, timings)
    return compile_inputs(inputs, flags, report, timings, config_path)


def compile_files_cached(paths: list[str], flags: dict[str, Any], report: Report, config_path: str | None,
                         cache_file: str | None, warn: list[str] | None = None) -> Any:
    """`compile_files` that re-uses the compile cached in CACHE_FILE for what did not change.

    Returns an `IncrementalCompiled` (iptables mode), else a `Compiled`. The
    caller saves the new cache (`.save(path)`) once the result is used. A
    cache file that cannot be used (not a regular file) is said in WARN.
    """
    from .backends.iptables import incremental

    if flags.get("allocate"):
        # Allocation reads the whole input at once (one Service's address depends on
        # every other's), which the per-unit cache cannot follow: compile in full.
        return compile_files(paths, flags, report, config_path)
    timings = Timings()
    with gc_paused():
        with timings.stage("load-cache"):
            cache = incremental.load_cache(cache_file, warn)
        c = incremental.compile_incremental(paths, flags, report, timings, config_path, cache)
    if c is None:
        return compile_files(paths, flags, report, config_path)
    return c
