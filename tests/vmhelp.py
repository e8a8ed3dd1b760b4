"""The IPVS VM: boot a Debian kernel once per test session and run the `ipvs_kernel` tests inside it.

The machine's own kernel may have no `ip_vs` (and no way to load it), so the
tests that need IPVS in a kernel run in a small VM: the Debian kernel
package unpacked under `.vm/kernel` (the Makefile fetches it), booted by
virtme-ng in QEMU software emulation, with the host's root filesystem shared
read-only (so `.venv`, `ip`, `ipvsadm` and `ipset` work inside) and one
writable folder under `.vm/results` for the guest's report. Python under
emulation reads its files slowly over 9p, so the standard library, the
venv's packages, libpython and the project's rulegen, tests and fixtures
(with bytecode the host writes first) go in as a read-only ext4 image on a
virtio disk, mounted over their own paths (tests/vm/guest.sh); without
`mke2fs` they are read over 9p, only slower. The kernel is told not to load
the modules of QEMU's emulated hardware (`NOT_LOADED`), and the summary
gives the guest's timeline and QEMU's CPU seconds (the work done, which on a
shared host says more than the wall time).

How it looks from pytest (this module is a plugin: tests/conftest.py loads it):

- on the host, every test marked `ipvs_kernel` is skipped with the reason
  `HOST_SKIP`, and gets a twin `<name>@vm` that reports what the test did in
  the VM: passed, skipped with the guest's reason, or failed with the
  guest's message. The first twin to run boots the VM, once, and the guest
  runs every selected test in that one boot; a VM that gives no report for a
  test fails that test with the end of the console;
- where the VM cannot start (no QEMU, no kernel, no room, not root, or
  RULEGEN_NO_VM set) the twins are skipped with that reason;
- inside the VM (RULEGEN_IN_VM=1) the tests run for real and `GuestReport`
  writes each one's outcome to `report.json` in that folder.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
VM_DIR = ROOT / ".vm"
KERNEL_DIR = VM_DIR / "kernel"
RESULTS_DIR = VM_DIR / "results"  # one folder per boot inside: <time>-<pid>; the last few are kept
KEEP_RESULTS = 3
GUEST_SCRIPT = ROOT / "tests" / "vm" / "guest.sh"
MARKER = "ipvs_kernel"
IN_VM_ENV = "RULEGEN_IN_VM"
REPORT_ENV = "RULEGEN_VM_REPORT"
NO_VM_ENV = "RULEGEN_NO_VM"
BOOTED_ENV = "RULEGEN_VM_BOOTED"  # the guest's uptime when guest.sh started (tests/vm/guest.sh)
HOST_SKIP = "runs inside the IPVS VM (tests/vmhelp.py)"
VM_SUFFIX = "@vm"
MEMORY_MB = 512
# One vCPU: on a small, busy host, software emulation of two runs slower
# (measured: the same run took 171 s with two, 93 s with one).
CPUS = 1
MIN_FREE_MB = 400  # the Python image (~150 MB) and the results
MIN_MEMORY_MB = MEMORY_MB + 512  # QEMU's own share on top of the guest's
TIMEOUT_S = 480  # a hard stop: a hung guest must not hang the suite
DISK_ID = "rgpy"
# Modules udev would load for QEMU's emulated hardware, none of which the tests use (the image is a
# virtio disk): kvm alone took 9 s of a 28 s boot. The kernel refuses them (module_blacklist=).
NOT_LOADED = ("kvm_amd", "kvm_intel", "kvm", "irqbypass", "ccp", "sr_mod", "cdrom", "sg", "iTCO_wdt", "intel_pmc_bxt",
              "iTCO_vendor_support", "ahci", "libahci", "libata", "scsi_mod", "scsi_common", "psmouse", "serio_raw",
              "i6300esb", "i2c_i801", "i2c_smbus", "pcspkr", "lpc_ich", "evdev", "ghash_clmulni_intel", "aesni_intel",
              "crypto_simd", "cryptd", "sha512_ssse3", "sha256_ssse3", "sha1_ssse3", "watchdog", "joydev")  # the virtio disk's serial: /dev/disk/by-id/virtio-rgpy in the guest
# Debian tools the VM needs on the host (they are shared into the guest too).
VM_TOOLS = (("qemu-system-x86_64", "qemu-system-x86"), ("modprobe", "kmod"), ("udevadm", "udev"),
            ("busybox", "busybox-static"))


def in_vm() -> bool:
    return os.environ.get(IN_VM_ENV) == "1"


# ---------------------------------------------------------------- can it run


@dataclass(frozen=True)
class Kernel:
    version: str
    image: Path  # vmlinuz
    modules: Path  # lib/modules/<version>, depmod done


def find_kernel(kernel_dir: Path = KERNEL_DIR) -> Kernel | None:
    """The kernel the Makefile unpacked (its version is in `.ready`, written last), or None."""
    try:
        version = (kernel_dir / ".ready").read_text().strip()
    except OSError:
        return None
    k = Kernel(version, kernel_dir / "boot" / f"vmlinuz-{version}", kernel_dir / "lib" / "modules" / version)
    if not k.image.is_file() or not (k.modules / "modules.dep").is_file():
        return None
    return k


def _free_mb(path: Path) -> int:
    while not path.exists():
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // 2**20


def _available_memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def unavailable_reason(which: Callable[[str], str | None] = shutil.which, kernel_dir: Path = KERNEL_DIR,
                       venv_bin: Path | None = None, euid: int | None = None, free_mb: int | None = None,
                       memory_mb: int | None = None, env: dict[str, str] | None = None) -> str | None:
    """Why the IPVS VM cannot run here (the exact skip reason), or None. Arguments replace the probes in tests."""
    env = os.environ if env is None else env
    if env.get(NO_VM_ENV):
        return f"{NO_VM_ENV} is set: the IPVS VM tests are switched off"
    if (euid if euid is not None else os.geteuid()) != 0:
        return "the IPVS VM needs root (its guest runs the tests as the calling user, and they need namespaces)"
    for tool, package in VM_TOOLS:
        if which(tool) is None:
            return f"{tool} is not installed (make test installs the Debian package {package})"
    venv_bin = venv_bin if venv_bin is not None else Path(sys.executable).parent
    if not (venv_bin / "vng").exists():
        return "virtme-ng (vng) is not installed in the venv (make test installs it with the test extra)"
    if find_kernel(kernel_dir) is None:
        return (f"no kernel unpacked in {kernel_dir.relative_to(ROOT) if kernel_dir.is_relative_to(ROOT) else kernel_dir}"
                " (make test fetches the Debian kernel package: it needs root and about 600 MB)")
    free = free_mb if free_mb is not None else _free_mb(VM_DIR)
    if free < MIN_FREE_MB:
        return f"only {free} MB free for .vm (the IPVS VM needs {MIN_FREE_MB} MB)"
    mem = memory_mb if memory_mb is not None else _available_memory_mb()
    if mem < MIN_MEMORY_MB:
        return f"only {mem} MB of memory available (the IPVS VM needs {MIN_MEMORY_MB} MB)"
    return None


# ---------------------------------------------------------- the Python image

# Parts of the standard library no test imports; leaving them out keeps the image small.
_STDLIB_SKIP = {"test", "site-packages", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip"}
_SITE_SKIP = {"pip"}
_CODE_DIRS = ("rulegen", "tests")  # the project's Python, in the image with its bytecode


def _python_trees() -> list[tuple[str, Path, set[str]]]:
    """(name in the image, host path, top-level entries to leave out) for what the guest's Python reads.

    The standard library and the venv's packages; libpython (a file: every Python process maps it, and
    mapped pages of the 9p root are read from the host one by one, measured 2-7 s a start against
    0.5-0.8 s from a local copy); and the project's code, tests and fixtures with their bytecode
    (`precompile`), whose many small reads and stats over 9p cost as much as the imports themselves.
    """
    paths = sysconfig.get_paths()
    stdlib, site = Path(paths["stdlib"]), Path(paths["purelib"])
    trees = [("stdlib", stdlib, _STDLIB_SKIP | {p.name for p in stdlib.glob("config-*")})]
    if not site.is_relative_to(stdlib):
        trees.append(("site", site, _SITE_SKIP))
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and soname and (Path(libdir) / soname).is_file():
        trees.append(("libpython", (Path(libdir) / soname).resolve(), set()))
    trees += [(f"code-{d}", ROOT / d, set()) for d in _CODE_DIRS + ("fixtures",) if (ROOT / d).is_dir()]
    return trees


def _image_key(trees: list[tuple[str, Path, set[str]]]) -> str:
    h = hashlib.sha256(sys.version.encode())
    for name, host, _ in trees:
        st = host.stat()
        h.update(f"{name}:{host}:{st.st_mtime_ns}".encode())
        if name.startswith("code-"):  # edited often: every file counts
            for folder, _, files in sorted(os.walk(host)):
                for f in sorted(files):
                    fs = os.lstat(os.path.join(folder, f))
                    h.update(f"{folder}/{f}:{fs.st_size}:{fs.st_mtime_ns}".encode())
    stamp = ROOT / ".venv" / ".installed"
    if stamp.exists():
        h.update(str(stamp.stat().st_mtime_ns).encode())
    return h.hexdigest()[:16]


def _stage(src: Path, dst: Path, skip: set[str]) -> int:
    """Hard-link (or copy) SRC's tree to DST without the SKIP entries and -O bytecode; return its size."""
    total = 0

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    if src.is_file():
        link(str(src), str(dst))
        return src.stat().st_size

    def ignore(folder: str, names: list[str]) -> set[str]:
        out = {n for n in names if n.endswith((".opt-1.pyc", ".opt-2.pyc"))}
        if Path(folder) == src:
            out |= skip & set(names)
        return out

    shutil.copytree(src, dst, symlinks=True, ignore=ignore, copy_function=link)
    for folder, _, files in os.walk(dst):
        for f in files:
            try:
                total += os.lstat(os.path.join(folder, f)).st_size
            except OSError:
                pass
    return total


