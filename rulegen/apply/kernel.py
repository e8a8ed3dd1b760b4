"""The kernel clients an apply works through, as one bundle: real ones, or fakes that share one memory.

An applier never runs a tool or opens a socket itself: it asks the bundle's
clients, one per interface (`netns`: namespaces, identity, sysctl and the
nf_tables generation; `xtables`: iptables-save/restore; `nft`: nft -f and
listings; and per namespace `ipvs(NAME)`, `ipsets(NAME)`, `links(NAME)`
for IPVS mode, with `ipvs_missing()` saying whether this kernel has IPVS
at all). `Kernel.real()` makes the real ones over one `RealNamespaces`;
`Kernel.fake()` makes the in-memory ones over one `FakeNamespaces`, so a
fake iptables-nft commit and a fake nft commit bump the same generation, as
in the kernel, and a namespace's fake IPVS table, ipsets and links vanish
with it.

The IPVS, ipset and link clients each work in the namespace they were made
for, so the bundle makes them by name (None: the caller's own namespace).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from ..dataplane.ipset.client import IPSets, RealIPSets
from ..dataplane.ipset.fake import FakeIPSets
from ..dataplane.ipvs.client import IPVS, RealIPVS, ipvs_missing_reason
from ..dataplane.ipvs.fake import FakeIPVS, NoIPVS
from ..dataplane.links.client import Links, RealLinks
from ..dataplane.links.fake import FakeLinks
from ..dataplane.nft.client import Nft, RealNft
from ..dataplane.nft.fake import FakeNft
from ..dataplane.xtables.client import RealXtables, Xtables
from ..dataplane.xtables.fake import FakeXtables
from ..kernel.fake import FakeNamespaces
from ..kernel.netns import Namespaces, RealNamespaces

# What the fake says when made without IPVS (Kernel.fake(ipvs=False)), in the real probe's words.
FAKE_NO_IPVS = ("this kernel (fake) has no IP Virtual Server: the ip_vs module is not loaded "
                "and modprobe ip_vs failed: the fake kernel has none")


@dataclass
class Kernel:
    netns: Namespaces
    xtables: Xtables
    nft: Nft
    # Per-namespace clients (None: the caller's namespace) and the IPVS probe; `real` and `fake` set them.
    ipvs_maker: Callable[[str | None], IPVS] = RealIPVS
    ipsets_maker: Callable[[str | None], IPSets] = RealIPSets
    links_maker: Callable[[str | None], Links] = RealLinks
    ipvs_probe: Callable[[str | None], str | None] = ipvs_missing_reason

    def ipvs(self, netns: str | None) -> IPVS:
        """The IPVS table of namespace NETNS (None: the caller's own)."""
        return self.ipvs_maker(netns)

    def ipsets(self, netns: str | None) -> IPSets:
        """The ipsets of namespace NETNS (`ipset` run there)."""
        return self.ipsets_maker(netns)

    def links(self, netns: str | None) -> Links:
        """The links of namespace NETNS (kube-ipvs0 and its addresses)."""
        return self.links_maker(netns)

    def ipvs_missing(self, netns: str | None = None) -> str | None:
        """None when IPVS can be programmed in NETNS (None: where the caller is); else the one-line reason."""
        return self.ipvs_probe(netns)

    @classmethod
    def real(cls, iptables_backend: str = "auto") -> Kernel:
        """The real clients; IPTABLES_BACKEND ("auto", "nft", "legacy") picks the iptables tools."""
        ns = RealNamespaces()
        return cls(ns, RealXtables(ns, iptables_backend), RealNft(ns),
                   ipsets_maker=lambda netns: RealIPSets(netns, ns))

    def with_iptables(self, backend: str) -> Kernel:
        """The same namespaces through another iptables backend (fakes: over the same memory)."""
        xt = self.xtables
        other = xt.view(backend) if isinstance(xt, FakeXtables) else RealXtables(self.netns, backend)  # type: ignore[arg-type]
        return replace(self, xtables=other)

    @classmethod
    def fake(cls, spelling: Callable[[str], str] | None = None, refuse: Callable[[str], str | None] | None = None,
             iptables_backend: str = "auto", system: str = "nft", ipvs: bool = True) -> Kernel:
        """In-memory clients over one FakeNamespaces (SPELLING, REFUSE: see `FakeXtables`).

        A namespace's IPVS table, ipsets and links live in it and vanish
        with it; asking for those of a namespace that does not exist fails
        as entering it would. IPVS False makes a kernel without ip_vs:
        `ipvs_missing` gives `FAKE_NO_IPVS` and the IPVS clients refuse every
        call with it.
        """
        ns = FakeNamespaces()
        host: dict[str, Any] = {}  # the caller's own namespace

        def kept(kind: str, make: Callable[[], Any]) -> Callable[[str | None], Any]:
            def get(netns: str | None) -> Any:
                where = host if netns is None else ns.get(netns).objects
                got = where.get(kind)
                if got is None:
                    got = where[kind] = make()
                return got

            return get

        return cls(ns, FakeXtables(ns, spelling, refuse, iptables_backend, system), FakeNft(ns),
                   ipvs_maker=kept("ipvs", FakeIPVS if ipvs else lambda: NoIPVS(FAKE_NO_IPVS)),
                   ipsets_maker=kept("ipsets", FakeIPSets), links_maker=kept("links", FakeLinks),
                   ipvs_probe=lambda netns: None if ipvs else FAKE_NO_IPVS)
