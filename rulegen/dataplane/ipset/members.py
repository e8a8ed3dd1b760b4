"""Does an ipset hold a packet? `-m set --match-set NAME FLAGS` answered as the kernel answers it.

Pure functions over the records `model.parse_save` reads from `ipset save`,
for the tracers (an iptables node's Calico sets, an IPVS node's KUBE-*
sets). The packet is asked through a callable, `get(kind, direction)`,
for the parts a set type stores: an address ("ip"), a protocol and port
("port"), an interface ("iface") or the packet mark ("mark"), taken from
the source or destination side as each flag says. As in the kernel
(`ip_set_test`): a set with more dimensions than the rule gives flags
never matches; extra flags are ignored; a set of the other address family
never matches; in a `hash:net*` set the most specific matching entry
decides, and a `nomatch` entry there is an exception that does not match;
a `list:set` matches when one of its member sets does.

What this module does not evaluate (MAC addresses, `physdev:` interfaces,
set types it does not know) raises `Unknown`, so a tracer can take it as
an open question rather than guess.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Callable

from .model import IPSet

# set type → the kind of each dimension
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "hash:ip": ("ip",),
    "hash:net": ("net",),
    "hash:ip,port": ("ip", "port"),
    "hash:net,port": ("net", "port"),
    "hash:ip,port,ip": ("ip", "port", "ip"),
    "hash:ip,port,net": ("ip", "port", "net"),
    "hash:net,port,net": ("net", "port", "net"),
    "hash:net,net": ("net", "net"),
    "hash:ip,mark": ("ip", "mark"),
    "hash:net,iface": ("net", "iface"),
    "bitmap:ip": ("ip",),
    "bitmap:port": ("bareport",),
}
MAX_LIST_DEPTH = 8  # list:set cannot hold a list:set in the kernel; a dump that claims so is refused here

Getter = Callable[[str, str], object]


class Unknown(ValueError):
    """A set type, member or packet part this module does not evaluate."""


@lru_cache(maxsize=1 << 14)
def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Unknown(f"member part {text!r} is not an address or network") from None


@lru_cache(maxsize=1 << 14)
def _range(text: str) -> tuple[int, int, int]:
    """`a.b.c.d`, `a.b.c.d/n` or `a.b.c.d-e.f.g.h` → (version, first, last) as integers."""
    if "-" in text:
        lo, _, hi = text.partition("-")
        try:
            a, b = ipaddress.ip_address(lo), ipaddress.ip_address(hi)
        except ValueError:
            raise Unknown(f"member part {text!r} is not an address range") from None
        return a.version, int(a), int(b)
    n = _net(text)
    return n.version, int(n.network_address), int(n.broadcast_address)


def _port(text: str) -> tuple[str, int]:
    proto, colon, port = text.rpartition(":")
    if not colon:
        proto = "tcp"  # ipset's default when a member names no protocol
    if not port.isdigit():
        raise Unknown(f"member port {text!r} (service names and ICMP types are not evaluated)")
    return proto.lower(), int(port)


def _entry_parts(typ: str, member: str) -> list[str]:
    dims = DIMENSIONS[typ]
    parts = member.split(",")
    if len(parts) != len(dims):
        raise Unknown(f"member {member!r} does not have the {len(dims)} part(s) of a {typ} set")
    return parts


def _part_holds(kind: str, part: str, value: object) -> tuple[bool, int]:
    """Does one member part hold the packet's value? (answer, prefix length for the most specific match)."""
    if kind in ("ip", "net"):
        ip = ipaddress.ip_address(str(value))
        ver, lo, hi = _range(part)
        if ver != ip.version:
            return False, 0
        bits = _net(part).prefixlen if "-" not in part else 0
        return lo <= int(ip) <= hi, bits
    if kind == "port":
        proto, port = _port(part)
        want = value  # (proto, port)
        return (proto, port) == want, 0
    if kind == "bareport":
        _, port = value  # type: ignore[misc]
        if "-" in part:
            lo, _, hi = part.partition("-")
            return int(lo) <= port <= int(hi), 0
        return part.isdigit() and int(part) == port, 0
    if kind == "iface":
        if part.startswith("physdev:"):
            raise Unknown(f"member interface {part!r} (bridge ports are not evaluated)")
        return value is not None and part == value, 0
    if kind == "mark":
        return int(part, 0) == value, 0
    raise Unknown(f"member part kind {kind}")


def _value(kind: str, flag: str, get: Getter) -> object:
    if kind in ("ip", "net"):
        return get("ip", flag)
    if kind in ("port", "bareport"):
        return get("port", flag)
    if kind == "iface":
        return get("iface", flag)
    if kind == "mark":
        return get("mark", flag)
    raise Unknown(f"set dimension {kind}")


def holds(s: IPSet, flags: tuple[str, ...], get: Getter, sets: dict[str, IPSet], family: int,
          depth: int = 0) -> bool:
    """Does set S hold the packet's parts named by FLAGS (`src`/`dst` per dimension)?"""
    if s.type == "list:set":
        if depth >= MAX_LIST_DEPTH:
            raise Unknown(f"list:set {s.name} nests too deep")
        for e in s.entries:
            inner = sets.get(e.member)
            if inner is None:
                raise Unknown(f"list:set {s.name} names set {e.member}, which is not in the saved sets")
            if holds(inner, flags, get, sets, family, depth + 1):
                return True
        return False
    dims = DIMENSIONS.get(s.type)
    if dims is None:
        raise Unknown(f"set type {s.type} (of {s.name}) is not evaluated")
    fam = s.option("family", "inet")
    if (fam == "inet6") != (family == 6):
        return False
    if len(flags) < len(dims):
        return False
    values = [_value(k, f, get) for k, f in zip(dims, flags)]
    # hash:ip / bitmap:ip with `netmask N` store (and look up) whole /N networks by their first address.
    netmask = s.option("netmask") if dims == ("ip",) else None
    best: tuple[int, bool] | None = None  # (specificity, is an exception)
    for e in s.entries:
        spec = 0
        for k, part, v in zip(dims, _entry_parts(s.type, e.member), values):
            if netmask and "/" not in part and "-" not in part:
                part = f"{part}/{netmask}"
            ok, bits = _part_holds(k, part, v)
            if not ok:
                break
            spec += bits
        else:
            nomatch = any(k == "nomatch" for k, _ in e.options)
            if best is None or spec > best[0]:
                best = (spec, nomatch)
    return best is not None and not best[1]
