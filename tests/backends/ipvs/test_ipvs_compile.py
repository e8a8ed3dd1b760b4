"""IPVS mode's compiler, feature by feature, on small clusters written here.

Each expectation is worked out by hand from kube-proxy's IPVS proxier (what
its sync creates for the inputs); the scenarios and addresses are our own.
The node is `edge-2` (203.0.113.20 and fd00:20::2; pods 10.42.2.0/24),
cluster CIDR 10.42.0.0/16, Services in 10.43.0.0/16.
"""

from __future__ import annotations

import pytest
from rgtest import compile_objects

from rulegen.backends.ipvs import compile as ipvs_compile
from rulegen.backends.ipvs import render
from rulegen.backends.ipvs.ir import (
    BITMAP_PORT,
    FLAG_PERSISTENT,
    FLAG_SCHED2,
    MAXELEM,
    IPVSState,
    RealServer,
    VirtualServer,
)
from rulegen.diagnostics import Report
from rulegen.pipeline import Compiled

NODE = "edge-2"
NODE_IP = "203.0.113.20"
NODE_IP6 = "fd00:20::2"


# ----------------------------------------------------------------------------- building inputs


def service(name: str, ip: str = "10.43.0.10", ports=(("http", "TCP", 80, 0),), ns: str = "shop", **spec) -> dict:
    typ = spec.pop("type", "NodePort" if any(p[3] for p in ports) else "ClusterIP")
    status = {}
    if "lb" in spec:
        status = {"loadBalancer": {"ingress": [{"ip": a} for a in spec.pop("lb")]}}
        typ = "LoadBalancer"
    s = {"type": typ, "clusterIP": ip, "ports": [
        {"name": n, "protocol": proto, "port": port, **({"nodePort": np} if np else {})}
        for n, proto, port, np in ports]}
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
            "spec": s, "status": status}


def endpoint(ip: str, node: str | None = "edge-1", ready: bool = True, serving: bool | None = None,
             terminating: bool = False) -> dict:
    cond = {"ready": ready, "terminating": terminating}
    if serving is not None:
        cond["serving"] = serving
    e = {"addresses": [ip], "conditions": cond}
    if node:
        e["nodeName"] = node
    return e


def slice_(svc: str, eps: list[dict], ports=(("http", "TCP", 8080),), ns: str = "shop", fam: int = 4) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": f"{svc}-{fam}-abc", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv6" if fam == 6 else "IPv4",
            "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in ports], "endpoints": eps}


