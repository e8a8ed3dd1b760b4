"""IPVS mode's diff view: its state (a compile, rulegen's files, a node's dumps, a live namespace) as a side.

Four groups, in this order: the IPVS table (one unordered container per
virtual server: its real servers, with the scheduler, persistence and
scheduler flags as the container's settings), the ipsets (one unordered
container per set: its entries, with type and create options as the
settings), the kube-ipvs0 link (its addresses) and the glue's xtables
tables (ordered chains, laid out by the shared `dataplane/xtables/views.py`).
A report names each in its own words: "real server 10.60.1.5:8080
(weight 1) added to TCP 10.96.0.10:80", "entry 10.96.0.10,tcp:80 removed
from KUBE-CLUSTER-IP".

Where a side comes from:

- a file in the combined form (`rulegen compile --mode ipvs` on stdout);
- a folder holding `ipvsadm.rules`, `ipset.rules` and `iptables.rules`:
  what `compile -o DIR` writes, and equally a node's dumps saved under those
  names (`ipvsadm -Sn`, `ipset save`, `iptables-save`);
- `--netns NAME`: the namespace's IPVS table, ipsets, kube-ipvs0 addresses
  and iptables-save, read through the clients in `dataplane/` (the Kernel
  bundle's IPVS, ipset and link clients when it has them).

A node's dumps hold both families (IPVS and ipset keep one table for a
dual-stack node); a side keeps the family compared. With `kube_only` a
node's other sets (a CNI's) and chains, and the built-in chains' rules that
do not jump to kube-proxy's, stay out; `outside_rules` counts them for the
one line `rulegen diff` prints (the iptables mode's line, plus the ipsets).
Every virtual server is kube-proxy's (it deletes the ones it did not make).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Callable, Iterable

import msgspec

from ...dataplane.xtables import views as xviews
from ...dataplane.xtables.spec import canonical
from ...dataplane.links.client import KUBE_IPVS0
from ...diff import Container, Layout, RuleChange, Side
from ...settings import Settings
from .compile import JUMP_RULES
from .ir import BITMAP_PORT, SET_DEFS, IPSet, IPVSState, VirtualServer, sched_flag_names, set_name
from .parse import parse_parts, read
from .render import hostport

if TYPE_CHECKING:
    from ...apply.kernel import Kernel

IPVS, IPSETS, LINKS = "ipvs", "ipset", "link"
VS, SET, IFACE, CHAIN = "virtual server", "set", "interface", "chain"
_NOUNS = {VS: (VS, "real server"), SET: (SET, "entry"), IFACE: (IFACE, "address"), CHAIN: (CHAIN, "rule")}
_TITLES = {IPVS: "IPVS", IPSETS: "ipsets", LINKS: "links"}
_METHODS = {"m": "masquerading", "g": "direct routing", "i": "tunnelling"}
_PROTO_ORDER = {"TCP": 0, "UDP": 1, "SCTP": 2, "FWMARK": 3}
_SET_ORDER = {set_name(n, f): i for f in (4, 6) for i, (n, _, _) in enumerate(SET_DEFS)}


def _vs_name(vs: VirtualServer) -> str:
    if vs.protocol == "fwmark":
        return f"FWMARK {vs.port}" + (" IPv6" if vs.address == "::" else "")
    return f"{vs.protocol.upper()} {hostport(vs.address, vs.port)}"


def _vs_key(name: str) -> tuple:
    """Numeric order of `TCP 10.96.0.10:80` names: protocol, family, address, port."""
    proto, _, rest = name.partition(" ")
    if proto == "FWMARK":
        return (3, 0, 0, int(rest.split()[0]) if rest.split()[0].isdigit() else 0)
    host, _, port = rest.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return (_PROTO_ORDER.get(proto, 4), 9, 0, 0)
    return (_PROTO_ORDER.get(proto, 4), ip.version, int(ip), int(port) if port.isdigit() else 0)


def _settings(vs: VirtualServer) -> str:
    words = ["-s", vs.scheduler]
    if vs.persistent:
        words += ["-p", str(vs.timeout)]
    flags = sched_flag_names(vs.scheduler, vs.flags)
    if flags:
        words += ["-b", ",".join(flags)]
    return " ".join(words)


def _real(r: Any) -> str:
    method = "" if r.method == "m" else f", {_METHODS.get(r.method, r.method)}"
    return f"{hostport(r.address, r.port)} (weight {r.weight}{method})"


def _set_settings(s: IPSet) -> str:
    words = [s.type] + (["family", s.family] if s.family and s.type != BITMAP_PORT else [])
    words += [f"{k} {v}" if v else k for k, v in s.options]
    return " ".join(words)


class IPVSLayout(Layout):
    group_noun = "section"
    container_noun = "object"
    item_noun = "item"
    policy_noun = "settings"
    scope = "kube-proxy's objects only"
    by_kind = True

    def nouns(self, kind: str) -> tuple[str, str]:
        return _NOUNS.get(kind, (kind, "item"))

    def group_title(self, name: str) -> str:
        return _TITLES.get(name) or f"table {name}"

    def group_order(self, names: Iterable[str]) -> list[str]:
        first = [g for g in (IPVS, IPSETS, LINKS) if g in set(names)]
        return first + xviews.LAYOUT.group_order(n for n in names if n not in (IPVS, IPSETS, LINKS))

    def container_order(self, group: str, names: Iterable[str]) -> list[str]:
        if group == IPVS:
            return sorted(set(names), key=_vs_key)
        if group == IPSETS:
            return sorted(set(names), key=lambda n: (_SET_ORDER.get(n, len(_SET_ORDER)), n))
        if group == LINKS:
            return sorted(set(names))
        return xviews.LAYOUT.container_order(group, names)

    def canonical(self, kind: str) -> Callable[[str], str]:
        return canonical if kind == CHAIN else (lambda text: text)

    def item_line(self, kind: str, container: str, change: RuleChange) -> str | None:
        if kind == CHAIN:
            return None
        sign = {"added": "+", "removed": "-", "moved": "~"}[change.op]
        noun = _NOUNS[kind][1] if kind in _NOUNS else "item"
        where = "to" if change.op == "added" else "from"
        return f"{sign} {noun} {change.rule} {change.op} {where} {container}"


LAYOUT = IPVSLayout()
_NO_SET = IPSet("", "", "", (), "", ())


def for_family(state: IPVSState, family: int) -> IPVSState:
    """STATE with only FAMILY's virtual servers and sets (a node's dumps hold both)."""
    six = family == 6

    def vs_ok(vs: VirtualServer) -> bool:
        return (vs.address == "::" if vs.protocol == "fwmark" else ":" in vs.address) == six

    def set_ok(s: IPSet) -> bool:
        if s.family in ("inet", "inet6"):
            return (s.family == "inet6") == six
        return s.name.startswith("KUBE-6-") == six if s.name.startswith("KUBE-") else True

    vss = tuple(v for v in state.virtual_servers if vs_ok(v))
    sets = tuple(s for s in state.ipsets if set_ok(s))
    bound = tuple(a for a in state.bound if (":" in a) == six)
    if len(vss) == len(state.virtual_servers) and len(sets) == len(state.ipsets) and len(bound) == len(state.bound):
        return state
    return msgspec.structs.replace(state, family=family, virtual_servers=vss, ipsets=sets, bound=bound)


class IPVSView:
    def read(self, path: str, ip_family: str | None) -> tuple[IPVSState, str]:
        fam = {"ipv4": 4, "ipv6": 6}.get(ip_family or "")
        state = read(path, fam)
        # kube-ipvs0 holds both families' addresses: each family's KUBE-IPVS-IPS set lists its own.
        bound = tuple(e for f in (4, 6) for e in (state.ipset(set_name("KUBE-IPVS-IPS", f)) or _NO_SET).entries)
        state = msgspec.structs.replace(state, bound=bound)
        return (for_family(state, fam) if fam else state), path

    def for_family(self, ir: IPVSState, family: int) -> IPVSState:
        return for_family(ir, family)

    def live(self, kernel: Kernel, netns: str, family: int) -> tuple[IPVSState, str]:
        name = f"netns {netns} (IPVS, ipset save, kube-ipvs0, {'ip6tables' if family == 6 else 'iptables'}-save)"
        ipvs, ipsets, links = clients(kernel, netns)
        return read_live(ipvs, ipsets, links, kernel.xtables.save(netns, family), family, name), name

    def side(self, ir: IPVSState, name: str, kube_only: bool) -> Side:
        return side(ir, name, kube_only)

    def outside_rules(self, ir: IPVSState) -> tuple[int, int, int]:
        """What a kube-only comparison leaves out of IR: (rules in the glue's built-in chains that are not
        kube-proxy's jumps, chains that are not kube-proxy's, ipsets that are not kube-proxy's)."""
        rules, chains = xviews.outside_rules(ir.iptables)
        return rules, chains, sum(1 for s in ir.ipsets if not kube_set(s.name))

    def has_outside(self, ir: IPVSState) -> bool:
        return xviews.has_kube_jumps(ir.iptables)

    def with_outside(self, ir: IPVSState, settings: Settings) -> IPVSState:
        return msgspec.structs.replace(ir, iptables=xviews.with_jumps(ir.iptables, JUMP_RULES))


VIEW = IPVSView()


def clients(kernel: Any, netns: str) -> tuple[Any, Any, Any]:
    """NETNS's IPVS, ipset and link clients, from the Kernel bundle (the real ones, or the fakes under test)."""
    return kernel.ipvs(netns), kernel.ipsets(netns), kernel.links(netns)


def read_live(ipvs: Any, ipsets: Any, links: Any, iptables_save: str, family: int, name: str) -> IPVSState:
    """A namespace's state from its clients, read as a node's dumps are (`ipvsadm -Sn` spelling and all)."""
    state = parse_parts(ipvs.dump(), ipsets.save(), iptables_save, family,
                        (f"{name}: IPVS", f"{name}: ipset save", f"{name}: iptables-save"))
    addresses = tuple(a.split("/")[0] for a in links.addresses(KUBE_IPVS0)) if links.exists(KUBE_IPVS0) else ()
    return for_family(msgspec.structs.replace(state, bound=addresses), family)


def kube_set(name: str) -> bool:
    """Is this ipset kube-proxy's (KUBE-*, as every set it makes), not a CNI's or a firewall's?"""
    return name.startswith("KUBE-")


def side(state: IPVSState, name: str, kube_only: bool = False) -> Side:
    groups: dict[str, dict[str, Container]] = {}
    ipvs = groups.setdefault(IPVS, {})
    for vs in state.virtual_servers:
        c = Container(kind=VS, ordered=False, policy=_settings(vs))
        c.items = [(i, _real(r)) for i, r in enumerate(vs.reals, 1)]
        ipvs[_vs_name(vs)] = c
    sets = groups.setdefault(IPSETS, {})
    for s in state.ipsets:
        if kube_only and not kube_set(s.name):
            continue
        c = Container(kind=SET, ordered=False, policy=_set_settings(s))
        c.items = [(i, e) for i, e in enumerate(s.entries, 1)]
        sets[s.name] = c
    link = Container(kind=IFACE, ordered=False, fixed=True)
    link.items = [(i, a) for i, a in enumerate(state.bound, 1)]
    groups[LINKS] = {KUBE_IPVS0: link}
    tables = xviews.side(state.iptables, name, kube_only)
    for tname, chains in tables.groups.items():
        groups[tname] = chains
    return Side(name, state.family, groups, LAYOUT, kube_only)
