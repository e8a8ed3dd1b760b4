"""One rule body (`-A CHAIN <spec>`) read into a structure, and its canonical spelling.

rulegen writes rules the way kube-proxy passes them to iptables-restore
(`-m tcp -p tcp -d 10.96.0.1 --dport 80`, `--or-mark 0x00004000`,
`--probability 0.5000000000`); a live node's iptables-save prints the same
rule another way (`-d 10.96.0.1/32 -p tcp -m tcp --dport 80`, `--set-xmark
0x4000/0x4000`, `--probability 0.50000000000`, `--mask 255.255.255.255
--rsource`, `--reject-with icmp-port-unreachable`). `parse_spec` reads
either into a `Spec`; `canonical` prints a `Spec` one fixed way, so diff and
apply compare rules by meaning, and the tracer evaluates the `Spec` fields.
(`canonical` reads and prints without building the `Spec`: see `_read`.)
Anything this module does not know is kept verbatim (never dropped), so an
unknown rule still compares by its text and the tracer can name it.
"""

from __future__ import annotations

from functools import lru_cache
from operator import itemgetter
from typing import Callable, NamedTuple, Sequence

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
    if "\\" in spec:
        return _tokenize_chars(spec)
    if '"' not in spec:
        toks = spec.replace("\t", " ").split(" ")
        return [t for t in toks if t] if "" in toks else toks
    return _tokenize_quoted(spec)


def _tokenize_quoted(spec: str) -> list[str]:
    """Quotes without escapes (every kube-proxy comment): split at the quotes, then at blanks.

    Diff and apply canonicalise every rule of a 350k-line dump, so this is
    the hot path; it gives exactly `_tokenize_chars`'s answer (a test holds
    them together).
    """
    parts = spec.split('"')
    if len(parts) % 2 == 0:
        raise SpecError("unbalanced double quote")
    out: list[str] = []
    cur: str | None = None  # the token being built; "" is a real (empty quoted) token
    for k, seg in enumerate(parts):
        if k % 2:
            cur = seg if cur is None else cur + seg
            continue
        if not seg:
            continue
        fields = seg.replace("\t", " ").split(" ")
        if len(fields) == 1:
            cur = seg if cur is None else cur + seg
            continue
        first = fields[0]
        if cur is not None:
            out.append(cur + first)
        elif first:
            out.append(first)
        out.extend(f for f in fields[1:-1] if f)
        cur = fields[-1] or None
    if cur is not None:
        out.append(cur)
    return out


def _tokenize_chars(spec: str) -> list[str]:
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


_new = tuple.__new__  # Opt(...) without NamedTuple's Python-level __new__ (hot path)


# A rule body's options as plain tuples: (name, values, negated), where values
# is a list; `Opt` and `Match` unpack the same way, so the printer below takes
# either.


