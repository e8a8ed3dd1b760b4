"""The nft walk: one new connection through one nftables table as the kernel would (for the tracers).

Owns three things. The order of the table's base chains: per hook, by
priority (prerouting: `filter-prerouting-pre-dnat` at -110 before
`nat-prerouting` at dstnat -100; input, forward and output filter chains
at 0; postrouting srcnat at 100), with the routing decision between
prerouting and input/forward, and for a packet the node sends, the
re-routing right after the output hook's DNAT (nat chains run at -100; a
later filter chain sees the new destination), the postrouting hook, and the
loop back through `lo` for a destination on the node (filter chains only:
nat is consulted once per connection). The chain walk: jump, goto, return,
accept, drop, reject, verdict maps. And the meaning of each expression and
statement kube-proxy's nftables mode writes, read in the one spelling
`state.canon_rule` gives a script's rule and its `nft list` form:

* matches: `ip|ip6 saddr|daddr`, `meta l4proto`, `th dport`, `tcp|udp|sctp
  dport`, `iifname`/`oifname` (with `*` wildcards), `meta mark & M != V`,
  `fib saddr|daddr type local` (judged against the node's addresses),
  `ct state new`, `ct status dnat`, against literals, anonymous sets
  `{ ... }` and named sets `@NAME`, concatenations `A . B . C` included;
* statements: `vmap @MAP` / `vmap { ... }` looked up by the packet's
  concatenated key, `numgen random mod N vmap|map { ... }` (each index a
  path with an exact share of 1/N), `dnat [ip|ip6] to ADDR:PORT | to numgen
  ... map`, `masquerade [fully-random]`, `meta mark set meta mark | M`
  (and `^`, `&`), `update @SET { ip saddr }` (session affinity: the set's
  timeout is the affinity), and the verdicts.

A rule the walk reaches that holds anything else stops the trace with an
`Unsupported` message naming the part, which the tracer turns into an error
naming the rule; rules the packet never reaches are never read.

A node's whole `nft list ruleset` is walked too (`Engine(..., others=...,
strict=False)`): every table's base chains join the hooks by priority, a
base chain's policy decides when its rules end, and what a firewall or
Docker writes beyond kube-proxy's words is read where it matters (`meta
nfproto`, `iif`/`oif`, `ip protocol`, `icmp type`, `meta pkttype`, fib
types, the `fib saddr . iif oif missing` reverse-path check; counters, logs
and limits are no-ops, `reject with X` a reject). The rest never stops the
trace: a match it cannot evaluate, or a rule it cannot read, becomes an
open question answered both ways on two assumed branches (`Assumption`),
the rule's trailing verdict taken on the "matches" branch. The walk
knows connections, not packets: it traces the first packet of a new one,
so `ct state new` holds, and a dynamic set (affinity) holds only what the
listing it came from shows.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import lru_cache
from typing import Callable, NamedTuple

from ...trace.model import Assumption, Hop, Packet, Path
from .model import key_arity, parse_priority
from .state import SetState, TableState, canon_rule

MAX_PATHS = 20000
MAX_STEPS = 2_000_000
MAX_DEPTH = 64  # deeper than nft allows (16 jump levels); a loop is refused at load time anyway

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58}
PROTO_NAMES = {str(v): k for k, v in PROTO_NUMBERS.items() if k != "icmpv6"}
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
NAT_DST_PRIORITY = -100  # NF_IP_PRI_NAT_DST: the output hook re-routes after the DNAT done here
CT_STATES = ("new", "established", "related", "invalid", "untracked")
CT_STATUS = ("expected", "seen-reply", "assured", "confirmed", "snat", "dnat", "dying")
VERDICT_WORDS = ("accept", "drop", "reject", "return", "continue", "jump", "goto")
FIB_TYPES = ("local", "unicast", "broadcast", "anycast", "multicast", "blackhole", "unreachable", "prohibit")


class Unsupported(ValueError):
    """A part of a rule the walk does not evaluate (the tracer names the rule)."""


# ------------------------------------------------------------------ reading a rule


class Sel(NamedTuple):
    """One packet field a rule reads: `saddr`, `daddr` (with the family, ip or ip6), `l4proto`,
    `dport`/`sport` (with the protocol a `tcp dport` implies), `iifname`, `oifname`, `mark`,
    `fib-saddr`/`fib-daddr`, `ct-state`, `ct-status`."""

    field: str
    arg: str = ""

    def text(self) -> str:
        return _SEL_TEXT.get(self.field, self.field).format(arg=self.arg)


_SEL_TEXT = {"fib-rpf": "fib saddr . iif oif", "nfproto": "meta nfproto", "pkttype": "meta pkttype", "icmp": "{arg}",
             "saddr": "{arg} saddr", "daddr": "{arg} daddr", "l4proto": "meta l4proto", "mark": "meta mark",
             "fib-saddr": "fib saddr type", "fib-daddr": "fib daddr type", "ct-state": "ct state",
             "ct-status": "ct status", "dport": "{arg} dport", "sport": "{arg} sport"}


class Match(NamedTuple):
    """KEYS (one selector, or a concatenation) compared with a literal, an anonymous set or a named set."""

    keys: tuple[Sel, ...]
    negated: bool
    values: tuple[tuple[str, ...], ...] = ()  # literal alternatives (an anonymous set or one literal)
    set: str = ""  # a named set instead
    mask: int | None = None  # `meta mark & MASK`


class VMap(NamedTuple):
    """`KEYS vmap @MAP` or `KEYS vmap { K : VERDICT, ... }`: the packet's key picks the verdict."""

    keys: tuple[Sel, ...]
    map: str = ""
    entries: tuple[tuple[tuple[str, ...], str], ...] = ()


class Numgen(NamedTuple):
    """`numgen random mod N vmap { i : VERDICT }` (verdicts) or, inside dnat, `map { i : ADDR . PORT }`."""

    mod: int
    entries: tuple[tuple[int, tuple[str, ...]], ...]


class Dnat(NamedTuple):
    family: str  # "ip" / "ip6" / "" (as written)
    to: tuple[str, int | None] | None = None  # a fixed ADDR, PORT
    numgen: Numgen | None = None


class Masquerade(NamedTuple):
    flags: tuple[str, ...] = ()


class SetMark(NamedTuple):
    op: str  # "|" "^" "&" or "=" (meta mark set VALUE)
    value: int


class Update(NamedTuple):
    set: str
    keys: tuple[Sel, ...]


class Verdict(NamedTuple):
    kind: str  # accept | drop | reject | return | continue | jump | goto
    chain: str = ""


class Notrack(NamedTuple):
    """`notrack`: the connection is not tracked, so no nat chain is consulted for it (and `ct state untracked`)."""


Op = Match | VMap | Numgen | Dnat | Masquerade | SetMark | Update | Verdict | Notrack
TERMINAL = (VMap, Numgen, Dnat, Masquerade, Verdict)

_TOKEN = re.compile(r'"[^"]*"|[{}]|,|[^\s{},]+')


@lru_cache(maxsize=1 << 14)
def parse_rule(text: str) -> tuple[Op, ...]:
    """One rule body (script or listing spelling) → its operations; `Unsupported` for anything else."""
    toks = _TOKEN.findall(canon_rule(text))
    p = _Parser(toks, text)
    ops = p.rule()
    for i, op in enumerate(ops):
        if isinstance(op, TERMINAL) and i != len(ops) - 1:
            raise Unsupported(f"{_op_word(op)} is followed by more ({' '.join(toks[-3:])}): only a last "
                              "verdict, vmap, dnat or masquerade is understood")
    return ops


