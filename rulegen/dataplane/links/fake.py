"""Dummy interfaces and addresses in memory, with the real client's answers and errors.

`FakeLinks` is one namespace's links. `kinds` is what its "kernel" can make:
without "dummy" in it, `ensure_dummy` fails as a kernel without the dummy
module does (the message is `client.link_error`'s, as for the real one).
Other interfaces (a veth, an uplink) can be put in with `add_device` so that
"exists and is not a dummy" is tested too.
"""

from __future__ import annotations

import errno

from .client import KUBE_IPVS0, LinkError, Links, _sort_key, canonical_address, is_link_local, link_error


class FakeLinks(Links):
    def __init__(self, kinds: frozenset[str] | set[str] = frozenset({"dummy"})) -> None:
        self.kinds = frozenset(kinds)
        # A new namespace has only its loopback, down and without addresses.
        self.devices: dict[str, tuple[str, set[str]]] = {"lo": ("loopback", set())}
        self.log: list[tuple] = []

    def add_device(self, name: str, kind: str) -> None:
        self.devices[name] = (kind, set())

    def exists(self, name: str) -> bool:
        return name in self.devices

    def ensure_dummy(self, name: str = KUBE_IPVS0) -> bool:
        dev = self.devices.get(name)
        if dev is not None:
            if dev[0] != "dummy":
                raise LinkError(f"cannot use {name}: it exists and is a {dev[0]} interface, not a dummy", errno.EEXIST)
            return False
        if "dummy" not in self.kinds:
            raise link_error("create", name, errno.EOPNOTSUPP)
        self.devices[name] = ("dummy", set())
        self.log.append(("create", name))
        return True

    def delete(self, name: str = KUBE_IPVS0) -> bool:
        if self.devices.pop(name, None) is None:
            return False
        self.log.append(("delete", name))
        return True

    def _addrs(self, op: str, name: str, address: str | None = None) -> set[str]:
        dev = self.devices.get(name)
        if dev is None:
            raise link_error(op, name, errno.ENODEV, address)
        return dev[1]

    def addresses(self, name: str = KUBE_IPVS0) -> list[str]:
        return sorted((a for a in self._addrs("list", name) if not is_link_local(a)), key=_sort_key)

    def add_address(self, name: str, address: str) -> bool:
        addr = canonical_address(address)
        have = self._addrs("add", name, addr)
        if addr in have:
            return False
        have.add(addr)
        self.log.append(("add", name, addr))
        return True

    def remove_address(self, name: str, address: str) -> bool:
        addr = canonical_address(address)
        have = self._addrs("remove", name, addr)
        if addr not in have:
            return False
        have.discard(addr)
        self.log.append(("remove", name, addr))
        return True
