"""The nftables IR: typed records for one table's objects, and a Transaction of operations on them.

Modelled on knftables (sigs.k8s.io/knftables), which kube-proxy's nftables
proxier uses: a `Table`, `Chain` (regular, or base with type/hook/priority),
`Rule` (chain + rule text + comment), `Set` and `Map` (type, flags, timeout,
comment) and `Element` (key, map value, comment). A `Transaction` is a list
of `add` / `flush` / `delete` operations on those records for one table
(`ip kube-proxy` or `ip6 kube-proxy`), validated as each is queued: a rule
for a chain that is not declared, a `goto` to one, an element for a set that
does not exist, a key of the wrong arity, a comment that could break out of
its quotes — each is an `NftError` at once, naming the object. `render.py`
writes the transaction as `nft -f` text, line for line as knftables writes
it; `state.py` replays it into the table state it leaves behind.

Rule bodies stay strings, as in knftables; the records around them are
immutable tuples so a compile of 10,000 Services builds them cheaply.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

FAMILIES = ("ip", "ip6")

# knftables' limits (types.go): names up to 256 characters, comments up to 128.
NAME_LENGTH_MAX = 256
COMMENT_LENGTH_MAX = 128

# The named base-chain priorities of the ip and ip6 families, as knftables'
# ParsePriority resolves them (and as `nft list` prints them back).
NAMED_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}

CHAIN_TYPES = ("filter", "nat", "route")
HOOKS = ("prerouting", "input", "forward", "output", "postrouting", "ingress")

ADD, FLUSH, DELETE = "add", "flush", "delete"


class NftError(ValueError):
    """An operation that knftables (or nft) would refuse, found when it is queued."""


class Table(NamedTuple):
    comment: str | None = None


class Chain(NamedTuple):
    """A chain; a base chain when `type`, `hook` and `priority` are set (all three or none)."""

    name: str
    type: str | None = None
    hook: str | None = None
    priority: str | None = None  # "dstnat-10", "srcnat", "0", ... as knftables' BaseChainPriority
    comment: str | None = None


class Rule(NamedTuple):
    chain: str
    rule: str
    comment: str | None = None


class Set(NamedTuple):
    name: str
    type: str = ""  # needed for add; flush and delete name the set only
    flags: tuple[str, ...] = ()
    timeout: int | None = None  # seconds
    comment: str | None = None


class Map(NamedTuple):
    name: str
    type: str = ""  # "KEY . KEY : VALUE"; needed for add
    flags: tuple[str, ...] = ()
    timeout: int | None = None
    comment: str | None = None


class Element(NamedTuple):
    """One element of a set (`set` named) or of a map (`map` named, `value` given)."""

    set: str = ""
    map: str = ""
    key: tuple[str, ...] = ()
    value: tuple[str, ...] = ()
    comment: str | None = None


_new = tuple.__new__  # bypasses NamedTuple's Python-level __new__ in the compiler's hot loop

# ------------------------------------------------------------------ quoting


def check_comment(comment: str) -> str:
    """A comment that can be written between double quotes as knftables writes it.

    knftables quotes comments with Go's %q and nft reads a quoted string up
    to the next `"` with no escapes, so the only safe comments are printable
    ASCII without `"` and `\\`, and at most 128 characters (nft's own limit).
    This is the one place a comment is checked: the compiler truncates
    kube-proxy's element comments to 128 before they get here.
    """
    if len(comment) > COMMENT_LENGTH_MAX:
        raise NftError(f"comment {comment[:40]!r}...: longer than {COMMENT_LENGTH_MAX} characters")
    if not _COMMENT_OK.match(comment):
        raise NftError(f"comment {comment!r}: only printable ASCII without '\"' or '\\' can be quoted")
    return comment


_COMMENT_OK = re.compile(r'[ !#-\[\]-~]*\Z')
_NAME_OK = re.compile(r"[A-Za-z_.][A-Za-z0-9_./-]*\Z")
_TYPE_OK = re.compile(r"[a-z0-9_ .:]+\Z")
_BAD_PART = re.compile(r'[\s{},"\';#@]')
_FLAGS = frozenset(("constant", "dynamic", "interval", "timeout"))

# A rule's references: `goto X` / `jump X` (also inside a vmap) and `@SET`.
_REFS = re.compile(r"\b(?:goto|jump) ([^ ,}]+)|@([^ ,}]+)")


def truncate_comment(comment: str) -> str:
    """kube-proxy's truncateNFTablesComment: at most 128 characters."""
    return comment[:COMMENT_LENGTH_MAX]


def parse_priority(priority: str) -> int:
    """knftables' ParsePriority for the ip/ip6 families: "dstnat-10" → -110, "5" → 5."""
    try:
        return int(priority)
    except ValueError:
        pass
    base, mod = priority, 0
    for i, ch in enumerate(priority):
        if ch in "+-":
            base = priority[:i]
            try:
                mod = int(priority[i:])
            except ValueError:
                raise NftError(f"priority {priority!r}: cannot parse {priority[i:]!r}") from None
            break
    if base not in NAMED_PRIORITIES:
        raise NftError(f"priority {priority!r}: unknown")
    return NAMED_PRIORITIES[base] + mod


@lru_cache(maxsize=256)
def key_arity(type_: str) -> int:
    """Number of parts of a set's (or map's) key: `ipv4_addr . inet_proto . inet_service` → 3."""
    key = type_.split(":", 1)[0]
    return key.count(" . ") + 1


# ------------------------------------------------------------------ the transaction


class Transaction:
    """Operations on one table, in order, each validated when it is queued.

    `ops` holds (verb, record) pairs; the Transaction also keeps what the
    operations so far declare (chains, sets, maps), because an operation that
    refers to an object the table would not have at that point is refused,
    as nft would refuse it when the script runs.
    """

    __slots__ = ("family", "table", "ops", "_table_added", "_chains", "_sets", "_maps")

    def __init__(self, family: str = "ip", table: str = "kube-proxy"):
        if family not in FAMILIES:
            raise NftError(f"family {family!r}: not one of {', '.join(FAMILIES)}")
        if not _NAME_OK.match(table):
            raise NftError(f"table name {table!r}: not an nftables name")
        self.family = family
        self.table = table
        self.ops: list[tuple[str, tuple]] = []
        self._table_added = False
        self._chains: dict[str, Chain] = {}
        self._sets: dict[str, Set] = {}
        self._maps: dict[str, Map] = {}

    # --- the verbs

    def add(self, obj: tuple) -> None:
        _CHECK[type(obj)](self, ADD, obj)
        self.ops.append((ADD, obj))

    def flush(self, obj: tuple) -> None:
        _CHECK[type(obj)](self, FLUSH, obj)
        self.ops.append((FLUSH, obj))

    def delete(self, obj: tuple) -> None:
        _CHECK[type(obj)](self, DELETE, obj)
        self.ops.append((DELETE, obj))

    # --- hot paths for the compiler: the same checks, without building a record first

    def add_rule(self, chain: str, rule: str, comment: str | None = None) -> None:
        if chain not in self._chains:
            raise NftError(f"rule {rule!r}: chain {chain!r} is not declared")
        if comment is not None:
            check_comment(comment)
        self._check_rule_text(chain, rule)
        self.ops.append((ADD, _new(Rule, (chain, rule, comment))))

    def add_chain(self, name: str) -> None:
        """`add chain` + `flush chain` of a regular chain: kube-proxy's ensureChain."""
        if not self._table_added:
            self._need_table(f"add chain {name}")
        if len(name) > NAME_LENGTH_MAX or not _NAME_OK.match(name):
            _check_name("chain", name)
        c = self._chains.get(name)
        if c is None:
            c = self._chains[name] = _new(Chain, (name, None, None, None, None))
        self.ops += ((ADD, c), (FLUSH, c))

    def add_element(self, container: str, key: tuple[str, ...], value: tuple[str, ...] = (),
                    comment: str | None = None) -> None:
        m = self._maps.get(container)
        if m is not None:
            self._check_element_parts(container, key, value, comment, key_arity(m.type), True)
            self.ops.append((ADD, _new(Element, ("", container, key, value, comment))))
            return
        s = self._sets.get(container)
        if s is None:
            raise NftError(f"element {key}: no set or map {container!r}")
        self._check_element_parts(container, key, value, comment, key_arity(s.type), False)
        self.ops.append((ADD, _new(Element, (container, "", key, value, comment))))

    def add_elements(self, container: str, elements: list[tuple[tuple[str, ...], tuple[str, ...], str | None]]) -> None:
        """Queue `add element` for (key, value, comment) triples of one set or map."""
        ops = self.ops
        m = self._maps.get(container)
        if m is not None:
            arity = key_arity(m.type)
            for key, value, comment in elements:
                self._check_element_parts(container, key, value, comment, arity, True)
                ops.append((ADD, _new(Element, ("", container, key, value, comment))))
            return
        s = self._sets.get(container)
        if s is None:
            raise NftError(f"element {elements[0][0] if elements else ()}: no set or map {container!r}")
        arity = key_arity(s.type)
        for key, value, comment in elements:
            self._check_element_parts(container, key, value, comment, arity, False)
            ops.append((ADD, _new(Element, (container, "", key, value, comment))))

    # --- what is declared

    def chains(self) -> dict[str, Chain]:
        return dict(self._chains)

    def sets(self) -> dict[str, Set]:
        return dict(self._sets)

    def maps(self) -> dict[str, Map]:
        return dict(self._maps)

    def has_map(self, name: str) -> bool:
        return name in self._maps

    def __len__(self) -> int:
        return len(self.ops)

    # --- checks

    def _need_table(self, what: str) -> None:
        if not self._table_added:
            raise NftError(f"{what}: table {self.family} {self.table} is not added first")

    def _check_table(self, verb: str, t: Table) -> None:
        if verb == FLUSH:
            raise NftError("flush table: not used here (it would empty every chain, set and map)")
        if t.comment is not None:
            check_comment(t.comment)
        if verb == ADD:
            self._table_added = True
        else:
            self._table_added = False
            self._chains.clear()
            self._sets.clear()
            self._maps.clear()

    def _check_chain(self, verb: str, c: Chain) -> None:
        self._need_table(f"{verb} chain {c.name}")
        _check_name("chain", c.name)
        base = (c.type, c.hook, c.priority)
        if any(x is not None for x in base):
            if verb != ADD:
                raise NftError(f"{verb} chain {c.name}: type, hook and priority only go with add")
            if None in base:
                raise NftError(f"base chain {c.name}: needs type, hook and priority together")
            if c.type not in CHAIN_TYPES:
                raise NftError(f"base chain {c.name}: type {c.type!r} is not one of {', '.join(CHAIN_TYPES)}")
            if c.hook not in HOOKS:
                raise NftError(f"base chain {c.name}: hook {c.hook!r} is not one of {', '.join(HOOKS)}")
            parse_priority(c.priority)
        if c.comment is not None:
            if verb != ADD:
                raise NftError(f"{verb} chain {c.name}: a comment only goes with add")
            check_comment(c.comment)
        if verb == ADD:
            old = self._chains.get(c.name)
            if old is not None and c.type is not None and old.type is not None and old[1:4] != c[1:4]:
                raise NftError(f"chain {c.name}: already declared as {old.type} {old.hook} {old.priority}")
            if old is None or c.type is not None:
                self._chains[c.name] = c
        elif c.name not in self._chains:
            raise NftError(f"{verb} chain {c.name}: no such chain")
        elif verb == DELETE:
            del self._chains[c.name]

    def _check_rule(self, verb: str, r: Rule) -> None:
        if verb != ADD:
            raise NftError(f"{verb} rule in {r.chain}: rules are only added here (knftables deletes them by handle)")
        if r.chain not in self._chains:
            raise NftError(f"rule {r.rule!r}: chain {r.chain!r} is not declared")
        if r.comment is not None:
            check_comment(r.comment)
        self._check_rule_text(r.chain, r.rule)

    def _check_rule_text(self, chain: str, rule: str) -> None:
        if not rule or "\n" in rule or "\r" in rule or '"' in rule or ";" in rule or "#" in rule:
            raise NftError(f"rule in {chain}: {rule!r} is empty or holds a newline, quote, ';' or '#'")
        if "goto" in rule or "jump" in rule or "@" in rule:
            for target, setname in _REFS.findall(rule):
                if target and target not in self._chains:
                    raise NftError(f"rule in {chain}: {rule!r} goes to undeclared chain {target!r}")
                if setname and setname not in self._sets and setname not in self._maps:
                    raise NftError(f"rule in {chain}: {rule!r} uses undeclared set {setname!r}")

    def _check_set(self, verb: str, s: Set) -> None:
        self._check_container(verb, s, self._sets, self._maps, "set")
        if verb == ADD and ":" in s.type:
            raise NftError(f"set {s.name}: type {s.type!r} has a map value (use a Map)")

    def _check_map(self, verb: str, m: Map) -> None:
        self._check_container(verb, m, self._maps, self._sets, "map")
        if verb == ADD and ":" not in m.type:
            raise NftError(f"map {m.name}: type {m.type!r} has no value type")

    def _check_container(self, verb, obj, mine: dict, other: dict, kind: str) -> None:
        self._need_table(f"{verb} {kind} {obj.name}")
        _check_name(kind, obj.name)
        if verb == ADD:
            if not obj.type or not _TYPE_OK.match(obj.type):
                raise NftError(f"{kind} {obj.name}: type {obj.type!r} is not an nftables type")
            bad = [f for f in obj.flags if f not in _FLAGS]
            if bad:
                raise NftError(f"{kind} {obj.name}: unknown flags {bad}")
            if obj.timeout is not None and (obj.timeout <= 0 or "timeout" not in obj.flags):
                raise NftError(f"{kind} {obj.name}: a timeout needs the timeout flag and a positive value")
            if obj.comment is not None:
                check_comment(obj.comment)
            if obj.name in other:
                raise NftError(f"{kind} {obj.name}: the name is already a {'map' if kind == 'set' else 'set'}")
            old = mine.get(obj.name)
            if old is not None and (old.type, old.flags, old.timeout) != (obj.type, obj.flags, obj.timeout):
                raise NftError(f"{kind} {obj.name}: already declared with type {old.type!r} flags {old.flags}")
            mine.setdefault(obj.name, obj)
        else:
            if obj.name not in mine:
                raise NftError(f"{verb} {kind} {obj.name}: no such {kind}")
            if verb == DELETE:
                del mine[obj.name]

    def _check_element(self, verb: str, e: Element) -> None:
        if verb == FLUSH:
            raise NftError("flush element: flush the set or map instead")
        if bool(e.set) == bool(e.map):
            raise NftError(f"element {e.key}: names {'both a set and a map' if e.set else 'no set or map'}")
        if e.map:
            m = self._maps.get(e.map)
            if m is None:
                raise NftError(f"element {e.key}: no map {e.map!r}")
            arity, is_map, name = key_arity(m.type), True, e.map
        else:
            s = self._sets.get(e.set)
            if s is None:
                raise NftError(f"element {e.key}: no set {e.set!r}")
            arity, is_map, name = key_arity(s.type), False, e.set
        if verb == DELETE:
            if len(e.key) != arity or e.comment is not None:
                raise NftError(f"delete element {e.key} of {name}: needs the whole key and nothing else")
            return
        self._check_element_parts(name, e.key, e.value, e.comment, arity, is_map)

    def _check_element_parts(self, name, key, value, comment, arity: int, is_map: bool) -> None:
        if len(key) != arity:
            raise NftError(f"element {key} of {name}: the key has {len(key)} part(s), the type {arity}")
        if "" in key or _BAD_PART.search("\0".join(key)):
            raise NftError(f"element {key} of {name}: {' . '.join(key)!r} is not a key")
        if is_map:
            if not value:
                raise NftError(f"element {key} of map {name}: no value")
            for v in value:
                if v[:5] in ("goto ", "jump "):
                    if v[5:] not in self._chains:
                        raise NftError(f"element {key} of map {name}: {v!r} goes to an undeclared chain")
                elif v not in ("drop", "accept", "return", "continue") and (" " in v or not v):
                    raise NftError(f"element {key} of map {name}: {v!r} is not a map value")
        elif value:
            raise NftError(f"element {key} of set {name}: a set element has no value")
        if comment is not None:
            check_comment(comment)


def _check_name(kind: str, name: str) -> None:
    if not name or len(name) > NAME_LENGTH_MAX or not _NAME_OK.match(name):
        raise NftError(f"{kind} name {name!r}: not an nftables name (letters, digits, '_./-', at most {NAME_LENGTH_MAX})")


_CHECK = {
    Table: Transaction._check_table,
    Chain: Transaction._check_chain,
    Rule: Transaction._check_rule,
    Set: Transaction._check_set,
    Map: Transaction._check_map,
    Element: Transaction._check_element,
}