def node(addresses=(NODE_IP, NODE_IP6)) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
            "spec": {"podCIDRs": ["10.42.2.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]}}


def config(**ipvs) -> dict:
    return {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "ipvs", "clusterCIDR": "10.42.0.0/16", "ipvs": ipvs}


def compile_objs(objs: list, with_node: bool = True, **flags) -> Compiled:
    report = Report()
    objs = list(objs) + ([node()] if with_node and not any(o["kind"] == "Node" for o in objs) else [])
    if not any(o["kind"] == "KubeProxyConfiguration" for o in objs):
        objs.append(config())
    flags = {"mode": "ipvs", **flags}
    c = compile_objects(objs, flags, report=report)
    assert isinstance(c.ir, IPVSState) or flags["mode"] != "ipvs"
    return c


def state(objs: list, **flags) -> IPVSState:
    return compile_objs(objs, **flags).ir


def vs_of(st: IPVSState, address: str, port: int, proto: str = "tcp") -> VirtualServer:
    found = [v for v in st.virtual_servers if v.key == (proto, address, port)]
    assert len(found) == 1, f"no single virtual server {proto} {address}:{port} in {[v.key for v in st.virtual_servers]}"
    return found[0]


def reals(vs: VirtualServer) -> list[str]:
    return [f"{r.address}:{r.port}" for r in vs.reals]


def entries(st: IPVSState, name: str) -> list[str]:
    s = st.ipset(name)
    assert s is not None, f"no set {name}"
    return list(s.entries)


def rules(st: IPVSState, table: str, chain: str | None = None) -> list[str]:
    t = st.iptables.table(table)
    assert t is not None
    return [r.spec if chain else f"{r.chain} {r.spec}" for r in t.rules if chain in (None, r.chain)]


WEB_EPS = [endpoint("10.42.1.5"), endpoint("10.42.2.7", node=NODE), endpoint("10.42.3.9", node="edge-3")]


# ----------------------------------------------------------------------------- ClusterIP


def test_clusterip_gets_one_virtual_server_with_every_ready_endpoint_masqueraded_at_weight_1():
    st = state([service("web"), slice_("web", WEB_EPS)])
    assert [v.key for v in st.virtual_servers] == [("tcp", "10.43.0.10", 80)]
    vs = st.virtual_servers[0]
    assert (vs.scheduler, vs.flags, vs.timeout) == ("rr", 0, 0)
    assert vs.reals == (RealServer("10.42.1.5", 8080, 1, "m"), RealServer("10.42.2.7", 8080, 1, "m"),
                        RealServer("10.42.3.9", 8080, 1, "m"))
    assert entries(st, "KUBE-CLUSTER-IP") == ["10.43.0.10,tcp:80"]
    assert st.bound == ("10.43.0.10",) and entries(st, "KUBE-IPVS-IPS") == ["10.43.0.10"]
    text = render.ipvsadm(st)
    assert text == ("-A -t 10.43.0.10:80 -s rr\n"
                    "-a -t 10.43.0.10:80 -r 10.42.1.5:8080 -m -w 1\n"
                    "-a -t 10.43.0.10:80 -r 10.42.2.7:8080 -m -w 1\n"
                    "-a -t 10.43.0.10:80 -r 10.42.3.9:8080 -m -w 1\n")


def test_not_ready_endpoints_are_left_out_and_terminating_ones_are_the_fallback():
    eps = [endpoint("10.42.1.5", ready=False), endpoint("10.42.1.6"),
           endpoint("10.42.1.7", ready=False, serving=True, terminating=True)]
    st = state([service("web"), slice_("web", eps)])
    assert reals(vs_of(st, "10.43.0.10", 80)) == ["10.42.1.6:8080"]
    # No ready endpoint at all: serving+terminating ones get weight 1; not-serving ones nothing.
    eps = [endpoint("10.42.1.5", ready=False, serving=False, terminating=True),
           endpoint("10.42.1.7", ready=False, serving=True, terminating=True)]
    st = state([service("web"), slice_("web", eps)])
    vs = vs_of(st, "10.43.0.10", 80)
    assert reals(vs) == ["10.42.1.7:8080"] and vs.reals[0].weight == 1


def test_a_service_without_endpoints_still_gets_its_virtual_server():
    st = state([service("web")])
    vs = vs_of(st, "10.43.0.10", 80)
    assert vs.reals == ()
    assert render.ipvsadm(st) == "-A -t 10.43.0.10:80 -s rr\n"


def test_loop_back_set_holds_every_local_endpoint_whatever_its_conditions():
    eps = [endpoint("10.42.2.7", node=NODE), endpoint("10.42.2.8", node=NODE, ready=False, serving=False),
           endpoint("10.42.1.5")]
    st = state([service("web"), slice_("web", eps)])
    assert entries(st, "KUBE-LOOP-BACK") == ["10.42.2.7,tcp:8080,10.42.2.7", "10.42.2.8,tcp:8080,10.42.2.8"]
    assert "KUBE-POSTROUTING -m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving " \
           "hairpin purpose\" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE" in rules(st, "nat")


# ----------------------------------------------------------------------------- scheduler, affinity


@pytest.mark.parametrize("sched", ["wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq"])
def test_every_accepted_scheduler_is_written_on_every_virtual_server(sched):
    objs = [service("web", ports=(("http", "TCP", 80, 30080),), externalIPs=["198.51.100.4"]),
            slice_("web", WEB_EPS), config(scheduler=sched)]
    st = state(objs)
    assert len(st.virtual_servers) == 3  # ClusterIP, external IP, one node address
    assert {v.scheduler for v in st.virtual_servers} == {sched}
    assert {v.flags for v in st.virtual_servers} == {0}
    assert f"-A -t 10.43.0.10:80 -s {sched}\n" in render.ipvsadm(st)


def test_mh_sets_the_source_hash_flag_printed_as_mh_port():
    st = state([service("web"), slice_("web", WEB_EPS), config(scheduler="mh")])
    vs = vs_of(st, "10.43.0.10", 80)
    assert vs.flags == FLAG_SCHED2 == 0x10
    assert render.ipvsadm(st).startswith("-A -t 10.43.0.10:80 -s mh -b mh-port\n")


def test_unknown_scheduler_is_reported_and_rr_is_used():
    c = compile_objs([service("web"), config(scheduler="roundrobin")])
    assert c.settings.scheduler == "rr"
    assert [p.field for p in c.report.errors] == ["ipvs.scheduler"]
    assert "'roundrobin'" in str(c.report.errors[0]) and "refuses to start" in str(c.report.errors[0])
    # Only IPVS mode checks it, as kube-proxy validates ipvs settings only in that mode.
    c = compile_objs([service("web"), config(scheduler="roundrobin")], mode="iptables")
    assert not c.report.errors


def test_client_ip_affinity_makes_every_virtual_server_of_the_port_persistent():
    objs = [service("web", ports=(("http", "TCP", 80, 30080),), externalIPs=["198.51.100.4"],
                    lb=["192.0.2.40"], sessionAffinity="ClientIP",
                    sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}}),
            slice_("web", WEB_EPS), config(scheduler="mh")]
    st = state(objs)
    assert len(st.virtual_servers) == 4
    for vs in st.virtual_servers:
        assert (vs.flags, vs.timeout) == (FLAG_PERSISTENT | FLAG_SCHED2, 600), vs.key
    assert "-A -t 192.0.2.40:80 -s mh -p 600 -b mh-port\n" in render.ipvsadm(st)
    default = state([service("web", sessionAffinity="ClientIP"), slice_("web", WEB_EPS)])
    assert vs_of(default, "10.43.0.10", 80).timeout == 10800
    assert "-A -t 10.43.0.10:80 -s rr -p 10800\n" in render.ipvsadm(default)


