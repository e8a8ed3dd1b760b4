"""IPVS mode's text → the IPVS IR (`IPVSState`), from rulegen's files or from a live node.

Reads the three outputs `render` writes (`ipvsadm.rules`, `ipset.rules`,
`iptables.rules`, or the combined form with `# rulegen: <section>` headers)
and what a node prints: `ipvsadm -Sn`, `ipset save`, `iptables-save`. So
`parse(render(state)) == state`, and a node's dumps read into the same
records compare with a compile by `ir.normalised`.

What is dropped on the way in, because it is the kernel's and not a sync's:
`bucketsize` and `initval` on hash sets (ipset 7 picks them), per-entry
extensions (`comment`, `timeout`, counters) and `-exist` words. Host
networks in `hash:ip,port,net` entries lose their `/32` (`/128`), as
`ipset save` prints them. Anything else unknown is an error naming the
line, never skipped: an `ipvsadm` option rulegen does not model, a
non-numeric address (use `ipvsadm -Sn`), a real server before its service.
The kube-ipvs0 address list is the KUBE-IPVS-IPS set's entries.
"""

from __future__ import annotations

import ipaddress
import os

from ...dataplane.xtables.model import Ruleset
from ...dataplane.xtables.parse import ParseError as XtablesParseError
from ...dataplane.xtables.parse import parse as parse_xtables
from ...diagnostics import UsageError
from ...ipaddr import parse_ip
from .ir import (
    BITMAP_PORT,
    FLAG_ONEPACKET,
    FLAG_PERSISTENT,
    MASQ,
    ROUTE,
    SET_COMMENTS,
    TUNNEL,
    IPSet,
    IPVSState,
    RealServer,
    VirtualServer,
    sched_flag_bit,
    set_name,
)
from .render import FILES, HEADER, SECTIONS


class ParseError(UsageError):
    """Text ipvsadm or ipset would not accept (or rulegen cannot represent), with where and what."""

    def __init__(self, source: str, lineno: int, line: str, message: str) -> None:
        self.source, self.lineno, self.line, self.message = source, lineno, line, message
        shown = line if len(line) <= 160 else line[:157] + "..."
        super().__init__(f"{source}: line {lineno}: {message}: {shown}")


def _lines(text: str):
    """(line number, stripped line) of every line that is not blank or a `#` comment."""
    for n, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield n, line


# ------------------------------------------------------------------ ipvsadm

_SERVICE_OPTS = {"-t": "tcp", "--tcp-service": "tcp", "-u": "udp", "--udp-service": "udp",
                 "--sctp-service": "sctp", "-f": "fwmark", "--fwmark-service": "fwmark"}
_METHODS = {"-m": MASQ, "--masquerading": MASQ, "-g": ROUTE, "--gatewaying": ROUTE, "-i": TUNNEL, "--ipip": TUNNEL}
DEFAULT_PERSISTENCE = 300  # ipvsadm's timeout for a bare `-p`