# Statements a node's foreign rules carry that change nothing the trace follows; `limit` is taken as matching.
_NOOPS = (re.compile(r'(?:^|\s)(?:counter|quota|limit) name (?:"[^"]*"|\S+)(?=\s|$)'),
          re.compile(r'(?:^|\s)counter(?: packets \d+ bytes \d+)?(?=\s|$)'),
          re.compile(r'(?:^|\s)log(?: (?:prefix "[^"]*"|level \S+|group \d+|snaplen \d+|queue-threshold \d+))*(?=\s|$)'),
          re.compile(r'(?:^|\s)limit rate \d+/\S+(?: burst \d+ \S+)?(?=\s|$)'),
          re.compile(r'(?:^|\s)nftrace set 1(?=\s|$)'))
_REJECT_WITH = re.compile(r'(?:^|\s)reject with .*$')
_TRAILING = re.compile(r'(?:^|\s)(accept|drop|return|continue|reject(?: with .*)?|(?:jump|goto) (\S+))\s*$')


def _without_noops(text: str) -> str:
    for rx in _NOOPS:
        text = rx.sub("", text)
    return text


def lenient_ops(text: str) -> tuple[Op, ...]:
    """A foreign rule's operations: counters, logs and limits dropped, `reject with X` read as reject."""
    t = _REJECT_WITH.sub(" reject", _without_noops(text)).strip()
    if not t:
        return (Verdict("continue"),)
    return parse_rule(t)


def trailing_verdict(text: str) -> Verdict | None:
    """The verdict a rule ends in (`... drop`, `... jump X`, `... reject with icmpx ...`), or None."""
    m = _TRAILING.search(text)
    if m is None:
        return None
    word = m.group(1).split()[0]
    return Verdict(word, m.group(2) or "") if word in ("jump", "goto") else Verdict(word)


@lru_cache(maxsize=1 << 12)
def leading_matches(text: str) -> tuple[Match, ...]:
    """The matches a rule starts with that the walk can read, up to the first part it cannot."""
    t = _without_noops(text)
    p = _Parser(_TOKEN.findall(canon_rule(t)), t)
    out: list[Match] = []
    while p.i < len(p.t):
        try:
            op = p.item()
        except Unsupported:
            break
        if not isinstance(op, Match):
            break
        out.append(op)
    return tuple(out)


def match_text(m: Match) -> str:
    """A Match written back as nft would print it (for the questions an assumed branch asks)."""
    head = " . ".join(k.text() for k in m.keys) + (f" & {hex(m.mask)}" if m.mask is not None else "")
    op = " != " if m.negated else " "
    if m.set:
        return f"{head}{op}@{m.set}"
    vals = [" . ".join(v) for v in m.values]
    return f"{head}{op}" + (vals[0] if len(vals) == 1 else "{ " + ", ".join(vals) + " }")


def _op_word(op: Op) -> str:
    return {VMap: "vmap", Numgen: "numgen", Dnat: "dnat", Masquerade: "masquerade"}.get(
        type(op), getattr(op, "kind", type(op).__name__))


