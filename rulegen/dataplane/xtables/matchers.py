"""How each match and target option reads the packet: the tracer's small, separately tested pieces.

Every function here is pure: an option's values and the packet facts in,
an answer out. Matches answer True/False, or a `Fraction` for the random
ones (`statistic`), which is the share of connections that match. Option
values are read as both rulegen and iptables-save spell them. Anything
not understood raises `Unsupported`, which the engine turns into an error
naming the rule; the tracer never guesses.
"""

from __future__ import annotations

import ipaddress
from fractions import Fraction
from functools import lru_cache

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58}
LOOPBACK_NETS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
CT_STATES = ("INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED", "SNAT", "DNAT")
ADDR_TYPES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
              "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE")


class Unsupported(ValueError):
    """A match, option or target the tracer does not evaluate."""


@lru_cache(maxsize=4096)
def network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """`10.0.0.0/8`, `10.1.2.3`, `10.1.2.3/32`, `10.0.0.0/255.0.0.0` → a network."""
    if "," in value:
        raise Unsupported(f"address list {value!r} (iptables expands it into several rules)")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Unsupported(f"{value!r} is not an address or CIDR (host names are not resolved)") from None


@lru_cache(maxsize=1024)
def address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(ip)


def in_cidr(ip: str, value: str) -> bool:
    """Does address `ip` lie in `value` (CIDR or single address)? Other family: no."""
    net = network(value)
    a = address(ip)
    return a.version == net.version and a in net


def is_loopback(ip: str) -> bool:
    a = address(ip)
    return any(a.version == n.version and a in n for n in LOOPBACK_NETS)


def is_local(ip: str, node_ips: tuple[str, ...] | frozenset[str]) -> bool:
    """addrtype LOCAL: the node's own addresses and loopback.

    In iptables mode ClusterIPs are bound nowhere, so they are not LOCAL.
    """
    return is_loopback(ip) or ip in node_ips


def addr_type(ip: str, node_ips) -> str:
    """The routing type the kernel's addrtype match sees for `ip` (one of ADDR_TYPES)."""
    if is_local(ip, node_ips):
        return "LOCAL"
    a = ipaddress.ip_address(ip)
    if a.is_multicast:
        return "MULTICAST"
    if a.version == 4 and ip == "255.255.255.255":
        return "BROADCAST"
    return "UNICAST"


def addrtype_match(ip: str, types: str, node_ips) -> bool:
    wanted = types.upper().split(",")
    for t in wanted:
        if t not in ADDR_TYPES:
            raise Unsupported(f"addrtype type {t!r}")
    return addr_type(ip, node_ips) in wanted


def iface_match(iface: str | None, pattern: str) -> bool:
    """`-i eth0` exact, `-i veth+` prefix; no interface (locally generated) matches nothing."""
    if iface is None:
        return False
    if pattern.endswith("+"):
        return iface.startswith(pattern[:-1])
    return iface == pattern


def proto_match(proto: str, value: str) -> bool:
    v = value.lower()
    if v in ("all", "0"):
        return True
    if v.isdigit():
        return PROTO_NUMBERS.get(proto) == int(v)
    if v not in PROTO_NUMBERS:
        raise Unsupported(f"protocol {value!r}")
    return PROTO_NUMBERS[v] == PROTO_NUMBERS.get(proto)


def port_match(port: int, value: str) -> bool:
    """`80`, `1000:2000`, `:2000`, `1000:` (iptables port ranges)."""
    try:
        if ":" in value:
            lo, _, hi = value.partition(":")
            return (int(lo) if lo else 0) <= port <= (int(hi) if hi else 65535)
        return port == int(value)
    except ValueError:
        raise Unsupported(f"port {value!r} (service names are not resolved)") from None


