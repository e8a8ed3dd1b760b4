"""The tracer's pieces on their own: address, interface, port, addrtype, mark, probability and
conntrack matchers, and the engine's chain walk (jump/goto/RETURN/policies, random splits into
exact fractions, MARK and MASQUERADE) on small hand-written rule sets."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rulegen.backends.iptables.compile import probability as kube_probability
from rulegen.dataplane.xtables import matchers as M
from rulegen.dataplane.xtables.matchers import Unsupported
from rulegen.dataplane.xtables.parse import parse
from rulegen.dataplane.xtables.walk import Engine, Rules
from rulegen.trace.model import Packet, TraceError

NODE = ("192.168.1.10", "fd00::10")


# ------------------------------------------------------------------ addresses

@pytest.mark.parametrize("ip,value,want", [
    ("10.244.1.5", "10.244.0.0/16", True),
    ("10.245.1.5", "10.244.0.0/16", False),
    ("10.96.0.10", "10.96.0.10", True),
    ("10.96.0.10", "10.96.0.10/32", True),
    ("10.96.0.11", "10.96.0.10/32", False),
    ("10.96.0.10", "10.96.0.0/255.255.0.0", True),
    ("10.96.0.10", "0.0.0.0/0", True),
    ("fd00::1", "10.0.0.0/8", False),  # other family never matches
    ("fd00::1", "fd00::/64", True),
    ("fd00:1::1", "fd00::/64", False),
    ("127.1.2.3", "127.0.0.0/8", True),
])
def test_in_cidr(ip, value, want):
    assert M.in_cidr(ip, value) is want


@pytest.mark.parametrize("value", ["10.0.0.0/33", "web.example", "10.0.0.1,10.0.0.2"])
def test_in_cidr_refuses_what_it_cannot_read(value):
    with pytest.raises(Unsupported):
        M.in_cidr("10.0.0.1", value)


def test_addrtype_local_is_node_addresses_and_loopback_not_cluster_ips():
    assert M.addr_type("192.168.1.10", NODE) == "LOCAL"
    assert M.addr_type("fd00::10", NODE) == "LOCAL"
    assert M.addr_type("127.0.0.1", NODE) == "LOCAL"
    assert M.addr_type("127.45.0.9", NODE) == "LOCAL"
    assert M.addr_type("::1", NODE) == "LOCAL"
    assert M.addr_type("10.96.0.10", NODE) == "UNICAST"  # a ClusterIP is bound nowhere in iptables mode
    assert M.addr_type("192.168.1.11", NODE) == "UNICAST"
    assert M.addr_type("224.0.0.5", NODE) == "MULTICAST"
    assert M.addr_type("255.255.255.255", NODE) == "BROADCAST"
    assert M.addrtype_match("192.168.1.10", "LOCAL", NODE)
    assert M.addrtype_match("10.0.0.1", "UNICAST,LOCAL", NODE)
    assert not M.addrtype_match("10.0.0.1", "LOCAL", NODE)
    assert not M.addrtype_match("192.168.1.10", "LOCAL", ())  # no node addresses known
    with pytest.raises(Unsupported):
        M.addrtype_match("10.0.0.1", "LOCALISH", NODE)


@pytest.mark.parametrize("iface,pattern,want", [
    ("eth0", "eth0", True), ("eth0", "eth1", False), ("eth0", "eth+", True), ("veth12ab", "veth+", True),
    ("cni0", "veth+", False), ("eth", "eth+", True), (None, "eth0", False), (None, "+", False),
])
def test_iface_match(iface, pattern, want):
    assert M.iface_match(iface, pattern) is want


@pytest.mark.parametrize("port,value,want", [
    (80, "80", True), (81, "80", False), (30000, "30000:32767", True), (32768, "30000:32767", False),
    (5, ":10", True), (11, ":10", False), (65535, "1024:", True), (1023, "1024:", False),
])
def test_port_match(port, value, want):
    assert M.port_match(port, value) is want
    with pytest.raises(Unsupported):
        M.port_match(80, "http")


def test_proto_match():
    assert M.proto_match("tcp", "tcp") and M.proto_match("tcp", "TCP") and M.proto_match("tcp", "6")
    assert M.proto_match("sctp", "132") and M.proto_match("udp", "all") and M.proto_match("udp", "0")
    assert not M.proto_match("udp", "tcp")
    with pytest.raises(Unsupported):
        M.proto_match("tcp", "ospfish")


# ------------------------------------------------------------------ marks

def test_mark_match_value_and_mask():
    assert M.mark_match(0x4000, "0x4000/0x4000")
    assert M.mark_match(0x4001, "0x00004000/0x00004000")
    assert not M.mark_match(0x4001, "0x4000")  # no mask: all 32 bits compared
    assert not M.mark_match(0, "0x4000/0x4000")


def test_mark_target_as_kube_proxy_uses_it():
    # KUBE-MARK-MASQ then KUBE-POSTROUTING's clearing, in both spellings
    m = M.mark_target(0x1, "--or-mark", "0x00004000")
    assert m == 0x4001
    assert M.mark_target(m, "--xor-mark", "0x00004000") == 0x1
    m2 = M.mark_target(0x1, "--set-xmark", "0x4000/0x4000")  # iptables-save's --or-mark
    assert m2 == 0x4001
    assert M.mark_target(m2, "--set-xmark", "0x4000/0x0") == 0x1  # iptables-save's --xor-mark
    assert M.mark_target(0xFF, "--set-mark", "0x10/0xF0") == 0x1F
    assert M.mark_target(0xFF, "--set-mark", "0x10") == 0x10
    assert M.mark_target(0xFF, "--and-mark", "0x0F") == 0x0F
    with pytest.raises(Unsupported):
        M.mark_target(0, "--frob-mark", "1")


@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 31))
def test_or_then_xor_mark_restores_a_mark_without_the_bit(mark, bit):
    v = hex(1 << bit)
    without = mark & ~(1 << bit)
    assert M.mark_target(M.mark_target(without, "--or-mark", v), "--xor-mark", v) == without


# ------------------------------------------------------------------ probabilities

@pytest.mark.parametrize("text,want", [
    ("0.5000000000", Fraction(1, 2)), ("0.50000000000", Fraction(1, 2)),
    ("0.3333333333", Fraction(1, 3)), ("0.33333333349", Fraction(1, 3)),  # iptables-save's 31-bit value
    ("0.1428571429", Fraction(1, 7)), ("0.0010000000", Fraction(1, 1000)),
    ("1", Fraction(1)), ("0", Fraction(0)),
    ("0.12345", Fraction(2469, 20000)),  # not 1/n: taken exactly as written
])
def test_probability_reads_rational_values(text, want):
    assert M.probability(text) == want


@pytest.mark.parametrize("n", [2, 3, 7, 13, 99, 1000, 9999])
def test_probability_of_every_kube_proxy_share(n):
    assert M.probability(kube_probability(n)) == Fraction(1, n)


@pytest.mark.parametrize("text", ["abc", "1.5", "-0.1"])
def test_probability_refuses_nonsense(text):
    with pytest.raises(Unsupported):
        M.probability(text)


# ------------------------------------------------------------------ conntrack, tcp flags, endpoints

def test_ctstate_of_a_new_connection():
    assert M.ctstate_match("NEW", False, False)
    assert not M.ctstate_match("RELATED,ESTABLISHED", False, False)
    assert not M.ctstate_match("RELATED,ESTABLISHED,DNAT", False, False)
    assert M.ctstate_match("RELATED,ESTABLISHED,DNAT", True, False)  # after DNAT
    assert M.ctstate_match("SNAT", False, True)
    assert not M.ctstate_match("INVALID", True, True)
    with pytest.raises(Unsupported):
        M.ctstate_match("FRESH", False, False)


def test_tcp_flags_of_the_first_packet():
    assert M.tcp_flags_match("SYN,ACK,FIN,RST", "SYN")
    assert not M.tcp_flags_match("SYN,ACK", "ACK")
    assert M.tcp_flags_match("ALL", "SYN")
    assert M.tcp_flags_match("ACK", "NONE")


def test_split_endpoint():
    assert M.split_endpoint("10.0.0.1:80") == ("10.0.0.1", 80)
    assert M.split_endpoint("10.0.0.1") == ("10.0.0.1", None)
    assert M.split_endpoint("[fd00::1]:8080") == ("fd00::1", 8080)
    assert M.split_endpoint("fd00::1") == ("fd00::1", None)
    for bad in ("10.0.0.1-10.0.0.9:80", "10.0.0.1:80-90", "web:80"):
        with pytest.raises(Unsupported):
            M.split_endpoint(bad)


# ------------------------------------------------------------------ the engine

def rules(text: str, family: int = 4) -> Rules:
    return Rules.of(parse(text, "t.rules", family), "t.rules")


def run(text: str, dst="10.96.0.10", dport=80, src="203.0.113.10", hook="PREROUTING", iface="eth0",
        node_ips=NODE, proto="tcp"):
    eng = Engine(rules(text), node_ips)
    return eng.run(Packet(proto, src, 40000, dst, dport, None if hook == "OUTPUT" else iface), hook)


NAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"


def svc(n: int, probs: list[str] | None = None) -> str:
    """A KUBE-SVC chain spreading over n endpoints the way kube-proxy writes it."""
    lines = [":SVC - [0:0]"] + [f":SEP{i} - [0:0]" for i in range(n)]
    lines.append("-A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SVC")
    for i in range(n):
        p = probs[i] if probs and i < len(probs) else kube_probability(n - i)
        stat = f"-m statistic --mode random --probability {p} " if i < n - 1 else ""
        lines.append(f"-A SVC {stat}-j SEP{i}")
        lines.append(f"-A SEP{i} -p tcp -m tcp -j DNAT --to-destination 10.244.0.{i + 1}:8080")
    return NAT + "\n".join(lines) + "\nCOMMIT\n"


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 12])
def test_statistic_split_gives_exact_equal_shares(n):
    paths = run(svc(n))
    assert len(paths) == n
    assert [p.packet.dst_endpoint for p in paths] == [f"10.244.0.{i + 1}:8080" for i in range(n)]
    assert all(p.probability == Fraction(1, n) for p in paths)
    assert sum(p.probability for p in paths) == 1
    assert all(p.verdict == "DNAT" for p in paths)


def test_statistic_split_with_saved_spelling_and_uneven_probabilities():
    paths = run(svc(3, ["0.25000000000", "0.33333333349"]))
    assert [p.probability for p in paths] == [Fraction(1, 4), Fraction(1, 4), Fraction(1, 2)]


def test_negated_and_nested_probabilities_multiply():
    text = NAT + """:A - [0:0]
