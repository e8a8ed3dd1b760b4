"""Raw nf_tables netlink for the few commands whose `nft` cost is not the kernel's work.

`nft -f` first reads the kernel's view of the table (every chain and set,
for rules and elements), and the kernel then looks each anonymous map up
by its name `__map%d`, which scans every set of the table five times; for
kube-proxy's shapes both costs grow with the table (docs/nftables-load.md).
This module speaks nf_tables' batch protocol directly for:

- rules of kube-proxy's two anonymous-map shapes,
  `meta l4proto P dnat ip|ip6 addr . port to numgen random mod N map { K : ADDR . PORT , ... }`
  and `numgen random mod N vmap { K : goto|jump CHAIN , ... }`, encoded
  attribute for attribute as nft 1.0.6 encodes them (so `nft list` prints
  them the same), except that each anonymous map gets a concrete short
  name (`__<counter>.<tag>`) instead of the `__map%d` template, which
  spares the kernel a numbering search, and its elements are sent by set
  id alone, which spares it a name search (anonymous sets' names are
  internal: no listing shows them);
- `add chain` of a chain without properties, `delete chain`, and
  `flush chain` (a rule deletion without a handle);
- elements added to or deleted from named sets and maps of plain
  concatenated types (ipv4_addr, ipv6_addr, inet_proto, inet_service,
  mark; verdict data), with comments.

`Encoder.op(verb, record)` returns the messages for one operation (as a
Transaction or `script.diff` holds it), `Encoder.command(line)` those for
one script command; either None when it is outside these shapes (the
caller then uses nft).
`send` wraps messages in one batch (one transaction), optionally bound to a
ruleset generation: the kernel refuses the batch with ERESTART when the
generation moved, which is how a cached view of the table is proven fresh.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import secrets
import socket
import struct
from dataclasses import dataclass

from ...kernel.netlink import nft_genid as _nft_genid
from ...kernel.netns import netlink_socket_in as _netlink_socket_in
from . import script as sc
from .model import ADD, DELETE, FLUSH, Chain, Element, Rule, Set
from .parse import command_object, read_command

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFNL_BATCH_GENID = 1
NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN = 3, 5
NFT_MSG_NEWRULE, NFT_MSG_DELRULE = 6, 8
NFT_MSG_NEWSET = 9
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x200, 0x400, 0x800
NLA_F_NESTED = 0x8000
NLMSG_ERROR = 2
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS = 1, 2
FAMILIES = {"ip": 2, "ip6": 10, "inet": 1}
SET_ANONYMOUS, SET_CONSTANT, SET_MAP, SET_TIMEOUT, SET_EVAL = 0x1, 0x2, 0x8, 0x10, 0x20
TYPE_INTEGER, TYPE_VERDICT_DATA = 4, 0xFFFFFF00
VERDICTS = {"drop": 0, "accept": 1, "continue": -1, "return": -5}
JUMPS = {"jump": -3, "goto": -4}
PROTOS = {"tcp": 6, "udp": 17, "sctp": 132}
# nft's set user data for a numgen-keyed map: key in host byte order, data
# byte order unset, data not an interval; a verdict map also records the
# type of its data expression (a verdict).
_UDATA_ADDR_MAP = bytes.fromhex("000401000000" "010400000000" "060400000000")
# nft's user data for a set keyed by an address: the key is in big-endian byte order.
_UDATA_KEY_BIG_ENDIAN = bytes.fromhex("000402000000")
_UDATA_VERDICT_MAP = bytes.fromhex("000401000000" "010400000000" "04080004010000000100" "060400000000")
# datatype name → (nft's type id, length in bytes)
DATATYPES = {"ipv4_addr": (7, 4), "ipv6_addr": (8, 16), "inet_proto": (12, 1), "inet_service": (13, 2),
             "mark": (19, 4)}

_DNAT_RE = re.compile(r"^meta l4proto (tcp|udp|sctp) dnat (ip|ip6) addr \. port to numgen random mod (\d+) "
                      r"map \{ (.+) \}$")
_VMAP_RE = re.compile(r"^numgen random mod (\d+) vmap \{ (.+) \}$")
# kube-proxy's session-affinity rules: the lookup and the update of an
# endpoint's affinity set, and the endpoint chain's DNAT to one address.
_SADDR_LOOKUP_RE = re.compile(r"^(ip|ip6) saddr @([A-Za-z0-9_./-]+) (goto|jump) ([A-Za-z0-9_./-]+)$")
_SADDR_UPDATE_RE = re.compile(r"^update @([A-Za-z0-9_./-]+) \{ (ip|ip6) saddr \}$")
_DNAT_TO_RE = re.compile(r"^meta l4proto (tcp|udp|sctp) dnat to (?:([0-9.]+)|\[([0-9a-fA-F:.]+)\]):(\d+)$")
_CHAIN_NAME_RE = re.compile(r"^[A-Za-z_.][A-Za-z0-9_./-]*$")


class NetlinkError(OSError):
    """The kernel refused a batch: `errno`; `index` of the refused message and `offset` of the refused
    attribute in it when the kernel names them; `detail`, the kernel's own words, if any."""

    def __init__(self, err: int, message: str, index: int | None = None, offset: int | None = None,
                 detail: str = "") -> None:
        super().__init__(err, message)
        self.index = index
        self.offset = offset
        self.detail = detail