class _Parser:
    def __init__(self, toks: list[str], text: str):
        self.t, self.i, self.text = toks, 0, text

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.t[j] if j < len(self.t) else ""

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if not tok or (want is not None and tok != want):
            raise Unsupported(f"expected {want!r} at {' '.join(self.t[self.i:self.i + 4]) or 'the end'!r}")
        self.i += 1
        return tok

    def rule(self) -> tuple[Op, ...]:
        ops: list[Op] = []
        while self.i < len(self.t):
            ops.append(self.item())
        if not ops:
            raise Unsupported("an empty rule")
        return tuple(ops)

    def item(self) -> Op:
        tok = self.peek()
        if tok in VERDICT_WORDS:
            return self.verdict()
        if tok == "dnat":
            return self.dnat()
        if tok == "masquerade":
            self.take()
            flags = []
            while self.peek() in ("fully-random", "random", "persistent"):
                flags.append(self.take())
            if self.peek() == "to":
                raise Unsupported("masquerade to a port range")
            return Masquerade(tuple(flags))
        if tok in ("update", "add") and self.peek(1).startswith("@"):
            self.take()
            name = self.take()[1:]
            self.take("{")
            keys = self.concat()
            self.take("}")
            return Update(name, keys)
        if tok == "notrack":
            self.take()
            return Notrack()
        if tok == "numgen":
            n = self.numgen_head()
            self.take("vmap")
            return Numgen(n, tuple((i, (v,)) for i, v in self.index_entries(verdicts=True)))
        keys = self.concat()
        nxt = self.peek()
        if nxt == "set":
            if keys != (Sel("mark"),):
                raise Unsupported(f"setting {' . '.join(k.text() for k in keys)}")
            self.take()
            return self.set_mark()
        if nxt == "vmap":
            self.take()
            if self.peek().startswith("@"):
                return VMap(keys, map=self.take()[1:])
            return VMap(keys, entries=tuple(self.map_entries(len(keys))))
        mask = None
        if nxt == "&":
            if keys != (Sel("mark"),):
                raise Unsupported("'&' on anything but meta mark")
            self.take()
            mask = _int(self.take(), "mark mask")
            nxt = self.peek()
        negated = False
        if nxt in ("!=", "=="):
            negated = self.take() == "!="
            nxt = self.peek()
        if nxt in ("<", ">", "<=", ">=", "lt", "gt", "le", "ge"):
            raise Unsupported(f"comparison {nxt!r}")
        if nxt.startswith("@"):
            self.take()
            return Match(keys, negated, set=nxt[1:], mask=mask)
        if nxt == "{":
            return Match(keys, negated, values=tuple(self.set_literal(len(keys))), mask=mask)
        if not nxt or nxt in VERDICT_WORDS:
            raise Unsupported(f"{' . '.join(k.text() for k in keys)} without a value to compare")
        vals = [self.atom_tuple(len(keys))]
        while self.peek() == ",":  # `ct state established,related`
            self.take()
            vals.append(self.atom_tuple(len(keys)))
        m = Match(keys, negated, values=tuple(vals), mask=mask)
        for v in vals:
            _check_values(keys, v)
        return m

    def concat(self) -> tuple[Sel, ...]:
        keys = [self.selector()]
        while self.peek() == ".":
            self.take()
            keys.append(self.selector())
        return tuple(keys)

    def selector(self) -> Sel:
        a = self.take()
        b = self.peek()
        if a in ("ip", "ip6") and b in ("saddr", "daddr"):
            self.take()
            return Sel(b, a)
        if a == "meta" and b in ("l4proto", "mark", "iifname", "oifname"):
            self.take()
            return Sel(b)
        if a == "meta" and b in ("iif", "oif"):  # by index; a listing prints the name
            self.take()
            return Sel(b + "name")
        if a in ("iif", "oif"):
            return Sel(a + "name")
        if a == "meta" and b in ("nfproto", "pkttype"):
            self.take()
            return Sel(b)
        if a == "ip" and b == "protocol" or a == "ip6" and b == "nexthdr":
            self.take()
            return Sel("l4proto")
        if a in ("icmp", "icmpv6") and b in ("type", "code"):
            self.take()
            return Sel("icmp", f"{a} {b}")
        if a == "th" and b in ("dport", "sport"):
            self.take()
            return Sel(b)
        if a in ("tcp", "udp", "sctp") and b in ("dport", "sport"):
            self.take()
            return Sel(b, a)
        if a in ("iifname", "oifname"):
            return Sel(a)
        if a == "fib" and b in ("saddr", "daddr") and self.peek(1) == "type":
            self.take()
            self.take()
            return Sel("fib-" + b)
        if a == "fib" and b == "saddr":  # `fib saddr [. mark] . iif oif missing`: a reverse-path check
            parts = []
            while self.peek() and self.peek() != "oif":
                parts.append(self.take())
            if parts[:1] != ["saddr"] or parts[-2:] != [".", "iif"] or not set(parts[1:-2]) <= {".", "meta", "mark"} \
                    or self.peek() != "oif":
                raise Unsupported(f"fib {' '.join(parts)}")
            self.take()
            return Sel("fib-rpf")
        if a == "ct" and b in ("state", "status"):
            self.take()
            return Sel("ct-" + b)
        shown = [a, b] if b and a in ("ip", "ip6", "meta", "th", "tcp", "udp", "sctp", "fib", "ct") else [a]
        raise Unsupported(f"unknown expression {' '.join(shown)!r}")

    def verdict(self) -> Verdict:
        kind = self.take()
        if kind in ("jump", "goto"):
            return Verdict(kind, self.take())
        if kind == "reject" and self.peek() == "with":
            raise Unsupported(f"reject {' '.join(self.t[self.i:self.i + 4])} (kube-proxy rejects plainly)")
        return Verdict(kind)

    def numgen_head(self) -> int:
        self.take("numgen")
        if self.peek() != "random":
            raise Unsupported(f"numgen {self.peek()} (only numgen random: which connection gets which "
                              "number of an incremental counter cannot be known)")
        self.take()
        self.take("mod")
        n = _int(self.take(), "numgen modulus")
        if self.peek() == "offset":
            raise Unsupported("numgen ... offset")
        if n < 1:
            raise Unsupported(f"numgen random mod {n}")
        return n

    def index_entries(self, verdicts: bool) -> list[tuple[int, str]]:
        """`{ 0 : goto X, 1 : drop }` (verdicts) → [(0, "goto X"), ...]."""
        out = []
        for key, value in self.braced_entries():
            if len(key) != 1 or not key[0].isdigit():
                raise Unsupported(f"numgen map key {' . '.join(key)!r}")
            if verdicts:
                _verdict_of(" ".join(value))
            out.append((int(key[0]), " ".join(value)))
        return out

    def braced_entries(self) -> list[tuple[tuple[str, ...], list[str]]]:
        """`{ K . K : V V, ... }` → [((K, K), [V, V]), ...]: keys split at '.', the value's tokens."""
        self.take("{")
        out = []
        cur: list[str] = []
        while True:
            tok = self.take()
            if tok in (",", "}"):
                if cur:
                    if ":" not in cur:
                        raise Unsupported(f"map entry {' '.join(cur)!r} without ':'")
                    k = cur.index(":")
                    out.append((_split_dots(cur[:k]), cur[k + 1:]))
                cur = []
                if tok == "}":
                    return out
            else:
                cur.append(tok)

    def map_entries(self, arity: int) -> list[tuple[tuple[str, ...], str]]:
        out = []
        for key, value in self.braced_entries():
            if len(key) != arity:
                raise Unsupported(f"vmap key {' . '.join(key)!r} has {len(key)} part(s), the lookup {arity}")
            _verdict_of(" ".join(value))
            out.append((key, " ".join(value)))
        return out

    def set_literal(self, arity: int) -> list[tuple[str, ...]]:
        self.take("{")
        out = []
        cur: list[str] = []
        while True:
            tok = self.take()
            if tok in (",", "}"):
                if cur:
                    parts = _split_dots(cur)
                    if len(parts) != arity:
                        raise Unsupported(f"set element {' '.join(cur)!r} has {len(parts)} part(s), the key {arity}")
                    out.append(parts)
                cur = []
                if tok == "}":
                    return out
            else:
                cur.append(tok)

    def atom_tuple(self, arity: int) -> tuple[str, ...]:
        parts = [self.take()]
        while len(parts) < arity and self.peek() == ".":
            self.take()
            parts.append(self.take())
        if len(parts) != arity:
            raise Unsupported(f"value {' . '.join(parts)!r} has {len(parts)} part(s), the key {arity}")
        return tuple(parts)

    def set_mark(self) -> SetMark:
        if self.peek() == "meta" and self.peek(1) == "mark":
            self.take()
            self.take()
            op = self.take()
            if op not in ("|", "^", "&"):
                raise Unsupported(f"meta mark set meta mark {op}")
            return SetMark(op, _int(self.take(), "mark"))
        return SetMark("=", _int(self.take(), "mark"))

    def dnat(self) -> Dnat:
        self.take("dnat")
        fam = ""
        if self.peek() in ("ip", "ip6"):
            fam = self.take()
        self.take("to")
        if self.peek() == "numgen":
            n = self.numgen_head()
            self.take("map")
            entries = []
            for key, value in self.braced_entries():
                if len(key) != 1 or not key[0].isdigit():
                    raise Unsupported(f"numgen map key {' . '.join(key)!r}")
                parts = _split_dots(value)
                if len(parts) != 2:
                    raise Unsupported(f"dnat map value {' '.join(value)!r} is not ADDRESS . PORT")
                _address(parts[0])
                _port(parts[1])
                entries.append((int(key[0]), parts))
            return Dnat(fam, numgen=Numgen(n, tuple(entries)))
        target = self.take()
        if self.peek() and self.peek() not in ("fully-random", "random", "persistent"):
            raise Unsupported(f"dnat to {target} {self.peek()}")
        while self.peek() in ("fully-random", "random", "persistent"):
            self.take()
        return Dnat(fam, to=split_endpoint(target))


def _split_dots(tokens: list[str]) -> tuple[str, ...]:
    parts: list[str] = []
    cur: list[str] = []
    for t in tokens:
        if t == ".":
            parts.append(" ".join(cur))
            cur = []
        else:
            cur.append(t)
    parts.append(" ".join(cur))
    if any(not p or " " in p for p in parts):
        raise Unsupported(f"cannot read {' '.join(tokens)!r}")
    return tuple(parts)


def _int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise Unsupported(f"{what} {text!r} is not a number") from None


def _verdict_of(text: str) -> Verdict:
    words = text.split()
    if not words or words[0] not in VERDICT_WORDS or words[0] == "reject":
        raise Unsupported(f"map value {text!r} is not a verdict")
    if words[0] in ("jump", "goto"):
        if len(words) != 2:
            raise Unsupported(f"map value {text!r}")
        return Verdict(words[0], words[1])
    if len(words) != 1:
        raise Unsupported(f"map value {text!r}")
    return Verdict(words[0])


# ------------------------------------------------------------------ values, each read on its own


@lru_cache(maxsize=1 << 14)
def address_range(text: str) -> tuple[int, int, int]:
    """(IP version, first, last) of `10.0.0.1`, `10.0.0.0/8` or `10.0.0.0-10.0.3.255`."""
    try:
        if "-" in text and "/" not in text:
            a, b = text.split("-", 1)
            lo, hi = ipaddress.ip_address(a), ipaddress.ip_address(b)
            if lo.version != hi.version or int(lo) > int(hi):
                raise ValueError
            return lo.version, int(lo), int(hi)
        net = ipaddress.ip_network(text, strict=False)
        return net.version, int(net.network_address), int(net.broadcast_address)
    except ValueError:
        raise Unsupported(f"{text!r} is not an address, CIDR or address range") from None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise Unsupported(f"{text!r} is not an address") from None


