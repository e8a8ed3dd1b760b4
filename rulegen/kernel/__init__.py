"""The kernel beneath every data plane: network namespaces, and raw netfilter netlink.

`netns` is the namespaces client (create, delete, list, identity that never
repeats, run a command or a function inside one, sysctls, the nf_tables
generation), `fake` its in-memory twin, and `netlink` the few raw
NETLINK_NETFILTER requests rulegen sends itself (the nf_tables generation
id and table list, nfacct counters). The data-plane clients in
`rulegen.dataplane` work inside namespaces through these; nothing here
knows a data plane's objects.
"""
