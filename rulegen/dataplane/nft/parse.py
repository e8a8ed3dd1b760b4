"""Text → nftables state: rulegen's own `nft -f` script, or what `nft list table` prints.

Two syntaxes describe the same table. A script is a transaction: plain
`add` / `flush` / `delete` commands, one per line, as knftables writes them
(`render.py`); it is read back into a `Transaction` (every operation checked
as it is queued) and replayed into the `TableState` it leaves. A listing
(`nft list table ip kube-proxy`, `nft list ruleset`) is the kernel's state
printed as `table ip kube-proxy { ... }` blocks: sets and maps with
`elements = { ... }` (wrapped over lines), chains with
`type nat hook prerouting priority dstnat; policy accept;`, rules one per
line. It is read straight into `TableState`s. `state.normalise` then gives
both one spelling. `read_state` tells the two apart by their first command.

Errors are `NftParseError`s naming the line; nothing is guessed.
"""

from __future__ import annotations

import re
from typing import Callable

from .model import ADD, DELETE, FLUSH, Chain, Element, Map, NftError, Rule, Set, Table, Transaction
from .state import ChainState, SetState, TableState, replay


class NftParseError(ValueError):
    """Text that is neither rulegen's script syntax nor nft's listing syntax, with its line number."""


_QUOTED_TAIL = re.compile(r'^(.*?) comment "([^"]*)"$')
_CMD = re.compile(r"(add|flush|delete) (table|chain|rule|set|map|element) (ip6?|inet|arp|bridge|netdev) (\S+)(?: (.*))?\Z")


# ------------------------------------------------------------------ scripts


def parse_script(text: str) -> Transaction:
    """rulegen's (knftables') command syntax → the Transaction, each operation checked as it is queued."""
    tx: Transaction | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        verb, kind, family, table, rest = read_command(line, lineno)
        if tx is None:
            try:
                tx = Transaction(family, table)
            except NftError as e:
                raise NftParseError(f"line {lineno}: {e}") from None
        elif (family, table) != (tx.family, tx.table):
            raise NftParseError(f"line {lineno}: table {family} {table}, but the script is for {tx.family} {tx.table}")
        try:
            obj = command_object(verb, kind, rest, tx.has_map)
            {ADD: tx.add, FLUSH: tx.flush, DELETE: tx.delete}[verb](obj)
        except (NftError, ValueError) as e:
            raise NftParseError(f"line {lineno}: {e}") from None
    if tx is None:
        raise NftParseError("no commands")
    return tx


