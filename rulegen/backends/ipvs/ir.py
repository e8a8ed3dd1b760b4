"""The IPVS IR: what kube-proxy's IPVS proxier leaves on a node after a full sync.

Four kinds of kernel object, as frozen records: IPVS virtual servers with
their real servers, ipsets with their entries, the addresses bound to the
`kube-ipvs0` dummy interface, and the iptables "glue" payload as the xtables
`Ruleset` iptables mode uses. `IPVSState` holds all four for one IP family.
The compiler produces it, `render` writes it as `ipvsadm -R`, `ipset
restore` and `iptables-restore` text, `parse` reads that text (or a live
node's `ipvsadm -Sn`, `ipset save`, `iptables-save`) back into it.

The vocabulary of kube-proxy's sets (names, types, comments, create options)
lives here too, because the parser needs it as much as the compiler: the
kernel keeps no comment on kube-proxy's sets, so a set read back from
`ipset save` gets its comment from this table. docs/ipvs-mode.md says where
each value comes from.
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct

# The virtual and real server records, their flags and the forwarding methods
# are the kernel's, shared with the IPVS clients (dataplane/ipvs/model.py);
# this mode's compiler, parser and tools take them from here as its IR.
from ...dataplane.ipvs.model import (  # noqa: F401 - re-exported
    FLAG_HASHED,
    FLAG_ONEPACKET,
    FLAG_PERSISTENT,
    FLAG_SCHED1,
    FLAG_SCHED2,
    FLAG_SCHED3,
    MASQ,
    ROUTE,
    SCHED_FLAGS,
    TUNNEL,
    RealServer,
    VirtualServer,
    sched_flag_bit,
    sched_flag_names,
)
from ...dataplane.xtables.model import Ruleset
from ...dataplane.xtables.spec import canonical as canonical_rule
from ...settings import IPVS_SCHEDULERS

# ------------------------------------------------------------------ virtual servers

# The schedulers kube-proxy's configuration accepts (ipvs.scheduler); "" means rr.
SCHEDULERS = IPVS_SCHEDULERS
DEFAULT_SCHEDULER = "rr"

PROTOCOLS = ("tcp", "udp", "sctp")

# ------------------------------------------------------------------ ipsets

HASH_IP = "hash:ip"
HASH_IP_PORT = "hash:ip,port"
HASH_IP_PORT_IP = "hash:ip,port,ip"
HASH_IP_PORT_NET = "hash:ip,port,net"
BITMAP_PORT = "bitmap:port"

# kube-proxy creates every hash set with these and every bitmap:port set with
# this range (its ipset helper's defaults; it never asks for a comment extension).
HASH_OPTIONS: tuple[tuple[str, str], ...] = (("hashsize", "1024"), ("maxelem", "65536"))
BITMAP_OPTIONS: tuple[tuple[str, str], ...] = (("range", "0-65535"),)
MAXELEM = 65536

# (IPv4 name, type, comment), in the order kube-proxy lists its sets; the
# rendered file and the glue's rules follow this order.
SET_DEFS: tuple[tuple[str, str, str], ...] = (
    ("KUBE-LOOP-BACK", HASH_IP_PORT_IP, "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    ("KUBE-CLUSTER-IP", HASH_IP_PORT, "Kubernetes service cluster ip + port for masquerade purpose"),
    ("KUBE-EXTERNAL-IP", HASH_IP_PORT, "Kubernetes service external ip + port for masquerade and filter purpose"),
    ("KUBE-EXTERNAL-IP-LOCAL", HASH_IP_PORT, "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    ("KUBE-LOAD-BALANCER", HASH_IP_PORT, "Kubernetes service lb portal"),
    ("KUBE-LOAD-BALANCER-FW", HASH_IP_PORT, "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    ("KUBE-LOAD-BALANCER-LOCAL", HASH_IP_PORT, "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", HASH_IP_PORT_IP, "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", HASH_IP_PORT_NET, "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    ("KUBE-NODE-PORT-TCP", BITMAP_PORT, "Kubernetes nodeport TCP port for masquerade purpose"),
    ("KUBE-NODE-PORT-LOCAL-TCP", BITMAP_PORT, "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    ("KUBE-NODE-PORT-UDP", BITMAP_PORT, "Kubernetes nodeport UDP port for masquerade purpose"),
    ("KUBE-NODE-PORT-LOCAL-UDP", BITMAP_PORT, "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    ("KUBE-NODE-PORT-SCTP-HASH", HASH_IP_PORT, "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", HASH_IP_PORT, "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"),
    ("KUBE-HEALTH-CHECK-NODE-PORT", BITMAP_PORT, "Kubernetes health check node port"),
    ("KUBE-IPVS-IPS", HASH_IP, "Addresses on the ipvs interface"),
)
IPSET_NAME_MAX = 31  # the kernel's IPSET_MAXNAMELEN (32) minus the NUL


def set_name(name: str, family: int) -> str:
    """The family's name of a kube-proxy set: `KUBE-6-...` for IPv6, cut to 31 characters."""
    if family == 6 and name.startswith("KUBE-"):
        return ("KUBE-6-" + name[5:])[:IPSET_NAME_MAX]
    return name


# Comment of each set name of both families, for sets read back from the kernel.
SET_COMMENTS: dict[str, str] = {set_name(n, f): c for n, _, c in SET_DEFS for f in (4, 6)}


def hash_family(family: int) -> str:
    return "inet6" if family == 6 else "inet"


class IPSet(Struct, frozen=True, gc=False):
    """One ipset: `family` is inet/inet6 for hash types, "" for bitmap:port; entries as ipset prints them."""

    name: str
    type: str
    family: str
    options: tuple[tuple[str, str], ...]  # create options besides family, in order (value "" for a flag)
    comment: str  # kube-proxy's description of the set; used in the glue's `-m comment`, not in the kernel
    entries: tuple[str, ...]


# ------------------------------------------------------------------ the whole state


class IPVSState(Struct, frozen=True):
    """Everything kube-proxy's IPVS proxier programs for one IP family."""

    family: int
    virtual_servers: tuple[VirtualServer, ...]
    ipsets: tuple[IPSet, ...]
    bound: tuple[str, ...]  # addresses on kube-ipvs0 (the same list as the KUBE-IPVS-IPS set)
    iptables: Ruleset

    def ipset(self, name: str) -> IPSet | None:
        for s in self.ipsets:
            if s.name == name:
                return s
        return None


DUMMY_DEVICE = "kube-ipvs0"


def normalised(state: IPVSState, canonical: bool = False) -> dict[str, Any]:
    """The state in a form where only meaning counts, for comparing two states.

    Virtual servers, real servers, set entries and bound addresses are sets
    (their order carries no meaning in the kernel); xtables chains are
    ordered lists of rules, per table and chain (declaration order ignored).
    `canonical` compares rule bodies by their canonical spelling, for a live
    node's `iptables-save`, which prints rules differently from a payload.
    """
    services = {
        vs.key: (*vs.settings, frozenset(vs.reals))
        for vs in state.virtual_servers
    }
    sets = {s.name: (s.type, s.family, s.options, frozenset(s.entries)) for s in state.ipsets}
    tables: dict[str, dict[str, tuple[str, ...]]] = {}
    for t in state.iptables.tables:
        by = t.by_chain()
        tables[t.name] = {c: tuple(canonical_rule(r) for r in rs) if canonical else tuple(rs) for c, rs in by.items()}
    return {"family": state.family, "virtual_servers": services, "ipsets": sets,
            "bound": frozenset(state.bound), "iptables": tables}