def _read(toks: list[str]) -> tuple:
    """The words of a rule body, read into (base, matches, target, target_opts, goto).

    One reader for `parse_spec` (which wraps the result in a `Spec`) and for
    `canonical` (which prints it straight away: a million bodies on a node
    holding a 10k-Service ruleset, where building Opt, Match and Spec tuples
    only to take them apart again was most of the time). SpecError when the
    body is malformed.
    """
    base: list[tuple[str, list[str], bool]] = []
    matches: list[tuple[str, list[tuple[str, list[str], bool]]]] = []
    target: str | None = None
    target_opts: list[tuple[str, list[str], bool]] = []
    goto = neg = False
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
        if len(t) < 2 or t[0] != "-" or t[1].isdigit():
            raise SpecError(f"unexpected {t!r}")  # a value where an option belongs
        t = _BASE_LONG.get(t, t)
        j = i + 1  # an option's values run to the next option or "!"
        while j < n:
            u = toks[j]
            if u == "!" or (len(u) > 1 and u[0] == "-" and not u[1].isdigit()):
                break
            j += 1
        if (t == "-c" or t == "--set-counters") and target is None and not neg and j == i + 3:
            # iptables-restore's in-rule counters (`-A X -c 10 840 ...`): state, not meaning
            i = j
            continue
        if target is not None:
            target_opts.append((t, toks[i + 1:j], neg))
        elif t == "-m":
            if j == i + 1:
                raise SpecError("-m without a module")
            matches.append((toks[i + 1], []))
        elif t == "-j" or t == "-g":
            if j == i + 1:
                raise SpecError(f"{t} without a target")
            if j > i + 2:
                raise SpecError(f"unexpected {toks[i + 2]!r} after the target")
            target, goto = toks[i + 1], t == "-g"
        elif t in _BASE:
            if j != i + 2:
                raise SpecError(f"{t} needs one value")
            if t == "-p":
                proto = toks[i + 1].lower()
            base.append((t, toks[i + 1:j], neg))
        elif matches:
            matches[-1][1].append((t, toks[i + 1:j], neg))
        elif proto:  # `-p tcp --dport 80` loads the tcp match implicitly
            matches.append((proto, [(t, toks[i + 1:j], neg)]))
        else:
            raise SpecError(f"option {t} outside any match")
        neg = False
        i = j
    if neg:
        raise SpecError("dangling '!'")
    return base, matches, target, target_opts, goto


def _opts(opts: list[tuple[str, list[str], bool]]) -> tuple[Opt, ...]:
    return tuple([_new(Opt, (name, tuple(vals), negated)) for name, vals, negated in opts])


@lru_cache(maxsize=1 << 16)
def parse_spec(spec: str) -> Spec:
    base, matches, target, target_opts, goto = _read(tokenize(spec))
    return Spec(_opts(base), tuple([Match(m, _opts(o)) for m, o in matches]), target, _opts(target_opts), goto)


# ------------------------------------------------------------------ canonical form


_ANY = ("0.0.0.0/0", "::/0")


def _addr(v: str) -> str:
    if "/" in v:
        if v.endswith("/32") and ":" not in v:  # iptables-save's host /32: skip the network arithmetic
            return parse_ip(v[:-3]) or v
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


_CTSTATE_ORDER = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
_IP_PROTOS = {"tcp": "6", "udp": "17", "sctp": "132"}


def _probability(v: str) -> str | None:
    """The kernel keeps probability as a 31-bit fraction; printed as iptables-save does.

    None when `v` is not a number (the option is then kept as written).
    """
    try:
        return f"{round(float(v) * 0x80000000) / 0x80000000:.11f}"
    except ValueError:
        return None


def _canon_opt(module: str, name: str, vals: Sequence[str], negated: bool) -> tuple[str, Sequence[str]] | None:
    """(name, values) of one match option in canonical spelling, or None when it is a default."""
    if module == "recent":
        if name == "--mask" and len(vals) == 1:
            if vals[0] == "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" or (vals[0] == "255.255.255.255" and not negated):
                return None
        elif name == "--rsource" and not vals and not negated:
            return None
    elif module == "mark":
        if name == "--mark" and vals:
            vals = (_mark(vals[0]),)
    elif module == "statistic":
        if name == "--probability" and vals:
            p = _probability(vals[0])
            if p is not None:
                vals = (p,)
    elif module == "conntrack" or module == "state":
        if (name == "--ctstate" or name == "--state") and vals:
            states = vals[0].split(",")
            vals = (",".join(sorted(states, key=lambda s: _CTSTATE_ORDER.index(s) if s in _CTSTATE_ORDER else 99)),)
            name = "--ctstate"
    elif module == "tcp" or module == "udp" or module == "sctp":
        if name == "--destination-port":
            name = "--dport"
        elif name == "--source-port":
            name = "--sport"
    elif module == "ipvs" and vals:
        # kube-proxy writes `--vaddr 192.0.2.74 --vproto tcp`; iptables-save prints the protocol's number
        # (seen in the IPVS VM: `--vproto 6 --vaddr 192.0.2.74`).
        if name == "--vproto":
            vals = (_IP_PROTOS.get(vals[0].lower(), vals[0]),)
        elif name == "--vaddr":
            vals = (_addr(vals[0]),)
    return name, vals


