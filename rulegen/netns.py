"""Everything that touches the kernel's network namespaces and netfilter tables.

`Netns` is the small interface apply, lab and diff use: create / delete /
list namespaces, dump a family's tables (`iptables-save`), load a payload
(`iptables-restore --noflush`, `--test` for a dry check), check and insert
single rules (`-C` / `-I`), create nfacct counters, set a sysctl, and run a
command inside a namespace. `RealNetns` does it with pyroute2, iproute2 and
the iptables tools; `FakeNetns` keeps every namespace's tables in memory
with iptables-restore `--noflush` semantics (a declared chain is flushed or
created, `-A` appends, `-I` inserts, `-D` deletes one rule, by its spec or
its number, `-X` deletes an empty unreferenced chain, each table commits at
`COMMIT` and a refused line leaves its table as it was), so apply logic is
tested without root. Its dump is in iptables-save syntax, so the same parser
reads both.

Both iptables backends are reachable (`RealNetns(backend=...)`): `nft`
(iptables-nft, what current distributions ship as `iptables`) and `legacy`
(iptables-legacy, x_tables). `auto` picks per namespace as kube-proxy's
iptables-wrapper would: the backend that already has tables there, else the
one the system `iptables` is. Two cheap probes serve apply's cache:
`generation` (nf_tables' ruleset generation id, which the kernel bumps on
every committed change in the namespace; legacy has none) and an `identity`
that includes the namespace cookie, which is never reused while the machine
is up, unlike the inode number. iptables-nft-restore (1.8.x) keeps the chains
a `--noflush` payload names in a sorted linked list, so a payload naming N
chains in M lines costs O(N*M) string compares (minutes at 10k Services); a
`-S` line ahead of the bulk of such a table makes it fetch all chains
instead (see `nft_payload`). `-S` only lists (to /dev/null), so the rules
sent are unchanged.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import re
import shlex
import shutil
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .backends.iptables.ir import BUILTIN_CHAINS
from .diagnostics import UsageError

NETNS_DIR = "/run/netns"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# iptables-restore: "line 9: RULE_APPEND failed ..." (nf_tables) or
# "Error occurred at line: 8" / "line 8 failed" (legacy and parse errors).
_LINE_RE = re.compile(r"\bline:?\s+(\d+)")
BACKENDS = ("auto", "nft", "legacy")
IPTABLES_TABLES = frozenset(BUILTIN_CHAINS)
# Above this (lines x chains named) in one table, iptables-nft-restore's
# per-chain cache list costs more than fetching the whole table (see above).
NFT_CHAIN_LIST_MAX = 100_000_000


class NetnsError(UsageError):
    """A namespace or tool problem the user has to fix (exit 2)."""


class ApplyError(UsageError):
    """iptables-restore refused a payload; `line_no`/`line` name the refused line (1-based)."""

    def __init__(self, message: str, line_no: int | None = None, line: str | None = None,
                 stderr: str = "", table: str | None = None) -> None:
        super().__init__(message)
        self.line_no = line_no
        self.line = line
        self.stderr = stderr
        self.table = table


def check_name(name: str) -> str:
    """A namespace name that is safe as a file name under /run/netns."""
    if not _NAME_RE.match(name or ""):
        raise NetnsError(f"--netns {name!r}: not a valid namespace name (letters, digits, '_', '.', '-'; at most 64)")
    return name


def check_backend(name: str) -> str:
    """An --iptables-backend value that is one of BACKENDS."""
    if name not in BACKENDS:
        raise NetnsError(f"--iptables-backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return name


def restore_error(payload: str, stderr: str, tool: str, table: str | None = None) -> ApplyError:
    """Map iptables-restore's complaint back to the payload line it refused."""
    lines = payload.splitlines()
    m = _LINE_RE.search(stderr)
    no = int(m.group(1)) if m else None
    text = lines[no - 1] if no and 0 < no <= len(lines) else None
    reason = restore_reason(stderr)
    missing = _MISSING_RE.search(reason)
    if no and text == "COMMIT" and missing:
        # nf_tables checks jump targets when the table commits and blames
        # COMMIT; name the first rule of that table that jumps to the chain.
        for i in range(no - 2, -1, -1):
            ln = lines[i]
            if ln.startswith("*"):
                break
            if ln.startswith(("-A ", "-I ")) and rule_target(ln) == missing.group(1):
                no, text = i + 1, ln
    table = table or _table_at(lines, no)
    if text is not None:
        msg = f"{tool} refused line {no} of the payload: {text}" + (f" ({reason})" if reason else "")
    else:
        msg = f"{tool} failed" + (f": {reason}" if reason else "")
    return ApplyError(msg, no, text, stderr, table)


_MISSING_RE = re.compile(r"Chain '([^']+)' does not exist")


def _table_at(lines: list[str], no: int | None) -> str | None:
    for i in range((no or 0) - 1, -1, -1):
        if lines[i].startswith("*"):
            return lines[i][1:].strip()
    return None


