"""nft scripts as table states: play a script fast, write a state back as commands, and diff two states.

The one model of "a table's state" is `state.TableState` (chains with
their `Rule`s in order, sets and maps with their `Element`s by key), the
form the compiler's Transaction replays into, `nft list` output parses
into and the fake nft keeps. This module is the loader's side of it:

- `play` reads script text into the TableState it leaves in a kernel that
  had no such table. It is built for size (a 10k-Service script has 100k
  lines): rules and elements, most of the lines, take a hot path; every
  other command is read by `parse.command_object`. Commands outside the
  model (another table, rule handles and positions, other object kinds,
  properties it does not know, two `add`s of one object with different
  definitions, an element added twice with different values) raise
  `Unsupported`: callers then send the script as it is, which is always
  correct.
- `commands` writes operations (`(verb, record)` pairs, as a Transaction
  holds them) as script lines, with the elements of one set merged into
  fewer commands where asked; `render` writes a whole state.
- `View`s and `diff` turn two states into the operations that take a
  kernel from one to the other in one transaction: the cached view of
  what the last apply loaded against a fresh compile (spellings as
  compiled), or a live table listed by nft against a compile (both in the
  normal form of `state.py`).
- `anon_sets`, `set_refs`, `chain_refs`: what a rule body creates and
  names, for the load plan.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable

from .model import ADD, DELETE, FLUSH, Chain, Element, Map, Rule, Set, Table, _new, parse_priority
from .parse import _QUOTED_TAIL, _props, command_object
from .render import element_item, line
from .state import ChainState, SetState, TableState, canon_atom, canon_rule, canon_value

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
VERBS = frozenset({"add", "create", "insert", "flush", "delete", "destroy"})
KINDS = frozenset({"table", "chain", "rule", "set", "map", "element"})
_CHAIN_PROPS = frozenset({"type", "hook", "priority", "comment"})

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_SET_REF = re.compile(r"@([A-Za-z0-9_./-]+)")
_CHAIN_REF = re.compile(r"\b(?:jump|goto)\s+([A-Za-z0-9_./-]+)")
_ELEM_COMMENT = re.compile(r'\s+comment\s+"([^"]*)"')

Op = tuple  # (verb, record): ("add", Rule(...)), ("delete", Element(...)), ...


class ScriptError(Exception):
    """A line the script model rejects: `line_no` (1-based) and `line` say which."""

    def __init__(self, reason: str, line_no: int = 0, line: str = "") -> None:
        where = f"line {line_no}: " if line_no else ""
        super().__init__(f"{where}{reason}" + (f": {line}" if line else ""))
        self.reason = reason
        self.line_no = line_no
        self.line = line


class Unsupported(ScriptError):
    """Valid nft, perhaps, but outside what the fast paths model: send the script as it is."""


def ref(st: TableState) -> str:
    """`FAMILY NAME`, as every command names the table."""
    return f"{st.family} {st.name}"


def is_base(c: ChainState) -> bool:
    return c.decl.type is not None


# ------------------------------------------------------------------ what a rule creates and names


def unquoted(text: str) -> str:
    """TEXT with every quoted string emptied, so braces and names inside comments do not count."""
    return _QUOTED.sub('""', text) if '"' in text else text


_SET_STMT = re.compile(r"@[A-Za-z0-9_./-]+\s*\{[^{}]*\}")


def anon_sets(body: str) -> int:
    """How many anonymous sets or maps a rule body creates.

    Each `{` outside quotes opens one, except the key of a set statement
    (`update @name { ip saddr }`), which names an existing set.
    """
    u = unquoted(body)
    if "{" not in u:
        return 0
    if "@" in u:
        u = _SET_STMT.sub("", u)
    return u.count("{")


def set_refs(body: str) -> list[str]:
    """Named sets and maps a rule body looks up (`@name`)."""
    return _SET_REF.findall(unquoted(body)) if "@" in body else []


def chain_refs(text: str) -> list[str]:
    """Chains a rule body or an element value jumps or goes to."""
    return _CHAIN_REF.findall(unquoted(text)) if ("jump" in text or "goto" in text) else []


def split_top(inner: str, sep: str = ",") -> list[str]:
    """INNER split at SEP outside quoted strings and nested braces, pieces stripped, empty ones dropped."""
    if '"' not in inner and "{" not in inner:
        return [p.strip() for p in inner.split(sep) if p.strip()]
    out, depth, start, i, n = [], 0, 0, 0, len(inner)
    while i < n:
        c = inner[i]
        if c == '"':
            m = _QUOTED.match(inner, i)
            i = m.end() if m else n
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == sep and depth == 0:
            out.append(inner[start:i])
            start = i + 1
        i += 1
    out.append(inner[start:])
    return [p.strip() for p in out if p.strip()]


def element_parts(text: str) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """`KEY . KEY [comment "C"] [: VALUE]` → (key, value, comment); keys hold IPv6 colons, never " : "."""
    comment = None
    if '"' in text:
        m = _ELEM_COMMENT.search(text)
        if m:
            comment = m.group(1)
            text = text[:m.start()] + text[m.end():]
    key, sep, value = text.partition(" : ")
    if "  " in key or key != key.strip():
        key = " ".join(key.split())
    return (tuple(key.split(" . ")), tuple(" ".join(value.split()).split(" . ")) if sep else (), comment)


# ------------------------------------------------------------------ playing a script


def play(text: str) -> TableState:
    """Play script TEXT into the state it leaves in a kernel that had no such table.

    Raises ScriptError for lines that are not commands at all or that the
    kernel would refuse for want of an object, and Unsupported for
    commands outside the model (see the module's doc).
    """
    st: TableState | None = None
    prefix = ""
    chains: dict[str, ChainState] = {}
    sets: dict[str, SetState] = {}
    for no, line_ in enumerate(text.split("\n"), 1):
        if not line_:
            continue
        if st is not None and line_.startswith("add rule ") and line_.startswith(prefix, 9):
            # The hot path: most lines of a large script are rules or elements.
            name, _, body = line_[9 + len(prefix):].partition(" ")
            c = chains.get(name)
            if c is not None and body and not body.startswith(("handle ", "index ", "position ")):
                comment = None
                if '"' in body:
                    m = _QUOTED_TAIL.match(body)
                    if m is not None:
                        body, comment = m.group(1), m.group(2)
                c.rules.append(_new(Rule, (name, body, comment)))
                continue
        elif st is not None and line_.startswith("add element ") and line_.startswith(prefix, 12):
            name, _, tail = line_[12 + len(prefix):].partition(" ")
            s = sets.get(name)
            if s is not None and tail.startswith("{ ") and tail.endswith(" }"):
                inner = tail[2:-2]
                if "," in inner or '"' in inner or "  " in inner:
                    _add_elements(s, split_top(inner), no, line_)
                    continue
                k, sep, v = inner.partition(" : ")
                key = tuple(k.split(" . "))
                is_map = s.decl.__class__ is Map
                if bool(sep) == is_map and key not in s.elements:  # else the general path says what is wrong
                    s.elements[key] = _new(Element, ("", name, key, tuple(v.split(" . ")), None) if is_map
                                           else (name, "", key, (), None))
                else:
                    _add_elements(s, (inner,), no, line_)
                continue
        elif st is not None and line_.startswith(("add chain ", "flush chain ")) and " " not in line_[-1:] \
                and line_.count(" ") == 4 and line_.startswith(prefix, line_.index(" chain ") + 7):
            # kube-proxy's ensureChain: `add chain T NAME` then `flush chain T NAME`, per chain.
            name = line_[line_.rindex(" ") + 1:]
            c = chains.get(name)
            if line_[0] == "a":
                if c is None:
                    chains[name] = ChainState(_new(Chain, (name, None, None, None, None)))
                continue
            if c is not None:
                c.rules = []
                continue
        line_ = line_.strip()
        if not line_ or line_[0] == "#":
            continue
        if st is None:
            parts = line_.split(None, 4)
            if len(parts) < 4:
                raise ScriptError("not an nft command", no, line_)
            if parts[2] not in FAMILIES:
                raise ScriptError(f"unknown family {parts[2]!r}", no, line_)
            st = TableState(parts[2], parts[3])
            prefix = f"{st.family} {st.name} "
        _general(st, chains, sets, no, line_)
    if st is None:
        raise ScriptError("the script holds no command")
    st.chains, st.sets = chains, sets
    return st


def _add_elements(s: SetState, items: Iterable[str], no: int, line_: str) -> None:
    is_map = isinstance(s.decl, Map)
    name = s.decl.name
    els = s.elements
    for item in items:
        if '"' in item or "  " in item:
            key, value, comment = element_parts(item)
        else:  # the common case, without the general parser's work (40k elements at 10k Services)
            k, sep, v = item.partition(" : ")
            key = tuple(k.split(" . "))
            value = (tuple(v.split(" . ")) if " . " in v else (v,)) if sep else ()
            comment = None
        if bool(value) != is_map:
            raise ScriptError(f"element {item!r} of {name}: {'no value for a map' if is_map else 'a set has no values'}",
                              no, line_)
        old = els.get(key)
        if old is not None:
            if old.value != value or old.comment != comment:
                raise Unsupported(f"element {' . '.join(key)} of {name} added twice with different values", no, line_)
            continue
        els[key] = _new(Element, (("", name) if is_map else (name, "")) + (key, value, comment))


def _general(st: TableState, chains: dict[str, ChainState], sets: dict[str, SetState], no: int, line_: str) -> None:
    """One command of any kind (the slow path of `play`)."""
    parts = line_.split(None, 4)
    if len(parts) < 4:
        raise ScriptError("not an nft command", no, line_)
    verb, kind, family, tname = parts[0], parts[1], parts[2], parts[3]
    rest = parts[4] if len(parts) > 4 else ""
    if verb not in VERBS:
        raise Unsupported(f"command {verb!r} is not modelled", no, line_)
    if kind not in KINDS:
        raise Unsupported(f"object kind {kind!r} is not modelled", no, line_)
    if (family, tname) != (st.family, st.name):
        raise Unsupported("a second table", no, line_)
    if kind == "table":
        if verb not in ("add", "create"):
            raise Unsupported(f"{verb} table is not modelled", no, line_)
        t = _read(ADD, "table", rest, sets, no, line_)
        if t.comment is not None:
            if st.comment is not None and st.comment != t.comment:
                raise Unsupported("table added twice with different definitions", no, line_)
            st.comment = t.comment
        return
    name, _, tail = rest.partition(" ")
    if not name:
        raise ScriptError(f"{kind} without a name", no, line_)
    if kind == "chain":
        if verb in ("add", "create"):
            if tail.strip():
                extra = set(_props_or_error(tail, f"chain {name}", no, line_)) - _CHAIN_PROPS
                if extra:
                    raise Unsupported(f"chain {name}: properties {sorted(extra)} are not modelled", no, line_)
            decl = _read(ADD, "chain", rest, sets, no, line_)
            c = chains.get(name)
            has_props = decl.type is not None or decl.comment is not None
            if c is None:
                chains[name] = ChainState(decl)
            elif verb == "create":
                raise Unsupported(f"chain {name} created twice", no, line_)
            elif has_props and (c.decl.type is not None or c.decl.comment is not None) and c.decl != decl:
                raise Unsupported(f"chain {name} added twice with different definitions", no, line_)
            elif has_props:
                c.decl = decl
        elif verb == "flush":
            c = chains.get(name)
            if c is None:
                raise ScriptError(f"flush of chain {name}, which does not exist", no, line_)
            c.rules = []
        else:  # delete / destroy
            if name not in chains and verb == "delete":
                raise ScriptError(f"delete of chain {name}, which does not exist", no, line_)
            chains.pop(name, None)
    elif kind == "rule":
        if verb not in ("add", "insert"):
            raise Unsupported(f"{verb} rule is not modelled", no, line_)
        c = chains.get(name)
        if c is None:
            raise ScriptError(f"rule for chain {name}, which does not exist", no, line_)
        first = tail.split(" ", 1)[0]
        if first in ("handle", "index", "position"):
            raise Unsupported(f"rule {first} is not modelled", no, line_)
        if not tail.strip():
            raise ScriptError("rule without a body", no, line_)
        r = _read(ADD, "rule", rest, sets, no, line_)
        if verb == "add":
            c.rules.append(r)
        else:
            c.rules.insert(0, r)
    elif kind in ("set", "map"):
        if verb in ("add", "create"):
            decl = _read(ADD, kind, rest, sets, no, line_)
            s = sets.get(name)
            if s is None:
                sets[name] = SetState(decl)
            elif verb == "create" or type(s.decl) is not type(decl) or s.decl != decl:
                raise Unsupported(f"{kind} {name} added twice with different definitions", no, line_)
        elif verb == "flush":
            s = sets.get(name)
            if s is None:
                raise ScriptError(f"flush of {kind} {name}, which does not exist", no, line_)
            s.elements = {}
        else:
            if name not in sets and verb == "delete":
                raise ScriptError(f"delete of {kind} {name}, which does not exist", no, line_)
            sets.pop(name, None)
    else:  # element
        s = sets.get(name)
        if s is None:
            raise ScriptError(f"element for set {name}, which does not exist", no, line_)
        t = tail.strip()
        if not (t.startswith("{") and t.endswith("}")):
            raise ScriptError("expected { ... }", no, line_)
        items = split_top(t[1:-1])
        if verb == "add":
            _add_elements(s, items, no, line_)
        elif verb in ("delete", "destroy"):
            for item in items:
                key = element_parts(item)[0]
                if key not in s.elements and verb == "delete":
                    raise ScriptError(f"delete of element {' . '.join(key)} of {name}, which does not exist",
                                      no, line_)
                s.elements.pop(key, None)
        else:
            raise Unsupported(f"{verb} element is not modelled", no, line_)


def _props_or_error(text: str, what: str, no: int, line_: str) -> dict[str, str]:
    try:
        return _props(text, what)
    except ValueError as e:
        raise ScriptError(str(e), no, line_) from None


def _read(verb: str, kind: str, rest: str, sets: dict[str, SetState], no: int, line_: str):
    """The record of one command (parse.command_object), its complaints as Unsupported."""
    try:
        return command_object(verb, kind, rest, lambda n: n in sets and isinstance(sets[n].decl, Map))
    except ValueError as e:
        raise Unsupported(str(e), no, line_) from None


# ------------------------------------------------------------------ writing


def commands(head: str, ops: Iterable[Op], per_command: int = 1) -> list[str]:
    """OPS as script lines (HEAD: "FAMILY TABLE"); up to PER_COMMAND consecutive elements of one set share a line."""
    out: list[str] = []
    group: list[Element] = []
    gkey: tuple[str, str] | None = None

    def close() -> None:
        if group:
            verb, name = gkey  # type: ignore[misc]
            if verb == DELETE:
                items = ", ".join(" . ".join(e.key) for e in group)
            else:
                items = ", ".join(map(element_item, group))
            out.append(f"{verb} element {head} {name} {{ {items} }}")
            group.clear()

    for verb, obj in ops:
        if per_command > 1 and type(obj) is Element and verb in (ADD, DELETE):
            k = (verb, obj.set or obj.map)
            if k != gkey or len(group) >= per_command:
                close()
                gkey = k
            group.append(obj)
            continue
        close()
        gkey = None
        out.append(line(verb, obj, head))
    close()
    return out


def state_ops(st: TableState) -> list[Op]:
    """The operations that build ST in a kernel without the table: declarations, rules, elements."""
    ops: list[Op] = [(ADD, Table(st.comment))]
    ops += [(ADD, c.decl) for c in st.chains.values()]
    ops += [(ADD, s.decl) for s in st.sets.values()]
    for c in st.chains.values():
        ops += [(ADD, r) for r in c.rules]
    for s in st.sets.values():
        ops += [(ADD, e) for e in s.elements.values()]
    return ops


def render(st: TableState, per_command: int = 1) -> str:
    """A script that builds ST in a kernel without the table, in dependency order."""
    return "".join(c + "\n" for c in commands(ref(st), state_ops(st), per_command))


# ------------------------------------------------------------------ views and differences

_EMPTY = ""  # the digest of a chain without rules


@dataclass
class View:
    """What a diff compares of one table, in one spelling.

    `chains`: name → (declaration, digest of the rules in order, "" for
    none); `sets`: name → (declaration, {key: (value, comment)}), dynamic
    sets without their elements (the kernel's run-time entries); `keys`:
    per set, the key as the kernel holds it for each key of the view, when
    the view's spelling is not the kernel's (a normal form).
    """

    comment: str | None
    chains: dict[str, tuple[tuple, str]]
    sets: dict[str, tuple[tuple, dict[tuple, tuple]]]
    keys: dict[str, dict[tuple, tuple]] = field(default_factory=dict)


def _digest(rules: Iterable[tuple[str, str | None]]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for body, comment in rules:
        h.update(body.encode())
        h.update(b"\0" if comment is None else b"\1" + comment.encode())
        h.update(b"\n")
    return h.hexdigest()


def chain_decl(c: Chain) -> tuple:
    prio = parse_priority(c.priority) if c.priority is not None else None
    return (c.type, c.hook, prio, c.comment)


def set_decl(s: Set | Map) -> tuple:
    return ("map" if isinstance(s, Map) else "set", " ".join(s.type.split()), tuple(sorted(s.flags)), s.timeout,
            s.comment)


def view(st: TableState) -> View:
    """ST in the spelling it was written in (a compile's): what the apply cache keeps."""
    chains = {name: (chain_decl(c.decl), _digest((r.rule, r.comment) for r in c.rules) if c.rules else _EMPTY)
              for name, c in st.chains.items()}
    sets = {}
    for name, s in st.sets.items():
        decl = set_decl(s.decl)
        els = {} if "dynamic" in decl[2] else {k: (e.value, e.comment) for k, e in s.elements.items()}
        sets[name] = (decl, els)
    return View(st.comment, chains, sets)


def normal_view(st: TableState) -> View:
    """ST in the normal form of `state.normalise`, so a compile and an `nft list` compare by meaning."""
    chains = {name: (chain_decl(c.decl), _digest((canon_rule(r.rule), r.comment) for r in c.rules)
                     if c.rules else _EMPTY) for name, c in st.chains.items()}
    sets: dict[str, tuple[tuple, dict[tuple, tuple]]] = {}
    keys: dict[str, dict[tuple, tuple]] = {}
    for name, s in st.sets.items():
        decl = set_decl(s.decl)
        els: dict[tuple, tuple] = {}
        raw: dict[tuple, tuple] = {}
        if "dynamic" not in decl[2]:
            for k, e in s.elements.items():
                ck = tuple(canon_atom(p) for p in k)
                els[ck] = (tuple(canon_value(v) for v in e.value), e.comment)
                raw[ck] = k
        sets[name] = (decl, els)
        keys[name] = raw
    return View(st.comment, chains, sets, keys)


def diff(old: View, new: View, want: TableState) -> list[Op]:
    """The operations that take a kernel holding OLD to NEW (WANT, in its own spelling) in one transaction.

    In order: new chains; flushes of the chains to rewrite (changed, or
    naming a set that is made again) and of stale ones; sets whose
    declaration changed deleted and made again, new sets; the rewritten
    chains' rules; element deletions (gone, or with another value), then
    additions; last, stale sets, then stale chains, once nothing that is
    left points at them (every rule of theirs flushed, every element naming
    them deleted). A base chain whose hook, type or priority changed is
    deleted and made again (nothing jumps to a base chain). Raises
    Unsupported for what one transaction of differences cannot do in
    place: a changed table comment, or a regular chain whose comment
    changed (rules and map elements may name it).
    """
    if old.comment != new.comment and new.comment is not None:
        raise Unsupported("the table's comment changed")
    ops: list[Op] = []
    rewrite: list[str] = []
    remade: list[str] = []
    for name, (decl, dig) in new.chains.items():
        o = old.chains.get(name)
        if o is None:
            ops.append((ADD, want.chains[name].decl))
            if dig != _EMPTY:
                rewrite.append(name)
        elif o[0] != decl:
            if decl[0] is None or o[0][0] is None:
                raise Unsupported(f"the declaration of chain {name} changed")
            remade.append(name)
        elif o[1] != dig:
            rewrite.append(name)
    changed_sets = [name for name, (decl, _) in new.sets.items() if name in old.sets and old.sets[name][0] != decl]
    if changed_sets:
        # A set is deleted only when no rule names it: rewrite every chain that does.
        names = set(changed_sets)
        have = set(rewrite) | set(remade)
        for name, c in want.chains.items():
            if name not in have and name in old.chains and any(n in names for r in c.rules for n in set_refs(r.rule)):
                rewrite.append(name)
    flush = [n for n in rewrite if n in old.chains and old.chains[n][1] != _EMPTY]
    gone_chains = [n for n in old.chains if n not in new.chains]
    flush += [n for n in gone_chains if old.chains[n][1] != _EMPTY]
    ops += [(FLUSH, Chain(n)) for n in flush]
    for name in remade:
        ops += [(DELETE, Chain(name)), (ADD, want.chains[name].decl)]
    for name in changed_sets:
        decl = want.sets[name].decl
        ops += [(DELETE, type(decl)(name)), (ADD, decl)]
    for name in new.sets:
        if name not in old.sets:
            ops.append((ADD, want.sets[name].decl))
    for name in rewrite + remade:
        ops += [(ADD, r) for r in want.chains[name].rules]
    adds: list[Op] = []
    for name, (decl, els) in new.sets.items():
        ws = want.sets[name]
        o = old.sets.get(name)
        if o is None or name in changed_sets:
            adds += [(ADD, e) for e in ws.elements.values()] if "dynamic" not in decl[2] else []
            continue
        oels = o[1]
        if oels == els:
            continue
        raw = old.keys.get(name)
        wraw = new.keys.get(name)
        is_map = decl[0] == "map"
        for k, v in oels.items():
            if els.get(k) != v:
                key = raw[k] if raw else k
                ops.append((DELETE, Element("", name, key) if is_map else Element(name, "", key)))
        for k, v in els.items():
            if oels.get(k) != v:
                adds.append((ADD, ws.elements[wraw[k] if wraw else k]))
    ops += adds
    for name in old.sets:
        if name not in new.sets:
            ops.append((DELETE, (Map if old.sets[name][0][0] == "map" else Set)(name)))
    ops += [(DELETE, Chain(n)) for n in gone_chains]
    return ops
