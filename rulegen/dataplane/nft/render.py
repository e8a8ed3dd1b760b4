"""nftables IR → `nft -f` text: one plain command per operation, as knftables writes a transaction.

Every line is `VERB OBJECT FAMILY TABLE NAME ...`; `add` of a table, chain,
set or map carries its properties in `{ ... ; }` (base chains with numeric
priorities, as knftables writes them so that older nft accepts them in every
hook), `add rule` ends with `comment "..."` when the rule has one, and
`add element` writes `{ KEY . KEY comment "..." : VALUE }`. No `table { }`
blocks: the text is a transaction, not a listing. Lines are joined a few
thousand at a time so a large cluster's script is never a list of a million
strings.
"""

from __future__ import annotations

from .model import ADD, Chain, Element, Map, Rule, Set, Table, Transaction, parse_priority

CHUNK = 2048


def _table(verb: str, t: Table, head: str) -> str:
    if verb == ADD and t.comment is not None:
        return f'{verb} table {head} {{ comment "{t.comment}" ; }}\n'
    return f"{verb} table {head}\n"


def _chain(verb: str, c: Chain, head: str) -> str:
    if verb != ADD or (c.type is None and c.comment is None):
        return f"{verb} chain {head} {c.name}\n"
    props = ""
    if c.type is not None:
        props = f" type {c.type} hook {c.hook} priority {parse_priority(c.priority)} ;"
    if c.comment is not None:
        props += f' comment "{c.comment}" ;'
    return f"{verb} chain {head} {c.name} {{{props} }}\n"


def _rule(verb: str, r: Rule, head: str) -> str:
    if r.comment is None:
        return f"{verb} rule {head} {r.chain} {r.rule}\n"
    return f'{verb} rule {head} {r.chain} {r.rule} comment "{r.comment}"\n'


def _container(kind: str):
    def write(verb: str, s, head: str) -> str:
        if verb != ADD:
            return f"{verb} {kind} {head} {s.name}\n"
        props = f" type {s.type} ;"
        if s.flags:
            props += f" flags {','.join(s.flags)} ;"
        if s.timeout is not None:
            props += f" timeout {s.timeout}s ;"
        if s.comment is not None:
            props += f' comment "{s.comment}" ;'
        return f"{verb} {kind} {head} {s.name} {{{props} }}\n"
    return write


def _element(verb: str, e: Element, head: str) -> str:
    key = " . ".join(e.key)
    if verb != ADD:
        return f"{verb} element {head} {e.set or e.map} {{ {key} }}\n"
    c = f' comment "{e.comment}"' if e.comment is not None else ""
    v = f" : {' . '.join(e.value)}" if e.value else ""
    return f"{verb} element {head} {e.set or e.map} {{ {key}{c}{v} }}\n"


_WRITE = {Table: _table, Chain: _chain, Rule: _rule, Set: _container("set"), Map: _container("map"), Element: _element}


def line(verb: str, obj: tuple, head: str) -> str:
    """One operation's command, without its newline; HEAD is "FAMILY TABLE"."""
    return _WRITE[type(obj)](verb, obj, head)[:-1]


def element_item(e: Element) -> str:
    """An element as it stands between `{ }`: `KEY . KEY [comment "C"] [: VALUE]`."""
    c = f' comment "{e.comment}"' if e.comment is not None else ""
    v = f" : {' . '.join(e.value)}" if e.value else ""
    return f"{' . '.join(e.key)}{c}{v}"


def lines(tx: Transaction) -> list[str]:
    """Each operation's line (with its newline), in order."""
    head = f"{tx.family} {tx.table}"
    W = _WRITE
    return [W[type(o)](v, o, head) for v, o in tx.ops]


def render(tx: Transaction) -> str:
    head = f"{tx.family} {tx.table}"
    W = _WRITE
    ops = tx.ops
    rule_t, elem_t = Rule, Element
    pieces = []
    for i in range(0, len(ops), CHUNK):
        out = []
        for v, o in ops[i:i + CHUNK]:
            t = type(o)
            # The two commonest operations are written inline (a 10k-Service script has ~200k).
            if t is elem_t and v == ADD:
                c = f' comment "{o.comment}"' if o.comment is not None else ""
                val = f" : {' . '.join(o.value)}" if o.value else ""
                out.append(f"add element {head} {o.set or o.map} {{ {' . '.join(o.key)}{c}{val} }}\n")
            elif t is rule_t and o.comment is None:
                out.append(f"{v} rule {head} {o.chain} {o.rule}\n")
            else:
                out.append(W[t](v, o, head))
        pieces.append("".join(out))
    return "".join(pieces)
