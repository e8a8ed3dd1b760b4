"""iptables IR → iptables-restore text (the payload kube-proxy writes).

Declarations are `:NAME - [0:0]`, rules `-A CHAIN SPEC`, each line ending in
a newline; `-X NAME` lines (partial sync) follow the rules. The table layout
comes from `templates/iptables-restore.j2`; lines are joined here.

Rules are joined a few thousand at a time and the template joins the
pieces: each piece's line strings are freed while still in cache, so a
10k-Service payload (~550k lines) never holds every line as its own string.
"""

from __future__ import annotations

from ...templating import render as render_template
from .model import Rule, Ruleset, Table

CHUNK = 2048  # rules per piece: ~250 KiB of line strings, which stay in the CPU's L2 cache


def rule_pieces(rules: tuple[Rule, ...] | list[Rule]) -> list[str]:
    """The `-A` lines of RULES, as consecutive pieces of at most CHUNK lines each."""
    return ["".join([f"-A {c} {s}\n" if s else f"-A {c}\n" for c, s in rules[i:i + CHUNK]])
            for i in range(0, len(rules), CHUNK)]


def _section(t: Table) -> dict[str, object]:
    decl = "".join([f":{name} {policy} [0:0]\n" for name, policy in t.policies])
    if t.chains:
        decl += ":" + " - [0:0]\n:".join(t.chains) + " - [0:0]\n"  # one C-level join for ~150k names
    pieces = rule_pieces(t.rules)
    if t.deletes:
        pieces.append("".join([f"-X {c}\n" for c in t.deletes]))
    return {"name": t.name, "declarations": decl, "pieces": pieces}


def render(rs: Ruleset) -> str:
    return render_template("iptables-restore.j2", tables=[_section(t) for t in rs.tables])
