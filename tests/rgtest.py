"""The helpers behind conftest.py's fixtures, importable where a module-level helper needs them."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner, Result

from rulegen.compiled import Compiled, Timings
from rulegen.diagnostics import Place, Report
from rulegen.loader import load_objects
from rulegen.pipeline import compile_inputs


def compile_objects(objs: list[dict[str, Any]], flags: dict[str, Any] | None = None, *, file: str = "test.yaml",
                    report: Report | None = None) -> Compiled:
    """OBJS (one document each, numbered from 1 in FILE) compiled in full with FLAGS."""
    report = report if report is not None else Report()
    inputs = load_objects([(Place(file, i + 1), o) for i, o in enumerate(objs)], report)
    return compile_inputs(inputs, dict(flags or {}), report, Timings())


def run_cli(*args: str, input: str | None = None) -> Result:
    """`rulegen ARGS...` in-process; a Python exception other than an exit fails the test."""
    # Imported here: every command's module is a cost the IPVS VM's start would pay without using it.
    from rulegen.cli import main

    r = CliRunner().invoke(main, list(args), input=input)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r
