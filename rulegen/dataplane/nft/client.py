"""The nft client: run an `nft -f` script, check one, and list tables, inside one network namespace.

`Nft` is what an nftables applier, diff and the lab use. `run` sends a
script as one transaction (all or nothing; `check=True` is `nft -c`, which
the kernel validates and commits nothing); a refusal is an `NftRunError`
naming the script line nft blamed. `list_table` and `list_ruleset` give
`nft list` text, which `parse.parse_listing` reads; `generation` is the
namespace's nf_tables generation, the same counter iptables-nft commits
bump. A client whose `netlink` is true also sends raw nf_tables batches
(`send`, messages of `netlink.Encoder`), which spares nft's cache load and
parse for the shapes the encoder knows; a batch may be bound to a
generation, and the kernel then refuses it whole (`NetlinkError`, errno
ERESTART) when anyone committed since. The loader uses it when it is
there and sends the same operations as nft text otherwise. `RealNft`
runs `nft` with `ip netns exec` and keeps one netlink socket per
namespace (`close` drops them); `fake.FakeNft` runs the same scripts in
memory and has no netlink (tests/dataplane/test_parity.py checks the
two agree).
"""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING

from ...diagnostics import UsageError
from ...kernel.netns import Namespaces, NetnsError, RealNamespaces

if TYPE_CHECKING:
    from .netlink import Msg

# nft: "/dev/stdin:2:19-22: Error: Could not process rule: No such file or directory"
_STDIN_LINE = re.compile(r"^/dev/stdin:(\d+):[\d-]*:? *(?:Error: )?(.*)$", re.M)


class NftRunError(UsageError):
    """nft refused a script; `line_no`/`line` name the refused line (1-based) when nft said which."""

    def __init__(self, message: str, line_no: int | None = None, line: str | None = None,
                 stderr: str = "") -> None:
        super().__init__(message)
        self.line_no = line_no
        self.line = line
        self.stderr = stderr


def run_error(script: str, stderr: str, check: bool = False) -> NftRunError:
    """nft's complaint mapped back to the script line it names."""
    tool = "nft -c" if check else "nft"
    m = _STDIN_LINE.search(stderr)
    if m is None:
        reason = " ".join(stderr.split())
        return NftRunError(f"{tool} failed" + (f": {reason}" if reason else ""), stderr=stderr)
    no, reason = int(m.group(1)), m.group(2).strip()
    lines = script.splitlines()
    text = lines[no - 1] if 0 < no <= len(lines) else None
    if text is None:
        return NftRunError(f"{tool} failed: {reason}", no, None, stderr)
    return NftRunError(f"{tool} refused line {no} of the script: {text} ({reason})", no, text, stderr)


class Nft:
    """The nft interface. Signatures here are stable: appliers, diff and the lab call them."""

    netlink = False  # whether `send` works (raw nf_tables batches)

    def run(self, name: str, script: str, check: bool = False) -> None:
        """`nft -f -` of SCRIPT in NAME as one transaction (`check`: `nft -c`, nothing committed)."""
        raise NotImplementedError

    def list_table(self, name: str, family: str, table: str) -> str | None:
        """`nft list table FAMILY TABLE`; None when NAME has no such table."""
        raise NotImplementedError

    def list_ruleset(self, name: str) -> str:
        """`nft list ruleset`: every table of NAME."""
        raise NotImplementedError

    def generation(self, name: str) -> int | None:
        """nf_tables' ruleset generation in NAME (see `kernel.netns.Namespaces.nft_generation`)."""
        raise NotImplementedError

    def send(self, name: str, msgs: list[Msg], gen: int | None = None) -> None:
        """MSGS as one nf_tables batch in NAME; with GEN, refused whole (ERESTART) unless still at GEN."""
        raise NotImplementedError("this nft client sends no raw netlink")

    def close(self) -> None:
        """Let go of what the client holds open (sockets)."""


class RealNft(Nft):
    """The `nft` program, run with `ip netns exec`, and raw netlink batches over a socket per namespace."""

    netlink = True

    def __init__(self, namespaces: Namespaces | None = None) -> None:
        self.netns = namespaces if namespaces is not None else RealNamespaces()
        self._socks: dict[str, tuple[str, socket.socket]] = {}  # namespace -> (its identity, socket)

    def _exec(self, name: str, argv: list[str], input: str | None = None, timeout: float = 300.0):
        ns = self.netns
        assert isinstance(ns, RealNamespaces)
        ns.need(name)
        return ns.exec(name, argv, input=input, timeout=timeout)

    def run(self, name: str, script: str, check: bool = False) -> None:
        argv = ["nft"] + (["-c"] if check else []) + ["-f", "-"]
        cp = self._exec(name, argv, input=script, timeout=900.0)
        if cp.returncode != 0:
            raise run_error(script, cp.stderr, check)

    def list_table(self, name: str, family: str, table: str) -> str | None:
        cp = self._exec(name, ["nft", "list", "table", family, table])
        if cp.returncode != 0:
            if "No such file or directory" in cp.stderr:
                return None
            raise NetnsError(f"nft list table {family} {table} in namespace {name!r} failed: {cp.stderr.strip()}")
        return cp.stdout

    def list_ruleset(self, name: str) -> str:
        cp = self._exec(name, ["nft", "list", "ruleset"])
        if cp.returncode != 0:
            raise NetnsError(f"nft list ruleset in namespace {name!r} failed: {cp.stderr.strip()}")
        return cp.stdout

    def generation(self, name: str) -> int | None:
        return self.netns.nft_generation(name)

    def _sock(self, name: str) -> socket.socket:
        from .netlink import open_socket

        ident = self.netns.identity(name)
        got = self._socks.get(name)
        if got is not None and got[0] == ident:
            return got[1]
        if got is not None:  # the namespace was made again: a socket of the old one reaches nothing of ours
            got[1].close()
        if isinstance(self.netns, RealNamespaces):
            self.netns.need(name)
        sock = open_socket(name)
        self._socks[name] = (ident, sock)
        return sock

    def send(self, name: str, msgs: list[Msg], gen: int | None = None) -> None:
        from .netlink import send

        send(self._sock(name), msgs, gen)

    def close(self) -> None:
        for _, sock in self._socks.values():
            sock.close()
        self._socks.clear()
