"""Reading nftables text back: rulegen's script, `nft list table` output, and the normal form both reduce to."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from nshelp import namespace_names

from rulegen.dataplane.nft import state
from rulegen.dataplane.nft.model import Chain, Element, Map, Rule, Set, Table, Transaction
from rulegen.dataplane.nft.parse import (
    NftParseError,
    parse_duration,
    parse_listing,
    parse_script,
    read_state,
)
from rulegen.dataplane.nft.render import render

# A script in rulegen's (knftables') syntax and the listing nft 1.0.6 prints
# after loading it: the same state in two spellings. Invented names.
SCRIPT = """\
add table ip kube-proxy { comment "rules for kube-proxy" ; }
add chain ip kube-proxy pre { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy out { type nat hook output priority -100 ; }
add chain ip kube-proxy post { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy helper { comment "reject helper" ; }
add chain ip kube-proxy svc-a
add chain ip kube-proxy ext-a
add chain ip kube-proxy ep-a
add chain ip kube-proxy fw-a
add set ip kube-proxy vips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy pins { type ipv4_addr . ipv4_addr . inet_proto . inet_service ; comment "pins" ; }
add set ip kube-proxy aff-a { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }
add map ip kube-proxy dispatch { type ipv4_addr . inet_proto . inet_service : verdict ; comment "dispatch" ; }
add map ip kube-proxy ports { type inet_proto . inet_service : verdict ; comment "ports" ; }
add rule ip kube-proxy pre ct state new jump helper
add rule ip kube-proxy out ip daddr @vips ip saddr != 10.5.0.0/16 mark set mark or 0x00004000 comment "masq"
add rule ip kube-proxy out ip daddr . meta l4proto . th dport vmap @dispatch
add rule ip kube-proxy post mark and 0x00004000 != 0 mark set mark xor 0x00004000 masquerade fully-random
add rule ip kube-proxy post ct status dnat ip saddr . ip daddr . meta l4proto . th dport @pins masquerade fully-random
add rule ip kube-proxy helper reject
add rule ip kube-proxy svc-a meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.5.1.1 . 8080 , 1 : 10.5.1.2 . 8080 }
add rule ip kube-proxy ext-a iifname != br-x mark set mark or 0x00004000 comment "masquerade"
add rule ip kube-proxy ext-a goto svc-a
add rule ip kube-proxy ep-a update @aff-a { ip saddr }
add rule ip kube-proxy ep-a meta l4proto tcp dnat to 10.5.1.1:8080
add rule ip kube-proxy fw-a ip saddr != { 192.0.2.0/24 , 192.0.2.7 , 198.51.100.0/25 , 198.51.100.128/25 } drop
add rule ip kube-proxy fw-a ip daddr { 10.96.0.0/16,10.97.0.0/16 } drop
add rule ip kube-proxy fw-a ip saddr != { 203.0.113.0/24 } drop
add element ip kube-proxy vips { 10.96.0.10 }
add element ip kube-proxy vips { 10.96.0.11 }
add element ip kube-proxy pins { 10.5.1.1 . 10.5.1.1 . tcp . 8080 }
add element ip kube-proxy dispatch { 10.96.0.10 . tcp . 80 : goto svc-a }
add element ip kube-proxy dispatch { 10.96.0.11 . udp . 53 comment "ns-b/dns:dns, main" : drop }
add element ip kube-proxy ports { tcp . 30080 : goto ext-a }
"""

LISTING = """\
table ip kube-proxy {
\tcomment "rules for kube-proxy"
\tset vips {
\t\ttype ipv4_addr
\t\tcomment "Active ClusterIPs"
\t\telements = { 10.96.0.10,
\t\t\t     10.96.0.11 }
\t}

\tset pins {
\t\ttype ipv4_addr . ipv4_addr . inet_proto . inet_service
\t\tcomment "pins"
\t\telements = { 10.5.1.1 . 10.5.1.1 . tcp . 8080 }
\t}

\tset aff-a {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\ttimeout 3h
\t\telements = { 198.51.100.77 timeout 3h expires 2h59m58s }
\t}

\tmap dispatch {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\tcomment "dispatch"
\t\telements = { 10.96.0.11 . udp . 53 comment "ns-b/dns:dns, main" : drop,
\t\t\t     10.96.0.10 . tcp . 80 : goto svc-a }
\t}

\tmap ports {
\t\ttype inet_proto . inet_service : verdict
\t\tcomment "ports"
\t\telements = { tcp . 30080 : goto ext-a }
\t}

\tchain pre {
\t\ttype filter hook prerouting priority dstnat - 10; policy accept;
\t\tct state new jump helper
\t}

\tchain out {
\t\ttype nat hook output priority -100; policy accept;
\t\tip daddr @vips ip saddr != 10.5.0.0/16 meta mark set meta mark | 0x00004000 comment "masq"
\t\tip daddr . meta l4proto . th dport vmap @dispatch
\t}

\tchain post {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 != 0x00000000 meta mark set meta mark ^ 0x00004000 masquerade fully-random
\t\tct status dnat ip saddr . ip daddr . meta l4proto . th dport @pins masquerade fully-random
\t}

\tchain helper {
\t\tcomment "reject helper"
\t\treject
\t}

\tchain svc-a {
\t\tmeta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.5.1.1 . 8080, 1 : 10.5.1.2 . 8080 }
\t}

\tchain ext-a {
\t\tiifname != "br-x" meta mark set meta mark | 0x00004000 comment "masquerade"
\t\tgoto svc-a
\t}

\tchain ep-a {
\t\tupdate @aff-a { ip saddr }
\t\tmeta l4proto tcp dnat to 10.5.1.1:8080
\t}

\tchain fw-a {
\t\tip saddr != { 192.0.2.0/24, 198.51.100.0/24 } drop
\t\tip daddr { 10.96.0.0/15 } drop
\t\tip saddr != 203.0.113.0/24 drop
\t}
}
"""


def test_script_and_listing_have_one_normal_form():
    from_script = state.normalise(read_state(SCRIPT))
    from_listing = state.normalise(read_state(LISTING))
    assert state.compare(from_script, from_listing) == []
    assert from_script == from_listing
    assert state.dump(from_script) == state.dump(from_listing)


def test_script_reads_back_into_the_same_transaction():
    tx = parse_script(SCRIPT)
    assert render(tx) == SCRIPT
    assert (tx.family, tx.table) == ("ip", "kube-proxy")
    assert tx.chains()["pre"] == Chain("pre", "filter", "prerouting", "-110")
    assert tx.sets()["aff-a"] == Set("aff-a", "ipv4_addr", ("dynamic", "timeout"), 10800)
    assert tx.ops[-2] == ("add", Element("", "dispatch", ("10.96.0.11", "udp", "53"), ("drop",), "ns-b/dns:dns, main"))


def test_listing_reads_every_object():
    (t,) = parse_listing(LISTING)
    assert (t.family, t.name, t.comment) == ("ip", "kube-proxy", "rules for kube-proxy")
    assert t.chains["pre"].decl == Chain("pre", "filter", "prerouting", "dstnat-10")
    assert t.chains["helper"].decl.comment == "reject helper"
    assert [r.rule for r in t.chains["out"].rules][1] == "ip daddr . meta l4proto . th dport vmap @dispatch"
    assert t.chains["out"].rules[0].comment == "masq"
    assert t.sets["aff-a"].decl == Set("aff-a", "ipv4_addr", ("dynamic", "timeout"), 10800)
    assert set(t.sets["aff-a"].elements) == {("198.51.100.77",)}  # run-time entry, key without its timers
    assert t.sets["dispatch"].elements[("10.96.0.11", "udp", "53")].comment == "ns-b/dns:dns, main"
    assert isinstance(t.sets["ports"].decl, Map) and not isinstance(t.sets["vips"].decl, Map)


# ----------------------------------------------------------------------------- the normal form


def test_normal_form_keeps_rule_order_and_ignores_element_order():
    a = state.normalise(read_state(SCRIPT))
    swapped = SCRIPT.replace("add rule ip kube-proxy ext-a goto svc-a\n", "").replace(
        'add rule ip kube-proxy ext-a iifname', "add rule ip kube-proxy ext-a goto svc-a\nadd rule ip kube-proxy ext-a iifname")
    b = state.normalise(read_state(swapped))
    assert a != b
    diff = state.compare(a, b)
    assert diff and all(line.startswith("chain ext-a:") for line in diff)
    lines = SCRIPT.splitlines()
    elements = [ln for ln in lines if ln.startswith("add element")]
    reordered = "\n".join([ln for ln in lines if not ln.startswith("add element")] + elements[::-1]) + "\n"
    assert state.normalise(read_state(reordered)) == a


def test_dynamic_set_entries_are_not_configuration():
    n = state.normalise(read_state(LISTING))
    assert n.set("aff-a").elements == frozenset()
    assert n.set("vips").elements == frozenset({(("10.96.0.10",), (), None), (("10.96.0.11",), (), None)})


def test_compare_names_each_difference():
    a = state.normalise(read_state(SCRIPT))
    changed = (SCRIPT.replace("add element ip kube-proxy vips { 10.96.0.11 }\n", "add element ip kube-proxy vips { 10.96.0.12 }\n")
               .replace('comment "ports" ; }', 'comment "node ports" ; }')
               .replace("add chain ip kube-proxy fw-a\n", "add chain ip kube-proxy fw-a\nadd chain ip kube-proxy extra\n"))
    diff = state.compare(a, state.normalise(read_state(changed)))
    assert "set vips: element only in the first: 10.96.0.11" in diff
    assert "set vips: element only in the second: 10.96.0.12" in diff
    assert "chain extra: only in the second" in diff
    assert any(line.startswith("map ports: declared") for line in diff)
    assert len(diff) == 4


@pytest.mark.parametrize("written, listed", [
    ("mark set mark or 0x4000", "meta mark set meta mark | 0x00004000"),
    ("mark and 0x4000 != 0 mark set mark xor 0x4000 masquerade", "meta mark & 0x00004000 != 0x00000000 meta mark set meta mark ^ 0x00004000 masquerade"),
    ("meta l4proto udp dnat ip6 addr . port to numgen random mod 2 map { 1 : fd00::b . 53 , 0 : fd00::a . 53 }",
     "meta l4proto udp dnat ip6 to numgen random mod 2 map { 0 : fd00::a . 53, 1 : fd00::b . 53 }"),
    ("numgen random mod 12 vmap { 0 : goto a , 1 : goto b , 2 : goto c , 3 : goto d , 4 : goto e , 5 : goto f , "
     "6 : goto g , 7 : goto h , 8 : goto i , 9 : goto j , 10 : goto k , 11 : goto l }",
     "numgen random mod 12 vmap { 0 : goto a, 1 : goto b, 2 : goto c, 3 : goto d, 4 : goto e, 5 : goto f, "
     "6 : goto g, 7 : goto h, 8 : goto i, 9 : goto j, 10 : goto k, 11 : goto l }"),
    ("ip6 saddr != { 2001:db8::/64 , 2001:db8::5 } drop", "ip6 saddr != 2001:db8::/64 drop"),
    ("ip saddr 10.5.0.0/16 goto x", "ip saddr { 10.5.0.0/16 } goto x"),
    ("ip daddr { 10.96.0.0/13,10.104.0.0/13 } drop", "ip daddr 10.96.0.0/12 drop"),
    ("ip daddr { 10.96.0.0/16,10.98.0.0/15 } drop", "ip daddr { 10.96.0.0-10.96.255.255, 10.98.0.0/15 } drop"),
    ("ip daddr { 10.96.0.0/16,10.97.0.0/16,10.98.0.0/16 } drop", "ip daddr { 10.96.0.0-10.98.255.255 } drop"),
    ("iifname != veth* mark set mark or 0x200", 'iifname != "veth*" meta mark set meta mark | 0x00000200'),
    ("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @np",
     "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @np"),
])
def test_canonical_rule_spelling(written, listed):
    assert state.canon_rule(written) == state.canon_rule(listed)


@pytest.mark.parametrize("a, b", [
    ("mark set mark or 0x4000", "mark set mark or 0x8000"),
    ("meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.0.0.1 . 80 , 1 : 10.0.0.2 . 80 }",
     "meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.0.0.2 . 80 , 1 : 10.0.0.1 . 80 }"),
    ("ip saddr != { 10.0.0.0/25 } drop", "ip saddr != { 10.0.0.0/24 } drop"),
    ("ip saddr 10.5.0.0/16 goto x", "ip saddr != 10.5.0.0/16 goto x"),
    ("iifname cbr0 goto x", "iifname cbr1 goto x"),
])
def test_canonical_form_keeps_real_differences(a, b):
    assert state.canon_rule(a) != state.canon_rule(b)


def test_replay_follows_add_flush_delete():
    tx = Transaction()
    tx.add(Table())
    tx.add(Chain("c"))
    tx.add(Rule("c", "accept"))
    tx.flush(Chain("c"))
    tx.add(Rule("c", "drop"))
    tx.add(Set("s", "ipv4_addr"))
    tx.add(Element(set="s", key=("10.0.0.1",)))
    tx.add(Element(set="s", key=("10.0.0.2",)))
    tx.delete(Element(set="s", key=("10.0.0.1",)))
    tx.add(Chain("gone"))
    tx.delete(Chain("gone"))
    st = state.replay(tx)
    assert [r.rule for r in st.chains["c"].rules] == ["drop"]
    assert set(st.sets["s"].elements) == {("10.0.0.2",)}
    assert "gone" not in st.chains


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text, message", [
    ("add table ip kube-proxy\nadd rule ip kube-proxy nowhere accept\n", "line 2: .*not declared"),
    ("add table ip kube-proxy\nadd table ip6 kube-proxy\n", "line 2: table ip6 kube-proxy"),
    ("add table ip kube-proxy\nlist ruleset\n", "line 2: not an add/flush/delete command"),
    ("add table ip kube-proxy\nadd chain ip kube-proxy c { type filter }\n", "line 2"),
    ("add table ip kube-proxy\nadd set ip kube-proxy s { type ipv4_addr ; size 10 ; }\n", "not read"),
    ("add table ip kube-proxy\nadd set ip kube-proxy s { type ipv4_addr ; flags timeout ; timeout soon ; }\n",
     "not a duration"),
    ("# only a comment\n", "no commands"),
    ("table ip kube-proxy {\n\tchain c {\n\t\taccept\n", "no closing"),
    ("table ip kube-proxy {\n\tcounter x {\n\t}\n}\n", "expected a set, map or chain"),
    ("table ip kube-proxy {\n\tchain c {\n\t\ttype filter hook input priority 0; policy drop;\n\t}\n}\n",
     "policy drop"),
    ("table ip kube-proxy {\n\tset s {\n\t\ttypeof ip saddr\n\t}\n}\n", "no type"),
])
def test_unreadable_text_names_the_line(text, message):
    with pytest.raises(NftParseError, match=message):
        read_state(text)


def test_read_state_picks_the_table_from_a_ruleset():
    ruleset = LISTING + "table ip6 kube-proxy {\n}\ntable inet filter {\n\tchain input {\n\t}\n}\n"
    assert read_state(ruleset, family="ip").family == "ip"
    assert read_state(ruleset, family="ip6").chains == {}
    with pytest.raises(NftParseError, match="no single table"):
        read_state(ruleset)
    with pytest.raises(NftParseError, match="not ip6"):
        read_state(SCRIPT, family="ip6")
    handles = LISTING.replace("\t\tct state new jump helper", "\t\tct state new jump helper # handle 7")
    assert state.normalise(read_state(handles)) == state.normalise(read_state(LISTING))


@pytest.mark.parametrize("text, seconds", [("10800s", 10800), ("3h", 10800), ("1h30m", 5400), ("2d", 172800),
                                           ("600", 600), ("1m0s", 60)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.root
@pytest.mark.skipif(not shutil.which("nft"), reason="needs nft")
def test_the_kernel_lists_the_script_in_the_listing_spelling():
    """The hand-written LISTING above is what nft prints: loading SCRIPT and listing it gives the same state."""
    with namespace_names("rgt-nftp") as fresh:
        ns = fresh()
        subprocess.run(["ip", "netns", "add", ns], check=True)
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=SCRIPT, text=True,
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "ip", "kube-proxy"],
                                text=True, capture_output=True, timeout=60, check=True).stdout
    kernel = state.normalise(read_state(listed))
    assert state.compare(state.normalise(read_state(SCRIPT)), kernel) == []
    assert kernel == state.normalise(read_state(LISTING))