def address_in(ip: str, value: str) -> bool:
    ver, lo, hi = address_range(value)
    a = ipaddress.ip_address(ip)
    return a.version == ver and lo <= int(a) <= hi


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise Unsupported(f"{text!r} is not a port")
    return int(text)


def port_in(port: int, value: str) -> bool:
    if "-" in value:
        a, _, b = value.partition("-")
        return _port(a) <= port <= _port(b)
    return port == _port(value)


def proto_is(proto: str, value: str) -> bool:
    name = PROTO_NAMES.get(value, value)
    if name not in PROTO_NUMBERS:
        raise Unsupported(f"{value!r} is not a protocol")
    return name == proto


def iface_is(name: str | None, value: str) -> bool:
    """`iifname eth0`, `iifname "veth*"` (a trailing `*` is a prefix); no interface (output) matches nothing."""
    if not value:
        raise Unsupported("an empty interface name")
    if value.endswith("*"):
        return bool(name) and name.startswith(value[:-1])
    return name == value


def split_endpoint(text: str) -> tuple[str, int | None]:
    """`10.0.0.1:80`, `[fd00::1]:80`, `10.0.0.1`, `fd00::1` → (address, port or None)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise Unsupported(f"cannot read endpoint {text!r}")
        port = _port(rest[1:]) if rest else None
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p)
    else:
        host, port = text, None
    return str(_address(host)), port


def _check_values(keys: tuple[Sel, ...], values: tuple[str, ...]) -> None:
    """Read every literal of a match once at parse time, so a bad one is named even if it never decides."""
    for k, v in zip(keys, values):
        f = k.field
        if f in ("saddr", "daddr"):
            address_range(v)
        elif f in ("dport", "sport"):
            port_in(0, v)
        elif f == "l4proto":
            proto_is("tcp", v)
        elif f in ("iifname", "oifname"):
            iface_is("x", v)
        elif f == "mark":
            _int(v, "mark")
        elif f in ("fib-saddr", "fib-daddr"):
            if v not in FIB_TYPES:
                raise Unsupported(f"fib type {v!r}")
        elif f == "fib-rpf":
            if v not in ("missing", "exists"):
                raise Unsupported(f"fib ... oif {v!r}")
        elif f == "nfproto":
            if v not in ("ipv4", "ipv6"):
                raise Unsupported(f"meta nfproto {v!r}")
        elif f == "pkttype":
            if v not in ("host", "unicast", "broadcast", "multicast", "other"):
                raise Unsupported(f"meta pkttype {v!r}")
        elif f == "icmp":
            pass  # never compared: the traced packet is no ICMP
        elif f == "ct-state":
            if v not in CT_STATES:
                raise Unsupported(f"ct state {v!r}")
        elif f == "ct-status":
            if v not in CT_STATUS:
                raise Unsupported(f"ct status {v!r}")


# ------------------------------------------------------------------ the walk


@dataclass
class _Walk:
    """One path while it is walked; `fork` copies it where `numgen` splits the connections."""

    pkt: Packet
    prob: Fraction
    hops: list[Hop]
    steps: list[tuple[str, str, str]]  # what comes after the current hook: hooks, routing, delivery
    queue: list[str]  # base chains of the current hook still to walk
    stack: list[list]  # frames [chain, next rule index]; the bottom one is a base chain
    hook: str = ""
    pending: object = None  # a verdict decided by the last rule, applied before the next rule
    masq: bool = False
    affinity: int | None = None
    key: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tidx: int = 0  # the table being walked (a whole node's ruleset holds many)
    base: str = ""  # the base chain being walked (a goto from it replaces its frame, not its policy)
    answers: dict[str, Assumption] = field(default_factory=dict)  # open questions, answered once per path
    natted: tuple[str, ...] = ()  # hooks whose NAT is done: later nat chains there are not consulted
    untracked: bool = False  # a `notrack` took the connection out of conntrack

    def fork(self) -> "_Walk":
        return _Walk(self.pkt, self.prob, list(self.hops), list(self.steps), list(self.queue),
                     [list(f) for f in self.stack], self.hook, self.pending, self.masq, self.affinity,
                     list(self.key), list(self.notes), self.tidx, self.base, dict(self.answers), self.natted,
                     self.untracked)


class WalkError(Exception):
    """A reached rule the walk cannot evaluate: the chain, its 1-based number (0: the chain itself) and why."""

    def __init__(self, chain: str, number: int, rule: str, message: str) -> None:
        super().__init__(message)
        self.chain, self.number, self.rule, self.message = chain, number, rule, message


# Steps: ("hook", HOOK, PHASE) where PHASE is "all", "dnat" (priority <= -100), "late" (> -100) or
# "nonat" (after the loop through lo: nat chains are not consulted again); ("route", WHICH, "");
# ("deliver", WHERE, "").
PRE = [("hook", "prerouting", "all"), ("route", "in", "")]
TO_LOCAL = [("hook", "input", "all"), ("deliver", "local", "")]
FORWARD = [("hook", "forward", "all"), ("hook", "postrouting", "all"), ("deliver", "out", "")]
OUT = [("hook", "output", "dnat"), ("route", "out", ""), ("hook", "output", "late"),
       ("hook", "postrouting", "all"), ("route", "loop", "")]
LOOP_IN = [("hook", "prerouting", "nonat"), ("hook", "input", "nonat"), ("deliver", "local", "")]


@dataclass(frozen=True)
class Other:
    """A table of the node beside the walked one (a whole `nft list ruleset`): what the walk needs of it.

    `policies` are its base chains' policies, `handles` its rules' handles
    ((chain, number) → handle, where the listing printed them),
    `unreadable` its sets whose elements are unknown (name → why).
    """

    state: TableState
    policies: dict = field(default_factory=dict)
    handles: dict = field(default_factory=dict)
    unreadable: dict = field(default_factory=dict)
    line: int = 0  # where the table starts in the listing (tables are listed in the order they were made)


class Engine:
    """Walks packets through one table, or a node's whole ruleset, for a node owning `node_ips`.

    `out_iface` is where routing sends a packet that leaves the node; a
    packet for a pod on this node leaves on `pod_iface(dst)` when that
    names one. `where` names the table in hops ("ip kube-proxy").

    `others` are the node's other tables (`Other`): their base chains join
    the hooks by priority, lower first. At equal priorities the kernel runs
    the base chain registered last first (`nf_hook_entries_grow` inserts a
    new hook before the ones of equal priority); a listing shows tables in
    the order they were made and chains in the order they were added, so
    the walk takes the one listed last first and says so, since a
    restarted kube-proxy re-registers its chains and a listing cannot show
    that (`table_line`: where the walked table starts). An accept ends one base chain and the packet goes on to the next
    on the hook; drop and reject end it; a base chain's policy applies when
    its rules end. Once a nat chain has translated the connection, later
    nat chains on that hook are not consulted (as `nf_nat_inet_fn`). With
    `strict=False`, what the walk cannot decide (an unknown expression, a
    set whose elements are not in the listing) splits the path into two
    assumed branches, each naming its question and reason, instead of
    failing.
    """

    def __init__(self, table: TableState, node_ips: tuple[str, ...] | frozenset[str], out_iface: str = "eth0",
                 pod_iface: Callable[[str], str | None] | None = None, *, others: tuple[Other, ...] = (),
                 strict: bool = True, max_assumed: int = 64,
                 route: Callable[[str], str | None] | None = None, table_line: int = 0) -> None:
        self.route_iface = route
        self.views = [Other(table, line=table_line)] + list(others)
        self.kube = 0 if others == () or table.name == "kube-proxy" else -1
        self.local = frozenset(node_ips)
        self.out_iface = out_iface
        self.pod_iface = pod_iface
        self.strict = strict
        self.max_assumed = max_assumed
        self.assumed_branches = 0
        self.cut: list[str] = []
        self.steps = 0
        self.bases = []
        listed: dict[tuple[int, str], tuple[int, int]] = {}
        for i, v in enumerate(self.views):
            for k, (name, type_, hook, prio) in enumerate(base_chains(v.state, i > 0)):
                self.bases.append((name, type_, hook, prio, i))
                listed[(i, name)] = (v.line, k)
        # equal priorities: the one registered (listed) last runs first
        self.bases.sort(key=lambda b: (b[3], tuple(-x for x in listed[(b[4], b[0])])))
        self.ties: dict[str, list[str]] = {}  # hook → a note per priority shared by tables
        seen: dict[tuple[str, int], list[tuple]] = {}
        for b in self.bases:
            seen.setdefault((b[2], b[3]), []).append(b)
        for (hook, prio), bs in seen.items():
            if len({b[4] for b in bs}) > 1:
                names = ", then ".join(f"{self.views[b[4]].state.family} {self.views[b[4]].state.name} {b[0]}"
                                       for b in bs)
                self.ties.setdefault(hook, []).append(
                    f"base chains of several tables share hook {hook} priority {prio}; traced in the order {names} "
                    "(the kernel runs the one registered last first; the listing shows the order tables were "
                    "made, not when each chain was last registered: a restarted kube-proxy re-registers its "
                    "chains, which puts them first)")
        self._index: dict[tuple[int, str], tuple[dict, list, SetState]] = {}
        self._use(0)

    def _use(self, tidx: int) -> None:
        self.tidx = tidx
        self.table = self.views[tidx].state
        self.where = f"{self.table.family} {self.table.name}"

    def _base(self, w: _Walk) -> tuple:
        return next(x for x in self.bases if x[0] == w.base and x[4] == w.tidx)

    @property
    def notes(self) -> list[str]:
        if not self.cut:
            return []
        shown = "; ".join(self.cut[:5]) + (f"; and {len(self.cut) - 5} more" if len(self.cut) > 5 else "")
        return [f"more than {self.max_assumed} assumed branches: {len(self.cut)} further undecidable "
                f"match(es) were taken as not matching, without a branch of their own: {shown}"]

    # ------------------------------------------------------------------ the walk

    def run(self, pkt: Packet, hook: str) -> list[Path]:
        """Every path of a new connection sent at HOOK (PREROUTING from outside or a pod, OUTPUT from the node)."""
        steps = list(OUT if hook == "OUTPUT" else PRE)
        work = [_Walk(pkt, Fraction(1), [], steps, [], [])]
        done: list[Path] = []
        while work:
            w = work.pop()
            done.append(self._advance(w, work))
            if len(done) + len(work) > MAX_PATHS:
                raise WalkError("-", 0, "", f"more than {MAX_PATHS} possible paths; the trace would not be readable")
        done.sort(key=lambda p: p.key)
        return done

    def _advance(self, w: _Walk, work: list[_Walk]) -> Path:
        while True:
            self._use(w.tidx)
            if w.stack:
                verdict = self._chain(w, work)
                w.stack = []
                if verdict in ("DROP", "REJECT"):
                    return self._finish(w, verdict, "")
                continue
            if w.queue:
                tidx, name = w.queue.pop(0)
                self._use(tidx)
                w.tidx, w.base = tidx, name
                b = self._base(w)
                if b[1] == "nat" and w.hook in w.natted:
                    why = ("the connection is untracked (notrack), and nat needs conntrack" if w.untracked else
                           "an earlier nat chain already translated this connection on this hook")
                    w.notes.append(f"{self.where} chain {name} (type nat hook {w.hook} priority {b[3]}) is not "
                                   f"consulted: {why}")
                    continue
                w.stack = [[name, 0]]
                continue
            if not w.steps:
                return self._finish(w, "DNAT" if w.pkt.dnat else "ACCEPT", "out")
            kind, what, phase = w.steps.pop(0)
            if kind == "hook":
                w.hook = what
                w.queue = self._chains_at(what, phase)
                for n in self.ties.get(what, ()):
                    if n not in w.notes:
                        w.notes.append(n)
            elif kind == "route":
                self._route(w, what)
            else:
                return self._finish(w, "DNAT" if w.pkt.dnat else "ACCEPT", what)

    def _chains_at(self, hook: str, phase: str) -> list[tuple[int, str]]:
        out = []
        for name, type_, h, prio, tidx in self.bases:
            if h != hook:
                continue
            if phase == "dnat" and prio > NAT_DST_PRIORITY or phase == "late" and prio <= NAT_DST_PRIORITY:
                continue
            if phase == "nonat" and type_ == "nat":
                continue
            out.append((tidx, name))
        return out

    def _finish(self, w: _Walk, verdict: str, where: str) -> Path:
        p = w.pkt
        if verdict in ("DNAT", "ACCEPT"):
            dest = p.dst_endpoint
            if where == "local":
                text = f"delivered to {dest} on this node"
            else:
                text = f"sent on to {dest}" + (f" via {p.out_iface}" if p.out_iface else "")
            w.hops.append(Hop("deliver", "", "", 0, text, verdict))
        notes = tuple(n.replace("{endpoint}", p.dst_endpoint) for n in w.notes)
        return Path(w.prob, verdict, tuple(w.hops), p, w.masq, w.affinity, tuple(w.key), notes,
                    tuple(w.answers.values()))

    def _out(self, dst: str) -> tuple[str, str]:
        iface = self.route_iface(dst) if self.route_iface is not None else None
        if iface:
            return iface, f"out {iface}, by the node's route"
        iface = self.pod_iface(dst) if self.pod_iface is not None else None
        if iface:
            return iface, f"out {iface}, to a pod on this node"
        return self.out_iface, f"out {self.out_iface}"

    def _route(self, w: _Walk, which: str) -> None:
        p = w.pkt
        local = self.is_local(p.dst)
        if which == "in":
            if local:
                w.steps[0:0] = TO_LOCAL
                w.hops.append(Hop("route", "", "", 0, f"routing: {p.dst} is an address of this node",
                                  "to the node itself (input hook)"))
            else:
                out, why = self._out(p.dst)
                w.pkt = replace(p, out_iface=out)
                w.steps[0:0] = FORWARD
                w.hops.append(Hop("route", "", "", 0, f"routing: {p.dst} is not an address of this node",
                                  f"forwarded (forward hook, {why})"))
        elif which == "out":
            out, why = ("lo", "out lo") if local else self._out(p.dst)
            w.pkt = replace(p, out_iface=out)
            w.hops.append(Hop("route", "", "", 0, f"routing: {p.dst} is " +
                              ("an address of this node" if local else "not an address of this node"), why))
        elif local:  # loop
            w.pkt = replace(p, in_iface="lo", out_iface=None)
            w.steps[0:0] = LOOP_IN
            w.hops.append(Hop("route", "", "", 0, "the packet loops back through lo to this node",
                              "to the node itself (input hook)"))
        else:
            w.steps[0:0] = [("deliver", "out", "")]

    def is_local(self, ip: str) -> bool:
        """`fib ... type local`: the node's own addresses and loopback (ClusterIPs are bound nowhere)."""
        if ip in self.local:
            return True
        a = ipaddress.ip_address(ip)
        return a.is_loopback

    def _chain(self, w: _Walk, work: list[_Walk]) -> str:
        chains = self.table.chains
        while w.stack:
            if w.pending is not None:
                v, w.pending = w.pending, None
                cname, idx = w.stack[-1]
                try:
                    end = self._verdict(w, v)
                except Unsupported as e:
                    raise WalkError(cname, idx, chains[cname].rules[idx - 1].rule, str(e)) from None
                if end:
                    return end
                continue
            frame = w.stack[-1]
            cname, idx = frame
            rules = chains[cname].rules
            if idx >= len(rules):
                w.stack.pop()  # the end of a chain: back to the caller (a goto replaced its frame)
                continue
            frame[1] = idx + 1
            self.steps += 1
            r = rules[idx]
            if self.steps > MAX_STEPS:
                raise WalkError(cname, idx + 1, r.rule, f"more than {MAX_STEPS} rule evaluations")
            try:
                ops = parse_rule(r.rule) if self.strict else lenient_ops(r.rule)
            except Unsupported as e:
                if self.strict:
                    raise WalkError(cname, idx + 1, r.rule, str(e)) from None
                self._unread(w, cname, idx + 1, r, str(e), work)
                continue
            if not self.strict and " limit rate " in f" {r.rule} ":
                note = f"{self._rule_name(cname, idx + 1)}: `limit` taken as matching (a first connection is " \
                       "within any rate)"
                if note not in w.notes:
                    w.notes.append(note)
            try:
                self._rule(w, ops, cname, idx + 1, r, work)
            except Unsupported as e:
                raise WalkError(cname, idx + 1, r.rule, str(e)) from None
        # The base chain's rules ended (or returned): its policy decides (kube-proxy's are accept).
        if self.views[w.tidx].policies.get(w.base, "accept") == "drop":
            b = self._base(w)
            w.hops.append(Hop("policy", self.where, w.base, 0,
                              f"{w.base}: type {b[1]} hook {b[2]} priority {b[3]}; policy drop", "DROP"))
            w.notes.append(f"DROP by the policy of {self.where} chain {w.base} (hook {b[2]}, priority {b[3]}): "
                           "none of its rules accepted the packet")
            return "DROP"
        return "ACCEPT"

    # ------------------------------------------------------------------ what the walk cannot decide

    def foreign(self) -> bool:
        return self.table.name != "kube-proxy"

    def _line(self, chain: str, number: int, r) -> str:
        line = f"{chain}: {r.rule}" + (f' comment "{r.comment}"' if r.comment is not None else "")
        h = self.views[self.tidx].handles.get((chain, number))
        return line + (f" # handle {h}" if h is not None else "")

    def _rule_name(self, chain: str, number: int) -> str:
        h = self.views[self.tidx].handles.get((chain, number))
        return f"{self.where} chain {chain} rule {number}" + (f" (handle {h})" if h is not None else "")

    def _open(self, w: _Walk, question: str, reason: str, chain: str, number: int, line: str,
              work: list[_Walk]) -> bool:
        """An undecidable QUESTION on W's way: True or False for W, the other answer on a forked walk."""
        got = w.answers.get(question)
        if got is not None:
            return got.holds
        if self.assumed_branches >= self.max_assumed:
            self.cut.append(f"{self.where} {chain} rule {number} ({question})")
            w.answers[question] = Assumption(question, False, reason + " (taken as not holding: too many branches)")
            w.hops.append(Hop("assume", self.where, chain, number, line,
                              f"taken as not matching, without a branch: {reason}"))
            return False
        self.assumed_branches += 1
        alt = w.fork()
        alt.answers[question] = Assumption(question, False, reason)
        alt.key.append(1)
        alt.hops.append(Hop("assume", self.where, chain, number, line,
                            f"assumed not to match ({question}: no): {reason}"))
        work.append(alt)
        w.answers[question] = Assumption(question, True, reason)
        w.key.append(0)
        w.hops.append(Hop("assume", self.where, chain, number, line, f"assumed to match ({question}: yes): {reason}"))
        return True

    def _unread(self, w: _Walk, chain: str, number: int, r, why: str, work: list[_Walk]) -> None:
        """A rule the walk cannot read: its trailing verdict, if any, is taken on one assumed branch."""
        line = self._line(chain, number, r)
        for m in leading_matches(r.rule):
            try:
                if not self._match(m, w):
                    return  # a part it can read already fails: the rule does not match, whatever the rest says
            except Unsupported:
                break
        verdict = trailing_verdict(r.rule)
        reason = f"{why}: the trace does not evaluate this rule"
        if verdict is None:
            w.hops.append(Hop("skip", self.where, chain, number, line,
                              f"not evaluated ({why}); it ends in no verdict, so the packet goes on either way"))
            w.notes.append(f"{self._rule_name(chain, number)} was not evaluated ({why}); any mark or other "
                           "state it sets is not followed")
            return
        question = f"{self._rule_name(chain, number)} matches"
        if self._open(w, question, reason, chain, number, line, work):
            w.pending = verdict
            if verdict.kind in ("drop", "reject") and self.foreign():
                w.notes.append(f"{verdict.kind.upper()} (assumed) by {self._rule_name(chain, number)}, outside "
                               f"kube-proxy's table: {r.rule}")

    def _verdict(self, w: _Walk, v: Verdict) -> str | None:
        if v.kind == "accept":
            return "ACCEPT"
        if v.kind == "drop":
            return "DROP"
        if v.kind == "reject":
            return "REJECT"
        if v.kind == "return":
            w.stack.pop()
            return None
        if v.kind == "continue":
            return None
        target = v.chain
        if target not in self.table.chains:
            raise Unsupported(f"{v.kind} to {target!r}, a chain the table does not have")
        if any(b[0] == target and b[4] == self.tidx for b in self.bases):
            raise Unsupported(f"{v.kind} to the base chain {target}")
        if any(f[0] == target for f in w.stack) or len(w.stack) >= MAX_DEPTH:
            raise Unsupported(f"{v.kind} {target} loops back into a chain already being walked")
        if v.kind == "goto":
            w.stack.pop()
        w.stack.append([target, 0])
        return None

    # ------------------------------------------------------------------ one rule

    def _rule(self, w: _Walk, ops: tuple[Op, ...], chain: str, number: int, r, work: list[_Walk]) -> None:
        texts: list[str] = []
        line = self._line(chain, number, r)
        for op in ops[:-1] if isinstance(ops[-1], TERMINAL) else ops:
            t = type(op)
            if t is Match:
                try:
                    hit = self._match(op, w)
                except Unsupported as e:
                    if self.strict:
                        raise
                    hit = self._open(w, f"{self.where}: {match_text(op)} holds", str(e), chain, number, line, work)
                    if not hit:
                        return
                    continue
                if not hit:
                    return
            elif t is SetMark:
                w.pkt = replace(w.pkt, mark=_mark(w.pkt.mark, op))
                texts.append(f"mark is now {hex(w.pkt.mark)}")
            elif t is Update:
                texts.append(self._update(w, op))
            elif t is Notrack:
                w.untracked = True
                w.natted = HOOKS  # nf_nat_inet_fn: a packet without conntrack is never NATed
                texts.append("notrack: the connection is not tracked, so no nat chain sees it (no Service DNAT)")
                if self.foreign():
                    w.notes.append(f"NOTRACK by {self._rule_name(chain, number)}, outside kube-proxy's table: "
                                   f"{r.rule}; no nat chain is consulted for this connection, kube-proxy's DNAT "
                                   "included")
            else:  # pragma: no cover - parse_rule lets no other kind through
                raise Unsupported(f"{t.__name__} here")
        last = ops[-1]
        if not isinstance(last, TERMINAL):
            w.hops.append(Hop("rule", self.where, chain, number, line, "; ".join(texts) or "matched, continue"))
            return
        t = type(last)
        if t is Verdict:
            w.pending = last
            texts.append(_verdict_text(last))
            if last.kind in ("drop", "reject") and self.foreign():
                w.notes.append(f"{last.kind.upper()} by {self._rule_name(chain, number)}, outside kube-proxy's "
                               f"table: {r.rule}" + (f' comment "{r.comment}"' if r.comment else ""))
            elif last.kind in ("drop", "reject") and r.comment:
                w.notes.append(f"{last.kind.upper()} in {chain}: {r.comment}")
        elif t is VMap:
            hit = self._vmap(w, last)
            if hit is None:
                return  # no element: the rule does nothing
            key, v, comment = hit
            w.pending = v
            texts.append(f"vmap {'@' + last.map if last.map else '{ ... }'}: {key} → {_verdict_text(v, lower=True)}")
            if v.kind == "drop" or v.chain == "reject-chain":
                what = "DROP" if v.kind == "drop" else "REJECT"
                why = f" ({comment})" if comment else ""
                w.notes.append(f"{what} through @{last.map or 'vmap'}{why}: element {key} → {_verdict_text(v, lower=True)}")
        elif t is Masquerade:
            self._masquerade(w, last, chain, texts)
        elif t is Dnat and last.numgen is None:
            self._dnat(w, last.to, chain, texts)
        else:  # numgen: one path per number, each 1/N of the connections
            self._numgen(w, last, chain, number, line, texts, work)
            return
        w.hops.append(Hop("rule", self.where, chain, number, line, "; ".join(texts)))

    def _numgen(self, w: _Walk, op: Numgen | Dnat, chain: str, number: int, line: str, texts: list[str],
                work: list[_Walk]) -> None:
        ng = op if isinstance(op, Numgen) else op.numgen
        share = Fraction(1, ng.mod)
        chance = share if ng.mod > 1 else None  # `mod 1` (kube-proxy's single endpoint) splits nothing
        entries = dict(ng.entries)
        walks = [w] + [w.fork() for _ in range(ng.mod - 1)]
        for i, x in enumerate(walks):
            x.prob *= share
            x.key.append(i)
            value = entries.get(i)
            head = list(texts)
            if value is None:
                x.hops.append(Hop("skip", self.where, chain, number, line,
                                  f"numgen gave {i}: no entry, the rule does nothing", chance))
                if x is not w:
                    work.append(x)
                continue
            if isinstance(op, Numgen):
                v = _verdict_of(value[0])
                x.pending = v
                head.append(f"numgen {i} of {ng.mod} → {_verdict_text(v, lower=True)}")
            else:
                ip, port = value
                self._dnat(x, (str(_address(ip)), _port(port)), chain, head)
            x.hops.append(Hop("rule", self.where, chain, number, line, "; ".join(head), chance))
            if x is not w:
                work.append(x)

    def _dnat(self, w: _Walk, to: tuple[str, int | None], chain: str, texts: list[str]) -> None:
        base = w.base
        b = self._base(w)
        if b[1] != "nat" or b[2] not in ("prerouting", "output"):
            raise Unsupported(f"dnat reached from {base} ({b[1]} {b[2]}); only nat prerouting/output chains DNAT")
        ip, port = to
        if (":" in ip) != (":" in w.pkt.dst):
            raise Unsupported(f"dnat to {ip}, another address family")
        before = w.pkt.dst_endpoint
        w.pkt = replace(w.pkt, dst=ip, dport=port if port is not None else w.pkt.dport, dnat=True)
        w.pending = Verdict("accept")
        w.natted += (b[2],)
        texts.append(f"DNAT {before} → {w.pkt.dst_endpoint}")
        if self.foreign():
            later = [x for x in self.bases if x[2] == b[2] and x[1] == "nat" and x[3] >= b[3]
                     and self.views[x[4]].state.name == "kube-proxy"]
            w.notes.append(f"DNAT by {self._rule_name(chain, w.stack[-1][1])}, outside kube-proxy's table: "
                           f"{before} → {w.pkt.dst_endpoint}"
                           + ("; kube-proxy's nat chain on this hook is not consulted for this connection"
                              if later else ""))

    def _masquerade(self, w: _Walk, op: Masquerade, chain: str, texts: list[str]) -> None:
        base = w.base
        b = self._base(w)
        if b[1] != "nat" or b[2] != "postrouting":
            raise Unsupported(f"masquerade reached from {base} ({b[1]} {b[2]}); only nat postrouting masquerades")
        w.pkt = replace(w.pkt, snat=True)
        w.natted += (b[2],)
        w.masq = True
        w.pending = Verdict("accept")
        texts.append("MASQUERADE: the source becomes the node's address on " + (w.pkt.out_iface or "the way out"))

    def _update(self, w: _Walk, op: Update) -> str:
        s = self._set(op.set)
        if "dynamic" not in s.decl.flags:
            raise Unsupported(f"update @{op.set}: not a dynamic set")
        if op.keys not in ((Sel("saddr", "ip"),), (Sel("saddr", "ip6"),)):
            raise Unsupported(f"update @{op.set} with {' . '.join(k.text() for k in op.keys)} "
                              "(only the source address, as session affinity records it)")
        secs = s.decl.timeout
        w.affinity = secs
        src = w.pkt.src
        if secs:
            w.notes.append(f"session affinity: later connections from {src} within {secs} seconds of the last one "
                           f"go to the same endpoint ({{endpoint}}): `update @{op.set}` records the client, and "
                           f"`ip saddr @{op.set}` sends it back; this trace is a first connection, so no earlier "
                           "choice applies")
            return f"remembers {src} in @{op.set} for {secs} s"
        w.notes.append(f"set {op.set} records {src} without a timeout")
        return f"remembers {src} in @{op.set}"

    # ------------------------------------------------------------------ matching

    def _value(self, k: Sel, w: _Walk) -> str | int | None:
        p = w.pkt
        f = k.field
        if f in ("saddr", "daddr"):
            if (k.arg == "ip6") != (":" in p.dst):
                if self.table.family == "inet":
                    return None  # an inet table's `ip saddr` does not match an IPv6 packet
                raise Unsupported(f"{k.arg} {f} on an IPv{6 if ':' in p.dst else 4} packet")
            return p.src if f == "saddr" else p.dst
        if f == "l4proto":
            return p.proto
        if f in ("dport", "sport"):
            if k.arg and k.arg != p.proto:
                return None  # `tcp dport` on a UDP packet: no match
            return p.dport if f == "dport" else p.sport
        if f == "iifname":
            return p.in_iface
        if f == "oifname":
            return p.out_iface
        if f == "mark":
            return p.mark
        if f == "fib-saddr":
            return "local" if self.is_local(p.src) else "unicast"
        if f == "fib-daddr":
            return "local" if self.is_local(p.dst) else "unicast"
        if f == "fib-rpf":
            note = (f"reverse-path check (fib saddr . iif oif) taken as passing: the node has a route back to {p.src} "
                    f"by {p.in_iface or 'the interface it came from'} (the trace's interfaces follow the node's routes)")
            if note not in w.notes:
                w.notes.append(note)
            return "exists"
        if f == "ct-state":
            return "untracked" if w.untracked else "new"
        if f == "ct-status":
            return frozenset(x for x, on in (("dnat", p.dnat), ("snat", p.snat)) if on)
        if f == "nfproto":
            return "ipv6" if ":" in p.dst else "ipv4"
        if f == "icmp":
            return None  # the traced packet is TCP, UDP or SCTP: an ICMP field matches nothing
        if f == "pkttype":
            return "host"  # a connection to one address: unicast
        raise Unsupported(f"expression {k.text()}")  # pragma: no cover

    def _atom(self, k: Sel, got, value: str) -> bool:
        f = k.field
        if got is None:
            return False
        if f in ("saddr", "daddr"):
            return address_in(got, value)
        if f in ("dport", "sport"):
            return port_in(got, value)
        if f == "l4proto":
            return proto_is(got, value)
        if f in ("iifname", "oifname"):
            return iface_is(got, value)
        if f == "mark":
            return got == _int(value, "mark")
        if f in ("fib-saddr", "fib-daddr", "nfproto", "pkttype", "fib-rpf"):
            return got == value
        if f == "ct-state":
            return value == got
        if f == "ct-status":
            if value not in CT_STATUS:
                raise Unsupported(f"ct status {value!r}")
            return value in got
        raise Unsupported(f"expression {k.text()}")  # pragma: no cover

    def _match(self, m: Match, w: _Walk) -> bool:
        vals = [self._value(k, w) for k in m.keys]
        if any(v is None and k.field not in ("iifname", "oifname") for k, v in zip(m.keys, vals)):
            # a field the packet lacks (tcp dport of a UDP packet, ip6 saddr of IPv4): the rule breaks, no
            # match even when negated; an interface name the hook lacks is "" to the kernel, so `!=` holds
            return False
        if m.mask is not None:
            vals = [vals[0] & m.mask]
        if m.set:
            s = self._set(m.set)
            hit = self._lookup(s, m.keys, vals) is not None
            if hit and "dynamic" in s.decl.flags and not m.negated:
                w.notes.append(f"session affinity: the listing's @{m.set} already holds {w.pkt.src} (an earlier "
                               "connection chose this endpoint), so this connection follows it")
        else:
            hit = any(all(self._atom(k, v, x) for k, v, x in zip(m.keys, vals, alt)) for alt in m.values)
        return hit != m.negated

    def _set(self, name: str) -> SetState:
        s = self.table.sets.get(name)
        if s is None:
            raise Unsupported(f"@{name}: the table has no such set or map (its elements are not in the rules)")
        why = self.views[self.tidx].unreadable.get(name)
        if why is not None:
            raise Unsupported(why)
        return s

    def _vmap(self, w: _Walk, m: VMap) -> tuple[str, Verdict, str | None] | None:
        vals = [self._value(k, w) for k in m.keys]
        key = " . ".join(str(v) for v in vals)
        if m.map:
            s = self._set(m.map)
            if not s.is_map or not s.decl.type.rstrip().endswith(": verdict"):
                raise Unsupported(f"vmap @{m.map}: not a verdict map")
            e = self._lookup(s, m.keys, vals)
            if e is None:
                return None
            return key, _verdict_of(" ".join(e.value)), e.comment
        for k_parts, verdict in m.entries:
            if all(self._atom(k, v, x) for k, v, x in zip(m.keys, vals, k_parts)):
                return key, _verdict_of(verdict), None
        return None

    def _lookup(self, s: SetState, keys: tuple[Sel, ...], vals: list):
        """The element of S whose key holds the packet's values (exact keys by index, ranges by scan)."""
        name = s.decl.name
        if key_arity(s.decl.type) != len(keys):
            raise Unsupported(f"@{name} has keys of {key_arity(s.decl.type)} part(s), the lookup {len(keys)}")
        idx = self._index.get((self.tidx, name))
        if idx is None or idx[2] is not s:
            exact: dict[tuple, object] = {}
            ranged: list = []
            for e in s.elements.values():
                norm = _norm_key(keys, e.key)
                if norm is None:
                    ranged.append(e)
                else:
                    exact.setdefault(norm, e)
            idx = self._index[(self.tidx, name)] = (exact, ranged, s)
        exact, ranged, _ = idx
        if any(v is None for v in vals):
            return None
        e = exact.get(tuple(_norm_value(k, v) for k, v in zip(keys, vals)))
        if e is not None:
            return e
        for e in ranged:
            if all(self._atom(k, v, x) for k, v, x in zip(keys, vals, e.key)):
                return e
        return None


