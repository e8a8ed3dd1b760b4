"""The nftables compiler, feature by feature, against expectations written out by hand.

Each scenario is invented; the expectations follow what kube-proxy's
nftables proxier writes (docs/nftables-mode.md says where each comes from).
Rules are compared in order and in the script's own spelling.
"""

from __future__ import annotations

import pytest

from nftgen import (
    NODE, NODE_IP, compile_nft, config, elements, endpoints, hashed, node, rules, service, service_chains,
    service_cidr, table,
)

M = "0x00004000"
MASQ = f"mark set mark or {M}"
TCP80 = [("http", 80, "TCP")]
EP80 = [("http", 8080, "TCP")]


def names(ns: str, svc: str, proto: str = "tcp", port: str = "http") -> dict[str, str]:
    b = hashed(f"{ns}/{svc}/{proto}/{port}")
    return {k: f"{k}-{b}" for k in ("service", "local", "external", "firewall")}


def ep_names(ns: str, svc: str, ep: str, proto: str = "tcp", port: str = "http") -> tuple[str, str]:
    b = hashed(f"{ns}/{svc}/{proto}/{port}__{ep}")
    return f"endpoint-{b}", f"affinity-{b}"


BASE = [node(), config()]


# ----------------------------------------------------------------------------- the skeleton


def test_fixed_skeleton():
    st = table(BASE + [service("ops", "idle", "10.96.40.1", TCP80)])
    assert st.comment == "rules for kube-proxy"
    base = {n: (c.decl.type, c.decl.hook, c.decl.priority) for n, c in st.chains.items() if c.decl.type}
    assert base == {
        "filter-prerouting-pre-dnat": ("filter", "prerouting", "dstnat-10"),
        "filter-output-pre-dnat": ("filter", "output", "dstnat-10"),
        "filter-input": ("filter", "input", "filter"), "filter-forward": ("filter", "forward", "filter"),
        "filter-output": ("filter", "output", "filter"),
        "nat-prerouting": ("nat", "prerouting", "dstnat"), "nat-output": ("nat", "output", "dstnat"),
        "nat-postrouting": ("nat", "postrouting", "srcnat"),
    }
    assert rules(st, "filter-input") == ["ct state new jump nodeport-endpoints-check",
                                         "ct state new jump service-endpoints-check"]
    assert rules(st, "filter-forward") == ["ct state new jump service-endpoints-check",
                                           "ct state new jump cluster-ips-check"]
    assert rules(st, "filter-output") == ["ct state new jump service-endpoints-check",
                                          "ct state new jump cluster-ips-check"]
    assert rules(st, "filter-prerouting-pre-dnat") == rules(st, "filter-output-pre-dnat") == \
        ["ct state new jump firewall-check"]
    assert rules(st, "nat-prerouting") == rules(st, "nat-output") == ["jump services"]
    assert rules(st, "nat-postrouting") == ["jump masquerading"]
    assert rules(st, "masquerading") == [
        f"mark and {M} != 0 mark set mark xor {M} masquerade fully-random",
        "ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-connections masquerade fully-random",
    ]
    assert rules(st, "services") == [
        f'ip daddr @cluster-ips ip saddr != 10.70.0.0/16 {MASQ} comment "masquerade clusterIP traffic from outside cluster"',
        "ip daddr . meta l4proto . th dport vmap @service-ips",
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
    ]
    assert rules(st, "reject-chain") == ["reject"]
    assert st.chains["reject-chain"].decl.comment == "helper for @no-endpoint-services / @no-endpoint-nodeports"
    assert rules(st, "cluster-ips-check") == ['ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"']
    assert rules(st, "service-endpoints-check") == ["ip daddr . meta l4proto . th dport vmap @no-endpoint-services"]
    assert rules(st, "nodeport-endpoints-check") == ["ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"]
    assert rules(st, "firewall-check") == ["ip daddr . meta l4proto . th dport vmap @firewall-ips"]
    types = {n: (s.decl.type, s.decl.comment, s.is_map) for n, s in st.sets.items()}
    assert types == {
        "cluster-ips": ("ipv4_addr", "Active ClusterIPs", False),
        "nodeport-ips": ("ipv4_addr", "IPs that accept NodePort traffic", False),
        "hairpin-connections": ("ipv4_addr . ipv4_addr . inet_proto . inet_service", "service hairpin connections", False),
        "service-ips": ("ipv4_addr . inet_proto . inet_service : verdict", "ClusterIP, ExternalIP and LoadBalancer IP traffic", True),
        "service-nodeports": ("inet_proto . inet_service : verdict", "NodePort traffic", True),
        "firewall-ips": ("ipv4_addr . inet_proto . inet_service : verdict", "destinations that are subject to LoadBalancerSourceRanges", True),
        "no-endpoint-services": ("ipv4_addr . inet_proto . inet_service : verdict", "vmap to drop or reject packets to services with no endpoints", True),
        "no-endpoint-nodeports": ("inet_proto . inet_service : verdict", "vmap to drop or reject packets to service nodeports with no endpoints", True),
    }


