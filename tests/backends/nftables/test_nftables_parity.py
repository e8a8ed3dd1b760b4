"""kube-proxy parity: for our own scenarios, the state kube-proxy's nftables proxier would leave, written by hand.

Each expectation is written the way kube-proxy's own tests write theirs (a
knftables dump: objects, then rules chain by chain, then elements), from
kube-proxy's logic as docs/nftables-mode.md sets it out, and compared with
rulegen's compile through the normal form: objects by name, rules in order
within a chain, elements as sets. Names of per-service objects are written
as `{H:base}`, expanded with an independent implementation of kube-proxy's
hash (sha256, base32, 8 characters). Scenarios, names and addresses are
invented.
"""

from __future__ import annotations

import re

import pytest
from nftgen import NODE, compile_nft, config, endpoints, hashed, node, service, service_cidr

from rulegen.dataplane.nft import parse, state

M = "0x00004000"


def skeleton(fam: str = "ip", *, masq_rule: str | None, nodeports: str = "set", np_ips=("192.0.2.20",),
             cidrs: str | None = None) -> str:
    """kube-proxy's fixed objects and rules, as its tests' baseRules list them."""
    addr = "ipv6_addr" if fam == "ip6" else "ipv4_addr"
    lo = "::1" if fam == "ip6" else "127.0.0.0/8"
    t = f"{fam} kube-proxy"
    out = [f'add table {t} {{ comment "rules for kube-proxy" ; }}']
    out += [f"add set {t} cluster-ips {{ type {addr} ; comment \"Active ClusterIPs\" ; }}",
            f"add set {t} hairpin-connections {{ type {addr} . {addr} . inet_proto . inet_service ; "
            f"comment \"service hairpin connections\" ; }}"]
    if nodeports == "set":
        out.append(f'add set {t} nodeport-ips {{ type {addr} ; comment "IPs that accept NodePort traffic" ; }}')
    out += [
        f'add map {t} firewall-ips {{ type {addr} . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}',
        f'add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}',
        f'add map {t} no-endpoint-services {{ type {addr} . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}',
        f'add map {t} service-ips {{ type {addr} . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}',
        f'add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}',
        f"add chain {t} cluster-ips-check",
        f"add chain {t} filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; }}",
        f"add chain {t} filter-output-pre-dnat {{ type filter hook output priority -110 ; }}",
        f"add chain {t} filter-forward {{ type filter hook forward priority 0 ; }}",
        f"add chain {t} filter-input {{ type filter hook input priority 0 ; }}",
        f"add chain {t} filter-output {{ type filter hook output priority 0 ; }}",
        f"add chain {t} firewall-check",
        f"add chain {t} masquerading",
        f"add chain {t} nat-output {{ type nat hook output priority -100 ; }}",
        f"add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}",
        f"add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}",
        f"add chain {t} nodeport-endpoints-check",
        f'add chain {t} reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}',
        f"add chain {t} services",
        f"add chain {t} service-endpoints-check",
        f'add rule {t} cluster-ips-check {fam} daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
    ]
    if cidrs:
        out.append(f'add rule {t} cluster-ips-check {fam} daddr {{ {cidrs} }} drop comment "Drop traffic to unallocated ClusterIPs"')
    out += [
        f"add rule {t} filter-prerouting-pre-dnat ct state new jump firewall-check",
        f"add rule {t} filter-forward ct state new jump service-endpoints-check",
        f"add rule {t} filter-forward ct state new jump cluster-ips-check",
        f"add rule {t} filter-input ct state new jump nodeport-endpoints-check",
        f"add rule {t} filter-input ct state new jump service-endpoints-check",
        f"add rule {t} filter-output ct state new jump service-endpoints-check",
        f"add rule {t} filter-output ct state new jump cluster-ips-check",
        f"add rule {t} filter-output-pre-dnat ct state new jump firewall-check",
        f"add rule {t} firewall-check {fam} daddr . meta l4proto . th dport vmap @firewall-ips",
        f"add rule {t} masquerading mark and {M} != 0 mark set mark xor {M} masquerade fully-random",
        f"add rule {t} masquerading ct status dnat {fam} saddr . {fam} daddr . meta l4proto . th dport @hairpin-connections masquerade fully-random",
        f"add rule {t} nat-output jump services",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add rule {t} nat-prerouting jump services",
        f"add rule {t} reject-chain reject",
    ]
    if nodeports == "set":
        out.append(f"add rule {t} nodeport-endpoints-check {fam} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports")
    else:
        out.append(f"add rule {t} nodeport-endpoints-check {fam} daddr != {lo} meta l4proto . th dport vmap @no-endpoint-nodeports")
    if masq_rule:
        out.append(f"add rule {t} services {masq_rule}")
    out.append(f"add rule {t} services {fam} daddr . meta l4proto . th dport vmap @service-ips")
    if nodeports == "set":
        out.append(f"add rule {t} services {fam} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports")
        out += [f"add element {t} nodeport-ips {{ {ip} }}" for ip in np_ips]
    else:
        out.append(f"add rule {t} services fib daddr type local {fam} daddr != {lo} meta l4proto . th dport vmap @service-nodeports")
    out.append(f"add rule {t} service-endpoints-check {fam} daddr . meta l4proto . th dport vmap @no-endpoint-services")
    return "\n".join(out) + "\n"