def _props(text: str, what: str) -> dict[str, str]:
    """`{ type x ; flags a,b ; comment "c" ; }` → {"type": "x", ...}."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError(f"{what}: expected {{ ... }}, found {text[:60]!r}")
    out: dict[str, str] = {}
    for part in _split_outside_quotes(text[1:-1], ";"):
        part = part.strip()
        if not part:
            continue
        word, _, value = part.partition(" ")
        if word == "type" and " hook " in value:  # base chain: type T hook H priority P
            m = re.fullmatch(r"(\S+) hook (\S+) priority (\S+)", value)
            if m is None:
                raise ValueError(f"{what}: cannot read {part!r}")
            out["type"], out["hook"], out["priority"] = m.groups()
            continue
        if word == "priority" or word == "hook":
            raise ValueError(f"{what}: {word} without type")
        out[word] = value
    return out


def _unquote(value: str, what: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise ValueError(f"{what}: comment {value!r} is not quoted")
    return value[1:-1]


def read_command(line: str, lineno: int) -> tuple[str, str, str, str, str]:
    """One command line → (verb, kind, family, table, the rest); NftParseError when it is not one."""
    m = _CMD.match(line)
    if m is None:
        raise NftParseError(f"line {lineno}: not an add/flush/delete command: {line[:80]!r}")
    return m.group(1), m.group(2), m.group(3), m.group(4), m.group(5) or ""


def command_object(verb: str, kind: str, rest: str, is_map: Callable[[str], bool]):
    """The record a command names (ValueError when its text cannot be read); IS_MAP tells map elements apart."""
    if kind == "table":
        if rest:
            props = _props(rest, "table")
            return Table(_unquote(props["comment"], "table") if "comment" in props else None)
        return Table()
    if kind == "chain":
        name, _, tail = rest.partition(" ")
        if not tail:
            return Chain(name)
        p = _props(tail, f"chain {name}")
        comment = _unquote(p["comment"], f"chain {name}") if "comment" in p else None
        return Chain(name, p.get("type"), p.get("hook"), p.get("priority"), comment)
    if kind == "rule":
        chain, _, body = rest.partition(" ")
        comment = None
        m = _QUOTED_TAIL.match(body)
        if m is not None:
            body, comment = m.group(1), m.group(2)
        return Rule(chain, body, comment)
    if kind in ("set", "map"):
        name, _, tail = rest.partition(" ")
        cls = Set if kind == "set" else Map
        if not tail:
            if verb == ADD:
                raise ValueError(f"add {kind} {name}: no type")
            return cls(name, "")
        p = _props(tail, f"{kind} {name}")
        unknown = set(p) - {"type", "flags", "timeout", "comment"}
        if unknown:
            raise ValueError(f"{kind} {name}: properties {sorted(unknown)} are not read")
        timeout = None
        if "timeout" in p:
            timeout = parse_duration(p["timeout"])
        flags = tuple(p["flags"].replace(" ", "").split(",")) if "flags" in p else ()
        comment = _unquote(p["comment"], f"{kind} {name}") if "comment" in p else None
        return cls(name, p.get("type", ""), flags, timeout, comment)
    # element: NAME { KEY [comment "C"] [: VALUE] }
    name, _, tail = rest.partition(" ")
    tail = tail.strip()
    if not (tail.startswith("{") and tail.endswith("}")):
        raise ValueError(f"element of {name}: expected {{ ... }}")
    key, value, comment = _element_parts(tail[1:-1].strip())
    if is_map(name):
        return Element("", name, key, value, comment)
    return Element(name, "", key, value, comment)


def _element_parts(text: str) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """`K . K comment "C" : V` → (key, value, comment). Comments may hold ':' and '.'."""
    comment = None
    m = re.search(r' comment "([^"]*)"', text)
    if m is not None:
        comment = m.group(1)
        text = text[:m.start()] + text[m.end():]
    key, sep, value = text.partition(" : ")
    key_t = tuple(k.strip() for k in key.split(" . "))
    value_t = tuple(v.strip() for v in value.split(" . ")) if sep else ()
    return key_t, value_t, comment


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """TEXT split at SEP outside double-quoted strings (nft's quotes have no escapes)."""
    if '"' not in text:
        return text.split(sep)
    out, start, i, n = [], 0, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = text.find('"', i + 1)
            i = n if j < 0 else j + 1
            continue
        if ch == sep:
            out.append(text[start:i])
            start = i + 1
            i += 1
            continue
        # jump to the next separator or quote
        nxt = [k for k in (text.find(sep, i), text.find('"', i)) if k >= 0]
        i = min(nxt) if nxt else n
    out.append(text[start:])
    return out


_DURATION = re.compile(r"(\d+)(ms|d|h|m|s)")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}