# ------------------------------------------------------------------ encoding


def _attr(atype: int, payload: bytes) -> bytes:
    head = struct.pack("HH", 4 + len(payload), atype)
    return head + payload + b"\0" * (-len(payload) % 4)


def _str(atype: int, s: str) -> bytes:
    return _attr(atype, s.encode() + b"\0")


_HDR = struct.Struct("=HH")


def _u32(atype: int, v: int) -> bytes:
    return _HDR.pack(8, atype) + (v & 0xFFFFFFFF).to_bytes(4, "big")


def _nest(atype: int, *attrs: bytes) -> bytes:
    return _attr(atype | NLA_F_NESTED, b"".join(attrs))


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(1, _str(1, name), _nest(2, *attrs))


@dataclass
class Msg:
    """One netlink message of a batch, before sequence numbers are given out."""

    mtype: int  # NFT_MSG_*
    flags: int
    family: int
    body: bytes
    command: int = -1  # index of the script command it came from
    items: list[str] | None = None  # an element message's elements, as written

    def element_at(self, offset: int) -> int | None:
        """Which element of this message holds byte OFFSET (counted from the message's header)."""
        for atype, payload, start in _walk(self.body, 20):  # after the netlink header and nfgenmsg
            if atype == 3:  # the element list
                for i, (_, elem, at) in enumerate(_walk(payload, start + 4)):
                    if at <= offset < at + 4 + len(elem):
                        return i
        return None

    def pack(self, seq: int) -> bytes:
        head = struct.pack("IHHII", 16 + 4 + len(self.body), (NFNL_SUBSYS_NFTABLES << 8) | self.mtype,
                           NLM_F_REQUEST | self.flags, seq, 0)
        return head + struct.pack("BBH", self.family, 0, 0) + self.body