def _norm_value(k: Sel, v) -> str:
    f = k.field
    if f in ("saddr", "daddr"):
        return str(ipaddress.ip_address(v))
    return str(v)


def _norm_key(keys: tuple[Sel, ...], parts: tuple[str, ...]) -> tuple[str, ...] | None:
    """An element's key in the form packet values take, or None when a part is a range (scanned instead)."""
    out = []
    for k, x in zip(keys, parts):
        f = k.field
        if f in ("saddr", "daddr"):
            if "/" in x or "-" in x:
                return None
            out.append(str(_address(x)))
        elif f in ("dport", "sport", "mark"):
            if "-" in x:
                return None
            out.append(str(_int(x, "number")))
        elif f == "l4proto":
            name = PROTO_NAMES.get(x, x)
            proto_is("tcp", name)
            out.append(name)
        elif f in ("iifname", "oifname"):
            if x.endswith("*"):
                return None
            out.append(x.strip('"'))
        else:
            out.append(x)
    return tuple(out)


def _mark(mark: int, op: SetMark) -> int:
    if op.op == "|":
        return mark | op.value
    if op.op == "^":
        return mark ^ op.value
    if op.op == "&":
        return mark & op.value
    return op.value


def _verdict_text(v: Verdict, lower: bool = False) -> str:
    if v.kind in ("jump", "goto"):
        return f"{v.kind} {v.chain}"
    if v.kind in ("accept", "drop", "reject") and not lower:
        return v.kind.upper()
    return v.kind


def base_chains(table: TableState, lenient: bool = False) -> list[tuple[str, str, str, int]]:
    """(name, type, hook, priority) of the table's base chains, in the order the kernel runs them per hook.

    Equal priorities keep the table's order (the kernel's order between
    them is that of registration, which a listing cannot show).
    """
    out = []
    for name, c in table.chains.items():
        d = c.decl
        if d.hook is None:
            continue
        if lenient and (d.hook not in HOOKS or d.type not in ("filter", "nat", "route")):
            continue  # an ingress or egress chain: not on the path the walk follows (the tracer says so)
        if d.hook not in HOOKS:
            raise WalkError(name, 0, "", f"base chain on hook {d.hook}: the walk follows "
                                         f"{', '.join(HOOKS)} only")
        if d.type not in ("filter", "nat"):
            raise WalkError(name, 0, "", f"base chain of type {d.type}: the walk follows filter and nat chains")
        try:
            prio = parse_priority(d.priority)
        except ValueError:
            if not lenient:
                raise
            prio = 0
        # a `route` chain on output is a filter chain that re-routes after a mark change: walked as filter
        out.append((name, "filter" if d.type == "route" else d.type, d.hook, prio))
    out.sort(key=lambda b: b[3])
    return out