def expand(text: str) -> str:
    return re.sub(r"\{H:([^}]+)\}", lambda m: hashed(m.group(1)), text)


def assert_parity(expected: str, objs: list, **flags):
    want = state.normalise(parse.read_state(expand(expected)))
    got = state.normalise(state.replay(compile_nft(objs, **flags).ir))
    assert state.compare(want, got) == []
    assert want == got


CIDR_MASQ = (f'ip daddr @cluster-ips ip saddr != 10.70.0.0/16 mark set mark or {M} '
             'comment "masquerade clusterIP traffic from outside cluster"')

# --------------------------------------------------------------------------- scenario 1

SCENARIO_1 = [
    node(), config(),
    service_cidr("kubernetes", "10.96.0.0/16"),
    # a ClusterIP Service with a local and a remote endpoint
    service("north", "catalog", "10.96.1.10", [("web", 80, "TCP")]),
    endpoints("north", "catalog", [("web", 8080, "TCP")], [("10.70.2.30", NODE), ("10.70.1.31", "edge-1")]),
    # a NodePort Service, policy Cluster, one remote endpoint
    service("north", "intake", "10.96.1.11", [("api", 443, "TCP", 31443)], "NodePort"),
    endpoints("north", "intake", [("api", 8443, "TCP")], [("10.70.3.40", "edge-3")]),
    # a Service whose only endpoint is not ready
    service("north", "queue", "10.96.1.12", [("amqp", 5672, "TCP")]),
    endpoints("north", "queue", [("amqp", 5672, "TCP")], [("10.70.2.50", NODE, {"ready": False})]),
]

EXPECTED_1 = skeleton(masq_rule=CIDR_MASQ, cidrs="10.96.0.0/16") + """
add chain ip kube-proxy service-{H:north/catalog/tcp/web}
add rule ip kube-proxy service-{H:north/catalog/tcp/web} meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.70.1.31 . 8080 , 1 : 10.70.2.30 . 8080 }
add element ip kube-proxy cluster-ips { 10.96.1.10 }
add element ip kube-proxy service-ips { 10.96.1.10 . tcp . 80 : goto service-{H:north/catalog/tcp/web} }
add element ip kube-proxy hairpin-connections { 10.70.2.30 . 10.70.2.30 . tcp . 8080 }

add chain ip kube-proxy service-{H:north/intake/tcp/api}
add rule ip kube-proxy service-{H:north/intake/tcp/api} meta l4proto tcp dnat ip addr . port to numgen random mod 1 map { 0 : 10.70.3.40 . 8443 }
add chain ip kube-proxy external-{H:north/intake/tcp/api}
add rule ip kube-proxy external-{H:north/intake/tcp/api} mark set mark or 0x00004000 comment "masquerade"
add rule ip kube-proxy external-{H:north/intake/tcp/api} goto service-{H:north/intake/tcp/api}
add element ip kube-proxy cluster-ips { 10.96.1.11 }
add element ip kube-proxy service-ips { 10.96.1.11 . tcp . 443 : goto service-{H:north/intake/tcp/api} }
add element ip kube-proxy service-nodeports { tcp . 31443 : goto external-{H:north/intake/tcp/api} }

add element ip kube-proxy cluster-ips { 10.96.1.12 }
add element ip kube-proxy no-endpoint-services { 10.96.1.12 . tcp . 5672 comment "north/queue:amqp" : goto reject-chain }
"""