class Encoder:
    """Encodes script commands for one table; set ids are unique within one encoder's batches."""

    def __init__(self, family: str, table: str, fresh: bool = False) -> None:
        if family not in FAMILIES:
            raise ValueError(f"family {family!r} has no netlink encoding here")
        self.family = family
        self.nfproto = FAMILIES[family]
        self.table = table
        self._ids = itertools.count(1)
        # Anonymous map names: short (every later search of the table's sets
        # measures each name), different from each other from their third
        # character on (the kernel's uniqueness check compares each new name
        # with every set's), unique (a counter, then a random tag per
        # encoder), and never of nft's `__map%d` form, which the kernel parses.
        # FRESH: the only encoder making anonymous maps in a table created by the
        # same load, so no tag is needed: `__<counter>.` fits the kernel's 8-byte
        # allocations (shorter names and twice as many per cache line for every
        # search; different from every tagged name).
        self._tag = "" if fresh else "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(5))
        self._names = itertools.count()
        self.set_types: dict[str, tuple[list[str], str | None]] = {}  # named set → (key types, data type)
        self._table_attr = _str(1, table)
        self._set_fixed: dict[tuple[int, int], bytes] = {}
        self._named_ids: dict[str, int] = {}  # named sets this encoder made, by name: their batch ids
        self._verdicts: dict[str, bytes | None] = {}

    def learn_sets(self, sets) -> None:
        """Remember the element types of named sets (`state.SetState`s) so their elements can be encoded."""
        for s in sets:
            t = set_type(s.decl)
            if t is not None:
                self.set_types[s.decl.name] = t

    # -- rules

    @staticmethod
    def shaped(body: str) -> bool:
        """Is BODY of a shape `rule` encodes (it may still refuse bad addresses)?"""
        return bool(_DNAT_RE.match(body) or _VMAP_RE.match(body) or _SADDR_LOOKUP_RE.match(body)
                    or _SADDR_UPDATE_RE.match(body) or _DNAT_TO_RE.match(body))

    def rule(self, chain: str, body: str) -> list[Msg] | None:
        m = _DNAT_RE.match(body)
        if m:
            return self._dnat_map(chain, m)
        m = _VMAP_RE.match(body)
        if m:
            return self._verdict_map(chain, m)
        m = _SADDR_LOOKUP_RE.match(body)
        if m:
            return self._saddr_lookup(chain, m)
        m = _SADDR_UPDATE_RE.match(body)
        if m:
            return self._saddr_update(chain, m)
        m = _DNAT_TO_RE.match(body)
        if m:
            return self._dnat_to(chain, m)
        return None

    def named_set(self, decl) -> Msg | None:
        """`add set` of a set keyed by one address, dynamic with a timeout (kube-proxy's affinity sets), or None.

        Encoded as nft encodes it: flags timeout and eval (dynamic), the key
        type and length, the timeout in milliseconds, nft's user data (the
        key's byte order); and a set id, so its rules in the same batch may
        name it either way.
        """
        if (type(decl) is not Set or decl.comment is not None or decl.timeout is None
                or sorted(decl.flags) != ["dynamic", "timeout"] or decl.type not in ("ipv4_addr", "ipv6_addr")
                or not _CHAIN_NAME_RE.match(decl.name)):
            return None
        key_type, key_len = DATATYPES[decl.type]
        set_id = next(self._ids)
        self._named_ids[decl.name] = set_id
        body = (self._table_attr + _str(2, decl.name) + _u32(3, SET_TIMEOUT | SET_EVAL) + _u32(4, key_type)
                + _u32(5, key_len) + _u32(10, set_id) + _attr(11, struct.pack(">Q", decl.timeout * 1000))
                + _attr(13, _UDATA_KEY_BIG_ENDIAN))
        return Msg(NFT_MSG_NEWSET, NLM_F_CREATE, self.nfproto, body)

    def _set_ref(self, name_attr: int, id_attr: int, name: str) -> bytes:
        """A set named by name, and by its batch id when this encoder made it."""
        set_id = self._named_ids.get(name)
        return _str(name_attr, name) + (_u32(id_attr, set_id) if set_id is not None else b"")

    def _saddr_lookup(self, chain: str, m: re.Match) -> list[Msg] | None:
        fam, name, verb, target = m.groups()
        if fam != self.family:
            return None
        exprs = (_SADDR[fam] + _expr("lookup", _u32(2, 1), self._set_ref(1, 4, name))
                 + _expr("immediate", _u32(1, 0), _nest(2, _nest(2, _u32(1, JUMPS[verb]), _str(2, target)))))
        return [self._newrule(chain, exprs)]

    def _saddr_update(self, chain: str, m: re.Match) -> list[Msg] | None:
        name, fam = m.groups()
        if fam != self.family:
            return None
        # the key from register 1, operation update, the set
        exprs = _SADDR[fam] + _expr("dynset", _u32(4, 1), _u32(3, 1), self._set_ref(1, 2, name))
        return [self._newrule(chain, exprs)]

    def _dnat_to(self, chain: str, m: re.Match) -> list[Msg] | None:
        proto, v4, v6, port = m.groups()
        if (v6 is not None) != (self.family == "ip6"):
            return None
        try:
            addr = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, v6 or v4)
            port_b = int(port).to_bytes(2, "big")
        except (OSError, ValueError, OverflowError):
            return None
        exprs = (_DNAT_HEAD[PROTOS[proto]]
                 + _expr("immediate", _u32(1, 1), _nest(2, _attr(1, addr)))
                 + _expr("immediate", _u32(1, 2), _nest(2, _attr(1, port_b)))
                 + (_NAT6_TO if v6 else _NAT4_TO))
        return [self._newrule(chain, exprs)]

    def _anon_set(self, size: int, data_type: int, data_len: int, udata: bytes) -> tuple[Msg, str, int]:
        set_id = next(self._ids)
        name = f"__{_b36(next(self._names))[::-1]}.{self._tag}"
        fixed = self._set_fixed.get((data_type, data_len))
        if fixed is None:
            fixed = (_u32(3, SET_ANONYMOUS | SET_CONSTANT | SET_MAP) + _u32(4, TYPE_INTEGER) + _u32(5, 4)
                     + _u32(6, data_type) + _u32(7, data_len))
            self._set_fixed[(data_type, data_len)] = fixed
        body = (self._table_attr + _str(2, name) + fixed + _u32(10, set_id)
                + _nest(9, _u32(1, size)) + _attr(13, udata))
        # NLM_F_EXCL: a name already in use must fail, never bind the other set.
        return Msg(NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_EXCL, self.nfproto, body), name, set_id

    def _elements_by_id(self, set_id: int, elems: list[bytes]) -> list[Msg]:
        # By set id alone: a name would make the kernel scan every set of the table.
        head = _str(1, self.table) + _u32(4, set_id)
        return [Msg(NFT_MSG_NEWSETELEM, NLM_F_CREATE, self.nfproto, head + _nest(3, *part))
                for part in _split(elems)]

    def _dnat_map(self, chain: str, m: re.Match) -> list[Msg] | None:
        proto, fam, mod, inner = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        if fam != self.family or mod == 0:
            return None
        v6 = fam == "ip6"
        af = socket.AF_INET6 if v6 else socket.AF_INET
        elem = _ELEM6 if v6 else _ELEM4
        elems = []
        try:
            for k, item in enumerate(inner.split(" , ") if " , " in inner else inner.split(", ")):
                key, sep, value = item.partition(" : ")
                addr, sep2, port = value.partition(" . ")
                if not (sep and sep2) or key.strip() != str(k):
                    return None
                elems.append(elem.pack(k, socket.inet_pton(af, addr.strip()), int(port)))
        except (OSError, ValueError, OverflowError, struct.error):
            return None
        if len(elems) != mod:
            return None
        data_type = (DATATYPES["ipv6_addr" if v6 else "ipv4_addr"][0] << 6) | DATATYPES["inet_service"][0]
        newset, name, set_id = self._anon_set(mod, data_type, 20 if v6 else 8, _UDATA_ADDR_MAP)
        # The port follows the address: 32-bit register 9 after a 4-byte
        # address in register 1 (8); 128-bit register 2 after a 16-byte one.
        exprs = (_DNAT_HEAD[PROTOS[proto]] + _numgen(mod)
                 + _expr("lookup", _u32(2, 1), _u32(3, 1), _str(1, name), _u32(4, set_id))
                 + (_NAT6 if v6 else _NAT4))
        return [newset, *self._elements_by_id(set_id, elems), self._newrule(chain, exprs)]

    def _verdict_map(self, chain: str, m: re.Match) -> list[Msg] | None:
        mod, inner = int(m.group(1)), m.group(2)
        elems = []
        for k, item in enumerate(_map_items(inner)):
            if item is None or item[0] != str(k):
                return None
            verdict = _verdict(item[1])
            if verdict is None:
                return None
            elems.append(_nest(1, _nest(1, _attr(1, struct.pack("=I", k))), _nest(2, verdict)))
        if len(elems) != mod or mod == 0:
            return None
        newset, name, set_id = self._anon_set(mod, TYPE_VERDICT_DATA, 0, _UDATA_VERDICT_MAP)
        exprs = _numgen(mod) + _expr("lookup", _u32(2, 1), _u32(3, 0), _str(1, name), _u32(4, set_id))
        return [newset, *self._elements_by_id(set_id, elems), self._newrule(chain, exprs)]

    def _newrule(self, chain: str, exprs: bytes) -> Msg:
        body = _str(1, self.table) + _str(2, chain) + _nest(4, exprs)
        return Msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, self.nfproto, body)

    def new_chain(self, chain: str) -> Msg:
        """A regular chain without properties (`add chain F T NAME`)."""
        return Msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, self.nfproto, self._table_attr + _str(3, chain))

    def del_chain(self, chain: str) -> Msg:
        return Msg(NFT_MSG_DELCHAIN, 0, self.nfproto, self._table_attr + _str(3, chain))

    def flush_chain(self, chain: str) -> Msg:
        return Msg(NFT_MSG_DELRULE, 0, self.nfproto, _str(1, self.table) + _str(2, chain))

    # -- elements of named sets

    def elements(self, verb: str, set_name: str, items: list[Element]) -> list[Msg] | None:
        """`add`/`delete` of ITEMS (records) in named set SET_NAME, or None if not encodable."""
        types = self.set_types.get(set_name)
        if types is None:
            return None
        keys, data = types
        data_types = data.split(" . ") if data not in (None, "verdict") else None
        out = []
        for e in items:
            k = _key(keys, e.key)
            if k is None:
                return None
            parts = [_nest(1, _attr(1, k))]
            if verb == "add":
                if bool(e.value) != (data is not None):
                    return None
                if data is not None:
                    if data_types is None:
                        text = " ".join(e.value)
                        d = self._verdicts.get(text)
                        if d is None:
                            d = self._verdicts[text] = _verdict(text)  # type: ignore[assignment]
                    else:
                        d = _wrap_value(_key(data_types, e.value))
                    if d is None:
                        return None
                    parts.append(_nest(2, d))
                if e.comment is not None:
                    if "\\" in e.comment or len(e.comment) > 250:
                        return None
                    c = e.comment.encode() + b"\0"
                    parts.append(_attr(6, bytes([0, len(c)]) + c))
            out.append(_nest(1, *parts))
        head = _str(1, self.table) + _str(2, set_name)
        mtype = NFT_MSG_NEWSETELEM if verb == "add" else NFT_MSG_DELSETELEM
        msgs, done = [], 0
        for part in _split(out):
            msgs.append(Msg(mtype, NLM_F_CREATE if verb == "add" else 0, self.nfproto, head + _nest(3, *part),
                            items=items[done:done + len(part)]))
            done += len(part)
        return msgs

    def op(self, verb: str, obj: tuple) -> list[Msg] | None:
        """The messages for one operation (a Transaction's (verb, record)), or None when nft must send it."""
        t = type(obj)
        if t is Rule:
            return self.rule(obj.chain, obj.rule) if verb == ADD and obj.comment is None else None
        if t is Chain:
            if obj.type is not None or obj.comment is not None or not _CHAIN_NAME_RE.match(obj.name):
                return None
            if verb == FLUSH:
                return [self.flush_chain(obj.name)]
            if verb == ADD:
                return [self.new_chain(obj.name)]
            if verb == DELETE:
                return [self.del_chain(obj.name)]
            return None
        if t is Element and verb in (ADD, DELETE):
            return self.elements(verb, obj.set or obj.map, [obj])
        if t is Set and verb == ADD:
            m = self.named_set(obj)
            return [m] if m is not None else None
        return None

    def ops(self, ops) -> list[Msg] | None:
        """Messages for every operation of OPS (each `Msg.command` its index), or None if one has no encoding."""
        out: list[Msg] = []
        for i, (verb, obj) in enumerate(ops):
            m = self.op(verb, obj)
            if m is None:
                return None
            for x in m:
                x.command = i
            out += m
        return out

    def command(self, line: str) -> list[Msg] | None:
        """The messages for one script command of this table, or None when nft must send it."""
        parts = line.split(" ", 5)
        if len(parts) < 5 or parts[2] != self.family or parts[3] != self.table:
            return None
        if parts[1] == "element" and parts[0] in ("add", "delete"):
            rest = parts[5] if len(parts) > 5 else ""
            if not (rest.startswith("{ ") and rest.endswith(" }")):
                return None
            is_map = (self.set_types.get(parts[4]) or ([], None))[1] is not None
            els = []
            for item in sc.split_top(rest[2:-2]):
                key, value, comment = sc.element_parts(item)
                els.append(Element("", parts[4], key, value, comment) if is_map
                           else Element(parts[4], "", key, value, comment))
            return self.elements(parts[0], parts[4], els)
        try:
            verb, kind, _, _, rest = read_command(line, 0)
            obj = command_object(verb, kind, rest, lambda n: False)
        except ValueError:
            return None
        return self.op(verb, obj)


