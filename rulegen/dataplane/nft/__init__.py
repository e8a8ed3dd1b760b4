"""nftables: the object model of one table, its `nft -f` script and `nft list` syntaxes, and the nft client.

`model` (knftables-shaped records and a validating `Transaction`),
`render` (Transaction → script, as knftables writes it), `parse` (script
or listing → model), `state` (the table a script leaves, and the normal
form two states are compared by), `client` (`nft -f`, `nft list`, `nft -c`
inside a namespace) and `fake` (an in-memory nft that runs the same
scripts and dumps deterministically).

The fast loader for large tables: `script` (the script model it plans
with), `netlink` (raw nf_tables messages for anonymous maps and elements)
and `loader` (the phased first load and the differential update); why it
exists and how it is shaped, with measurements: docs/nftables-load.md.
"""
