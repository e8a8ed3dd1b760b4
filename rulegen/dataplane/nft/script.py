"""nft scripts as data: read one into the table state it leaves, write states and differences back.

A script here is what knftables sends and what rulegen's nftables mode
writes: one command per line, `add|create|insert|flush|delete` of a
`table|chain|rule|set|map|element`, all in one table, no `{ }` blocks of
several objects. `parse` plays the script the way nft would into a `Table`
(chains with their rules in order, sets and maps with their elements), so
two scripts can be compared and a loader can send the same end state in
another order. What the model does not cover (another table, rule handles
and positions, other object kinds, two `add`s of one object with different
definitions, an element added twice with different values) raises
`Unsupported`: callers then fall back to sending the script as it is,
which is always correct. `diff` turns two states into the commands that
take a kernel from one to the other in one transaction; `parse_listing`
reads `nft list table` output into a form where two listings compare equal
exactly when the kernel holds the same objects (object order ignored, rule
order kept, element order ignored).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

VERBS = frozenset({"add", "create", "insert", "flush", "delete", "destroy"})
KINDS = frozenset({"table", "chain", "rule", "set", "map", "element"})

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_SET_REF = re.compile(r"@([A-Za-z0-9_./-]+)")
_CHAIN_REF = re.compile(r"\b(?:jump|goto)\s+([A-Za-z0-9_./-]+)")

# An element: (value or None for a set, comment text without its quotes or None).
Element = tuple  # (str | None, str | None)


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


@dataclass
class Chain:
    name: str
    spec: str | None = None  # "{ type nat hook prerouting priority -100 ; }" for a base chain, or a comment block
    rules: list[str] = field(default_factory=list)

    @property
    def base(self) -> bool:
        return self.spec is not None and " hook " in self.spec


@dataclass
class NSet:
    name: str
    kind: str  # "set" or "map"
    spec: str
    items: dict[str, None] = field(default_factory=dict)  # elements as written, in order

    def keys(self) -> dict[str, str]:
        """Each element's key → the item that holds it."""
        return {parse_element(i)[0]: i for i in self.items}


@dataclass
class Table:
    family: str
    name: str
    spec: str | None = None
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, NSet] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.family} {self.name}"


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


def parse_element(text: str) -> tuple[str, Element]:
    """`KEY [comment "C"] [: VALUE]` → (KEY with single spaces, (VALUE, C))."""
    comment = None
    if '"' in text:
        m = re.search(r'\s+comment\s+("(?:[^"\\]|\\.)*")', text)
        if m:
            comment = m.group(1)[1:-1]
            text = text[:m.start()] + text[m.end():]
    key, sep, value = text.partition(" : ")  # keys hold IPv6 colons, never " : "
    return " ".join(key.split()), ((" ".join(value.split()) or None) if sep else None, comment)


def render_element(key: str, elem: Element) -> str:
    value, comment = elem
    return key + (f' comment "{comment}"' if comment is not None else "") + (f" : {value}" if value is not None else "")


def _braced(text: str, line_no: int, line: str) -> str:
    t = text.strip()
    if not (t.startswith("{") and t.endswith("}")):
        raise ScriptError("expected { ... }", line_no, line)
    return t[1:-1]


def parse(text: str) -> Table:
    """Play script TEXT into the state it leaves in a kernel that had no such table.

    Raises ScriptError for lines that are not commands at all and
    Unsupported for commands outside the model (see the module's doc).
    Elements are kept as written (`NSet.items`); two spellings of one
    element are two items, and an element added twice with different
    values is left for the kernel to refuse, as it refuses it in the script.
    """
    lines = text.split("\n")
    table: Table | None = None
    prefix = ""
    chains: dict[str, Chain] = {}
    sets: dict[str, NSet] = {}
    for no, line in enumerate(lines, 1):
        if not line:
            continue
        if table is not None and line.startswith("add rule ") and line.startswith(prefix, 9):
            # The hot path: most lines of a large script are rules or elements.
            name, _, body = line[9 + len(prefix):].partition(" ")
            c = chains.get(name)
            if c is None or not body or body.startswith(("handle ", "index ", "position ")):
                _general(table, chains, sets, no, line.strip())
            else:
                c.rules.append(body)
            continue
        if table is not None and line.startswith("add element ") and line.startswith(prefix, 12):
            name, _, tail = line[12 + len(prefix):].partition(" ")
            s = sets.get(name)
            if s is None or not (tail.startswith("{ ") and tail.endswith(" }")):
                _general(table, chains, sets, no, line.strip())
                continue
            inner = tail[2:-2]
            if "," in inner or '"' in inner or "  " in inner:
                for item in split_top(inner):
                    s.items[_norm_item(item)] = None
            else:
                s.items[inner] = None
            continue
        line = line.strip()
        if not line or line[0] == "#":
            continue
        if table is None:
            parts = line.split(None, 4)
            if len(parts) < 4:
                raise ScriptError("not an nft command", no, line)
            if parts[2] not in ("ip", "ip6", "inet", "arp", "bridge", "netdev"):
                raise ScriptError(f"unknown family {parts[2]!r}", no, line)
            table = Table(parts[2], parts[3])
            prefix = f"{table.family} {table.name} "
        _general(table, chains, sets, no, line)
    if table is None:
        raise ScriptError("the script holds no command")
    table.chains, table.sets = chains, sets
    return table