def python_image() -> tuple[Path | None, list[tuple[str, str]], str]:
    """(image or None, [(folder in the image, host path it is mounted over)], note) — built once per key."""
    mke2fs = shutil.which("mke2fs") or shutil.which("mkfs.ext4")
    trees = _python_trees()
    mounts = [(name, str(host)) for name, host, _ in trees]
    if mke2fs is None:
        return None, [], "no mke2fs: Python is read over 9p (slower)"
    image = VM_DIR / f"python-{_image_key(trees)}.img"
    if image.exists():
        return image, mounts, "cached"
    for old in VM_DIR.glob("python-*.img"):
        old.unlink()
    VM_DIR.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="stage-", dir=VM_DIR))
    try:
        size = sum(_stage(host, stage / name, skip) for name, host, skip in trees)
        blocks_mb = size * 13 // 10 // 2**20 + 64
        tmp = image.with_suffix(".tmp")
        cp = subprocess.run([mke2fs, "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", DISK_ID, "-d", str(stage),
                             str(tmp), f"{blocks_mb}M"], capture_output=True, text=True, timeout=300)
        if cp.returncode != 0:
            tmp.unlink(missing_ok=True)
            return None, [], f"mke2fs failed ({cp.stderr.strip()[:200]}): Python is read over 9p (slower)"
        tmp.rename(image)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return image, mounts, "built"


