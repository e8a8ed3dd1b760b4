"""A bug in rulegen reaches the user as one line and exit status 70, never as a traceback.

`rulegen.cli.guarded` wraps every command: an unexpected exception becomes
`rulegen: internal error: TYPE: TEXT` on stderr, exit 70; with RULEGEN_DEBUG=1
in the environment the traceback is printed too. Input problems keep their
own exit status (2), and click's own errors stay click's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import rulegen.commands.golden as golden_cmd
import rulegen.commands.lint as lint_cmd
import rulegen.commands.trace as trace_cmd
import rulegen.cli as cli_mod
from rulegen.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "web-frontend")


def _boom(*a, **kw):
    raise RuntimeError("the planner lost track\nof line two")


def _run(*args):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("module,attr,args", [
    (lint_cmd, "lint_files", ("lint", EXAMPLE)),
    (trace_cmd, "trace_compiled", ("trace", EXAMPLE, "--dst", "192.168.56.10:30080")),
    (golden_cmd.golden, "discover", ("golden", str(ROOT / "fixtures"))),
    (cli_mod, "compile_files", ("compile", EXAMPLE)),
])
def test_an_unexpected_exception_is_one_line_and_exit_70(monkeypatch, module, attr, args):
    monkeypatch.delenv("RULEGEN_DEBUG", raising=False)
    monkeypatch.setattr(module, attr, _boom)
    r = _run(*args)
    assert r.exit_code == 70, (r.exit_code, r.output)
    assert r.stderr == ("rulegen: internal error: RuntimeError: the planner lost track of line two "
                        "(run again with RULEGEN_DEBUG=1 for the traceback)\n")
    assert "Traceback" not in r.output


def test_rulegen_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("RULEGEN_DEBUG", "1")
    monkeypatch.setattr(lint_cmd, "lint_files", _boom)
    r = _run("lint", EXAMPLE)
    assert r.exit_code == 70
    assert "Traceback (most recent call last)" in r.stderr and "in _boom" in r.stderr
    assert r.stderr.rstrip("\n").endswith("rulegen: internal error: RuntimeError: the planner lost track of line two")


def test_an_exception_without_text_is_named_by_its_type(monkeypatch):
    monkeypatch.delenv("RULEGEN_DEBUG", raising=False)

    def empty(*a, **kw):
        raise KeyError

    monkeypatch.setattr(lint_cmd, "lint_files", empty)
    r = _run("lint", EXAMPLE)
    assert r.exit_code == 70 and r.stderr.startswith("rulegen: internal error: KeyError (run again")


def test_usage_errors_and_click_errors_keep_their_status():
    r = _run("trace", EXAMPLE, "--dst", "nowhere")
    assert r.exit_code == 2 and r.stderr.startswith("rulegen: error: --dst")
    r = _run("lint", EXAMPLE, "--masquerade-bit", "many")  # click's own parameter check
    assert r.exit_code == 2 and "internal error" not in r.stderr and "Invalid value" in r.stderr
