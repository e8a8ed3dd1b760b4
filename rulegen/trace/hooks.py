"""The kernel's order for a connection's first packet: netfilter hooks, and inside a hook, priorities.

What every mode's whole-node walk follows, whatever objects sit at the
hooks: xtables tables (raw, mangle, nat, filter, security at their fixed
priorities), nft base chains of any table (each at its own hook and
priority, firewalld's `inet firewalld` among them), or IPVS (which hooks in
at INPUT and OUTPUT next to source and destination NAT). A walk lists the
`Stage`s it has, `sequence` orders one hook's stages as the kernel calls
them, and `ROUTES` says which hook follows which, and where the routing
decisions fall between them.

Priorities are the kernel's (`enum nf_ip_hook_priorities`); equal
priorities run in the order the stages were given (the kernel's order for
two chains at one priority is the order they were registered, which a dump
does not show: a walk that meets that case should say so).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")

# enum nf_ip_hook_priorities (the same numbers for IPv6), by the names nft uses.
PRIORITY = {
    "raw": -300,
    "conntrack": -200,  # connection tracking: after raw, so NOTRACK there takes effect
    "mangle": -150,
    "dstnat": -100,
    "filter": 0,
    "security": 50,
    "srcnat": 100,
}
# IPVS's own hook functions: a new connection to a virtual server is scheduled at INPUT just before
# source NAT (ip_vs_remote_request: NF_IP_PRI_NAT_SRC - 1), from the node itself at OUTPUT just after
# destination NAT (ip_vs_local_request: NF_IP_PRI_NAT_DST + 2).
IPVS_PRIORITY = {"INPUT": PRIORITY["srcnat"] - 1, "OUTPUT": PRIORITY["dstnat"] + 2}
# From the node itself the packet was routed before OUTPUT; after destination NAT changed its
# address it is routed again (ip_route_me_harder), before filter sees it.
REROUTE_PRIORITY = PRIORITY["dstnat"] + 1


class Stage(NamedTuple):
    """One thing that sees the packet at a hook: a table's base chain, an nft base chain, IPVS, a re-route.

    `name` is what the walk knows it by (an xtables table, `family table/chain`
    for nft, "ipvs", "reroute"). `nat` stages are consulted only for a
    tracked connection's first packet: not for a packet that raw marked
    untracked, and not again when a packet the node sent to itself comes
    back in through `lo`.
    """

    hook: str
    priority: int
    name: str
    nat: bool = False


def sequence(hook: str, stages: Iterable[Stage]) -> tuple[Stage, ...]:
    """The stages of HOOK in the order the kernel calls them (by priority; ties keep the given order)."""
    mine = [s for s in stages if s.hook == hook]
    return tuple(sorted(mine, key=lambda s: s.priority))


# Where a first packet goes between hooks. Each entry: the hooks in order, with the routing
# decisions ("route-in": local or forwarded; "route-out": the node's own packet picks its way out;
# "loop": a packet the node sent to one of its own addresses comes back in through lo) and the
# ends ("deliver-local", "deliver-out").
ROUTES = {
    "from-outside": ("PREROUTING", "route-in"),
    "to-local": ("INPUT", "deliver-local"),
    "forwarded": ("FORWARD", "POSTROUTING", "deliver-out"),
    "from-node": ("route-out", "OUTPUT", "POSTROUTING", "loop"),
    "looped": ("PREROUTING", "INPUT", "deliver-local"),
}