# ------------------------------------------------------------ the bytecode

# Without bytecode the guest compiles every module of rulegen and the tests in every Python process it
# starts (pytest, the lab's helpers), at emulation speed.


def precompile(nodeids: list[str]) -> str:
    """Write the project's bytecode next to its sources on the host (only what is stale), for the guest to read.

    `compileall` for rulegen and the tests; pytest's assertion-rewritten modules (the test files and
    conftests, whose cache pytest names after itself) by a collection of NODEIDS with bytecode writing on.
    """
    ok = all(compileall.compile_dir(str(ROOT / d), quiet=2, workers=1) for d in _CODE_DIRS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env[NO_VM_ENV] = "1"
    cp = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                         "--rootdir", str(ROOT), *nodeids], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)
    if not ok or cp.returncode != 0:
        return "bytecode partly written (the guest compiles the rest)"
    return "bytecode written"


# ------------------------------------------------------------- boot and run


@dataclass
class VMRun:
    """One boot: why it did not run (skip), or the guest's report and console."""

    skip: str | None = None
    report: dict[str, Any] | None = None
    console: str = ""
    returncode: int | None = None
    seconds: float = 0.0  # boot, tests and shutdown
    image_seconds: float = 0.0
    qemu_cpu_seconds: float = 0.0  # CPU time of vng and QEMU on the host: the work, whatever the host's load
    image_note: str = ""
    kernel: str = ""
    nodeids: list[str] = field(default_factory=list)
    results: Path | None = None  # this boot's folder under .vm/results

    def where(self, name: str) -> str:
        return str((self.results / name).relative_to(ROOT)) if self.results else f".vm/results/*/{name}"


