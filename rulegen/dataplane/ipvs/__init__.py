"""IP Virtual Server: the records (`model`), the interface and its real client (`client`), the fake (`fake`)."""

from __future__ import annotations

from .client import IPVS, RealIPVS, ipvs_missing_reason, kernel_has_ipvs, load_table, require_ipvs
from .fake import FakeIPVS
from .model import (
    FLAG_PERSISTENT,
    FLAG_SCHED2,
    MASQ,
    ROUTE,
    TUNNEL,
    IPVSError,
    IPVSUnavailable,
    RealServer,
    VirtualServer,
    render,
    sorted_services,
)

__all__ = [
    "FLAG_PERSISTENT", "FLAG_SCHED2", "IPVS", "MASQ", "ROUTE", "TUNNEL", "FakeIPVS", "IPVSError", "IPVSUnavailable",
    "RealIPVS", "RealServer", "VirtualServer", "ipvs_missing_reason", "kernel_has_ipvs", "load_table", "render",
    "require_ipvs", "sorted_services",
]
