"""Kernel objects that data-plane backends program, and the clients that program them.

One package per data-plane interface: `xtables` (the iptables IR, its
text parser and renderer, rule-spec reading, the iptables-save/restore
client and its fake, the shared partial-sync applier and the rule walker
the tracer uses), `nft` (the nftables object model, script and listing
parsers, normal form, the `nft` client and its fake, and the fast phased
and differential loader), `ipvs` (IP Virtual Server over generic
netlink), `ipset` (the `ipset` tool's restore/save) and `links` (the
`kube-ipvs0` dummy interface and its addresses). A client works inside a
named network namespace through `rulegen.kernel`, and its in-memory fake,
with the same semantics, errors included, ships with the product so that
backends are tested without root; parity tests run one script against both
(tests/dataplane/, tests/vm/). Backends import these; these never import a
backend.
"""
