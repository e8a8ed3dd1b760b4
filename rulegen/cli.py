"""The `rulegen` command line: parse options, call one function, print.

Exit status: 2 for unusable input or arguments, 1 when a command compares
or checks and finds a difference or a problem, 0 otherwise, 70 for an
internal error (a bug). No command lets a Python traceback reach the user:
`UsageError` and input problems become one-line messages, and so does any
unexpected exception (`guarded`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from typing import Any, Callable

import click

from .diagnostics import Problem, Report, UsageError
from .files import write_atomic
from .flags import compile_options, flags_of, settings_options
from .pipeline import Compiled, compile_files, compile_files_cached


def guarded(f: Callable) -> Callable:
    """Turn UsageError into a one-line message and exit 2, and any unexpected exception into exit 70.

    An unexpected exception is a bug in rulegen, not a problem of the input:
    it is one line, `rulegen: internal error: ...`, and exit status 70
    (EX_SOFTWARE); the traceback is printed only with RULEGEN_DEBUG=1 in the
    environment. click's own exceptions (bad option values, exits, aborts)
    pass through to click, which reports them itself.
    """

    @functools.wraps(f)
    def wrapper(*a, **kw):
        try:
            return f(*a, **kw)
        except UsageError as e:
            click.echo(f"rulegen: error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("rulegen: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(0)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - the last line of defence, by design
            internal_error(e)

    return wrapper


def internal_error(e: BaseException) -> None:
    """Report a bug in rulegen in one line (the traceback with RULEGEN_DEBUG=1) and exit 70."""
    debug = os.environ.get("RULEGEN_DEBUG", "") not in ("", "0")
    if debug:
        traceback.print_exception(e)
    text = " ".join(str(e).split())  # one line, whatever the exception's text holds
    what = f"{type(e).__name__}: {text}" if text else type(e).__name__
    hint = "" if debug else " (run again with RULEGEN_DEBUG=1 for the traceback)"
    click.echo(f"rulegen: internal error: {what}{hint}", err=True)
    sys.exit(70)


def emit_report(report: Report, strict: bool) -> None:
    for line in report.lines():
        click.echo(line, err=True)
    if strict and report.errors:
        click.echo(f"rulegen: {len(report.errors)} input problem(s) and --strict given", err=True)
        sys.exit(2)


def run_compile(files: tuple[str, ...], flags: dict[str, Any], config_path: str | None,
                cache_file: str | None = None, warn: list[str] | None = None) -> Compiled:
    """Compile FILES and print the report; with CACHE_FILE, re-use the compile cached there.

    A compile cache that cannot be used is said in WARN (the caller prints it).
    """
    if not files:
        raise UsageError("no input files given (use - for standard input)")
    report = Report()
    if cache_file:
        c = compile_files_cached(list(files), flags, report, config_path, cache_file, warn)
    else:
        c = compile_files(list(files), flags, report, config_path)
    emit_report(report, bool(flags.get("strict")))
    return c


def service_count(c: Compiled) -> int:
    """Usable Services in the input of C (a full or an incremental compile)."""
    return c.services


# An empty pipe (kubectl failed) reads as an input with no Service. Its
# payload is valid and removes every Service rule, so it is said, not obeyed
# silently: a warning, exit 2 under --strict, and refused by apply.
EMPTY_INPUT = "no Service in the input: the rules hold no Service at all (did the command feeding it fail?)"


def warn_if_empty(c: Compiled, strict: bool, files: tuple[str, ...]) -> str | None:
    """The empty-input warning when C holds no Service (printed; exit 2 under STRICT), else None."""
    if service_count(c):
        return None
    msg = f"{' '.join(files)}: {EMPTY_INPUT}"
    if strict:
        raise UsageError(f"{msg}; --strict given")
    click.echo(f"rulegen: warning: {msg}", err=True)
    return msg


def problem_json(p: Problem) -> dict[str, Any]:
    """One reported input problem as `--json` prints it (the same line stderr shows, in parts)."""
    pl = p.place
    obj = f"{pl.kind} {pl.name}" if pl.kind else None
    return {"file": pl.file, "document": pl.document, "item": pl.item or None, "object": obj,
            "field": p.field or None, "message": p.message, "notice": p.notice}


def message_json(msg: str) -> dict[str, Any]:
    """A warning about the input or the state as a whole, in the shape of `problem_json`."""
    return {"file": None, "document": None, "item": None, "object": None, "field": None, "message": msg,
            "notice": False}


def compile_counts(c: Compiled) -> dict[str, Any]:
    """Services, service ports, endpoints (summed over the service ports) and per table chains and rules."""
    assert c.plan is not None  # `compile` compiles in full
    return {"services": service_count(c), "service_ports": len(c.plan.ports),
            "endpoints": c.plan.endpoint_total, "tables": c.backend.counts(c.ir)}


class _LazyGroup(click.Group):
    """Commands beyond `compile` are imported when named, so `rulegen apply` does not load the lab or lint."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from .commands import COMMANDS

        return sorted(set(super().list_commands(ctx)) | {n for n in COMMANDS if _command(n) is not None})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        got = super().get_command(ctx, name)
        if got is None:
            from .commands import COMMANDS

            if name in COMMANDS:
                got = _command(name)
                if got is not None:
                    self.add_command(got)
        return got