def test_script_starts_with_the_table_and_recreates_base_chains():
    text = compile_nft(BASE + [service("ops", "idle", "10.96.40.1", TCP80)]).text
    lines = text.splitlines()
    assert lines[0] == 'add table ip kube-proxy { comment "rules for kube-proxy" ; }'
    assert lines[1:3] == ["add chain ip kube-proxy filter-prerouting-pre-dnat",
                          "delete chain ip kube-proxy filter-prerouting-pre-dnat"]
    assert "add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }" in lines
    assert "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }" in lines
    assert lines.index("flush map ip kube-proxy service-ips") > lines.index(
        'add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; '
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }')
    assert all(ln.split(" ", 1)[0] in ("add", "flush", "delete") for ln in lines)
    assert not any(ln.endswith("{") or ln.startswith(("table ", "chain ")) for ln in lines)  # no blocks


# ----------------------------------------------------------------------------- ClusterIP


def test_clusterip_endpoints_numbered_in_byte_order_and_hairpin_only_for_local():
    st = table(BASE + [
        service("shop", "cart", "10.96.7.7", TCP80),
        endpoints("shop", "cart", EP80, [("10.70.2.9", NODE), ("10.70.1.10", "edge-1"), ("10.70.2.10", NODE)]),
    ])
    n = names("shop", "cart")
    assert service_chains(st) == {n["service"]}
    assert rules(st, n["service"]) == [
        "meta l4proto tcp dnat ip addr . port to numgen random mod 3 map "
        "{ 0 : 10.70.1.10 . 8080 , 1 : 10.70.2.10 . 8080 , 2 : 10.70.2.9 . 8080 }"]
    assert elements(st, "cluster-ips") == {"10.96.7.7"}
    assert elements(st, "service-ips") == {f"10.96.7.7 . tcp . 80 : goto {n['service']}"}
    assert elements(st, "hairpin-connections") == {"10.70.2.9 . 10.70.2.9 . tcp . 8080",
                                                   "10.70.2.10 . 10.70.2.10 . tcp . 8080"}
    assert elements(st, "no-endpoint-services") == set()


def test_single_endpoint_still_uses_the_numgen_map():
    st = table(BASE + [service("shop", "cart", "10.96.7.7", TCP80),
                       endpoints("shop", "cart", EP80, [("10.70.1.3", "edge-1")])])
    assert rules(st, names("shop", "cart")["service"]) == [
        "meta l4proto tcp dnat ip addr . port to numgen random mod 1 map { 0 : 10.70.1.3 . 8080 }"]
    assert elements(st, "hairpin-connections") == set()


def test_no_endpoints_reject_everywhere_with_the_port_name_as_comment():
    st = table(BASE + [service("shop", "gone", "10.96.7.8", [("api", 443, "TCP", 31443)], "LoadBalancer",
                               externalIPs=["198.51.100.4"], lb=["203.0.113.8"])])
    assert service_chains(st) == set()
    assert elements(st, "no-endpoint-services") == {
        '10.96.7.8 . tcp . 443 comment "shop/gone:api" : goto reject-chain',
        '198.51.100.4 . tcp . 443 comment "shop/gone:api" : goto reject-chain',
        '203.0.113.8 . tcp . 443 comment "shop/gone:api" : goto reject-chain',
    }
    assert elements(st, "no-endpoint-nodeports") == {'tcp . 31443 comment "shop/gone:api" : goto reject-chain'}
    assert elements(st, "service-ips") == elements(st, "service-nodeports") == set()
    assert elements(st, "cluster-ips") == {"10.96.7.8"}


