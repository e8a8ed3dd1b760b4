"""The nft walk's pieces on their own: reading a rule in either spelling, each value matcher, the order
of base chains, verdicts and stacks, and numgen's exact shares."""

from __future__ import annotations

from fractions import Fraction

import pytest

from rulegen.dataplane.nft.parse import parse_listing, parse_script
from rulegen.dataplane.nft.state import replay
from rulegen.dataplane.nft.walk import (
    Dnat, Engine, Masquerade, Match, Numgen, Sel, SetMark, Unsupported, Update, Verdict, VMap, WalkError,
    address_in, base_chains, iface_is, parse_rule, port_in, proto_is, split_endpoint,
)
from rulegen.trace.model import Packet

# (what rulegen writes, what nft 1.0.6 lists back for it)
SPELLINGS = [
    ("ip daddr @cluster-ips ip saddr != 10.60.0.0/16 mark set mark or 0x00004000",
     "ip daddr @cluster-ips ip saddr != 10.60.0.0/16 meta mark set meta mark | 0x00004000"),
    ("mark and 0x00004000 != 0 mark set mark xor 0x00004000 masquerade fully-random",
     "meta mark & 0x00004000 != 0x00000000 meta mark set meta mark ^ 0x00004000 masquerade fully-random"),
    ("meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.1.0.7 . 8080 , 1 : 10.1.0.9 . 8080 }",
     "meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.1.0.7 . 8080, 1 : 10.1.0.9 . 8080 }"),
    ("iifname != veth* mark set mark or 0x00004000", 'iifname != "veth*" meta mark set meta mark | 0x00004000'),
    ("ip daddr { 10.112.0.0/16,10.113.0.0/20 } drop", "ip daddr { 10.112.0.0-10.113.15.255 } drop"),
    ("ip saddr != { 203.0.113.0/25 } drop", "ip saddr != 203.0.113.0/25 drop"),
    ("numgen random mod 2 vmap { 0 : goto endpoint-a , 1 : goto endpoint-b }",
     "numgen random mod 2 vmap { 0 : goto endpoint-a, 1 : goto endpoint-b }"),
]


@pytest.mark.parametrize("written,listed", SPELLINGS)
def test_both_spellings_read_the_same(written, listed):
    assert parse_rule(written) == parse_rule(listed)


def test_what_a_rule_is_read_as():
    assert parse_rule("ct state new jump firewall-check") == (
        Match((Sel("ct-state"),), False, (("new",),)), Verdict("jump", "firewall-check"))
    assert parse_rule("ip daddr . meta l4proto . th dport vmap @service-ips") == (
        VMap((Sel("daddr", "ip"), Sel("l4proto"), Sel("dport")), map="service-ips"),)
    assert parse_rule("mark and 0x4000 != 0 mark set mark xor 0x4000 masquerade fully-random") == (
        Match((Sel("mark"),), True, (("0x0",),), mask=0x4000), SetMark("^", 0x4000), Masquerade(("fully-random",)))
    assert parse_rule("update @affinity-x { ip6 saddr }") == (Update("affinity-x", (Sel("saddr", "ip6"),)),)
    assert parse_rule("meta l4proto udp dnat to [fd00::1]:53") == (
        Match((Sel("l4proto"),), False, (("udp",),)), Dnat("", to=("fd00::1", 53)))
    ng = parse_rule("meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.1.0.7 . 8080, 1 : 10.1.0.9 . 80 }")
    assert ng[-1] == Dnat("ip", numgen=Numgen(2, ((0, ("10.1.0.7", "8080")), (1, ("10.1.0.9", "80")))))
    assert parse_rule("fib saddr type local goto x")[0] == Match((Sel("fib-saddr"),), False, (("local",),))