def _command(name: str) -> click.Command | None:
    import importlib

    try:
        mod = importlib.import_module(f"rulegen.commands.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"rulegen.commands.{name}":
            return None
        raise
    return mod.command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rulegen")
def main() -> None:
    """Compile Kubernetes Services and EndpointSlices into the rules kube-proxy installs."""


@main.command("compile")
@click.argument("files", nargs=-1)
@settings_options
@compile_options
@guarded
def compile_cmd(files, output, timings, as_json, config_path, **kw):
    """Compile FILES into the payload kube-proxy would write on a full sync."""
    flags = flags_of(kw)
    c = run_compile(files, flags, config_path)
    empty = warn_if_empty(c, bool(flags.get("strict")), files)
    texts = c.render_files() if output else None
    text = "" if texts is not None else c.text
    if texts is not None:
        write_files(output, texts, c)
    elif output:
        with c.timings.stage("write"):
            try:
                write_atomic(output, text)  # a failed write leaves the previous payload whole
            except OSError as e:
                raise UsageError(f"{output}: cannot write: {e.strerror}") from None
    elif not as_json:
        with c.timings.stage("write"):
            sys.stdout.write(text)
            sys.stdout.flush()
    if as_json:
        out: dict[str, Any] = {"mode": c.settings.mode, "family": c.settings.family}
        if texts is not None:
            out["output"] = {"path": output, "files": {n: len(t.encode("utf-8")) for n, t in texts.items()}}
        elif output:
            out["output"] = {"path": output, "bytes": len(text.encode("utf-8"))}
        else:
            out["payload"] = text
        out["counts"] = compile_counts(c)
        out["warnings"] = ([problem_json(p) for p in c.report.problems]
                           + [{**message_json(n), "notice": True} for n in c.report.notes]
                           + ([message_json(empty)] if empty else []))
        out["timings"] = [{"stage": n, "seconds": round(t, 6)} for n, t in c.timings.stages]
        with c.timings.stage("write"):
            click.echo(json.dumps(out, indent=2))
    if timings:
        for line in c.timings.lines():
            click.echo(f"timing: {line}", err=True)


def write_files(folder: str, texts: dict[str, str], c: Compiled) -> None:
    """`-o DIR` for a mode whose output is several files (IPVS): DIR is made if missing.

    Each file replaces its old copy in one step; all are rendered before the first is written.
    """
    with c.timings.stage("write"):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"{folder}: not a directory (--mode {c.settings.mode} writes "
                             f"{', '.join(texts)} into a folder)")
        try:
            os.makedirs(folder, exist_ok=True)
            for name, text in texts.items():
                write_atomic(os.path.join(folder, name), text)
        except OSError as e:
            raise UsageError(f"{e.filename or folder}: cannot write: {e.strerror}") from None


if __name__ == "__main__":  # pragma: no cover
    main()
