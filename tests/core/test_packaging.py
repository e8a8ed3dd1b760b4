"""`pip install .` gives a working rulegen: the wheel carries the templates, every command runs outside the checkout.

The test builds the wheel from a copy of the source tree (no checkout-only
state can leak in), installs it into a fresh virtual environment, and runs
every command from a temporary directory far from the checkout.

It needs no network: the wheel is built with this environment's setuptools
(`--no-build-isolation`; the test extra pins a version with bdist_wheel) and
installed with `--no-index --no-deps`. The runtime dependencies (click,
PyYAML, Jinja2, msgspec, pyroute2) are borrowed from this environment
through a `.pth` line. A path added that way is not a site directory, so
this environment's editable-install hook is not run there, and the fresh
environment's own site-packages, holding the wheel, comes first; the test
checks that the rulegen it runs is the installed one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from nshelp import namespace_names

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
                              ".pytest_cache", ".benchmarks", "bench-*", "out")
COMMANDS = ("compile", "apply", "diff", "golden", "trace", "lint", "lab", "bench", "explain")

pytestmark = pytest.mark.slow


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build the wheel, install it into a fresh venv; the venv's bin folder and a scratch folder."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP, symlinks=True)
    dist = tmp / "dist"
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
              "-q", "-w", str(dist), str(src)])
    assert r.returncode == 0, f"building the wheel failed (make test installs the setuptools it needs):\n{r.stderr}"
    (wheel,) = dist.glob("rulegen-*.whl")

    venv = tmp / "venv"
    r = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    r = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
              "--no-cache-dir", "-q", str(wheel)])
    assert r.returncode == 0, r.stderr
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "rulegen_test_dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))

    work = tmp / "work"  # outside the checkout: no templates/ folder anywhere near
    work.mkdir()
    for name in ("web-frontend", "web-frontend-rescheduled"):
        shutil.copytree(ROOT / "examples" / name, work / name)
    shutil.copytree(ROOT / "fixtures" / "clusterip-basic", work / "golden" / "clusterip-basic")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RULEGEN_DEBUG", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", RULEGEN_STATE_DIR=str(tmp / "state"))
    return {"venv": venv, "py": py, "work": work, "env": env, "wheel": wheel}


def rulegen(inst: dict, *args: str) -> subprocess.CompletedProcess:
    r = _run([str(inst["venv"] / "bin" / "rulegen"), *args], cwd=inst["work"], env=inst["env"])
    out = r.stdout + r.stderr
    assert "TemplateNotFound" not in out and "Traceback" not in out and "internal error" not in out, out
    return r


def test_the_wheel_carries_every_template(installed):
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for t in sorted((ROOT / "templates").glob("*.j2")):
        assert f"rulegen/templates/{t.name}" in names


def test_the_installed_rulegen_is_the_one_that_runs(installed):
    code = ("import rulegen, rulegen.templating as t; print(rulegen.__file__); print(t.TEMPLATE_DIR); "
            f"[t.environment().get_template(n) for n in {sorted(p.name for p in (ROOT / 'templates').glob('*.j2'))!r}]")
    r = _run([str(installed["py"]), "-c", code], cwd=installed["work"], env=installed["env"])
    assert r.returncode == 0, r.stderr  # every template (lab.j2 too) loads from the installed package
    module, templates = r.stdout.split()
    assert Path(module).is_relative_to(installed["venv"]) and Path(templates).is_relative_to(installed["venv"])
    assert not Path(templates).is_symlink()  # real files, not the checkout's link


def test_help_and_version(installed):
    r = rulegen(installed, "--help")
    assert r.returncode == 0
    for c in COMMANDS:
        assert f"\n  {c} " in r.stdout, c
    r = rulegen(installed, "--version")
    assert r.returncode == 0 and "0.1.0" in r.stdout
    for c in ("apply", "lab"):  # both need root and namespaces; their help needs neither
        r = rulegen(installed, c, "--help")
        assert r.returncode == 0 and "Usage: rulegen " + c in r.stdout


def test_compile_and_diff(installed):
    r = rulegen(installed, "compile", "web-frontend", "-o", "before.rules")
    assert r.returncode == 0, r.stderr
    text = (installed["work"] / "before.rules").read_text()
    assert text.startswith("*filter\n") and text.endswith("COMMIT\n") and "*nat\n" in text  # iptables-restore.j2
    assert rulegen(installed, "compile", "web-frontend-rescheduled", "-o", "after.rules").returncode == 0
    r = rulegen(installed, "diff", "before.rules", "after.rules")
    assert r.returncode == 1 and "3 chains differ" in r.stdout  # diff.j2


def test_golden(installed):
    r = rulegen(installed, "golden", "golden")
    assert r.returncode == 0 and "1 case(s): 3 ok" in r.stdout


def test_trace_and_lint(installed):
    r = rulegen(installed, "trace", "web-frontend", "--dst", "192.168.56.10:30080")
    assert r.returncode == 0 and r.stdout.startswith("Trace: TCP ") and "Verdict: DNAT" in r.stdout  # trace.j2
    r = rulegen(installed, "lint", "web-frontend")
    assert r.returncode == 0 and "RG701" in r.stdout and "1 info" in r.stdout  # lint.j2


def test_explain(installed):
    r = rulegen(installed, "explain", "web-frontend", "-o", "page.html")
    assert r.returncode == 0, r.stderr
    html = (installed["work"] / "page.html").read_text()  # explain.html.j2, autoescaped
    assert html.startswith("<!DOCTYPE html>") and '<svg class="rg-flow"' in html and "KUBE-SVC-" in html


def test_bench_gen(installed):
    r = rulegen(installed, "bench", "gen", "--services", "3", "--endpoints", "2")
    assert r.returncode == 0 and r.stdout.count("kind: Service\n") == 3


def test_apply_compiles_then_names_what_is_missing(installed):
    # No namespace is created: the name is fresh, so apply compiles and then stops with exit 2
    # (no such namespace, or not root), before it changes anything.
    with namespace_names("rgt-pkg") as fresh:
        r = rulegen(installed, "apply", "web-frontend", "--netns", fresh(), "--dry-run")
    assert r.returncode == 2 and r.stderr.startswith("rulegen: error: "), r.stderr
