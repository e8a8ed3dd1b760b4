"""Kernel objects that data-plane backends program, and the clients that program them.

One package per kernel API: `ipvs` (IP Virtual Server over generic
netlink), `ipset` (the `ipset` tool's restore/save), `links` (the
`kube-ipvs0` dummy interface and its addresses), `nft` (nftables scripts:
the phased first load and the differential update, partly over raw
nf_tables netlink). Each has a `model` of
frozen records, an interface with a real client that works inside a named
network namespace (through `rulegen.netns.in_netns`), and an in-memory fake
with the same semantics, errors included, that ships with the product so
backends are tested without root. Backends use these; these never import a
backend. Parity tests run one script of operations against the fake and
against a real kernel (tests/dataplane/, tests/vm/).
"""