def _canon_target(target: str | None, opts) -> list[tuple[str, Sequence[str], bool]]:
    out: list[tuple[str, Sequence[str], bool]] = []
    for name, vals, negated in opts:
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
        elif target == "REJECT" and name == "--reject-with" and len(vals) == 1 and vals[0] in (
            "icmp-port-unreachable", "icmp6-port-unreachable"
        ):
            continue
        out.append((name, vals, negated))
    return out


def _quote(v: str) -> str:
    if not v or " " in v or "\t" in v or '"' in v or "\\" in v:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return v


def _fmt(name: str, vals: Sequence[str], negated: bool, q: Callable[[str], str] | None) -> str:
    """One option as text; q is `_quote`, or None when no value can need quoting."""
    s = "! " + name if negated else name
    if q is None:
        return s + " " + " ".join(vals) if vals else s
    return s + "".join([" " + q(v) for v in vals])


# Modules whose options `_canon_opt` may respell; other options print as written.
_CANON_MODULES = frozenset(("recent", "mark", "statistic", "conntrack", "state", "tcp", "udp", "sctp", "ipvs"))
_first = itemgetter(0)  # sort key: the sorts below are stable and look at the name/rank only


def _print(base, matches, target: str | None, target_opts, goto: bool, q: Callable[[str], str] | None) -> str:
    """The canonical spelling of a read rule: base options in _BASE order, each
    match's options by name, the matches by their text, then the target."""
    parts: list[str] = []
    if base:
        ranked: list[tuple[int, str]] = []
        for name, vals, negated in base:
            v = vals[0]
            if name == "-s" or name == "-d":
                v = _addr(v)
                if v in _ANY and not negated:  # `-s 0.0.0.0/0` matches all; iptables-save omits it
                    continue
            elif name == "-p":
                v = v.lower()
            ranked.append((_BASE.index(name), ("! " if negated else "") + name + " " + (q(v) if q else v)))
        if len(ranked) > 1:
            ranked.sort(key=_first)
        parts = [text for _, text in ranked]
    if matches:
        ms: list[str] = []
        for module, opts in matches:
            canon = module in _CANON_MODULES
            texts: list[tuple[str, str]] = []
            for name, vals, negated in opts:
                if canon:
                    c = _canon_opt(module, name, vals, negated)
                    if c is None:
                        continue
                    name, vals = c
                texts.append((name, _fmt(name, vals, negated, q)))
            if len(texts) > 1:
                texts.sort(key=_first)
            ms.append("-m " + module + "".join([" " + text for _, text in texts]))
        if len(ms) > 1:
            ms.sort()
        parts += ms
    if target is not None:
        parts.append(("-g " if goto else "-j ") + target)
        if target_opts:
            if target == "MARK" or target == "REJECT":
                target_opts = _canon_target(target, target_opts)
            parts += [_fmt(name, vals, negated, q) for name, vals, negated in target_opts]
    return " ".join(parts)


def canonical_of(sp: Spec) -> str:
    return _print(sp.base, sp.matches, sp.target, sp.target_opts, sp.goto, _quote)


@lru_cache(maxsize=1 << 18)
def canonical(spec: str) -> str:
    """The one spelling of a rule body used to compare rules by meaning.

    A body that cannot be tokenized compares by its own text.
    """
    try:
        toks = tokenize(spec)
        # Without quotes, escapes or tabs no word can need quoting when printed.
        q = _quote if ('"' in spec or "\\" in spec or "\t" in spec) else None
        return _print(*_read(toks), q)
    except SpecError:
        return spec