def restore_reason(stderr: str) -> str:
    """iptables-restore's complaint without its banner, usage hint and line number."""
    keep = []
    for ln in stderr.splitlines():
        ln = ln.strip()
        if not ln or ln.startswith(("Try `", "Error occurred at line", "#")):
            continue  # "#": iptables-nft's "# Warning: iptables-legacy tables present"
        ln = re.sub(r"^\S+-restore v[\d.]+ \([^)]*\):\s*", "", ln)
        ln = re.sub(r"^line \d+:\s*", "", ln)
        if ln:
            keep.append(ln)
    return "; ".join(keep)


_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')


def rule_target(spec: str) -> str | None:
    """The `-j`/`-g` target of a rule body (quoted comments are skipped whole)."""
    toks = _TOKEN_RE.findall(spec)
    for i, t in enumerate(toks[:-1]):
        if t in ("-j", "-g", "--jump", "--goto"):
            return toks[i + 1]
    return None


def save_tool(family: int) -> str:
    return "ip6tables-save" if family == 6 else "iptables-save"


def restore_tool(family: int) -> str:
    return "ip6tables-restore" if family == 6 else "iptables-restore"


def rule_tool(family: int) -> str:
    return "ip6tables" if family == 6 else "iptables"


_SYSTEM_BACKEND: list[str] = []


