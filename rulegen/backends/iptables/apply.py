"""iptables mode's applier: kube-proxy's payload, its jumps and its stale chains, over the shared xtables sync.

What is iptables mode's own here is small: the jump rules kube-proxy
installs in the built-in chains outside the payload (`compile.jump_rules`),
the prefixes of the per-service chains a partial sync deletes once no
Service wants them, and `route_localnet`, which kube-proxy sets so that
NodePorts answer on 127.0.0.0/8. The comparison, sending, rollback and
cache are `dataplane.xtables.sync`'s, which IPVS mode's glue shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...dataplane.xtables import sync
from ...dataplane.xtables.model import views
from .compile import jump_rules

if TYPE_CHECKING:
    from ...apply.kernel import Kernel
    from ...compiled import Compiled

# Live chains with these prefixes belong to kube-proxy's per-service state
# and are deleted when the compile no longer has them (kube-proxy's partial sync).
STALE_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-")
STATE_NAME = "iptables"  # state files iptables-ipv4.json, iptables-ipv4.gen, ...


class IptablesApplier:
    state_files = sync.state_files(STATE_NAME)
    # What `rulegen lab` checks for and says it loads before it builds a node in this mode.
    tools = ("iptables-restore", "iptables-save", "iptables")
    payload = "iptables rules"

    def apply(self, compiled: Compiled, netns: str, kernel: Kernel, *, dry_run: bool,
              state_dir: str | None) -> sync.XtablesApplyResult:
        settings = compiled.settings
        fam = settings.family
        # An incremental compile keeps most chains as hashes and offers its own
        # views; a full compile is viewed whole.
        want = compiled.incremental.views() if compiled.incremental is not None else views(compiled.ir)
        # kube-proxy lets NodePorts answer on 127.0.0.0/8 only with route_localnet.
        sysctls = ((("net.ipv4.conf.all.route_localnet", "1"),)
                   if fam == 4 and settings.localhost_nodeports_effective(4) else ())
        target = sync.Target(STATE_NAME, want, jump_rules(settings), STALE_PREFIXES, sysctls)
        return sync.sync(target, netns, kernel, mode=settings.mode, family=fam, dry_run=dry_run,
                         state_dir=state_dir)


APPLIER = IptablesApplier()
