"""nftables mode's tracer: one new connection through table `ip kube-proxy` (or `ip6`), hop by hop.

`trace_compiled` traces what `rulegen compile --mode nftables` produced
(the script replayed into the state it leaves); `trace_table` traces any
table state, such as the `kube-proxy` table of a node's `nft list table ip
kube-proxy` or `nft list ruleset` read by `dump.read`. Unlike iptables mode,
kube-proxy's nftables mode owns its base chains, so nothing outside the
table is added: what the table holds is what kube-proxy asks the kernel to run. A node's whole
`nft list ruleset` holds more: firewalld's `inet firewalld`, a Docker or
CNI table, a hand-made `inet filter`. `trace_saved` walks them all
(`trace_node`): every base chain of the destination's family (ip or ip6,
and inet) at its hook and priority, foreign verdicts named with table,
chain, rule number and handle, and what the walk cannot decide there split
into assumed branches. iptables-nft's tables (their rules are xtables
matches nft can only print as comments) are not walked: the trace says so
and points at iptables-save. The walk is `dataplane/nft/walk.py`; who
sends the packet, what the destination is and how paths fold into
destinations are the neutral `trace.entry`'s. What is this mode's own:
choosing the tables, naming the destination from the rules when no
Kubernetes objects are given, and errors that name the table, chain and
rule.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...dataplane.nft.model import Transaction
from ...dataplane.nft.state import TableState, replay
from ...dataplane.nft.walk import Engine, Other, WalkError
from ...diagnostics import UsageError
from ...settings import Settings
from ...trace import entry as E
from ...trace.model import Path as TracePath
from ...trace.model import Packet, TraceError, TraceResult
from . import dump
from .dump import TABLE, Dump


class NftTraceError(TraceError):
    """A rule the nft walk cannot evaluate: named by source, table, chain, rule number and text."""

    def __init__(self, source: str, table: str, chain: str, number: int, rule: str, message: str) -> None:
        self.source, self.table, self.chain, self.number, self.spec = source, table, chain, number, rule
        self.message = message
        where = f"rule {number} ({rule})" if number else "the chain itself"
        ValueError.__init__(self, f"{source}: table {table}, chain {chain}, {where}: {message}")


class NftablesTracer:
    def trace_compiled(self, compiled: Any, src: str | None, dst_ip: str, dst_port: int, proto: str = "tcp",
                       **kw: Any) -> TraceResult:
        return trace_compiled(compiled, src, dst_ip, dst_port, proto, **kw)

    def read(self, path: str, ip_family: str | None) -> tuple[Dump, str]:
        return dump.read(path, ip_family)

    def trace_saved(self, ir: Any, settings: Settings, src: str | None, dst_ip: str, dst_port: int,
                    proto: str = "tcp", **kw: Any) -> TraceResult:
        if kw.pop("ipsets", None) is not None:
            raise UsageError("--ipsets: an nftables node's sets are in its `nft list ruleset` (--rules); --ipsets "
                             "is for iptables and IPVS nodes")
        return trace_saved(ir, settings, src, dst_ip, dst_port, proto, **kw)


TRACER = NftablesTracer()


_STATE_CACHE: dict[int, tuple[Transaction, TableState]] = {}


def state_of(tx: Transaction) -> TableState:
    """The table a compiled transaction leaves, replayed once for many traces (the lab traces every Service)."""
    hit = _STATE_CACHE.get(id(tx))
    if hit is not None and hit[0] is tx:
        return hit[1]
    if len(_STATE_CACHE) >= 8:
        _STATE_CACHE.pop(next(iter(_STATE_CACHE)))
    st = replay(tx)
    _STATE_CACHE[id(tx)] = (tx, st)
    return st


def trace_compiled(compiled: Any, src: str | None, dst_ip: str, dst_port: int, proto: str = "tcp",
                   **kw: Any) -> TraceResult:
    """Trace a full nftables-mode compile: the table its script leaves."""
    kw.setdefault("source", "compiled rules")
    return trace_table(state_of(compiled.ir), compiled.settings, src, dst_ip, dst_port, proto,
                       plan=compiled.plan, **kw)


def trace_saved(ir: Any, settings: Settings, src: str | None, dst_ip: str, dst_port: int, proto: str = "tcp",
                **kw: Any) -> TraceResult:
    """Trace what `read` returned (or a Transaction / TableState), on the table of --dst's family."""
    if isinstance(ir, Transaction):
        ir = Dump({6 if ir.family == "ip6" else 4: state_of(ir)})
    elif isinstance(ir, TableState):
        ir = Dump({6 if ir.family == "ip6" else 4: ir})
    fam = 6 if ":" in dst_ip else 4
    table = ir.tables.get(fam)
    source = kw.get("source", "rules")
    if ir.foreign:
        return trace_node(ir, fam, settings, src, dst_ip, dst_port, proto, **kw)
    if table is None:
        have = next(iter(ir.tables))
        raise UsageError(f"--dst {dst_ip} is IPv{fam} but the rules are IPv{have} "
                         f"({source} holds no table {'ip6' if fam == 6 else 'ip'} {TABLE})")
    notes = [f"the listing also holds table(s) {', '.join(ir.others)}: only table {table.family} {TABLE} "
             "is traced (kube-proxy's; another table's base chains on the same hooks also see the packet)"] \
        if ir.others else []
    return trace_table(table, settings, src, dst_ip, dst_port, proto, extra_notes=notes, **kw)