def test_clusterip_nodeport_and_no_endpoints():
    assert_parity(EXPECTED_1, SCENARIO_1)


# --------------------------------------------------------------------------- scenario 2

SCENARIO_2 = [
    node(), config(),
    # LoadBalancer, policy Local, source ranges that hold the node IP, session affinity
    service("south", "gate", "10.96.2.20", [("tls", 443, "TCP", 30443)], "LoadBalancer",
            externalTrafficPolicy="Local", lb=["203.0.113.70"], externalIPs=["198.51.100.70"],
            loadBalancerSourceRanges=["192.0.2.0/24", "198.51.100.0/26"], healthCheckNodePort=32100,
            sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 300}}),
    endpoints("south", "gate", [("tls", 9443, "TCP")], [("10.70.2.70", NODE), ("10.70.4.70", "edge-4")]),
]

EXPECTED_2 = skeleton(masq_rule=CIDR_MASQ) + """
add set ip kube-proxy affinity-{H:south/gate/tcp/tls__10.70.2.70/9443} { type ipv4_addr ; flags dynamic,timeout ; timeout 300s ; }
add set ip kube-proxy affinity-{H:south/gate/tcp/tls__10.70.4.70/9443} { type ipv4_addr ; flags dynamic,timeout ; timeout 300s ; }
add chain ip kube-proxy endpoint-{H:south/gate/tcp/tls__10.70.2.70/9443}
add chain ip kube-proxy endpoint-{H:south/gate/tcp/tls__10.70.4.70/9443}
add chain ip kube-proxy service-{H:south/gate/tcp/tls}
add chain ip kube-proxy local-{H:south/gate/tcp/tls}
add chain ip kube-proxy external-{H:south/gate/tcp/tls}
add chain ip kube-proxy firewall-{H:south/gate/tcp/tls}

add rule ip kube-proxy endpoint-{H:south/gate/tcp/tls__10.70.2.70/9443} update @affinity-{H:south/gate/tcp/tls__10.70.2.70/9443} { ip saddr }
add rule ip kube-proxy endpoint-{H:south/gate/tcp/tls__10.70.2.70/9443} meta l4proto tcp dnat to 10.70.2.70:9443
add rule ip kube-proxy endpoint-{H:south/gate/tcp/tls__10.70.4.70/9443} update @affinity-{H:south/gate/tcp/tls__10.70.4.70/9443} { ip saddr }
add rule ip kube-proxy endpoint-{H:south/gate/tcp/tls__10.70.4.70/9443} meta l4proto tcp dnat to 10.70.4.70:9443
add rule ip kube-proxy service-{H:south/gate/tcp/tls} ip saddr @affinity-{H:south/gate/tcp/tls__10.70.2.70/9443} goto endpoint-{H:south/gate/tcp/tls__10.70.2.70/9443}
add rule ip kube-proxy service-{H:south/gate/tcp/tls} ip saddr @affinity-{H:south/gate/tcp/tls__10.70.4.70/9443} goto endpoint-{H:south/gate/tcp/tls__10.70.4.70/9443}
add rule ip kube-proxy service-{H:south/gate/tcp/tls} numgen random mod 2 vmap { 0 : goto endpoint-{H:south/gate/tcp/tls__10.70.2.70/9443} , 1 : goto endpoint-{H:south/gate/tcp/tls__10.70.4.70/9443} }
add rule ip kube-proxy local-{H:south/gate/tcp/tls} ip saddr @affinity-{H:south/gate/tcp/tls__10.70.2.70/9443} goto endpoint-{H:south/gate/tcp/tls__10.70.2.70/9443}
add rule ip kube-proxy local-{H:south/gate/tcp/tls} numgen random mod 1 vmap { 0 : goto endpoint-{H:south/gate/tcp/tls__10.70.2.70/9443} }
add rule ip kube-proxy external-{H:south/gate/tcp/tls} ip saddr 10.70.0.0/16 goto service-{H:south/gate/tcp/tls} comment "short-circuit pod traffic"
add rule ip kube-proxy external-{H:south/gate/tcp/tls} fib saddr type local mark set mark or 0x00004000 comment "masquerade local traffic"
add rule ip kube-proxy external-{H:south/gate/tcp/tls} fib saddr type local goto service-{H:south/gate/tcp/tls} comment "short-circuit local traffic"
add rule ip kube-proxy external-{H:south/gate/tcp/tls} goto local-{H:south/gate/tcp/tls}
add rule ip kube-proxy firewall-{H:south/gate/tcp/tls} ip saddr != { 192.0.2.0/24 , 198.51.100.0/26 , 203.0.113.70 } drop

add element ip kube-proxy cluster-ips { 10.96.2.20 }
add element ip kube-proxy service-ips { 10.96.2.20 . tcp . 443 : goto service-{H:south/gate/tcp/tls} }
add element ip kube-proxy service-ips { 198.51.100.70 . tcp . 443 : goto external-{H:south/gate/tcp/tls} }
add element ip kube-proxy service-ips { 203.0.113.70 . tcp . 443 : goto external-{H:south/gate/tcp/tls} }
add element ip kube-proxy service-nodeports { tcp . 30443 : goto external-{H:south/gate/tcp/tls} }
add element ip kube-proxy firewall-ips { 203.0.113.70 . tcp . 443 : goto firewall-{H:south/gate/tcp/tls} }
add element ip kube-proxy hairpin-connections { 10.70.2.70 . 10.70.2.70 . tcp . 9443 }
"""


