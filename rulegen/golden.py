"""Golden cases: folders of Kubernetes objects kept beside the rules they must compile to.

Owns the on-disk layout `DIR/<case>/` — input files (`*.yaml`, `*.yml`,
`*.json`; `trace.*` belongs to the tracer and is not an input), an optional
`args` file (one line of settings flags, `#` comment lines allowed) and one
`expected.<mode>` file per data plane — and the four things done with it:
find the cases, compile one (inputs in name order, so the result never
depends on the file system), compare with the expected text as a unified
diff, and rewrite the expected files. `rulegen golden` (users' CI) and the
project's own golden tests both run on this module, so they cannot disagree.
Nothing here prints: a case's input problems are collected into its outcome
and shown by the caller, next to the case they belong to.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import DEFAULT_MODE
from .diagnostics import Report, UsageError
from .files import write_atomic
from .flags import parse_args_line
from .loader import is_input

ARGS_FILE = "args"
EXPECTED_PREFIX = "expected."
_MODE_FILE = re.compile(r"expected\.[a-z][a-z0-9]*\Z")

OK = "ok"
DIFFERS = "differs"
UPDATED = "updated"
ERROR = "error"


@dataclass(frozen=True)
class Case:
    """One golden case folder, as found on disk."""

    name: str
    path: Path
    inputs: tuple[Path, ...]  # sorted by file name
    args: str  # the settings line ("" when there is no args file)
    modes: tuple[str, ...]  # modes with an expected file, sorted; () for a new case
    args_error: str = ""  # why the args file could not be read; compiling reports it

    @property
    def empty(self) -> bool:
        """No input file and no expected file: a case folder whose files were never added (or lost)."""
        return not self.inputs and not self.modes

    def expected_path(self, mode: str) -> Path:
        return self.path / f"{EXPECTED_PREFIX}{mode}"


@dataclass
class Outcome:
    """What happened to one (case, mode)."""

    case: Case
    mode: str
    status: str  # OK | DIFFERS | UPDATED | ERROR
    message: str = ""  # for ERROR, and notes such as "created"
    diff: str = ""  # unified diff, expected → compiled (DIFFERS, UPDATED)
    problems: tuple[str, ...] = ()  # input problems the loader reported (left out as kube-proxy would)
    notices: tuple[str, ...] = ()  # informational: kinds rulegen skips
    internal: bool = False  # ERROR from a bug in rulegen, not from the case's files

    @property
    def failed(self) -> bool:
        return self.status in (DIFFERS, ERROR)


class CaseError(Exception):
    """A case that cannot be compiled at all (bad args, unreadable input)."""


# ----------------------------------------------------------------------------- finding


def _is_input(p: Path) -> bool:
    return is_input(p) and not p.name.startswith(".")


def read_args(path: Path) -> str:
    """The args file as one line: comment lines dropped, the rest joined."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CaseError(f"{path.name}: cannot read: {e}") from None
    lines = [ln.strip() for ln in text.splitlines()]
    return " ".join(ln for ln in lines if ln and not ln.startswith("#"))


def load_case(path: Path) -> Case:
    path = Path(path)
    entries = sorted(path.iterdir(), key=lambda p: p.name)
    inputs = tuple(p for p in entries if _is_input(p))
    modes = tuple(sorted(
        p.name[len(EXPECTED_PREFIX):] for p in entries
        if p.is_file() and _MODE_FILE.match(p.name)  # not editor leftovers like expected.iptables~
    ))
    args_path = path / ARGS_FILE
    args, args_error = "", ""
    if args_path.is_file():
        try:
            args = read_args(args_path)
        except CaseError as e:
            args_error = str(e)
    return Case(path.name, path, inputs, args, modes, args_error)