def _norm_item(item: str) -> str:
    return item if "  " not in item else " ".join(item.split()) if '"' not in item else item


def _general(table: Table, chains: dict[str, Chain], sets: dict[str, "NSet"], no: int, line: str) -> None:
    """One command of any kind (the slow path of `parse`)."""
    parts = line.split(None, 4)
    if len(parts) < 4:
        raise ScriptError("not an nft command", no, line)
    verb, kind, family, tname = parts[0], parts[1], parts[2], parts[3]
    rest = parts[4] if len(parts) > 4 else ""
    if verb not in VERBS:
        raise Unsupported(f"command {verb!r} is not modelled", no, line)
    if kind not in KINDS:
        raise Unsupported(f"object kind {kind!r} is not modelled", no, line)
    if (family, tname) != (table.family, table.name):
        raise Unsupported("a second table", no, line)
    if kind == "table":
        if verb not in ("add", "create"):
            raise Unsupported(f"{verb} table is not modelled", no, line)
        spec = rest or None
        if table.spec is not None and spec is not None and spec != table.spec:
            raise Unsupported("table added twice with different definitions", no, line)
        table.spec = spec or table.spec
        return
    name, _, tail = rest.partition(" ")
    if not name:
        raise ScriptError(f"{kind} without a name", no, line)
    tail = tail.strip()
    if kind == "chain":
        if verb in ("add", "create"):
            c = chains.get(name)
            spec = tail or None
            if c is None:
                chains[name] = Chain(name, spec)
            elif verb == "create":
                raise Unsupported(f"chain {name} created twice", no, line)
            elif spec is not None and c.spec is not None and spec != c.spec:
                raise Unsupported(f"chain {name} added twice with different definitions", no, line)
            elif spec is not None:
                c.spec = spec
        elif verb == "flush":
            c = chains.get(name)
            if c is None:
                raise ScriptError(f"flush of chain {name}, which does not exist", no, line)
            c.rules = []
        else:  # delete / destroy
            if name not in chains and verb == "delete":
                raise ScriptError(f"delete of chain {name}, which does not exist", no, line)
            chains.pop(name, None)
    elif kind == "rule":
        if verb not in ("add", "insert"):
            raise Unsupported(f"{verb} rule is not modelled", no, line)
        c = chains.get(name)
        if c is None:
            raise ScriptError(f"rule for chain {name}, which does not exist", no, line)
        first = tail.split(" ", 1)[0]
        if first in ("handle", "index", "position"):
            raise Unsupported(f"rule {first} is not modelled", no, line)
        if not tail:
            raise ScriptError("rule without a body", no, line)
        if verb == "add":
            c.rules.append(tail)
        else:
            c.rules.insert(0, tail)
    elif kind in ("set", "map"):
        if verb in ("add", "create"):
            s = sets.get(name)
            if s is None:
                sets[name] = NSet(name, kind, tail)
            elif verb == "create" or s.kind != kind or (tail and tail != s.spec):
                raise Unsupported(f"{kind} {name} added twice with different definitions", no, line)
        elif verb == "flush":
            s = sets.get(name)
            if s is None:
                raise ScriptError(f"flush of {kind} {name}, which does not exist", no, line)
            s.items = {}
        else:
            if name not in sets and verb == "delete":
                raise ScriptError(f"delete of {kind} {name}, which does not exist", no, line)
            sets.pop(name, None)
    else:  # element
        s = sets.get(name)
        if s is None:
            raise ScriptError(f"element for set {name}, which does not exist", no, line)
        items = [_norm_item(i) for i in split_top(_braced(tail, no, line))]
        if verb == "add":
            for item in items:
                s.items[item] = None
        elif verb in ("delete", "destroy"):
            keys = s.keys()
            for item in items:
                key = parse_element(item)[0]
                if key not in keys and verb == "delete":
                    raise ScriptError(f"delete of element {key} of {name}, which does not exist", no, line)
                old = keys.pop(key, None)
                if old is not None:
                    del s.items[old]
        else:
            raise Unsupported(f"{verb} element is not modelled", no, line)


# ------------------------------------------------------------------ writing


def chain_cmd(t: Table, c: Chain) -> str:
    return f"add chain {t.ref} {c.name}" + (f" {c.spec}" if c.spec else "")


def set_cmd(t: Table, s: NSet) -> str:
    return f"add {s.kind} {t.ref} {s.name} {s.spec}".rstrip()


def element_cmds(t: Table, s: NSet, items, verb: str = "add", per_command: int = 1) -> list[str]:
    """`VERB element` commands for ITEMS of S (element texts; keys for a delete), PER_COMMAND a command."""
    head = f"{verb} element {t.ref} {s.name} {{ "
    items = list(items)
    if per_command <= 1:
        return [head + it + " }" for it in items]
    return [head + ", ".join(items[i:i + per_command]) + " }" for i in range(0, len(items), per_command)]


