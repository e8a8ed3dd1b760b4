"""The IPVS interface, its real client over generic netlink, and the probe for ip_vs.

`IPVS` is what a backend programs: list, add, update and delete virtual and
real servers, flush, and read the whole table in one call. `RealIPVS` does
it with pyroute2's IPVS generic-netlink socket inside a named network
namespace (`rulegen.kernel.netns.in_netns`: a short-lived thread enters the
namespace, so the process never leaves its own). pyroute2 keeps one socket
per thread, so every visit opens its socket, works and closes it inside that
thread; `batch` runs many calls in one visit. Replies are decoded from the
raw attributes: pyroute2's own record helpers report every destination as
direct routing, and its "update" command sends a delete.

`ipvs_missing_reason` tells "this kernel has no ip_vs" (the generic netlink
family IPVS is absent and `modprobe ip_vs` cannot add it) apart from every
other failure, which it raises; apply uses it to stop, exit 2, before it
changes anything. The fake with the same semantics is `fake.FakeIPVS`.
"""

from __future__ import annotations

import errno
import os
import platform
import shutil
import socket
import struct
import subprocess
import threading
from typing import Any, Callable, Iterable, TypeVar

from msgspec.structs import replace

from ...kernel.netns import in_netns
from .model import (
    FLAG_HASHED,
    FORWARD,
    FORWARD_NAMES,
    PROTOCOL_NAMES,
    PROTOCOLS,
    IPVSError,
    IPVSUnavailable,
    RealServer,
    VirtualServer,
    ipvs_error,
    render,
    sorted_services,
)

T = TypeVar("T")


class IPVS:
    """The kernel's IPVS table in one network namespace (kube-proxy's ipvs.Interface, in our words)."""

    # A VirtualServer passed in names the service and says its settings; its
    # `reals` are ignored (destinations have calls of their own). One coming
    # back has none, except from `table`.

    def virtual_servers(self) -> list[VirtualServer]:
        """Every virtual server, in the fixed order of `VirtualServer.sort_key`."""
        raise NotImplementedError

    def get_virtual_server(self, vs: VirtualServer) -> VirtualServer | None:
        """The live virtual server with VS's key, or None."""
        raise NotImplementedError

    def add_virtual_server(self, vs: VirtualServer) -> None:
        raise NotImplementedError

    def update_virtual_server(self, vs: VirtualServer) -> None:
        """Change the scheduler, flags, timeout and netmask of the live service with VS's key."""
        raise NotImplementedError

    def delete_virtual_server(self, vs: VirtualServer) -> None:
        raise NotImplementedError

    def real_servers(self, vs: VirtualServer) -> list[RealServer]:
        """The destinations of VS, ordered by address and port."""
        raise NotImplementedError

    def add_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        raise NotImplementedError

    def update_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        """Change the weight and forwarding method of the live destination with RS's key."""
        raise NotImplementedError

    def delete_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Delete every virtual server (and with them every real server)."""
        raise NotImplementedError

    def table(self) -> tuple[VirtualServer, ...]:
        """Every virtual server with its real servers in `reals`, sorted (see `model.sorted_services`)."""
        return sorted_services(replace(vs, reals=tuple(self.real_servers(vs))) for vs in self.virtual_servers())

    def dump(self) -> str:
        """The table in `ipvsadm-save -n` spelling, deterministic."""
        return render(self.table())

    def batch(self, fn: Callable[["IPVS"], T]) -> T:
        """Run FN(self); a real client makes every call FN does in one namespace visit."""
        return fn(self)


# ---------------------------------------------------------------------- real

_GENL_ID_CTRL = 0x10
_CTRL_CMD_GETFAMILY = 3
_CTRL_ATTR_FAMILY_NAME = 2
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLMSG_ERROR = 2
_NETLINK_GENERIC = 16
_ALL_ONES = 0xFFFFFFFF


def _genl_family_exists(name: str) -> bool:
    """Whether this namespace's kernel knows generic netlink family NAME (ENOENT: it does not)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_GENERIC)
    try:
        sock.settimeout(10)
        value = name.encode() + b"\0"
        attr = struct.pack("HH", 4 + len(value), _CTRL_ATTR_FAMILY_NAME) + value
        attr += b"\0" * (-len(attr) % 4)
        body = struct.pack("BBH", _CTRL_CMD_GETFAMILY, 1, 0) + attr
        sock.send(struct.pack("IHHII", 16 + len(body), _GENL_ID_CTRL, _NLM_F_REQUEST | _NLM_F_ACK, 1, 0) + body)
        data = sock.recv(65536)
        length, kind = struct.unpack_from("IH", data, 0)
        if kind == _NLMSG_ERROR:
            (err,) = struct.unpack_from("i", data, 16)
            if err == -errno.ENOENT:
                return False
            if err:
                raise OSError(-err, os.strerror(-err))
            # A plain ack first: the family message follows.
        return True
    finally:
        sock.close()


