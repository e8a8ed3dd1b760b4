"""The xtables client: iptables-save, iptables-restore and single rules, inside one network namespace.

`Xtables` is what an applier, diff and the lab use: dump a family's tables
(`save`), load a payload (`restore`, iptables-restore `--noflush`,
`--test` for a dry check), check and insert single rules (`-C` / `-I`),
list a few chains (`list_chains`), make the nfacct counters rules count
into, say which iptables backend a namespace uses (`backend_for`) and the
nf_tables generation that proves an apply cache fresh (`generation`;
legacy iptables has none). `RealXtables` runs the tools with `ip netns
exec` through `kernel.netns.RealNamespaces`; `fake.FakeXtables` keeps the
tables in memory with the same semantics.

Both iptables backends are reachable: `nft` (iptables-nft) and `legacy`
(iptables-legacy); `auto` picks per namespace as kube-proxy's
iptables-wrapper would (`restore.choose_backend`): the backend that
already has tables there, else the one the system `iptables` is.
"""

from __future__ import annotations

import errno
import os
import shlex
import subprocess
from typing import Sequence

from ...kernel import netlink as nl
from ...kernel.netns import NetnsError, RealNamespaces, netlink_socket_in
from .restore import (
    IPTABLES_TABLES,
    ApplyError,
    backend_tool,
    check_backend,
    choose_backend,
    nft_payload,
    renumber,
    restore_error,
    split_listing,
    system_backend,
)


class Xtables:
    """The xtables interface. Signatures here are stable: appliers, diff and the lab call them."""

    def backend_for(self, name: str, family: int = 4) -> str:
        """The iptables backend ("nft" or "legacy") this client uses in namespace NAME ("" if unknown)."""
        return ""

    def generation(self, name: str, family: int = 4) -> int | None:
        """A counter the kernel bumps on every committed rule change in NAME (one per table
        a restore commits; `--test`, `-C` and listings leave it), or None when the
        backend has none (legacy) or it cannot be read."""
        return None

    def list_chains(self, name: str, family: int, table: str,
                    chains: Sequence[str]) -> dict[str, list[str]] | None:
        """The live rule bodies of CHAINS (iptables-save spelling), or None if one is missing
        (or this implementation cannot list)."""
        return None

    def save(self, name: str, family: int = 4, table: str | None = None) -> str:
        """`iptables-save` (`ip6tables-save`) of NAME: every table, or TABLE."""
        raise NotImplementedError

    def restore(self, name: str, payload: str, family: int = 4, test: bool = False) -> None:
        """`iptables-restore --noflush [--test]`; raises ApplyError naming the refused line."""
        raise NotImplementedError

    def check_rule(self, name: str, table: str, chain: str, args: str, family: int = 4) -> bool:
        """`iptables -t TABLE -C CHAIN ARGS`: is this rule present?"""
        raise NotImplementedError

    def insert_rule(self, name: str, table: str, chain: str, args: str, family: int = 4,
                    position: int = 1) -> None:
        raise NotImplementedError

    def ensure_nfacct(self, name: str, counters: Sequence[str]) -> None:
        """Create the named nfacct counters (as kube-proxy does) unless they exist."""
        raise NotImplementedError


