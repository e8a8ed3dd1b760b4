"""One rule body (`-A CHAIN <spec>`) read into a structure, and its canonical spelling.

rulegen writes rules the way kube-proxy passes them to iptables-restore
(`-m tcp -p tcp -d 10.96.0.1 --dport 80`, `--or-mark 0x00004000`,
`--probability 0.5000000000`); a live node's iptables-save prints the same
rule another way (`-d 10.96.0.1/32 -p tcp -m tcp --dport 80`, `--set-xmark
0x4000/0x4000`, `--probability 0.50000000000`, `--mask 255.255.255.255
--rsource`, `--reject-with icmp-port-unreachable`). `parse_spec` reads
either into a `Spec`; `canonical` prints a `Spec` one fixed way, so diff and
apply compare rules by meaning, and the tracer evaluates the `Spec` fields.
Anything this module does not know is kept verbatim (never dropped), so an
unknown rule still compares by its text and the tracer can name it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from ...ipaddr import parse_cidr, parse_ip


class SpecError(ValueError):
    """A rule body that cannot be tokenized (unbalanced quotes, dangling `!`)."""


class Opt(NamedTuple):
    name: str  # "--dport", "-s", ...
    values: tuple[str, ...]
    negated: bool = False


class Match(NamedTuple):
    module: str  # "tcp", "comment", "statistic", ...
    opts: tuple[Opt, ...]

    def get(self, name: str) -> Opt | None:
        for o in self.opts:
            if o.name == name:
                return o
        return None


class Spec(NamedTuple):
    base: tuple[Opt, ...]  # -s -d -p -i -o (with negation)
    matches: tuple[Match, ...]
    target: str | None  # -j/-g target, None for a rule without one
    target_opts: tuple[Opt, ...]
    goto: bool = False

    def base_opt(self, name: str) -> Opt | None:
        for o in self.base:
            if o.name == name:
                return o
        return None

    def match(self, module: str) -> Match | None:
        for m in self.matches:
            if m.module == module:
                return m
        return None

    def target_opt(self, name: str) -> Opt | None:
        for o in self.target_opts:
            if o.name == name:
                return o
        return None

    @property
    def comment(self) -> str | None:
        m = self.match("comment")
        o = m.get("--comment") if m else None
        return o.values[0] if o and o.values else None


_BASE_LONG = {"--source": "-s", "--destination": "-d", "--protocol": "-p",
              "--in-interface": "-i", "--out-interface": "-o", "--jump": "-j", "--goto": "-g",
              "--match": "-m"}
_BASE = ("-s", "-d", "-p", "-i", "-o")


def tokenize(spec: str) -> list[str]:
    """Split like iptables-restore does: whitespace, double quotes, backslash escapes."""
    out: list[str] = []
    cur: list[str] = []
    in_q = False
    have = False
    i, n = 0, len(spec)
    while i < n:
        c = spec[i]
        if c == "\\" and i + 1 < n and (in_q or spec[i + 1] in '"\\'):
            cur.append(spec[i + 1])
            have = True
            i += 2
            continue
        if c == '"':
            in_q = not in_q
            have = True
        elif c in " \t" and not in_q:
            if have:
                out.append("".join(cur))
                cur, have = [], False
        else:
            cur.append(c)
            have = True
        i += 1
    if in_q:
        raise SpecError("unbalanced double quote")
    if have:
        out.append("".join(cur))
    return out


def _is_opt(tok: str) -> bool:
    return tok.startswith("-") and len(tok) > 1 and not tok[1].isdigit()


@lru_cache(maxsize=1 << 16)
def parse_spec(spec: str) -> Spec:
    toks = tokenize(spec)
    base: list[Opt] = []
    matches: list[tuple[str, list[Opt]]] = []
    target: str | None = None
    target_opts: list[Opt] = []
    goto = False
    neg = False
    proto: str | None = None
    i, n = 0, len(toks)
    while i < n:
        t = toks[i]
        if t == "!":
            if neg:
                raise SpecError("two '!' in a row")
            neg = True
            i += 1
            continue
        t = _BASE_LONG.get(t, t)
        if not _is_opt(t):
            raise SpecError(f"unexpected {t!r}")
        j = i + 1
        while j < n and not _is_opt(toks[j]) and toks[j] != "!":
            j += 1
        vals = tuple(toks[i + 1:j])
        if target is not None:
            target_opts.append(Opt(t, vals, neg))
        elif t == "-m":
            if not vals:
                raise SpecError("-m without a module")
            matches.append((vals[0], []))
        elif t in ("-j", "-g"):
            if not vals:
                raise SpecError(f"{t} without a target")
            target, goto = vals[0], t == "-g"
            if len(vals) > 1:
                raise SpecError(f"unexpected {vals[1]!r} after the target")
        elif t in _BASE:
            if len(vals) != 1:
                raise SpecError(f"{t} needs one value")
            if t == "-p":
                proto = vals[0].lower()
            base.append(Opt(t, vals, neg))
        else:
            if matches:
                matches[-1][1].append(Opt(t, vals, neg))
            elif proto:  # `-p tcp --dport 80` loads the tcp match implicitly
                matches.append((proto, [Opt(t, vals, neg)]))
            else:
                raise SpecError(f"option {t} outside any match")
        neg = False
        i = j
    if neg:
        raise SpecError("dangling '!'")
    return Spec(tuple(base), tuple(Match(m, tuple(o)) for m, o in matches), target, tuple(target_opts), goto)


# ------------------------------------------------------------------ canonical form


def _addr(v: str) -> str:
    if "/" in v:
        c = parse_cidr(v)
        if c is None:
            return v
        ip, _, bits = c.partition("/")
        return ip if bits == ("128" if ":" in ip else "32") else c
    return parse_ip(v) or v


def _num(v: str) -> int | None:
    try:
        return int(v, 0)
    except ValueError:
        return None


def _mark(v: str) -> str:
    """`0x00004000/0x00004000` and `0x4000/0x4000` alike; a bare value means mask all ones."""
    val, _, mask = v.partition("/")
    a, b = _num(val), _num(mask) if mask else 0xFFFFFFFF
    if a is None or b is None:
        return v
    return hex(a) if b == 0xFFFFFFFF else f"{hex(a)}/{hex(b)}"


_RECENT_DEFAULTS = {("--mask", ("255.255.255.255",)), ("--rsource", ())}
_CTSTATE_ORDER = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")


def _canon_opt(module: str, o: Opt) -> Opt | None:
    name, vals = o.name, o.values
    if module == "recent" and not o.negated and (name, vals) in _RECENT_DEFAULTS:
        return None
    if module == "recent" and name == "--mask" and vals == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",):
        return None
    if module == "mark" and name == "--mark" and vals:
        vals = (_mark(vals[0]),)
    elif module == "statistic" and name == "--probability" and vals:
        try:  # the kernel keeps probability as a 31-bit fraction
            vals = (str(round(float(vals[0]) * 0x80000000)),)
        except ValueError:
            pass
    elif module in ("conntrack", "state") and name in ("--ctstate", "--state") and vals:
        states = vals[0].split(",")
        vals = (",".join(sorted(states, key=lambda s: _CTSTATE_ORDER.index(s) if s in _CTSTATE_ORDER else 99)),)
        name = "--ctstate"
    elif module in ("tcp", "udp", "sctp") and name in ("--destination-port", "--source-port"):
        name = "--dport" if name == "--destination-port" else "--sport"
    return Opt(name, vals, o.negated)


def _canon_target(target: str | None, opts: tuple[Opt, ...]) -> tuple[Opt, ...]:
    out: list[Opt] = []
    for o in opts:
        name, vals = o.name, o.values
        if target == "MARK" and vals:
            v = _num(vals[0].split("/")[0])
            if name == "--or-mark" and v is not None:
                name, vals = "--set-xmark", (f"{hex(v)}/{hex(v)}",)
            elif name == "--xor-mark" and v is not None:
                name, vals = "--set-xmark", (f"{hex(v)}/0x0",)
            elif name == "--and-mark" and v is not None:
                name, vals = "--set-xmark", (f"0x0/{hex(~v & 0xFFFFFFFF)}",)
            elif name == "--set-mark" and v is not None:
                mask = vals[0].split("/")[1] if "/" in vals[0] else "0xffffffff"
                name, vals = "--set-xmark", (f"{hex(v)}/{hex(int(mask, 0))}",)
            elif name == "--set-xmark":
                a, _, b = vals[0].partition("/")
                vals = (f"{hex(int(a, 0))}/{hex(int(b or '0xffffffff', 0))}",)
        elif target == "REJECT" and name == "--reject-with" and vals in (
            ("icmp-port-unreachable",), ("icmp6-port-unreachable",)
        ):
            continue
        out.append(Opt(name, vals, o.negated))
    return tuple(out)


def _quote(v: str) -> str:
    if v == "" or any(c in v for c in ' \t"\\'):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return v


def _fmt(o: Opt) -> str:
    s = ("! " if o.negated else "") + o.name
    return s + "".join(" " + _quote(v) for v in o.values)


def canonical_of(sp: Spec) -> str:
    base = sorted(
        (Opt(o.name, (_addr(o.values[0]),) if o.name in ("-s", "-d") else
             ((o.values[0].lower(),) if o.name == "-p" else o.values), o.negated) for o in sp.base),
        key=lambda o: _BASE.index(o.name),
    )
    parts = [_fmt(o) for o in base]
    ms = []
    for m in sp.matches:
        opts = [c for c in (_canon_opt(m.module, o) for o in m.opts) if c is not None]
        opts.sort(key=lambda o: o.name)
        ms.append("-m " + m.module + "".join(" " + _fmt(o) for o in opts))
    ms.sort()
    parts.extend(ms)
    if sp.target is not None:
        parts.append(("-g " if sp.goto else "-j ") + sp.target)
        parts.extend(_fmt(o) for o in _canon_target(sp.target, sp.target_opts))
    return " ".join(parts)


@lru_cache(maxsize=1 << 18)
def canonical(spec: str) -> str:
    """The one spelling of a rule body used to compare rules by meaning.

    A body that cannot be tokenized compares by its own text.
    """
    try:
        return canonical_of(parse_spec(spec))
    except SpecError:
        return spec