def vng_argv(kernel: Kernel, venv_bin: Path, results: Path, image: Path | None) -> list[str]:
    argv = [str(venv_bin / "vng"), "--disable-kvm", "--force-9p", "--memory", f"{MEMORY_MB}M", "--cpus", str(CPUS),
            "--rwdir", str(results), "--run", str(kernel.image), "--append", f"module_blacklist={','.join(NOT_LOADED)}",
            "--exec", f"bash {GUEST_SCRIPT} {results} {ROOT}"]
    if image is not None:
        # One "--opt=value" word: argparse takes a separate value starting with "-" for an option.
        argv.append(f"--qemu-opts=-drive if=none,id={DISK_ID},file={image},format=raw,readonly=on "
                    f"-device virtio-blk-pci,drive={DISK_ID},serial={DISK_ID}")
    return argv


def guest_pytest_args(nodeids: list[str], results: Path) -> list[str]:
    # (-p options must be on the command line itself: tests/vm/guest.sh.)
    # The host shows the guest's failure text and nothing else: no truncated diffs.
    return ["-q", "-rA", "--durations=0", "-o", "truncation_limit_lines=0", "-o", "truncation_limit_chars=0",
            "-m", MARKER, f"--junitxml={results / 'junit.xml'}",
            "--rootdir", str(ROOT), *nodeids]