def discover(root: str | os.PathLike) -> list[Case]:
    """Every case folder under `root`, by name. UsageError when `root` holds none."""
    root_path = Path(root)
    if not root_path.exists():
        raise UsageError(f"{root}: no such directory")
    if not root_path.is_dir():
        raise UsageError(f"{root}: not a directory (expected a folder of case folders)")
    try:
        subdirs = sorted((p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.name)
    except OSError as e:
        raise UsageError(f"{root}: cannot list: {e.strerror}") from None
    # Every folder is a case, an empty one too: skipping it would let a case whose files
    # were never committed pass in CI unnoticed. `run_case` reports it as an ERROR.
    cases = [load_case(d) for d in subdirs]
    if not cases:
        raise UsageError(f"{root}: no golden cases (each case is a folder with input files "
                         f"and expected.<mode>)")
    return cases


# ----------------------------------------------------------------------------- compiling


def case_flags(case: Case) -> tuple[dict[str, Any], str | None]:
    """The case's settings flags and config path (relative paths are the case's)."""
    if case.args_error:
        raise CaseError(case.args_error)
    try:
        flags, config = parse_args_line(case.args)
    except UsageError as e:
        raise CaseError(str(e)) from None
    if config and not os.path.isabs(config):
        config = str(case.path / config)
    return flags, config


@dataclass(frozen=True)
class Compiled:
    text: str
    problems: tuple[str, ...]
    notices: tuple[str, ...]


def compile_case(case: Case, mode: str = DEFAULT_MODE) -> Compiled:
    """Compile a case for one mode; its input problems come back as one-line strings."""
    from .pipeline import compile_files

    if not case.inputs:
        raise CaseError("no input files (*.yaml, *.yml, *.json)")
    flags, config = case_flags(case)
    flags["mode"] = mode  # the expected file names the mode; it wins over args
    report = Report()
    try:
        compiled = compile_files([str(p) for p in case.inputs], flags, report, config)
        text = compiled.text
    except UsageError as e:
        raise CaseError(_relative(str(e), case)) from None
    problems = tuple(_relative(str(p), case) for p in report.problems if not p.notice)
    summary = report.summary()  # the kinds the case's inputs hold that rulegen skips
    notices = (tuple(_relative(str(p), case) for p in report.problems if p.notice) + ((summary,) if summary else ())
               + tuple(report.notes))
    if flags.get("strict") and problems:
        raise CaseError(f"{len(problems)} input problem(s) and --strict given: {problems[0]}")
    return Compiled(text, problems, notices)


def _relative(message: str, case: Case) -> str:
    """Messages name files by their path; inside a case report the bare file name is enough."""
    return message.replace(str(case.path) + os.sep, "")


def unified(expected: str, actual: str, case: Case, mode: str) -> str:
    """Unified diff expected → compiled, as text ('' when equal)."""
    if expected == actual:
        return ""
    lines = difflib.unified_diff(
        expected.splitlines(), actual.splitlines(),
        fromfile=f"{case.name}/{EXPECTED_PREFIX}{mode}", tofile=f"{case.name} (compiled)", lineterm="",
    )
    text = "\n".join(lines)
    if not text:  # equal line by line: only the final newline differs
        text = (f"--- {case.name}/{EXPECTED_PREFIX}{mode}\n+++ {case.name} (compiled)\n"
                f"(the texts differ only in the newline at the end of the file)")
    return text + "\n"


def _read_expected(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _new_case_mode(case: Case) -> str:
    """A case without expected files yet is for the mode its args name (iptables by default)."""
    try:
        flags, _ = case_flags(case)
    except CaseError:
        return DEFAULT_MODE  # compiling reports the error
    return flags.get("mode") or DEFAULT_MODE


def run_case(case: Case, update: bool = False) -> list[Outcome]:
    """Compile and compare every mode of a case; with `update`, rewrite what differs."""
    if case.empty:
        return [Outcome(case, "", ERROR, message=(
            "empty case folder: no input files (*.yaml, *.yml, *.json) and no expected.<mode> file "
            "(add the case's files, or remove the folder)"))]
    out = []
    for mode in case.modes or (_new_case_mode(case),):
        try:
            compiled = compile_case(case, mode)
        except CaseError as e:
            out.append(Outcome(case, mode, ERROR, message=str(e)))
            continue
        except Exception as e:  # a compiler bug in one case must not hide the others
            out.append(Outcome(case, mode, ERROR, message=f"internal error: {type(e).__name__}: {e}",
                               internal=True))
            continue
        actual, seen = compiled.text, {"problems": compiled.problems, "notices": compiled.notices}
        path = case.expected_path(mode)
        expected = _read_expected(path)
        diff = unified(expected or "", actual, case, mode)
        if not diff:
            out.append(Outcome(case, mode, OK, **seen))
        elif update:
            try:
                write_atomic(path, actual)
            except OSError as e:
                out.append(Outcome(case, mode, ERROR, message=f"{path.name}: cannot write: {e.strerror}", **seen))
                continue
            note = f"created {path.name}" if expected is None else f"rewrote {path.name}"
            out.append(Outcome(case, mode, UPDATED, message=note, diff=diff, **seen))
        else:
            note = f"no {path.name} yet (--update writes it)" if expected is None else ""
            out.append(Outcome(case, mode, DIFFERS, message=note, diff=diff, **seen))
    return out


def run(root: str | os.PathLike, update: bool = False) -> list[Outcome]:
    """Every case under `root`: UsageError when `root` is unusable."""
    outcomes: list[Outcome] = []
    for case in discover(root):
        outcomes.extend(run_case(case, update))
    return outcomes
