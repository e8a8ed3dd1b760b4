"""trace/compare.py: two traces of one scenario, and the aspects in which they differ.

The traces come from the iptables tracer on two compiles of the same
input that behave differently on purpose (another policy, masqueradeAll,
another endpoint set), so each aspect is seen to differ for a real reason.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from rulegen.trace import trace_compiled
from rulegen.trace.compare import behaviour, compare, compare_outcomes, percent
from rulegen.trace.scenarios import Outcome, enumerate_scenarios, trace_scenarios

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}, "spec": {"podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.56.10"}]}}
CONFIG = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
          "clusterCIDR": "10.244.0.0/16"}


def objs(policy="Cluster", ips=("10.244.1.11", "10.244.1.12", "10.244.2.21"), affinity=False):
    spec = {"type": "NodePort", "clusterIP": "10.96.0.10", "externalTrafficPolicy": policy,
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}]}
    if affinity:
        spec["sessionAffinity"] = "ClientIP"
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": spec}
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
          "metadata": {"name": "web-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
          "addressType": "IPv4", "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
          "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                         "nodeName": "node-a" if ip.startswith("10.244.1.") else "node-b"} for ip in ips]}
    return [svc, sl, NODE, CONFIG] if ips else [svc, NODE, CONFIG]


@pytest.fixture(scope="module")
def base(compile_objs):
    return compile_objs(objs())


def nodeport(c, src=None):
    return trace_compiled(c, src, "192.168.56.10", 30080, "tcp", pod_cidrs=c.settings.node_pod_cidrs)


def test_the_same_behaviour_has_no_difference(base, compile_objs):
    again = compile_objs(objs())
    assert compare(nodeport(base), nodeport(again)) == ()
    # Another route to the same behaviour is no difference either: hops are not compared.
    assert compare(nodeport(base), nodeport(base, "198.51.100.7")) == ()


def test_a_local_policy_changes_destinations_and_masquerade(base, compile_objs):
    local = compile_objs(objs("Local"))
    d = compare(nodeport(base), nodeport(local))
    assert [x.aspect for x in d] == ["destinations", "masquerade"]
    assert d[0].a == "10.244.1.11:8080 33.3%, 10.244.1.12:8080 33.3%, 10.244.2.21:8080 33.3%"
    assert d[0].b == "10.244.1.11:8080 50%, 10.244.1.12:8080 50%"
    assert (d[1].a, d[1].b) == ("masqueraded", "client address kept")  # on the endpoints both reach


def test_masquerade_all_changes_only_masquerade(compile_objs):
    plain, every = compile_objs(objs()), compile_objs(objs(), {"masquerade_all": True})
    pod = "10.244.1.200"
    a = trace_compiled(plain, pod, "10.96.0.10", 80, "tcp", pod_cidrs=("10.244.1.0/24",))
    b = trace_compiled(every, pod, "10.96.0.10", 80, "tcp", pod_cidrs=("10.244.1.0/24",))
    d = compare(a, b)
    assert [(x.aspect, x.a, x.b) for x in d] == [("masquerade", "client address kept", "masqueraded")]


def test_no_endpoints_changes_the_verdict(base, compile_objs):
    empty = compile_objs(objs(ips=()))
    d = compare(nodeport(base), nodeport(empty))
    assert [(x.aspect, x.a, x.b) for x in d] == [
        ("verdict", "DNAT", "REJECT"),
        ("destinations", "10.244.1.11:8080 33.3%, 10.244.1.12:8080 33.3%, 10.244.2.21:8080 33.3%", "no endpoint")]


def test_affinity_is_an_aspect(base, compile_objs):
    sticky = compile_objs(objs(affinity=True))
    d = compare(nodeport(base), nodeport(sticky))
    assert [(x.aspect, x.a, x.b) for x in d] == [("affinity", "no session affinity", "affinity 10800 s")]


def test_a_missing_trace_is_a_difference_of_its_own(base):
    r = nodeport(base)
    assert compare(None, None) == ()
    (d,) = compare(r, None, None, "rule 3: unknown match")
    assert (d.aspect, d.a, d.b) == ("trace", "traced", "not traced: rule 3: unknown match")


def test_behaviour_is_exact(base):
    b = behaviour(nodeport(base))
    assert b.verdict == "DNAT" and b.masquerade_any
    assert dict(b.shares) == {f"{ip}:8080": Fraction(1, 3) for ip in ("10.244.1.11", "10.244.1.12", "10.244.2.21")}
    assert [percent(Fraction(x)) for x in ("1/3", "1/2", "1", "2/3", "1/8")] == ["33.3%", "50%", "100%", "66.7%",
                                                                                 "12.5%"]


def test_outcomes_pair_by_scenario_key(base, compile_objs):
    local = compile_objs(objs("Local"))
    sc = enumerate_scenarios(base.plan, base.settings)
    a, b = trace_scenarios(base, sc.scenarios), trace_scenarios(local, sc.scenarios)
    diffs = compare_outcomes(a, b)
    # Local policy: outside clients reach only node-a's endpoints, with their address kept. Pods
    # (here or elsewhere: the cluster CIDR detector counts both) are sent to every endpoint either
    # way, but no longer masqueraded; the node and localhost are masqueraded either way.
    got = {(k[1], k[2]): [x.aspect for x in d] for k, d in diffs.items()}
    assert got == {("outside", "node-port"): ["destinations", "masquerade"],
                   ("pod-here", "node-port"): ["masquerade"], ("pod-elsewhere", "node-port"): ["masquerade"]}
    assert compare_outcomes(a, a) == {}
    only_a = compare_outcomes(a, b[:-1])
    assert only_a[a[-1].scenario.key][0].b == "not traced"
    only_b = compare_outcomes(a[:-1], b)
    assert only_b[b[-1].scenario.key][0].a == "not traced"
    broken = [Outcome(o.scenario, None, "cannot read") for o in b]
    assert {d[0].aspect for d in compare_outcomes(a, broken).values()} == {"trace"}