def _b36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + out
        if not n:
            return out


def _numgen(mod: int) -> bytes:
    """`numgen random mod MOD` into register 1."""
    return _expr("numgen", _u32(1, 1), _u32(2, mod), _u32(3, 1), _u32(4, 0))


class _ElemPacker:
    """One element of a numgen → address . port map, packed whole: the list
    element holding the key (the number, host order) and the data (address,
    port in network order, padded to whole 32-bit registers)."""

    def __init__(self, addr_len: int) -> None:
        data = 4 + addr_len + 4  # attribute header, address, port and padding
        self._st = struct.Struct(f"=HHHHHHIHHHH{addr_len}s2sxx")
        self._lens = (4 + 12 + 4 + data, 4 + data, data)

    def pack(self, k: int, addr: bytes, port: int) -> bytes:
        total, outer, inner = self._lens
        return self._st.pack(total, 1 | NLA_F_NESTED, 12, 1 | NLA_F_NESTED, 8, 1, k,
                             outer, 2 | NLA_F_NESTED, inner, 1, addr, port.to_bytes(2, "big"))


_ELEM4, _ELEM6 = _ElemPacker(4), _ElemPacker(16)
# meta l4proto → reg 1; cmp reg 1 == PROTO
_DNAT_HEAD = {p: _expr("meta", _u32(2, 16), _u32(1, 1)) + _expr("cmp", _u32(1, 1), _u32(2, 0), _nest(3, _attr(1, bytes([p]))))
              for p in PROTOS.values()}
