"""Hypothesis strategies for small random clusters, as Kubernetes objects (dicts).

Used by the property tests: every shape kube-proxy handles (types, policies,
affinity, LB IPs, source ranges, externalIPs, named/unnamed ports, TCP/UDP/
SCTP, ready/serving/terminating endpoints on this and other nodes, IPv4 and
IPv6) appears with small addresses so collisions and duplicates happen too.
"""

from __future__ import annotations

from hypothesis import strategies as st

NODE = "node-a"
NODES = ("node-a", "node-b", "node-c")
PROTOS = ("TCP", "UDP", "SCTP")


def _v4(prefix: str, n: int) -> str:
    return f"{prefix}.{n // 250}.{n % 250 + 1}"


@st.composite
def endpoint(draw, fam: int):
    n = draw(st.integers(0, 40))
    ip = _v4("10.244", n) if fam == 4 else f"fd00:10:244::{n + 1:x}"
    conds = draw(st.sampled_from([
        {}, {"ready": True}, {"ready": False}, {"ready": False, "serving": True, "terminating": True},
        {"ready": False, "serving": False, "terminating": True}, {"ready": True, "serving": True, "terminating": False},
    ]))
    e = {"addresses": [ip], "conditions": conds}
    node = draw(st.sampled_from(NODES + (None,)))
    if node:
        e["nodeName"] = node
    if draw(st.booleans()) and draw(st.booleans()):
        e["hints"] = {"forZones": [{"name": draw(st.sampled_from(["z1", "z2"]))}]}
    return e


@st.composite
def service_with_slices(draw, idx: int):
    ns = draw(st.sampled_from(["default", "shop", "kube-system"]))
    name = f"svc{idx}"
    stype = draw(st.sampled_from(["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]))
    dual = draw(st.booleans()) and draw(st.booleans())
    spec: dict = {"type": stype}
    if stype != "ExternalName":
        headless = draw(st.integers(0, 9)) == 0
        v4 = _v4("10.96", idx)
        v6 = f"fd00:96::{idx + 1:x}"
        if headless:
            spec["clusterIP"] = "None"
        elif dual:
            spec["clusterIP"] = v4
            spec["clusterIPs"] = [v4, v6]
            spec["ipFamilies"] = ["IPv4", "IPv6"]
        else:
            fam6 = draw(st.integers(0, 4)) == 0
            spec["clusterIP"] = v6 if fam6 else v4
    else:
        spec["externalName"] = "example.com"
    nports = draw(st.integers(1, 3))
    ports = []
    names = ["", "http", "metrics", "dns"]
    for i in range(nports):
        pname = names[i] if nports > 1 or draw(st.booleans()) else ""
        if nports > 1 and not pname:
            pname = f"p{i}"
        p = {"name": pname, "port": draw(st.sampled_from([80, 443, 53, 8080])) + i,
             "protocol": draw(st.sampled_from(PROTOS))}
        if stype in ("NodePort", "LoadBalancer"):
            p["nodePort"] = 30000 + idx * 4 + i
        ports.append(p)
    spec["ports"] = ports
    if draw(st.integers(0, 3)) == 0:
        spec["externalIPs"] = [_v4("198.51", draw(st.integers(0, 5)))]
    if stype in ("NodePort", "LoadBalancer") or spec.get("externalIPs"):
        spec["externalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
    if draw(st.integers(0, 3)) == 0:
        spec["internalTrafficPolicy"] = "Local"
    if draw(st.integers(0, 3)) == 0:
        spec["sessionAffinity"] = "ClientIP"
        if draw(st.booleans()):
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": draw(st.integers(1, 86400))}}
    status: dict = {}
    if stype == "LoadBalancer":
        ing = [{"ip": _v4("203.0", idx)}]
        if draw(st.booleans()):
            ing.append({"ip": _v4("203.1", idx), "ipMode": draw(st.sampled_from(["VIP", "Proxy"]))})
        status = {"loadBalancer": {"ingress": ing}}
        if spec.get("externalTrafficPolicy") == "Local":
            spec["healthCheckNodePort"] = 32000 + idx
        if draw(st.booleans()):
            spec["loadBalancerSourceRanges"] = draw(st.sampled_from(
                [["192.0.2.0/24"], ["192.168.0.0/16", "100.64.0.0/10"], ["0.0.0.0/0"]]))
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
           "spec": spec, "status": status}
    objs = [svc]
    for fam in (4, 6):
        if not draw(st.booleans()):
            continue
        eps = draw(st.lists(endpoint(fam), max_size=6))
        sl_ports = [{"name": p["name"], "port": 9000 + i, "protocol": p["protocol"]} for i, p in enumerate(ports)]
        objs.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": f"{name}-{fam}-x",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4" if fam == 4 else "IPv6", "ports": sl_ports, "endpoints": eps,
        })
    return objs


@st.composite
def cluster(draw):
    n = draw(st.integers(1, 6))
    objs: list = []
    for i in range(n):
        objs.extend(draw(service_with_slices(i)))
    objs.append({"apiVersion": "v1", "kind": "Node",
                 "metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "z1"}},
                 "spec": {"podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"]},
                 "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"},
                                          {"type": "InternalIP", "address": "fd00:192::10"}]}})
    return objs


settings_flags = st.fixed_dictionaries({
    "ip_family": st.sampled_from(["ipv4", "ipv6"]),
    "cluster_cidr": st.sampled_from([None, ["10.244.0.0/16", "fd00:10:244::/48"]]),
    "masquerade_all": st.sampled_from([None, True]),
    "nodeport_addresses": st.sampled_from([None, "192.168.0.0/24,fd00:192::/64", "127.0.0.0/8,192.168.0.0/16"]),
    "localhost_nodeports": st.sampled_from([None, False]),
})
