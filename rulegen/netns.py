"""Everything that touches the kernel's network namespaces and netfilter tables.

`Netns` is the small interface apply, lab and diff use: create / delete /
list namespaces, dump a family's tables (`iptables-save`), load a payload
(`iptables-restore --noflush`, `--test` for a dry check), check and insert
single rules (`-C` / `-I`), create nfacct counters, set a sysctl, and run a
command inside a namespace. `RealNetns` does it with pyroute2, iproute2 and
the iptables tools; `FakeNetns` keeps every namespace's tables in memory
with iptables-restore `--noflush` semantics (a declared chain is flushed or
created, `-A` appends, `-I` inserts, `-D` deletes one rule, `-X` deletes an
empty unreferenced chain, each table commits at `COMMIT` and a refused line
leaves its table as it was), so apply logic is tested without root. Its
dump is in iptables-save syntax, so the same parser reads both.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import re
import shlex
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .backends.iptables.ir import BUILTIN_CHAINS
from .diagnostics import UsageError

NETNS_DIR = "/run/netns"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# iptables-restore: "line 9: RULE_APPEND failed ..." (nf_tables) or
# "Error occurred at line: 8" / "line 8 failed" (legacy and parse errors).
_LINE_RE = re.compile(r"\bline:?\s+(\d+)")


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
        if not ln or ln.startswith("Try `") or ln.startswith("Error occurred at line"):
            continue
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
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NETLINK_NETFILTER = 12


class RealNetns(Netns):
    """Namespaces via pyroute2, tables via the iptables tools run with `ip netns exec`."""

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
        # A new namespace has its loopback down; most uses expect it up.
        self._run_raw(name, ["ip", "link", "set", "lo", "up"], check=False)

    def delete(self, name: str) -> None:
        check_name(name)
        self.require_root()
        if not self.exists(name):
            return
        from pyroute2 import netns as pnetns

        try:
            pnetns.remove(name)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise NetnsError(f"cannot delete network namespace {name!r}: {e.strerror or e}") from None

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
        return f"{st.st_dev}:{st.st_ino}"

    def _run_raw(self, name: str, argv: Sequence[str], input: str | None = None, timeout: float = 30.0,
                 check: bool = False) -> subprocess.CompletedProcess:
        try:
            cp = subprocess.run(["ip", "netns", "exec", name, *argv], input=input, capture_output=True,
                                text=True, timeout=timeout)
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
        argv = [save_tool(family)] + (["-t", table] if table else [])
        cp = self._run_raw(name, argv)
        if cp.returncode != 0:
            raise NetnsError(f"{save_tool(family)} in namespace {name!r} failed: {cp.stderr.strip()}")
        return cp.stdout

    def iptables_restore(self, name: str, payload: str, family: int = 4, test: bool = False) -> None:
        self._need(name)
        tool = restore_tool(family)
        argv = [tool, "--noflush"] + (["--test"] if test else [])
        cp = self._run_raw(name, argv, input=payload, timeout=300.0)
        if cp.returncode != 0:
            raise restore_error(payload, cp.stderr, tool + (" --test" if test else ""))

    def check_rule(self, name: str, table: str, chain: str, args: str, family: int = 4) -> bool:
        self._need(name)
        cp = self._run_raw(name, [rule_tool(family), "-w", "5", "-t", table, "-C", chain, *shlex.split(args)])
        return cp.returncode == 0

    def insert_rule(self, name: str, table: str, chain: str, args: str, family: int = 4,
                    position: int = 1) -> None:
        self._need(name)
        argv = [rule_tool(family), "-w", "5", "-t", table, "-I", chain, str(position), *shlex.split(args)]
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


def _netlink_socket_in(name: str) -> socket.socket:
    """A NETLINK_NETFILTER socket bound to namespace NAME.

    setns() moves only the calling thread, so a short-lived thread enters the
    namespace and opens the socket; the socket keeps that namespace.
    """
    out: dict[str, object] = {}

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
            out["sock"] = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
        except OSError as e:
            out["err"] = e.errno
        finally:
            os.close(fd)

    t = threading.Thread(target=work, name=f"setns-{name}")
    t.start()
    t.join()
    if "sock" not in out:
        err = int(out.get("err") or errno.EPERM)  # type: ignore[arg-type]
        raise NetnsError(f"cannot open a netfilter socket in namespace {name!r}: {os.strerror(err)}")
    return out["sock"]  # type: ignore[return-value]


def _nfacct_new(sock: socket.socket, counter: str, seq: int) -> int:
    """Send NFNL_MSG_ACCT_NEW for COUNTER; return the positive errno of the ack (0 = created)."""
    name = counter.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(name), _NFACCT_NAME) + name
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("BBH", socket.AF_UNSPEC, 0, 0) + attr
    msg_type = (_NFNL_SUBSYS_ACCT << 8) | _NFNL_MSG_ACCT_NEW
    sock.send(struct.pack("IHHII", 16 + len(body), msg_type, _NLM_F_REQUEST | _NLM_F_ACK | 0x400, seq, 0) + body)
    data = sock.recv(65536)
    if len(data) < 20:
        return errno.EIO
    (err,) = struct.unpack("i", data[16:20])
    return -err


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


@dataclass
class FakeNamespace:
    ident: int
    tables: dict[int, dict[str, FakeTable]] = field(default_factory=lambda: {4: {}, 6: {}})
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
    """

    _ids = itertools.count(1)

    def __init__(self, spelling: Callable[[str], str] | None = None,
                 refuse: Callable[[str], str | None] | None = None) -> None:
        self.spaces: dict[str, FakeNamespace] = {}
        self.spelling = spelling or (lambda s: s)
        self.refuse = refuse
        self.log: list[tuple] = []

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

    # tables
    def tables(self, name: str, family: int = 4) -> dict[str, FakeTable]:
        return self._ns(name).tables[family]

    def iptables_save(self, name: str, family: int = 4, table: str | None = None) -> str:
        tabs = self._ns(name).tables[family]
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
        cur: FakeTable | None = None
        cur_name = ""
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
                    live = ns.tables[family].get(cur_name)
                    cur = live.copy() if live else FakeTable.new(cur_name)
                    continue
                if cur is None:
                    raise _Refused("no table specified")
                if line == "COMMIT":
                    if not test:
                        ns.tables[family][cur_name] = cur
                    cur = None
                    continue
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
        t = self._ns(name).tables[family].get(table)
        if t is None or chain not in t.chains:
            return False
        want = self.spelling(args)
        return any(self.spelling(s) == want for s in t.chains[chain])

    def insert_rule(self, name: str, table: str, chain: str, args: str, family: int = 4,
                    position: int = 1) -> None:
        self.iptables_restore(name, f"*{table}\n-I {chain} {position} {args}\nCOMMIT\n", family)

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