# ----------------------------------------------------------------------------- NodePort


def test_nodeport_listens_on_every_node_address_of_the_family_but_loopback_and_link_local():
    objs = [service("web", ports=(("http", "TCP", 80, 30080),)), slice_("web", WEB_EPS),
            node(addresses=("203.0.113.20", "198.18.7.1", "fe80::1", "fd00:20::2"))]
    st = state(objs, node_ip=["203.0.113.20", "198.18.7.1", "127.0.0.1", "fe80::1", "fd00:20::2"])
    assert [v.key for v in st.virtual_servers] == [
        ("tcp", "10.43.0.10", 80), ("tcp", "198.18.7.1", 30080), ("tcp", "203.0.113.20", 30080)]
    assert reals(vs_of(st, "198.18.7.1", 30080)) == reals(vs_of(st, "10.43.0.10", 80))
    assert entries(st, "KUBE-NODE-PORT-TCP") == ["30080"]
    assert "198.18.7.1" not in st.bound and "203.0.113.20" not in st.bound  # node addresses are never bound
    objs6 = [service("web6", ip="fd00:43::a", ports=(("http", "TCP", 80, 30081),)),
             slice_("web6", [endpoint("fd00:42::5")], fam=6)]
    st6 = state(objs6, node_ip=["203.0.113.20", "fe80::1", "fd00:20::2", "::1"], ip_family="ipv6")
    assert [v.address for v in st6.virtual_servers if v.port == 30081] == ["fd00:20::2"]


def test_nodeport_addresses_pick_the_node_addresses_inside_them():
    objs = [service("web", ports=(("http", "TCP", 80, 30080),)), slice_("web", WEB_EPS)]
    ips = ["203.0.113.20", "198.18.7.1", "198.18.9.1"]
    st = state(objs, node_ip=ips, nodeport_addresses="198.18.0.0/16,127.0.0.0/8")
    assert [v.address for v in st.virtual_servers if v.port == 30080] == ["198.18.7.1", "198.18.9.1"]
    st = state(objs, node_ip=ips, nodeport_addresses="primary")
    assert [v.address for v in st.virtual_servers if v.port == 30080] == ["203.0.113.20"]


