"""Namespaces made by a test: unique names, deleted afterwards whatever happens, and checked gone."""

from __future__ import annotations

import os
import subprocess
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def namespace_names(prefix: str) -> Iterator[Callable[[], str]]:
    """Yield a factory of fresh `<prefix>-xxxxxxxx` names; every name it gave is deleted on exit."""
    names: list[str] = []

    def name() -> str:
        n = f"{prefix}-{uuid.uuid4().hex[:8]}"
        names.append(n)
        return n

    try:
        yield name
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        leftover = [n for n in names if os.path.exists(f"/run/netns/{n}")]
        assert not leftover, f"namespaces left behind: {leftover}"
