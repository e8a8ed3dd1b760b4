"""xtables: what iptables-restore and iptables-save speak, and the client that speaks it in a namespace.

`model` (tables, chains, rules as iptables-save shows them), `spec` (a rule
body's options read, and its canonical form), `comments` (quoting a comment
as iptables-save does), `parse` and `render` (text ↔ model), `restore`
(iptables-restore's errors mapped back to the payload line, and the tools
of each iptables backend), `client` (the real client: iptables-nft or
-legacy inside a namespace) and `fake` (the in-memory one), `sync` (the
partial-sync applier iptables mode and IPVS mode's glue share), and
`walk`/`matchers` (one connection through the rules, for the tracers).
"""
