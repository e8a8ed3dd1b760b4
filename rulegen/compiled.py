"""What one compile hands to the commands: `Compiled`, generic over its backend's IR, and its `Timings`.

Owns the record every mode's compile produces, full or incremental, so the
commands read one shape whatever the mode: the settings, the report of
input problems, the stage times, how many Services the input held, and the
IR, built on first use when an incremental compile kept most of it as
hashes. It sits below both the pipeline and the backends, so a backend's
incremental compile can return one without importing the pipeline.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, TypeVar

from .diagnostics import Report
from .gcpause import gc_paused
from .model import Inputs
from .settings import Settings

if TYPE_CHECKING:
    from .backends.base import Backend
    from .plan import Plan

IR = TypeVar("IR")


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
class Compiled(Generic[IR]):
    """One compile's result.

    A full compile (`pipeline.compile_inputs`) has `inputs`, `plan` and `ir`.
    An incremental one (`Backend.incremental`) read only the inputs that
    changed: `inputs` and `plan` are None, `incremental` is the backend's
    own form of the result (for iptables: table views that know most chains
    by hash), `materialize` builds the whole IR when something asks for it,
    and `save_cache` keeps the compile for the next run. Commands that need
    the plan (trace, lab, lint) always compile in full.
    """

    settings: Settings
    report: Report
    timings: Timings
    backend: Backend
    services: int  # usable Services in the input (an input with none is refused by apply)
    inputs: Inputs | None = field(default=None, repr=False)
    plan: Plan | None = field(default=None, repr=False)
    ir: IR | None = field(default=None, repr=False)  # read through the property below: built on first use
    materialize: Callable[[], IR] | None = field(default=None, repr=False)
    incremental: Any = field(default=None, repr=False)  # the backend's incremental form; None after a full compile
    stats: dict[str, int] | None = None  # incremental: units, parsed, groups, compiled
    saver: Callable[[str, list[str] | None], None] | None = field(default=None, repr=False)
    _text: str | None = field(default=None, repr=False)

    def save_cache(self, path: str, warn: list[str] | None = None) -> None:
        """Keep an incremental compile for the next run (a full compile keeps nothing); a failure only costs time."""
        if self.saver is not None:
            self.saver(path, warn)

    def render_files(self) -> dict[str, str] | None:
        """{file name: text} for a mode that writes several files (`compile -o DIR`), else None."""
        if not self.backend.writes_files:
            return None
        with self.timings.stage("render"), gc_paused():
            return self.backend.render_files(self.ir)

    @property
    def text(self) -> str:
        if self._text is None:
            with self.timings.stage("render"), gc_paused():
                self._text = self.backend.render(self.ir)
        return self._text


def _get_ir(self: Compiled) -> Any:
    got = self.__dict__.get("_ir")
    if got is None:
        assert self.materialize is not None, "a Compiled holds its IR or a way to build it"
        got = self.__dict__["_ir"] = self.materialize()
    return got


def _set_ir(self: Compiled, value: Any) -> None:
    self.__dict__["_ir"] = value


# `ir` is a dataclass field (so `Compiled(..., ir=...)` and `dataclasses.replace(c, ir=...)`
# work) read through this property, so an incremental compile builds its IR only when asked.
Compiled.ir = property(_get_ir, _set_ir)  # type: ignore[assignment,method-assign]
