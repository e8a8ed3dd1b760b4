"""IPVS objects as the kernel holds them: virtual servers, real servers, their errors and their one text form.

A `VirtualServer` is one IPVS service (protocol, address, port) with its
scheduler, flags, persistence timeout and persistence netmask, and, when
the record describes a whole service (a compile's IR, a table read back),
its destinations in `reals`; a `RealServer` is one destination (address,
port, weight, forwarding method). Both are frozen msgspec records with no
checks in the constructor, because IPVS mode's compiler makes one per
endpoint and service port in its hot loop; `VirtualServer.new` and
`RealServer.new` check their arguments and put them in the canonical form
(address as Python prints it, protocol lower case, no HASHED flag, the
family's full netmask written 0), so two records that mean the same kernel
object compare equal. Records sort in one fixed order (family, protocol,
address, port), the order every listing uses. Firewall-mark services are
not modelled by the kernel clients: kube-proxy never makes them.

`ipvs_error` words a kernel refusal; the real client and the fake both build
their messages with it from the operation and the errno, so a parity test
can compare whole messages. `render` writes virtual servers in `ipvsadm
-Sn` spelling (`-A -t 10.96.0.10:53 -s rr` / `-a -t ... -r ... -m -w 1`):
it is IPVS mode's `ipvsadm.rules` and the clients' `dump`, the one ipvsadm
writer.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import os
from typing import Iterable

from msgspec import Struct
from msgspec.structs import replace

from ...diagnostics import UsageError

# Protocol (lower case, as the plan and ipvsadm's save spell it) -> IP
# protocol number, and the ipvsadm option that names a service of it.
PROTOCOLS: dict[str, int] = {"tcp": 6, "udp": 17, "sctp": 132}
PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in PROTOCOLS.items()}
_IPVSADM_PROTO = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}

# Forwarding methods of a real server, as ipvsadm writes them (-m, -g, -i),
# and the kernel's IP_VS_CONN_F_* number of each (its internal LOCALNODE
# is not one a user can ask for).
MASQ, ROUTE, TUNNEL = "m", "g", "i"
FORWARD: dict[str, int] = {MASQ: 0, TUNNEL: 2, ROUTE: 3}
FORWARD_NAMES: dict[int, str] = {v: k for k, v in FORWARD.items()}

# Service flags (IP_VS_SVC_F_*, include/uapi/linux/ip_vs.h). HASHED is the
# kernel's own bookkeeping: it is set on every service it holds and is
# never part of a record.
FLAG_PERSISTENT = 0x0001  # ClientIP affinity: `-p TIMEOUT`
FLAG_HASHED = 0x0002
FLAG_ONEPACKET = 0x0004
FLAG_SCHED1 = 0x0008
FLAG_SCHED2 = 0x0010  # kube-proxy's FlagSourceHash, set with scheduler mh (`-b mh-port`)
FLAG_SCHED3 = 0x0020
SCHED_FLAGS = (FLAG_SCHED1, FLAG_SCHED2, FLAG_SCHED3)
# What ipvsadm calls the three scheduler flags, per scheduler (`-b a,b`); others say flag-N.
_FLAG_NAMES = {"sh": ("sh-fallback", "sh-port", "flag-3"), "mh": ("mh-fallback", "mh-port", "flag-3")}
_GENERIC_FLAG_NAMES = ("flag-1", "flag-2", "flag-3")

# The schedulers Linux ships (net/netfilter/ipvs/ip_vs_*.c). The kernel
# loads ip_vs_<name> on demand and refuses a name it has no module for
# (ENOENT); the fake refuses names outside this set the same way.
SCHEDULERS = frozenset({"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo",
                        "ovf", "mh", "twos"})
SCHED_NAME_MAX = 15  # IP_VS_SCHEDNAME_MAXLEN is 16 with the terminating NUL
WEIGHT_MAX = 2**31 - 1  # the kernel keeps the weight in an int and refuses more (ERANGE)


def sched_flag_names(scheduler: str, flags: int) -> list[str]:
    """The `-b` words ipvsadm prints for FLAGS under SCHEDULER (empty when none is set)."""
    names = _FLAG_NAMES.get(scheduler, _GENERIC_FLAG_NAMES)
    return [n for bit, n in zip(SCHED_FLAGS, names) if flags & bit]


def sched_flag_bit(scheduler: str, name: str) -> int | None:
    """The flag bit of one `-b` word (generic `flag-N` words work for any scheduler)."""
    for names in (_FLAG_NAMES.get(scheduler, _GENERIC_FLAG_NAMES), _GENERIC_FLAG_NAMES):
        if name in names:
            return SCHED_FLAGS[names.index(name)]
    return None


def hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _canonical_ip(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        raise ValueError(f"{what}: {text!r} is an IPv4-mapped IPv6 address; give the IPv4 address")
    return ip


def _check_port(port: int, what: str) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"{what}: {port!r} is not a port (0-65535)")


class RealServer(Struct, frozen=True, gc=False):
    """One destination of a virtual server. kube-proxy always masquerades (NAT) with weight 1."""

    address: str
    port: int
    weight: int = 1
    method: str = MASQ  # MASQ (NAT, what kube-proxy uses), ROUTE (direct routing) or TUNNEL

    @classmethod
    def new(cls, address: str, port: int, weight: int = 1, method: str = MASQ) -> RealServer:
        """A checked record in canonical form; ValueError naming the field otherwise."""
        ip = str(_canonical_ip(address, "real server address"))
        _check_port(port, "real server port")
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= WEIGHT_MAX:
            raise ValueError(f"real server weight: {weight!r} is not 0-{WEIGHT_MAX}")
        if method not in FORWARD:
            raise ValueError(f"real server forwarding method: {method!r} is not one of {', '.join(FORWARD)}")
        return cls(ip, port, weight, method)

    @property
    def masquerade(self) -> bool:
        return self.method == MASQ

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def key(self) -> tuple[str, int]:
        """What names the destination within its service: (address, port)."""
        return (self.address, self.port)

    def sort_key(self) -> tuple:
        return (self.family, ipaddress.ip_address(self.address), self.port)

    def __str__(self) -> str:
        return hostport(self.address, self.port)


class VirtualServer(Struct, frozen=True, gc=False):
    """One IPVS service; `reals` its destinations in the order written (empty where only the service is meant)."""

    protocol: str  # tcp | udp | sctp (| fwmark for a foreign service read from a node's ipvsadm -Sn)
    address: str  # for a fwmark service: "" (IPv4) or "::" (IPv6)
    port: int  # the firewall mark for a fwmark service
    scheduler: str = "rr"
    flags: int = 0  # FLAG_* bits, FLAG_HASHED never set
    timeout: int = 0  # persistence timeout in seconds (with FLAG_PERSISTENT)
    reals: tuple[RealServer, ...] = ()
    netmask: int = 0  # persistence netmask as a prefix length; 0: the family's full length (kube-proxy's)

    @classmethod
    def new(cls, protocol: str, address: str, port: int, scheduler: str = "rr", flags: int = 0, timeout: int = 0,
            reals: Iterable[RealServer] = (), netmask: int = 0) -> VirtualServer:
        """A checked record in canonical form; ValueError naming the field otherwise."""
        ip = _canonical_ip(address, "virtual server address")
        proto = protocol.lower() if isinstance(protocol, str) else protocol
        if proto not in PROTOCOLS:
            raise ValueError(f"virtual server protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        _check_port(port, "virtual server port")
        if not isinstance(scheduler, str) or not scheduler or len(scheduler) > SCHED_NAME_MAX \
                or not scheduler.isascii() or not scheduler.replace("_", "").isalnum():
            raise ValueError(f"virtual server scheduler: {scheduler!r} is not a scheduler name")
        if not isinstance(flags, int) or not 0 <= flags < 2**32:
            raise ValueError(f"virtual server flags: {flags!r} is not a 32-bit value")
        if not isinstance(timeout, int) or not 0 <= timeout < 2**32:
            raise ValueError(f"virtual server timeout: {timeout!r} is not a number of seconds")
        full = ip.max_prefixlen
        if not isinstance(netmask, int) or not 0 <= netmask <= full:
            raise ValueError(f"virtual server netmask: {netmask!r} is not a prefix length (1-{full})")
        return cls(proto, str(ip), port, scheduler, flags & ~FLAG_HASHED, timeout, tuple(reals),
                   0 if netmask == full else netmask)

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def key(self) -> tuple[str, str, int]:
        """What names the service in the kernel: (protocol, address, port)."""
        return (self.protocol, self.address, self.port)

    @property
    def persistent(self) -> bool:
        return bool(self.flags & FLAG_PERSISTENT)

    @property
    def settings(self) -> tuple[str, int, int, int]:
        """What an update may change: scheduler, flags, timeout (when persistent) and netmask."""
        return (self.scheduler, self.flags, self.timeout if self.persistent else 0, self.netmask)

    def bare(self) -> VirtualServer:
        """The service alone, without its destinations (how a client lists it)."""
        return replace(self, reals=()) if self.reals else self

    def sort_key(self) -> tuple:
        return (self.family, PROTOCOLS.get(self.protocol, 0), ipaddress.ip_address(self.address or "0.0.0.0"),
                self.port)

    def __str__(self) -> str:
        return f"{self.protocol.upper()} {hostport(self.address, self.port)}"


class IPVSError(UsageError):
    """The kernel (or the fake, in its place) refused an IPVS operation; `errno` says why."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class IPVSUnavailable(IPVSError):
    """This kernel has no IP Virtual Server (the ip_vs module is neither loaded nor loadable)."""


