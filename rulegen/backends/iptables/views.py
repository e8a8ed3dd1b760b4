"""iptables mode's diff view: its payload and a node's iptables-save as sides of `rulegen.diff`.

The layout (tables of ordered chains, canonical rule spelling, kube-only
narrowing) is the shared xtables one (`dataplane/xtables/views.py`); what
is this mode's own is where its texts come from (a saved file, or the
namespace's `iptables-save`) and what kube-proxy installs outside the
payload: the jump rules from the built-in chains (`compile.jump_rules`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...dataplane.xtables import views as xviews
from ...dataplane.xtables.model import Ruleset
from ...dataplane.xtables.parse import parse, read_ruleset
from ...diff import Side
from ...settings import Settings
from .compile import jump_rules

if TYPE_CHECKING:
    from ...apply.kernel import Kernel


class IptablesView:
    def read(self, path: str, ip_family: str | None) -> tuple[Ruleset, str]:
        return read_ruleset(path, ip_family)

    def live(self, kernel: Kernel, netns: str, family: int) -> tuple[Ruleset, str]:
        name = f"netns {netns} ({'ip6tables' if family == 6 else 'iptables'}-save)"
        return parse(kernel.xtables.save(netns, family), name, family), name

    def side(self, ir: Ruleset, name: str, kube_only: bool) -> Side:
        return xviews.side(ir, name, kube_only)

    def outside_rules(self, ir: Ruleset) -> tuple[int, int]:
        """(rules in the built-in chains that are not kube-proxy's jumps, chains that are not kube-proxy's)."""
        return xviews.outside_rules(ir)

    def has_outside(self, ir: Ruleset) -> bool:
        return xviews.has_kube_jumps(ir)

    def with_outside(self, ir: Ruleset, settings: Settings) -> Ruleset:
        return xviews.with_jumps(ir, jump_rules(settings))


VIEW = IptablesView()
