"""Fixtures for the tests that run inside the IPVS VM (see tests/vmhelp.py)."""

from __future__ import annotations

import subprocess

import pytest
from nshelp import namespace_names


@pytest.fixture
def netns():
    """A factory of fresh namespaces (lo up), deleted after the test.

    They are made with `ip netns add`, not pyroute2: pyroute2 forks a helper
    and waits for it with a timeout that software emulation can outlast.
    """
    with namespace_names("rgvm") as name:

        def make() -> str:
            n = name()
            subprocess.run(["ip", "netns", "add", n], check=True, capture_output=True)
            subprocess.run(["ip", "-n", n, "link", "set", "lo", "up"], check=True, capture_output=True)
            return n

        yield make
