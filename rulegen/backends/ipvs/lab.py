"""IPVS mode's expectations for `rulegen lab`: each probe's outcome is what IPVS mode's tracer says.

The lab plans a path's outcome by kube-proxy's iptables logic, and IPVS
mode differs from it on several paths: a NodePort with
externalTrafficPolicy Local and no local endpoint falls back to the
cluster's endpoints, 127.0.0.1 NodePorts are not captured, and a virtual
server without real servers drops instead of rejecting. Rather than a
second copy of those rules, every probe is traced through the compile
(the glue, IPVS's scheduling, the glue's masquerade) and the probe takes
the tracer's verdict, real servers and masquerade. The real servers are
those the scheduler gives a share; the lab's chi-square test of equal
shares fits rr, and wrr with the equal weights kube-proxy gives.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...trace import trace_compiled

_NEGATIVE = {"DROP": "drop", "REJECT": "reject"}


def lab_probes(compiled: Any, probes: list[Any], requests: int, notes: list[str]) -> list[Any]:
    from ...lab.probes import ANSWER_TIMEOUT, NEGATIVE_PROBES, NEGATIVE_TIMEOUT

    s = compiled.settings
    pods = next((tuple(n.pod_cidrs) for n in compiled.inputs.nodes if n.name == s.hostname), ())
    out = []
    changed = 0
    for p in probes:
        t = trace_compiled(compiled, p.src_ip, p.dst, p.port, p.proto, pod_cidrs=pods)
        shares = t.shares()
        if t.verdict in _NEGATIVE:
            expect, why, eps, masq = _NEGATIVE[t.verdict], f"IPVS mode: {t.verdict}", (), None
        elif shares:
            eps = tuple(ep for ep, share in shares.items() if share is None or share > 0)
            expect, masq = "answer", ("node" if t.masquerade else "client")
            why = f"IPVS mode: scheduler {s.scheduler} over {len(eps)} real server(s)"
        else:  # nothing captured it: no virtual server on this address, nothing listens
            expect, why, eps, masq = "refuse", "IPVS mode: no virtual server here, nothing listens", (), None
        if (expect, eps, masq) == (p.expect, p.endpoints, p.masq):
            out.append(p)
            continue
        changed += 1
        neg = expect != "answer"
        count = min(requests, NEGATIVE_PROBES) if neg else requests
        out.append(replace(p, expect=expect, why=why, endpoints=eps, masq=masq, count=count,
                           affinity=p.affinity and not neg, timeout=NEGATIVE_TIMEOUT if neg else ANSWER_TIMEOUT))
    if changed:
        notes.append(f"IPVS mode: {changed} path(s) expected otherwise than in iptables mode (from IPVS mode's tracer)")
    return out