-A PREROUTING -m statistic --mode random ! --probability 0.2500000000 -j A
-A PREROUTING -j DNAT --to-destination 10.0.0.9:80
-A A -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.0.0.1:80
-A A -j DNAT --to-destination 10.0.0.2:80
COMMIT
"""
    shares = {p.packet.dst_endpoint: p.probability for p in run(text)}
    assert shares == {"10.0.0.1:80": Fraction(3, 8), "10.0.0.2:80": Fraction(3, 8), "10.0.0.9:80": Fraction(1, 4)}


def test_masquerade_needs_the_mark_and_postrouting():
    base = NAT + """:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A POSTROUTING -j KUBE-POSTROUTING
-A PREROUTING ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A PREROUTING -d 10.96.0.10/32 -j DNAT --to-destination {to}
COMMIT
"""
    [p] = run(base.format(to="10.244.0.1:8080"))
    assert p.masquerade and p.packet.mark == 0 and p.packet.snat  # mark cleared again, source NATed
    [p] = run(base.format(to="10.244.0.1:8080"), src="10.244.3.3")
    assert not p.masquerade and p.packet.mark == 0
    # DNAT to the node itself: delivered through INPUT, POSTROUTING never runs
    [p] = run(base.format(to="192.168.1.10:10250"))
    assert not p.masquerade and p.packet.mark == 0x4000 and p.verdict == "DNAT"
    assert p.hops[-1].kind == "deliver" and "on this node" in p.hops[-1].rule


def test_jump_return_goto_and_policies():
    text = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:A - [0:0]
:B - [0:0]
:C - [0:0]
-A FORWARD -j A
-A FORWARD -p tcp -m tcp --dport 80 -j ACCEPT
-A A -g B
-A A -j DROP
-A B -p tcp -m tcp --dport 81 -j C
-A B -j RETURN
-A C -j REJECT
COMMIT
"""
    # goto B, RETURN from B goes back past A (A's DROP is skipped), then FORWARD accepts port 80
    [p] = run(text, dport=80)
    assert p.verdict == "ACCEPT"
    assert [h.verdict for h in p.hops if h.kind == "rule"] == ["jump A", "goto B", "RETURN", "ACCEPT"]
    [p] = run(text, dport=81)
    assert p.verdict == "REJECT"
    [p] = run(text, dport=82)  # falls off FORWARD: its policy DROP
    assert p.verdict == "DROP" and p.hops[-1].kind == "policy"
    [p] = run(text, dport=82, dst="192.168.1.10")  # to the node: INPUT, policy ACCEPT
    assert p.verdict == "ACCEPT"


