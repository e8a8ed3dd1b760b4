"""One rule body (`-A CHAIN <spec>`) read into a structure, and its canonical spelling.

rulegen writes rules the way kube-proxy passes them to iptables-restore
(`-m tcp -p tcp -d 10.96.0.1 --dport 80`, `--or-mark 0x00004000`,
`--probability 0.5000000000`); a live node's iptables-save prints the same
rule another way (`-d 10.96.0.1/32 -p tcp -m tcp --dport 80`, `--set-xmark
0x4000/0x4000`, `--probability 0.50000000000`, `--mask 255.255.255.255
--rsource`, `--reject-with icmp-port-unreachable`). `parse_spec` reads
either into a `Spec`; `canonical` prints a `Spec` one fixed way, so diff and
apply compare rules by meaning, and the tracer evaluates the `Spec` fields.
(`canonical` itself mostly skips the `Spec`: see "fast path" below.)
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
    if "\\" in spec:
        return _tokenize_chars(spec)
    if '"' not in spec:
        return [t for t in spec.replace("\t", " ").split(" ") if t]
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
    # where an option's values end: at the next option or "!" (computed once per token)
    stop = [t == "!" or (len(t) > 1 and t[0] == "-" and not t[1].isdigit()) for t in toks]
    while i < n:
        t = toks[i]
        if t == "!":
            if neg:
                raise SpecError("two '!' in a row")
            neg = True
            i += 1
            continue
        t = _BASE_LONG.get(t, t)
        if not stop[i]:
            raise SpecError(f"unexpected {t!r}")
        j = i + 1
        while j < n and not stop[j]:
            j += 1
        vals = tuple(toks[i + 1:j])
        if t in ("-c", "--set-counters") and target is None and not neg and len(vals) == 2:
            # iptables-restore's in-rule counters (`-A X -c 10 840 ...`): state, not meaning
            i = j
            continue
        if target is not None:
            target_opts.append(_new(Opt, (t, vals, neg)))
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
            base.append(_new(Opt, (t, vals, neg)))
        else:
            if matches:
                matches[-1][1].append(_new(Opt, (t, vals, neg)))
            elif proto:  # `-p tcp --dport 80` loads the tcp match implicitly
                matches.append((proto, [_new(Opt, (t, vals, neg))]))
            else:
                raise SpecError(f"option {t} outside any match")
        neg = False
        i = j
    if neg:
        raise SpecError("dangling '!'")
    return Spec(tuple(base), tuple(Match(m, tuple(o)) for m, o in matches), target, tuple(target_opts), goto)


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


def _probability(v: str) -> str | None:
    """The kernel keeps probability as a 31-bit fraction; printed as iptables-save does.

    None when `v` is not a number (the option is then kept as written).
    """
    try:
        return f"{round(float(v) * 0x80000000) / 0x80000000:.11f}"
    except ValueError:
        return None


def _canon_opt_parts(module: str, name: str, vals: Sequence[str], negated: bool) -> tuple[str, Sequence[str]] | None:
    """(name, values) of one match option in canonical spelling, or None when it is a default.

    Shared by `canonical_of` and the fast path; `vals` may be a tuple or a list.
    """
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
    return name, vals


def _canon_opt(module: str, o: Opt) -> Opt | None:
    c = _canon_opt_parts(module, o.name, o.values, o.negated)
    return None if c is None else _new(Opt, (c[0], c[1], o.negated))


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
        out.append(_new(Opt, (name, vals, o.negated)))
    return tuple(out)


def _quote(v: str) -> str:
    if not v or " " in v or "\t" in v or '"' in v or "\\" in v:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return v


def _fmt(o: Opt) -> str:
    s = ("! " if o.negated else "") + o.name
    vals = o.values
    if len(vals) == 1:  # the common case, without a generator
        return s + " " + _quote(vals[0])
    return s + "".join(" " + _quote(v) for v in vals)


def canonical_of(sp: Spec) -> str:
    base = []
    for o in sp.base:
        name, vals = o.name, o.values
        if name == "-s" or name == "-d":
            vals = (_addr(vals[0]),)
            if vals[0] in _ANY and not o.negated:  # `-s 0.0.0.0/0` matches all; iptables-save omits it
                continue
        elif name == "-p":
            vals = (vals[0].lower(),)
        base.append(_new(Opt, (name, vals, o.negated)))
    if len(base) > 1:
        base.sort(key=lambda o: _BASE.index(o.name))
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


# ------------------------------------------------------------------ fast path
#
# `rulegen apply` on a node that already holds a full ruleset, with no cache,
# canonicalises every wanted and every live rule body: a million distinct
# strings. Going through `parse_spec` builds an Opt per option, a Match per
# module and a Spec per rule only for `canonical_of` to take them apart
# again, which was most of the 9 s. `_canonical_fast` reads the tokens
# straight into plain tuples and prints them the way `canonical_of` does,
# with the same helpers (`_addr`, `_canon_opt_parts`, `_canon_target`,
# `_quote`); it is about 3.5x faster. Apart from `tokenize`'s own SpecError
# (the tokenizer parse_spec uses too) it never judges a body malformed:
# whatever parse_spec would reject it hands back as None, and `canonical`
# then takes the general path, so the error rules live in one place. Tests
# (test_spec.py, "fast path") hold the two paths together.

# Modules whose options `_canon_opt_parts` may respell; other options print as written.
_CANON_MODULES = frozenset(("recent", "mark", "statistic", "conntrack", "state", "tcp", "udp", "sctp"))
_first = itemgetter(0)  # sort key: canonical_of's stable sorts look at the name/rank only


def _canonical_fast(spec: str) -> str | None:
    """`canonical_of(parse_spec(spec))` without building the Spec, or None to take that path."""
    if '"' in spec or "\\" in spec or "\t" in spec:
        toks = tokenize(spec)  # may raise SpecError, exactly as in parse_spec
        q: Callable[[str], str] | None = _quote
    else:
        # No quotes, escapes or tabs: tokens are the blank-separated words, and
        # none of them needs quoting when printed.
        toks = spec.split(" ")
        if "" in toks:
            toks = [t for t in toks if t]
        q = None

    # Read the tokens exactly as parse_spec does (see there for the rules).
    base: list[tuple[str, str, bool]] = []
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
                return None
            neg = True
            i += 1
            continue
        if len(t) < 2 or t[0] != "-" or t[1].isdigit():
            return None  # a value where an option belongs
        t = _BASE_LONG.get(t, t)
        j = i + 1  # the values run to the next option or "!"
        while j < n:
            u = toks[j]
            if u == "!" or (len(u) > 1 and u[0] == "-" and not u[1].isdigit()):
                break
            j += 1
        if (t == "-c" or t == "--set-counters") and target is None and not neg and j == i + 3:
            i = j  # in-rule counters
            continue
        if target is not None:
            target_opts.append((t, toks[i + 1:j], neg))
        elif t == "-m":
            if j == i + 1:
                return None
            matches.append((toks[i + 1], []))
        elif t == "-j" or t == "-g":
            if j != i + 2:
                return None
            target, goto = toks[i + 1], t == "-g"
        elif t in _BASE:
            if j != i + 2:
                return None
            v = toks[i + 1]
            if t == "-p":
                proto = v.lower()
            base.append((t, v, neg))
        elif matches:
            matches[-1][1].append((t, toks[i + 1:j], neg))
        elif proto:
            matches.append((proto, [(t, toks[i + 1:j], neg)]))
        else:
            return None
        neg = False
        i = j
    if neg:
        return None

    # Print them as canonical_of does: base options in _BASE order, each
    # match's options by name, the matches by their text, then the target.
    parts: list[str] = []
    if base:
        ranked: list[tuple[int, str]] = []
        for name, v, negated in base:
            if name == "-s" or name == "-d":
                v = _addr(v)
                if v in _ANY and not negated:
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
                    c = _canon_opt_parts(module, name, vals, negated)
                    if c is None:
                        continue
                    name, vals = c
                texts.append((name, _fmt_parts(name, vals, negated, q)))
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
                canon_t = _canon_target(target, tuple(_new(Opt, (t, tuple(v), ng)) for t, v, ng in target_opts))
                parts += [_fmt(o) for o in canon_t]
            else:
                parts += [_fmt_parts(name, vals, negated, q) for name, vals, negated in target_opts]
    return " ".join(parts)


def _fmt_parts(name: str, vals: Sequence[str], negated: bool, q: Callable[[str], str] | None) -> str:
    """`_fmt` of (name, vals, negated); q is `_quote`, or None when no value needs quoting."""
    s = "! " + name if negated else name
    if q is None:
        return s + " " + " ".join(vals) if vals else s
    return s + "".join([" " + q(v) for v in vals])


@lru_cache(maxsize=1 << 18)
def canonical(spec: str) -> str:
    """The one spelling of a rule body used to compare rules by meaning.

    A body that cannot be tokenized compares by its own text.
    """
    try:
        c = _canonical_fast(spec)
        return canonical_of(parse_spec(spec)) if c is None else c
    except SpecError:
        return spec