def test_no_nodeport_address_drops_the_nodeport_entries_and_the_health_check_too():
    objs = [service("web", ports=(("http", "TCP", 80, 30080),), lb=["192.0.2.40"], externalTrafficPolicy="Local",
                    healthCheckNodePort=32100),
            slice_("web", WEB_EPS)]
    st = state(objs, nodeport_addresses="100.64.0.0/10")
    assert [v.port for v in st.virtual_servers] == [80, 80]
    assert entries(st, "KUBE-NODE-PORT-TCP") == [] and entries(st, "KUBE-NODE-PORT-LOCAL-TCP") == []
    assert entries(st, "KUBE-HEALTH-CHECK-NODE-PORT") == []
    assert not any("KUBE-NODE-PORT-TCP" in r for r in rules(st, "nat"))
    full = state(objs)
    assert entries(full, "KUBE-HEALTH-CHECK-NODE-PORT") == ["32100"]
    assert entries(full, "KUBE-NODE-PORT-LOCAL-TCP") == ["30080"]


def test_udp_and_sctp_nodeports():
    objs = [service("dns", ports=(("dns", "UDP", 53, 30053),)),
            slice_("dns", [endpoint("10.42.1.5")], ports=(("dns", "UDP", 5353),)),
            service("sig", ip="10.43.0.11", ports=(("sig", "SCTP", 3868, 31868),), externalTrafficPolicy="Local"),
            slice_("sig", [endpoint("10.42.2.9", node=NODE)], ports=(("sig", "SCTP", 3868),))]
    st = state(objs, node_ip=["203.0.113.20", "198.18.7.1"])
    assert vs_of(st, "10.43.0.10", 53, "udp").reals == (RealServer("10.42.1.5", 5353),)
    assert entries(st, "KUBE-NODE-PORT-UDP") == ["30053"]
    assert entries(st, "KUBE-NODE-PORT-SCTP-HASH") == ["198.18.7.1,sctp:31868", "203.0.113.20,sctp:31868"]
    assert entries(st, "KUBE-NODE-PORT-LOCAL-SCTP-HASH") == entries(st, "KUBE-NODE-PORT-SCTP-HASH")
    text = render.ipvsadm(st)
    assert "-A -u 10.43.0.10:53 -s rr\n-a -u 10.43.0.10:53 -r 10.42.1.5:5353 -m -w 1\n" in text
    assert "-A --sctp-service 198.18.7.1:31868 -s rr\n" in text
    nat = rules(st, "nat", "KUBE-NODE-PORT")
    assert nat == [
        '-p udp -m comment --comment "Kubernetes nodeport UDP port for masquerade purpose" '
        "-m set --match-set KUBE-NODE-PORT-UDP dst -j KUBE-MARK-MASQ",
        "-p sctp -m comment --comment \"Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type "
        "'hash ip:port'\" -m set --match-set KUBE-NODE-PORT-LOCAL-SCTP-HASH dst,dst -j RETURN",
        "-p sctp -m comment --comment \"Kubernetes nodeport SCTP port for masquerade purpose with type "
        "'hash ip:port'\" -m set --match-set KUBE-NODE-PORT-SCTP-HASH dst,dst -j KUBE-MARK-MASQ",
    ]


# ----------------------------------------------------------------------------- external and LB IPs


def test_external_ips_by_policy_and_not_bound_when_on_a_node_interface():
    objs = [service("web", externalIPs=["198.51.100.9", NODE_IP, "198.51.100.4"]), slice_("web", WEB_EPS),
            service("api", ip="10.43.0.11", externalIPs=["198.51.100.7"], externalTrafficPolicy="Local"),
            slice_("api", WEB_EPS)]
    st = state(objs)
    # Per port: ClusterIP first, then external IPs in address order.
    assert [v.address for v in st.virtual_servers] == [
        "10.43.0.11", "198.51.100.7", "10.43.0.10", "198.51.100.4", "198.51.100.9", NODE_IP]
    assert entries(st, "KUBE-EXTERNAL-IP") == ["198.51.100.4,tcp:80", "198.51.100.9,tcp:80", f"{NODE_IP},tcp:80"]
    assert entries(st, "KUBE-EXTERNAL-IP-LOCAL") == ["198.51.100.7,tcp:80"]
    assert st.bound == ("10.43.0.10", "10.43.0.11", "198.51.100.4", "198.51.100.7", "198.51.100.9")
    svc = rules(st, "nat", "KUBE-SERVICES")
    ext = '-m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose" ' \
          "-m set --match-set KUBE-EXTERNAL-IP dst,dst"
    loc = '-m comment --comment "Kubernetes service external ip + port with externalTrafficPolicy=local" ' \
          "-m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst"
    i = svc.index(f"{ext} -j KUBE-MARK-MASQ")
    assert svc[i:i + 5] == [
        f"{ext} -j KUBE-MARK-MASQ",
        f"{ext} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT",
        f"{ext} -m addrtype --dst-type LOCAL -j ACCEPT",
        f"{loc} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT",
        f"{loc} -m addrtype --dst-type LOCAL -j ACCEPT",
    ]