@pytest.mark.parametrize("rule,msg", [
    ("counter drop", "unknown expression 'counter'"),
    ("ip daddr 10.0.0.1 drop accept", "drop is followed by more"),
    ("numgen inc mod 2 vmap { 0 : drop }", "numgen inc"),
    ("numgen random mod 2 offset 1 vmap { 0 : drop }", "offset"),
    ("ip daddr vmap { 10.0.0.1 : reject }", "is not a verdict"),
    ("fib daddr type nosuchtype drop", "fib type 'nosuchtype'"),
    ("ct state foo drop", "ct state 'foo'"),
    ("tcp dport 99999 drop", "is not a port"),
    ("ip daddr not-an-address drop", "is not an address"),
    ("meta l4proto . th dport @x . y", "unknown expression"),
    ("masquerade to :1000-2000", "port range"),
    ("reject with icmp type host-unreachable", "rejects plainly"),
    ("meta l4proto tcp dnat to 10.0.0.1:80 persistent extra", "unknown expression 'extra'"),
    ("meta l4proto tcp dnat to 10.0.0.1:80 - 10.0.0.2:80", "dnat to 10.0.0.1:80 -"),
    ("", "an empty rule"),
])
def test_what_is_not_understood_is_said(rule, msg):
    with pytest.raises(Unsupported) as e:
        parse_rule(rule)
    assert msg in str(e.value)


def test_value_matchers():
    assert address_in("10.0.0.5", "10.0.0.0/24") and not address_in("10.0.1.5", "10.0.0.0/24")
    assert address_in("10.113.15.255", "10.112.0.0-10.113.15.255") and not address_in("10.113.16.0",
                                                                                       "10.112.0.0-10.113.15.255")
    assert not address_in("fd00::1", "10.0.0.0/8")
    assert address_in("fd00:60::9", "fd00:60::/48") and not address_in("fd00:60:6::9", "fd00:60::/48")
    assert port_in(80, "80") and port_in(31000, "30000-32767") and not port_in(81, "80")
    assert proto_is("tcp", "6") and proto_is("udp", "udp") and not proto_is("tcp", "sctp")
    assert iface_is("veth7", "veth*") and not iface_is("eth0", "veth*") and iface_is("cbr0", "cbr0")
    assert not iface_is(None, "veth*") and not iface_is(None, "cbr0")
    assert split_endpoint("10.1.2.3:80") == ("10.1.2.3", 80)
    assert split_endpoint("[fd00::0001]:8080") == ("fd00::1", 8080)
    assert split_endpoint("10.1.2.3") == ("10.1.2.3", None)
    with pytest.raises(Unsupported):
        split_endpoint("10.1.2.3-10.1.2.9:80")


CHAINS = """add table ip t
add chain ip t late { type filter hook prerouting priority 0 ; }
add chain ip t nat-pre { type nat hook prerouting priority dstnat ; }
add chain ip t early { type filter hook prerouting priority dstnat-10 ; }
add chain ip t post { type nat hook postrouting priority srcnat ; }
add chain ip t helper
"""


def test_base_chains_run_by_priority_whatever_their_order():
    st = replay(parse_script(CHAINS))
    assert [(n, p) for n, _, h, p in base_chains(st) if h == "prerouting"] == \
        [("early", -110), ("nat-pre", -100), ("late", 0)]


def test_a_listing_names_priorities_by_words():
    st = parse_listing("table ip t {\n\tchain a {\n\t\ttype filter hook prerouting priority dstnat - 10; policy accept;\n"
                       "\t}\n\tchain b {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n}\n")[0]
    assert [(n, p) for n, _, _, p in base_chains(st)] == [("a", -110), ("b", -100)]


def engine_for(script: str, node_ips=("192.168.1.10",)) -> Engine:
    return Engine(replay(parse_script(script)), node_ips)


def outside(dst: str, port: int = 80) -> Packet:
    return Packet("tcp", "203.0.113.10", 40000, dst, port, "eth0")


def test_numgen_splits_into_exact_shares_and_a_missing_index_does_nothing():
    e = engine_for(CHAINS + "add rule ip t nat-pre meta l4proto tcp dnat ip addr . port to numgen random mod 3 "
                            "map { 0 : 10.0.0.1 . 80 , 2 : 10.0.0.2 . 80 }\n")
    paths = e.run(outside("10.96.0.1"), "PREROUTING")
    assert [(p.probability, p.packet.dst, p.verdict) for p in paths] == [
        (Fraction(1, 3), "10.0.0.1", "DNAT"), (Fraction(1, 3), "10.96.0.1", "ACCEPT"),
        (Fraction(1, 3), "10.0.0.2", "DNAT")]
    skip = [h for h in paths[1].hops if h.kind == "skip"]
    assert skip and skip[0].verdict == "numgen gave 1: no entry, the rule does nothing"