def test_unnamed_port_and_long_names_cut_the_comment_at_128():
    ns, name = "n" * 63, "s" * 63
    st = table(BASE + [service(ns, name, "10.96.7.9", [("", 80, "UDP")]),
                       service("shop", "empty", "10.96.7.10", [("metrics-endpoint", 9100, "TCP")])])
    comments = {e.split('"')[1] for e in elements(st, "no-endpoint-services")}
    assert comments == {f"{ns}/{name}"[:128], "shop/empty:metrics-endpoint"}
    assert len(f"{ns}/{name}") == 127  # unnamed port: "ns/name", no colon
    st2 = table(BASE + [service(ns, name, "10.96.7.9", [("p" * 15, 80, "UDP")])])
    (comment,) = {e.split('"')[1] for e in elements(st2, "no-endpoint-services")}
    assert comment == f"{ns}/{name}:{'p' * 15}"[:128] and len(comment) == 128


# ----------------------------------------------------------------------------- external traffic


def test_nodeport_cluster_policy_masquerades_then_goes_to_the_service_chain():
    st = table(BASE + [
        service("shop", "web", "10.96.8.1", [("http", 80, "TCP", 30080)], "NodePort"),
        endpoints("shop", "web", EP80, [("10.70.1.4", "edge-1")]),
    ])
    n = names("shop", "web")
    assert service_chains(st) == {n["service"], n["external"]}
    assert rules(st, n["external"]) == [f'{MASQ} comment "masquerade"', f"goto {n['service']}"]
    assert elements(st, "service-nodeports") == {f"tcp . 30080 : goto {n['external']}"}
    assert elements(st, "nodeport-ips") == {NODE_IP}  # the default in this mode: the primary node IP


def test_external_policy_local_with_a_local_endpoint():
    st = table(BASE + [
        service("shop", "edge", "10.96.8.2", [("http", 80, "TCP", 30081)], "LoadBalancer",
                externalTrafficPolicy="Local", externalIPs=["198.51.100.5"], lb=["203.0.113.9"],
                healthCheckNodePort=32000),
        endpoints("shop", "edge", EP80, [("10.70.1.5", "edge-1"), ("10.70.2.5", NODE)]),
    ])
    n = names("shop", "edge")
    assert service_chains(st) == {n["service"], n["local"], n["external"]}
    assert rules(st, n["external"]) == [
        f'ip saddr 10.70.0.0/16 goto {n["service"]} comment "short-circuit pod traffic"',
        f'fib saddr type local {MASQ} comment "masquerade local traffic"',
        f'fib saddr type local goto {n["service"]} comment "short-circuit local traffic"',
        f"goto {n['local']}",
    ]
    assert rules(st, n["local"]) == [
        "meta l4proto tcp dnat ip addr . port to numgen random mod 1 map { 0 : 10.70.2.5 . 8080 }"]
    assert rules(st, n["service"]) == [
        "meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.70.1.5 . 8080 , 1 : 10.70.2.5 . 8080 }"]
    assert elements(st, "service-ips") == {
        f"10.96.8.2 . tcp . 80 : goto {n['service']}",
        f"198.51.100.5 . tcp . 80 : goto {n['external']}",
        f"203.0.113.9 . tcp . 80 : goto {n['external']}",
    }
    assert elements(st, "no-endpoint-services") == elements(st, "no-endpoint-nodeports") == set()


