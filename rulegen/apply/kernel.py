"""The kernel clients an apply works through, as one bundle: real ones, or fakes that share one memory.

An applier never runs a tool or opens a socket itself: it asks the bundle's
clients, one per interface (`netns`: namespaces, identity, sysctl and the
nf_tables generation; `xtables`: iptables-save/restore; `nft`: nft -f and
listings). `Kernel.real()` makes the real ones over one
`RealNamespaces`; `Kernel.fake()` makes the in-memory ones over one
`FakeNamespaces`, so a fake iptables-nft commit and a fake nft commit bump
the same generation, as in the kernel. The IPVS, ipset and link clients
join the bundle with IPVS mode's applier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..dataplane.nft.client import Nft, RealNft
from ..dataplane.nft.fake import FakeNft
from ..dataplane.xtables.client import RealXtables, Xtables
from ..dataplane.xtables.fake import FakeXtables
from ..kernel.fake import FakeNamespaces
from ..kernel.netns import Namespaces, RealNamespaces


@dataclass
class Kernel:
    netns: Namespaces
    xtables: Xtables
    nft: Nft

    @classmethod
    def real(cls, iptables_backend: str = "auto") -> Kernel:
        """The real clients; IPTABLES_BACKEND ("auto", "nft", "legacy") picks the iptables tools."""
        ns = RealNamespaces()
        return cls(ns, RealXtables(ns, iptables_backend), RealNft(ns))

    def with_iptables(self, backend: str) -> Kernel:
        """The same namespaces through another iptables backend (fakes: over the same memory)."""
        xt = self.xtables
        other = xt.view(backend) if isinstance(xt, FakeXtables) else RealXtables(self.netns, backend)  # type: ignore[arg-type]
        return Kernel(self.netns, other, self.nft)

    @classmethod
    def fake(cls, spelling: Callable[[str], str] | None = None, refuse: Callable[[str], str | None] | None = None,
             iptables_backend: str = "auto", system: str = "nft") -> Kernel:
        """In-memory clients over one FakeNamespaces (SPELLING, REFUSE: see `FakeXtables`)."""
        ns = FakeNamespaces()
        return cls(ns, FakeXtables(ns, spelling, refuse, iptables_backend, system), FakeNft(ns))
