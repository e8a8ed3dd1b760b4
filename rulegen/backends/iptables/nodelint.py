"""What on a node gets in kube-proxy's way: `rulegen lint --rules DUMP [FILES...]` for an iptables node.

A node's `iptables-save` holds kube-proxy's chains among a CNI's, Docker's
and a firewall's. This module finds the rules outside kube-proxy's chains
that decide Service connections instead of kube-proxy, by tracing them: the
Service ports come from the kube-proxy rules (a compile of FILES, or, with
none, the dump's own KUBE-SERVICES and KUBE-NODEPORTS), each is traced
through the whole dump as its clients send it (a pod of this node to a
cluster IP, an outside client to node ports, external and load-balancer
IPs), and every rule or policy that decides one of those connections in
kube-proxy's place is a finding, with the Service ports it hits:

- RG901 a foreign DROP or REJECT stops Service connections;
- RG902 a foreign DNAT/REDIRECT ahead of kube-proxy's jump takes them;
- RG903 a foreign ACCEPT in nat ahead of kube-proxy's jump: no Service DNAT;
- RG904 a foreign ACCEPT in filter ahead of kube-proxy's jump: kube-proxy's
  filter rules (no-endpoint REJECTs, source ranges) are skipped;
- RG905 a RETURN in a built-in chain ahead of kube-proxy's jump;
- RG906 a built-in chain's policy DROP drops Service connections no rule
  accepted;
- RG907 a policy DROP that only kube-proxy's own ACCEPT keeps open for them;
- RG908 kube-proxy's jump from a built-in chain is missing (static: the
  jumps a compile of these settings installs).

With `--ipsets` the node's sets decide `-m set`; without, the trace's
assumed branches count too, and the finding says which assumption it
rests on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...dataplane.xtables.model import BUILTIN_CHAINS, Ruleset
from ...dataplane.xtables.spec import SpecError, parse_spec
from ...dataplane.xtables.walk import index_key, is_kube_chain
from ...lint.findings import Finding
from ...lint.node import Hit, finding, pod_client, record, record_missing_jumps, target_of
from ...settings import Settings
from ...trace.model import TraceError
from .compile import compile_plan, jump_rules
from .trace import _existing_jumps, _rules_for, read_ipsets, trace_ruleset

_KINDS = (" cluster IP", " external IP", " loadbalancer IP")


@dataclass(frozen=True)
class ServicePort:
    label: str  # "ns/name:port" and the kind of address, as kube-proxy's comments say
    proto: str
    dst: str
    port: int
    from_pod: bool


def service_ports(rs: Ruleset, settings: Settings) -> list[ServicePort]:
    """The Service ports kube-proxy's nat rules in RS capture, with the address a client sends to."""
    out: list[ServicePort] = []
    node = settings.node_ips[0] if settings.node_ips else None
    for t in rs.tables:
        if t.name != "nat":
            continue
        by = t.by_chain()
        for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS"):
            for spec in by.get(chain, ()):
                key = index_key(spec)
                if key is None:
                    continue
                try:
                    comment = parse_spec(spec).comment or ""
                except SpecError:
                    continue
                proto, addr, port = key
                if chain == "KUBE-SERVICES" and addr is not None:
                    kind = next((k for k in _KINDS if comment.endswith(k)), None)
                    if kind is not None:
                        out.append(ServicePort(comment, proto, addr, port, kind == " cluster IP"))
                elif chain == "KUBE-NODEPORTS" and addr is None and node and comment \
                        and not comment.endswith("health check node port"):
                    out.append(ServicePort(f"{comment} node port", proto, node, port, False))
    return list(dict.fromkeys(out))


class NodeLinter:
    def lint(self, dump_path: str, ipsets_path: str | None, settings: Settings, plan: Any,
             from_files: bool) -> list[Finding]:
        from .trace import TRACER

        rs, name = TRACER.read(dump_path, f"ipv{settings.family}")
        sets, sets_name = read_ipsets(ipsets_path) if ipsets_path else (None, "")
        expected = compile_plan(plan, settings) if from_files else rs
        return lint_dump(rs, name, settings, expected, sets, sets_name, from_files)


NODE_LINTER = NodeLinter()