# What an errno means for each kind of operation (the kernel reuses ENOENT
# and ESRCH: ESRCH is always "no such virtual server").
_ERRNO_TEXT = {
    ("add_vs", _errno.EEXIST): "the virtual server exists already",
    ("add_vs", _errno.ENOENT): "the kernel has no such scheduler",
    ("update_vs", _errno.ENOENT): "the kernel has no such scheduler",
    ("add_rs", _errno.EEXIST): "the real server exists already",
    ("add_rs", _errno.EINVAL): "a real server of another address family needs tunnel forwarding",
    ("update_rs", _errno.EINVAL): "a real server of another address family needs tunnel forwarding",
    ("update_rs", _errno.ENOENT): "no such real server",
    ("delete_rs", _errno.ENOENT): "no such real server",
}
_OP_TEXT = {
    "add_vs": "add virtual server", "update_vs": "update virtual server", "delete_vs": "delete virtual server",
    "get_vs": "read virtual server", "list_rs": "list the real servers of", "list_vs": "list virtual servers",
    "add_rs": "add real server", "update_rs": "update real server", "delete_rs": "delete real server",
    "flush": "flush IPVS",
}


def ipvs_error(op: str, errno: int, vs: VirtualServer | None = None, rs: RealServer | None = None) -> IPVSError:
    """The error for OP (a key of `_OP_TEXT`) refused with ERRNO, worded the same by every client."""
    if errno == _errno.ESRCH:
        why = "no such virtual server"
    else:
        why = _ERRNO_TEXT.get((op, errno)) or os.strerror(errno)
    subject = ""
    if rs is not None and vs is not None:
        subject = f" {rs} of {vs}"
    elif vs is not None:
        subject = f" {vs}"
    if vs is not None and vs.scheduler and errno == _errno.ENOENT and op in ("add_vs", "update_vs"):
        why += f" ({vs.scheduler!r}; the module ip_vs_{vs.scheduler} is missing)"
    return IPVSError(f"cannot {_OP_TEXT.get(op, op)}{subject}: {why}", errno)