# dnat, family, address from register 1, port from the register after the address
_NAT4 = _expr("nat", _u32(1, 1), _u32(2, FAMILIES["ip"]), _u32(3, 1), _u32(5, 9))
_NAT6 = _expr("nat", _u32(1, 1), _u32(2, FAMILIES["ip6"]), _u32(3, 1), _u32(5, 2))
# `dnat to ADDR:PORT`: the address in register 1, the port in register 2, the proto-specified flag
_NAT4_TO = _expr("nat", _u32(1, 1), _u32(2, FAMILIES["ip"]), _u32(3, 1), _u32(5, 2), _u32(7, 2))
_NAT6_TO = _expr("nat", _u32(1, 1), _u32(2, FAMILIES["ip6"]), _u32(3, 1), _u32(5, 2), _u32(7, 2))
# `ip saddr` / `ip6 saddr` into register 1: network header, offset 12 (8), 4 (16) bytes
_SADDR = {"ip": _expr("payload", _u32(1, 1), _u32(2, 1), _u32(3, 12), _u32(4, 4)),
          "ip6": _expr("payload", _u32(1, 1), _u32(2, 1), _u32(3, 8), _u32(4, 16))}


def _walk(buf: bytes, base: int):
    """(type, payload, absolute offset) of each attribute in BUF, which starts at offset BASE."""
    off = 0
    while off + 4 <= len(buf):
        ln, atype = struct.unpack_from("HH", buf, off)
        if ln < 4:
            return
        yield atype & 0x3FFF, buf[off + 4:off + ln], base + off
        off += (ln + 3) & ~3


