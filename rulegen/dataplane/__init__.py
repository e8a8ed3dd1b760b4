"""Kernel object models and the clients that program them, shared by backends and never by each other.

One package per data-plane interface: `xtables` (the iptables IR, its
text parser and renderer, rule-spec reading, the iptables-save/restore
client and its fake, the shared partial-sync applier and the rule walker
the tracer uses), `nft` (the nftables object model, script and listing
parsers, normal form, the `nft` client and its fake), and the IPVS,
ipset and link clients beside them. A client works inside a named network
namespace through `rulegen.kernel`, and its in-memory fake, with the same
semantics, ships with the product so that backends are tested without
root; parity tests run one script against both. Backends import these;
these never import a backend.
"""
