"""iptables IR → iptables-restore text (the payload kube-proxy writes).

Declarations are `:NAME - [0:0]`, rules `-A CHAIN SPEC`, each line ending in
a newline; `-X NAME` lines (partial sync) follow the rules. The table layout
comes from `templates/iptables-restore.j2`; lines are joined here.
"""

from __future__ import annotations

from ...templating import render as render_template
from .ir import Ruleset, Table


def _section(t: Table) -> dict[str, str]:
    decl = "".join([f":{name} {policy} [0:0]\n" for name, policy in t.policies])
    if t.chains:
        decl += ":" + " - [0:0]\n:".join(t.chains) + " - [0:0]\n"  # one C-level join for ~150k names
    lines = [f"-A {c} {s}\n" if s else f"-A {c}\n" for c, s in t.rules]
    lines.extend(f"-X {c}\n" for c in t.deletes)
    return {"name": t.name, "declarations": decl, "rules": "".join(lines)}


def render(rs: Ruleset) -> str:
    return render_template("iptables-restore.j2", tables=[_section(t) for t in rs.tables])