def test_load_balancer_sets_and_the_node_inside_or_outside_its_source_ranges():
    outside = service("web", lb=["192.0.2.40"], loadBalancerSourceRanges=["192.0.2.0/24", "10.9.0.5/32"])
    inside = service("api", ip="10.43.0.11", lb=["192.0.2.41", "192.0.2.42"], externalTrafficPolicy="Local",
                     loadBalancerSourceRanges=["203.0.113.0/24"], ns="core")
    plain = service("ui", ip="10.43.0.12", lb=[NODE_IP], ns="zz")
    st = state([outside, inside, plain, slice_("web", WEB_EPS)])
    assert entries(st, "KUBE-LOAD-BALANCER") == ["192.0.2.40,tcp:80", "192.0.2.41,tcp:80", "192.0.2.42,tcp:80",
                                                 f"{NODE_IP},tcp:80"]
    assert entries(st, "KUBE-LOAD-BALANCER-LOCAL") == ["192.0.2.41,tcp:80", "192.0.2.42,tcp:80"]
    assert entries(st, "KUBE-LOAD-BALANCER-FW") == ["192.0.2.40,tcp:80", "192.0.2.41,tcp:80", "192.0.2.42,tcp:80"]
    # Host networks as `ipset save` prints them: without /32.
    assert entries(st, "KUBE-LOAD-BALANCER-SOURCE-CIDR") == [
        "192.0.2.40,tcp:80,10.9.0.5", "192.0.2.40,tcp:80,192.0.2.0/24",
        "192.0.2.41,tcp:80,203.0.113.0/24", "192.0.2.42,tcp:80,203.0.113.0/24"]
    # The node (203.0.113.20) is inside api's range: its LB IPs may be reached from the node itself.
    assert entries(st, "KUBE-LOAD-BALANCER-SOURCE-IP") == ["192.0.2.41,tcp:80,192.0.2.41",
                                                           "192.0.2.42,tcp:80,192.0.2.42"]
    # ... and outside web's: the node's own connections to its LB IP are dropped.
    assert rules(st, "filter", "KUBE-IPVS-OUT-FILTER") == [
        "-s 192.0.2.40 -m ipvs --vaddr 192.0.2.40 --vproto tcp --vport 80 -j DROP"]
    assert NODE_IP not in st.bound and "192.0.2.40" in st.bound
    assert rules(st, "filter", "KUBE-SOURCE-RANGES-FIREWALL")[-1] == "-j DROP"


def test_a_zero_source_range_is_kept_out_of_the_set_but_its_rule_stays():
    st = state([service("web", lb=["192.0.2.40"], loadBalancerSourceRanges=["0.0.0.0/0"]), slice_("web", WEB_EPS)])
    assert entries(st, "KUBE-LOAD-BALANCER-SOURCE-CIDR") == []  # the kernel refuses a /0 net
    assert any("--match-set KUBE-LOAD-BALANCER-SOURCE-CIDR dst,dst,src -j RETURN" in r
               for r in rules(st, "filter", "KUBE-SOURCE-RANGES-FIREWALL"))
    assert entries(st, "KUBE-LOAD-BALANCER-SOURCE-IP") == ["192.0.2.40,tcp:80,192.0.2.40"]  # 0/0 holds the node


def test_unknown_node_ip_is_loopback_for_the_source_range_check():
    objs = [service("web", lb=["192.0.2.40"], loadBalancerSourceRanges=["127.0.0.0/8"]), slice_("web", WEB_EPS)]
    st = state(objs, with_node=False)
    assert entries(st, "KUBE-LOAD-BALANCER-SOURCE-IP") == ["192.0.2.40,tcp:80,192.0.2.40"]
    assert rules(st, "filter", "KUBE-IPVS-OUT-FILTER") == []