def parse_int(value: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        raise Unsupported(f"number {value!r}") from None


def mark_match(mark: int, value: str) -> bool:
    """`-m mark --mark V[/M]`: (mark & M) == V, M all ones when absent."""
    v, _, m = value.partition("/")
    mask = parse_int(m) if m else 0xFFFFFFFF
    return (mark & mask) == parse_int(v)


def mark_target(mark: int, option: str, value: str) -> int:
    """The MARK target's options, as the kernel applies them to the packet mark."""
    v, _, m = value.partition("/")
    val = parse_int(v)
    if option == "--set-xmark":
        mask = parse_int(m) if m else 0xFFFFFFFF
        return ((mark & ~mask) ^ val) & 0xFFFFFFFF
    if option == "--set-mark":
        mask = parse_int(m) if m else 0xFFFFFFFF
        return ((mark & ~mask) | val) & 0xFFFFFFFF
    if m:
        raise Unsupported(f"MARK {option} with a mask")
    if option == "--or-mark":
        return mark | val
    if option == "--and-mark":
        return mark & val
    if option == "--xor-mark":
        return mark ^ val
    raise Unsupported(f"MARK option {option}")


def probability(value: str) -> Fraction:
    """A printed probability → the exact share it stands for.

    kube-proxy prints 1/n with 10 decimals (`0.3333333333`), iptables-save
    prints the kernel's 31-bit value with 11 (`0.33333333349`). Both are
    within 1e-9 of a fraction with a denominator up to 10000, and two such
    fractions are at least 1e-8 apart, so the nearest one is the intended
    value; anything else is taken exactly as written.
    """
    try:
        exact = Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise Unsupported(f"probability {value!r}") from None
    if not 0 <= exact <= 1:
        raise Unsupported(f"probability {value!r} outside 0..1")
    near = exact.limit_denominator(10000)
    return near if abs(near - exact) < Fraction(1, 10 ** 9) else exact


def ctstate_match(states: str, dnat: bool, snat: bool) -> bool:
    """conntrack --ctstate for the first packet of a new connection.

    Its state is NEW; the virtual states DNAT/SNAT hold once a NAT rule
    rewrote the destination/source of the connection.
    """
    have = {"NEW"}
    if dnat:
        have.add("DNAT")
    if snat:
        have.add("SNAT")
    wanted = states.upper().split(",")
    for s in wanted:
        if s not in CT_STATES:
            raise Unsupported(f"conntrack state {s!r}")
    return bool(have.intersection(wanted))


def tcp_flags_match(mask: str, comp: str) -> bool:
    """`--tcp-flags MASK COMP` for the first packet of a connection: a bare SYN."""
    names = {"SYN", "ACK", "FIN", "RST", "URG", "PSH", "ALL", "NONE"}
    ms = set(mask.upper().split(","))
    cs = set(comp.upper().split(","))
    for n in ms | cs:
        if n not in names:
            raise Unsupported(f"TCP flag {n!r}")
    allf = {"SYN", "ACK", "FIN", "RST", "URG", "PSH"}

    def expand(s: set[str]) -> set[str]:
        if "ALL" in s:
            return set(allf)
        return s - {"NONE"}

    ms, cs = expand(ms), expand(cs)
    return ({"SYN"} & ms) == cs


def split_endpoint(value: str) -> tuple[str, int | None]:
    """DNAT `--to-destination` value: `IP`, `IP:PORT`, `[IPv6]:PORT`, `IPv6`."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, None
    if "-" in host or (port is not None and "-" in port):
        raise Unsupported(f"address or port range {value!r} (the chosen address is not predictable)")
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        raise Unsupported(f"--to-destination {value!r}") from None
    if port is None or port == "":
        return ip, None
    try:
        p = int(port)
    except ValueError:
        raise Unsupported(f"--to-destination {value!r}") from None
    return ip, p


# ------------------------------------------------------------------ ipsets (`-m set --match-set NAME FLAGS`)

# What each dimension of a set type holds, in order: an address, a network
# (an entry's CIDR contains the packet's address), a protocol and port, or
# (bitmap:port) a port of any protocol that has ports.
SET_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "hash:ip": ("ip",),
    "hash:net": ("net",),
    "hash:ip,port": ("ip", "port"),
    "hash:net,port": ("net", "port"),
    "hash:ip,port,ip": ("ip", "port", "ip"),
    "hash:ip,port,net": ("ip", "port", "net"),
    "bitmap:port": ("anyport",),
}
_PORT_PROTOS = ("tcp", "udp", "sctp", "udplite")


def _set_port(text: str, any_proto: bool = False) -> tuple[str | None, int, int]:
    """An entry's `proto:PORT` (or bare PORT: tcp, or any with ANY_PROTO), with `A-B` ranges: (proto, low, high)."""
    proto, sep, port = text.rpartition(":")
    proto = proto.lower() if sep else (None if any_proto else "tcp")
    lo, _, hi = port.partition("-")
    try:
        a = int(lo)
        b = int(hi) if hi else a
    except ValueError:
        raise Unsupported(f"set entry part {text!r} (only protocol:port entries are evaluated)") from None
    if proto not in _PORT_PROTOS and not (proto is None and any_proto):
        raise Unsupported(f"set entry part {text!r} (only tcp, udp and sctp ports are evaluated)")
    return proto, a, b


class SetMembers:
    """One ipset as the walk reads it: its type and its entries as `ipset save` prints them.

    Shared by every tracer that meets `-m set`: IPVS mode feeds its
    compiled sets, a node's `ipset save` feeds the same. An entry is split
    into its dimensions once, when the set is made, so a match is a few
    comparisons. A type or an entry the walk cannot read raises
    `Unsupported` when a rule asks about the set, not before.
    """

    __slots__ = ("name", "type", "entries", "_parsed", "_error")

    def __init__(self, name: str, type: str, entries) -> None:
        self.name, self.type, self.entries = name, type, tuple(entries)
        self._parsed: list[tuple] | None = None
        self._error: str | None = None

    def _rows(self) -> list[tuple]:
        if self._parsed is None:
            dims = SET_DIMENSIONS.get(self.type)
            if dims is None:
                raise Unsupported(f"set {self.name} of type {self.type} (the walk reads "
                                  f"{', '.join(SET_DIMENSIONS)})")
            rows = []
            for e in self.entries:
                parts = e.split(",")
                if len(parts) != len(dims):
                    raise Unsupported(f"entry {e!r} of set {self.name} ({self.type})")
                row = []
                for kind, part in zip(dims, parts):
                    if kind == "port" or kind == "anyport":
                        row.append(_set_port(part, kind == "anyport"))
                    elif kind == "net" or "/" in part:
                        row.append(network(part))
                    else:
                        row.append(address(part))
                rows.append(tuple(row))
            self._parsed = rows
        return self._parsed

    def dimension(self) -> int:
        dims = SET_DIMENSIONS.get(self.type)
        if dims is None:
            self._rows()  # raises with the reason
        return len(dims or ())

    def contains(self, values: tuple) -> bool:
        """Does an entry hold VALUES: per dimension an address, or (proto, port)?"""
        for row in self._rows():
            for want, have in zip(row, values):
                if isinstance(want, tuple):
                    proto, port = have
                    if (want[0] is not None and proto != want[0]) or not want[1] <= port <= want[2]:
                        break
                elif isinstance(want, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                    if have.version != want.version or have not in want:
                        break
                elif have != want:
                    break
            else:
                return True
        return False


def set_match(sets, name: str, flags: str, proto: str, src: str, sport: int, dst: str, dport: int) -> bool:
    """`--match-set NAME FLAGS` for one packet: is its (src|dst per flag) tuple in the set?

    As the kernel's set match: fewer flags than the set's dimension never
    match; extra flags are ignored; a port dimension matches only a packet
    with ports (tcp, udp, sctp).
    """
    members = sets.get(name) if sets is not None else None
    if members is None:
        raise Unsupported(f"set {name} is not known (no ipset listing holds it)")
    words = flags.split(",")
    if not words or any(w not in ("src", "dst") for w in words):
        raise Unsupported(f"set flags {flags!r}")
    dims = SET_DIMENSIONS.get(members.type) or ()
    if len(words) < members.dimension():
        return False
    values = []
    for kind, w in zip(dims, words):
        if kind == "port" or kind == "anyport":
            if proto not in _PORT_PROTOS:
                return False
            values.append((proto, sport if w == "src" else dport))
        else:
            values.append(address(src if w == "src" else dst))
    return members.contains(tuple(values))


def ipvs_match(virtual: tuple[str, str, int] | None, option: str, value: str | None) -> bool:
    """One option of `-m ipvs`, for a packet IPVS handled (VIRTUAL: its service) or not (None).

    `--ipvs` asks "did IPVS handle the packet"; the others compare the
    service's protocol, address and port, and `--vdir ORIGINAL` the
    direction (a traced packet is always the connection's first, original
    direction). A packet IPVS did not handle matches no option but a
    negated `--ipvs` (the caller applies negation).
    """
    if option == "--ipvs":
        return virtual is not None
    if virtual is None:
        return False
    proto, vaddr, vport = virtual
    if option == "--vproto":
        v = (value or "").lower()
        if v.isdigit():
            return PROTO_NUMBERS.get(proto) == int(v)
        if v not in PROTO_NUMBERS:
            raise Unsupported(f"--vproto {value!r}")
        return v == proto
    if option == "--vaddr":
        return in_cidr(vaddr, value or "")
    if option == "--vport":
        return port_match(vport, value or "")
    if option == "--vdir":
        v = (value or "").upper()
        if v not in ("ORIGINAL", "REPLY"):
            raise Unsupported(f"--vdir {value!r}")
        return v == "ORIGINAL"
    raise Unsupported(f"option {option} of match 'ipvs'")