def test_load_balancer_local_policy_firewall_and_affinity():
    assert_parity(EXPECTED_2, SCENARIO_2)


# --------------------------------------------------------------------------- scenario 3

SCENARIO_3 = [
    node(), {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
             "nftables": {"masqueradeAll": True}},
    # internalTrafficPolicy Local without a local endpoint, reachable by NodePort
    service("east", "agent", "10.96.3.30", [("grpc", 9000, "TCP", 30900)], "NodePort",
            internalTrafficPolicy="Local"),
    endpoints("east", "agent", [("grpc", 9000, "TCP")], [("10.70.5.30", "edge-5")]),
    # externalTrafficPolicy Local without a local endpoint: with no local-traffic
    # detector there is no pod short-circuit rule
    service("east", "relay", "10.96.3.31", [("", 3478, "UDP", 30478)], "NodePort",
            externalTrafficPolicy="Local"),
    endpoints("east", "relay", [("", 3478, "UDP")], [("10.70.6.31", "edge-6")]),
]

EXPECTED_3 = skeleton(masq_rule=f'ip daddr @cluster-ips mark set mark or {M} comment "masquerade all clusterIP traffic"') + """
add chain ip kube-proxy service-{H:east/agent/tcp/grpc}
add chain ip kube-proxy external-{H:east/agent/tcp/grpc}
add rule ip kube-proxy service-{H:east/agent/tcp/grpc} meta l4proto tcp dnat ip addr . port to numgen random mod 1 map { 0 : 10.70.5.30 . 9000 }
add rule ip kube-proxy external-{H:east/agent/tcp/grpc} mark set mark or 0x00004000 comment "masquerade"
add rule ip kube-proxy external-{H:east/agent/tcp/grpc} goto service-{H:east/agent/tcp/grpc}
add element ip kube-proxy cluster-ips { 10.96.3.30 }
add element ip kube-proxy no-endpoint-services { 10.96.3.30 . tcp . 9000 comment "east/agent:grpc" : drop }
add element ip kube-proxy service-nodeports { tcp . 30900 : goto external-{H:east/agent/tcp/grpc} }

add chain ip kube-proxy service-{H:east/relay/udp/}
add chain ip kube-proxy external-{H:east/relay/udp/}
add rule ip kube-proxy service-{H:east/relay/udp/} meta l4proto udp dnat ip addr . port to numgen random mod 1 map { 0 : 10.70.6.31 . 3478 }
add rule ip kube-proxy external-{H:east/relay/udp/} fib saddr type local mark set mark or 0x00004000 comment "masquerade local traffic"
add rule ip kube-proxy external-{H:east/relay/udp/} fib saddr type local goto service-{H:east/relay/udp/} comment "short-circuit local traffic"
add element ip kube-proxy cluster-ips { 10.96.3.31 }
add element ip kube-proxy service-ips { 10.96.3.31 . udp . 3478 : goto service-{H:east/relay/udp/} }
add element ip kube-proxy service-nodeports { udp . 30478 : goto external-{H:east/relay/udp/} }
add element ip kube-proxy no-endpoint-nodeports { udp . 30478 comment "east/relay" : drop }
"""


