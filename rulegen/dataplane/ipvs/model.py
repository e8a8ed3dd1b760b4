"""IPVS objects as the kernel holds them: virtual servers, real servers, their errors and text.

A `VirtualServer` is one IPVS service (address, protocol, port) with its
scheduler, flags, persistence timeout and persistence netmask; a
`RealServer` is one destination of it (address, port, weight, forwarding
method). Both are frozen, checked and put in canonical form when made, so
two records that mean the same kernel object compare equal, and they sort in
one fixed order (family, protocol, address, port), the order `render` and
every listing use. Firewall-mark services are not modelled: kube-proxy never
makes them.

`ipvs_error` words a kernel refusal; the real client and the fake both build
their messages with it from the operation and the errno, so a parity test
can compare whole messages. `render` writes a table in `ipvsadm-save -n`
spelling (`-A -t 10.96.0.10:53 -s rr` / `-a -t ... -r ... -m -w 1`), which
is also the syntax of the `ipvsadm.rules` that compile writes for ipvs mode.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from ...diagnostics import UsageError

# Protocol name (as kube-proxy spells it) -> IP protocol number, and the
# ipvsadm option that names a service of that protocol.
PROTOCOLS: dict[str, int] = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in PROTOCOLS.items()}
_IPVSADM_PROTO = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}

# Forwarding methods (IP_VS_CONN_F_*) a user can ask for, with ipvsadm's
# option for each (the kernel's internal LOCALNODE is not one of them).
FORWARD: dict[str, int] = {"masq": 0, "tunnel": 2, "route": 3}
FORWARD_NAMES: dict[int, str] = {v: k for k, v in FORWARD.items()}
_IPVSADM_FWD = {"masq": "-m", "tunnel": "-i", "route": "-g"}

# Service flags (IP_VS_SVC_F_*). HASHED is the kernel's own bookkeeping: it
# is set on every service it holds and is never part of a record.
FLAG_PERSISTENT = 0x0001
FLAG_HASHED = 0x0002
FLAG_ONEPACKET = 0x0004
FLAG_SCHED1 = 0x0008
FLAG_SCHED2 = 0x0010  # kube-proxy's FlagSourceHash ("mh-port" with the mh scheduler)
FLAG_SCHED3 = 0x0020
# What ipvsadm calls the scheduler flags, per scheduler; others are flag-N.
_SCHED_FLAG_NAMES = {
    "sh": {FLAG_SCHED1: "sh-fallback", FLAG_SCHED2: "sh-port"},
    "mh": {FLAG_SCHED1: "mh-fallback", FLAG_SCHED2: "mh-port"},
}

# The schedulers Linux ships (net/netfilter/ipvs/ip_vs_*.c). The kernel
# loads ip_vs_<name> on demand and refuses a name it has no module for
# (ENOENT); the fake refuses names outside this set the same way.
SCHEDULERS = frozenset({"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo",
                        "ovf", "mh", "twos"})
SCHED_NAME_MAX = 15  # IP_VS_SCHEDNAME_MAXLEN is 16 with the terminating NUL
WEIGHT_MAX = 2**31 - 1  # the kernel keeps the weight in an int and refuses more (ERANGE)


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


@dataclass(frozen=True, slots=True)
class VirtualServer:
    """One IPVS service. `netmask` is the persistence netmask as a prefix length (32 / 128 by default)."""

    address: str
    protocol: str
    port: int
    scheduler: str = "rr"
    flags: int = 0
    timeout: int = 0
    netmask: int = 0  # 0: the family's full length

    def __post_init__(self) -> None:
        ip = _canonical_ip(self.address, "virtual server address")
        object.__setattr__(self, "address", str(ip))
        proto = self.protocol.upper() if isinstance(self.protocol, str) else self.protocol
        if proto not in PROTOCOLS:
            raise ValueError(f"virtual server protocol: {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        object.__setattr__(self, "protocol", proto)
        _check_port(self.port, "virtual server port")
        if not isinstance(self.scheduler, str) or not self.scheduler or len(self.scheduler) > SCHED_NAME_MAX \
                or not self.scheduler.isascii() or not self.scheduler.replace("_", "").isalnum():
            raise ValueError(f"virtual server scheduler: {self.scheduler!r} is not a scheduler name")
        if not isinstance(self.flags, int) or not 0 <= self.flags < 2**32:
            raise ValueError(f"virtual server flags: {self.flags!r} is not a 32-bit value")
        # The kernel sets HASHED on everything it holds; a record never carries it.
        object.__setattr__(self, "flags", self.flags & ~FLAG_HASHED)
        if not isinstance(self.timeout, int) or not 0 <= self.timeout < 2**32:
            raise ValueError(f"virtual server timeout: {self.timeout!r} is not a number of seconds")
        full = ip.max_prefixlen
        mask = self.netmask or full
        if not isinstance(mask, int) or not 1 <= mask <= full:
            raise ValueError(f"virtual server netmask: {self.netmask!r} is not a prefix length (1-{full})")
        object.__setattr__(self, "netmask", mask)

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

    def sort_key(self) -> tuple:
        return (self.family, PROTOCOLS[self.protocol], ipaddress.ip_address(self.address), self.port)

    def __str__(self) -> str:
        return f"{self.protocol} {_hostport(self.address, self.port)}"


@dataclass(frozen=True, slots=True)
class RealServer:
    """One destination of a virtual server. kube-proxy always masquerades (NAT) with weight 1."""

    address: str
    port: int
    weight: int = 1
    forward: str = "masq"

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", str(_canonical_ip(self.address, "real server address")))
        _check_port(self.port, "real server port")
        if not isinstance(self.weight, int) or isinstance(self.weight, bool) or not 0 <= self.weight <= WEIGHT_MAX:
            raise ValueError(f"real server weight: {self.weight!r} is not 0-{WEIGHT_MAX}")
        if self.forward not in FORWARD:
            raise ValueError(f"real server forwarding: {self.forward!r} is not one of {', '.join(FORWARD)}")

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
        return _hostport(self.address, self.port)


Table = Mapping[VirtualServer, Sequence[RealServer]]


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


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


def sorted_table(table: Table) -> dict[VirtualServer, tuple[RealServer, ...]]:
    """TABLE in the one fixed order: services by (family, protocol, address, port), their destinations by address."""
    return {vs: tuple(sorted(table[vs], key=RealServer.sort_key)) for vs in sorted(table, key=VirtualServer.sort_key)}


def _flag_words(vs: VirtualServer) -> list[str]:
    out = []
    if vs.persistent:
        out += ["-p", str(vs.timeout)]
        if vs.netmask != (32 if vs.family == 4 else 128):
            mask = str(ipaddress.ip_network(f"0.0.0.0/{vs.netmask}").netmask) if vs.family == 4 else str(vs.netmask)
            out += ["-M", mask]
    if vs.flags & FLAG_ONEPACKET:
        out.append("-o")
    names = _SCHED_FLAG_NAMES.get(vs.scheduler, {})
    sched = [names.get(bit, f"flag-{i}") for i, bit in enumerate((FLAG_SCHED1, FLAG_SCHED2, FLAG_SCHED3), 1)
             if vs.flags & bit]
    if sched:
        out += ["-b", ",".join(sched)]
    return out


def render(table: Table) -> str:
    """TABLE in `ipvsadm-save -n` spelling, in the fixed order of `sorted_table`."""
    lines: list[str] = []
    for vs, dests in sorted_table(table).items():
        svc = f"{_IPVSADM_PROTO[vs.protocol]} {_hostport(vs.address, vs.port)}"
        lines.append(" ".join(["-A", svc, "-s", vs.scheduler, *_flag_words(vs)]))
        for rs in dests:
            lines.append(f"-a {svc} -r {rs} {_IPVSADM_FWD[rs.forward]} -w {rs.weight}")
    return "".join(line + "\n" for line in lines)


def table_from(pairs: Iterable[tuple[VirtualServer, Iterable[RealServer]]]) -> dict[VirtualServer, tuple[RealServer, ...]]:
    """A sorted table from (virtual server, real servers) pairs."""
    return sorted_table({vs: tuple(rss) for vs, rss in pairs})