def test_rule_without_target_continues_and_loops_are_errors():
    text = NAT + ":A - [0:0]\n-A PREROUTING -d 10.96.0.10/32\n-A PREROUTING -j A\n-A A -j A\nCOMMIT\n"
    with pytest.raises(TraceError) as e:
        run(text)
    assert e.value.chain == "A" and e.value.number == 1 and "loops" in str(e.value)
    [p] = run(NAT + "-A PREROUTING -d 10.96.0.10/32\nCOMMIT\n")
    assert p.hops[0].verdict.startswith("no target")


def test_recent_rcheck_misses_and_set_records_affinity():
    text = NAT + """:S - [0:0]
-A PREROUTING -m recent --name S --rcheck --seconds 600 --reap -j DNAT --to-destination 10.0.0.7:80
-A PREROUTING -m recent --name S ! --rcheck -j S
-A S -m recent --name S --set -j DNAT --to-destination 10.0.0.1:80
COMMIT
"""
    # a first connection is in no recent list: --rcheck misses, ! --rcheck matches
    [p] = run(text)
    assert p.packet.dst_endpoint == "10.0.0.1:80" and p.affinity == 600
    assert any("600 seconds" in n and "10.0.0.1:80" in n for n in p.notes)


def test_conntrack_dnat_state_seen_in_filter_after_nat():
    text = NAT + """-A OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 30080 -j DNAT --to-destination 10.244.0.5:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -d 10.244.0.5/32 -j DROP
COMMIT
"""
    [p] = run(text, src="127.0.0.1", dst="127.0.0.1", dport=30080, hook="OUTPUT")
    assert p.verdict == "DNAT"  # the DROP rule does not fire: the connection is DNATed
    [p] = run(text.replace("DNAT --to", "DNAT --to").replace("--dport 30080", "--dport 1"),
              src="127.0.0.1", dst="127.0.0.1", dport=30080, hook="OUTPUT")
    assert p.verdict == "ACCEPT" and p.hops[-2].kind == "route" and "loops back" in p.hops[-2].rule