def lint_dump(rs: Ruleset, name: str, settings: Settings, expected: Ruleset, sets: dict | None, sets_name: str,
              from_files: bool) -> list[Finding]:
    rules = _rules_for(rs, name, ())
    ports = service_ports(expected, settings)
    hits: dict[tuple, Hit] = {}
    pod = pod_client(settings)
    for sp in ports:
        src = pod if sp.from_pod and pod else None
        try:
            r = trace_ruleset(rs, settings, src, sp.dst, sp.port, sp.proto, source=name, strict=False,
                              ipsets=sets, ipsets_source=sets_name, pod_cidrs=settings.node_pod_cidrs)
        except TraceError:
            continue  # a dump the tracer cannot follow at all: `rulegen trace` says why
        record(hits, sp.label, r.paths, lambda p: _deciders(p, rules))
    record_missing_jumps(hits, _missing_jumps(rules, settings, from_files), [sp.label for sp in ports])
    return [finding(h) for h in hits.values()]


def _deciders(p, rules) -> list[tuple]:
    """(code, table, chain, number, rule, what) for each hop of path P where a rule not kube-proxy's decided."""
    out = []
    pos: dict[str, tuple[str, int]] = {}  # table → (built-in chain, number of the rule the walk is under)
    for h in p.hops:
        if h.kind not in ("rule", "policy"):
            continue
        builtin = h.chain in BUILTIN_CHAINS.get(h.table, ())
        if builtin and h.kind == "rule":
            pos[h.table] = (h.chain, h.number)
        bottom, at = pos.get(h.table, (h.chain, 0))
        if h.kind == "policy":
            if h.verdict.endswith("DROP"):
                out.append(("RG906", h.table, h.chain, 0, f":{h.chain} DROP",
                            "(the chain's policy) drops them: no rule there accepted them"))
            continue
        later = [n for n in rules.kube_jumps(h.table, bottom) if n > at]
        before = bool(later) or not rules.kube_jumps(h.table, bottom)
        where = (f"ahead of kube-proxy's jump at {h.table} {bottom} rule {later[0]}" if later
                 else f"with no kube-proxy jump in {h.table} {bottom}")
        v = h.verdict
        if is_kube_chain(h.chain):
            if v == "ACCEPT" and h.table == "filter" and rules.policies.get(("filter", bottom)) == "DROP":
                out.append(("RG907", "filter", bottom, 0, f":{bottom} DROP",
                            f"(the chain's policy) is kept open for them only by kube-proxy's ACCEPT "
                            f"({h.rule})"))
            continue
        if v.startswith(("DROP", "REJECT")):
            out.append(("RG901", h.table, h.chain, h.number, h.rule,
                        f"{v.split(':')[0].split(' ')[0]}s them" + (f", {where}" if before else
                                                                     ", after kube-proxy's rules let them on")))
        elif v.startswith(("DNAT ", "REDIRECT ")) and h.table == "nat" and before:
            out.append(("RG902", h.table, h.chain, h.number, h.rule,
                        f"sends them elsewhere ({v}), {where}: kube-proxy's rules never see them"))
        elif v == "ACCEPT" and before and h.table == "nat" and bottom in ("PREROUTING", "OUTPUT"):
            out.append(("RG903", h.table, h.chain, h.number, h.rule,
                        f"ACCEPTs them {where}: nat {bottom} ends there, so no Service DNAT happens"))
        elif v == "ACCEPT" and before and h.table == "filter" and later:
            out.append(("RG904", h.table, h.chain, h.number, h.rule,
                        f"ACCEPTs them {where}: kube-proxy's filter rules there (REJECT without endpoints, "
                        "source ranges) are skipped"))
        elif v.startswith("RETURN (end of the built-in chain") and builtin and later:
            out.append(("RG905", h.table, h.chain, h.number, h.rule,
                        f"ends {h.table} {h.chain} {where}: the policy decides, kube-proxy's rules are skipped"))
    return out


def _missing_jumps(rules, settings: Settings, from_files: bool):
    """kube-proxy's jumps a built-in chain lacks (without FILES: only those whose target the dump has)."""
    want = jump_rules(settings)
    if not from_files:
        want = _existing_jumps(rules, want)
    out = []
    for table, chain, spec in want:
        try:
            target = parse_spec(spec).target
        except SpecError:
            continue
        have = rules.chains.get(table, {}).get(chain, [])
        if not any(target_of(s) == target for s in have):
            out.append((table, chain, spec))
    return out