def render(t: Table) -> str:
    """A script that builds state T in a kernel without the table, in dependency order."""
    out = [f"add table {t.ref}" + (f" {t.spec}" if t.spec else "")]
    out += [chain_cmd(t, c) for c in t.chains.values()]
    out += [set_cmd(t, s) for s in t.sets.values()]
    for c in t.chains.values():
        out += [f"add rule {t.ref} {c.name} {r}" for r in c.rules]
    for s in t.sets.values():
        out += element_cmds(t, s, s.items)
    return "\n".join(out) + "\n"


def diff(old: Table, new: Table) -> list[str]:
    """Commands that take a kernel holding OLD to NEW in one transaction (empty when equal).

    Changed chains are flushed and written again whole; elements are deleted
    and added one by one (an element written differently is a delete of its
    key, then an add); chains and sets that are gone are deleted at the
    end, after every rule and element that could point at them has been
    flushed or deleted. A changed definition of a table, chain or set
    raises Unsupported.
    """
    if (old.family, old.name) != (new.family, new.name):
        raise Unsupported("the two scripts are for different tables")
    if old.spec != new.spec and new.spec is not None:
        raise Unsupported("the table's definition changed")
    t = new
    out: list[str] = []
    for name, c in new.chains.items():
        o = old.chains.get(name)
        if o is None:
            out.append(chain_cmd(t, c))
        elif o.spec != c.spec:
            raise Unsupported(f"the definition of chain {name} changed")
    for name, s in new.sets.items():
        o = old.sets.get(name)
        if o is None:
            out.append(set_cmd(t, s))
        elif o.spec != s.spec or o.kind != s.kind:
            raise Unsupported(f"the definition of {s.kind} {name} changed")
    for name, c in new.chains.items():
        o = old.chains.get(name)
        if o is not None and o.rules == c.rules:
            continue
        if o is not None and o.rules:
            out.append(f"flush chain {t.ref} {name}")
        out += [f"add rule {t.ref} {name} {r}" for r in c.rules]
    for name, c in old.chains.items():
        if name not in new.chains and c.rules:
            out.append(f"flush chain {t.ref} {name}")
    for name, s in new.sets.items():
        o = old.sets.get(name)
        if o is None:
            out += element_cmds(t, s, s.items)
            continue
        if o.items == s.items:
            continue
        gone = [i for i in o.items if i not in s.items]
        added = [i for i in s.items if i not in o.items]
        if gone:
            out += element_cmds(t, s, (parse_element(i)[0] for i in gone), "delete")
        if added:
            out += element_cmds(t, s, added)
    for name, s in old.sets.items():
        if name not in new.sets:
            out.append(f"delete {s.kind} {t.ref} {name}")
    for name in old.chains:
        if name not in new.chains:
            out.append(f"delete chain {t.ref} {name}")
    return out


# ------------------------------------------------------------------ listings


def parse_listing(text: str) -> dict[tuple[str, str], tuple]:
    """`nft list table` output → {(kind, name): contents}, equal exactly when the objects are.

    A chain's contents are its header lines and its rules in order; a set's
    or map's are its property lines and its elements as a sorted tuple; the
    table's own properties are under ("table", name).
    """
    lines = [ln.strip() for ln in text.splitlines()]
    out: dict[tuple[str, str], tuple] = {}
    i, n = 0, len(lines)
    table_props: list[str] = []
    tname = ""
    while i < n:
        ln = lines[i]
        i += 1
        if not ln:
            continue
        if ln.startswith("table "):
            tname = ln[len("table "):-1].strip()
            continue
        if ln == "}":
            continue
        head = ln.split(" ", 2)
        if head[0] in ("chain", "set", "map") and ln.endswith("{"):
            kind, name = head[0], head[1]
            body: list[str] = []
            elements: list[str] = []
            while i < n and lines[i] != "}":
                cur = lines[i]
                i += 1
                if kind != "chain" and cur.startswith("elements = {"):
                    pieces = [cur[len("elements = {"):]]
                    depth = 1 + _depth(pieces[0])
                    while depth > 0 and i < n:
                        pieces.append(lines[i])
                        depth += _depth(lines[i])
                        i += 1
                    elements += split_top(" ".join(pieces).rstrip()[:-1])
                elif cur:
                    body.append(cur)
            i += 1
            if kind == "chain":
                out[(kind, name)] = (tuple(b for b in body if _is_chain_header(b)),
                                     tuple(b for b in body if not _is_chain_header(b)))
            else:
                out[(kind, name)] = (tuple(body), tuple(sorted(" ".join(e.split()) for e in elements)))
            continue
        table_props.append(ln)
    out[("table", tname)] = tuple(table_props)
    return out


def _depth(text: str) -> int:
    """Braces opened minus braces closed in TEXT, outside quoted strings."""
    u = unquoted(text)
    return u.count("{") - u.count("}")


def _is_chain_header(line: str) -> bool:
    return line.startswith(("type ", "comment ", "policy ")) and (line.endswith(";") or line.startswith("comment "))