def test_dnat_outside_nat_prerouting_is_refused():
    text = NAT + "-A POSTROUTING -j DNAT --to-destination 10.0.0.1:80\nCOMMIT\n"
    with pytest.raises(TraceError) as e:
        run(text, dst="10.9.9.9")
    assert "DNAT in nat POSTROUTING" in str(e.value)


@pytest.mark.parametrize("rule,msg", [
    ("-A PREROUTING -m cpu --cpu 0 -j ACCEPT", "unknown match module 'cpu'"),
    ("-A PREROUTING -m physdev --physdev-in veth0 -j ACCEPT", "option --physdev-in of match 'physdev'"),
    ("-A PREROUTING -m set --match-set KUBE-X dst,src,foo -j ACCEPT", "set flags 'dst,src,foo'"),
    ("-A PREROUTING -m set --match-set KUBE-X dst --return-nomatch -j ACCEPT", "--return-nomatch"),
    ("-A PREROUTING -m ipvs --vmethod MASQ -j ACCEPT", "--vmethod"),
    ("-A PREROUTING -p tcp -m tcp --dport 80 --tcp-option 1 -j ACCEPT", "--tcp-option"),
    ("-A PREROUTING -p udp --dport 80 -j ACCEPT", None),  # implicit -m udp is understood
    ("-A PREROUTING -j NOTRACK", "unknown target 'NOTRACK'"),
    ("-A PREROUTING -j MARK", "MARK without an option"),
    ("-A PREROUTING -m recent --name X -j ACCEPT", "exactly one of"),
    ("-A PREROUTING -m statistic --mode random -j ACCEPT", "without --probability"),
    ("-A PREROUTING -m conntrack --ctstatus CONFIRMED -j ACCEPT", "--ctstatus"),
    ("-A PREROUTING -m mark --mark 0x1 --mask 2 -j ACCEPT", "--mask"),
    ("-A PREROUTING -d 10.0.0.0/8 -m comment --comment x --comment-bad y -j ACCEPT", "--comment-bad"),
])
def test_every_part_of_a_reached_rule_must_be_understood(rule, msg):
    # the unknown part sits after a match that fails: still refused
    text = NAT + rule.replace("-A PREROUTING ", "-A PREROUTING -s 198.51.100.0/24 ", 1) + "\nCOMMIT\n"
    if msg is None:
        run(text)
        return
    with pytest.raises(TraceError) as e:
        run(text)
    assert msg in str(e.value)
    assert "t.rules: table nat, chain PREROUTING, rule 1 (-A PREROUTING -s 198.51.100.0/24" in str(e.value)


