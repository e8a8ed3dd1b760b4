"""What on an nftables node gets in kube-proxy's way: `rulegen lint --mode nftables --rules RULESET [FILES...]`.

A node's `nft list ruleset` holds kube-proxy's table among firewalld's,
Docker's, a CNI's or a hand-made one. nftables differs from iptables in
what can shadow kube-proxy: every table has its own base chains, and each
base chain on a hook sees the packet in priority order. An accept ends
only its own base chain (the packet goes on to the next one), so another
table's accept never skips kube-proxy's rules and is no finding here; a
drop or reject anywhere on the hook ends the packet, and kube-proxy's own
accepts do not keep another table's base chain open. As in iptables mode
(`backends/iptables/nodelint.py`), the rules are found by tracing: the
Service ports come from kube-proxy's maps (`service-ips`,
`service-nodeports`) of a compile of FILES or, with none, of the dump's own
kube-proxy table; each is traced through the whole ruleset as its clients
send it (a pod of this node to a cluster IP, an outside client to node
ports and external IPs), and every foreign rule or policy that decides one
of those connections in kube-proxy's place is a finding, with the Service
ports it hits:

- RG911 a foreign drop or reject stops Service connections (its base chain,
  hook and priority named, and whether it runs before kube-proxy's);
- RG912 a foreign DNAT in a nat chain that runs before kube-proxy's on the
  hook: the connection is translated there, and kube-proxy's nat chain is
  not consulted for it;
- RG913 a foreign base chain's policy drop drops Service connections none of
  its rules accepted;
- RG914 kube-proxy's table or one of its base chains is missing (or on
  another hook or priority) (static: the base chains a compile installs);
- RG915 a table iptables-nft manages holds xtables matches nft cannot spell:
  its effect is not checked here (lint the node's iptables-save);
- RG916 a foreign `notrack` takes Service connections out of conntrack, so
  no nat chain (kube-proxy's DNAT included) is consulted for them. This is
  nftables' one way for another table to skip kube-proxy's rules without
  dropping: where iptables mode has an ACCEPT ahead of kube-proxy's jump.

What the trace cannot decide counts too; the finding then says which
assumption it rests on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ...dataplane.nft.ruleset import NodeTable
from ...dataplane.nft.state import TableState
from ...diagnostics import UsageError
from ...lint.findings import Finding
from ...lint.node import MAX_NAMED, Hit, pod_client
from ...settings import Settings
from ...trace.model import TraceError
from . import dump as D
from .compile import BASE_CHAINS, compile_plan
from .trace import _spn, state_of, trace_saved

_REF = re.compile(r"\b(?:jump|goto) ([^ ,}]+)")
_SETREF = re.compile(r"@([^ ,}]+)")


@dataclass(frozen=True)
class ServicePort:
    label: str  # "ns/name:port cluster IP" ...
    proto: str
    dst: str
    port: int
    from_pod: bool


def service_ports(table: TableState | None, settings: Settings) -> list[ServicePort]:
    """The Service ports kube-proxy's maps in TABLE capture, with the address a client sends to."""
    if table is None:
        return []
    out: list[ServicePort] = []
    node = settings.node_ips[0] if settings.node_ips else None
    ips = table.sets.get("service-ips")
    for e in (ips.elements.values() if ips else ()):
        words = " ".join(e.value).split()
        if len(e.key) != 3 or len(words) != 2:
            continue
        addr, proto, port = e.key
        chain = words[1]
        spn = _spn(chain)
        if spn is None or not port.isdigit():
            continue
        pod = chain.startswith(("service-", "local-"))
        out.append(ServicePort(f"{spn} {'cluster IP' if pod else 'external IP'}", proto, addr, int(port), pod))
    nps = table.sets.get("service-nodeports")
    for e in (nps.elements.values() if nps and node else ()):
        words = " ".join(e.value).split()
        if len(e.key) != 2 or len(words) != 2:
            continue
        proto, port = e.key
        spn = _spn(words[1])
        if spn is None or not port.isdigit():
            continue
        out.append(ServicePort(f"{spn} node port", proto, node, int(port), False))
    return sorted(set(out), key=lambda s: (s.label, s.dst, s.port))


def _bases_of(t: NodeTable) -> dict[str, set[str]]:
    """chain → the base chains it is reached from (jump, goto, verdict maps), in table T."""
    targets = {name: {m.group(1) for e in s.elements.values() for m in _REF.finditer(" ".join(e.value))}
               for name, s in t.state.sets.items() if s.is_map}
    calls: dict[str, set[str]] = {}
    for name, c in t.state.chains.items():
        out = calls[name] = set()
        for r in c.rules:
            out.update(m.group(1) for m in _REF.finditer(r.rule))
            for ref in _SETREF.findall(r.rule):
                out.update(targets.get(ref, ()))
    out: dict[str, set[str]] = {}
    for base, *_ in t.base_chains():
        todo, seen = [base], {base}
        while todo:
            c = todo.pop()
            out.setdefault(c, set()).add(base)
            for n in calls.get(c, ()):
                if n not in seen and n in calls:
                    seen.add(n)
                    todo.append(n)
    return out