def test_external_policy_local_without_a_local_endpoint_drops_external_traffic():
    st = table(BASE + [
        service("shop", "edge", "10.96.8.2", [("http", 80, "TCP", 30081)], "LoadBalancer",
                externalTrafficPolicy="Local", externalIPs=["198.51.100.5"], lb=["203.0.113.9"]),
        endpoints("shop", "edge", EP80, [("10.70.1.5", "edge-1")]),
    ])
    n = names("shop", "edge")
    assert service_chains(st) == {n["service"], n["external"]}
    assert rules(st, n["external"]) == [
        f'ip saddr 10.70.0.0/16 goto {n["service"]} comment "short-circuit pod traffic"',
        f'fib saddr type local {MASQ} comment "masquerade local traffic"',
        f'fib saddr type local goto {n["service"]} comment "short-circuit local traffic"',
    ]
    assert elements(st, "no-endpoint-services") == {
        '198.51.100.5 . tcp . 80 comment "shop/edge:http" : drop',
        '203.0.113.9 . tcp . 80 comment "shop/edge:http" : drop',
    }
    assert elements(st, "no-endpoint-nodeports") == {'tcp . 30081 comment "shop/edge:http" : drop'}
    # In-cluster traffic still reaches the remote endpoint.
    assert f"10.96.8.2 . tcp . 80 : goto {n['service']}" in elements(st, "service-ips")
    assert f"tcp . 30081 : goto {n['external']}" in elements(st, "service-nodeports")


def test_internal_policy_local():
    with_local = table(BASE + [
        service("shop", "near", "10.96.8.3", TCP80, internalTrafficPolicy="Local"),
        endpoints("shop", "near", EP80, [("10.70.1.6", "edge-1"), ("10.70.2.6", NODE)]),
    ])
    n = names("shop", "near")
    assert service_chains(with_local) == {n["local"]}
    assert elements(with_local, "service-ips") == {f"10.96.8.3 . tcp . 80 : goto {n['local']}"}
    assert rules(with_local, n["local"]) == [
        "meta l4proto tcp dnat ip addr . port to numgen random mod 1 map { 0 : 10.70.2.6 . 8080 }"]
    without = table(BASE + [
        service("shop", "near", "10.96.8.3", TCP80, internalTrafficPolicy="Local"),
        endpoints("shop", "near", EP80, [("10.70.1.6", "edge-1")]),
    ])
    assert service_chains(without) == set()
    assert elements(without, "no-endpoint-services") == {'10.96.8.3 . tcp . 80 comment "shop/near:http" : drop'}
    assert elements(without, "service-ips") == set()


def test_source_ranges_firewall_and_the_node_inside_a_range():
    objs = [service("shop", "lb", "10.96.8.4", [("http", 80, "TCP", 30082)], "LoadBalancer",
                    lb=["203.0.113.10", "203.0.113.11"], loadBalancerSourceRanges=["198.51.100.0/24", " 203.0.113.0/28"]),
            endpoints("shop", "lb", EP80, [("10.70.1.7", "edge-1")])]
    n = names("shop", "lb")
    outside = table(BASE + objs)
    assert rules(outside, n["firewall"]) == ["ip saddr != { 198.51.100.0/24 , 203.0.113.0/28 } drop"]
    assert elements(outside, "firewall-ips") == {f"203.0.113.10 . tcp . 80 : goto {n['firewall']}",
                                                 f"203.0.113.11 . tcp . 80 : goto {n['firewall']}"}
    inside = table([node(addresses=("198.51.100.20",)), config()] + objs)
    assert rules(inside, n["firewall"]) == [
        "ip saddr != { 198.51.100.0/24 , 203.0.113.0/28 , 203.0.113.10 , 203.0.113.11 } drop"]
    # NodePorts are not filtered.
    assert elements(inside, "service-nodeports") == {f"tcp . 30082 : goto {n['external']}"}


def test_source_ranges_without_endpoints_still_filter():
    st = table(BASE + [service("shop", "lb", "10.96.8.4", TCP80, "LoadBalancer", lb=["203.0.113.10"],
                               loadBalancerSourceRanges=["198.51.100.0/24"])])
    n = names("shop", "lb")
    assert service_chains(st) == {n["firewall"]}
    assert elements(st, "firewall-ips") == {f"203.0.113.10 . tcp . 80 : goto {n['firewall']}"}
    assert '203.0.113.10 . tcp . 80 comment "shop/lb:http" : goto reject-chain' in elements(st, "no-endpoint-services")


# ----------------------------------------------------------------------------- affinity