# ------------------------------------------------------------------ ipsets, the ipvs match, physdev, steps

SETS = {
    "VIPS": M.SetMembers("VIPS", "hash:ip,port", ["10.96.0.10,tcp:80", "10.96.0.11,udp:53", "fd00::10,tcp:443"]),
    "PORTS": M.SetMembers("PORTS", "bitmap:port", ["30080", "30090-30092"]),
    "LOOP": M.SetMembers("LOOP", "hash:ip,port,ip", ["10.244.0.5,tcp:8080,10.244.0.5"]),
    "SRC": M.SetMembers("SRC", "hash:ip,port,net", ["10.96.0.10,tcp:80,192.0.2.0/24", "10.96.0.10,tcp:80,198.51.100.7"]),
    "IPS": M.SetMembers("IPS", "hash:ip", ["10.96.0.10", "fd00::10"]),
}


@pytest.mark.parametrize("name,flags,proto,src,sport,dst,dport,want", [
    ("VIPS", "dst,dst", "tcp", "10.244.0.9", 40000, "10.96.0.10", 80, True),
    ("VIPS", "dst,dst", "udp", "10.244.0.9", 40000, "10.96.0.10", 80, False),  # the protocol is part of the entry
    ("VIPS", "dst,dst", "tcp", "10.244.0.9", 40000, "10.96.0.10", 81, False),
    ("VIPS", "dst,dst", "udp", "10.244.0.9", 40000, "10.96.0.11", 53, True),
    ("VIPS", "dst,dst", "tcp", "fd00::99", 40000, "fd00::10", 443, True),
    ("VIPS", "dst", "tcp", "10.244.0.9", 40000, "10.96.0.10", 80, False),  # fewer flags than dimensions
    ("VIPS", "src,dst", "tcp", "10.96.0.10", 40000, "10.1.1.1", 80, True),
    ("VIPS", "dst,src", "tcp", "10.244.0.9", 80, "10.96.0.10", 9999, True),
    ("PORTS", "dst", "tcp", "1.2.3.4", 40000, "192.168.1.10", 30080, True),
    ("PORTS", "dst", "udp", "1.2.3.4", 40000, "192.168.1.10", 30091, True),  # a bitmap has no protocol; a range
    ("PORTS", "dst", "tcp", "1.2.3.4", 40000, "192.168.1.10", 30093, False),
    ("PORTS", "dst,dst,src", "tcp", "1.2.3.4", 40000, "192.168.1.10", 30080, True),  # extra flags ignored
    ("LOOP", "dst,dst,src", "tcp", "10.244.0.5", 40000, "10.244.0.5", 8080, True),
    ("LOOP", "dst,dst,src", "tcp", "10.244.0.6", 40000, "10.244.0.5", 8080, False),
    ("SRC", "dst,dst,src", "tcp", "192.0.2.77", 40000, "10.96.0.10", 80, True),  # inside the net
    ("SRC", "dst,dst,src", "tcp", "198.51.100.7", 40000, "10.96.0.10", 80, True),  # a host entry
    ("SRC", "dst,dst,src", "tcp", "198.51.100.8", 40000, "10.96.0.10", 80, False),
    ("IPS", "dst", "tcp", "1.2.3.4", 1, "10.96.0.10", 1, True),
    ("IPS", "dst", "tcp", "1.2.3.4", 1, "10.96.0.12", 1, False),
    ("IPS", "src", "tcp", "fd00::10", 1, "fd00::1", 1, True),
])
def test_set_match(name, flags, proto, src, sport, dst, dport, want):
    assert M.set_match(SETS, name, flags, proto, src, sport, dst, dport) is want