class RealXtables(Xtables):
    """The iptables tools run with `ip netns exec`. BACKEND is "auto", "nft" or "legacy"."""

    def __init__(self, namespaces: RealNamespaces | None = None, backend: str = "auto") -> None:
        check_backend(backend)
        self.netns = namespaces if namespaces is not None else RealNamespaces()
        self.backend = backend
        self._chosen: dict[tuple[str, int], str] = {}
        self.netns.on_change(self._forget)

    def _forget(self, name: str) -> None:
        for key in [k for k in self._chosen if k[0] == name]:
            del self._chosen[key]

    def backend_for(self, name: str, family: int = 4) -> str:
        if self.backend != "auto":
            return self.backend
        key = (name, family)
        if key not in self._chosen:
            tables: dict[str, frozenset[str]] = {}
            if self.netns.exists(name) and os.geteuid() == 0:
                f = self.netns.facts(name, family)
                tables = {"nft": f.nft_tables & IPTABLES_TABLES, "legacy": f.legacy_tables & IPTABLES_TABLES}
            present = {b for b, t in tables.items() if t}
            # Ask only where a nat table exists: listing a legacy table that is
            # not there would make the kernel create it.
            chosen = choose_backend("auto", system_backend(), present,
                                    lambda b: "nat" in tables[b] and self._has_kube(name, family, b))
            if not present:
                return chosen  # not remembered: the first load decides for good
            self._chosen[key] = chosen
        return self._chosen[key]

    def _has_kube(self, name: str, family: int, backend: str) -> bool:
        try:
            tool = backend_tool("", family, backend)
        except NetnsError:
            return False
        cp = self.netns.exec(name, [tool, "-w", "5", "-t", "nat", "-S", "KUBE-SERVICES", "1"])
        return cp.returncode == 0

    def generation(self, name: str, family: int = 4) -> int | None:
        self.netns.need(name)
        if self.backend_for(name, family) != "nft":
            return None
        return self.netns.nft_generation(name)

    def _tool(self, kind: str, name: str, family: int) -> str:
        return backend_tool(kind, family, self.backend_for(name, family))

    def save(self, name: str, family: int = 4, table: str | None = None) -> str:
        self.netns.need(name)
        tool = self._tool("save", name, family)
        argv = [tool] + (["-t", table] if table else [])
        cp = self.netns.exec(name, argv, timeout=300.0)
        if cp.returncode != 0:
            raise NetnsError(f"{tool} in namespace {name!r} failed: {cp.stderr.strip()}")
        return cp.stdout

    def restore(self, name: str, payload: str, family: int = 4, test: bool = False) -> None:
        self.netns.need(name)
        backend = self.backend_for(name, family)
        tool = backend_tool("restore", family, backend)
        argv = [tool, "--noflush"] + (["--test"] if test else [])
        sent, where = (nft_payload(payload) if backend == "nft" else (payload, None))
        cp = self.netns.exec(name, argv, input=sent, timeout=900.0, stdout=subprocess.DEVNULL)
        if cp.returncode < 0 and where is not None:
            # Killed while listing (iptables-nft sorts chains recursively and a
            # table whose chains were made in name order can overflow its stack);
            # it had committed nothing, so send the payload as it is.
            sent, where = payload, None
            cp = self.netns.exec(name, argv, input=sent, timeout=900.0, stdout=subprocess.DEVNULL)
        if cp.returncode != 0:
            stderr = cp.stderr
            if where is not None:
                stderr = renumber(stderr, where)
            raise restore_error(payload, stderr, tool + (" --test" if test else ""))

    def list_chains(self, name: str, family: int, table: str,
                    chains: Sequence[str]) -> dict[str, list[str]] | None:
        self.netns.need(name)
        if not chains:
            return {}
        backend = self.backend_for(name, family)
        # iptables-nft-restore runs listings only when not testing (they commit
        # nothing); iptables-legacy-restore runs them in --test, which writes nothing.
        argv = [backend_tool("restore", family, backend), "--noflush"] + (["--test"] if backend == "legacy" else [])
        payload = f"*{table}\n" + "".join(f"-S {c}\n" for c in chains) + "COMMIT\n"
        cp = self.netns.exec(name, argv, input=payload, timeout=300.0)
        if cp.returncode != 0:
            return None
        return split_listing(cp.stdout, chains)

    def check_rule(self, name: str, table: str, chain: str, args: str, family: int = 4) -> bool:
        self.netns.need(name)
        cp = self.netns.exec(name, [self._tool("", name, family), "-w", "5", "-t", table, "-C", chain,
                                    *shlex.split(args)])
        return cp.returncode == 0

    def insert_rule(self, name: str, table: str, chain: str, args: str, family: int = 4,
                    position: int = 1) -> None:
        self.netns.need(name)
        argv = [self._tool("", name, family), "-w", "5", "-t", table, "-I", chain, str(position),
                *shlex.split(args)]
        cp = self.netns.exec(name, argv)
        if cp.returncode != 0:
            raise ApplyError(f"{' '.join(argv[:6])} ... failed: {cp.stderr.strip()}", stderr=cp.stderr)

    def ensure_nfacct(self, name: str, counters: Sequence[str]) -> None:
        if not counters:
            return
        self.netns.need(name)
        sock = netlink_socket_in(name)
        try:
            for seq, counter in enumerate(counters, 1):
                err = nl.nfacct_new(sock, counter, seq)
                # EBUSY: the counter exists already (no NLM_F_REPLACE, so its count is kept).
                if err not in (0, errno.EBUSY, errno.EEXIST):
                    raise NetnsError(
                        f"cannot create nfacct counter {counter!r} in namespace {name!r}: "
                        f"{os.strerror(err)} (the kernel may lack nfnetlink_acct; use --no-nfacct)")
        finally:
            sock.close()