def test_session_affinity_sets_and_endpoint_chains():
    st = table(BASE + [
        service("shop", "sticky", "10.96.9.1", TCP80, sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 900}}),
        endpoints("shop", "sticky", EP80, [("10.70.2.11", NODE), ("10.70.1.11", "edge-1")]),
    ])
    n = names("shop", "sticky")
    e1, a1 = ep_names("shop", "sticky", "10.70.1.11/8080")
    e2, a2 = ep_names("shop", "sticky", "10.70.2.11/8080")
    assert service_chains(st) == {n["service"], e1, e2}
    assert rules(st, n["service"]) == [
        f"ip saddr @{a1} goto {e1}",
        f"ip saddr @{a2} goto {e2}",
        f"numgen random mod 2 vmap {{ 0 : goto {e1} , 1 : goto {e2} }}",
    ]
    assert rules(st, e1) == [f"update @{a1} {{ ip saddr }}", "meta l4proto tcp dnat to 10.70.1.11:8080"]
    assert rules(st, e2) == [f"update @{a2} {{ ip saddr }}", "meta l4proto tcp dnat to 10.70.2.11:8080"]
    for a in (a1, a2):
        d = st.sets[a].decl
        assert (d.type, d.flags, d.timeout, d.comment) == ("ipv4_addr", ("dynamic", "timeout"), 900, None)
    text = compile_nft(BASE + [service("shop", "sticky", "10.96.9.1", TCP80, sessionAffinity="ClientIP"),
                               endpoints("shop", "sticky", EP80, [("10.70.1.11", "edge-1")])]).text
    assert f"add set ip kube-proxy {a1} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }}" in text
    assert f"flush set ip kube-proxy {a1}" not in text  # live affinity entries survive a reload


# ----------------------------------------------------------------------------- masquerading


