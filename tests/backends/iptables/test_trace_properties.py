"""The tracer against the endpoint selection, over generated clusters (hypothesis).

For every service port of a random cluster: a pod's connection to the ClusterIP and an outside
client's connection to the NodePort end where `selection.categorize` says they must (each chosen
endpoint with chance exactly 1/N; REJECT without endpoints; DROP when a Local policy finds no local
endpoint), masquerade follows masqueradeAll / the traffic policy, the chances add up to 1, and the
tracer never refuses a rule the compiler wrote.
"""

from __future__ import annotations

from fractions import Fraction

from clustergen import cluster, settings_flags
from hypothesis import HealthCheck, given, settings

from rulegen.trace import trace_compiled

POD = {4: "10.244.0.177", 6: "fd00:10:244::177"}  # in the generated pod CIDRs, never an endpoint
OUTSIDE = {4: "198.18.0.10", 6: "2001:db8::10"}
NODE_IP = {4: "192.168.0.10", 6: "fd00:192::10"}


def even(eps) -> dict[str, Fraction]:
    return {e.ep: Fraction(1, len(eps)) for e in eps}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster(), settings_flags)
def test_traces_agree_with_endpoint_selection(compile_objs, objs, flags):
    c = compile_objs(objs, flags)
    fam = c.settings.family
    for p in c.plan.ports:
        # --- a pod on this node to the ClusterIP
        r = trace_compiled(c, POD[fam], p.cluster_ip, p.port.port, p.proto)
        assert sum(r.outcomes.values()) == 1
        if not p.sel.has_any:
            assert r.verdict == "REJECT", p.spn
        elif not p.has_internal:
            assert r.verdict == "DROP", p.spn
        else:
            eps = p.sel.local if p.int_local else p.sel.cluster
            assert r.verdict == "DNAT" and r.shares() == even(eps), p.spn
            assert r.masquerade == c.settings.masquerade_all, p.spn
            if p.affinity:
                assert {d.affinity for d in r.destinations} == {p.affinity}
        # --- an outside client to the NodePort on the node's address
        if not p.node_port:
            continue
        r = trace_compiled(c, OUTSIDE[fam], NODE_IP[fam], p.node_port, p.proto)
        assert sum(r.outcomes.values()) == 1
        if not p.sel.has_any:
            assert r.verdict == "REJECT", p.spn
        elif not p.has_external:
            assert r.verdict == "DROP", p.spn
        else:
            eps = p.sel.local if p.ext_local else p.sel.cluster
            assert r.verdict == "DNAT" and r.shares() == even(eps), p.spn
            assert r.masquerade == (not p.ext_local), p.spn  # Local keeps the client address
            for d in r.destinations:  # an endpoint without nodeName runs on an unknown node
                assert d.local == (None if d.node is None else d.node == c.settings.hostname)
