"""IPVS mode: kube-proxy's IPVS virtual servers, KUBE-* ipsets, kube-ipvs0 addresses and iptables glue.

The IR (`ir.IPVSState`), the compiler, the three-part renderer and its
parser are this mode's, and so is the applier (`apply`: kube-ipvs0, ipsets,
IPVS over netlink, then the glue); the glue's xtables IR, renderer, parser
and applier are the shared ones in `rulegen.dataplane.xtables`. The tracer
(`trace`) walks the glue with the shared xtables walk and IPVS's scheduling
as a step of it; the diff view (`views`) lays the state out as virtual
servers, sets and chains; `lint` holds the pitfalls only IPVS mode has;
`lab` gives the lab's probes the tracer's expectations.
"""

from __future__ import annotations

from typing import Any

from ..base import Backend
from . import compile as compiler
from . import parse as iparse
from . import render as irender
from .ir import IPVSState


class IPVSBackend(Backend[IPVSState]):
    mode = "ipvs"
    output = "ipvsadm, ipset and iptables-restore texts"
    writes_files = True
    reads_scheduler = True

    def compile(self, plan, settings) -> IPVSState:
        return compiler.compile_plan(plan, settings)

    def render(self, ir: IPVSState) -> str:
        return irender.render(ir)

    def render_files(self, ir: IPVSState) -> dict[str, str]:
        return irender.files(ir)

    def parse(self, text: str, source: str = "<input>", family: int | None = None) -> IPVSState:
        return iparse.parse(text, source, family)

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

    def lab_probes(self, compiled: Any, probes: list[Any], requests: int, notes: list[str]) -> list[Any]:
        from .lab import lab_probes

        return lab_probes(compiled, probes, requests, notes)

    def lint_checks(self) -> tuple[Any, ...]:
        from .lint import CHECKS

        return CHECKS


BACKEND = IPVSBackend()
