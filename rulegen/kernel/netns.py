"""Network namespaces: make, delete and list them, know one for sure, and work inside one.

`Namespaces` is the interface every data-plane client and the lab use;
`RealNamespaces` does it with pyroute2 and `ip netns exec`, `fake.FakeNamespaces`
in memory. Three things here are subtle:

- `identity` changes whenever a namespace of the same name is deleted and
  made again: the inode number alone does not (the kernel reuses it once
  a namespace is gone), so it includes the namespace cookie
  (SO_NETNS_COOKIE, Linux 5.14+, never reused until reboot) and the boot
  id (a state directory may outlive a reboot). Apply caches are keyed by it.
- `nft_generation` is nf_tables' ruleset generation in the namespace,
  which the kernel bumps on every committed change, by anyone. Read
  without the cookie it proves nothing (a namespace made again could
  show an old number), so it is then None.
- `in_netns` runs a function in a short-lived thread that has entered the
  namespace: setns() moves only the calling thread, so the process never
  leaves its own namespace; sockets the function opens keep the namespace
  they were made in.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import socket
import subprocess
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..diagnostics import UsageError
from . import netlink as nl

NETNS_DIR = "/run/netns"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_CLONE_NEWNET = 0x40000000
_SO_NETNS_COOKIE = 71  # Linux 5.14+: a 64-bit id of the socket's namespace, never reused until reboot


class NetnsError(UsageError):
    """A namespace or tool problem the user has to fix (exit 2)."""


def check_name(name: str) -> str:
    """A namespace name that is safe as a file name under /run/netns."""
    if not _NAME_RE.match(name or ""):
        raise NetnsError(f"--netns {name!r}: not a valid namespace name (letters, digits, '_', '.', '-'; at most 64)")
    return name


class Namespaces:
    """The namespaces interface. Signatures here are stable: apply, lab, diff and the clients call them."""

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

    def nft_generation(self, name: str) -> int | None:
        """nf_tables' ruleset generation in NAME, or None when it cannot be read (or proves nothing)."""
        return None

    def set_sysctl(self, name: str, key: str, value: str) -> None:
        raise NotImplementedError

    def sysctl(self, name: str, key: str) -> str | None:
        """The value of sysctl KEY (`net.ipv4.ip_forward`) in NAME, None when the kernel has no such key."""
        raise NotImplementedError

    def run(self, name: str, argv: Sequence[str], input: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess:
        raise NotImplementedError


@dataclass
class NetnsFacts:
    """What one visit inside a namespace learns (see `RealNamespaces.facts`)."""

    cookie: int | None  # SO_NETNS_COOKIE, None on kernels without it
    genid: int | None  # nf_tables ruleset generation
    nft_tables: frozenset[str]  # nf_tables tables of the family (ip / ip6)
    legacy_tables: frozenset[str]  # x_tables (legacy iptables) tables instantiated for the family


class RealNamespaces(Namespaces):
    """Namespaces via pyroute2; commands inside them via `ip netns exec`.

    A client that remembers something per namespace (the iptables backend
    chosen there) registers with `on_change`, and forgets it when a
    namespace of that name is made or deleted.
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[str], None]] = []

    def on_change(self, forget: Callable[[str], None]) -> None:
        self._listeners.append(forget)

    def _changed(self, name: str) -> None:
        for forget in self._listeners:
            forget(name)

    def require_root(self, what: str = "rulegen") -> None:
        if os.geteuid() != 0:
            raise NetnsError(f"{what} needs root (network namespaces and iptables-restore); run it as root or with sudo")

    def need(self, name: str) -> None:
        """NAME is a valid name of an existing namespace and we are root; else NetnsError."""
        check_name(name)
        self.require_root()
        if not self.exists(name):
            raise NetnsError(f"network namespace {name!r} does not exist")

    def create(self, name: str) -> None:
        check_name(name)
        self.require_root()
        if self.exists(name):
            raise NetnsError(f"network namespace {name!r} already exists")
        try:
            _make(name)
        except OSError as e:
            raise NetnsError(f"cannot create network namespace {name!r}: {e.strerror or e}") from None
        self._changed(name)

    def delete(self, name: str) -> None:
        check_name(name)
        self.require_root()
        self._changed(name)
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
        ident = f"{st.st_dev}:{st.st_ino}"
        # The inode is the namespace's number, which the kernel reuses once a
        # namespace is gone; the cookie is not reused until reboot, and the
        # boot id covers a state directory that outlives a reboot.
        cookie = None
        if os.geteuid() == 0:
            try:
                cookie = self.facts(name, 4, tables=False).cookie
            except NetnsError:
                cookie = None
        if cookie is None:
            return ident
        return f"{ident}:{cookie}:{_boot_id()}"

    def facts(self, name: str, family: int, tables: bool = True) -> NetnsFacts:
        """Cookie, nf_tables generation and (with TABLES) which tables exist, from one visit."""

        def work() -> NetnsFacts:
            legacy: frozenset[str] = frozenset()
            if tables:
                proc = "/proc/thread-self/net/" + ("ip6_tables_names" if family == 6 else "ip_tables_names")
                try:
                    with open(proc) as f:
                        legacy = frozenset(f.read().split())
                except OSError:
                    legacy = frozenset()  # x_tables not loaded: no legacy tables anywhere
            sock = nl.netfilter_socket()
            try:
                try:
                    cookie: int | None = int.from_bytes(
                        sock.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8), "little")
                except OSError:
                    cookie = None
                genid = nl.nft_genid(sock)
                nft = nl.nft_tables(sock, family) if tables else frozenset()
            finally:
                sock.close()
            return NetnsFacts(cookie, genid, nft, legacy)

        return _in_netns(name, work)

    def nft_generation(self, name: str) -> int | None:
        self.need(name)
        try:
            f = self.facts(name, 4, tables=False)
        except NetnsError:
            return None
        # Without the cookie a namespace made again under the same inode
        # could show an old generation number: then no generation at all.
        return f.genid if f.cookie is not None else None

    def exec(self, name: str, argv: Sequence[str], input: str | None = None, timeout: float = 30.0,
             check: bool = False, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess:
        """ARGV run inside NAME (`ip netns exec`), without the checks `run` makes first."""
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
        self.need(name)
        return self.exec(name, argv, input, timeout)

    def set_sysctl(self, name: str, key: str, value: str) -> None:
        self.need(name)
        self.exec(name, ["sysctl", "-q", "-w", f"{key}={value}"], check=True)

    def sysctl(self, name: str, key: str) -> str | None:
        self.need(name)
        path = "/proc/sys/" + key.replace(".", "/")

        def read() -> str | None:
            # /proc/sys/net shows the namespace of the thread that opens it.
            try:
                with open(path) as f:
                    return " ".join(f.read().split())
            except FileNotFoundError:
                return None

        return _in_netns(name, read)


_BOOT_ID: list[str] = []


def _boot_id() -> str:
    if not _BOOT_ID:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _BOOT_ID.append(f.read().strip())
        except OSError:
            _BOOT_ID.append("")
    return _BOOT_ID[0]


_MS_BIND, _MS_REC, _MS_SHARED = 0x1000, 0x4000, 0x100000


def _make(name: str) -> None:
    """Make namespace NAME as `ip netns add` does, without forking: in a thread that leaves with it.

    NETNS_DIR becomes a shared mount (bound onto itself first if it is no
    mount point), so the namespaces mounted in it show in every mount
    namespace; a file there is the mount point; a short-lived thread
    unshares its network namespace, brings its loopback up and binds its
    own `/proc/thread-self/ns/net` onto the file, which keeps the namespace
    alive once the thread is gone. (pyroute2 forks a helper for this and
    waits for it with a timeout that a slow machine, such as the IPVS test
    VM under emulation, can outlast.)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    d = NETNS_DIR.encode()
    if libc.mount(b"none", d, None, _MS_SHARED | _MS_REC, None) != 0:
        if libc.mount(d, d, b"none", _MS_BIND | _MS_REC, None) != 0 or \
                libc.mount(b"none", d, None, _MS_SHARED | _MS_REC, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot make {NETNS_DIR} a shared mount: {os.strerror(err)}")
    path = os.path.join(NETNS_DIR, name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    out: dict[str, Any] = {}

    def work() -> None:
        if libc.unshare(_CLONE_NEWNET) != 0:
            out["err"] = (ctypes.get_errno(), "unshare")
            return
        try:
            _loopback_up()
        except Exception as e:  # noqa: BLE001 - reported from the caller's thread
            out["err"] = (getattr(e, "errno", None) or errno.EIO, "bring up lo in")
            return
        if libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", _MS_BIND, None) != 0:
            out["err"] = (ctypes.get_errno(), "mount")

    t = threading.Thread(target=work, name=f"netns-add-{name}")
    t.start()
    t.join()
    if "err" in out:
        err, what = out["err"]
        try:
            os.unlink(path)
        except OSError:
            pass
        raise OSError(err, f"cannot {what} the new namespace: {os.strerror(err)}")


def _loopback_up() -> None:
    """Set `lo` up in the calling thread's namespace (SIOCSIFFLAGS: no netlink library needed)."""
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack_from("16sh", fcntl.ioctl(sock, siocgifflags, req + b"\0" * 22))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up) + b"\0" * 22)


def _in_netns(name: str, fn: Callable[[], Any]) -> Any:
    """Run FN in a short-lived thread that has entered namespace NAME (any OSError: NetnsError)."""
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

    For kernel clients: only failing to enter NAME becomes NetnsError;
    whatever FN raises, an OSError included, reaches the caller unchanged,
    so a client can tell "no such namespace" from the kernel refusing its
    request.
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


def netlink_socket_in(name: str) -> socket.socket:
    """A NETLINK_NETFILTER socket bound to namespace NAME (it keeps it after the thread leaves)."""
    return _in_netns(name, nl.netfilter_socket)
