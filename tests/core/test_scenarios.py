"""trace/scenarios.py: every (Service port, client kind, entry point) of an input, and their traces.

The enumeration is what `rulegen explain` draws and `rulegen migrate`
compares, so it is checked on its own: which clients meet which entry
points, the invented addresses (colliding with nothing), the keys (the
same whatever the mode), the filters, and what the traces of the classic
NodePort example say.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from rulegen import backends
from rulegen.backends.base import Backend
from rulegen.diagnostics import UsageError
from rulegen.pipeline import compile_files
from rulegen.trace.model import TraceError
from rulegen.trace.scenarios import (
    CLUSTER_IP,
    LOCALHOST,
    LOCALHOST_NODE_PORT,
    NODE,
    NODE_PORT,
    OTHER_PORT,
    OUTSIDE,
    POD_ELSEWHERE,
    POD_HERE,
    enumerate_scenarios,
    other_port,
    parse_services,
    select_ports,
    trace_scenarios,
)

ROOT = Path(__file__).resolve().parents[2]
WEB = str(ROOT / "examples" / "web-frontend")


@pytest.fixture(scope="module")
def web():
    return compile_files([WEB], {})


def _svc(name, ns="default", **spec):
    base = {"clusterIP": spec.pop("clusterIP", "10.96.0.10"), "ports": spec.pop("ports", [
        {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}])}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": base}


def _slice(svc, ips, ns="default", node="node-a", port=8080):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc}-x", "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv6" if ":" in ips[0] else "IPv4",
            "ports": [{"name": "http", "protocol": "TCP", "port": port}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": node} for ip in ips]}


NODE_A = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
          "spec": {"podCIDRs": ["10.244.1.0/24"]},
          "status": {"addresses": [{"type": "InternalIP", "address": "192.168.56.10"},
                                   {"type": "InternalIP", "address": "192.168.57.10"}]}}
CONFIG = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
          "clusterCIDR": "10.244.0.0/16"}


def test_the_classic_nodeport_has_every_client_and_entry_point(web):
    sc = enumerate_scenarios(web.plan, web.settings)
    assert sc.notes == ()
    got = [(s.client.kind, s.entry.kind, s.entry.address) for s in sc.scenarios]
    assert got == [
        (OUTSIDE, CLUSTER_IP, "10.96.120.15:80"), (POD_HERE, CLUSTER_IP, "10.96.120.15:80"),
        (NODE, CLUSTER_IP, "10.96.120.15:80"),
        (OUTSIDE, NODE_PORT, "192.168.56.10:30080"), (POD_HERE, NODE_PORT, "192.168.56.10:30080"),
        (POD_ELSEWHERE, NODE_PORT, "192.168.56.10:30080"), (NODE, NODE_PORT, "192.168.56.10:30080"),
        (LOCALHOST, LOCALHOST_NODE_PORT, "127.0.0.1:30080"),
        (POD_HERE, OTHER_PORT, "10.96.120.15:1"), (NODE, OTHER_PORT, "10.96.120.15:1"),
    ]
    c = sc.clients
    assert (c[OUTSIDE].src, c[OUTSIDE].in_iface) == ("203.0.113.10", "eth0")
    assert (c[POD_HERE].src, c[POD_HERE].in_iface) == ("10.244.1.254", "cni0")  # top of node-a's pod range
    assert (c[POD_ELSEWHERE].src, c[POD_ELSEWHERE].in_iface) == ("10.244.255.254", "eth0")  # cluster CIDR, not node-a's
    assert (c[NODE].src, c[NODE].in_iface) == ("192.168.56.10", None)
    assert (c[LOCALHOST].src, c[LOCALHOST].in_iface) == ("127.0.0.1", None)
    assert {s.spn for s in sc.scenarios} == {"default/web-frontend:http"}


def test_the_traces_tell_the_nodeport_story(web):
    sc = enumerate_scenarios(web.plan, web.settings)
    by = {(o.scenario.client.kind, o.scenario.entry.kind): o.result for o in trace_scenarios(web, sc.scenarios)}
    third = Fraction(1, 3)
    eps = {"10.244.1.11:3000": third, "10.244.1.12:3000": third, "10.244.2.21:3000": third}
    outside_np = by[(OUTSIDE, NODE_PORT)]
    assert outside_np.verdict == "DNAT" and outside_np.shares() == eps
    assert all(d.masquerade for d in outside_np.destinations)  # externalTrafficPolicy Cluster
    assert {d.endpoint: d.local for d in outside_np.destinations} == {
        "10.244.1.11:3000": True, "10.244.1.12:3000": True, "10.244.2.21:3000": False}
    pod_cip = by[(POD_HERE, CLUSTER_IP)]
    assert pod_cip.shares() == eps and not pod_cip.masquerade  # a pod's address is kept
    assert by[(OUTSIDE, CLUSTER_IP)].masquerade  # off-cluster traffic to a ClusterIP is masqueraded
    assert by[(LOCALHOST, LOCALHOST_NODE_PORT)].shares() == eps and by[(LOCALHOST, LOCALHOST_NODE_PORT)].masquerade
    assert by[(POD_HERE, OTHER_PORT)].verdict == "ACCEPT" and not by[(POD_HERE, OTHER_PORT)].destinations


def test_every_node_address_gets_a_nodeport_and_each_external_address_an_entry(compile_objs):
    svc = _svc("web", type="LoadBalancer", externalIPs=["198.18.0.5"],
               ports=[{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}],
               status=None)
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "198.18.1.7"}]}}
    c = compile_objs([svc, _slice("web", ["10.244.1.5"]), NODE_A, CONFIG])
    sc = enumerate_scenarios(c.plan, c.settings)
    entries = list(dict.fromkeys((s.entry.kind, s.entry.address) for s in sc.scenarios))
    assert entries == [(CLUSTER_IP, "10.96.0.10:80"), (NODE_PORT, "192.168.56.10:30080"),
                       (NODE_PORT, "192.168.57.10:30080"), (LOCALHOST_NODE_PORT, "127.0.0.1:30080"),
                       ("external-ip", "198.18.0.5:80"), ("load-balancer", "198.18.1.7:80"),
                       (OTHER_PORT, "10.96.0.10:1")]
    lb = [s.client.kind for s in sc.scenarios if s.entry.kind == "load-balancer"]
    assert lb == [OUTSIDE, POD_HERE, NODE]  # a pod elsewhere is caught by its own node's kube-proxy


def test_invented_addresses_avoid_every_address_of_the_input(compile_objs):
    # An endpoint on the top address of the node's pod range, the cluster CIDR's top taken too,
    # and a Service on the first documentation address: each client moves on to a free one.
    objs = [_svc("web", clusterIP="203.0.113.10"), _slice("web", ["10.244.1.254", "10.244.255.254"]),
            NODE_A, CONFIG]
    c = compile_objs(objs)
    cl = enumerate_scenarios(c.plan, c.settings).clients
    assert cl[POD_HERE].src == "10.244.1.253"
    assert cl[POD_ELSEWHERE].src == "10.244.255.253"
    assert cl[OUTSIDE].src == "198.51.100.10"


def test_the_other_port_is_no_service_port_of_the_cluster_ip(compile_objs):
    svc = _svc("web", ports=[{"name": "a", "protocol": "TCP", "port": 1, "targetPort": 1},
                             {"name": "b", "protocol": "UDP", "port": 2, "targetPort": 2}])
    c = compile_objs([svc, NODE_A, CONFIG])
    other = [s for s in enumerate_scenarios(c.plan, c.settings).scenarios if s.entry.kind == OTHER_PORT]
    assert {s.entry.port for s in other} == {3} and len(other) == 2  # once per Service, not per port
    assert other_port([1, 2, 4]) == 3 and other_port([]) == 1


def test_without_node_addresses_or_pod_ranges_it_says_what_it_left_out(compile_objs):
    c = compile_objs([_svc("web", type="NodePort", ports=[{"name": "http", "protocol": "TCP", "port": 80,
                                                           "targetPort": 8080, "nodePort": 30080}])])
    sc = enumerate_scenarios(c.plan, c.settings)
    assert NODE not in sc.clients
    assert not any(s.client.kind == NODE or s.entry.kind == NODE_PORT for s in sc.scenarios)
    assert [s.entry.kind for s in sc.scenarios if s.client.kind == LOCALHOST] == [LOCALHOST_NODE_PORT]
    assert any("no node address known" in n for n in sc.notes)
    assert any("no pod range known" in n for n in sc.notes)
    assert sc.clients[POD_HERE].src.startswith("10.250.")


def test_ipv6_has_no_localhost_nodeports(compile_objs):
    svc = _svc("web", type="NodePort", clusterIP="fd00:96::10", clusterIPs=["fd00:96::10"], ipFamilies=["IPv6"],
               ports=[{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}])
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
            "spec": {"podCIDRs": ["fd00:244:1::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "fd00:56::10"}]}}
    c = compile_objs([svc, _slice("web", ["fd00:244:1::5"]), node], {"ip_family": "ipv6"})
    sc = enumerate_scenarios(c.plan, c.settings)
    assert LOCALHOST not in sc.clients
    assert [s.entry.address for s in sc.scenarios if s.entry.kind == NODE_PORT][0] == "[fd00:56::10]:30080"
    assert sc.clients[OUTSIDE].src == "2001:db8::10"
    assert sc.clients[POD_HERE].src == "fd00:244:1:0:ffff:ffff:ffff:fffe"


def test_the_scenarios_and_their_keys_do_not_depend_on_the_mode(web):
    other = compile_files([WEB], {"mode": "nftables"})
    a = enumerate_scenarios(web.plan, web.settings)
    b = enumerate_scenarios(other.plan, other.settings)
    assert [s.key for s in a.scenarios] == [s.key for s in b.scenarios]
    assert len({s.key for s in a.scenarios}) == len(a.scenarios)  # keys are unique


def test_services_are_picked_by_namespace_and_name(compile_objs):
    c = compile_objs([_svc("web"), _svc("api", clusterIP="10.96.0.11"), _svc("db", ns="data", clusterIP="10.96.0.12"),
                      {**_svc("none"), "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}])
    assert parse_services(["default/web", "data/db"]) == {"default/web", "data/db"}
    ports = select_ports(c.plan, c.inputs, {"default/web", "data/db"})
    assert [p.spn for p in ports] == ["data/db:http", "default/web:http"]
    assert select_ports(c.plan, c.inputs, set()) == c.plan.ports
    with pytest.raises(UsageError, match=r"^--service default/nope: no such Service in the input$"):
        select_ports(c.plan, c.inputs, {"default/nope"})
    with pytest.raises(UsageError, match=r"^--service default/none: kube-proxy writes no rules for it"):
        select_ports(c.plan, c.inputs, {"default/none"})
    for bad in ("web", "a/b/c", "/web", "default/"):
        with pytest.raises(UsageError, match="expected NAMESPACE/NAME"):
            parse_services([bad])
    sc = enumerate_scenarios(c.plan, c.settings, select_ports(c.plan, c.inputs, {"data/db"}))
    assert {s.service for s in sc.scenarios} == {"data/db"}


class _Refusing:
    """A tracer that understands nothing: every trace is a TraceError."""

    def trace_compiled(self, compiled, src, dst_ip, dst_port, proto="tcp", **kw):
        raise TraceError("rules", "nat", "KUBE-X", 3, "-m weird", "unknown match module 'weird'")


class _RefusingBackend(Backend):
    mode = "refusing"

    def compile(self, plan, settings):
        return backends.get("iptables").compile(plan, settings)

    def tracer(self):
        return _Refusing()


def test_a_scenario_the_tracer_cannot_follow_is_an_outcome_with_its_reason():
    backends.register("refusing", _RefusingBackend())
    try:
        c = compile_files([WEB], {"mode": "refusing"})
        outs = trace_scenarios(c, enumerate_scenarios(c.plan, c.settings).scenarios)
    finally:
        backends.unregister("refusing")
    assert len(outs) == 10 and all(o.result is None for o in outs)
    assert outs[0].error == ("rules: table nat, chain KUBE-X, rule 3 (-A KUBE-X -m weird): "
                             "unknown match module 'weird'")


class _Untraced(Backend):
    mode = "untraced"

    def compile(self, plan, settings):
        return backends.get("iptables").compile(plan, settings)


def test_a_mode_without_a_tracer_is_refused():
    backends.register("untraced", _Untraced())
    try:
        c = compile_files([WEB], {"mode": "untraced"})
        with pytest.raises(UsageError, match=r"^--mode untraced: trace is not implemented yet \(implemented for: "):
            trace_scenarios(c, enumerate_scenarios(c.plan, c.settings).scenarios)
    finally:
        backends.unregister("untraced")


def test_the_endpoint_nodes_of_a_plan_are_gathered_once(web, compile_objs):
    from rulegen.trace.entry import endpoint_nodes

    first = endpoint_nodes(web.plan)
    assert first["10.244.2.21:3000"] == "node-b" and first["10.244.1.11"] == "node-a"
    assert endpoint_nodes(web.plan) is first  # a page of traces reads it once per trace: built once
    other = compile_objs([_svc("web"), _slice("web", ["10.244.9.9"], node="node-z")])
    assert endpoint_nodes(other.plan) == {"10.244.9.9:8080": "node-z", "10.244.9.9": "node-z"}
    assert endpoint_nodes(None) == {}
