"""nftables mode's applier: the compiled table, loaded through the shared nftables sync.

What is nftables mode's own here is small: the compile replayed into the
table state it leaves (`state.replay` of the Transaction; kube-proxy's
own table, `ip kube-proxy` or `ip6 kube-proxy`, is the only one touched),
and nothing else to set up: kube-proxy's nftables mode installs no jumps
outside its table (its base chains hook in themselves) and answers no
NodePort on 127.0.0.1, so it sets no `route_localnet`. Comparing,
sending (the phased first load, differences after), the cache proven by
the nf_tables generation, and every refusal leaving the previous state
are `dataplane.nft.sync`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...dataplane.nft import sync
from ...dataplane.nft.state import replay

if TYPE_CHECKING:
    from ...apply.kernel import Kernel
    from ...compiled import Compiled


class NftablesApplier:
    state_files = sync.state_files()
    # What `rulegen lab` checks for and says it loads before it builds a node in this mode.
    tools = ("nft",)
    payload = "an nftables table (nft)"

    def apply(self, compiled: Compiled, netns: str, kernel: Kernel, *, dry_run: bool,
              state_dir: str | None) -> sync.NftApplyResult:
        settings = compiled.settings
        want = replay(compiled.ir)
        return sync.sync(want, netns, kernel, mode=settings.mode, family=settings.family, dry_run=dry_run,
                         state_dir=state_dir)


APPLIER = NftablesApplier()