def parse_duration(text: str) -> int:
    """nft durations: `10800s`, `3h`, `1h30m`, `2d3h` → whole seconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"timeout {text!r}: not a duration")
    return int(total)


# ------------------------------------------------------------------ listings


def parse_listing(text: str) -> list[TableState]:
    """`nft list table` / `nft list ruleset` output → one TableState per table."""
    lines = [ln.rstrip() for ln in text.splitlines()]
    tables: list[TableState] = []
    i = 0
    n = len(lines)
    while i < n:
        line = _strip_handle(lines[i].strip())
        i += 1
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"table (\S+) (\S+) \{", line)
        if m is None:
            raise NftParseError(f"line {i}: expected 'table FAMILY NAME {{', found {line[:80]!r}")
        st = TableState(m.group(1), m.group(2))
        i = _table_body(lines, i, st)
        tables.append(st)
    return tables


def _strip_handle(line: str) -> str:
    """`nft -a` appends `# handle N` to objects and rules; it is not part of the state."""
    k = line.rfind(" # handle ")
    return line[:k] if k != -1 and '"' not in line[k:] else line


def _table_body(lines: list[str], i: int, st: TableState) -> int:
    n = len(lines)
    while i < n:
        line = _strip_handle(lines[i].strip())
        i += 1
        if not line:
            continue
        if line == "}":
            return i
        m = re.fullmatch(r'comment "([^"]*)"', line)
        if m:
            st.comment = m.group(1)
            continue
        m = re.fullmatch(r"(set|map|chain) (\S+) \{", line)
        if m is None:
            raise NftParseError(f"line {i}: expected a set, map or chain of table {st.family} {st.name}, "
                                f"found {line[:80]!r}")
        kind, name = m.groups()
        if kind == "chain":
            i = _chain_body(lines, i, st, name)
        else:
            i = _set_body(lines, i, st, kind, name)
    raise NftParseError(f"table {st.family} {st.name}: no closing '}}'")


def _chain_body(lines: list[str], i: int, st: TableState, name: str) -> int:
    type_ = hook = prio = comment = None
    rules: list[Rule] = []
    n = len(lines)
    while i < n:
        line = _strip_handle(lines[i].strip())
        i += 1
        if not line:
            continue
        if line == "}":
            st.chains[name] = ChainState(Chain(name, type_, hook, prio, comment), rules)
            return i
        if line.startswith("type ") and not rules:
            m = re.fullmatch(r"type (\S+) hook (\S+)(?: device \S+)? priority ([^;]+);(?: policy (\S+);)?", line)
            if m is None:
                raise NftParseError(f"line {i}: chain {name}: cannot read {line!r}")
            type_, hook = m.group(1), m.group(2)
            prio = m.group(3).replace(" ", "")
            if m.group(4) not in (None, "accept"):
                raise NftParseError(f"line {i}: chain {name}: policy {m.group(4)} is not kube-proxy's")
            continue
        m = re.fullmatch(r'comment "([^"]*)"', line)
        if m and not rules:
            comment = m.group(1)
            continue
        body, rcomment = line, None
        m = _QUOTED_TAIL.match(line)
        if m is not None:
            body, rcomment = m.group(1), m.group(2)
        rules.append(Rule(name, body, rcomment))
    raise NftParseError(f"chain {name}: no closing '}}'")


def gather_elements(lines: list[str], i: int, line: str, what: str,
                    error: type[Exception]) -> tuple[list[str], int]:
    """The elements of a listing's `elements = {` LINE, which goes on from LINES[I]: (elements, next index).

    A large set is listed over tens of thousands of lines: they are gathered
    once, tracking quotes line by line (a comment may hold '}' or ',').
    """
    n = len(lines)
    parts = [line[len("elements = {"):]]
    quoted = parts[0].count('"') % 2 == 1
    while quoted or not parts[-1].rstrip().endswith("}"):
        if i >= n:
            raise error(f"{what}: elements without a closing '}}'")
        parts.append(lines[i].strip())
        quoted ^= parts[-1].count('"') % 2 == 1
        i += 1
    buf = " ".join(parts).rstrip()[:-1]
    if '"' in buf:
        return [e.strip() for e in _split_outside_quotes(buf, ",") if e.strip()], i
    return [e.strip() for e in buf.split(",") if e.strip()], i


def _set_body(lines: list[str], i: int, st: TableState, kind: str, name: str) -> int:
    props: dict[str, str] = {}
    elements: list[str] = []
    n = len(lines)
    while i < n:
        line = lines[i].strip()
        i += 1
        if not line:
            continue
        if line == "}":
            break
        if line.startswith("elements = {"):
            elements, i = gather_elements(lines, i, line, f"{kind} {name}", NftParseError)
            continue
        word, _, value = line.partition(" ")
        props[word] = value
    else:
        raise NftParseError(f"{kind} {name}: no closing '}}'")
    flags = tuple(props["flags"].replace(" ", "").split(",")) if "flags" in props else ()
    timeout = parse_duration(props["timeout"]) if "timeout" in props else None
    comment = None
    if "comment" in props:
        m = re.fullmatch(r'"([^"]*)"', props["comment"])
        if m is None:
            raise NftParseError(f"{kind} {name}: cannot read comment {props['comment']!r}")
        comment = m.group(1)
    if "type" not in props:
        raise NftParseError(f"{kind} {name}: no type (typeof is not kube-proxy's)")
    decl = (Set if kind == "set" else Map)(name, props["type"], flags, timeout, comment)
    s = SetState(decl)
    for text in elements:
        key, value, ecomment = _element_parts(_drop_element_timers(text))
        if kind == "map" and not value:
            raise NftParseError(f"map {name}: element {text!r} has no value")
        e = Element("", name, key, value, ecomment) if kind == "map" else Element(name, "", key, (), ecomment)
        s.elements[key] = e
    st.sets[name] = s
    return i


def _drop_element_timers(text: str) -> str:
    """Dynamic set entries carry `timeout 3h expires 2h59m`: run-time state, not part of the key."""
    return re.sub(r" (?:timeout|expires) \S+", "", text)


# ------------------------------------------------------------------ either


def read_state(text: str, family: str | None = None, table: str = "kube-proxy") -> TableState:
    """The state TEXT describes, script or listing; for a listing, the table FAMILY TABLE (or the only one)."""
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
    if first.startswith("table "):
        tables = parse_listing(text)
        want = [t for t in tables if t.name == table and (family is None or t.family == family)]
        if len(want) != 1:
            seen = ", ".join(f"{t.family} {t.name}" for t in tables) or "none"
            raise NftParseError(f"no single table {family or '*'} {table} in the listing (tables: {seen})")
        return want[0]
    tx = parse_script(text)
    if family is not None and tx.family != family:
        raise NftParseError(f"the script is for table {tx.family} {tx.table}, not {family} {table}")
    return replay(tx)
