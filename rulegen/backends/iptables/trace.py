"""iptables mode's tracer: one new connection through the payload and kube-proxy's jumps, hop by hop.

`trace_compiled` traces what `rulegen compile` produced, with kube-proxy's
jump rules from the built-in chains added as kube-proxy inserts them, and
fails on anything it does not understand (the compiler wrote it: a gap is
a bug). `trace_ruleset` traces any xtables `Ruleset`, e.g. a node's whole
iptables-save parsed by `dataplane.xtables.parse`: every table and chain,
the CNI's, Docker's and the firewall's among kube-proxy's, with the
node's ipsets (`ipset save`) when given; a match it cannot decide splits
the path into assumed branches instead of failing (`trace_saved` does
that). It uses the built-in chains' own rules, or kube-proxy's standard
jumps when the dump has none. The walk itself is the shared xtables one
(`dataplane/xtables/walk.py`); who sends the packet, what the destination
is and how paths fold into destinations are the neutral `trace.entry`'s.
What is this mode's own: the jumps, and naming the destination from the
rule comments when no Kubernetes objects are given.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...dataplane.ipset.model import IPSet, IPSetError, parse_save
from ...dataplane.xtables.model import BUILTIN_CHAINS, Ruleset
from ...dataplane.xtables.parse import read_source
from ...dataplane.xtables.parse import read_ruleset
from ...dataplane.xtables.spec import SpecError, parse_spec
from ...dataplane.xtables.walk import Engine, Rules
from ...diagnostics import UsageError
from ...settings import Settings
from ...trace import entry as E
from ...trace.model import Packet, Path, TraceResult
from .compile import jump_rules

BASE_CHAINS = frozenset(c for cs in BUILTIN_CHAINS.values() for c in cs)


class IptablesTracer:
    def trace_compiled(self, compiled: Any, src: str | None, dst_ip: str, dst_port: int, proto: str = "tcp",
                       **kw: Any) -> TraceResult:
        return trace_compiled(compiled, src, dst_ip, dst_port, proto, **kw)

    def read(self, path: str, ip_family: str | None) -> tuple[Ruleset, str]:
        return read_ruleset(path, ip_family)

    def trace_saved(self, ir: Ruleset, settings: Settings, src: str | None, dst_ip: str, dst_port: int,
                    proto: str = "tcp", **kw: Any) -> TraceResult:
        """A node's dump: foreign rules decided or split into assumed branches (kw `ipsets`: a file path)."""
        path = kw.pop("ipsets", None)
        if path is not None:
            kw["ipsets"], kw["ipsets_source"] = read_ipsets(path)
        kw.setdefault("strict", False)
        return trace_ruleset(ir, settings, src, dst_ip, dst_port, proto, **kw)


def read_ipsets(path: str) -> tuple[dict[str, IPSet], str]:
    """`ipset save` output (`-` for standard input) → sets by name, and the name shown for the file."""
    text, name = read_source(path)
    try:
        sets = parse_save(text)
    except IPSetError as e:
        raise UsageError(f"{name}: {e}") from None
    return {s.name: s for s in sets}, name


TRACER = IptablesTracer()


def trace_compiled(compiled: Any, src: str | None, dst_ip: str, dst_port: int, proto: str = "tcp",
                   **kw: Any) -> TraceResult:
    """Trace a full iptables-mode compile plus kube-proxy's built-in jumps."""
    s: Settings = compiled.settings
    kw.setdefault("source", "compiled rules")
    return trace_ruleset(compiled.ir, s, src, dst_ip, dst_port, proto, plan=compiled.plan,
                         jumps=jump_rules(s), **kw)