def _results_dir() -> Path:
    """A fresh folder for this boot's report (two sessions at once do not mix), old ones pruned."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    runs = sorted(p for p in RESULTS_DIR.iterdir() if p.is_dir())
    for old in runs[:max(0, len(runs) - (KEEP_RESULTS - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    d = RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    d.mkdir()
    return d


def boot_and_run(nodeids: list[str]) -> VMRun:
    """Boot the VM once and run NODEIDS (guest test ids) inside it; never raises for a VM that fails."""
    reason = unavailable_reason()
    if reason is not None:
        return VMRun(skip=reason, nodeids=nodeids)
    kernel = find_kernel()
    assert kernel is not None
    venv_bin = Path(sys.executable).parent
    run = VMRun(kernel=kernel.version, nodeids=nodeids)
    t0 = time.monotonic()
    compiled = precompile(nodeids)  # first: the image carries the bytecode
    image, mounts, run.image_note = python_image()
    run.image_note += "; " + compiled
    run.image_seconds = time.monotonic() - t0
    results = run.results = _results_dir()
    (results / "mounts").write_text("".join(f"{name} {host}\n" for name, host in mounts))
    (results / "pytest.args").write_text("".join(a + "\n" for a in guest_pytest_args(nodeids, results)))
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop(IN_VM_ENV, None)
    t1 = time.monotonic()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Output through a pipe: QEMU reopens a file it is given and loses lines.
    proc = subprocess.Popen(vng_argv(kernel, venv_bin, results, image), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=env, cwd=ROOT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # vng and the QEMU it started: our own process group
        out, _ = proc.communicate()
        out += f"\n[rulegen] the VM did not finish within {TIMEOUT_S} s and was killed\n"
    run.seconds = time.monotonic() - t1
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.qemu_cpu_seconds = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    run.returncode = proc.returncode
    run.console = out
    (results / "console.log").write_text(out)
    try:
        run.report = json.loads((results / "report.json").read_text())
    except (OSError, ValueError):
        run.report = None
    (results / "timing.json").write_text(json.dumps(
        {"kernel": run.kernel, "tests": len(nodeids), "boot_and_tests_s": round(run.seconds, 1),
         "python_image_s": round(run.image_seconds, 1), "python_image": run.image_note,
         "qemu_cpu_s": round(run.qemu_cpu_seconds, 1), "guest": (run.report or {}).get("timeline"),
         "guest_pytest_s": (run.report or {}).get("seconds")}, indent=1) + "\n")
    return run


def console_tail(run: VMRun, lines: int = 40) -> str:
    tail = run.console.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(no console output)"


def outcome_for(run: VMRun, nodeid: str) -> tuple[str, str]:
    """("passed" | "skipped" | "failed", message) for guest test NODEID in RUN (run.skip is handled before)."""
    if run.report is None:
        return "failed", (f"the IPVS VM produced no report (vng exit status {run.returncode}); "
                          f"the end of its console (all of it in {run.where('console.log')}):\n{console_tail(run)}")
    tests = run.report.get("tests", {})
    got = tests.get(nodeid)
    if got is None:
        errors = "".join(f"\n{k}: {v}" for k, v in run.report.get("errors", {}).items())
        return "failed", (f"the VM's pytest did not run {nodeid} (its exit status {run.report.get('exitstatus')})"
                          + (f"; collection errors:{errors}" if errors else ""))
    outcome, message = got.get("outcome"), got.get("message", "")
    if outcome == "passed":
        return "passed", ""
    if outcome == "skipped":
        return "skipped", message
    return "failed", f"in the IPVS VM (kernel {run.report.get('kernel', '?')}):\n{message}"


# ------------------------------------------------------------- pytest parts

_RUN_KEY = pytest.StashKey[VMRun]()
_SELECTED_KEY = pytest.StashKey[list]()


class VMFailure(Exception):
    """A guest test failed, or the VM gave no answer for it; the message says which and why."""


class VMTestItem(pytest.Item):
    """The host's twin of one `ipvs_kernel` test: reports what the test did in the VM."""

    def __init__(self, *, guest_nodeid: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.guest_nodeid = guest_nodeid

    def runtest(self) -> None:
        config = self.config
        run = config.stash.get(_RUN_KEY, None)
        if run is None:
            run = boot_and_run(config.stash.get(_SELECTED_KEY, [self.guest_nodeid]))
            config.stash[_RUN_KEY] = run
        if run.skip is not None:
            pytest.skip(run.skip)
        status, message = outcome_for(run, self.guest_nodeid)
        if status == "skipped":
            pytest.skip(f"skipped in the IPVS VM: {message}")
        if status == "failed":
            raise VMFailure(message)

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        if isinstance(excinfo.value, VMFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.guest_nodeid} (in the IPVS VM)"


def add_vm_twins(items: list[pytest.Item]) -> None:
    """Skip each host copy of an `ipvs_kernel` test and put its VM twin right after it."""
    out: list[pytest.Item] = []
    twins: list[pytest.Item] = []
    for item in items:
        out.append(item)
        if isinstance(item, VMTestItem) or item.get_closest_marker(MARKER) is None:
            continue
        item.add_marker(pytest.mark.skip(reason=HOST_SKIP))
        twin = VMTestItem.from_parent(item.parent, name=item.name + VM_SUFFIX, guest_nodeid=item.nodeid)
        twin.add_marker(MARKER)
        twins.append(twin)
    # Twins run last: the VM boots once, after the fast tests have had their say.
    items[:] = out + twins


def remember_selected(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[_SELECTED_KEY] = [i.guest_nodeid for i in items if isinstance(i, VMTestItem)]


def timeline_text(run: VMRun) -> str:
    """", of it: boot 30 s, Python and pytest up 12 s, ..." from the guest's timeline, or ""."""
    t = (run.report or {}).get("timeline") or {}
    marks = [("boot", t.get("booted")), ("Python and pytest up", t.get("pytest_up")),
             ("collection", t.get("collected")), ("tests", t.get("tests_done"))]
    parts, last = [], 0.0
    for name, at in marks:
        if at is None:
            return ""
        parts.append(f"{name} {at - last:.0f} s")
        last = at
    parts.append(f"shutdown and QEMU's start about {run.seconds - last:.0f} s")
    return "; of it: " + ", ".join(parts)


def terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = config.stash.get(_RUN_KEY, None)
    if run is None:
        return
    if run.skip is not None:
        terminalreporter.write_line(f"IPVS VM: not started: {run.skip}")
        return
    guest = (run.report or {}).get("seconds")
    terminalreporter.write_line(
        f"IPVS VM: kernel {run.kernel}, {len(run.nodeids)} tests; boot, tests and shutdown {run.seconds:.0f} s"
        + (f" (pytest in the guest {guest:.0f} s)" if guest is not None else "")
        + f"; QEMU's CPU {run.qemu_cpu_seconds:.0f} s" + timeline_text(run)
        + (f"; Python image {run.image_note} in {run.image_seconds:.1f} s" if run.image_note else "")
        + f"; console in {run.where('console.log')}")


def _uptime() -> float | None:
    try:
        with open("/proc/uptime") as f:
            return round(float(f.read().split()[0]), 1)
    except (OSError, ValueError, IndexError):
        return None


class GuestReport:
    """Inside the VM: each test's outcome (and message) into the JSON file the host reads.

    With it, the guest's timeline in seconds since the kernel started: when guest.sh began (the boot),
    when pytest was up, when collection ended and when the tests ended.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.tests: dict[str, dict[str, str]] = {}
        self.errors: dict[str, str] = {}
        self.started = time.monotonic()
        boot = os.environ.get(BOOTED_ENV, "")
        self.timeline: dict[str, float | None] = {
            "booted": float(boot) if boot.replace(".", "", 1).isdigit() else None, "pytest_up": _uptime()}

    def pytest_collection_finish(self, session: Any) -> None:
        self.timeline["collected"] = _uptime()

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.errors[report.nodeid or "<collection>"] = report.longreprtext

    def pytest_runtest_logreport(self, report: Any) -> None:
        entry = self.tests.setdefault(report.nodeid, {"outcome": "passed", "message": ""})
        if report.failed:
            phase = "" if report.when == "call" else f"(error in {report.when}) "
            entry.update(outcome="failed", message=entry["message"] + phase + report.longreprtext + "\n")
        elif report.skipped and entry["outcome"] == "passed":
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            entry.update(outcome="skipped", message=reason)

    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        self.timeline["tests_done"] = _uptime()
        data = {"kernel": os.uname().release, "exitstatus": int(exitstatus), "tests": self.tests,
                "errors": self.errors, "seconds": round(time.monotonic() - self.started, 1),
                "timeline": self.timeline}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path)


# ------------------------------------------------------------------- hooks


def pytest_configure(config: pytest.Config) -> None:
    if in_vm() and os.environ.get(REPORT_ENV):
        config.pluginmanager.register(GuestReport(os.environ[REPORT_ENV]), "rulegen-vm-report")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Before -m/-k pick: the twins must be there to be picked.
    if not in_vm():
        add_vm_twins(items)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    # After -m/-k: the guest runs exactly the twins still selected.
    remember_selected(session.config, session.items)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    terminal_summary(terminalreporter, config)