def _split(attrs: list[bytes], limit: int = 60000) -> list[list[bytes]]:
    """ATTRS in groups that each fit one netlink attribute (whose length is 16 bits)."""
    out: list[list[bytes]] = []
    cur: list[bytes] = []
    size = 0
    for a in attrs:
        if cur and size + len(a) > limit:
            out.append(cur)
            cur, size = [], 0
        cur.append(a)
        size += len(a)
    if cur:
        out.append(cur)
    return out


def _map_items(inner: str) -> list[tuple[str, str] | None]:
    out = []
    for item in inner.split(" , ") if " , " in inner else inner.split(", "):
        k, sep, v = item.strip().partition(" : ")
        out.append((k, v.strip()) if sep else None)
    return out


def _verdict(text: str) -> bytes | None:
    text = text.strip()
    if text in VERDICTS:
        return _nest(2, _u32(1, VERDICTS[text]))
    word, _, chain = text.partition(" ")
    if word in JUMPS and _CHAIN_NAME_RE.match(chain):
        return _nest(2, _u32(1, JUMPS[word]), _str(2, chain))
    return None


def _wrap_value(data: bytes | None) -> bytes | None:
    return None if data is None else _attr(1, data)


def set_type(decl) -> tuple[list[str], str | None] | None:
    """The (key types, data type or None) of a named set's declaration (a Set or Map), or None if not plain."""
    if decl.flags or decl.timeout is not None:
        return None
    key, _, data = decl.type.partition(":")
    keys = key.strip().split(" . ")
    data = data.strip() or None
    if any(k not in DATATYPES for k in keys):
        return None
    if data is not None and data != "verdict" and any(d not in DATATYPES for d in data.split(" . ")):
        return None
    return keys, data


