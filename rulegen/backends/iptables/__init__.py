"""iptables mode: kube-proxy's iptables-restore payload.

The compiler (`compile`), its incremental form (`incremental`), and the
mode's halves of apply (`apply`: kube-proxy's jump rules and stale chains
over the shared xtables applier), trace (`trace`) and diff (`views`). The
xtables IR, parser, renderer, rule-spec reader and kernel client are not
this mode's alone (IPVS mode writes an iptables payload too): they live in
`rulegen.dataplane.xtables`.
"""

from __future__ import annotations

from typing import Any

from ...dataplane.xtables import parse as xparse
from ...dataplane.xtables import render as xrender
from ...dataplane.xtables.model import Ruleset
from ..base import Backend
from . import compile as compiler


class IptablesBackend(Backend[Ruleset]):
    mode = "iptables"
    output = "iptables-restore payload"
    localhost_nodeports = True

    def compile(self, plan, settings) -> Ruleset:
        return compiler.compile_plan(plan, settings)

    def render(self, ir: Ruleset) -> str:
        return xrender.render(ir)

    def parse(self, text: str, source: str = "<input>", family: int | None = None) -> Ruleset:
        return xparse.parse(text, source, family)

    def counts(self, ir: Ruleset) -> dict[str, dict[str, int]]:
        return {t.name: {"chains": len(t.chains), "rules": len(t.rules)} for t in ir.tables}

    def incremental(self) -> Any:
        from .incremental import Incremental

        return Incremental(self)

    def applier(self) -> Any:
        from .apply import APPLIER

        return APPLIER

    def tracer(self) -> Any:
        from .trace import TRACER

        return TRACER

    def diff_view(self) -> Any:
        from .views import VIEW

        return VIEW

    def node_linter(self) -> Any:
        from .nodelint import NODE_LINTER

        return NODE_LINTER


BACKEND = IptablesBackend()
