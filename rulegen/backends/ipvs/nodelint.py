"""What on an IPVS node gets in kube-proxy's way: `rulegen lint --mode ipvs --rules DIR [FILES...]`.

An IPVS node's dump (`ipvsadm -Sn`, `ipset save`, `iptables-save`) holds
kube-proxy's virtual servers, sets and iptables glue among a CNI's,
Docker's and a firewall's chains. As for an iptables node
(`backends/iptables/nodelint.py`), every Service port is traced through the
whole dump as its clients send it (the virtual servers of a compile of
FILES, or of the dump itself; a cluster IP from a pod of this node, node
ports, external and load-balancer IPs from outside), and every foreign
rule or policy that decides one of those connections in kube-proxy's place
is a finding with the Service ports it hits. The codes are the iptables
node's where the meaning is the same (RG901-RG908), and two say where IPVS
differs:

- RG909: a foreign DROP/REJECT in filter INPUT. IPVS-mode Service traffic
  is for a local address (kube-ipvs0's, or a node address), so it crosses
  INPUT before IPVS takes it (IPVS waits after filter INPUT); an
  iptables-mode node DNATs it in PREROUTING and sends it through FORWARD,
  so the same firewall is harmless there.
- RG910: a foreign DROP/REJECT after IPVS chose a real server: IPVS sends
  the packet on as the node's own (filter OUTPUT, nat POSTROUTING).

A foreign DNAT/REDIRECT of Service traffic is RG902 wherever it sits:
kube-proxy's IPVS-mode nat rules only mark NodePort traffic and return, so
a DNAT after its jump still takes the connection from IPVS.
"""

from __future__ import annotations

from typing import Any

from ...dataplane.xtables.model import BUILTIN_CHAINS
from ...dataplane.xtables.walk import Rules, is_kube_chain
from ...lint.findings import Finding
from ...lint.node import HINTS, Hit, finding, pod_client, record, record_missing_jumps, target_of
from ...settings import Settings
from ...trace.model import TraceError
from .compile import JUMP_RULES, compile_plan
from .ir import IPVSState, set_name
from .trace import TRACER, _existing_jumps, trace_state, with_ipsets

_HINTS_IPVS = {
    **HINTS,
    "RG903": "move the ACCEPT after kube-proxy's jump in nat: IPVS still takes the connections, but kube-proxy's "
             "masquerade mark is never set, so replies from other nodes' pods miss the client",
    "RG906": "accept the Service traffic explicitly (in IPVS mode it crosses filter INPUT: the cluster IPs on "
             "kube-ipvs0 and the node ports), or set the policy to ACCEPT",
    "RG909": "accept the Service traffic in INPUT before the rule (the cluster IPs and node ports kube-proxy's sets "
             "hold, e.g. -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT; firewalld: open the node-port range "
             "and put the pod network in the trusted zone), or move the rule after kube-proxy's jumps",
    "RG910": "let the node's own packets to the pod network through in filter OUTPUT (IPVS forwards as the node), "
             "or narrow the rule",
}
_PROTOS = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}


class IPVSNodeLinter:
    def lint(self, dump_path: str, ipsets_path: str | None, settings: Settings, plan: Any,
             from_files: bool) -> list[Finding]:
        state, name = TRACER.read(dump_path, f"ipv{settings.family}")
        sets_name = ""
        if ipsets_path:
            state, sets_name = with_ipsets(state, ipsets_path)
        expected = compile_plan(plan, settings) if from_files else state
        return lint_state(state, name, settings, expected, plan if from_files else None, from_files, sets_name)


NODE_LINTER = IPVSNodeLinter()


def service_ports(expected: IPVSState, settings: Settings, plan: Any) -> list[tuple[str, str, str, int, bool]]:
    """(label, protocol, address, port, from a pod) for every virtual server kube-proxy has (fwmark ones aside)."""
    from ...trace.entry import describe_target

    cluster = {e for s in expected.ipsets if s.name == set_name("KUBE-CLUSTER-IP", expected.family)
               for e in s.entries}
    out = []
    for vs in expected.virtual_servers:
        if vs.protocol not in _PROTOS:
            continue
        pod = f"{vs.address},{vs.protocol}:{vs.port}" in cluster
        label = f"{_PROTOS[vs.protocol]} {vs.address}:{vs.port}" if ":" not in vs.address \
            else f"{_PROTOS[vs.protocol]} [{vs.address}]:{vs.port}"
        if plan is not None:
            named = describe_target(vs.address, vs.port, vs.protocol, plan, frozenset(settings.node_ips))
            for kind in ("node port", "cluster IP", "external IP", "load-balancer IP", "loadbalancer IP"):
                if named.startswith(f"{kind} of "):
                    label = f"{named[len(kind) + 4:]} {kind}"
                    break
        out.append((label, vs.protocol, vs.address, vs.port, pod))
    return list(dict.fromkeys(out))