def _inet_proto(text: str) -> bytes:
    v = PROTOS.get(text)
    if v is None:
        v = int(text)
    return bytes([v])  # ValueError above 255


def _mark(text: str) -> bytes:
    return struct.pack("=I", int(text, 0))


_V4, _V6 = socket.AF_INET, socket.AF_INET6
# datatype → text → bytes (raising ValueError/OSError/OverflowError on bad text)
_FIELD = {
    "ipv4_addr": lambda t: socket.inet_pton(_V4, t),
    "ipv6_addr": lambda t: socket.inet_pton(_V6, t),
    "inet_proto": _inet_proto,
    "inet_service": lambda t: int(t).to_bytes(2, "big"),
    "mark": _mark,
}
_PAD = {1: b"\0\0\0", 2: b"\0\0", 3: b"\0", 4: b"", 16: b""}


def _key(types: list[str], fields: tuple[str, ...]) -> bytes | None:
    """The key bytes of FIELDS for a set keyed by TYPES (each field of a concatenation padded to 32 bits)."""
    if len(fields) != len(types):
        return None
    try:
        if len(types) == 1:
            return _FIELD[types[0]](fields[0].strip())
        out = []
        for t, f in zip(types, fields):
            b = _FIELD[t](f.strip())
            out.append(b + _PAD[len(b)])
        return b"".join(out)
    except (OSError, ValueError, OverflowError, KeyError):
        return None


# ------------------------------------------------------------------ sending


