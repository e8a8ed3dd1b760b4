"""Every chain, set and object name derived from a service port, in one place.

kube-proxy names per-service objects by hashing: iptables chains are
`PREFIX + base32(sha256(SPN + proto [+ endpoint]))[:16]`, nftables objects
`PREFIX-` + 8 hash characters + `-` + a readable base. Each hash costs a
SHA-256, so each is computed once and cached (a 10k-Service cluster needs
~110k of them).

Length arithmetic: iptables chain names may be 28 characters long (29 with
the terminating NUL in the kernel's 29-byte field). `KUBE-SEP-` is 9 + 16 =
25, `KUBE-SVC-`/`KUBE-SVL-`/`KUBE-EXT-` 9 + 16 = 25, `KUBE-FW-` 8 + 16 = 24:
all fit. nftables names are cut at 240 characters (237 + "...").
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

_sha = hashlib.sha256
_b32 = base64.b32encode
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


NFT_NAME_MAX = 240


def nft_name(prefix: str, base: str) -> str:
    """nftables object name: `prefix` + 8 hash chars + `-` + base, cut to 240."""
    h = _b32(_sha(base.encode()).digest())[:8].decode()
    full = f"{h}-{base}"
    if len(full) > NFT_NAME_MAX:
        full = full[: NFT_NAME_MAX - 3] + "..."
    return prefix + full