# ----------------------------------------------------------------------------- Local policies


def test_external_local_uses_local_endpoints_and_falls_back_to_cluster_ones():
    objs = [service("web", ports=(("http", "TCP", 80, 30080),), lb=["192.0.2.40"], externalTrafficPolicy="Local"),
            slice_("web", WEB_EPS)]
    st = state(objs)
    assert reals(vs_of(st, "10.43.0.10", 80)) == ["10.42.1.5:8080", "10.42.2.7:8080", "10.42.3.9:8080"]
    for addr, port in (("192.0.2.40", 80), (NODE_IP, 30080)):
        assert reals(vs_of(st, addr, port)) == ["10.42.2.7:8080"]
    # No local endpoint: IPVS mode sends external traffic to the cluster endpoints (iptables mode drops it).
    remote = [e for e in WEB_EPS if e.get("nodeName") != NODE]
    st = state([objs[0], slice_("web", remote)])
    for addr, port in (("192.0.2.40", 80), (NODE_IP, 30080)):
        assert reals(vs_of(st, addr, port)) == ["10.42.1.5:8080", "10.42.3.9:8080"]
    assert entries(st, "KUBE-LOAD-BALANCER-LOCAL") == ["192.0.2.40,tcp:80"]
    assert entries(st, "KUBE-NODE-PORT-LOCAL-TCP") == ["30080"]


def test_internal_local_has_no_fallback_unless_the_port_is_externally_reachable():
    remote = [e for e in WEB_EPS if e.get("nodeName") != NODE]
    st = state([service("web", internalTrafficPolicy="Local"), slice_("web", remote)])
    assert vs_of(st, "10.43.0.10", 80).reals == ()
    st = state([service("web", internalTrafficPolicy="Local"), slice_("web", WEB_EPS)])
    assert reals(vs_of(st, "10.43.0.10", 80)) == ["10.42.2.7:8080"]
    # With a NodePort the port computes cluster endpoints, and the ClusterIP falls back to them.
    st = state([service("web", ports=(("http", "TCP", 80, 30080),), internalTrafficPolicy="Local"),
                slice_("web", remote)])
    assert reals(vs_of(st, "10.43.0.10", 80)) == ["10.42.1.5:8080", "10.42.3.9:8080"]


def test_local_policy_prefers_local_serving_terminating_endpoints_over_remote_ready_ones():
    eps = [endpoint("10.42.1.5"), endpoint("10.42.2.7", node=NODE, ready=False, serving=True, terminating=True)]
    st = state([service("web", ports=(("http", "TCP", 80, 30080),), externalTrafficPolicy="Local"),
                slice_("web", eps)])
    assert reals(vs_of(st, NODE_IP, 30080)) == ["10.42.2.7:8080"]
    assert reals(vs_of(st, "10.43.0.10", 80)) == ["10.42.1.5:8080"]


def test_health_check_node_port():
    objs = [service("web", ports=(("http", "TCP", 80, 30080),), lb=["192.0.2.40"], externalTrafficPolicy="Local",
                    healthCheckNodePort=32100), slice_("web", WEB_EPS)]
    st = state(objs)
    assert entries(st, "KUBE-HEALTH-CHECK-NODE-PORT") == ["32100"]
    assert st.ipset("KUBE-HEALTH-CHECK-NODE-PORT").type == BITMAP_PORT
    # The filter rules are there whatever the set holds.
    empty = state([service("web")])
    for st_ in (st, empty):
        assert rules(st_, "filter", "KUBE-NODE-PORT") == [
            '-m comment --comment "Kubernetes health check node port" '
            "-m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT"]


# ----------------------------------------------------------------------------- IPv6


