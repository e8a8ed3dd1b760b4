"""Kernel and nft versions as lint reads them: from `--kernel-version` / `--nft-version`, or the Node.

A node's kernel version is what the kubelet reports in the Node object
(`status.nodeInfo.kernelVersion`, e.g. `5.15.0-91-generic`); the nft
version is not in any Kubernetes object, so only `--nft-version` gives it
(`nft --version` prints `nftables v1.0.6 (Lester Gooch #5)`; either form, or
`1.0.6`, is read). Versions compare as tuples of numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..diagnostics import UsageError

_VERSION = re.compile(r"(?:^|[^0-9.])v?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The first `MAJOR.MINOR[.PATCH]` in TEXT (`5.15.0-91-generic`, `nftables v1.0.6 (...)`); None without one."""
    m = _VERSION.search(text.strip())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def version_flag(text: str | None, flag: str) -> tuple[int, int, int] | None:
    if text is None:
        return None
    v = parse_version(text)
    if v is None:
        raise UsageError(f"{flag}: {text!r} is not a version (e.g. 5.15.0-91-generic, or 1.0.6)")
    return v


def shown(v: tuple[int, int, int]) -> str:
    return ".".join(str(x) for x in v)


@dataclass(frozen=True)
class Versions:
    """What lint knows of the node's software: each version with where it came from ('' when unknown)."""

    kernel: tuple[int, int, int] | None = None
    kernel_from: str = ""
    nft: tuple[int, int, int] | None = None
    nft_from: str = ""


def from_flags(kernel: str | None, nft: str | None) -> Versions:
    """`--kernel-version` and `--nft-version` as lint takes them (None: not given); UsageError for a non-version."""
    k = version_flag(kernel, "--kernel-version")
    n = version_flag(nft, "--nft-version")
    return Versions(k, f"--kernel-version {kernel}" if k else "", n, f"--nft-version {nft}" if n else "")