def trace_ruleset(ruleset: Ruleset, settings: Settings, src: str | None, dst_ip: str, dst_port: int,
                  proto: str = "tcp", *, plan: Any = None, source: str = "rules",
                  jumps: tuple[tuple[str, str, str], ...] | None = None, in_iface: str | None = None,
                  out_iface: str = E.OUTSIDE_IFACE, sport: int = E.DEFAULT_SPORT,
                  pod_cidrs: tuple[str, ...] = (), strict: bool = True,
                  ipsets: dict[str, IPSet] | None = None, ipsets_source: str = "",
                  routes: tuple[tuple[str, str], ...] = (), pod_iface: str | None = None) -> TraceResult:
    """Follow one new connection `src → dst_ip:dst_port` through `ruleset`.

    `jumps=None` means: use the built-in chains' rules in the ruleset, or
    kube-proxy's standard jumps when it has none (said in the notes).
    `plan` (a `rulegen.plan.Plan`) names the destination and the endpoints'
    nodes; without it they are unknown. `pod_cidrs` are this node's pod
    ranges (a source there is a pod on this node). `strict=False` turns
    what the walk cannot decide into assumed branches; `ipsets` are the
    node's sets by name (None: not given, so every set match is open).
    `routes` ((CIDR, interface) pairs) name where destinations leave,
    before the pod interface (`pod_iface`, else the detector's or cni0)
    and `out_iface`.
    """
    req = E.request(settings, src, dst_ip, dst_port, proto, ruleset.family)
    fs = req.settings
    notes: list[str] = []

    if jumps is None:
        rules = _rules_for(ruleset, source, ())
        if not rules.has_builtin_rules():
            jumps = _existing_jumps(rules, jump_rules(fs))
            rules = _rules_for(ruleset, source, jumps)
            notes.append("the rules hold no rules in the built-in chains; kube-proxy's standard jumps "
                         "(PREROUTING/OUTPUT → KUBE-SERVICES, POSTROUTING → KUBE-POSTROUTING, filter "
                         "INPUT/FORWARD/OUTPUT → KUBE-FIREWALL, KUBE-PROXY-FIREWALL, KUBE-NODEPORTS, "
                         "KUBE-EXTERNAL-SERVICES, KUBE-SERVICES, KUBE-FORWARD) were assumed")
    else:
        rules = _rules_for(ruleset, source, tuple(jumps))

    node_ips = tuple(fs.node_ips)
    eps = E.endpoint_nodes(plan)
    entry, iface = E.entry(req.src, req.src_default, req.dst, req.dport, req.proto, fs, plan, eps, pod_cidrs,
                           in_iface)
    entry, iface = E.from_pod_iface(entry, iface, fs, in_iface, pod_iface)
    head, tail = E.notes_for(req)
    notes = head + notes + tail

    pkt = Packet(req.proto, req.src, sport, req.dst, req.dport, iface)
    to_pod = E.local_pod_iface(fs, eps, pod_cidrs, pod_iface)
    engine = Engine(rules, node_ips, out_iface, to_pod, strict=strict, sets=ipsets, sets_source=ipsets_source,
                    route=E.router(routes))
    paths = engine.run(pkt, entry.hook)
    notes += engine.notes
    if ipsets is None and not strict and any(a.reason.endswith("pass --ipsets") for p in paths
                                             for a in p.assumptions):
        notes.append("some rules match ipsets whose members the trace was not given: their branches are "
                     "assumed; pass the node's `ipset save` with --ipsets to decide them")
    if plan is None:
        entry = replace(entry, target=_target_from_rules(paths) or entry.target)
    return E.fold(pkt, entry, paths, notes, fs, eps, source, plan is not None, BASE_CHAINS)


_RULES_CACHE: dict[tuple[int, str, tuple], tuple[Ruleset, Rules]] = {}


def _rules_for(ruleset: Ruleset, source: str, jumps: tuple) -> Rules:
    """Index a ruleset once for many traces (the lab traces every Service of one compile)."""
    key = (id(ruleset), source, jumps)
    hit = _RULES_CACHE.get(key)
    if hit is not None and hit[0] is ruleset:
        return hit[1]
    if len(_RULES_CACHE) >= 8:
        _RULES_CACHE.pop(next(iter(_RULES_CACHE)))
    rules = Rules.of(ruleset, source, jumps)
    _RULES_CACHE[key] = (ruleset, rules)
    return rules


def _existing_jumps(rules: Rules, jumps):
    out = []
    for table, chain, spec in jumps:
        try:
            target = parse_spec(spec).target
        except SpecError:
            continue
        if target in rules.chains.get(table, {}):
            out.append((table, chain, spec))
    return tuple(out)


_CAPTURE_KINDS = (" cluster IP", " external IP", " loadbalancer IP")


def _target_from_rules(paths: list[Path]) -> str | None:
    """Without the Kubernetes objects, name the destination from the comment of the rule that caught it."""
    if not paths:
        return None
    for h in paths[0].hops:
        if h.kind != "rule" or h.chain not in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES"):
            continue
        try:
            comment = parse_spec(h.rule.split(" ", 2)[2] if h.rule.count(" ") >= 2 else "").comment
        except SpecError:
            continue
        if not comment or comment.startswith("kubernetes service nodeports"):
            continue
        if h.chain == "KUBE-NODEPORTS":
            if comment.endswith(" health check node port"):
                return f"health check node port of {comment[:-len(' health check node port')]} (per the rules)"
            return f"node port of {comment} (per the rules)"
        for kind in _CAPTURE_KINDS:
            if comment.endswith(kind):
                spn = comment[:-len(kind)]
                return f"{kind.strip().replace('loadbalancer', 'load-balancer')} of {spn} (per the rules)"
        return f"{comment} (per the rules)"
    return None