@pytest.mark.parametrize("objs, flags, rule", [
    ([node(), config(masqueradeAll=False)], {"masquerade_all": True},
     f'ip daddr @cluster-ips {MASQ} comment "masquerade all clusterIP traffic"'),
    ([node(), config(nftables={"masqueradeAll": True})], {},
     f'ip daddr @cluster-ips {MASQ} comment "masquerade all clusterIP traffic"'),
    ([node(), config(detectLocalMode="BridgeInterface", detectLocal={"bridgeInterface": "br-pods"})], {},
     f'ip daddr @cluster-ips iifname != br-pods {MASQ} comment "masquerade clusterIP traffic from outside cluster"'),
    ([node(), config(detectLocalMode="InterfaceNamePrefix", detectLocal={"interfaceNamePrefix": "cali"})], {},
     f'ip daddr @cluster-ips iifname != cali* {MASQ} comment "masquerade clusterIP traffic from outside cluster"'),
    ([node(), config(detectLocalMode="NodeCIDR")], {},
     f'ip daddr @cluster-ips ip saddr != 10.70.2.0/24 {MASQ} comment "masquerade clusterIP traffic from outside cluster"'),
    ([node(), {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration"}], {}, None),
])
def test_clusterip_masquerade_rule_per_detector(objs, flags, rule):
    st = table(objs + [service("ops", "idle", "10.96.40.1", TCP80)], **flags)
    got = [r for r in rules(st, "services") if "@cluster-ips" in r]
    assert got == ([rule] if rule else [])


def test_interface_detectors_short_circuit_pod_traffic_by_interface():
    st = table([node(), config(detectLocalMode="InterfaceNamePrefix", detectLocal={"interfaceNamePrefix": "cali"}),
                service("shop", "edge", "10.96.8.2", [("http", 80, "TCP", 30081)], "NodePort",
                        externalTrafficPolicy="Local"),
                endpoints("shop", "edge", EP80, [("10.70.2.5", NODE)])])
    n = names("shop", "edge")
    assert rules(st, n["external"])[0] == f'iifname cali* goto {n["service"]} comment "short-circuit pod traffic"'
    nodetect = table([node(), {"kind": "KubeProxyConfiguration", "apiVersion": "kubeproxy.config.k8s.io/v1alpha1"},
                      service("shop", "edge", "10.96.8.2", [("http", 80, "TCP", 30081)], "NodePort",
                              externalTrafficPolicy="Local"),
                      endpoints("shop", "edge", EP80, [("10.70.2.5", NODE)])])
    assert rules(nodetect, n["external"])[0] == f'fib saddr type local {MASQ} comment "masquerade local traffic"'


def test_masquerade_bit_from_the_nftables_section_only():
    objs = [service("ops", "idle", "10.96.40.1", TCP80)]
    st = table([node(), config(iptables={"masqueradeBit": 5}, nftables={"masqueradeBit": 9})] + objs)
    assert rules(st, "masquerading")[0] == "mark and 0x00000200 != 0 mark set mark xor 0x00000200 masquerade fully-random"
    st = table([node(), config(iptables={"masqueradeBit": 5})] + objs)
    assert "0x00004000" in rules(st, "masquerading")[0]
    st = table([node(), config(nftables={"masqueradeBit": 9})] + objs, masquerade_bit=3)
    assert "0x00000008" in rules(st, "masquerading")[0]


# ----------------------------------------------------------------------------- NodePort addresses


def _nodeport_view(**flags):
    st = table([node(addresses=(NODE_IP, "192.0.2.21", "198.51.100.30", "2001:db8:2::20")), config(),
                service("shop", "web", "10.96.8.1", [("http", 80, "TCP", 30080)], "NodePort"),
                endpoints("shop", "web", EP80, [("10.70.1.4", "edge-1")])], **flags)
    return st, [r for r in rules(st, "services") if "service-nodeports" in r], rules(st, "nodeport-endpoints-check")


def test_nodeport_addresses_default_is_the_primary_ip():
    st, services, check = _nodeport_view()
    assert elements(st, "nodeport-ips") == {NODE_IP}
    assert services == ["ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"]
    assert check == ["ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"]


def test_nodeport_addresses_everywhere_uses_fib_and_has_no_set():
    st, services, check = _nodeport_view(nodeport_addresses="0.0.0.0/0")
    assert "nodeport-ips" not in st.sets
    assert services == ["fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"]
    assert check == ["ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"]
    text = compile_nft([node(), config(), service("ops", "idle", "10.96.40.1", TCP80)],
                       nodeport_addresses="0.0.0.0/0").text
    assert "delete set ip kube-proxy nodeport-ips\n" in text


def test_nodeport_addresses_cidrs_never_take_loopback():
    st, _, _ = _nodeport_view(nodeport_addresses="192.0.2.0/24,127.0.0.0/8,2001:db8::/32")
    assert elements(st, "nodeport-ips") == {NODE_IP, "192.0.2.21"}
    st, _, _ = _nodeport_view(nodeport_addresses="198.51.100.0/24,primary")
    assert elements(st, "nodeport-ips") == {NODE_IP, "198.51.100.30"}


def test_no_node_address_means_no_nodeport_address():
    st = table([config(), service("ops", "idle", "10.96.40.1", TCP80)])
    assert "nodeport-ips" in st.sets and elements(st, "nodeport-ips") == set()


# ----------------------------------------------------------------------------- ClusterIP protection


def test_service_cidrs_from_objects_and_from_the_flag():
    objs = BASE + [service("ops", "idle", "10.96.40.1", TCP80),
                   service_cidr("kubernetes", "10.96.0.0/16", "fd00:96::/112"),
                   service_cidr("extra", "10.100.0.0/20", "10.96.0.0/16")]
    st = table(objs)
    assert rules(st, "cluster-ips-check") == [
        'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
        'ip daddr { 10.96.0.0/16,10.100.0.0/20 } drop comment "Drop traffic to unallocated ClusterIPs"',
    ]
    st = table(objs, service_cidr=["10.111.0.0/16"])
    assert rules(st, "cluster-ips-check")[1] == 'ip daddr { 10.111.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"'
    st = table(objs, ip_family="ipv6")
    assert rules(st, "cluster-ips-check")[1] == 'ip6 daddr { fd00:96::/112 } drop comment "Drop traffic to unallocated ClusterIPs"'


# ----------------------------------------------------------------------------- IPv6


def test_ipv6_spelling():
    st = table([node(), config(clusterCIDR="10.70.0.0/16,fd00:70::/48"),
                service("shop", "v6", "fd00:96::17", [("dns", 53, "UDP")], sessionAffinity="None",
                        ipFamilies=["IPv6"], clusterIPs=["fd00:96::17"]),
                endpoints("shop", "v6", [("dns", 5353, "UDP")],
                          [("fd00:70:2::5", NODE), ("fd00:70:1::5", "edge-1")], family="IPv6")],
               ip_family="ipv6")
    n = names("shop", "v6", "udp", "dns")
    assert rules(st, n["service"]) == [
        "meta l4proto udp dnat ip6 addr . port to numgen random mod 2 map "
        "{ 0 : fd00:70:1::5 . 5353 , 1 : fd00:70:2::5 . 5353 }"]
    assert rules(st, "services")[0] == (f'ip6 daddr @cluster-ips ip6 saddr != fd00:70::/48 {MASQ} '
                                        'comment "masquerade clusterIP traffic from outside cluster"')
    assert rules(st, "masquerading")[1].startswith("ct status dnat ip6 saddr . ip6 daddr . ")
    assert elements(st, "hairpin-connections") == {"fd00:70:2::5 . fd00:70:2::5 . udp . 5353"}
    assert elements(st, "nodeport-ips") == {"2001:db8:2::20"}
    assert st.sets["cluster-ips"].decl.type == "ipv6_addr" and st.family == "ip6"


def test_ipv6_affinity_names_and_dnat():
    st = table([node(), config(clusterCIDR="fd00:70::/48"),
                service("shop", "v6", "fd00:96::18", TCP80, sessionAffinity="ClientIP", clusterIPs=["fd00:96::18"],
                        ipFamilies=["IPv6"]),
                endpoints("shop", "v6", EP80, [("fd00:70:1::9", "edge-1")], family="IPv6")], ip_family="ipv6")
    e, a = ep_names("shop", "v6", "fd00.70.1..9/8080")
    assert rules(st, e) == [f"update @{a} {{ ip6 saddr }}", "meta l4proto tcp dnat to [fd00:70:1::9]:8080"]


# ----------------------------------------------------------------------------- shared elements


def test_shared_keys_hairpin_once_and_last_port_wins():
    objs = BASE + [
        service("a-ns", "one", "10.96.50.1", TCP80, externalIPs=["198.51.100.9"]),
        endpoints("a-ns", "one", EP80, [("10.70.2.40", NODE)]),
        service("b-ns", "two", "10.96.50.2", TCP80, externalIPs=["198.51.100.9"]),
        endpoints("b-ns", "two", EP80, [("10.70.2.40", NODE)]),
    ]
    c = compile_nft(objs)
    st = table(objs)
    assert elements(st, "hairpin-connections") == {"10.70.2.40 . 10.70.2.40 . tcp . 8080"}
    assert c.text.count("add element ip kube-proxy hairpin-connections") == 1
    two = names("b-ns", "two")
    assert f"198.51.100.9 . tcp . 80 : goto {two['external']}" in elements(st, "service-ips")
    one = names("a-ns", "one")
    assert (f"delete element ip kube-proxy service-ips {{ 198.51.100.9 . tcp . 80 }}\n"
            f"add element ip kube-proxy service-ips {{ 198.51.100.9 . tcp . 80 : goto {two['external']} }}") in c.text
    assert f"198.51.100.9 . tcp . 80 : goto {one['external']}" in c.text


def test_two_ports_share_the_cluster_ip_element():
    c = compile_nft(BASE + [service("shop", "multi", "10.96.60.1", [("a", 80, "TCP"), ("b", 81, "TCP")])])
    assert c.text.count("add element ip kube-proxy cluster-ips") == 1


def test_many_endpoints_are_numbered_past_the_precomputed_indexes():
    eps = [(f"10.71.{i // 200}.{i % 200 + 1}", "edge-1") for i in range(300)]
    st = table(BASE + [service("shop", "wide", "10.96.9.9", TCP80), endpoints("shop", "wide", EP80, eps)])
    (rule,) = rules(st, names("shop", "wide")["service"])
    body = rule.split("map { ", 1)[1].rstrip(" }")
    entries = body.split(" , ")
    assert rule.startswith("meta l4proto tcp dnat ip addr . port to numgen random mod 300 map { ")
    assert [int(e.split(" : ")[0]) for e in entries] == list(range(300))
    expected_order = sorted(f"{ip}:8080" for ip, _ in eps)  # byte-wise ip:port order
    assert [e.split(" : ")[1].replace(" . ", ":") for e in entries] == expected_order


def test_a_bad_nftables_mark_bit_is_a_clear_usage_error(tmp_path):
    from click.testing import CliRunner

    from rulegen.cli import main

    cfg = tmp_path / "kp.yaml"
    cfg.write_text("kind: KubeProxyConfiguration\napiVersion: kubeproxy.config.k8s.io/v1alpha1\n"
                   "nftables: {masqueradeBit: 40}\n")
    svc = tmp_path / "svc.yaml"
    svc.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: b}\n"
                   "spec: {clusterIP: 10.96.0.5, ports: [{name: p, port: 80, protocol: TCP}]}\n")
    r = CliRunner().invoke(main, ["compile", str(svc), "--config", str(cfg), "--mode", "nftables"])
    assert r.exit_code == 2 and "nftables.masqueradeBit: 40 is not between 0 and 31" in r.stderr
    assert "Traceback" not in r.output
    # iptables mode does not read the nftables section.
    r = CliRunner().invoke(main, ["compile", str(svc), "--config", str(cfg)])
    assert r.exit_code == 0 and "--or-mark 0x00004000" in r.stdout


@pytest.mark.parametrize("mode, field, value", [
    ("BridgeInterface", "bridgeInterface", "br0 accept ; flush ruleset"),
    ("BridgeInterface", "bridgeInterface", 'br"0'),
    ("InterfaceNamePrefix", "interfaceNamePrefix", "veth\nadd"),
    ("InterfaceNamePrefix", "interfaceNamePrefix", "a-name-far-too-long"),
])
def test_interface_names_from_the_configuration_are_checked(mode, field, value):
    """The loader reports a bad interface name and ignores it: no detector, and nothing of it in the script."""
    from rulegen.diagnostics import Place, Report
    from rulegen.loader import load_objects
    from rulegen.pipeline import Timings, compile_inputs

    objs = [node(), config(detectLocalMode=mode, detectLocal={field: value}), service("ops", "idle", "10.96.40.1", TCP80)]
    report = Report()
    inputs = load_objects([(Place("test.yaml", i + 1), o) for i, o in enumerate(objs)], report)
    assert [p.field for p in report.errors] == [f"detectLocal.{field}"]
    text = compile_inputs(inputs, {"mode": "nftables"}, report, Timings()).text
    assert "iifname" not in text and value.split()[0] not in text.replace("ops/idle", "")


def test_the_compile_cache_compiles_this_mode_in_full(tmp_path):
    from pathlib import Path

    from rulegen.diagnostics import Report
    from rulegen.pipeline import compile_files, compile_files_cached

    case = Path(__file__).resolve().parents[3] / "fixtures" / "clusterip-basic"
    paths = [str(case / "input.yaml"), str(case / "node.yaml")]
    cached = compile_files_cached(paths, {"mode": "nftables"}, Report(), None, str(tmp_path / "c.msgpack"))
    assert cached.text == compile_files(paths, {"mode": "nftables"}).text
    assert cached.text.startswith("add table ip kube-proxy")


# ----------------------------------------------------------------------------- scaling (counted, not timed)


def test_nftables_compile_and_render_grow_linearly(tmp_path):
    """Lines executed per function at 100, 1,000 and 2,000 generated Services: no superlinear step.

    `make bench`'s 10k/1k growth budget is a stopwatch on a shared machine; this is the same question
    without one (the compile stage alone grew 8.9× from 1k to 10k, warm, on 2026-12-06)."""
    from linecount import SIZES, _clear_caches, _write, line_counts, superlinear

    from rulegen.pipeline import compile_files

    paths = {n: _write(tmp_path, n, "json") for n in SIZES}
    compile_files([_write(tmp_path, 20, "json")], {"mode": "nftables"}).text  # imports paid once
    counts = {}
    for n, path in paths.items():
        _clear_caches()
        counts[n] = line_counts(lambda: compile_files([path], {"mode": "nftables"}).text)
    ours = {n: {f: k for f, k in c.items() if f.startswith(("compile.py", "render.py", "model.py"))}
            for n, c in counts.items()}
    assert sum(ours[SIZES[-1]].values()) > 10 * SIZES[-1], "the nftables compiler was not counted"
    assert superlinear(counts) == []
