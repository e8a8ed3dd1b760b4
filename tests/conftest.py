"""Shared test set-up: the `root` marker skips with a reason off-root or without the tools;
`ipvs_kernel` tests run inside the IPVS VM (the plugin tests/vmhelp.py)."""

from __future__ import annotations

import os
import shutil

import pytest

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
    # tests/test_golden.py: rewrite fixtures/*/expected.* from the compiler
    # (review the result with `git diff` before committing it).
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden fixtures' expected files instead of comparing")
