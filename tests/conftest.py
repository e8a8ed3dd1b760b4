"""Shared test set-up, once for every folder of tests.

The `root` marker skips with a reason off-root or without the tools;
`--update-golden` rewrites the golden fixtures. The fixtures every layer
uses: `compile_objs` (Kubernetes objects as dicts → a full `Compiled`),
`cli` (the click command line, run in-process, failing the test on a
leaked exception) and `kernel` (a fresh `Kernel.fake()`: fake namespaces
with the fake xtables and nft clients over them).

Layout: core/ (loader, settings, plan, naming, golden, CLI, packaging,
architecture), backends/<mode>/ (each mode's compiler, its golden files,
and its apply, trace and diff), dataplane/ (object models, text formats
and the fake clients; parity with the kernel where root), kernel/ (real
namespaces: root).

`ipvs_kernel` tests run inside the IPVS VM (the plugin tests/vmhelp.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from rgtest import compile_objects, run_cli

from rulegen.apply.kernel import Kernel

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

pytest_plugins = ["vmhelp"]


def pytest_collection_modifyitems(config, items):
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (network namespaces and iptables)"
    elif not shutil.which("iptables-restore") or not shutil.which("ip"):
        reason = "needs iptables-restore and iproute2 (make test installs them)"
    if reason:
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)


def pytest_addoption(parser):
    # tests/core/test_golden.py: rewrite fixtures/*/expected.* from the compiler
    # (review the result with `git diff` before committing it).
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden fixtures' expected files instead of comparing")


@pytest.fixture(scope="session")
def compile_objs():
    """`compile_objs(objs, flags=None, *, file="test.yaml", report=None)` → a full Compiled."""
    return compile_objects


@pytest.fixture(scope="session")
def cli():
    """`cli(*args, input=None)` → click's Result of `rulegen ARGS...`, run in-process."""
    return run_cli


@pytest.fixture
def kernel() -> Kernel:
    """A fresh fake kernel: `kernel.netns` (FakeNamespaces), `kernel.xtables`, `kernel.nft`."""
    return Kernel.fake()
