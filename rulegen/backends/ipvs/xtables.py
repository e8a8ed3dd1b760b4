"""The xtables pieces IPVS mode shares with iptables mode, imported in this one place.

kube-proxy's IPVS mode still writes an iptables-restore payload (the "glue":
masquerade marks, ipset matches, filters). It is built on the same xtables
IR (`Ruleset`/`Table`/`Rule`), rendered and parsed by the same code as
iptables mode's payload, so there is one copy of xtables rendering. Until
those pieces move to a neutral package, they live in the iptables backend;
every IPVS module imports them from here, so that move is a change of these
import lines only.
"""

from __future__ import annotations

from ..iptables.ir import Rule, Ruleset, Table
from ..iptables.parse import ParseError as XtablesParseError
from ..iptables.parse import parse as parse_xtables
from ..iptables.render import render as render_xtables
from ..iptables.spec import canonical as canonical_rule

__all__ = ["Rule", "Ruleset", "Table", "XtablesParseError", "parse_xtables", "render_xtables", "canonical_rule"]
