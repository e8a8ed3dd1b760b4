"""In-memory namespaces: what `netns.RealNamespaces` does, for tests and for the fake data-plane clients.

Each `FakeNamespace` holds what the kernel keeps per namespace and every
data plane shares: its sysctls, its nfacct counters, and nf_tables' ruleset
generation (`gen`), which every fake client that commits through nf_tables
(iptables-nft, nft) bumps, as the kernel does. The data-plane fakes keep
their own objects in `objects[<client>]`, so one `FakeNamespaces` serves
them all and deleting a namespace deletes everything in it.
"""

from __future__ import annotations

import itertools
import subprocess
from dataclasses import dataclass, field
from typing import Any, Sequence

from .netns import Namespaces, NetnsError, check_name


@dataclass
class FakeNamespace:
    ident: int
    gen: int = 1  # nf_tables' generation: one step per committed transaction through nf_tables
    nfacct: set[str] = field(default_factory=set)
    sysctls: dict[str, str] = field(default_factory=dict)
    objects: dict[str, Any] = field(default_factory=dict)  # each fake client's own state, by client


class FakeNamespaces(Namespaces):
    """Namespaces in memory; `log` records every call, oldest first."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.spaces: dict[str, FakeNamespace] = {}
        self.log: list[tuple] = []

    def create(self, name: str) -> None:
        check_name(name)
        if name in self.spaces:
            raise NetnsError(f"network namespace {name!r} already exists")
        self.spaces[name] = FakeNamespace(next(self._ids))
        self.log.append(("create", name))

    def delete(self, name: str) -> None:
        self.spaces.pop(name, None)
        self.log.append(("delete", name))

    def exists(self, name: str) -> bool:
        return name in self.spaces

    def list(self) -> list[str]:
        return sorted(self.spaces)

    def identity(self, name: str) -> str:
        ns = self.spaces.get(name)
        return f"fake:{ns.ident}" if ns else ""

    def get(self, name: str) -> FakeNamespace:
        """The namespace NAME; NetnsError when there is none (as the kernel clients say)."""
        ns = self.spaces.get(name)
        if ns is None:
            raise NetnsError(f"network namespace {name!r} does not exist")
        return ns

    def nft_generation(self, name: str) -> int | None:
        return self.get(name).gen

    def set_sysctl(self, name: str, key: str, value: str) -> None:
        self.get(name).sysctls[key] = value
        self.log.append(("sysctl", name, key, value))

    def sysctl(self, name: str, key: str) -> str | None:
        return self.get(name).sysctls.get(key)

    def run(self, name: str, argv: Sequence[str], input: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess:
        self.get(name)
        self.log.append(("run", name, tuple(argv)))
        return subprocess.CompletedProcess(list(argv), 0, "", "")
