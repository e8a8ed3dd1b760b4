"""An in-memory nft: runs the plain add/flush/delete scripts rulegen writes, lists tables deterministically.

Like knftables' `Fake`, which kube-proxy's own tests use, it keeps each
namespace's tables (`state.TableState`, inside the namespace of a
`kernel.fake.FakeNamespaces`) and applies a script as one transaction: on
the first command the kernel would refuse, nothing changes and the error
names that line, worded as the real client words it. It runs what rulegen's
loader sends too: `create table` (refused when the table exists) and
several elements in one `add element` or `delete element`. It has no raw
netlink (`netlink` is false), so the loader sends it everything as nft
text. The refusals follow
what nf_tables does (checked against the kernel by
tests/dataplane/test_nft_parity.py):

- adding what exists is allowed and changes nothing, except a chain whose
  base-chain type, hook or priority differs, a set or map declared with
  another type or flags, and a map element whose value differs (EEXIST);
- flushing or deleting what does not exist, and a rule, element or map
  value naming a chain or set that does not exist, are refused (ENOENT);
- deleting a chain that is jumped to (from a rule or a map element), or a
  set a rule still uses, is refused (EBUSY); a chain's own rules go with
  it;
- an element's key must have as many parts as its set's type.

`check=True` validates and commits nothing, as `nft -c`. A run that changes
the state bumps the namespace's nf_tables generation once. (The kernel also
bumps it for some runs that change nothing, such as re-adding a set; one
that changes nothing at all, such as re-adding an element, it does not. A
cache that proves freshness by the generation only relies on "unchanged
generation: nothing changed", which holds for both.) Commands the
nftables backend never writes (`flush table`, `insert`, `replace`,
handles) are refused as not modelled, never guessed. `list_table` prints `nft list table` syntax that
`parse.parse_listing` reads: sets and maps, then chains, in the order they
were made, elements sorted.
"""

from __future__ import annotations

from typing import Callable

from ...kernel.fake import FakeNamespaces
from .client import Nft, run_error
from .model import _REFS, ADD, DELETE, FLUSH, Chain, Element, Map, Rule, Set, Table, key_arity
from .parse import NftParseError, command_object, read_command
from .script import split_top
from .state import ChainState, SetState, TableState

_ENOENT = "No such file or directory"
_EEXIST = "File exists"
_EBUSY = "Device or resource busy"


class _Refused(Exception):
    pass


def _copy(st: TableState) -> TableState:
    """A copy whose chains' rule lists and sets' element dicts can change without touching ST (records are immutable)."""
    return TableState(st.family, st.name, st.comment,
                      {n: ChainState(c.decl, list(c.rules)) for n, c in st.chains.items()},
                      {n: SetState(s.decl, dict(s.elements)) for n, s in st.sets.items()})


