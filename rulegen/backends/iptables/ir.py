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
