"""The iptables IR: tables of declared chains and rules, as iptables-restore sees them.

A `Ruleset` is what one `iptables-restore --noflush` payload holds (or what
one `iptables-save` dump shows). Rule bodies stay strings: the arguments
after `-A CHAIN`, single-space separated, exactly as kube-proxy writes them.
The compiler produces this IR; `render` writes it as text; `parse` reads
rulegen's own output or a live node's `iptables-save` back into it, so diff,
apply and trace all work on the same records.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import blake2b
from typing import NamedTuple

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}


class Rule(NamedTuple):
    """One `-A CHAIN SPEC` line; `spec` is everything after the chain name."""

    chain: str
    spec: str

    def line(self) -> str:
        return f"-A {self.chain} {self.spec}" if self.spec else f"-A {self.chain}"


@dataclass(frozen=True, slots=True)
class Table:
    """One `*table` section.

    `chains` are the declared (user) chains in declaration order; `rules` are
    in write order, which for one chain is its rule order. `policies` holds
    built-in chains seen in a dump (`:INPUT ACCEPT`), `deletes` the chains a
    partial sync removes with `-X` after the rules.
    """

    name: str
    chains: tuple[str, ...]
    rules: tuple[Rule, ...]
    policies: tuple[tuple[str, str], ...] = ()
    deletes: tuple[str, ...] = ()

    def by_chain(self) -> dict[str, list[str]]:
        """Rule specs per chain, declared chains first (empty ones included)."""
        out: dict[str, list[str]] = {name: [] for name, _ in self.policies}
        for c in self.chains:
            out.setdefault(c, [])
        for r in self.rules:
            out.setdefault(r.chain, []).append(r.spec)
        return out


@dataclass(frozen=True, slots=True)
class Ruleset:
    """A whole payload: tables in write order, for one IP family (4 or 6)."""

    family: int
    tables: tuple[Table, ...]

    def table(self, name: str) -> Table | None:
        for t in self.tables:
            if t.name == name:
                return t
        return None


class LocalMatch(NamedTuple):
    """kube-proxy's local-traffic detector as xtables matches ("" and "" when there is none)."""

    if_local: str  # `-s CIDR` / `-i IFACE`
    if_not_local: str  # `! -s CIDR` / `! -i IFACE`

    @property
    def implemented(self) -> bool:
        return bool(self.if_local)


def local_match(cidr: str, iface: str) -> LocalMatch:
    """The matches for a detector of pod CIDR CIDR, or else of interface (or `prefix+`) IFACE."""
    if cidr:
        return LocalMatch(f"-s {cidr}", f"! -s {cidr}")
    if iface:
        return LocalMatch(f"-i {iface}", f"! -i {iface}")
    return LocalMatch("", "")


def chain_digest(specs) -> str:
    """The hash by which apply and its caches know a chain's rules (12-byte BLAKE2b of the specs)."""
    return blake2b("\n".join(specs).encode(), digest_size=12).hexdigest()


class TableView:
    """What apply needs of one wanted table: declared chains, a hash per chain, rules on demand.

    This one wraps a whole `Table`; `backends.iptables.incremental` has one
    that knows most chains by hash alone and compiles the rest only when asked.
    """

    def __init__(self, table: Table):
        self.name = table.name
        self.chains = table.chains
        self._table = table
        self._by: dict[str, list[str]] | None = None
        self._digests: dict[str, str] | None = None

    def _by_chain(self) -> dict[str, list[str]]:
        if self._by is None:
            self._by = self._table.by_chain()
        return self._by

    def digests(self) -> dict[str, str]:
        if self._digests is None:
            by = self._by_chain()
            self._digests = {c: chain_digest(by.get(c, ())) for c in self.chains}
        return self._digests

    def specs(self, chain: str) -> list[str]:
        return self._by_chain().get(chain, [])

    def rules_of(self, chains: list[str]) -> list[Rule]:
        """The rules of CHAINS, to send: in write order when they are many, else chain by chain."""
        if len(chains) * 8 > len(self.chains):
            want = set(chains)
            return [r for r in self._table.rules if r.chain in want]
        by = self._by_chain()
        return [Rule(c, s) for c in chains for s in by.get(c, ())]


def views(ruleset: Ruleset) -> list[TableView]:
    return [TableView(t) for t in ruleset.tables]
