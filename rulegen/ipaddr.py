"""IP and CIDR parsing the way kube-proxy reads them.

kube-proxy parses addresses with Go's legacy `net.ParseIP` rules
(k8s.io/utils/net `ParseIPSloppy`): IPv4 octets may carry leading zeros and
are read as *decimal* (`010` is 10, not 8), and a CIDR prefix may too
(`/016`). Python's `ipaddress` refuses leading zeros, so IPv4 is parsed here
by hand and everything is printed in canonical form. An IPv4-mapped IPv6
address (`::ffff:1.2.3.4`) is IPv4 to Go, and so it is here.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache

_pton = socket.inet_pton
_AF4 = socket.AF_INET


def _v4(text: str) -> str | None:
    parts = text.split(".")
    if len(parts) != 4:
        return None
    out = []
    for p in parts:
        if not p or not p.isascii() or not p.isdigit():
            return None
        # ParseIPSloppy strips any number of leading zeros before parsing, so
        # "0010" is 10; only what is left has to be a 1-3 digit octet.
        p = p.lstrip("0") or "0"
        if len(p) > 3:
            return None
        v = int(p)
        if v > 255:
            return None
        out.append(p)
    return ".".join(out)


def parse_ip(text: str) -> str | None:
    """Canonical form of an IP address, or None when kube-proxy could not read it."""
    if text.__class__ is str and ":" not in text:
        # Fast path, not cached: inet_pton accepts exactly canonical dotted
        # decimal (no leading zeros), which is then its own canonical form. A
        # cluster's 100k endpoint addresses are all different; an LRU entry
        # for each cost three times the check and held 20 MB.
        try:
            _pton(_AF4, text)
            return text
        except (OSError, ValueError):
            pass
    return _parse_ip(text)


@lru_cache(maxsize=1 << 14)
def _parse_ip(text: str) -> str | None:
    if not isinstance(text, str):
        return None
    if ":" not in text:
        return _v4(text)
    if "%" in text:  # zones are not IPs to ParseIP
        return None
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        # Go accepts an embedded IPv4 tail with leading zeros too.
        head, _, tail = text.rpartition(":")
        v4 = _v4(tail) if "." in tail else None
        if v4 is None:
            return None
        try:
            addr = ipaddress.IPv6Address(head + ":" + v4)
        except ValueError:
            return None
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@lru_cache(maxsize=1 << 14)
def parse_cidr(text: str) -> str | None:
    """Canonical network (`a.b.c.d/n`) of a CIDR, or None when unreadable."""
    if not isinstance(text, str) or "/" not in text:
        return None
    addr, _, prefix = text.partition("/")
    if not prefix or not prefix.isascii() or not prefix.isdigit():
        return None
    prefix = prefix.lstrip("0") or "0"  # leading zeros, any number of them, as in ParseCIDRSloppy
    if len(prefix) > 3:
        return None
    ip = parse_ip(addr)
    if ip is None:
        return None
    bits = int(prefix)
    is6 = ":" in ip
    # Go's ParseCIDR keeps a mapped address as 16 bytes, so its prefix counts 128 bits.
    if not is6 and ":" in addr:
        if bits < 96 or bits > 128:
            return None
        bits -= 96
    if bits > (128 if is6 else 32):
        return None
    net = ipaddress.ip_network(f"{ip}/{bits}", strict=False)
    return str(net)


def family(ip: str) -> int:
    """4 or 6 for a canonical address or CIDR."""
    return 6 if ":" in ip else 4


def cidr_contains(cidr: str, ip: str) -> bool:
    net = ipaddress.ip_network(cidr, strict=False)
    a = ipaddress.ip_address(ip)
    return a.version == net.version and a in net


def is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


def endpoint_string(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def host_bits(text: str, canon: str) -> bool:
    """Whether CIDR TEXT (read as CANON by `parse_cidr`) sets bits past its prefix, as 10.244.1.5/16 does."""
    ip = parse_ip(text.partition("/")[0].strip())
    return ip is not None and ip != canon.partition("/")[0]


def host_bits_note(text: str, canon: str) -> str:
    """What is said of such a CIDR: kube-proxy takes the network and says nothing; the API server warns."""
    return (f"{text.strip()!r} has bits set past its prefix length; read as {canon}, as kube-proxy reads it "
            f"(did you mean {canon}, or {text.strip().partition('/')[0]} alone?)")