def lint_state(state: IPVSState, name: str, settings: Settings, expected: IPVSState, plan: Any,
               from_files: bool, sets_name: str = "") -> list[Finding]:
    rules = Rules.of(state.iptables, name)
    ports = service_ports(expected, settings, plan)
    hits: dict[tuple, Hit] = {}
    pod = pod_client(settings)
    for label, proto, dst, port, from_pod in ports:
        src = pod if from_pod and pod else None
        try:
            r = trace_state(state, settings, src, dst, port, proto, source=name, strict=False,
                            pod_cidrs=settings.node_pod_cidrs, sets_source=sets_name)
        except TraceError:
            continue  # a dump the tracer cannot follow at all: `rulegen trace` says why
        record(hits, label, r.paths, lambda p: _deciders(p, rules))
    record_missing_jumps(hits, _missing_jumps(rules, from_files), [p[0] for p in ports])
    return [finding(h, _HINTS_IPVS) for h in hits.values()]


def _deciders(p, rules: Rules) -> list[tuple]:
    """(code, table, chain, number, rule, what) for each hop of path P where a rule not kube-proxy's decided."""
    out = []
    pos: dict[str, tuple[str, int]] = {}
    after_ipvs = False
    for h in p.hops:
        if h.kind == "balance":
            after_ipvs, pos = True, {}
            continue
        if h.kind not in ("rule", "policy"):
            continue
        builtin = h.chain in BUILTIN_CHAINS.get(h.table, ())
        if builtin and h.kind == "rule":
            pos[h.table] = (h.chain, h.number)
        bottom, at = pos.get(h.table, (h.chain, 0))
        if h.kind == "policy":
            if h.verdict.endswith("DROP"):
                out.append(("RG906", h.table, h.chain, 0, f":{h.chain} DROP",
                            "(the chain's policy) drops them: no rule there accepted them"
                            + (" (IPVS-mode Service traffic crosses INPUT)" if h.chain == "INPUT" else "")))
            continue
        later = [n for n in rules.kube_jumps(h.table, bottom) if n > at]
        before = bool(later) or not rules.kube_jumps(h.table, bottom)
        where = (f"ahead of kube-proxy's jump at {h.table} {bottom} rule {later[0]}" if later
                 else f"with no kube-proxy jump in {h.table} {bottom}" if before
                 else f"after kube-proxy's jumps in {h.table} {bottom}")
        v = h.verdict
        if is_kube_chain(h.chain):
            if v == "ACCEPT" and h.table == "filter" and rules.policies.get(("filter", bottom)) == "DROP":
                out.append(("RG907", "filter", bottom, 0, f":{bottom} DROP",
                            f"(the chain's policy) is kept open for them only by kube-proxy's ACCEPT ({h.rule})"))
            continue
        verb = v.split(":")[0].split(" ")[0]
        if v.startswith(("DROP", "REJECT")):
            if after_ipvs:
                out.append(("RG910", h.table, h.chain, h.number, h.rule,
                            f"{verb}s them after IPVS chose a real server (the packet IPVS sends on as the node's "
                            f"own, in {h.table} {bottom})"))
            elif h.table == "filter" and bottom == "INPUT":
                out.append(("RG909", h.table, h.chain, h.number, h.rule,
                            f"{verb}s them in filter INPUT, {where}, before IPVS takes them"))
            else:
                out.append(("RG901", h.table, h.chain, h.number, h.rule, f"{verb}s them, {where}"))
        elif v.startswith(("DNAT ", "REDIRECT ")) and h.table == "nat" and not after_ipvs:
            out.append(("RG902", h.table, h.chain, h.number, h.rule,
                        f"sends them elsewhere ({v}), {where}: IPVS never sees them"))
        elif v == "ACCEPT" and before and h.table == "nat" and bottom in ("PREROUTING", "OUTPUT"):
            out.append(("RG903", h.table, h.chain, h.number, h.rule,
                        f"ACCEPTs them {where}: nat {bottom} ends there, so kube-proxy never marks them for "
                        "masquerade"))
        elif v == "ACCEPT" and before and h.table == "filter" and later:
            out.append(("RG904", h.table, h.chain, h.number, h.rule,
                        f"ACCEPTs them {where}: kube-proxy's filter rules there (KUBE-IPVS-FILTER, source "
                        "ranges) are skipped"))
        elif v.startswith("RETURN (end of the built-in chain") and builtin and later:
            out.append(("RG905", h.table, h.chain, h.number, h.rule,
                        f"ends {h.table} {h.chain} {where}: the policy decides, kube-proxy's rules are skipped"))
    return out


def _missing_jumps(rules: Rules, from_files: bool):
    """kube-proxy's IPVS-mode jumps a built-in chain lacks (without FILES: only those whose target the dump has)."""
    want = JUMP_RULES if from_files else _existing_jumps(rules, JUMP_RULES)
    out = []
    for table, chain, spec in want:
        target = target_of(spec)
        have = rules.chains.get(table, {}).get(chain, [])
        if target and not any(target_of(s) == target for s in have):
            out.append((table, chain, spec))
    return out