def test_set_match_refuses_what_it_cannot_read():
    with pytest.raises(Unsupported, match="set NOPE is not known"):
        M.set_match(SETS, "NOPE", "dst", "tcp", "1.2.3.4", 1, "1.2.3.5", 2)
    with pytest.raises(Unsupported, match="set VIPS is not known"):
        M.set_match(None, "VIPS", "dst", "tcp", "1.2.3.4", 1, "1.2.3.5", 2)
    odd = {"M": M.SetMembers("M", "hash:ip,mark", ["10.0.0.1,0x1"]),
           "B": M.SetMembers("B", "hash:ip,port", ["10.0.0.1,icmp:ping"])}
    with pytest.raises(Unsupported, match="hash:ip,mark"):
        M.set_match(odd, "M", "dst,dst", "tcp", "1.2.3.4", 1, "10.0.0.1", 2)
    with pytest.raises(Unsupported, match="icmp:ping"):
        M.set_match(odd, "B", "dst,dst", "tcp", "1.2.3.4", 1, "10.0.0.1", 2)


@pytest.mark.parametrize("virtual,option,value,want", [
    (None, "--ipvs", None, False),
    (("tcp", "10.96.0.10", 80), "--ipvs", None, True),
    (("tcp", "10.96.0.10", 80), "--vaddr", "10.96.0.10", True),
    (("tcp", "10.96.0.10", 80), "--vaddr", "10.96.0.10/32", True),
    (("tcp", "10.96.0.10", 80), "--vaddr", "10.96.0.11", False),
    (("tcp", "10.96.0.10", 80), "--vproto", "tcp", True),
    (("tcp", "10.96.0.10", 80), "--vproto", "6", True),  # iptables-save prints the number
    (("tcp", "10.96.0.10", 80), "--vproto", "udp", False),
    (("tcp", "10.96.0.10", 80), "--vport", "80", True),
    (("tcp", "10.96.0.10", 80), "--vport", "81", False),
    (("tcp", "10.96.0.10", 80), "--vdir", "ORIGINAL", True),
    (("tcp", "10.96.0.10", 80), "--vdir", "REPLY", False),
    (None, "--vaddr", "10.96.0.10", False),
])
def test_ipvs_match(virtual, option, value, want):
    assert M.ipvs_match(virtual, option, value) is want


