"""The lenient reader of a node's other nftables tables (dataplane/nft/ruleset.py), and the whole-node walk on them."""

from __future__ import annotations

from rulegen.backends.nftables.dump import read_text
from rulegen.dataplane.nft.ruleset import read_table
from rulegen.dataplane.nft.walk import Engine, Other, leading_matches, lenient_ops, trailing_verdict, Verdict
from rulegen.trace.model import Packet

ODD = """table inet odd { # handle 7
\tflowtable ft { # handle 2
\t\thook ingress priority filter
\t\tdevices = { eth0 }
\t}

\tcounter seen { # handle 3
\t\tpackets 0 bytes 0
\t}

\tct helper ftp-standard {
\t\ttype "ftp" protocol tcp
\t\tl3proto inet
\t}

\tset allow { # handle 4
\t\ttypeof ip saddr
\t\tflags interval
\t\tauto-merge
\t\telements = { 192.0.2.0/24, 198.51.100.7 }
\t}

\tchain ingress {
\t\ttype filter hook ingress device "eth0" priority -500; policy accept;
\t}

\tchain input { # handle 5
\t\ttype filter hook input priority filter + 5; policy drop;
\t\tip saddr @allow counter name "seen" accept # handle 8
\t\tmeta l4proto tcp tcp flags syn / syn,ack tcp option maxseg size set rt mtu # handle 9
\t\tct state established,related accept # handle 10
\t}
}
"""


def test_the_odd_parts_are_skipped_and_named_and_the_rest_is_read():
    t = read_table(ODD, "inet", "odd", 1)
    assert t.skipped == ["flowtable ft", "counter seen", "ct helper ftp-standard"]
    assert t.policies == {"ingress": "accept", "input": "drop"}
    assert t.handles == {("input", 1): 8, ("input", 2): 9, ("input", 3): 10}
    assert t.state.sets["allow"].decl.type == "ip saddr" and len(t.state.sets["allow"].elements) == 2
    assert [(n, h, p) for n, _, h, p in t.base_chains()] == [("ingress", "ingress", -500), ("input", "input", 5)]
    assert not t.iptables_nft and not t.xt


def test_the_walk_decides_what_it_can_read_and_assumes_the_rest():
    t = read_table(ODD, "inet", "odd", 1)
    kube = read_text("add table ip kube-proxy\n", "kp").tables[4]
    eng = Engine(kube, ("192.0.2.100",), others=(Other(t.state, t.policies, t.handles, t.unreadable, 1),),
                 strict=False)
    ok = eng.run(Packet("tcp", "198.51.100.7", 40000, "192.0.2.100", 22, "eth0"), "PREROUTING")
    assert [p.verdict for p in ok] == ["ACCEPT"] and not ok[0].assumptions  # @allow holds it: accepted
    no = eng.run(Packet("tcp", "203.0.113.9", 40000, "192.0.2.100", 22, "eth0"), "PREROUTING")
    # rule 2 (tcp option ... set rt mtu) is not read: it ends in no verdict, so it changes nothing; the policy drops
    assert [p.verdict for p in no] == ["DROP"]
    assert any("inet odd chain input rule 2 (handle 9) was not evaluated" in n for n in no[0].notes)
    assert any(h.kind == "policy" and h.chain == "input" for h in no[0].hops)


def test_the_lenient_helpers():
    assert trailing_verdict("meta skuid 1000 counter reject with tcp reset") == Verdict("reject")
    assert trailing_verdict("ip saddr 10.0.0.1 goto blocked") == Verdict("goto", "blocked")
    assert trailing_verdict("tcp option maxseg size set rt mtu") is None
    assert [m.keys[0].field for m in leading_matches("meta nfproto ipv6 fib saddr . mark . iif oif missing drop")] \
        == ["nfproto", "fib-rpf"]
    assert [m.keys[0].field for m in leading_matches("ip saddr 10.0.0.1 meta skuid 1000 ip daddr 10.0.0.2 drop")] \
        == ["saddr"]  # up to the first part it cannot read
    assert lenient_ops('counter packets 1 bytes 2 log prefix "x y" level info accept') == (Verdict("accept"),)
