"""The ipset interface and its real client, the `ipset` tool run inside a network namespace.

`IPSets` loads a payload (`ipset restore`, with `-exist` as kube-proxy runs
it: creating a set that exists with the same settings, adding a member that
is there and deleting one that is not are then not errors) and reads sets
back (`ipset save`, parsed by `model.parse_save`). `ipset restore` is not
atomic: it stops at the first line the kernel refuses, and the lines before
it stay done; the error names that line. `RealIPSets` runs the tool with
`ip netns exec` (through `rulegen.kernel.netns.RealNamespaces.run`), or directly when no
namespace is named. The fake with the same semantics is `fake.FakeIPSets`.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Sequence

from ...kernel.netns import NetnsError, RealNamespaces
from .model import IPSet, IPSetError, classify, parse_save


class IPSets:
    """The ipsets of one network namespace."""

    def restore(self, payload: str, exist: bool = True) -> None:
        """Run PAYLOAD (ipset restore syntax); raise IPSetError naming the first refused line."""
        raise NotImplementedError

    def save(self, name: str | None = None) -> str:
        """`ipset save [NAME]` text; IPSetError (kind "no-set") when NAME does not exist."""
        raise NotImplementedError

    def sets(self, name: str | None = None) -> list[IPSet]:
        """Every set (or set NAME) as records, sorted by name."""
        return sorted(parse_save(self.save(name)), key=lambda s: s.name)

    def names(self) -> list[str]:
        return [s.name for s in self.sets()]


class RealIPSets(IPSets):
    """The `ipset` tool in namespace NETNS (None: the caller's own)."""

    def __init__(self, netns: str | None = None, runner: RealNamespaces | None = None, tool: str = "ipset") -> None:
        self.netns = netns
        self.runner = runner or RealNamespaces()
        self.tool = tool

    def _run(self, argv: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess:
        if shutil.which(self.tool) is None:
            raise IPSetError(f"cannot run {self.tool}: not installed (Debian package ipset)", "other")
        argv = [self.tool, *argv]
        if self.netns is not None:
            return self.runner.run(self.netns, argv, input=input, timeout=300.0)
        try:
            return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=300.0)
        except subprocess.TimeoutExpired:
            raise NetnsError(f"{self.tool} did not finish within 300 s") from None

    def _fail(self, cp: subprocess.CompletedProcess, what: str) -> IPSetError:
        kind, line, message = classify(cp.stderr)
        where = f" (line {line})" if line else ""
        return IPSetError(f"{what}{where}: {message}", kind, line)

    def restore(self, payload: str, exist: bool = True) -> None:
        cp = self._run(["restore"] + (["-exist"] if exist else []), input=payload)
        if cp.returncode != 0:
            raise self._fail(cp, "ipset restore refused the payload")

    def save(self, name: str | None = None) -> str:
        cp = self._run(["save"] + ([name] if name else []))
        if cp.returncode != 0:
            raise self._fail(cp, "ipset save failed")
        return cp.stdout
