"""The IPVS VM harness without a VM: skip reasons, outcome mapping, and the twins in a pytest session.

The VM itself is exercised by the `ipvs_kernel` tests (tests/vm/); here a
stand-in for `boot_and_run` returns made-up guest reports, so every path a
real run can take (passed, skipped, failed, no report, cannot start) is
checked quickly and deterministically.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import vmhelp
from vmhelp import HOST_SKIP, VMRun, outcome_for, unavailable_reason

pytest_plugins = ["pytester"]


def _kernel_dir(tmp_path: Path, version: str = "6.1.0-9-amd64") -> Path:
    k = tmp_path / "kernel"
    (k / "boot").mkdir(parents=True)
    (k / "boot" / f"vmlinuz-{version}").write_bytes(b"\0")
    (k / "lib" / "modules" / version).mkdir(parents=True)
    (k / "lib" / "modules" / version / "modules.dep").write_text("")
    (k / ".ready").write_text(version + "\n")
    return k


def _venv(tmp_path: Path) -> Path:
    b = tmp_path / "bin"
    b.mkdir()
    (b / "vng").write_text("")
    return b


def _reason(tmp_path: Path, **over) -> str | None:
    args = dict(which=lambda t: f"/usr/bin/{t}", kernel_dir=_kernel_dir(tmp_path), venv_bin=_venv(tmp_path),
                euid=0, free_mb=10_000, memory_mb=10_000, env={})
    args.update(over)
    return unavailable_reason(**args)


def test_every_missing_piece_is_a_skip_reason_naming_it(tmp_path):
    assert _reason(tmp_path) is None
    assert _reason(tmp_path / "a", env={"RULEGEN_NO_VM": "1"}) == \
        "RULEGEN_NO_VM is set: the IPVS VM tests are switched off"
    assert "needs root" in _reason(tmp_path / "b", euid=1000)
    for tool, package in vmhelp.VM_TOOLS:
        got = _reason(tmp_path / tool, which=lambda t, tool=tool: None if t == tool else "/bin/x")
        assert got == f"{tool} is not installed (make test installs the Debian package {package})"
    got = _reason(tmp_path / "c", venv_bin=tmp_path / "nowhere")
    assert got == "virtme-ng (vng) is not installed in the venv (make test installs it with the test extra)"
    assert _reason(tmp_path / "d", kernel_dir=tmp_path / "empty").startswith("no kernel unpacked in ")
    assert _reason(tmp_path / "e", free_mb=12) == f"only 12 MB free for .vm (the IPVS VM needs {vmhelp.MIN_FREE_MB} MB)"
    assert _reason(tmp_path / "f", memory_mb=700) == \
        f"only 700 MB of memory available (the IPVS VM needs {vmhelp.MIN_MEMORY_MB} MB)"


def test_a_kernel_half_unpacked_is_no_kernel(tmp_path):
    k = _kernel_dir(tmp_path)
    assert vmhelp.find_kernel(k).version == "6.1.0-9-amd64"
    (k / "lib" / "modules" / "6.1.0-9-amd64" / "modules.dep").unlink()  # depmod never ran
    assert vmhelp.find_kernel(k) is None
    (k / ".ready").unlink()
    assert vmhelp.find_kernel(k) is None


def test_outcomes_from_the_guest_report():
    report = {"kernel": "6.1.0-9-amd64", "exitstatus": 1, "errors": {},
              "tests": {"t::ok": {"outcome": "passed", "message": ""},
                        "t::skip": {"outcome": "skipped", "message": "Skipped: no sctp"},
                        "t::bad": {"outcome": "failed", "message": "assert 1 == 2"}}}
    run = VMRun(report=report, returncode=0)
    assert outcome_for(run, "t::ok") == ("passed", "")
    assert outcome_for(run, "t::skip") == ("skipped", "Skipped: no sctp")
    status, message = outcome_for(run, "t::bad")
    assert status == "failed" and "assert 1 == 2" in message and "6.1.0-9-amd64" in message
    status, message = outcome_for(run, "t::never")
    assert status == "failed" and "did not run t::never" in message
    silent = VMRun(report=None, returncode=255, console="boot line\nKernel panic - not syncing\n")
    status, message = outcome_for(silent, "t::ok")
    assert status == "failed" and "no report" in message and "Kernel panic" in message and "255" in message


INNER_TESTS = """
import pytest

