"""An in-memory IPVS table with the kernel's semantics, for tests without root or ip_vs.

`FakeIPVS` refuses what the kernel refuses, with the same errno and the same
message (`model.ipvs_error`), checked in the kernel's order, as seen on
Linux 6.1 (tests/vm/test_ipvs_kernel.py runs one script against both and
compares every answer):

- adding a virtual server that exists: EEXIST; an unknown scheduler: ENOENT;
- updating or deleting a missing virtual server, or changing the real
  servers of one: ESRCH (listing them gives an empty list);
- a real server of another address family than its service, unless it is
  tunnelled: EINVAL;
- adding a real server that exists: EEXIST; updating or deleting a missing
  one: ENOENT.

Listings come back in the fixed order of the model (the kernel's own order
is its hash order). `log` records every change made, each service by its
bare record (no reals), so a test can tell "nothing was changed" from
"changed and changed back".
"""

from __future__ import annotations

import errno
from typing import Any

from .client import IPVS
from .model import SCHEDULERS, TUNNEL, IPVSUnavailable, RealServer, VirtualServer, ipvs_error


class FakeIPVS(IPVS):
    """One network namespace's IPVS table, in memory. SCHEDULERS: the names this "kernel" can load."""

    def __init__(self, schedulers: frozenset[str] | set[str] = SCHEDULERS) -> None:
        self.schedulers = frozenset(schedulers)
        self._services: dict[tuple[str, str, int], VirtualServer] = {}
        self._dests: dict[tuple[str, str, int], dict[tuple[str, int], RealServer]] = {}
        self.log: list[tuple] = []

    def _live(self, op: str, vs: VirtualServer, rs: RealServer | None = None) -> dict[tuple[str, int], RealServer]:
        if vs.key not in self._services:
            raise ipvs_error(op, errno.ESRCH, vs, rs)
        return self._dests[vs.key]

    def _check_scheduler(self, op: str, vs: VirtualServer) -> None:
        if vs.scheduler not in self.schedulers:
            raise ipvs_error(op, errno.ENOENT, vs)

    @staticmethod
    def _check_family(op: str, vs: VirtualServer, rs: RealServer) -> None:
        if rs.family != vs.family and rs.method != TUNNEL:
            raise ipvs_error(op, errno.EINVAL, vs, rs)

    def virtual_servers(self) -> list[VirtualServer]:
        return sorted(self._services.values(), key=VirtualServer.sort_key)

    def get_virtual_server(self, vs: VirtualServer) -> VirtualServer | None:
        return self._services.get(vs.key)

    def add_virtual_server(self, vs: VirtualServer) -> None:
        if vs.key in self._services:
            raise ipvs_error("add_vs", errno.EEXIST, vs)
        self._check_scheduler("add_vs", vs)
        vs = vs.bare()
        self._services[vs.key] = vs
        self._dests[vs.key] = {}
        self.log.append(("add_vs", vs))

    def update_virtual_server(self, vs: VirtualServer) -> None:
        self._live("update_vs", vs)
        self._check_scheduler("update_vs", vs)
        vs = vs.bare()
        self._services[vs.key] = vs
        self.log.append(("update_vs", vs))

    def delete_virtual_server(self, vs: VirtualServer) -> None:
        self._live("delete_vs", vs)
        del self._services[vs.key]
        del self._dests[vs.key]
        self.log.append(("delete_vs", vs.bare()))

    def real_servers(self, vs: VirtualServer) -> list[RealServer]:
        # The kernel answers a dump of a missing service's destinations with nothing, not an error.
        return sorted(self._dests.get(vs.key, {}).values(), key=RealServer.sort_key)

    def add_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        dests = self._live("add_rs", vs, rs)
        self._check_family("add_rs", vs, rs)
        if rs.key in dests:
            raise ipvs_error("add_rs", errno.EEXIST, vs, rs)
        dests[rs.key] = rs
        self.log.append(("add_rs", vs.bare(), rs))

    def update_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        dests = self._live("update_rs", vs, rs)
        self._check_family("update_rs", vs, rs)
        if rs.key not in dests:
            raise ipvs_error("update_rs", errno.ENOENT, vs, rs)
        dests[rs.key] = rs
        self.log.append(("update_rs", vs.bare(), rs))

    def delete_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        dests = self._live("delete_rs", vs, rs)
        if dests.pop(rs.key, None) is None:
            raise ipvs_error("delete_rs", errno.ENOENT, vs, rs)
        self.log.append(("delete_rs", vs.bare(), rs))

    def flush(self) -> None:
        self._services.clear()
        self._dests.clear()
        self.log.append(("flush",))


class NoIPVS(IPVS):
    """IPVS in a kernel without ip_vs: every call is refused with REASON, as `RealIPVS` refuses it there."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.log: list[tuple] = []  # as FakeIPVS's, which stays empty: nothing is ever changed

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise IPVSUnavailable(self.reason, errno.EPROTONOSUPPORT)

    virtual_servers = get_virtual_server = add_virtual_server = update_virtual_server = _refuse
    delete_virtual_server = real_servers = add_real_server = update_real_server = delete_real_server = _refuse
    flush = table = dump = batch = _refuse
