"""In-memory ipsets with `ipset restore` / `ipset save` semantics, for tests without root.

`FakeIPSets` models the set types kube-proxy uses (hash:ip, hash:ip,port,
hash:ip,port,ip, hash:ip,port,net, hash:net, bitmap:port) and the commands
a restore payload holds (create, add, del, flush, destroy, swap), with what
ipset 7 on Linux 6.x does, checked against it by
tests/dataplane/test_ipset.py:

- a restore stops at the first refused line and keeps the lines before it;
- members are stored in the kernel's spelling: `10.0.0.1,80` is
  `10.0.0.1,tcp:80`, protocols are lower case, a /32 (/128) network is a
  plain address and a network keeps only its prefix bits;
- a hash set's hashsize is rounded up to a power of two, at least 64;
  hashsize, maxelem and family default as ipset does; `ipset save` shows
  `bucketsize 12`;
- with -exist, creating a set that exists with the same settings (type,
  family, maxelem, timeout, extensions, range; hashsize may differ),
  re-adding a member and deleting a missing one are not errors;
- counters make every member show `packets 0 bytes 0`.

What it does not model it refuses with kind "unsupported" (ranges and
networks in a hash:ip, non-canonical addresses, timeouts on members, other
set types) rather than guess. It does not know which sets iptables rules
use, so it never answers "in-use".
"""

from __future__ import annotations

import ipaddress
import shlex
import socket
from dataclasses import dataclass, field

from .client import IPSets
from .model import SET_FLAGS, IPSetError

# type -> the parts of a member, in order.
TYPES: dict[str, tuple[str, ...]] = {
    "hash:ip": ("ip",),
    "hash:ip,port": ("ip", "port"),
    "hash:ip,port,ip": ("ip", "port", "ip"),
    "hash:ip,port,net": ("ip", "port", "net"),
    "hash:net": ("net",),
    "bitmap:port": ("bareport",),
}
_PROTOS = ("tcp", "udp", "sctp", "udplite")
_HASH_OPTIONS = {"family", "hashsize", "maxelem", "timeout", "bucketsize"} | SET_FLAGS
_BITMAP_OPTIONS = {"range", "timeout"} | (SET_FLAGS - {"forceadd"})
_MIN_HASHSIZE = 64
_BUCKETSIZE = "12"


class _Refused(Exception):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class _Set:
    name: str
    type: str
    family: str  # "inet" / "inet6" ("" for bitmap:port)
    options: dict[str, str]  # as given, normalised (hashsize rounded); bare flags map to ""
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # member -> its options

    def same_settings(self, other: "_Set") -> bool:
        # What the kernel compares when -exist meets an existing set; hashsize is not among them.
        keep = lambda o: {k: v for k, v in o.items() if k not in ("hashsize", "bucketsize")}  # noqa: E731
        return (self.type, self.family, keep(self.options)) == (other.type, other.family, keep(other.options))

    def create_line(self) -> str:
        words = ["create", self.name, self.type]
        o = self.options
        if self.type.startswith("hash:"):
            words += ["family", self.family, "hashsize", o["hashsize"], "maxelem", o["maxelem"]]
        else:
            words += ["range", o["range"]]
        if "timeout" in o:
            words += ["timeout", o["timeout"]]
        words += [f for f in ("counters", "comment", "skbinfo", "forceadd") if f in o]
        if self.type.startswith("hash:"):
            words += ["bucketsize", _BUCKETSIZE]
        return " ".join(words)

    def add_lines(self) -> list[str]:
        out = []
        for member, opts in self.members.items():
            words = ["add", self.name, member]
            if "counters" in self.options:
                words += ["packets", "0", "bytes", "0"]
            if "comment" in opts:
                words += ["comment", '"' + opts["comment"] + '"']
            out.append(" ".join(words))
        return out


def _int(text: str, what: str, lo: int, hi: int) -> int:
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise _Refused(f"Syntax error: '{text}' is invalid as {what}", "syntax")
    return int(text)