def _hostport(word: str, fail) -> tuple[str, int | None]:
    """`1.2.3.4:80`, `[fd00::1]:80` or a bare address → (canonical address, port or None)."""
    if word.startswith("["):
        host, sep, rest = word[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            fail(f"bad address {word!r}")
        port_s = rest[1:] if rest else ""
    elif word.count(":") == 1:
        host, _, port_s = word.partition(":")
    else:
        host, port_s = word, ""
    ip = parse_ip(host)
    if ip is None:
        fail(f"{host!r} is not a numeric IP address (dump with ipvsadm -Sn)")
    if port_s == "":
        return ip, None
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        fail(f"{port_s!r} is not a numeric port (dump with ipvsadm -Sn)")
    return ip, int(port_s)


class _Service:
    """A virtual server while its real servers are being read."""

    __slots__ = ("protocol", "address", "port", "scheduler", "flags", "timeout", "netmask", "reals", "seen")

    def __init__(self, protocol: str, address: str, port: int, scheduler: str, flags: int, timeout: int,
                 netmask: int):
        self.protocol, self.address, self.port = protocol, address, port
        self.scheduler, self.flags, self.timeout, self.netmask = scheduler, flags, timeout, netmask
        self.reals: list[RealServer] = []
        self.seen: set[tuple[str, int]] = set()

    def done(self) -> VirtualServer:
        return VirtualServer(self.protocol, self.address, self.port, self.scheduler, self.flags,
                             self.timeout, tuple(self.reals), self.netmask)


def _netmask(word: str, address: str, fail) -> int:
    """`-M` as ipvsadm prints it (a dotted IPv4 mask, an IPv6 prefix length) → the record's netmask."""
    six = ":" in address
    full = 128 if six else 32
    if six or word.isdigit():
        bits = int(word) if word.isdigit() else -1
    else:
        try:
            bits = ipaddress.IPv4Network(f"0.0.0.0/{word}").prefixlen
        except ValueError:
            bits = -1
    if not 1 <= bits <= full:
        fail(f"{word!r} is not a persistence netmask")
    return 0 if bits == full else bits


def _service_key(words: list[str], i: int, fail) -> tuple[tuple[str, str, int], int]:
    """The `-t ADDR:PORT` (or -u, --sctp-service, -f MARK [-6]) at words[i]: (key, next index)."""
    proto = _SERVICE_OPTS[words[i]]
    if i + 1 >= len(words):
        fail(f"{words[i]} without a service address")
    arg = words[i + 1]
    if proto == "fwmark":
        if not arg.isdigit():
            fail(f"{arg!r} is not a firewall mark")
        six = i + 2 < len(words) and words[i + 2] == "-6"
        return (proto, "::" if six else "", int(arg)), i + (3 if six else 2)
    ip, port = _hostport(arg, fail)
    if port is None:
        fail(f"service address {arg!r} has no port")
    return (proto, ip, port), i + 2


def parse_ipvsadm(text: str, source: str = "<ipvsadm>") -> tuple[VirtualServer, ...]:
    """`ipvsadm -Sn` / `ipvsadm -R` text → virtual servers, in the order read."""
    services: dict[tuple[str, str, int], _Service] = {}
    for n, line in _lines(text):
        def fail(msg: str, n: int = n, line: str = line):
            raise ParseError(source, n, line, msg)

        words = line.split()
        verb = words[0]
        if verb in ("-A", "--add-service"):
            if len(words) < 2 or words[1] not in _SERVICE_OPTS:
                fail("-A needs -t, -u, --sctp-service or -f and a service address")
            key, i = _service_key(words, 1, fail)
            scheduler, flags, timeout, netmask, sched_words = "wlc", 0, 0, 0, ""  # ipvsadm's default scheduler
            while i < len(words):
                w = words[i]
                if w in ("-s", "--scheduler") and i + 1 < len(words):
                    scheduler, i = words[i + 1], i + 2
                elif w in ("-p", "--persistent"):
                    flags |= FLAG_PERSISTENT
                    if i + 1 < len(words) and words[i + 1].isdigit():
                        timeout, i = int(words[i + 1]), i + 2
                    else:
                        timeout, i = DEFAULT_PERSISTENCE, i + 1
                elif w in ("-M", "--netmask") and i + 1 < len(words):
                    netmask, i = _netmask(words[i + 1], key[1], fail), i + 2
                elif w in ("-o", "--ops"):
                    flags, i = flags | FLAG_ONEPACKET, i + 1
                elif w in ("-b", "--sched-flags") and i + 1 < len(words):
                    sched_words, i = words[i + 1], i + 2
                else:
                    fail(f"option {w} is not one rulegen models on a virtual server (-s, -p, -M, -o, -b)")
            for word in filter(None, sched_words.split(",")):
                bit = sched_flag_bit(scheduler, word)
                if bit is None:
                    fail(f"unknown scheduler flag {word!r} for scheduler {scheduler}")
                flags |= bit
            if key in services:
                fail("virtual server defined twice")
            services[key] = _Service(*key, scheduler, flags, timeout, netmask)
        elif verb in ("-a", "--add-server"):
            if len(words) < 2 or words[1] not in _SERVICE_OPTS:
                fail("-a needs -t, -u, --sctp-service or -f and a service address")
            key, i = _service_key(words, 1, fail)
            svc = services.get(key)
            if svc is None:
                fail("real server for a virtual server not defined before it")
            rip, rport, weight, method = None, None, 1, MASQ
            while i < len(words):
                w = words[i]
                if w in ("-r", "--real-server") and i + 1 < len(words):
                    rip, rport = _hostport(words[i + 1], fail)
                    i += 2
                elif w in _METHODS:
                    method, i = _METHODS[w], i + 1
                elif w in ("-w", "--weight") and i + 1 < len(words):
                    if not words[i + 1].isdigit():
                        fail(f"{words[i + 1]!r} is not a weight")
                    weight, i = int(words[i + 1]), i + 2
                else:
                    fail(f"option {w} is not one rulegen models on a real server (-r, -m/-g/-i, -w)")
            if rip is None:
                fail("-a without -r")
            port = svc.port if rport is None else rport
            if (rip, port) in svc.seen:
                fail("real server defined twice")
            svc.seen.add((rip, port))
            svc.reals.append(RealServer(rip, port, weight, method))
        else:
            fail(f"unknown command {verb} (rulegen reads -A services and -a real servers)")
    return tuple(s.done() for s in services.values())


# ------------------------------------------------------------------ ipset

_VALUED = {"family", "hashsize", "maxelem", "range", "timeout", "netmask", "markmask", "size",
           "bucketsize", "initval", "revision"}
_KERNEL_CHOSEN = {"bucketsize", "initval"}


def _entry(typ: str, word: str) -> str:
    if typ == "hash:ip,port,net":
        if word.endswith("/32") and ":" not in word.rsplit(",", 1)[-1]:
            return word[:-3]
        if word.endswith("/128"):
            return word[:-4]
    return word


def parse_ipset(text: str, source: str = "<ipset>") -> tuple[IPSet, ...]:
    """`ipset save` / `ipset restore` text → sets, in the order created, entries in the order added."""
    heads: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {}
    entries: dict[str, list[str]] = {}
    for n, line in _lines(text):
        def fail(msg: str, n: int = n, line: str = line):
            raise ParseError(source, n, line, msg)

        words = [w for w in line.split() if w not in ("-exist", "-!")]
        verb = words[0] if words else ""
        if verb in ("create", "-N", "n") and len(words) >= 3:
            name, typ = words[1], words[2]
            if name in heads:
                fail(f"set {name} created twice")
            family, options, i = "", [], 3
            while i < len(words):
                w = words[i]
                if w in _VALUED:
                    if i + 1 >= len(words):
                        fail(f"{w} without a value")
                    if w == "family":
                        family = words[i + 1]
                    elif w not in _KERNEL_CHOSEN:
                        options.append((w, words[i + 1]))
                    i += 2
                else:
                    options.append((w, ""))
                    i += 1
            if typ != BITMAP_PORT and not family:
                family = "inet"  # ipset's default for hash types
            heads[name] = (typ, family, tuple(options))
            entries[name] = []
        elif verb in ("add", "-A", "a") and len(words) >= 3:
            name = words[1]
            if name not in heads:
                fail(f"entry for set {name}, which is not created before it")
            entries[name].append(_entry(heads[name][0], words[2]))
        else:
            fail("unknown command (rulegen reads create and add lines)")
    return tuple(IPSet(name, typ, fam, opts, SET_COMMENTS.get(name, ""), tuple(entries[name]))
                 for name, (typ, fam, opts) in heads.items())


# ------------------------------------------------------------------ the whole state


def _family(services, ipsets, hint: int | None) -> int | None:
    if hint:
        return hint
    for s in ipsets:
        if s.family in ("inet", "inet6") and s.name.startswith("KUBE-"):
            return 6 if s.family == "inet6" else 4
    for vs in services:
        if vs.address:
            return 6 if ":" in vs.address else 4
    return None


def parse_parts(ipvsadm: str, ipset: str, iptables: str, family: int | None = None,
                sources: tuple[str, str, str] = ("<ipvsadm>", "<ipset>", "<iptables>")) -> IPVSState:
    """The three texts (rulegen's files or a node's dumps) → one `IPVSState`."""
    services = parse_ipvsadm(ipvsadm, sources[0])
    ipsets = parse_ipset(ipset, sources[1])
    fam = _family(services, ipsets, family)
    try:
        rules = parse_xtables(iptables, sources[2], fam) if iptables.strip() else Ruleset(fam or 4, ())
    except XtablesParseError as e:
        raise ParseError(e.source, e.lineno, e.line, e.message) from None
    fam = fam or rules.family
    bound = next((s.entries for s in ipsets if s.name == set_name("KUBE-IPVS-IPS", fam)), ())
    return IPVSState(fam, services, ipsets, bound, rules)


def split_sections(text: str, source: str = "<input>") -> dict[str, str]:
    """The combined form → {section: text}; each keeps its line numbers (earlier lines blanked)."""
    parts: dict[str, list[str]] = {}
    cur: list[str] | None = None
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if line.startswith(HEADER):
            name = line[len(HEADER):].strip()
            if name not in SECTIONS:
                raise ParseError(source, n, line, f"unknown section (want {', '.join(SECTIONS)})")
            if name in parts:
                raise ParseError(source, n, line, "section given twice")
            cur = parts[name] = [""] * n
        elif cur is not None:
            cur.append(line)
        elif line.strip() and not line.startswith("#"):
            raise ParseError(source, n, line, "text before the first '# rulegen: <section>' line")
    return {name: "\n".join(parts.get(name, [])) for name in SECTIONS}


def parse(text: str, source: str = "<input>", family: int | None = None) -> IPVSState:
    """The combined stdout form (`# rulegen: ipvsadm` / `ipset` / `iptables` sections)."""
    s = split_sections(text, source)
    return parse_parts(s["ipvsadm"], s["ipset"], s["iptables"], family, (source, source, source))


def read(path: str, family: int | None = None) -> IPVSState:
    """A `compile -o DIR` folder (its three files) or a file in the combined form."""
    if os.path.isdir(path):
        texts = []
        for section in SECTIONS:
            p = os.path.join(path, FILES[section])
            try:
                with open(p, encoding="utf-8", errors="replace") as f:
                    texts.append(f.read())
            except OSError as e:
                raise UsageError(f"{p}: cannot read: {e.strerror}") from None
        names = tuple(os.path.join(path, FILES[s]) for s in SECTIONS)
        return parse_parts(*texts, family=family, sources=names)  # type: ignore[arg-type]
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse(f.read(), path, family)
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
