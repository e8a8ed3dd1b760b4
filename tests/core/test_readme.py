"""The README keeps its promises: the two set-up commands, a doc line per lint code, and examples
that are real runs.

How README examples are kept true (the README says the same in a comment):

* An example is a fenced block whose first line starts with `$ `. Each `$ ` line is a command;
  the lines after it, up to the next `$ ` line, are what it prints: standard output and standard
  error together, as a terminal shows them. Other blocks (set-up steps, a CI job, a payload
  shape) are not examples.
* The commands run in bash, in order, in one fresh temporary directory per block that holds
  copies of the repository's `examples/`, `fixtures/` and `lint-fixtures/` folders: paths read
  as from the repository's root, and files a command writes (`-o before.rules`) stay in the
  temporary directory. `rulegen` is this checkout's; `sudo .venv/bin/rulegen` is the same,
  run as root.
* A line that is only `...` (indented or not) stands for any number of lines, none included.
  Every other line must equal the real line (trailing spaces aside).
* Only what must vary between runs is normalised, in both texts: lab run ids (`rglab-xxxx`),
  chi-square p values, the lab's hit count and share per endpoint, and elapsed seconds.
* A command must exit 0 or 1 (diff and lint exit 1 when they find something), never 2 or 70.
* Examples that need root (lab, apply) run when the tests run as root with iptables and
  iproute2, and are skipped with the reason otherwise. The lab sends its default 200
  connections per path: a few seconds.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rulegen.lint.findings import CODES

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_exactly_two_setup_commands():
    block = README.split("## Set-up on a fresh machine", 1)[1].split("```", 2)[1]
    cmds = [l.split("#")[0].strip() for l in block.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert cmds == ["make demo", "make test"]


def test_every_lint_code_has_a_doc_line():
    for code in CODES:
        assert re.search(rf"^\| {code} \| ", README, re.M), f"{code} missing from README"


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


# ------------------------------------------------------------------ examples are real runs

COPIED = ("examples", "fixtures", "lint-fixtures")
ROOT_COMMANDS = ("lab", "apply")
RULEGEN = Path(sys.executable).with_name("rulegen")
NORMALISE = (
    (re.compile(r"\brglab-[0-9a-f]{4}\b"), "rglab-ID"),
    (re.compile(r"\bp=\d+(?:\.\d+)?(?:e-?\d+)?"), "p=P"),
    (re.compile(r"\b(local|remote) +\d+ +\d+(?:\.\d+)?%"), r"\1 N P%"),
    (re.compile(r", \d+\.\d s; "), ", T s; "),
)


def examples(text: str) -> list[tuple[int, list[tuple[str, list[str]]]]]:
    """Every example block: (its line number in the README, [(command, expected lines)])."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        start = i + 1
        end = start
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        body = lines[start:end]
        if body and body[0].startswith("$ "):
            steps: list[tuple[str, list[str]]] = []
            for line in body:
                if line.startswith("$ "):
                    steps.append((line[2:].strip(), []))
                else:
                    steps[-1][1].append(line)
            out.append((start + 1, steps))
        i = end + 1
    return out


def normalise(text: str) -> str:
    for pattern, repl in NORMALISE:
        text = pattern.sub(repl, text)
    return text


def matches(expected: list[str], actual: str) -> bool:
    """`expected` lines against the real output, a `...` line standing for any number of lines."""
    parts = []
    for line in expected:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(re.escape(normalise(line.rstrip())) + r"\n")
    real = "".join(normalise(ln.rstrip()) + "\n" for ln in actual.splitlines())
    return re.fullmatch("".join(parts), real) is not None


def needs_root(command: str) -> bool:
    words = command.split()
    return words[:2] == ["sudo", ".venv/bin/rulegen"] or (len(words) > 1 and words[0] == "rulegen"
                                                          and words[1] in ROOT_COMMANDS)


def shell_command(command: str) -> str:
    return re.sub(r"^sudo \.venv/bin/rulegen\b", "rulegen", command)


EXAMPLES = examples(README)


def test_the_readme_has_its_examples():
    commands = [cmd for _, steps in EXAMPLES for cmd, _ in steps]
    for want in ("rulegen compile examples/web-frontend/", "rulegen trace examples/web-frontend/",
                 "rulegen diff before.rules after.rules", "sudo .venv/bin/rulegen lab examples/web-frontend/"):
        assert any(c.startswith(want) for c in commands), f"no README example runs {want}"
    assert "<!-- README examples:" in README  # the rules above, where README editors see them


@pytest.mark.parametrize("line,steps", EXAMPLES, ids=[f"README line {n}: {s[-1][0]}" for n, s in EXAMPLES])
def test_readme_example_is_a_real_run(line, steps, tmp_path):
    if any(needs_root(cmd) for cmd, _ in steps):
        if os.geteuid() != 0:
            pytest.skip("this README example needs root (network namespaces and iptables)")
        if not shutil.which("iptables-restore") or not shutil.which("ip"):
            pytest.skip("this README example needs iptables-restore and iproute2 (make test installs them)")
    for folder in COPIED:
        shutil.copytree(ROOT / folder, tmp_path / folder)
    env = dict(os.environ, PATH=f"{RULEGEN.parent}{os.pathsep}{os.environ.get('PATH', '')}",
               RULEGEN_STATE_DIR=str(tmp_path / "state"))
    env.pop("RULEGEN_DEBUG", None)
    for command, expected in steps:
        r = subprocess.run(["bash", "-c", shell_command(command)], cwd=tmp_path, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        where = f"README.md line {line}: $ {command}"
        assert r.returncode in (0, 1), f"{where}: exit {r.returncode}\n{r.stdout}"
        if not matches(expected, r.stdout):
            diff = "\n".join(difflib.unified_diff(
                [normalise(x.rstrip()) for x in expected], [normalise(x.rstrip()) for x in r.stdout.splitlines()],
                "README", "real run", lineterm=""))
            pytest.fail(f"{where}: the README shows other output than a real run "
                        f"('...' lines stand for any lines)\n{diff}")


@pytest.mark.parametrize("expected,actual,ok", [
    (["a", "...", "d"], "a\nb\nc\nd\n", True),
    (["a", "...", "d"], "a\nd\n", True),  # '...' may stand for no line
    (["a", "d"], "a\nb\nd\n", False),  # an omitted line needs a '...'
    (["a", "b"], "a\nb\nc\n", False),  # so does an omitted tail
    (["  ...", "c"], "a\nb\nc\n", True),
    (["x rglab-58f3 p=0.923"], "x rglab-b528 p=0.18\n", True),
    (["x rglab-58f3"], "x rglab-b528-node\n", False),
    (["  10.0.0.1:80  local      68   34.0%  expected 33.3%"],
     "  10.0.0.1:80  local     100   50.0%  expected 33.3%\n", True),
    (["  10.0.0.1:80  local      68   34.0%  expected 33.3%"],
     "  10.0.0.1:80  remote     68   34.0%  expected 33.3%\n", False),
    (["a (200)"], "a (199)\n", False),  # counts that are not random are compared
])
def test_example_matching_rules(expected, actual, ok):
    assert matches(expected, actual) is ok
