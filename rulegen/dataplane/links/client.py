"""A dummy interface and its addresses (kube-proxy's `kube-ipvs0`), over rtnetlink in a namespace.

IPVS only sees packets the kernel accepts as local, so kube-proxy's IPVS
mode binds every ClusterIP (and external/load-balancer IP) to a dummy
interface, `kube-ipvs0`, which it creates and leaves down. `Links` is that
job: make the dummy if it is missing, list its addresses, add and remove
one (both idempotent: an address already there, or already gone, is not an
error), `sync_addresses` to a wanted list, and `batch` many calls in one
visit. Addresses are written `IP/prefix`, host-length by default (/32,
/128); IPv6 link-local addresses, which the kernel adds by itself when a
link goes up, are neither listed nor removed. `RealLinks` does it with pyroute2's IPRoute inside a namespace
(`rulegen.kernel.netns.in_netns`); the fake is `fake.FakeLinks`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
from typing import Any, Callable, Iterable, TypeVar

from ...diagnostics import UsageError
from ...kernel.netns import in_netns

KUBE_IPVS0 = "kube-ipvs0"
T = TypeVar("T")


class LinkError(UsageError):
    """The kernel refused a link or address change; `errno` says why."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


def canonical_address(text: str) -> str:
    """`10.96.0.1` or `10.96.0.1/32` → `10.96.0.1/32`; a prefix shorter than the host length is refused."""
    addr, slash, plen = text.partition("/")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise LinkError(f"{text!r} is not an IP address", errno.EINVAL) from None
    full = ip.max_prefixlen
    if slash and plen != str(full):
        raise LinkError(f"{text!r}: a service address is bound with its host length (/{full})", errno.EINVAL)
    return f"{ip}/{full}"


def _sort_key(addr: str) -> tuple:
    ip = ipaddress.ip_address(addr.split("/")[0])
    return (ip.version, ip)


def is_link_local(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("/")[0])
    return ip.version == 6 and ip.is_link_local


def link_error(op: str, name: str, code: int, address: str | None = None) -> LinkError:
    """The error for OP on link NAME refused with CODE, worded the same by every client."""
    if op == "create" and code == errno.EOPNOTSUPP:
        why = "this kernel cannot make dummy interfaces (no 'dummy' module)"
    elif code == errno.ENODEV:
        why = "no such interface"
    else:
        why = os.strerror(code)
    what = {"create": "create dummy interface", "delete": "delete interface", "list": "list the addresses of",
            "add": f"add address {address} to", "remove": f"remove address {address} from"}[op]
    return LinkError(f"cannot {what} {name}: {why}", code)


class Links:
    """Dummy interfaces and their addresses in one network namespace."""

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def ensure_dummy(self, name: str = KUBE_IPVS0) -> bool:
        """Create dummy interface NAME (left down) unless it exists; True when it was created."""
        raise NotImplementedError

    def delete(self, name: str = KUBE_IPVS0) -> bool:
        """Delete interface NAME; True when it existed."""
        raise NotImplementedError

    def addresses(self, name: str = KUBE_IPVS0) -> list[str]:
        """NAME's addresses as `IP/prefix`, IPv4 first, in address order (IPv6 link-local left out)."""
        raise NotImplementedError

    def add_address(self, name: str, address: str) -> bool:
        """Bind ADDRESS to NAME; True when it was not bound already."""
        raise NotImplementedError

    def remove_address(self, name: str, address: str) -> bool:
        """Unbind ADDRESS from NAME; True when it was bound."""
        raise NotImplementedError

    def batch(self, fn: Callable[["Links"], T]) -> T:
        """Run FN(self); a real client makes every call FN does in one namespace visit."""
        return fn(self)

    def sync_addresses(self, name: str, wanted: Iterable[str]) -> tuple[list[str], list[str]]:
        """Make NAME's addresses exactly WANTED; return (added, removed), each in address order."""
        want = {canonical_address(a) for a in wanted}
        have = set(self.addresses(name))
        added = sorted(want - have, key=_sort_key)
        removed = sorted(have - want, key=_sort_key)
        for a in added:
            self.add_address(name, a)
        for a in removed:
            self.remove_address(name, a)
        return added, removed