def test_ipv6_uses_kube_6_set_names_cut_to_31_characters_and_inet6():
    objs = [service("web", ip="fd00:43::a", ports=(("sig", "SCTP", 3868, 31868),), lb=["2001:db8:4::1"],
                    externalTrafficPolicy="Local", loadBalancerSourceRanges=["2001:db8::/32"]),
            slice_("web", [endpoint("fd00:42:2::7", node=NODE)], ports=(("sig", "SCTP", 3868),), fam=6)]
    st = state(objs, ip_family="ipv6")
    names = [s.name for s in st.ipsets]
    assert "KUBE-6-LOAD-BALANCER-SOURCE-CID" in names and "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS" in names
    assert all(n.startswith("KUBE-6-") and len(n) <= 31 for n in names)
    assert {s.family for s in st.ipsets if s.type != BITMAP_PORT} == {"inet6"}
    assert entries(st, "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS") == ["fd00:20::2,sctp:31868"]
    assert entries(st, "KUBE-6-LOAD-BALANCER-SOURCE-CID") == ["2001:db8:4::1,sctp:3868,2001:db8::/32"]
    assert entries(st, "KUBE-6-LOOP-BACK") == ["fd00:42:2::7,sctp:3868,fd00:42:2::7"]
    text = render.ipvsadm(st)
    assert "-A --sctp-service [fd00:43::a]:3868 -s rr\n" in text
    assert "-a --sctp-service [fd00:43::a]:3868 -r [fd00:42:2::7]:3868 -m -w 1\n" in text
    nat = rules(st, "nat")
    assert nat[0] == "KUBE-SERVICES -s ::1/128 -j RETURN"
    assert any("--match-set KUBE-6-NODE-PORT-LOCAL-SCTP-HAS dst,dst -j RETURN" in r for r in nat)
    assert render.ipset(st).startswith("create KUBE-6-LOOP-BACK hash:ip,port,ip family inet6 hashsize 1024 "
                                       "maxelem 65536\n")


# ----------------------------------------------------------------------------- the glue


def test_glue_of_an_empty_cluster_is_only_the_fixed_rules():
    st = state([])
    assert rules(st, "nat") == [
        "KUBE-SERVICES -s 127.0.0.0/8 -j RETURN",
        "KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
        "KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ",
        "KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN",
        "KUBE-POSTROUTING -j MARK --xor-mark 0x00004000",
        'KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
        "KUBE-MARK-MASQ -j MARK --or-mark 0x00004000",
    ]
    assert rules(st, "filter") == [
        "KUBE-SOURCE-RANGES-FIREWALL -j DROP",
        'KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x00004000/0x00004000 -j ACCEPT',
        'KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
        "RELATED,ESTABLISHED -j ACCEPT",
        'KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set '
        "KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT",
        "KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN",
        "KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN",
        "KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN",
        "KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN",
        "KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN",
        "KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT",
    ]
    assert [t.name for t in st.iptables.tables] == ["nat", "filter"]
    assert st.iptables.table("nat").chains == ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT",
                                               "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ")
    assert len(st.ipsets) == 17 and all(not s.entries for s in st.ipsets)


def test_cluster_ip_masquerade_rule_follows_the_local_detector():
    objs = [service("web", lb=["192.0.2.40"]), slice_("web", WEB_EPS)]
    head = ('-m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" '
            "-m set --match-set KUBE-CLUSTER-IP")

    def masq(st):
        return [r for r in rules(st, "nat", "KUBE-SERVICES") if r.startswith(head)]

    assert masq(state(objs)) == [f"{head} dst,dst ! -s 10.42.0.0/16 -j KUBE-MARK-MASQ"]
    assert masq(state(objs, masquerade_all=True)) == [f"{head} dst,dst -j KUBE-MARK-MASQ"]
    no_cidr = {**config(), "clusterCIDR": ""}
    assert masq(state(objs + [no_cidr])) == [f"{head} src,dst -j KUBE-MARK-MASQ"]
    svc = rules(state(objs), "nat", "KUBE-SERVICES")
    assert svc[-2:] == ["-m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
                        "-m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT"]


def test_masquerade_bit_and_random_fully():
    st = state([service("web")], masquerade_bit=9, random_fully=False)
    post = rules(st, "nat", "KUBE-POSTROUTING")
    assert post == ["-m mark ! --mark 0x00000200/0x00000200 -j RETURN", "-j MARK --xor-mark 0x00000200",
                    '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE']
    assert rules(st, "nat", "KUBE-MARK-MASQ") == ["-j MARK --or-mark 0x00000200"]