class NodeLinter:
    def lint(self, dump_path: str, ipsets_path: str | None, settings: Settings, plan: Any,
             from_files: bool) -> list[Finding]:
        if ipsets_path is not None:
            raise UsageError("--ipsets: an nftables node's sets are in its `nft list ruleset`; --ipsets is for "
                             "iptables and IPVS nodes")
        try:
            text = open(dump_path, encoding="utf-8").read() if dump_path != "-" else __import__("sys").stdin.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{dump_path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
        d = D.read_text(text, dump_path, f"ipv{settings.family}", allow_none=True)
        expected = state_of(compile_plan(plan, settings)) if from_files else d.tables.get(settings.family)
        return lint_dump(d, dump_path, settings, expected, from_files)


NODE_LINTER = NodeLinter()


def lint_dump(d: D.Dump, name: str, settings: Settings, expected: TableState | None,
              from_files: bool) -> list[Finding]:
    fam = settings.family
    ports = service_ports(expected, settings)
    everyone = [sp.label for sp in ports]
    hits: dict[tuple, Hit] = {}
    tables = {t.where: t for t in d.node_tables(fam)}
    kube = d.tables.get(fam)
    kube_where = f"{'ip6' if fam == 6 else 'ip'} {D.TABLE}"
    if kube is not None:
        pod = pod_client(settings)
        reach = {w: _bases_of(t) for w, t in tables.items()}
        kube_bases = {(c.decl.hook, c.decl.type): (n, c.decl.priority) for n, c in kube.chains.items()
                      if c.decl.hook is not None}
        for sp in ports:
            src = pod if sp.from_pod and pod else None
            try:
                r = trace_saved(d, settings, src, sp.dst, sp.port, sp.proto, source=name,
                                pod_cidrs=settings.node_pod_cidrs)
            except (TraceError, UsageError):
                continue  # `rulegen trace` says why
            for p in r.paths:
                for h in _deciders(p, tables, reach, kube_bases):
                    hit = hits.setdefault(h[:4], Hit(*h))
                    hit.services[sp.label] = None
                    if p.assumptions:
                        hit.assuming.update(a.text() for a in p.assumptions if a.holds)
                    else:
                        hit.unconditional = True
    for h in _missing_bases(kube, kube_where, expected if from_files else None):
        h.services.update(dict.fromkeys(everyone))
        h.unconditional = True
        hits[(h.code, h.table, h.chain, h.rule)] = h
    for t in tables.values():
        if t.xt:
            h = Hit("RG915", t.where, "", 0, t.xt[0], f"(and {len(t.xt) - 1} more) " if len(t.xt) > 1 else "")
            h.what += ("is an xtables match nft cannot spell: iptables-nft manages this table, and what its rules do to "
                       "Service traffic is not checked here")
            h.services.update(dict.fromkeys(everyone))
            h.unconditional = True
            hits[(h.code, t.where, "", 0)] = h
    return [_finding(h) for h in hits.values()]


def _deciders(p, tables: dict[str, NodeTable], reach, kube_bases) -> list[tuple]:
    """(code, table, chain, number, rule, what) for each hop of path P where a foreign table decided."""
    out = []
    if p.verdict in ("DROP", "REJECT"):
        last = next((h for h in reversed(p.hops) if h.kind in ("rule", "policy", "assume")), None)
        if last is None or last.table not in tables:
            return out  # kube-proxy's own (a Service without endpoints) or none
        t = tables[last.table]
        if last.kind == "policy":
            out.append(("RG913", last.table, last.chain, 0, last.rule,
                        "drops them: none of its rules accepted them, and kube-proxy's accepts in its own table do "
                        "not keep another table's base chain open"))
            return out
        where = _where(t, last.chain, reach, kube_bases)
        verb = "drops" if p.verdict == "DROP" else "rejects"
        out.append(("RG911", last.table, last.chain, last.number, last.rule, f"{verb} them{where}"))
        return out
    skipped = any(n.startswith(f"ip{'6' if ':' in p.packet.dst else ''} kube-proxy chain nat-") and
                  "is not consulted" in n for n in p.notes)
    for h in p.hops:
        if h.kind == "rule" and h.table in tables and "notrack:" in h.verdict and skipped:
            out.append(("RG916", h.table, h.chain, h.number, h.rule,
                        "takes them out of conntrack: no nat chain is consulted for them, so kube-proxy's Service "
                        "DNAT never happens"))
        if h.kind == "rule" and h.table in tables and h.verdict.startswith("DNAT ") \
                and any(n.startswith("DNAT by ") and "is not consulted" in n for n in p.notes):
            out.append(("RG912", h.table, h.chain, h.number, h.rule,
                        f"sends them elsewhere ({h.verdict}) in a nat chain that runs before kube-proxy's: "
                        "kube-proxy's nat chain is not consulted for them"))
    return out


def _where(t: NodeTable, chain: str, reach, kube_bases) -> str:
    bases = {b[0]: b for b in t.base_chains()}
    names = sorted(reach.get(t.where, {}).get(chain, ()))
    if not names:
        return ""
    parts = []
    for n in names:
        _, type_, hook, prio = bases[n]
        kp = kube_bases.get((hook, type_)) or next((v for (h, _), v in kube_bases.items() if h == hook), None)
        rel = ""
        if kp is not None:
            from ...dataplane.nft.model import parse_priority
            kprio = parse_priority(kp[1])
            rel = (f", before kube-proxy's {kp[0]} ({kprio})" if prio < kprio else
                   f", after kube-proxy's {kp[0]} ({kprio}), whose accept does not keep it open" if prio > kprio else
                   f", at the same priority as kube-proxy's {kp[0]} (the one registered last runs first)")
        parts.append(f"{t.where} {n} (hook {hook}, priority {prio}{rel})")
    return " in base chain " + "; ".join(parts)


def _missing_bases(kube: TableState | None, where: str, expected: TableState | None) -> list[Hit]:
    want = [(n, c.decl.type, c.decl.hook, c.decl.priority) for n, c in expected.chains.items()
            if c.decl.hook is not None] if expected is not None else list(BASE_CHAINS)
    if kube is None:
        return [Hit("RG914", where, "", 0, f"table {where}",
                     "is missing from the ruleset: no Service traffic meets kube-proxy's rules")]
    from ...dataplane.nft.model import parse_priority
    out = []
    for name, type_, hook, prio in want:
        c = kube.chains.get(name)
        if c is None or c.decl.hook is None:
            out.append(Hit("RG914", where, name, 0, f"chain {name} {{ type {type_} hook {hook} priority {prio}; }}",
                            "is missing, so no Service traffic there meets kube-proxy's rules"))
        elif (c.decl.type, c.decl.hook, parse_priority(c.decl.priority)) != (type_, hook, parse_priority(prio)):
            out.append(Hit("RG914", where, name, 0,
                            f"chain {name} {{ type {c.decl.type} hook {c.decl.hook} priority {c.decl.priority}; }}",
                            f"is not where kube-proxy puts it (type {type_} hook {hook} priority {prio})"))
    return out


_HINTS = {
    "RG911": "accept Service traffic in that table before the rule (e.g. `ct status dnat accept` for what kube-proxy "
             "DNATs, and the node ports), or narrow the rule to traffic no Service uses; an accept in kube-proxy's "
             "table does not help: every table's base chain decides on its own",
    "RG912": "give the other DNAT a port no Service uses (NodePorts are 30000-32767), or give its nat chain a "
             "priority after kube-proxy's (dstnat, -100)",
    "RG913": "accept the Service traffic in that chain (`ct status dnat accept`, the pod network, the node ports), "
             "or set its policy to accept",
    "RG914": "restart kube-proxy (it re-creates its base chains on its first sync) and find what deleted them "
             "(a firewall reload that flushes the whole ruleset: `flush ruleset`)",
    "RG916": "exempt Service traffic from the notrack rule (cluster IPs, node ports, external IPs), or drop it: "
             "untracked connections are never NATed",
    "RG915": "lint the node's iptables-save (`rulegen lint --rules iptables.save`, iptables mode) for that table's "
             "rules, or move them to nftables",
}


def _finding(h: Hit) -> Finding:
    names = list(h.services)
    shown = ", ".join(names[:MAX_NAMED]) + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")
    hit = f"it hits {len(names)} Service port(s): {shown}" if names else "no Service port is known (give FILES)"
    if h.code == "RG915" and names:
        hit = f"Service ports that may pass it: {shown}"
    message = f"{h.rule} {h.what}; {hit}"
    if not h.unconditional and h.assuming:
        message += f" (if {'; '.join(sorted(h.assuming))})"
    name = f"{h.table}" + (f" chain {h.chain}" if h.chain else "") + (f" rule {h.number}" if h.number else
                                                                                " policy" if h.code == "RG913" else "")
    return Finding(h.code, "nftables", name, message, _HINTS[h.code])