def system_backend() -> str:
    """What the plain `iptables` command is on this machine: "nft" or "legacy" (`iptables -V`)."""
    if not _SYSTEM_BACKEND:
        try:
            out = subprocess.run(["iptables", "-V"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        # "iptables v1.8.9 (nf_tables)" / "(legacy)"; before 1.8 there was only legacy.
        _SYSTEM_BACKEND.append("nft" if "nf_tables" in out else "legacy" if out else "nft")
    return _SYSTEM_BACKEND[0]


def choose_backend(requested: str, system: str, present: set[str] | frozenset[str],
                   has_kube: Callable[[str], bool] = lambda b: False) -> str:
    """The backend to use in one namespace, as kube-proxy's iptables-wrapper decides.

    An explicit "nft"/"legacy" wins. For "auto": the backend that already has
    iptables tables in the namespace; if both have, the one whose nat table
    has kube-proxy's KUBE-SERVICES (asked only then: it costs a process);
    otherwise, and on a fresh namespace, the system's `iptables`.
    """
    check_backend(requested)
    if requested != "auto":
        return requested
    if len(present) == 1:
        return next(iter(present))
    if len(present) == 2:
        kube = [b for b in ("nft", "legacy") if has_kube(b)]
        if len(kube) == 1:
            return kube[0]
    return system


def backend_tool(kind: str, family: int, backend: str) -> str:
    """The iptables program for KIND ("", "save", "restore") in BACKEND, e.g. iptables-nft-restore.

    Systems that ship only the plain names get them for their own backend.
    """
    base = rule_tool(family)
    suffix = f"-{kind}" if kind else ""
    name = f"{base}-{backend}{suffix}"
    if shutil.which(name):
        return name
    if backend == system_backend() and shutil.which(base + suffix):
        return base + suffix
    raise NetnsError(f"{name} is not installed (needed for --iptables-backend {backend})")


class Netns:
    """The kernel interface. Signatures here are stable: lab and diff call them too."""

    def create(self, name: str) -> None:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def list(self) -> list[str]:
        raise NotImplementedError

    def identity(self, name: str) -> str:
        """Changes when a namespace of this name is deleted and made again (cache key)."""
        raise NotImplementedError

    def require_root(self, what: str = "rulegen") -> None:
        """Raise NetnsError when this implementation cannot work as the current user."""

    def backend_for(self, name: str, family: int = 4) -> str:
        """The iptables backend ("nft" or "legacy") this object uses in namespace NAME ("" if unknown)."""
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

    def iptables_save(self, name: str, family: int = 4, table: str | None = None) -> str:
        raise NotImplementedError

    def iptables_restore(self, name: str, payload: str, family: int = 4, test: bool = False) -> None:
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

    def set_sysctl(self, name: str, key: str, value: str) -> None:
        raise NotImplementedError

    def run(self, name: str, argv: Sequence[str], input: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess:
        raise NotImplementedError


# ---------------------------------------------------------------------- real


_CLONE_NEWNET = 0x40000000
_NFNL_SUBSYS_ACCT = 7
_NFNL_MSG_ACCT_NEW = 0
_NFACCT_NAME = 1
_NFNL_SUBSYS_NFTABLES = 10
_NFT_MSG_GETTABLE, _NFT_MSG_GETGEN = 1, 16
_NFTA_TABLE_NAME, _NFTA_GEN_ID = 1, 1
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP, _NLM_F_CREATE = 0x1, 0x4, 0x300, 0x400
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NETLINK_NETFILTER = 12
_SO_NETNS_COOKIE = 71  # Linux 5.14+: a 64-bit id of the socket's namespace, never reused until reboot
_NFPROTO = {4: 2, 6: 10}  # NFPROTO_IPV4, NFPROTO_IPV6


@dataclass
class NetnsFacts:
    """What one visit inside a namespace learns (see `RealNetns._facts`)."""

    cookie: int | None  # SO_NETNS_COOKIE, None on kernels without it
    genid: int | None  # nf_tables ruleset generation
    nft_tables: frozenset[str]  # iptables tables nf_tables holds for the family (ip / ip6)
    legacy_tables: frozenset[str]  # x_tables tables instantiated for the family


class RealNetns(Netns):
    """Namespaces via pyroute2, tables via the iptables tools run with `ip netns exec`.

    BACKEND is "auto" (per namespace, see `choose_backend`), "nft" or "legacy".
    """

    def __init__(self, backend: str = "auto") -> None:
        check_backend(backend)
        self.backend = backend
        self._chosen: dict[tuple[str, int], str] = {}

    def require_root(self, what: str = "rulegen") -> None:
        if os.geteuid() != 0:
            raise NetnsError(f"{what} needs root (network namespaces and iptables-restore); run it as root or with sudo")

    def _need(self, name: str) -> None:
        check_name(name)
        self.require_root()
        if not self.exists(name):
            raise NetnsError(f"network namespace {name!r} does not exist")

    def create(self, name: str) -> None:
        check_name(name)
        self.require_root()
        if self.exists(name):
            raise NetnsError(f"network namespace {name!r} already exists")
        from pyroute2 import netns as pnetns

        try:
            pnetns.create(name)
        except OSError as e:
            raise NetnsError(f"cannot create network namespace {name!r}: {e.strerror or e}") from None
        self._forget(name)
        # A new namespace has its loopback down; most uses expect it up.
        self._run_raw(name, ["ip", "link", "set", "lo", "up"], check=False)

    def delete(self, name: str) -> None:
        check_name(name)
        self.require_root()
        self._forget(name)
        if not self.exists(name):
            return
        from pyroute2 import netns as pnetns

        try:
            pnetns.remove(name)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise NetnsError(f"cannot delete network namespace {name!r}: {e.strerror or e}") from None

    def _forget(self, name: str) -> None:
        for key in [k for k in self._chosen if k[0] == name]:
            del self._chosen[key]

    def exists(self, name: str) -> bool:
        check_name(name)
        return os.path.exists(os.path.join(NETNS_DIR, name))

    def list(self) -> list[str]:
        try:
            return sorted(os.listdir(NETNS_DIR))
        except FileNotFoundError:
            return []

    def identity(self, name: str) -> str:
        try:
            st = os.stat(os.path.join(NETNS_DIR, name))
        except OSError:
            return ""
        ident = f"{st.st_dev}:{st.st_ino}"
        # The inode is the namespace's number, which the kernel reuses once a
        # namespace is gone; the cookie is not reused until reboot, and the
        # boot id covers a state directory that outlives a reboot.
        cookie = None
        if os.geteuid() == 0:
            try:
                cookie = self._facts(name, 4, tables=False).cookie
            except NetnsError:
                cookie = None
        if cookie is None:
            return ident
        return f"{ident}:{cookie}:{_boot_id()}"

    def _facts(self, name: str, family: int, tables: bool = True) -> NetnsFacts:
        """Cookie, nf_tables generation and which iptables tables exist, from one visit."""

        def work() -> NetnsFacts:
            legacy: frozenset[str] = frozenset()
            if tables:
                proc = "/proc/thread-self/net/" + ("ip6_tables_names" if family == 6 else "ip_tables_names")
                try:
                    with open(proc) as f:
                        legacy = frozenset(f.read().split()) & IPTABLES_TABLES
                except OSError:
                    legacy = frozenset()  # x_tables not loaded: no legacy tables anywhere
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
            try:
                try:
                    cookie: int | None = int.from_bytes(
                        sock.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8), "little")
                except OSError:
                    cookie = None
                genid = _nft_genid(sock)
                nft = _nft_tables(sock, family) & IPTABLES_TABLES if tables else frozenset()
            finally:
                sock.close()
            return NetnsFacts(cookie, genid, nft, legacy)

        return _in_netns(name, work)

    def backend_for(self, name: str, family: int = 4) -> str:
        if self.backend != "auto":
            return self.backend
        key = (name, family)
        if key not in self._chosen:
            tables: dict[str, frozenset[str]] = {}
            if self.exists(name) and os.geteuid() == 0:
                f = self._facts(name, family)
                tables = {"nft": f.nft_tables, "legacy": f.legacy_tables}
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
        cp = self._run_raw(name, [tool, "-w", "5", "-t", "nat", "-S", "KUBE-SERVICES", "1"])
        return cp.returncode == 0

    def generation(self, name: str, family: int = 4) -> int | None:
        self._need(name)
        if self.backend_for(name, family) != "nft":
            return None
        try:
            f = self._facts(name, family, tables=False)
        except NetnsError:
            return None
        # Without the cookie a namespace made again under the same inode
        # could show an old generation number: then no generation at all.
        return f.genid if f.cookie is not None else None

    def _tool(self, kind: str, name: str, family: int) -> str:
        return backend_tool(kind, family, self.backend_for(name, family))

    def _run_raw(self, name: str, argv: Sequence[str], input: str | None = None, timeout: float = 30.0,
                 check: bool = False, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess:
        try:
            cp = subprocess.run(["ip", "netns", "exec", name, *argv], input=input, stdout=stdout,
                                stderr=subprocess.PIPE, text=True, timeout=timeout)
        except FileNotFoundError as e:
            raise NetnsError(f"cannot run {e.filename or argv[0]}: not installed") from None
        except subprocess.TimeoutExpired:
            raise NetnsError(f"{argv[0]} in namespace {name!r} did not finish within {timeout:g} s") from None
        if check and cp.returncode != 0:
            raise NetnsError(f"{' '.join(argv)} in namespace {name!r} failed: {cp.stderr.strip()}")
        return cp

    def run(self, name: str, argv: Sequence[str], input: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess:
        self._need(name)
        return self._run_raw(name, argv, input, timeout)

    def iptables_save(self, name: str, family: int = 4, table: str | None = None) -> str:
        self._need(name)
        tool = self._tool("save", name, family)
        argv = [tool] + (["-t", table] if table else [])
        cp = self._run_raw(name, argv, timeout=300.0)
        if cp.returncode != 0:
            raise NetnsError(f"{tool} in namespace {name!r} failed: {cp.stderr.strip()}")
        return cp.stdout

    def iptables_restore(self, name: str, payload: str, family: int = 4, test: bool = False) -> None:
        self._need(name)
        backend = self.backend_for(name, family)
        tool = backend_tool("restore", family, backend)
        argv = [tool, "--noflush"] + (["--test"] if test else [])
        sent, where = (nft_payload(payload) if backend == "nft" else (payload, None))
        cp = self._run_raw(name, argv, input=sent, timeout=900.0, stdout=subprocess.DEVNULL)
        if cp.returncode < 0 and where is not None:
            # Killed while listing (iptables-nft sorts chains recursively and a
            # table whose chains were made in name order can overflow its stack);
            # it had committed nothing, so send the payload as it is.
            sent, where = payload, None
            cp = self._run_raw(name, argv, input=sent, timeout=900.0, stdout=subprocess.DEVNULL)
        if cp.returncode != 0:
            stderr = cp.stderr
            if where is not None:
                stderr = _renumber(stderr, where)
            raise restore_error(payload, stderr, tool + (" --test" if test else ""))

    def list_chains(self, name: str, family: int, table: str,
                    chains: Sequence[str]) -> dict[str, list[str]] | None:
        self._need(name)
        if not chains:
            return {}
        backend = self.backend_for(name, family)
        # iptables-nft-restore runs listings only when not testing (they commit
        # nothing); iptables-legacy-restore runs them in --test, which writes nothing.
        argv = [backend_tool("restore", family, backend), "--noflush"] + (["--test"] if backend == "legacy" else [])
        payload = f"*{table}\n" + "".join(f"-S {c}\n" for c in chains) + "COMMIT\n"
        cp = self._run_raw(name, argv, input=payload, timeout=300.0)
        if cp.returncode != 0:
            return None
        return split_listing(cp.stdout, chains)

    def check_rule(self, name: str, table: str, chain: str, args: str, family: int = 4) -> bool:
        self._need(name)
        cp = self._run_raw(name, [self._tool("", name, family), "-w", "5", "-t", table, "-C", chain,
                                  *shlex.split(args)])
        return cp.returncode == 0

    def insert_rule(self, name: str, table: str, chain: str, args: str, family: int = 4,
                    position: int = 1) -> None:
        self._need(name)
        argv = [self._tool("", name, family), "-w", "5", "-t", table, "-I", chain, str(position),
                *shlex.split(args)]
        cp = self._run_raw(name, argv)
        if cp.returncode != 0:
            raise ApplyError(f"{' '.join(argv[:6])} ... failed: {cp.stderr.strip()}", stderr=cp.stderr)

    def set_sysctl(self, name: str, key: str, value: str) -> None:
        self._need(name)
        self._run_raw(name, ["sysctl", "-q", "-w", f"{key}={value}"], check=True)

    def ensure_nfacct(self, name: str, counters: Sequence[str]) -> None:
        if not counters:
            return
        self._need(name)
        sock = _netlink_socket_in(name)
        try:
            for seq, counter in enumerate(counters, 1):
                err = _nfacct_new(sock, counter, seq)
                # EBUSY: the counter exists already (no NLM_F_REPLACE, so its count is kept).
                if err not in (0, errno.EBUSY, errno.EEXIST):
                    raise NetnsError(
                        f"cannot create nfacct counter {counter!r} in namespace {name!r}: "
                        f"{os.strerror(err)} (the kernel may lack nfnetlink_acct; use --no-nfacct)")
        finally:
            sock.close()


def nft_payload(payload: str) -> tuple[str, list[int] | None]:
    """PAYLOAD with a `-S` line where iptables-nft-restore would go quadratic.

    Where a table section names so many chains in so many lines that the
    per-chain cache list would cost more than a whole-table fetch, `-S`
    (list the table) goes in before the bulk, which makes iptables-nft fetch
    all chains at once. Commands on built-in chains must come before it (with
    the declarations of the chains they jump to): iptables-nft 1.8.9 creates
    a missing built-in chain only for commands it saw before the switch. The
    table commits as one transaction whatever the order of its commands, so
    moving whole chains' commands (each chain's own order kept) changes
    nothing in the result. Returns the text to send and, when it differs, for
    each sent line the payload line it stands for (0 for `-S`), so errors keep
    the caller's numbering.
    """
    lines = payload.splitlines()
    out: list[str] = []
    where: list[int] = []
    changed = False
    i = 0
    while i < len(lines):
        ln = lines[i]
        if not ln.startswith("*"):
            out.append(ln)
            where.append(i + 1)
            i += 1
            continue
        try:
            end = lines.index("COMMIT", i + 1)
        except ValueError:
            end = len(lines)
        body = list(range(i + 1, end))
        decls = [k for k in body if lines[k].startswith(":")]
        cmds = [k for k in body if lines[k].startswith("-")]
        moved = _reorder_for_nft(lines, lines[i][1:].strip(), body, decls, cmds)
        out.append(ln)
        where.append(i + 1)
        if moved is None:
            out += [lines[k] for k in body]
            where += [k + 1 for k in body]
        else:
            changed = True
            for k in moved:
                out.append("-S" if k < 0 else lines[k])
                where.append(0 if k < 0 else k + 1)
        i = end
    if not changed:
        return payload, None
    return "".join(ln + "\n" for ln in out), where


def _reorder_for_nft(lines: list[str], table: str, body: list[int], decls: list[int],
                     cmds: list[int]) -> list[int] | None:
    """Line indexes of one table's body in sending order with -S (-1) put in; None to leave it."""
    if len(cmds) * len(decls) <= NFT_CHAIN_LIST_MAX:
        return None
    if decls and cmds and max(decls) > min(cmds):
        return None  # not the declarations-first shape this reasoning covers
    builtins = set(BUILTIN_CHAINS.get(table, ()))
    early_cmds = [k for k in cmds if lines[k][3:].partition(" ")[0] in builtins]
    targets = {rule_target(lines[k]) for k in early_cmds}
    early_decls = [k for k in decls if lines[k][1:].split(" ", 1)[0] in targets | builtins]
    early = set(early_cmds) | set(early_decls)
    rest = [k for k in body if k not in early]
    return early_decls + early_cmds + [-1] + rest


def _renumber(stderr: str, where: list[int]) -> str:
    """Line numbers in STDERR (of the sent text) → the caller's payload's numbers."""

    def sub(m: re.Match) -> str:
        n = int(m.group(1))
        orig = where[n - 1] if 0 < n <= len(where) else 0
        return m.group(0).replace(m.group(1), str(orig or n))

    return _LINE_RE.sub(sub, stderr)


def split_listing(text: str, chains: Sequence[str]) -> dict[str, list[str]]:
    """`iptables -S` output (`-N`/`-P`/`-A` lines) → rule bodies per chain."""
    out: dict[str, list[str]] = {c: [] for c in chains}
    for ln in text.splitlines():
        if not ln.startswith("-A "):
            continue
        chain, _, spec = ln[3:].partition(" ")
        out.setdefault(chain, []).append(spec)
    return out


_BOOT_ID: list[str] = []


def _boot_id() -> str:
    if not _BOOT_ID:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _BOOT_ID.append(f.read().strip())
        except OSError:
            _BOOT_ID.append("")
    return _BOOT_ID[0]


def _in_netns(name: str, fn: Callable[[], Any]) -> Any:
    """Run FN in a short-lived thread that has entered namespace NAME.

    setns() moves only the calling thread, so the process's own namespace is
    never left; sockets FN opens keep the namespace they were made in.
    """
    out: dict[str, Any] = {}

    def work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
        except OSError as e:
            out["err"] = e.errno
            return
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                out["err"] = ctypes.get_errno()
                return
        finally:
            os.close(fd)
        try:
            out["value"] = fn()
        except OSError as e:
            out["err"] = e.errno
        except Exception as e:  # noqa: BLE001 - carried to the caller's thread
            out["exc"] = e

    t = threading.Thread(target=work, name=f"setns-{name}")
    t.start()
    t.join()
    if "exc" in out:
        raise out["exc"]
    if "value" not in out:
        err = int(out.get("err") or errno.EPERM)
        raise NetnsError(f"cannot enter network namespace {name!r}: {os.strerror(err)}")
    return out["value"]


def in_netns(name: str | None, fn: Callable[[], Any]) -> Any:
    """Run FN inside network namespace NAME (None: where the caller is) and return its result.

    The public face of `_in_netns` for kernel clients (rulegen.dataplane):
    only failing to enter NAME becomes NetnsError; whatever FN raises, an
    OSError included, reaches the caller unchanged, so a client can tell
    "no such namespace" from the kernel refusing its request.
    """
    if name is None:
        return fn()
    check_name(name)

    def guarded() -> tuple[bool, Any]:
        try:
            return True, fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            return False, e

    ok, value = _in_netns(name, guarded)
    if not ok:
        raise value
    return value


def _netlink_socket_in(name: str) -> socket.socket:
    """A NETLINK_NETFILTER socket bound to namespace NAME."""
    return _in_netns(name, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER))


def _nfgen(family: int) -> bytes:
    return struct.pack("BBH", family, 0, 0)  # nfgenmsg: family, version 0, res_id


class _NlAckError(OSError):
    """The error a netlink ack carries (the socket's own errors stay plain OSError)."""


def _nl_request(sock: socket.socket, msg_type: int, flags: int, body: bytes, seq: int) -> list[tuple[int, bytes]]:
    """Send one netfilter request; return (type, payload after nfgenmsg) of every reply until done."""
    sock.send(struct.pack("IHHII", 16 + len(body), msg_type, _NLM_F_REQUEST | flags, seq, 0) + body)
    out: list[tuple[int, bytes]] = []
    while True:
        data = sock.recv(1 << 20)
        off = 0
        while off + 16 <= len(data):
            ln, typ, fl, sq, _ = struct.unpack_from("IHHII", data, off)
            if ln < 16:
                return out
            if typ == _NLMSG_DONE:
                return out
            if typ == _NLMSG_ERROR:
                (err,) = struct.unpack_from("i", data, off + 16)
                if err:
                    raise _NlAckError(-err, os.strerror(-err))
                return out
            out.append((typ, data[off + 20:off + ln]))
            if not fl & 0x2:  # NLM_F_MULTI unset: a single answer
                return out
            off += (ln + 3) & ~3


def _nl_attrs(payload: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(payload):
        alen, atype = struct.unpack_from("HH", payload, off)
        if alen < 4:
            break
        attrs[atype & 0x3FFF] = payload[off + 4:off + alen]
        off += (alen + 3) & ~3
    return attrs


def _nft_genid(sock: socket.socket) -> int | None:
    try:
        replies = _nl_request(sock, (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_GETGEN, 0, _nfgen(socket.AF_UNSPEC), 1)
    except OSError:
        return None  # no nf_tables in this kernel
    for _, payload in replies:
        v = _nl_attrs(payload).get(_NFTA_GEN_ID)
        if v is not None and len(v) == 4:
            return struct.unpack(">I", v)[0]
    return None


def _nft_tables(sock: socket.socket, family: int) -> frozenset[str]:
    try:
        replies = _nl_request(sock, (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_GETTABLE, _NLM_F_DUMP,
                              _nfgen(_NFPROTO[family]), 2)
    except OSError:
        return frozenset()
    names = set()
    for _, payload in replies:
        v = _nl_attrs(payload).get(_NFTA_TABLE_NAME)
        if v:
            names.add(v.rstrip(b"\0").decode(errors="replace"))
    return frozenset(names)


def _nfacct_new(sock: socket.socket, counter: str, seq: int) -> int:
    """Send NFNL_MSG_ACCT_NEW for COUNTER; return the positive errno of the ack (0 = created)."""
    name = counter.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(name), _NFACCT_NAME) + name
    attr += b"\0" * (-len(attr) % 4)
    try:
        _nl_request(sock, (_NFNL_SUBSYS_ACCT << 8) | _NFNL_MSG_ACCT_NEW, _NLM_F_ACK | _NLM_F_CREATE,
                    _nfgen(socket.AF_UNSPEC) + attr, seq)
    except _NlAckError as e:
        return e.errno
    return 0


# ---------------------------------------------------------------------- fake

# Targets that are extensions, not chains; anything else must be an existing chain.
TARGET_EXTENSIONS = frozenset({
    "ACCEPT", "DROP", "RETURN", "QUEUE", "REJECT", "DNAT", "SNAT", "MASQUERADE", "REDIRECT", "MARK",
    "CONNMARK", "LOG", "NFLOG", "NOTRACK", "CT", "TPROXY", "TCPMSS", "CHECKSUM", "NFQUEUE", "TRACE",
})


@dataclass
class FakeTable:
    policies: dict[str, str]
    chains: dict[str, list[str]]  # built-in and user chains, insertion order

    @classmethod
    def new(cls, name: str) -> "FakeTable":
        builtins = BUILTIN_CHAINS.get(name, ())
        return cls({c: "ACCEPT" for c in builtins}, {c: [] for c in builtins})

    def copy(self) -> "FakeTable":
        return FakeTable(dict(self.policies), {c: list(r) for c, r in self.chains.items()})


def _backend_tables() -> dict[str, dict[int, dict[str, FakeTable]]]:
    return {"nft": {4: {}, 6: {}}, "legacy": {4: {}, 6: {}}}


@dataclass
class FakeNamespace:
    ident: int
    backends: dict[str, dict[int, dict[str, FakeTable]]] = field(default_factory=_backend_tables)
    gen: int = 1  # nf_tables' generation: one step per committed table (nft only)
    nfacct: set[str] = field(default_factory=set)
    sysctls: dict[str, str] = field(default_factory=dict)


class _Refused(Exception):
    pass


class FakeNetns(Netns):
    """In-memory namespaces with iptables-restore --noflush semantics.

    `spelling` rewrites a rule body the way the kernel round trip would
    (iptables-save prints rules in its own spelling; it must be idempotent,
    since `-C`/`-D` compare both sides through it); identity by default.
    `refuse` is a hook that makes the "kernel" refuse a line in a real
    restore although `--test` accepted it (as a missing nfacct counter
    does), returning the reason or None. `log` records every call.
    Each namespace holds both backends' tables; `backend` picks as
    `RealNetns` does ("auto": the one with tables, else `system`), and
    `view(backend)` is the same namespaces through another backend (what a
    second tool run with another `iptables` would see). Like the kernel,
    the nft backend has a `generation` that every committed table bumps;
    legacy has none.
    """

    _ids = itertools.count(1)

    def __init__(self, spelling: Callable[[str], str] | None = None,
                 refuse: Callable[[str], str | None] | None = None,
                 backend: str = "auto", system: str = "nft") -> None:
        check_backend(backend)
        self.spaces: dict[str, FakeNamespace] = {}
        self.spelling = spelling or (lambda s: s)
        self.refuse = refuse
        self.backend = backend
        self.system = system
        self.log: list[tuple] = []

    def view(self, backend: str) -> "FakeNetns":
        other = FakeNetns(self.spelling, self.refuse, backend, self.system)
        other.spaces, other.log = self.spaces, self.log
        return other

    # namespaces
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

    def _ns(self, name: str) -> FakeNamespace:
        ns = self.spaces.get(name)
        if ns is None:
            raise NetnsError(f"network namespace {name!r} does not exist")
        return ns

    def backend_for(self, name: str, family: int = 4) -> str:
        ns = self.spaces.get(name)
        if ns is None:
            return choose_backend(self.backend, self.system, set())
        present = {b for b, fams in ns.backends.items() if fams[family]}
        return choose_backend(self.backend, self.system, present,
                              lambda b: "KUBE-SERVICES" in ns.backends[b][family].get("nat", FakeTable({}, {})).chains)

    def generation(self, name: str, family: int = 4) -> int | None:
        ns = self._ns(name)
        return ns.gen if self.backend_for(name, family) == "nft" else None

    # tables
    def tables(self, name: str, family: int = 4) -> dict[str, FakeTable]:
        return self._ns(name).backends[self.backend_for(name, family)][family]

    def iptables_save(self, name: str, family: int = 4, table: str | None = None) -> str:
        tabs = self.tables(name, family)
        self.log.append(("save", name, family))
        out = [f"# Generated by fake {save_tool(family)}\n"]
        for tname in sorted(tabs):
            if table and tname != table:
                continue
            t = tabs[tname]
            builtins = [c for c in BUILTIN_CHAINS.get(tname, ()) if c in t.chains]
            users = sorted(c for c in t.chains if c not in t.policies)
            out.append(f"*{tname}\n")
            out.extend(f":{c} {t.policies[c]} [0:0]\n" for c in builtins)
            out.extend(f":{c} - [0:0]\n" for c in users)
            for c in builtins + users:
                out.extend(f"-A {c} {self.spelling(s)}\n".replace(" \n", "\n") for s in t.chains[c])
            out.append("COMMIT\n")
        return "".join(out)

    def iptables_restore(self, name: str, payload: str, family: int = 4, test: bool = False) -> None:
        ns = self._ns(name)
        self.log.append(("restore", name, family, test, payload))
        tool = restore_tool(family) + (" --test" if test else "")
        backend = self.backend_for(name, family)
        tabs = ns.backends[backend][family]
        cur: FakeTable | None = None
        cur_name = ""
        touched = False
        for no, raw in enumerate(payload.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                if line.startswith("*"):
                    if cur is not None:
                        raise _Refused("table without COMMIT")
                    cur_name = line[1:]
                    if cur_name not in BUILTIN_CHAINS:
                        raise _Refused(f"table '{cur_name}' does not exist")
                    live = tabs.get(cur_name)
                    cur = live.copy() if live else FakeTable.new(cur_name)
                    touched = False
                    continue
                if cur is None:
                    raise _Refused("no table specified")
                if line == "COMMIT":
                    if not test:
                        tabs[cur_name] = cur
                        if touched and backend == "nft":
                            ns.gen += 1
                    cur = None
                    continue
                touched = True
                if not test and self.refuse is not None:
                    reason = self.refuse(line)
                    if reason:
                        raise _Refused(reason)
                self._apply_line(cur, line, test)
            except _Refused as e:
                raise restore_error(payload, f"line {no}: {e}", tool, cur_name or None) from None
        if cur is not None:
            raise restore_error(payload, f"line {len(payload.splitlines())}: COMMIT expected", tool, cur_name)

    def _apply_line(self, t: FakeTable, line: str, test: bool) -> None:
        if line.startswith(":"):
            parts = line[1:].split()
            if len(parts) < 2:
                raise _Refused("malformed chain declaration")
            chain, policy = parts[0], parts[1]
            if chain in t.policies:
                if policy != "-":
                    t.policies[chain] = policy
            else:
                t.chains[chain] = []  # --noflush: a declared user chain is flushed (or created)
            return
        op, _, rest = line.partition(" ")
        chain, _, spec = rest.partition(" ")
        spec = spec.strip()
        if op not in ("-A", "-I", "-D", "-X", "-F", "-N"):
            raise _Refused(f"unknown command {op!r}")
        if not chain:
            raise _Refused(f"{op} without a chain")
        try:
            shlex.split(spec)
        except ValueError:
            raise _Refused("unbalanced quotes") from None
        if test:  # like the real --test: syntax only, no kernel checks
            return
        if op == "-N":
            if chain in t.chains:
                raise _Refused("Chain already exists")
            t.chains[chain] = []
            return
        if chain not in t.chains:
            raise _Refused(f"Chain '{chain}' does not exist")
        if op == "-F":
            t.chains[chain] = []
        elif op == "-X":
            if chain in t.policies:
                raise _Refused(f"cannot delete built-in chain {chain}")
            if t.chains[chain]:
                raise _Refused(f"chain {chain} is not empty")
            if any(rule_target(s) == chain for c, rules in t.chains.items() for s in rules):
                raise _Refused(f"chain {chain} is still referenced")
            del t.chains[chain]
        elif op == "-D":
            if spec.isdigit():  # by rule number, counted from 1
                n = int(spec)
                if not 1 <= n <= len(t.chains[chain]):
                    raise _Refused("Index of deletion too big")
                del t.chains[chain][n - 1]
                return
            want = self.spelling(spec)
            for i, s in enumerate(t.chains[chain]):
                if self.spelling(s) == want:
                    del t.chains[chain][i]
                    return
            raise _Refused("Bad rule (does a matching rule exist in that chain?)")
        else:
            pos = None
            if op == "-I":
                first, _, after = spec.partition(" ")
                if first.isdigit():
                    pos, spec = int(first), after.strip()
                else:
                    pos = 1
            target = rule_target(spec)
            if target and target not in TARGET_EXTENSIONS and target not in t.chains:
                raise _Refused(f"Chain '{target}' does not exist")
            if pos is None:
                t.chains[chain].append(spec)
            else:
                if pos < 1 or pos > len(t.chains[chain]) + 1:
                    raise _Refused("Index of insertion too big")
                t.chains[chain].insert(pos - 1, spec)

    def check_rule(self, name: str, table: str, chain: str, args: str, family: int = 4) -> bool:
        self.log.append(("check", name, table, chain, args))
        t = self.tables(name, family).get(table)
        if t is None or chain not in t.chains:
            return False
        want = self.spelling(args)
        return any(self.spelling(s) == want for s in t.chains[chain])

    def insert_rule(self, name: str, table: str, chain: str, args: str, family: int = 4,
                    position: int = 1) -> None:
        self.iptables_restore(name, f"*{table}\n-I {chain} {position} {args}\nCOMMIT\n", family)

    def list_chains(self, name: str, family: int, table: str,
                    chains: Sequence[str]) -> dict[str, list[str]] | None:
        self.log.append(("list", name, family, table, tuple(chains)))
        t = self.tables(name, family).get(table)
        if t is None:
            return None if chains else {}
        if any(c not in t.chains for c in chains):
            return None
        return {c: [self.spelling(s) for s in t.chains[c]] for c in chains}

    def ensure_nfacct(self, name: str, counters: Sequence[str]) -> None:
        self._ns(name).nfacct.update(counters)
        self.log.append(("nfacct", name, tuple(counters)))

    def set_sysctl(self, name: str, key: str, value: str) -> None:
        self._ns(name).sysctls[key] = value
        self.log.append(("sysctl", name, key, value))

    def run(self, name: str, argv: Sequence[str], input: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess:
        self._ns(name)
        self.log.append(("run", name, tuple(argv)))
        return subprocess.CompletedProcess(list(argv), 0, "", "")

    def restores(self, name: str | None = None, test: bool = False) -> list[str]:
        """Payloads sent (not the --test ones unless asked), oldest first."""
        return [e[4] for e in self.log if e[0] == "restore" and e[3] == test and (name is None or e[1] == name)]