def sorted_services(services: Iterable[VirtualServer]) -> tuple[VirtualServer, ...]:
    """SERVICES in the one fixed order: by (family, protocol, address, port), each one's reals by address."""
    return tuple(replace(vs, reals=tuple(sorted(vs.reals, key=RealServer.sort_key)))
                 for vs in sorted(services, key=VirtualServer.sort_key))


# ------------------------------------------------------------------ ipvsadm text


def service_arg(vs: VirtualServer) -> str:
    """`-t VIP:PORT` (or `-u`, `--sctp-service`, `-f MARK [-6]` for a firewall-mark service)."""
    if vs.protocol == "fwmark":
        return f"-f {vs.port} -6" if vs.address == "::" else f"-f {vs.port}"
    return f"{_IPVSADM_PROTO[vs.protocol]} {hostport(vs.address, vs.port)}"


def _netmask_word(vs: VirtualServer) -> str:
    if vs.family == 4:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{vs.netmask}").netmask)
    return str(vs.netmask)


def service_options(vs: VirtualServer) -> str:
    """`-s SCHED [-p TIMEOUT [-M MASK]] [-o] [-b FLAGS]`, in ipvsadm's order."""
    line = f"-s {vs.scheduler}"
    if vs.persistent:
        line += f" -p {vs.timeout}"
        if vs.netmask:
            line += f" -M {_netmask_word(vs)}"
    if vs.flags & FLAG_ONEPACKET:
        line += " -o"
    names = sched_flag_names(vs.scheduler, vs.flags)
    if names:
        line += " -b " + ",".join(names)
    return line


def service_line(vs: VirtualServer, verb: str = "-A") -> str:
    return f"{verb} {service_arg(vs)} {service_options(vs)}"


def real_line(vs: VirtualServer, rs: RealServer, verb: str = "-a") -> str:
    return f"{verb} {service_arg(vs)} -r {hostport(rs.address, rs.port)} -{rs.method} -w {rs.weight}"


def render(services: Iterable[VirtualServer]) -> str:
    """Virtual servers with their reals in `ipvsadm -Sn` spelling, in the order given (`sorted_services` to fix one)."""
    out: list[str] = []
    # Many virtual servers share one tuple of real servers (a port's ClusterIP,
    # NodePorts and LB IPs): format each tuple's destinations once, then one
    # C-level join per virtual server puts the `-a ... -r ` head before each.
    # The tuple is kept beside its text, so its id cannot be reused meanwhile.
    done: dict[int, tuple[tuple[RealServer, ...], list[str]]] = {}
    for vs in services:
        svc = service_arg(vs)
        out.append(f"-A {svc} {service_options(vs)}\n")
        reals = vs.reals
        if not reals:
            continue
        hit = done.get(id(reals))
        if hit is not None and hit[0] is reals:
            parts = hit[1]
        else:
            if any(":" in r.address for r in reals):
                parts = [f"{hostport(r.address, r.port)} -{r.method} -w {r.weight}\n" for r in reals]
            else:  # no brackets to decide: one f-string per destination
                parts = [f"{r.address}:{r.port} -{r.method} -w {r.weight}\n" for r in reals]
            done[id(reals)] = (reals, parts)
        head = f"-a {svc} -r "
        out.append(head)
        out.append(head.join(parts))
    return "".join(out)