def open_socket(netns: str) -> socket.socket:
    """A NETLINK_NETFILTER socket in namespace NETNS, with buffers for large batches."""
    sock = _netlink_socket_in(netns)
    # SO_SNDBUFFORCE / SO_RCVBUFFORCE (root) lift the default limits; the
    # plain options are the best an unprivileged caller gets.
    for force, plain in ((32, socket.SO_SNDBUF), (33, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, 1 << 26)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, 1 << 22)
    # Errors that name the refused attribute (extended acks), without a copy
    # of the refused message (capped acks: a batch message can be 64 kB).
    for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
        try:
            sock.setsockopt(SOL_NETLINK, opt, 1)
        except OSError:
            pass
    return sock


def genid(sock: socket.socket) -> int | None:
    """The namespace's nf_tables ruleset generation."""
    return _nft_genid(sock)


def _ext_ack(msg: bytes, flags: int) -> tuple[int | None, str]:
    """The refused attribute's offset and the kernel's message from an extended error ack."""
    if not flags & NLM_F_ACK_TLVS:
        return None, ""
    (orig_len,) = struct.unpack_from("I", msg, 20)
    off = 20 + (16 if flags & NLM_F_CAPPED else (orig_len + 3) & ~3)
    where, detail = None, ""
    for atype, payload, _ in _walk(msg[off:], 0):
        if atype == NLMSGERR_ATTR_OFFS and len(payload) == 4:
            where = struct.unpack("I", payload)[0]
        elif atype == NLMSGERR_ATTR_MSG:
            detail = payload.rstrip(b"\0").decode(errors="replace")
    return where, detail


def send(sock: socket.socket, msgs: list[Msg], gen: int | None = None) -> None:
    """Send MSGS as one batch (one transaction); with GEN, only if the generation is still GEN.

    Raises NetlinkError naming the first refused message; ERESTART means the
    generation moved (someone else committed), and nothing was changed.
    """
    if not msgs:
        return
    seq0 = 1 << 20
    begin_body = _u32(NFNL_BATCH_GENID, gen) if gen is not None else b""
    begin = struct.pack("IHHII", 20 + len(begin_body), NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq0, 0)
    begin += struct.pack("BBH", 0, 0, socket.htons(NFNL_SUBSYS_NFTABLES)) + begin_body
    parts = [begin]
    last = len(msgs) - 1
    for i, m in enumerate(msgs):
        if i == last:
            m = Msg(m.mtype, m.flags | NLM_F_ACK, m.family, m.body, m.command)
        parts.append(m.pack(seq0 + 1 + i))
    end = struct.pack("IHHII", 20, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq0 + 1 + len(msgs), 0)
    parts.append(end + struct.pack("BBH", 0, 0, socket.htons(NFNL_SUBSYS_NFTABLES)))
    data = b"".join(parts)
    # The kernel runs the whole batch inside this call; errors and the ack
    # of the last message are queued on the socket when it returns.
    if sock.send(data) != len(data):
        raise NetlinkError(errno.EMSGSIZE, "the batch was sent in part")
    acked = False
    first_err: tuple[int, int, int | None, str] | None = None
    while True:
        try:
            buf = sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        off = 0
        while off + 16 <= len(buf):
            ln, typ, flags, seq, _ = struct.unpack_from("IHHII", buf, off)
            if ln < 16:
                break
            if typ == NLMSG_ERROR:
                (err,) = struct.unpack_from("i", buf, off + 16)
                if err == 0 and seq == seq0 + 1 + last:
                    acked = True
                elif err and first_err is None:
                    where, detail = _ext_ack(buf[off:off + ln], flags)
                    first_err = (-err, seq - seq0 - 1, where, detail)
            off += (ln + 3) & ~3
    if first_err is not None:
        err, idx, where, detail = first_err
        index = idx if 0 <= idx < len(msgs) else None
        what = f" (message {index + 1} of {len(msgs)})" if index is not None else ""
        raise NetlinkError(err, f"nf_tables refused the batch: {os.strerror(err)}{what}"
                           + (f": {detail}" if detail else ""), index, where, detail)
    if not acked:
        raise NetlinkError(errno.EIO, "nf_tables did not acknowledge the batch")