pytestmark = pytest.mark.ipvs_kernel

def test_good():
    pass

def test_bad():
    pass

def test_unreported():
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    pass
"""


@pytest.fixture
def inner(pytester, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # hypothesis and benchmark cost seconds each run
    pytester.makeconftest('pytest_plugins = ["vmhelp"]\n')
    pytester.makeini("[pytest]\nmarkers =\n    ipvs_kernel: in the VM\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    return pytester


def _fake_boot(monkeypatch, report):
    calls = []

    def boot(nodeids):
        calls.append(list(nodeids))
        return VMRun(report=report, returncode=0, kernel="6.1.0-9-amd64", nodeids=list(nodeids))

    monkeypatch.setattr(vmhelp, "boot_and_run", boot)
    monkeypatch.delenv(vmhelp.IN_VM_ENV, raising=False)
    return calls


def test_twins_report_the_guest_and_the_vm_boots_once(inner, monkeypatch):
    report = {"kernel": "6.1.0-9-amd64", "exitstatus": 1, "errors": {}, "tests": {
        "test_inner.py::test_good": {"outcome": "passed", "message": ""},
        "test_inner.py::test_bad": {"outcome": "failed", "message": "AssertionError: kernel said EPERM"},
        "test_inner.py::test_param[1]": {"outcome": "passed", "message": ""},
        "test_inner.py::test_param[2]": {"outcome": "skipped", "message": "Skipped: not here"},
    }}
    calls = _fake_boot(monkeypatch, report)
    result = inner.runpytest_inprocess("-rA", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2, skipped=6)
    result.stdout.fnmatch_lines([
        "*AssertionError: kernel said EPERM*",
        "*the VM's pytest did not run test_inner.py::test_unreported*",
        f"SKIPPED*{HOST_SKIP}*",
        "*skipped in the IPVS VM: Skipped: not here*",
        "FAILED test_inner.py::test_bad@vm*",
        "FAILED test_inner.py::test_unreported@vm*",
    ])
    assert calls == [["test_inner.py::test_good", "test_inner.py::test_bad", "test_inner.py::test_unreported",
                      "test_inner.py::test_param[1]", "test_inner.py::test_param[2]"]]


def test_the_guest_runs_only_what_the_host_selected(inner, monkeypatch):
    calls = _fake_boot(monkeypatch, {"tests": {"test_inner.py::test_good": {"outcome": "passed"}}})
    result = inner.runpytest_inprocess("-p", "no:cacheprovider", "-m", "ipvs_kernel", "-k", "good")
    result.assert_outcomes(passed=1, skipped=1)
    assert calls == [["test_inner.py::test_good"]]


def test_no_vm_means_every_twin_is_skipped_with_the_reason(inner, monkeypatch):
    monkeypatch.setenv("RULEGEN_NO_VM", "1")
    monkeypatch.delenv(vmhelp.IN_VM_ENV, raising=False)
    result = inner.runpytest_inprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=10)
    result.stdout.fnmatch_lines(["*RULEGEN_NO_VM is set: the IPVS VM tests are switched off*"])


def test_inside_the_vm_the_tests_run_and_report(inner, monkeypatch, tmp_path):
    out = tmp_path / "report.json"
    monkeypatch.setenv(vmhelp.IN_VM_ENV, "1")
    monkeypatch.setenv(vmhelp.REPORT_ENV, str(out))
    inner.makepyfile(test_inner="""
import pytest
pytestmark = pytest.mark.ipvs_kernel
def test_good():
    pass
def test_bad():
    assert 1 == 2, "kernel disagrees"
def test_skip():
    pytest.skip("not in this kernel")
""")
    result = inner.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, skipped=1)  # no twins inside the VM
    import json

    tests = json.loads(out.read_text())["tests"]
    assert tests["test_inner.py::test_good"]["outcome"] == "passed"
    assert tests["test_inner.py::test_bad"]["outcome"] == "failed"
    assert "kernel disagrees" in tests["test_inner.py::test_bad"]["message"]
    assert tests["test_inner.py::test_skip"] == {"outcome": "skipped", "message": "Skipped: not in this kernel"}