FILTER_OUT = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -s 10.96.0.10/32 -m ipvs --vaddr 10.96.0.10/32 --vproto 6 --vport 80 -j DROP
COMMIT
"""


def _vs_step(reals, shares, unknown=""):
    """A step standing for a balancer on 10.96.0.10:80: one branch per real server."""
    from rulegen.dataplane.xtables.walk import RESENT, Branch
    from rulegen.trace.model import Hop

    def step(pkt):
        if (pkt.dst, pkt.dport) != ("10.96.0.10", 80) or pkt.virtual is not None:
            return None
        out = []
        for r, share in zip(reals, shares):
            moved = Packet(pkt.proto, pkt.src, pkt.sport, r, 8080, pkt.in_iface, pkt.out_iface, pkt.mark, True,
                           pkt.snat, ("tcp", "10.96.0.10", 80))
            out.append(Branch(share, moved, Hop("balance", "ipvs", "LB", 0, "lb", f"to {r}", share),
                              then=RESENT, unknown=unknown, weight=1))
        return out
    return step


def test_a_step_splits_the_walk_and_the_packet_goes_on_through_output_and_postrouting():
    text = NAT + "-A POSTROUTING -d 10.244.0.2/32 -j MASQUERADE\nCOMMIT\n" + FILTER_OUT.replace(
        "-A OUTPUT -s 10.96.0.10/32", "-A OUTPUT -s 10.96.0.99/32")
    local = NODE + ("10.96.0.10",)
    eng = Engine(rules(text), local, steps={"local-in": _vs_step(["10.244.0.1", "10.244.0.2"],
                                                                 [Fraction(1, 4), Fraction(3, 4)])})
    paths = eng.run(Packet("tcp", "203.0.113.10", 40000, "10.96.0.10", 80, "eth0"), "PREROUTING")
    assert [(p.probability, p.verdict, p.packet.dst, p.masquerade) for p in paths] == [
        (Fraction(1, 4), "DNAT", "10.244.0.1", False), (Fraction(3, 4), "DNAT", "10.244.0.2", True)]
    kinds = [h.kind for h in paths[0].hops]
    assert kinds.index("route") < kinds.index("balance") < len(kinds) - 1  # after INPUT routing, before out
    assert paths[0].weight == 1


def test_without_a_step_the_walk_goes_straight_on():
    eng = Engine(rules(NAT + "COMMIT\n"), NODE + ("10.96.0.10",))
    [p] = eng.run(Packet("tcp", "203.0.113.10", 40000, "10.96.0.10", 80, "eth0"), "PREROUTING")
    assert p.verdict == "ACCEPT" and p.hops[-1].rule == "delivered to 10.96.0.10:80 on this node"


def test_unknown_shares_keep_their_group_and_the_ipvs_match_sees_the_service():
    local = NODE + ("10.96.0.10",)
    step = _vs_step(["10.244.0.1", "10.244.0.2"], [None, None], unknown="depends on live load")
    eng = Engine(rules(NAT + "COMMIT\n" + FILTER_OUT), local, steps={"local-out": step})
    paths = eng.run(Packet("tcp", "10.96.0.10", 40000, "10.96.0.10", 80, None), "OUTPUT")
    assert [(p.probability, p.verdict, p.unknown) for p in paths] == [(None, "DROP", "depends on live load")] * 2
    assert paths[0].group == paths[1].group == ((), Fraction(1))
    # from another source the out-filter does not apply
    paths = eng.run(Packet("tcp", "192.168.1.10", 40000, "10.96.0.10", 80, None), "OUTPUT")
    assert {p.verdict for p in paths} == {"DNAT"}


def test_a_step_verdict_ends_the_path():
    from rulegen.dataplane.xtables.walk import Branch
    from rulegen.trace.model import Hop

    def reject(pkt):
        return [Branch(Fraction(1), pkt, Hop("balance", "ipvs", "LB", 0, "lb", "no server"), verdict="REJECT")]
    eng = Engine(rules(NAT + "COMMIT\n"), NODE + ("10.96.0.10",), steps={"local-in": reject})
    [p] = eng.run(Packet("tcp", "203.0.113.10", 40000, "10.96.0.10", 80, "eth0"), "PREROUTING")
    assert p.verdict == "REJECT" and p.hops[-1].kind == "balance"


@pytest.mark.parametrize("iface,bridged,want", [("cni0", {"cni0"}, "ACCEPT"), ("eth0", {"cni0"}, "DROP"),
                                                 ("cni0", set(), "DROP")])
def test_physdev_is_in_means_through_a_bridge(iface, bridged, want):
    text = NAT + "-A PREROUTING -m physdev --physdev-is-in -j ACCEPT\n-A PREROUTING -j DROP\nCOMMIT\n"
    eng = Engine(rules(text), NODE, bridged=frozenset(bridged))
    [p] = eng.run(Packet("tcp", "10.244.0.9", 40000, "10.96.0.10", 80, iface), "PREROUTING")
    assert p.verdict == want


def test_a_set_rule_reads_the_engine_sets():
    text = NAT + "-A PREROUTING -m set --match-set VIPS dst,dst -j DROP\nCOMMIT\n"
    eng = Engine(rules(text), NODE, sets=SETS)
    [p] = eng.run(Packet("tcp", "10.244.0.9", 40000, "10.96.0.10", 80, "eth0"), "PREROUTING")
    assert p.verdict == "DROP"
    [p] = eng.run(Packet("tcp", "10.244.0.9", 40000, "10.96.0.10", 81, "eth0"), "PREROUTING")
    assert p.verdict == "ACCEPT"
    with pytest.raises(TraceError, match="set VIPS is not known"):
        Engine(rules(text), NODE).run(Packet("tcp", "10.244.0.9", 40000, "10.96.0.10", 80, "eth0"), "PREROUTING")