def _modprobe_ip_vs() -> str:
    """Try to load ip_vs; return "" when modprobe succeeded, else why it could not."""
    tool = shutil.which("modprobe") or next((p for p in ("/sbin/modprobe", "/usr/sbin/modprobe") if os.path.exists(p)), None)
    release = platform.release()
    if tool is None:
        return "there is no modprobe to load it"
    if not os.path.isdir(f"/lib/modules/{release}"):
        return f"there is no /lib/modules/{release} to load it from"
    try:
        cp = subprocess.run([tool, "-q", "ip_vs"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"modprobe ip_vs failed ({e})"
    if cp.returncode == 0:
        return ""
    detail = (cp.stderr.strip().splitlines() or [f"exit status {cp.returncode}"])[-1]
    return f"modprobe ip_vs failed: {detail}"


def ipvs_missing_reason(netns: str | None = None, load: bool = True) -> str | None:
    """None when IPVS works in NETNS; else the one-line reason the kernel has none.

    Only "the kernel has no IPVS" is an answer; any other failure (no such
    namespace, not root) is raised. With LOAD, a missing ip_vs is first
    loaded with modprobe, as kube-proxy does (modules are kernel-wide, so
    this is done from where the caller is).
    """
    if in_netns(netns, lambda: _genl_family_exists("IPVS")):
        return None
    why = "modprobe was not tried"
    if load:
        why = _modprobe_ip_vs()
        if not why and in_netns(netns, lambda: _genl_family_exists("IPVS")):
            return None
        why = why or "modprobe ip_vs succeeded but the IPVS netlink family is still missing"
    return (f"this kernel ({platform.release()}) has no IP Virtual Server: the ip_vs module is not loaded "
            f"and {why}")


def kernel_has_ipvs(netns: str | None = None) -> bool:
    """Whether IPVS can be programmed in NETNS (ip_vs loaded, or loaded now)."""
    return ipvs_missing_reason(netns) is None


def require_ipvs(netns: str | None = None) -> None:
    """Raise IPVSUnavailable (a usage error: exit 2) unless IPVS can be programmed in NETNS."""
    reason = ipvs_missing_reason(netns)
    if reason is not None:
        raise IPVSUnavailable(reason, errno.EPROTONOSUPPORT)


def _sockets() -> Any:
    """pyroute2's IPVS socket class, with its "protocol not found" log line made quiet (the probe words it)."""
    from pyroute2 import ipvs as pipvs

    class _QuietAsync(pipvs.AsyncIPVS):
        module_err_level = "debug"

    class _QuietIPVS(pipvs.IPVS):
        async_class = _QuietAsync

    return _QuietIPVS, pipvs.IPVSService, pipvs.IPVSDest


def _netmask_attr(vs: VirtualServer) -> str:
    # IPVS_SVC_ATTR_NETMASK is four bytes: an IPv4 mask, or for IPv6 the
    # prefix length as a native-endian u32 (what the kernel and libipvs
    # use); pyroute2 types the attribute as an IPv4 address either way.
    if vs.family == 4:
        bits = vs.netmask or 32
        return socket.inet_ntoa(struct.pack(">I", (_ALL_ONES << (32 - bits)) & _ALL_ONES))
    return socket.inet_ntoa(struct.pack("=I", vs.netmask or 128))


def _netmask_from(family: int, text: str | None) -> int:
    """The record's netmask: the prefix length, 0 for the family's full one (or none given)."""
    if not text:
        return 0
    raw = socket.inet_aton(text)
    if family == 6:
        bits = struct.unpack("=I", raw)[0]
        return 0 if bits == 128 else bits
    bits = bin(struct.unpack(">I", raw)[0]).count("1")
    return 0 if bits == 32 else bits


def _attrs(nla: Any) -> dict[str, Any]:
    return dict(nla["attrs"]) if nla is not None else {}


class RealIPVS(IPVS):
    """IPVS in network namespace NETNS (None: the caller's own) over pyroute2's generic netlink socket."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._local = threading.local()
        self._checked = False

    # -- plumbing
    def _visit(self, fn: Callable[[Any], T]) -> T:
        sock = getattr(self._local, "sock", None)
        if sock is not None:  # inside batch(): already in the namespace, with a socket
            return fn(sock)
        if not self._checked:
            require_ipvs(self.netns)
            self._checked = True
        cls = _sockets()[0]

        def work() -> T:
            s = cls()
            self._local.sock = s
            try:
                return fn(s)
            finally:
                self._local.sock = None
                s.close()

        return in_netns(self.netns, work)

    def batch(self, fn: Callable[[IPVS], T]) -> T:
        return self._visit(lambda _s: fn(self))

    def _service(self, vs: VirtualServer, full: bool = True) -> Any:
        svc_cls = _sockets()[1]
        fields: dict[str, Any] = {"addr": vs.address, "port": vs.port, "protocol": PROTOCOLS[vs.protocol]}
        if full:
            fields.update(sched_name=vs.scheduler, flags={"flags": vs.flags, "mask": _ALL_ONES},
                          timeout=vs.timeout, netmask=_netmask_attr(vs))
        return svc_cls(**fields)

    def _dest(self, rs: RealServer) -> Any:
        return _sockets()[2](addr=rs.address, port=rs.port, weight=rs.weight, fwd_method=FORWARD[rs.method])

    @staticmethod
    def _call(op: str, fn: Callable[[], T], vs: VirtualServer | None = None, rs: RealServer | None = None) -> T:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            return fn()
        except NetlinkError as e:
            raise ipvs_error(op, e.code, vs, rs) from None

    @staticmethod
    def _decode_vs(msg: Any) -> VirtualServer | None:
        a = _attrs(msg.get_attr("IPVS_CMD_ATTR_SERVICE"))
        if a.get("IPVS_SVC_ATTR_FWMARK"):
            return None  # firewall-mark services are not modelled (kube-proxy never makes them)
        family = 6 if a.get("IPVS_SVC_ATTR_AF") == socket.AF_INET6 else 4
        proto = PROTOCOL_NAMES.get(a.get("IPVS_SVC_ATTR_PROTOCOL", 0))
        if proto is None:
            return None  # a protocol kube-proxy never uses (made by another tool)
        flags = a.get("IPVS_SVC_ATTR_FLAGS")
        return VirtualServer(
            proto, a["IPVS_SVC_ATTR_ADDR"], a.get("IPVS_SVC_ATTR_PORT", 0),
            scheduler=a.get("IPVS_SVC_ATTR_SCHED_NAME", ""),
            flags=(flags["flags"] if flags is not None else 0) & ~FLAG_HASHED,
            timeout=a.get("IPVS_SVC_ATTR_TIMEOUT", 0),
            netmask=_netmask_from(family, a.get("IPVS_SVC_ATTR_NETMASK")))

    @staticmethod
    def _decode_rs(msg: Any) -> RealServer:
        a = _attrs(msg.get_attr("IPVS_CMD_ATTR_DEST"))
        fwd = a.get("IPVS_DEST_ATTR_FWD_METHOD", 0)
        if fwd not in FORWARD_NAMES:
            raise IPVSError(f"real server {a.get('IPVS_DEST_ATTR_ADDR')}: forwarding method {fwd} is not modelled",
                            errno.EPROTO)
        return RealServer(a["IPVS_DEST_ATTR_ADDR"], a.get("IPVS_DEST_ATTR_PORT", 0),
                          a.get("IPVS_DEST_ATTR_WEIGHT", 0), FORWARD_NAMES[fwd])

    # -- the interface
    def virtual_servers(self) -> list[VirtualServer]:
        def work(s: Any) -> list[VirtualServer]:
            msgs = self._call("list_vs", lambda: s.service("dump"))
            found = [vs for vs in map(self._decode_vs, msgs) if vs is not None]
            return sorted(found, key=VirtualServer.sort_key)

        return self._visit(work)

    def get_virtual_server(self, vs: VirtualServer) -> VirtualServer | None:
        def work(s: Any) -> VirtualServer | None:
            from pyroute2.netlink.exceptions import NetlinkError

            try:
                msgs = s.service("get", service=self._service(vs, full=False))
            except NetlinkError as e:
                if e.code == errno.ESRCH:
                    return None
                raise ipvs_error("get_vs", e.code, vs) from None
            found = [v for v in map(self._decode_vs, msgs) if v is not None]
            return found[0] if found else None

        return self._visit(work)

    def add_virtual_server(self, vs: VirtualServer) -> None:
        self._visit(lambda s: self._call("add_vs", lambda: s.service("add", service=self._service(vs)), vs))

    def update_virtual_server(self, vs: VirtualServer) -> None:
        self._visit(lambda s: self._call("update_vs", lambda: s.service("set", service=self._service(vs)), vs))

    def delete_virtual_server(self, vs: VirtualServer) -> None:
        self._visit(lambda s: self._call("delete_vs", lambda: s.service("del", service=self._service(vs, False)), vs))

    def real_servers(self, vs: VirtualServer) -> list[RealServer]:
        def work(s: Any) -> list[RealServer]:
            msgs = self._call("list_rs", lambda: s.dest("dump", service=self._service(vs, full=False)), vs)
            return sorted(map(self._decode_rs, msgs), key=RealServer.sort_key)

        return self._visit(work)

    def _dest_op(self, op: str, cmd: str, vs: VirtualServer, rs: RealServer) -> None:
        self._visit(lambda s: self._call(
            op, lambda: s.dest(cmd, service=self._service(vs, full=False), dest=self._dest(rs)), vs, rs))

    def add_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        self._dest_op("add_rs", "add", vs, rs)

    def update_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        self._dest_op("update_rs", "set", vs, rs)

    def delete_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        self._dest_op("delete_rs", "del", vs, rs)

    def flush(self) -> None:
        def work(s: Any) -> None:
            from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
            from pyroute2.netlink.generic import ipvs as gipvs

            # The first request binds the family; the flush needs its id.
            self._call("list_vs", lambda: s.service("dump"))
            msg = gipvs.ipvsmsg()
            msg["cmd"] = gipvs.IPVS_CMD_FLUSH
            msg["version"] = gipvs.GENL_VERSION
            self._call("flush", lambda: s.nlm_request(msg, msg_type=s.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK))

        self._visit(work)

    def table(self) -> tuple[VirtualServer, ...]:
        return self.batch(lambda c: IPVS.table(c))


def load_table(client: IPVS, services: Iterable[VirtualServer]) -> None:
    """Add every virtual server of SERVICES and its real servers (one visit for a real client)."""

    def work(c: IPVS) -> None:
        for vs in services:
            c.add_virtual_server(vs)
            for rs in vs.reals:
                c.add_real_server(vs, rs)

    client.batch(work)
