"""Every chain, set and object name derived from a service port, in one place.

kube-proxy names per-service objects by hashing: iptables chains are
`PREFIX + base32(sha256(SPN + proto [+ endpoint]))[:16]`, nftables objects
`PREFIX-` + 8 hash characters + `-` + a readable base. Each hash costs a
SHA-256, so each is computed once and cached (a 10k-Service cluster needs
~110k of them in iptables mode; nftables mode needs one per service port, and
one per endpoint only under session affinity).

Length arithmetic: iptables chain names may be 28 characters long (29 with
the terminating NUL in the kernel's 29-byte field). `KUBE-SEP-` is 9 + 16 =
25, `KUBE-SVC-`/`KUBE-SVL-`/`KUBE-EXT-` 9 + 16 = 25, `KUBE-FW-` 8 + 16 = 24:
all fit. nftables names are cut at 240 characters (237 + "...").
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

_sha = hashlib.sha256
_ALPHA = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# Two base32 characters per 10 bits: 16 characters are 80 bits = 8 lookups.
# CPython's base64.b32encode is pure Python (~7 us a call); this is ~10x less.
_PAIRS = [a + b for a in _ALPHA for b in _ALPHA]
_from_bytes = int.from_bytes


def b32_16(data: bytes) -> str:
    """First 16 characters of the standard base32 encoding of sha256(data)."""
    n = _from_bytes(_sha(data).digest()[:10], "big")
    P = _PAIRS
    # One f-string builds the result once (seven `+` would build six intermediates).
    return (f"{P[n >> 70]}{P[(n >> 60) & 1023]}{P[(n >> 50) & 1023]}{P[(n >> 40) & 1023]}"
            f"{P[(n >> 30) & 1023]}{P[(n >> 20) & 1023]}{P[(n >> 10) & 1023]}{P[n & 1023]}")


@lru_cache(maxsize=1 << 20)
def port_hash(spn_proto: str) -> str:
    """The 16 characters shared by a service port's SVC/SVL/EXT/FW chains."""
    return b32_16(spn_proto.encode())


def sep_hash(spn_proto: str, endpoint: str) -> str:
    # Not cached: each endpoint chain name is computed exactly once per compile.
    return b32_16((spn_proto + endpoint).encode())


def service_port_name(namespace: str, name: str, port_name: str) -> str:
    """kube-proxy's ServicePortName string: `ns/name` or `ns/name:port`."""
    return f"{namespace}/{name}:{port_name}" if port_name else f"{namespace}/{name}"


class IptablesNames:
    """The chain names of one service port (iptables and IPVS-glue modes)."""

    __slots__ = ("svc", "svl", "ext", "fw", "_base")

    def __init__(self, spn: str, proto: str):
        self._base = spn + proto
        h = port_hash(self._base)
        self.svc = "KUBE-SVC-" + h
        self.svl = "KUBE-SVL-" + h
        self.ext = "KUBE-EXT-" + h
        self.fw = "KUBE-FW-" + h

    def sep(self, endpoint: str) -> str:
        return "KUBE-SEP-" + sep_hash(self._base, endpoint)


# nftables names: knftables allows 256 characters; kube-proxy keeps 16 for the
# longest prefix ("endpoint-", "external-", "firewall-", ...) and cuts the
# hashed base at 240 (chainNameBaseLengthMax): 237 characters and "...". The
# hash is taken before the cut, so two long names that differ only in the cut
# part still differ. A service-port base is at most 8 + 1 + 63 + 1 + 63 + 1 +
# 4 + 1 + 63 = 205 characters and is never cut; an endpoint base adds "__",
# up to 39 characters of IPv6 address and "/" + 5 port digits, so it can be.
NFT_NAME_MAX = 240

# What may appear in a name base: DNS labels, port names, protocols, the
# separators kube-proxy adds and an address with ":" already turned into ".".
# The loader validates names as the API server does; this is the last guard
# before a name becomes an nftables identifier.
_NFT_BASE_OK = re.compile(r"[a-z0-9][a-z0-9./_-]*\Z")


def b32_8(data: bytes) -> str:
    """First 8 characters of the standard base32 encoding of sha256(data): 40 bits, 4 lookups."""
    n = _from_bytes(_sha(data).digest()[:5], "big")
    P = _PAIRS
    return f"{P[n >> 30]}{P[(n >> 20) & 1023]}{P[(n >> 10) & 1023]}{P[n & 1023]}"


def nft_base(base: str) -> str:
    """kube-proxy's hashAndTruncate: 8 hash characters, "-", the base; cut to 240."""
    if not _NFT_BASE_OK.match(base):
        raise ValueError(f"{base!r} cannot be part of an nftables object name")
    full = f"{b32_8(base.encode())}-{base}"
    if len(full) > NFT_NAME_MAX:
        full = full[: NFT_NAME_MAX - 3] + "..."
    return full


def nft_name(prefix: str, base: str) -> str:
    """nftables object name: `prefix` + 8 hash chars + `-` + base, cut to 240."""
    return prefix + nft_base(base)


class NftNames:
    """The nftables object names of one service port, hashed once.

    The four per-port chains share one base, `ns/name/proto/port`, so one
    SHA-256 serves them all; an endpoint's chain and affinity set share the
    base `ns/name/proto/port__IP/PORT` (IPv6 colons become dots, which
    nftables names allow).
    """

    __slots__ = ("svc", "local", "ext", "fw", "_ep")

    def __init__(self, namespace: str, name: str, proto: str, port_name: str):
        base = f"{namespace}/{name}/{proto}/{port_name}"
        b = nft_base(base)
        self.svc = "service-" + b
        self.local = "local-" + b
        self.ext = "external-" + b
        self.fw = "firewall-" + b
        self._ep = base + "__"

    def endpoint_base(self, ip: str, port: int) -> str:
        """The hashed base of one endpoint's objects; prefix it with "endpoint-" or "affinity-"."""
        return nft_base(f"{self._ep}{ip.replace(':', '.')}/{port}")