def test_local_policies_without_local_endpoints_masquerade_all_and_no_detector():
    assert_parity(EXPECTED_3, SCENARIO_3)


# --------------------------------------------------------------------------- scenario 4 (IPv6)

SCENARIO_4 = [
    node(), config(clusterCIDR="fd00:70::/48", nodePortAddresses=["::/0"]),
    service_cidr("kubernetes", "10.96.0.0/16", "fd00:96::/108"),
    service("west", "feed", "fd00:96::40", [("http", 80, "TCP", 30080)], "LoadBalancer",
            lb=["2001:db8:7::40", "203.0.113.40"], ipFamilies=["IPv6"], clusterIPs=["fd00:96::40"]),
    endpoints("west", "feed", [("http", 8080, "TCP")],
              [("fd00:70:2::40", NODE), ("fd00:70:9::40", "edge-9"), ("fd00:70:2::41", NODE,
                                                                        {"ready": False, "serving": True, "terminating": True})],
              family="IPv6"),
]

EXPECTED_4 = skeleton("ip6", nodeports="all", cidrs="fd00:96::/108",
                      masq_rule=f'ip6 daddr @cluster-ips ip6 saddr != fd00:70::/48 mark set mark or {M} '
                                'comment "masquerade clusterIP traffic from outside cluster"') + """
add chain ip6 kube-proxy service-{H:west/feed/tcp/http}
add chain ip6 kube-proxy external-{H:west/feed/tcp/http}
add rule ip6 kube-proxy service-{H:west/feed/tcp/http} meta l4proto tcp dnat ip6 addr . port to numgen random mod 2 map { 0 : fd00:70:2::40 . 8080 , 1 : fd00:70:9::40 . 8080 }
add rule ip6 kube-proxy external-{H:west/feed/tcp/http} mark set mark or 0x00004000 comment "masquerade"
add rule ip6 kube-proxy external-{H:west/feed/tcp/http} goto service-{H:west/feed/tcp/http}
add element ip6 kube-proxy cluster-ips { fd00:96::40 }
add element ip6 kube-proxy service-ips { fd00:96::40 . tcp . 80 : goto service-{H:west/feed/tcp/http} }
add element ip6 kube-proxy service-ips { 2001:db8:7::40 . tcp . 80 : goto external-{H:west/feed/tcp/http} }
add element ip6 kube-proxy service-nodeports { tcp . 30080 : goto external-{H:west/feed/tcp/http} }
add element ip6 kube-proxy hairpin-connections { fd00:70:2::40 . fd00:70:2::40 . tcp . 8080 }
"""


def test_ipv6_load_balancer_with_nodeports_everywhere():
    assert_parity(EXPECTED_4, SCENARIO_4, ip_family="ipv6")


# --------------------------------------------------------------------------- the comparison itself


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("1 : 10.70.2.30 . 8080", "1 : 10.70.2.31 . 8080"),  # another endpoint
    lambda t: t.replace('add element ip kube-proxy hairpin-connections { 10.70.2.30 . 10.70.2.30 . tcp . 8080 }\n', ""),
    lambda t: t.replace("goto reject-chain }", "drop }"),
    lambda t: t.replace('comment "masquerade"\n', 'comment "masq"\n'),
])
def test_parity_notices_a_wrong_expectation(edit):
    changed = edit(EXPECTED_1)
    assert changed != EXPECTED_1
    with pytest.raises(AssertionError):
        assert_parity(changed, SCENARIO_1)