def _new_set(name: str, type_: str, words: list[str]) -> _Set:
    if type_ not in TYPES:
        raise _Refused(f"the fake ipset does not model set type {type_!r}", "unsupported")
    hashed = type_.startswith("hash:")
    allowed = _HASH_OPTIONS if hashed else _BITMAP_OPTIONS
    opts: dict[str, str] = {}
    i = 0
    while i < len(words):
        k = words[i]
        if k not in allowed:
            raise _Refused(f"Syntax error: Unknown argument: '{k}'", "syntax")
        if k in SET_FLAGS:
            opts[k] = ""
            i += 1
            continue
        if i + 1 >= len(words):
            raise _Refused(f"Syntax error: option '{k}' needs a value", "syntax")
        opts[k] = words[i + 1]
        i += 2
    family = ""
    if hashed:
        family = opts.pop("family", "inet")
        if family not in ("inet", "inet6"):
            raise _Refused(f"Syntax error: unknown family '{family}'", "syntax")
        size = _int(opts.get("hashsize", "1024"), "hashsize", 1, 2**31)
        rounded = _MIN_HASHSIZE
        while rounded < size:
            rounded *= 2
        opts["hashsize"] = str(rounded)
        opts["maxelem"] = str(_int(opts.get("maxelem", "65536"), "maxelem", 1, 2**32 - 1))
        opts.pop("bucketsize", None)  # the kernel picks its own
    else:
        if "range" not in opts:
            raise _Refused("Syntax error: Missing mandatory option: range", "syntax")
        lo, _, hi = opts["range"].partition("-")
        a, b = _int(lo, "port", 0, 65535), _int(hi or lo, "port", 0, 65535)
        if a > b:
            raise _Refused("Syntax error: range start is greater than its end", "syntax")
        opts["range"] = f"{a}-{b}"
    if "timeout" in opts:
        opts["timeout"] = str(_int(opts["timeout"], "timeout", 0, 2**31))
    return _Set(name, type_, family, opts)