class FakeNft(Nft):
    """nft in memory over FakeNamespaces; `log` records every call, oldest first."""

    def __init__(self, namespaces: FakeNamespaces | None = None) -> None:
        self.netns = namespaces if namespaces is not None else FakeNamespaces()
        self.log: list[tuple] = []

    def tables(self, name: str) -> dict[tuple[str, str], TableState]:
        """The live tables of namespace NAME by (family, table) (tests read them)."""
        ns = self.netns.get(name)
        got = ns.objects.get("nft")
        if got is None:
            got = ns.objects["nft"] = {}
        return got

    # ------------------------------------------------------------ running

    def run(self, name: str, script: str, check: bool = False) -> None:
        live = self.tables(name)
        self.log.append(("run", name, check, script))
        work: dict[tuple[str, str], TableState] = dict(live)
        copied: set[tuple[str, str]] = set()
        changed = False

        def table(key: tuple[str, str], make: bool = False) -> TableState:
            st = work.get(key)
            if st is None:
                if not make:
                    raise _Refused(_ENOENT)
                st = work[key] = TableState(*key)
                copied.add(key)
            elif key not in copied:
                st = work[key] = _copy(st)
                copied.add(key)
            return st

        for no, raw in enumerate(script.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                create = line.startswith("create table ")
                try:
                    verb, kind, family, tname, rest = read_command("add" + line[6:] if create else line, no)
                except NftParseError:
                    raise _Refused("syntax error, or a command not modelled by the fake nft") from None
                key = (family, tname)
                if kind == "table":
                    if create and key in work:
                        raise _Refused(_EEXIST)
                    changed |= self._table(work, key, verb, rest, table)
                    continue
                st = table(key)

                def is_map(n: str) -> bool:
                    return isinstance(st.sets[n].decl, Map) if n in st.sets else False

                try:
                    objs = [command_object(verb, kind, rest, is_map)]
                    if kind == "element" and "," in rest:  # several elements: nft adds (or deletes) each
                        cname, _, tail = rest.partition(" ")
                        inner = tail.strip()[1:-1]
                        objs = [command_object(verb, kind, f"{cname} {{ {item} }}", is_map)
                                for item in split_top(inner)]
                except ValueError as e:
                    raise _Refused(f"syntax error: {e}") from None
                for obj in objs:
                    changed |= _APPLY[type(obj)](st, verb, obj)
            except _Refused as e:
                raise run_error(script, f"/dev/stdin:{no}:1-{len(line)}: Error: Could not process rule: {e}\n",
                                check) from None
        if check:
            return
        for key in list(live):
            if key not in work:
                del live[key]
        live.update({k: work[k] for k in copied if k in work})
        if changed:
            self.netns.get(name).gen += 1

    @staticmethod
    def _table(work: dict, key: tuple[str, str], verb: str, rest: str,
               table: Callable[..., TableState]) -> bool:
        if verb == FLUSH:
            raise _Refused("flush table is not modelled by the fake nft")
        obj = command_object(verb, "table", rest, lambda n: False)
        if verb == ADD:
            existed = key in work
            st = table(key, make=True)
            if obj.comment is not None and st.comment != obj.comment:
                st.comment = obj.comment
                return True
            return not existed
        table(key)  # ENOENT when missing
        del work[key]
        return True

    # ------------------------------------------------------------ listing

    def list_table(self, name: str, family: str, table: str) -> str | None:
        self.log.append(("list", name, family, table))
        st = self.tables(name).get((family, table))
        return None if st is None else dump_table(st)

    def list_ruleset(self, name: str) -> str:
        self.log.append(("list", name, None, None))
        return "".join(dump_table(st) for st in self.tables(name).values())

    def generation(self, name: str) -> int | None:
        return self.netns.get(name).gen


# ---------------------------------------------------------------- one command on one table


def _chain(st: TableState, verb: str, c: Chain) -> bool:
    old = st.chains.get(c.name)
    if verb == ADD:
        if old is None:
            st.chains[c.name] = ChainState(c)
            return True
        if c.type is not None and (c.type, c.hook, c.priority) != (old.decl.type, old.decl.hook, old.decl.priority):
            raise _Refused(_EEXIST)
        return False
    if old is None:
        raise _Refused(_ENOENT)
    if verb == FLUSH:
        had = bool(old.rules)
        old.rules.clear()
        return had
    if _jumped_to(st, c.name):  # its own rules go with it; a jump into it pins it
        raise _Refused(_EBUSY)
    del st.chains[c.name]
    return True


def _jumped_to(st: TableState, chain: str) -> bool:
    for other in st.chains.values():
        for r in other.rules:
            if ("goto" in r.rule or "jump" in r.rule) and any(t == chain for t, _ in _REFS.findall(r.rule)):
                return True
    for s in st.sets.values():
        for e in s.elements.values():
            if any(v in (f"goto {chain}", f"jump {chain}") for v in e.value):
                return True
    return False


def _rule(st: TableState, verb: str, r: Rule) -> bool:
    if verb != ADD:
        raise _Refused(f"{verb} rule is not modelled by the fake nft (rules are deleted by handle)")
    ch = st.chains.get(r.chain)
    if ch is None:
        raise _Refused(_ENOENT)
    for target, setname in _REFS.findall(r.rule):
        if (target and target not in st.chains) or (setname and setname not in st.sets):
            raise _Refused(_ENOENT)
    ch.rules.append(r)
    return True


def _container(st: TableState, verb: str, s: Set | Map) -> bool:
    old = st.sets.get(s.name)
    if verb == ADD:
        if old is None:
            st.sets[s.name] = SetState(s)
            return True
        d = old.decl
        if type(d) is not type(s) or (d.type, d.flags, d.timeout) != (s.type, s.flags, s.timeout):
            raise _Refused(_EEXIST)
        return False
    if old is None or type(old.decl) is not type(s):
        raise _Refused(_ENOENT)
    if verb == FLUSH:
        had = bool(old.elements)
        old.elements.clear()
        return had
    if any("@" in r.rule and any(name == s.name for _, name in _REFS.findall(r.rule))
           for c in st.chains.values() for r in c.rules):
        raise _Refused(_EBUSY)
    del st.sets[s.name]
    return True


def _element(st: TableState, verb: str, e: Element) -> bool:
    name = e.set or e.map
    s = st.sets.get(name)
    if s is None:
        raise _Refused(_ENOENT)
    if len(e.key) != key_arity(s.decl.type):
        raise _Refused(f"{_ENOENT} (the key has {len(e.key)} part(s), the type {key_arity(s.decl.type)})")
    old = s.elements.get(e.key)
    if verb == DELETE:
        if old is None:
            raise _Refused(_ENOENT)
        del s.elements[e.key]
        return True
    if verb != ADD:
        raise _Refused(f"{verb} element is not modelled by the fake nft")
    for v in e.value:
        if v[:5] in ("goto ", "jump ") and v[5:] not in st.chains:
            raise _Refused(_ENOENT)
    if old is not None:
        if old.value != e.value:
            raise _Refused(_EEXIST)
        return False
    s.elements[e.key] = e
    return True


_APPLY: dict[type, Callable[[TableState, str, object], bool]] = {
    Chain: _chain, Rule: _rule, Set: _container, Map: _container, Element: _element,  # type: ignore[dict-item]
    Table: lambda st, verb, obj: False,
}


# ---------------------------------------------------------------- the dump


def dump_table(st: TableState) -> str:
    """ST as `nft list table` prints a table: sets and maps, then chains, in the order they were made."""
    out = [f"table {st.family} {st.name} {{\n"]
    if st.comment is not None:
        out.append(f'\tcomment "{st.comment}"\n')
    blocks: list[str] = []
    for s in st.sets.values():
        d = s.decl
        kind = "map" if isinstance(d, Map) else "set"
        lines = [f"\t{kind} {d.name} {{\n", f"\t\ttype {d.type}\n"]
        if d.flags:
            lines.append(f"\t\tflags {','.join(d.flags)}\n")
        if d.timeout is not None:
            lines.append(f"\t\ttimeout {d.timeout}s\n")
        if d.comment is not None:
            lines.append(f'\t\tcomment "{d.comment}"\n')
        if s.elements:
            lines.append("\t\telements = { " + ",\n\t\t\t     ".join(sorted(_element_text(e) for e in s.elements.values()))
                         + " }\n")
        lines.append("\t}\n")
        blocks.append("".join(lines))
    for c in st.chains.values():
        d = c.decl
        lines = [f"\tchain {d.name} {{\n"]
        if d.type is not None:
            lines.append(f"\t\ttype {d.type} hook {d.hook} priority {d.priority}; policy accept;\n")
        if d.comment is not None:
            lines.append(f'\t\tcomment "{d.comment}"\n')
        for r in c.rules:
            lines.append(f"\t\t{r.rule}" + (f' comment "{r.comment}"' if r.comment is not None else "") + "\n")
        lines.append("\t}\n")
        blocks.append("".join(lines))
    out.append("\n".join(blocks))
    out.append("}\n")
    return "".join(out)


def _element_text(e: Element) -> str:
    text = " . ".join(e.key)
    if e.comment is not None:
        text += f' comment "{e.comment}"'
    if e.value:
        text += " : " + " . ".join(e.value)
    return text
