"""The README keeps its promises: the two set-up commands, a doc line per lint code, every fixture named."""

from __future__ import annotations

import re
from pathlib import Path

from rulegen.lint.findings import CODES

ROOT = Path(__file__).resolve().parent.parent
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