def test_jump_rules_from_the_built_in_chains():
    targets = {(t, c, a.rsplit("-j ", 1)[1]) for t, c, a in ipvs_compile.JUMP_RULES}
    assert targets == {
        ("nat", "OUTPUT", "KUBE-SERVICES"), ("nat", "PREROUTING", "KUBE-SERVICES"),
        ("nat", "POSTROUTING", "KUBE-POSTROUTING"), ("filter", "FORWARD", "KUBE-FORWARD"),
        ("filter", "INPUT", "KUBE-NODE-PORT"), ("filter", "INPUT", "KUBE-PROXY-FIREWALL"),
        ("filter", "FORWARD", "KUBE-PROXY-FIREWALL"), ("filter", "INPUT", "KUBE-IPVS-FILTER"),
        ("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER")}


# ----------------------------------------------------------------------------- order, duplicates, limits


def test_output_order_is_service_order_then_kind_then_address():
    objs = [service("b-svc", ip="10.43.0.2", ports=(("http", "TCP", 80, 30080),), externalIPs=["198.51.100.20"],
                    lb=["192.0.2.9", "192.0.2.10"]),
            service("a-svc", ip="10.43.0.3"), slice_("b-svc", WEB_EPS)]
    st = state(objs, node_ip=["203.0.113.20", "198.18.7.1"])
    assert [v.address for v in st.virtual_servers] == [
        "10.43.0.3", "10.43.0.2", "198.51.100.20", "192.0.2.9", "192.0.2.10", "198.18.7.1", "203.0.113.20"]
    assert entries(st, "KUBE-IPVS-IPS") == sorted(entries(st, "KUBE-IPVS-IPS"))


def test_one_virtual_server_per_address_port_and_protocol():
    objs = [service("one", externalIPs=["198.51.100.4"]), slice_("one", WEB_EPS[:1]),
            service("two", ip="10.43.0.11", externalIPs=["198.51.100.4"]), slice_("two", WEB_EPS[1:2])]
    st = state(objs)
    assert [v.key for v in st.virtual_servers].count(("tcp", "198.51.100.4", 80)) == 1
    assert reals(vs_of(st, "198.51.100.4", 80)) == ["10.42.2.7:8080"]  # the last port synced wins


def test_hash_set_entries_are_sorted_and_stop_at_maxelem():
    entries_in = {f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(MAXELEM + 10)}
    s = ipvs_compile._ipset("KUBE-IPVS-IPS", "hash:ip", "c", entries_in, 4)
    assert len(s.entries) == MAXELEM and list(s.entries) == sorted(entries_in)[:MAXELEM]
    b = ipvs_compile._ipset("KUBE-NODE-PORT-TCP", BITMAP_PORT, "c", {"30080", "8080", "30000"}, 4)
    assert b.entries == ("8080", "30000", "30080") and b.family == "" and b.options == (("range", "0-65535"),)


def test_compile_does_not_change_the_plan_and_is_repeatable():
    c = compile_objs([service("web", ports=(("http", "TCP", 80, 30080),), lb=["192.0.2.40"]), slice_("web", WEB_EPS)])
    again = ipvs_compile.compile_plan(c.plan, c.settings)
    assert again == c.ir and render.render(again) == render.render(c.ir)


# ----------------------------------------------------------------------------- scaling (counted, not timed)


def test_ipvs_compile_and_render_grow_linearly(tmp_path):
    """Lines executed per function at 100, 1,000 and 2,000 generated Services: no superlinear step."""
    from linecount import SIZES, _clear_caches, _write, line_counts, superlinear

    from rulegen.pipeline import compile_files

    paths = {n: _write(tmp_path, n, "json") for n in SIZES}
    compile_files([_write(tmp_path, 20, "json")], {"mode": "ipvs"}).text  # imports paid once
    counts = {}
    for n, path in paths.items():
        _clear_caches()
        counts[n] = line_counts(lambda: compile_files([path], {"mode": "ipvs"}).text)
    ours = {n: {f: k for f, k in c.items() if f.startswith(("compile.py", "render.py", "ir.py"))}
            for n, c in counts.items()}
    assert sum(ours[SIZES[-1]].values()) > 10 * SIZES[-1], "the IPVS compiler was not counted"
    assert superlinear(counts) == []