def trace_node(ir: Dump, fam: int, settings: Settings, src: str | None, dst_ip: str, dst_port: int,
               proto: str = "tcp", **kw: Any) -> TraceResult:
    """A whole node's ruleset: kube-proxy's table of --dst's family and every other table that sees the packet."""
    table = ir.tables.get(fam)
    notes: list[str] = []
    if table is None:
        table = TableState("ip6" if fam == 6 else "ip", TABLE)
        notes.append(f"the ruleset holds no table {table.family} {TABLE}: kube-proxy's rules are not on this "
                     "node (is kube-proxy running, in nftables mode?); only the other tables are traced")
    others: list[Other] = []
    for t in ir.node_tables(fam):
        if t.xt:
            notes.append(f"table {t.where} is iptables-nft's and holds xtables matches nft cannot spell "
                         f"({t.xt[0]}{'; ...' if len(t.xt) > 1 else ''}): it is not traced here; trace the node's "
                         "iptables-save with `rulegen trace --rules` (iptables mode) for its rules")
            continue
        if t.iptables_nft:
            notes.append(f"table {t.where} is iptables-nft's: traced as nft lists it; the node's iptables-save "
                         "shows the same rules in iptables' own words")
        others.append(Other(t.state, t.policies, t.handles, t.unreadable, t.line))
        if t.skipped:
            notes.append(f"table {t.where}: {', '.join(t.skipped)} not read (the trace needs none of them)")
    skipped = [t.where for t in ir.foreign if t.family not in ("ip", "ip6", "inet")]
    if skipped:
        notes.append(f"table(s) {', '.join(skipped)} sit on other hooks than the IP ones (ingress, bridge, arp) "
                     "and are not traced")
    for u in ir.unread:
        notes.append(f"could not read {u}: it is not traced")
    if others:
        names = ", ".join(o.state.family + " " + o.state.name for o in others)
        notes.append(f"the whole ruleset is traced: table {table.family} {TABLE} and {names}, every base chain "
                     "at its hook in priority order")
    return trace_table(table, settings, src, dst_ip, dst_port, proto, extra_notes=notes, others=tuple(others),
                       table_line=(ir.kube_lines or {}).get(fam, 0), **kw)


def trace_table(table: TableState, settings: Settings, src: str | None, dst_ip: str, dst_port: int,
                proto: str = "tcp", *, plan: Any = None, source: str = "rules", in_iface: str | None = None,
                out_iface: str = E.OUTSIDE_IFACE, sport: int = E.DEFAULT_SPORT, pod_cidrs: tuple[str, ...] = (),
                extra_notes: list[str] | None = None, others: tuple[Other, ...] = (),
                routes: tuple[tuple[str, str], ...] = (), pod_iface: str | None = None,
                table_line: int = 0) -> TraceResult:
    """Follow one new connection `src → dst_ip:dst_port` through TABLE.

    `plan` (a `rulegen.plan.Plan`) names the destination and the endpoints'
    nodes; without it they are unknown. `pod_cidrs` are this node's pod
    ranges (a source there is a pod on this node).
    """
    req = E.request(settings, src, dst_ip, dst_port, proto, 6 if table.family == "ip6" else 4)
    fs = req.settings
    eps = E.endpoint_nodes(plan)
    entry, iface = E.entry(req.src, req.src_default, req.dst, req.dport, req.proto, fs, plan, eps, pod_cidrs,
                           in_iface)
    head, tail = E.notes_for(req)
    notes = head + list(extra_notes or ()) + tail

    entry, iface = E.from_pod_iface(entry, iface, fs, in_iface, pod_iface)
    pkt = Packet(req.proto, req.src, sport, req.dst, req.dport, iface)
    where = f"{table.family} {table.name}"
    to_pod = E.local_pod_iface(fs, eps, pod_cidrs, pod_iface)
    engine = None
    try:
        engine = Engine(table, tuple(fs.node_ips), out_iface, to_pod, others=others, strict=not others,
                        route=E.router(routes), table_line=table_line)
        paths = engine.run(pkt, entry.hook)
    except WalkError as e:
        where = engine.where if engine is not None and others else where
        raise NftTraceError(source, where, e.chain, e.number, e.rule, e.message) from None
    notes += engine.notes
    if plan is None:
        entry = replace(entry, target=_target_from_rules(paths) or entry.target)
    bases = frozenset(name for name, *_ in engine.bases)
    return E.fold(pkt, entry, paths, notes, fs, eps, source, plan is not None, bases)


_KINDS = {"service-": "cluster IP", "local-": "cluster IP", "external-": "external or load-balancer IP"}


def _spn(chain: str) -> str | None:
    """`service-HASH-ns/name/tcp/port` → `ns/name:port` (the port name may be empty)."""
    _, _, rest = chain.partition("-")
    _, _, base = rest.partition("-")
    parts = base.split("/")
    if len(parts) < 4:
        return None
    ns, name, _, port = parts[:4]
    return f"{ns}/{name}:{port}" if port else f"{ns}/{name}"


def _target_from_rules(paths: list[TracePath]) -> str | None:
    """Without the Kubernetes objects, name the destination from the map element that caught it."""
    if not paths:
        return None
    for h in paths[0].hops:
        if h.kind != "rule" or " → " not in h.verdict or not h.verdict.startswith("vmap @"):
            continue
        mapname = h.verdict[len("vmap @"):].split(":", 1)[0]
        target = h.verdict.rsplit(" → ", 1)[1]
        chain = target.split(" ", 1)[1] if target.startswith(("goto ", "jump ")) else ""
        spn = _spn(chain) if chain and not chain.startswith("reject") else None
        if mapname == "service-nodeports" and spn:
            return f"node port of {spn} (per the rules)"
        if mapname == "service-ips" and spn:
            kind = next((k for p, k in _KINDS.items() if chain.startswith(p)), "address")
            return f"{kind} of {spn} (per the rules)"
    return None