def _ip(text: str, family: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if "-" in text:
        raise _Refused(f"the fake ipset does not model address ranges ({text})", "unsupported")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise _Refused(f"the fake ipset reads only canonical addresses, not {text!r}", "unsupported") from None
    if (ip.version == 6) != (family == "inet6"):
        kind = "IPv6" if family == "inet6" else "IPv4"
        raise _Refused(f"Syntax error: cannot parse {text}: resolving to {kind} address failed", "syntax")
    return ip


def _host(text: str, family: str) -> str:
    addr, slash, prefix = text.partition("/")
    ip = _ip(addr, family)
    if slash and prefix != str(ip.max_prefixlen):
        raise _Refused(f"the fake ipset does not model networks in an address set ({text})", "unsupported")
    return str(ip)


def _net(text: str, family: str) -> str:
    addr, slash, prefix = text.partition("/")
    ip = _ip(addr, family)
    plen = _int(prefix, "prefix length", 1, ip.max_prefixlen) if slash else ip.max_prefixlen
    if plen == ip.max_prefixlen:
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/{plen}", strict=False))


def _port(text: str, default_proto: str | None = "tcp") -> tuple[str, int]:
    proto, colon, port = text.rpartition(":")
    proto = proto.lower() if colon else (default_proto or "")
    if colon and proto not in _PROTOS:
        raise _Refused(f"the fake ipset does not model protocol {proto!r}", "unsupported")
    if "-" in port:
        raise _Refused(f"the fake ipset does not model port ranges ({text})", "unsupported")
    if port.isdigit():
        return proto, _int(port, "port", 0, 65535)
    try:
        return proto, socket.getservbyname(port, proto or "tcp")
    except OSError:
        raise _Refused(f"Syntax error: cannot parse '{port}' as a {proto or 'tcp'} port", "syntax") from None


def _member(s: _Set, text: str) -> str:
    parts = TYPES[s.type]
    given = text.split(",")
    if len(given) != len(parts):
        raise _Refused(f"Syntax error: Elem separator in {text}, but settype {s.type} supports "
                       f"{'none' if len(parts) == 1 else len(parts) - 1}.", "syntax")
    out: list[str] = []
    for kind, value in zip(parts, given):
        if kind == "ip":
            out.append(_host(value, s.family))
        elif kind == "net":
            out.append(_net(value, s.family))
        elif kind == "port":
            proto, port = _port(value)
            out.append(f"{proto}:{port}")
        else:  # bitmap:port: a bare port number
            port = _port(value, None)[1]
            lo, hi = (int(x) for x in s.options["range"].split("-"))
            if not lo <= port <= hi:
                raise _Refused("Element is out of the range of the set", "out-of-range")
            out.append(str(port))
    return ",".join(out)


def _entry_options(s: _Set, words: list[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    i = 0
    while i < len(words):
        k = words[i]
        if k != "comment":
            raise _Refused(f"the fake ipset does not model member option {k!r}", "unsupported")
        if "comment" not in s.options:
            raise _Refused("Syntax error: Comment extension is not supported by the set", "syntax")
        if i + 1 >= len(words):
            raise _Refused("Syntax error: option 'comment' needs a value", "syntax")
        opts["comment"] = words[i + 1]
        i += 2
    return opts


class FakeIPSets(IPSets):
    """One network namespace's ipsets, in memory. `log` records every payload restored."""

    def __init__(self) -> None:
        self._sets: dict[str, _Set] = {}
        self.log: list[tuple[str, bool]] = []

    def _get(self, name: str) -> _Set:
        s = self._sets.get(name)
        if s is None:
            raise _Refused("The set with the given name does not exist", "no-set")
        return s

    def restore(self, payload: str, exist: bool = True) -> None:
        self.log.append((payload, exist))
        for no, raw in enumerate(payload.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                self._line(line, exist)
            except _Refused as e:
                raise IPSetError(f"ipset restore refused the payload (line {no}): {e}", e.kind, no) from None

    def _line(self, line: str, exist: bool) -> None:
        try:
            words = shlex.split(line)
        except ValueError:
            raise _Refused("Syntax error: unbalanced quotes", "syntax") from None
        cmd, args = words[0], words[1:]
        if cmd == "create":
            if len(args) < 2:
                raise _Refused("Syntax error: create needs a set name and a type", "syntax")
            new = _new_set(args[0], args[1], args[2:])
            old = self._sets.get(new.name)
            if old is not None:
                if exist and old.same_settings(new):
                    return
                raise _Refused("Set cannot be created: set with the same name already exists", "set-exists")
            self._sets[new.name] = new
        elif cmd in ("add", "del"):
            if len(args) < 2:
                raise _Refused(f"Syntax error: {cmd} needs a set name and a member", "syntax")
            s = self._get(args[0])
            member = _member(s, args[1])
            if cmd == "add":
                opts = _entry_options(s, args[2:])
                if member in s.members and not exist:
                    raise _Refused("Element cannot be added to the set: it's already added", "entry-exists")
                if member not in s.members and len(s.members) >= int(s.options.get("maxelem", 2**32)):
                    raise _Refused("Hash is full, cannot add more elements", "full")
                s.members[member] = opts
            else:
                if len(args) > 2:
                    raise _Refused(f"Syntax error: Unknown argument: '{args[2]}'", "syntax")
                if member not in s.members:
                    if exist:
                        return
                    raise _Refused("Element cannot be deleted from the set: it's not added", "no-entry")
                del s.members[member]
        elif cmd in ("flush", "destroy"):
            if len(args) > 1:
                raise _Refused(f"Syntax error: Unknown argument: '{args[1]}'", "syntax")
            targets = [self._get(args[0]).name] if args else list(self._sets)
            for name in targets:
                if cmd == "flush":
                    self._sets[name].members.clear()
                else:
                    del self._sets[name]
        elif cmd == "swap":
            if len(args) != 2:
                raise _Refused("Syntax error: swap needs two set names", "syntax")
            a, b = self._get(args[0]), self._get(args[1])
            if (a.type, a.family) != (b.type, b.family):
                raise _Refused("The sets cannot be swapped: their type does not match", "type-mismatch")
            a.name, b.name = b.name, a.name
            self._sets[a.name], self._sets[b.name] = a, b
        else:
            raise _Refused(f"No command specified: unknown argument {cmd}", "syntax")

    def save(self, name: str | None = None) -> str:
        if name is not None and name not in self._sets:
            raise IPSetError("ipset save failed: The set with the given name does not exist", "no-set")
        out: list[str] = []
        for s in self._sets.values():
            if name is None or s.name == name:
                out.append(s.create_line())
                out.extend(s.add_lines())
        return "".join(line + "\n" for line in out)

