"""nftables mode: kube-proxy's `ip kube-proxy` / `ip6 kube-proxy` table, as an `nft -f` script.

The mode's own parts are the compiler (`compile`: plan → `Transaction`, the
v1.36 design of docs/nftables-mode.md), the applier (`apply.py`, which
hands the compiled table to the shared nftables sync,
`dataplane/nft/sync.py`), the tracer (`trace`, over the walk in
`dataplane/nft/walk.py`), the diff view (`views`), reading saved scripts
and listings for both (`dump`), and lint's nftables-only checks (`lint`).
The nftables object model, the script renderer, the script and listing
parsers and the normal form live in `rulegen.dataplane.nft`, beside the
nft client and its fake.
"""

from __future__ import annotations

from typing import Any

from ...dataplane.nft import parse as nparse
from ...dataplane.nft import render as nrender
from ...dataplane.nft.model import Transaction
from ...diagnostics import UsageError
from ..base import Backend
from . import compile as compiler


class NftablesBackend(Backend[Transaction]):
    mode = "nftables"
    output = "nft -f script"
    masquerade_section = "nftables"
    no_endpoint_nodeports_on_every_address = False  # @no-endpoint-nodeports is looked up for @nodeport-ips only

    def nodeport_ips(self, settings, fam):
        # nodePortAddresses defaults to `primary` here, and loopback never takes NodePorts.
        return settings.nft_nodeport_ips(fam)

    def compile(self, plan, settings) -> Transaction:
        return compiler.compile_plan(plan, settings)

    def render(self, ir: Transaction) -> str:
        return nrender.render(ir)

    def parse(self, text: str, source: str = "<input>", family: int | None = None) -> Transaction:
        try:
            return nparse.parse_script(text)
        except (nparse.NftParseError, ValueError) as e:
            raise UsageError(f"{source}: {e}") from None

    def applier(self):
        from .apply import APPLIER

        return APPLIER

    def tracer(self) -> Any:
        from .trace import TRACER

        return TRACER

    def diff_view(self) -> Any:
        from .views import VIEW

        return VIEW

    def lint_checks(self) -> tuple:
        from .lint import CHECKS

        return CHECKS

    def node_linter(self) -> Any:
        from .nodelint import NODE_LINTER

        return NODE_LINTER


BACKEND = NftablesBackend()