def test_goto_returns_to_the_callers_caller_and_jump_to_the_caller():
    e = engine_for(CHAINS + "add chain ip t a\nadd chain ip t b\n"
                            "add rule ip t late jump a\nadd rule ip t late ip daddr 10.96.0.1 drop\n"
                            "add rule ip t a goto b\nadd rule ip t a reject\nadd rule ip t b return\n")
    (p,) = e.run(outside("10.96.0.1"), "PREROUTING")
    # b returns to late (a's frame was replaced by the goto), so the drop is next, not a's reject
    assert p.verdict == "DROP"
    assert [h.chain for h in p.hops if h.kind == "rule"] == ["late", "a", "b", "late"]


def test_mark_ops_and_masquerade_in_postrouting():
    e = engine_for(CHAINS + "add chain ip t masq\nadd rule ip t nat-pre mark set mark or 0x4000\n"
                            "add rule ip t post jump masq\n"
                            "add rule ip t masq mark and 0x4000 != 0 mark set mark xor 0x4000 masquerade fully-random\n")
    (p,) = e.run(outside("10.1.1.1"), "PREROUTING")
    assert p.masquerade and p.packet.mark == 0 and p.packet.snat
    e = engine_for(CHAINS + "add chain ip t masq\nadd rule ip t post jump masq\n"
                            "add rule ip t masq mark and 0x4000 != 0 masquerade\n")
    (p,) = e.run(outside("10.1.1.1"), "PREROUTING")
    assert not p.masquerade


@pytest.mark.parametrize("rule,msg", [
    ("add rule ip t late masquerade", "only nat postrouting masquerades"),
    ("add rule ip t late meta l4proto tcp dnat to 10.0.0.1:80", "only nat prerouting/output chains DNAT"),
    ("add rule ip t late jump nat-pre", "to the base chain nat-pre"),
    ("add rule ip t late jump helper\nadd rule ip t helper jump helper", "loops back"),
    ("add rule ip t nat-pre meta l4proto tcp dnat to [fd00::1]:80", "dnat to fd00::1, another address family"),
])
def test_walk_errors_name_chain_and_rule(rule, msg):
    e = engine_for(CHAINS + rule + "\n")
    with pytest.raises(WalkError) as err:
        e.run(outside("10.96.0.1"), "PREROUTING")
    assert msg in err.value.message and err.value.number >= 1 and err.value.rule


def test_a_base_chain_on_a_hook_the_walk_does_not_know_is_refused():
    with pytest.raises(WalkError) as e:
        engine_for("add table ip t\nadd chain ip t odd { type route hook output priority 0 ; }\n")
    assert "type route" in e.value.message


def test_from_the_node_the_output_hook_reroutes_after_dnat_and_loops_back():
    e = engine_for("add table ip t\n"
                   "add chain ip t nat-out { type nat hook output priority -100 ; }\n"
                   "add chain ip t filt-out { type filter hook output priority 0 ; }\n"
                   "add chain ip t filt-in { type filter hook input priority 0 ; }\n"
                   "add chain ip t nat-pre { type nat hook prerouting priority -100 ; }\n"
                   "add rule ip t nat-out meta l4proto tcp dnat to 192.168.1.10:8080\n"
                   "add rule ip t filt-out ip daddr 192.168.1.10 accept\n"
                   "add rule ip t filt-in tcp dport 8080 accept\n"
                   "add rule ip t nat-pre drop\n")
    (p,) = e.run(Packet("tcp", "192.168.1.10", 40000, "10.96.0.1", 80, None), "OUTPUT")
    assert p.verdict == "DNAT" and p.packet.in_iface == "lo"
    # filter output sees the new destination; nat prerouting is not consulted on the way back in
    assert [h.chain for h in p.hops if h.kind == "rule"] == ["nat-out", "filt-out", "filt-in"]
    assert p.hops[-1].rule == "delivered to 192.168.1.10:8080 on this node"
