"""What the node linters of every mode share (`rulegen lint --rules`): a hit, its finding, the pod client.

A node linter (iptables mode's `backends/iptables/nodelint.py`, IPVS
mode's `backends/ipvs/nodelint.py`, nftables mode's
`backends/nftables/nodelint.py`) traces every Service port through a
node's whole dump and records each rule that decides in kube-proxy's place
as a `Hit`; `finding` words an xtables hit as a lint finding with the fix
for its code (`HINTS`, which a mode may override where its fix differs;
nftables mode words its own, which name tables and base chains).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..dataplane.xtables.spec import SpecError, parse_spec
from ..settings import Settings
from .findings import Finding

MAX_NAMED = 5  # Service ports named in one finding; the rest are counted


@dataclass
class Hit:
    code: str
    table: str
    chain: str
    number: int  # 0 for a policy or a missing jump
    rule: str
    what: str
    services: dict[str, None] = field(default_factory=dict)
    assuming: set[str] = field(default_factory=set)
    unconditional: bool = False


def record(hits: dict[tuple, Hit], label: str, paths, deciders) -> None:
    """Count LABEL's Service port in the hit of each decider DECIDERS(path) finds on PATHS.

    A decider is (code, table, chain, number, rule, what); a hit is
    unconditional once one path met it without assuming anything.
    """
    for p in paths:
        for h in deciders(p):
            hit = hits.setdefault(h[:4], Hit(*h))
            hit.services[label] = None
            if p.assumptions:
                hit.assuming.update(a.text() for a in p.assumptions)
            else:
                hit.unconditional = True


def record_missing_jumps(hits: dict[tuple, Hit], missing, everyone: list[str]) -> None:
    """An RG908 hit for each (table, chain, spec) jump MISSING, hitting every Service port."""
    for table, chain, spec in missing:
        hit = Hit("RG908", table, chain, 0, f"-A {chain} {spec}", "is missing, so no Service traffic there "
                  "meets kube-proxy's rules")
        hit.services.update(dict.fromkeys(everyone))
        hit.unconditional = True
        hits[(hit.code, table, chain, spec)] = hit


def pod_client(settings: Settings) -> str | None:
    """A pod of this node that is no endpoint: the next-to-last address of its pod range."""
    for cidr in settings.node_pod_cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version == settings.family and net.num_addresses > 2:
            return str(net[-2])
    return None


def target_of(spec: str) -> str | None:
    try:
        return parse_spec(spec).target
    except SpecError:
        return None


HINTS = {
    "RG901": "let Service traffic through before it (match the pods' or the node ports' traffic with an ACCEPT), or "
             "move the rule after kube-proxy's jumps (kube-proxy re-inserts its jumps first on its next sync)",
    "RG902": "give the other DNAT a port no Service uses (NodePorts are 30000-32767), or move it after kube-proxy's "
             "jump; restart kube-proxy after the daemon that inserted it",
    "RG903": "move the ACCEPT after kube-proxy's jump in nat, or make it match only what no Service uses",
    "RG904": "move the ACCEPT after kube-proxy's jumps, or let kube-proxy re-insert its jumps first (its next sync)",
    "RG905": "move the RETURN after kube-proxy's jump, or narrow it to traffic no Service uses",
    "RG906": "accept the Service traffic explicitly (ufw route allow / firewalld zone / DOCKER-USER), or set the "
             "policy to ACCEPT",
    "RG907": "add the host's own ACCEPT for the pod network and node ports (kube-proxy's may vanish when a firewall "
             "reloads), or set the policy to ACCEPT",
    "RG908": "restart kube-proxy (it inserts its jumps on every sync); check what flushed the built-in chains "
             "(a firewall reload)",
}


def finding(h: Hit, hints: dict[str, str] | None = None) -> Finding:
    """The lint finding for hit H (HINTS: the fix per code, another mode's where it differs)."""
    names = list(h.services)
    shown = ", ".join(names[:MAX_NAMED]) + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")
    message = f"{h.rule} {h.what}; it hits {len(names)} Service port(s): {shown}"
    if not h.unconditional and h.assuming:
        message += f" (if {'; '.join(sorted(h.assuming))})"
    name = f"{h.table} {h.chain}" + (f" rule {h.number}" if h.number else " policy" if h.code in ("RG906", "RG907")
                                      else "")
    return Finding(h.code, "iptables", name, message, (hints or HINTS)[h.code])