class RealLinks(Links):
    """Links in namespace NETNS (None: the caller's own) over pyroute2's IPRoute."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._local = threading.local()

    def _visit(self, fn: Callable[[Any], T]) -> T:
        ipr = getattr(self._local, "ipr", None)
        if ipr is not None:  # inside batch(): already in the namespace, with a socket
            return fn(ipr)
        from pyroute2 import IPRoute

        def work() -> T:
            with IPRoute() as ipr:
                self._local.ipr = ipr
                try:
                    return fn(ipr)
                finally:
                    self._local.ipr = None

        return in_netns(self.netns, work)

    def batch(self, fn: Callable[[Links], T]) -> T:
        return self._visit(lambda _ipr: fn(self))

    @staticmethod
    def _index(ipr: Any, name: str) -> int | None:
        found = ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def exists(self, name: str) -> bool:
        return self._visit(lambda ipr: self._index(ipr, name) is not None)

    def ensure_dummy(self, name: str = KUBE_IPVS0) -> bool:
        from pyroute2.netlink.exceptions import NetlinkError

        def work(ipr: Any) -> bool:
            idx = self._index(ipr, name)
            if idx is not None:
                kind = None
                for msg in ipr.link("get", index=idx):
                    info = msg.get_attr("IFLA_LINKINFO")
                    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
                if kind != "dummy":
                    raise LinkError(f"cannot use {name}: it exists and is a {kind or 'device'} interface, not a dummy",
                                    errno.EEXIST)
                return False
            try:
                ipr.link("add", ifname=name, kind="dummy")
            except NetlinkError as e:
                if e.code == errno.EEXIST:  # made meanwhile by someone else
                    return False
                raise link_error("create", name, e.code) from None
            return True

        return self._visit(work)

    def delete(self, name: str = KUBE_IPVS0) -> bool:
        from pyroute2.netlink.exceptions import NetlinkError

        def work(ipr: Any) -> bool:
            idx = self._index(ipr, name)
            if idx is None:
                return False
            try:
                ipr.link("del", index=idx)
            except NetlinkError as e:
                if e.code == errno.ENODEV:
                    return False
                raise link_error("delete", name, e.code) from None
            return True

        return self._visit(work)

    def _need(self, ipr: Any, op: str, name: str, address: str | None = None) -> int:
        idx = self._index(ipr, name)
        if idx is None:
            raise link_error(op, name, errno.ENODEV, address)
        return idx

    def addresses(self, name: str = KUBE_IPVS0) -> list[str]:
        def work(ipr: Any) -> list[str]:
            idx = self._need(ipr, "list", name)
            out = {f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}" for m in ipr.addr("dump", index=idx)
                   if m["family"] in (socket.AF_INET, socket.AF_INET6)}
            return sorted((a for a in out if not is_link_local(a)), key=_sort_key)

        return self._visit(work)

    def add_address(self, name: str, address: str) -> bool:
        from pyroute2.netlink.exceptions import NetlinkError

        addr = canonical_address(address)
        ip, plen = addr.split("/")

        def work(ipr: Any) -> bool:
            idx = self._need(ipr, "add", name, addr)
            try:
                ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))
            except NetlinkError as e:
                if e.code == errno.EEXIST:
                    return False
                raise link_error("add", name, e.code, addr) from None
            return True

        return self._visit(work)

    def remove_address(self, name: str, address: str) -> bool:
        from pyroute2.netlink.exceptions import NetlinkError

        addr = canonical_address(address)
        ip, plen = addr.split("/")

        def work(ipr: Any) -> bool:
            idx = self._need(ipr, "remove", name, addr)
            try:
                ipr.addr("del", index=idx, address=ip, prefixlen=int(plen))
            except NetlinkError as e:
                if e.code == errno.EADDRNOTAVAIL:
                    return False
                raise link_error("remove", name, e.code, addr) from None
            return True

        return self._visit(work)

    def sync_addresses(self, name: str, wanted: Iterable[str]) -> tuple[list[str], list[str]]:
        want = list(wanted)
        return self.batch(lambda links: Links.sync_addresses(links, name, want))
