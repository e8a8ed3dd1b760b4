"""`rulegen golden DIR [--update]`: check (or rewrite) a folder of golden cases, for CI.

Each `DIR/<case>/` is compiled for every `expected.<mode>` it holds and
compared with that file (`rulegen.golden` owns the layout and the
comparison). One line per case and mode — ok, DIFFERS with the unified diff
under it, updated, ERROR with the reason — then a summary. Exit status:

* 2 when DIR itself is unusable, or any case is: input that is not YAML or
  JSON, a bad `args` line, an empty case folder (ERROR names each). The
  check could not be done, which is not the same as "the rules changed";
* 1 when every case could be compiled and any differs;
* 70 when compiling a case hit a bug in rulegen (the other cases still run);
* 0 otherwise. `--update` rewrites the expected files, so only errors fail it.
"""

from __future__ import annotations

import sys

import click

from .. import golden
from ..cli import guarded

_LABEL = {golden.OK: "ok", golden.DIFFERS: "DIFFERS", golden.UPDATED: "updated", golden.ERROR: "ERROR"}
_COLOUR = {golden.OK: "green", golden.DIFFERS: "red", golden.UPDATED: "yellow", golden.ERROR: "red"}
_DIFF_COLOUR = {"+": "green", "-": "red", "@": "cyan"}


def _echo_diff(diff: str, limit: int) -> None:
    lines = diff.splitlines()
    shown = lines if limit <= 0 else lines[:limit]
    for line in shown:
        colour = None if line.startswith(("---", "+++")) else _DIFF_COLOUR.get(line[:1])
        click.echo(click.style(line, fg=colour) if colour else line)
    if len(shown) < len(lines):
        click.echo(f"... {len(lines) - len(shown)} more diff lines (--diff-lines 0 shows all)")


@click.command("golden")
@click.argument("directory", metavar="DIR")
@click.option("--update", is_flag=True, help="Rewrite the expected files with what the cases compile to.")
@click.option("--diff-lines", type=int, default=200, show_default=True,
              help="Show at most this many diff lines per case (0: all).")
@click.option("-q", "--quiet", is_flag=True, help="Only report cases that are not ok.")
@guarded
def command(directory: str, update: bool, diff_lines: int, quiet: bool) -> None:
    """Compile every case folder in DIR and compare it with its expected.<mode> files."""
    counts = dict.fromkeys(_LABEL, 0)
    internal = False
    cases = golden.discover(directory)  # UsageError → exit 2
    for case in cases:
        for o in golden.run_case(case, update):
            counts[o.status] += 1
            internal = internal or o.internal
            if quiet and o.status == golden.OK:
                continue
            label = click.style(f"{_LABEL[o.status]:<8}", fg=_COLOUR[o.status], bold=o.failed)
            detail = f": {o.message}" if o.message else ""
            mode = f" [{o.mode}]" if o.mode else ""
            click.echo(f"{label} {case.name}{mode}{detail}")
            for p in o.problems:
                click.echo(f"    input problem: {p}")
            for p in o.notices:
                click.echo(f"    note: {p}")
            if o.status == golden.DIFFERS:
                _echo_diff(o.diff, diff_lines)
    parts = [f"{counts[s]} {_LABEL[s].lower()}" for s in _LABEL if counts[s] or s == golden.OK]
    click.echo(f"{len(cases)} case(s): " + ", ".join(parts))
    if counts[golden.DIFFERS]:
        click.echo(f"run `rulegen golden {directory} --update` and review the change with `git diff`", err=True)
    if internal:
        sys.exit(70)
    if counts[golden.ERROR]:
        sys.exit(2)
    if counts[golden.DIFFERS]:
        sys.exit(1)
