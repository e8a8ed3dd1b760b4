"""The nftables IR: a Transaction refuses what nft would refuse, when it is queued, and renders as knftables does."""

from __future__ import annotations

import pytest

from rulegen.dataplane.nft.model import (
    Chain,
    Element,
    Map,
    NftError,
    Rule,
    Set,
    Table,
    Transaction,
    check_comment,
    key_arity,
    parse_priority,
    truncate_comment,
)
from rulegen.dataplane.nft.render import lines, render


def base_tx(family: str = "ip") -> Transaction:
    tx = Transaction(family, "kube-proxy")
    tx.add(Table("rules for kube-proxy"))
    tx.add(Chain("svc"))
    tx.add(Set("vips", "ipv4_addr", comment="addresses"))
    tx.add(Map("dispatch", "ipv4_addr . inet_proto . inet_service : verdict"))
    return tx


# ----------------------------------------------------------------------------- rendering


def test_every_object_renders_as_knftables_writes_it():
    tx = Transaction("ip", "kube-proxy")
    tx.add(Table("rules for kube-proxy"))
    tx.add(Chain("pre", "filter", "prerouting", "dstnat-10"))
    tx.flush(Chain("pre"))
    tx.add(Chain("post", "nat", "postrouting", "srcnat"))
    tx.add(Chain("helper", comment="a helper"))
    tx.add(Chain("plain"))
    tx.add_rule("plain", "reject")
    tx.add(Rule("pre", "ct state new jump helper", "first"))
    tx.add(Set("aff", "ipv4_addr", ("dynamic", "timeout"), 600))
    tx.add(Set("vips", "ipv4_addr . inet_proto", comment="with a comment"))
    tx.flush(Set("vips"))
    tx.add(Map("m", "inet_proto . inet_service : verdict", comment="verdicts"))
    tx.add(Element(set="vips", key=("10.9.0.1", "udp")))
    tx.add(Element(map="m", key=("tcp", "31000"), value=("goto helper",), comment="ns-a/web:http"))
    tx.add(Element(map="m", key=("udp", "53"), value=("drop",)))
    tx.delete(Element(map="m", key=("udp", "53")))
    tx.delete(Set("aff"))
    tx.delete(Chain("plain"))
    assert render(tx) == (
        'add table ip kube-proxy { comment "rules for kube-proxy" ; }\n'
        "add chain ip kube-proxy pre { type filter hook prerouting priority -110 ; }\n"
        "flush chain ip kube-proxy pre\n"
        "add chain ip kube-proxy post { type nat hook postrouting priority 100 ; }\n"
        'add chain ip kube-proxy helper { comment "a helper" ; }\n'
        "add chain ip kube-proxy plain\n"
        "add rule ip kube-proxy plain reject\n"
        'add rule ip kube-proxy pre ct state new jump helper comment "first"\n'
        "add set ip kube-proxy aff { type ipv4_addr ; flags dynamic,timeout ; timeout 600s ; }\n"
        'add set ip kube-proxy vips { type ipv4_addr . inet_proto ; comment "with a comment" ; }\n'
        "flush set ip kube-proxy vips\n"
        'add map ip kube-proxy m { type inet_proto . inet_service : verdict ; comment "verdicts" ; }\n'
        "add element ip kube-proxy vips { 10.9.0.1 . udp }\n"
        'add element ip kube-proxy m { tcp . 31000 comment "ns-a/web:http" : goto helper }\n'
        "add element ip kube-proxy m { udp . 53 : drop }\n"
        "delete element ip kube-proxy m { udp . 53 }\n"
        "delete set ip kube-proxy aff\n"
        "delete chain ip kube-proxy plain\n"
    )
    # The chunked fast path and the per-operation writers agree.
    assert "".join(lines(tx)) == render(tx)


def test_render_is_chunked_without_changing_the_text():
    tx = base_tx()
    for i in range(5000):
        tx.add_element("vips", (f"10.{i // 250}.{i % 250}.1",))
    text = render(tx)
    assert text == "".join(lines(tx))
    assert text.count("\n") == 5004 and text.endswith("add element ip kube-proxy vips { 10.19.249.1 }\n")


def test_ipv6_table_and_chain_helper():
    tx = Transaction("ip6", "kube-proxy")
    tx.add(Table())
    tx.add_chain("service-X-ns/a/tcp/p")
    assert render(tx) == ("add table ip6 kube-proxy\nadd chain ip6 kube-proxy service-X-ns/a/tcp/p\n"
                          "flush chain ip6 kube-proxy service-X-ns/a/tcp/p\n")


def test_priorities_are_numbers_as_knftables_parses_them():
    assert parse_priority("dstnat-10") == -110
    assert parse_priority("dstnat") == -100
    assert parse_priority("srcnat+5") == 105
    assert parse_priority("filter") == 0
    assert parse_priority("-42") == -42
    with pytest.raises(NftError, match="unknown"):
        parse_priority("early")
    with pytest.raises(NftError, match="cannot parse"):
        parse_priority("dstnat-x")


def test_key_arity():
    assert key_arity("ipv4_addr") == 1
    assert key_arity("ipv4_addr . inet_proto . inet_service : verdict") == 3
    assert key_arity("inet_proto . inet_service : verdict") == 2


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("op, message", [
    (lambda tx: tx.add_rule("nowhere", "accept"), "chain 'nowhere' is not declared"),
    (lambda tx: tx.add(Rule("nowhere", "accept")), "chain 'nowhere' is not declared"),
    (lambda tx: tx.add_rule("svc", "goto missing"), "undeclared chain 'missing'"),
    (lambda tx: tx.add_rule("svc", "numgen random mod 2 vmap { 0 : goto svc , 1 : goto gone }"),
     "undeclared chain 'gone'"),
    (lambda tx: tx.add_rule("svc", "ip saddr @nope drop"), "undeclared set 'nope'"),
    (lambda tx: tx.add_rule("svc", ""), "empty"),
    (lambda tx: tx.add_rule("svc", "accept\nadd table ip evil"), "newline"),
    (lambda tx: tx.add_rule("svc", 'accept comment "x"'), "quote"),
    (lambda tx: tx.add_rule("svc", "accept ; flush ruleset"), "';'"),
    (lambda tx: tx.add(Rule("svc", "accept")) or tx.flush(Rule("svc", "accept")), "only added"),
    (lambda tx: tx.add_element("absent", ("1.2.3.4",)), "no set or map 'absent'"),
    (lambda tx: tx.add(Element(set="absent", key=("1.2.3.4",))), "no set 'absent'"),
    (lambda tx: tx.add(Element(map="vips", key=("1.2.3.4",), value=("drop",))), "no map 'vips'"),
    (lambda tx: tx.add(Element(set="vips", map="dispatch", key=("1.2.3.4",))), "both a set and a map"),
    (lambda tx: tx.add(Element(key=("1.2.3.4",))), "no set or map"),
    (lambda tx: tx.add_element("vips", ("1.2.3.4", "tcp")), "the key has 2 part(s), the type 1"),
    (lambda tx: tx.add_element("dispatch", ("1.2.3.4", "tcp", "80")), "no value"),
    (lambda tx: tx.add_element("dispatch", ("1.2.3.4", "tcp", "80"), ("goto nowhere",)), "undeclared chain"),
    (lambda tx: tx.add_element("dispatch", ("1.2.3.4", "tcp", "80"), ("jump to somewhere",)), "undeclared chain"),
    (lambda tx: tx.add_element("dispatch", ("1.2.3.4", "tcp", "80"), ("a b",)), "not a map value"),
    (lambda tx: tx.add_element("vips", ("1.2.3.4",), ("drop",)), "a set element has no value"),
    (lambda tx: tx.add_element("vips", ("1.2.3.4 }",)), "is not a key"),
    (lambda tx: tx.add_element("vips", ("",)), "is not a key"),
    (lambda tx: tx.add(Chain("b", "filter", "input")), "type, hook and priority together"),
    (lambda tx: tx.add(Chain("b", "filter", "sideways", "0")), "hook 'sideways'"),
    (lambda tx: tx.add(Chain("b", "magic", "input", "0")), "type 'magic'"),
    (lambda tx: tx.add(Chain("b", "filter", "input", "soon")), "unknown"),
    (lambda tx: tx.flush(Chain("b", "filter", "input", "0")), "only go with add"),
    (lambda tx: tx.flush(Chain("missing")), "no such chain"),
    (lambda tx: tx.delete(Set("missing", "")), "no such set"),
    (lambda tx: tx.add(Chain("bad name")), "not an nftables name"),
    (lambda tx: tx.add(Chain("9starts-with-digit")), "not an nftables name"),
    (lambda tx: tx.add(Chain("x" * 257)), "at most 256"),
    (lambda tx: tx.add(Set("s", "ipv4_addr : verdict")), "use a Map"),
    (lambda tx: tx.add(Map("m2", "ipv4_addr")), "no value type"),
    (lambda tx: tx.add(Set("s", "ipv4_addr; flush ruleset")), "not an nftables type"),
    (lambda tx: tx.add(Set("s", "ipv4_addr", ("sparkly",))), "unknown flags"),
    (lambda tx: tx.add(Set("s", "ipv4_addr", (), 60)), "timeout flag"),
    (lambda tx: tx.add(Set("vips", "ipv6_addr")), "already declared"),
    (lambda tx: tx.add(Set("dispatch", "ipv4_addr")), "already a map"),
    (lambda tx: tx.flush(Table()), "not used here"),
    (lambda tx: tx.add(Chain("c", comment='quote " breaks out')), "printable ASCII"),
])
def test_refused_when_queued(op, message):
    tx = base_tx()
    before = len(tx)
    with pytest.raises(NftError, match=message.replace("(", r"\(").replace(")", r"\)")):
        op(tx)
    assert len(tx) <= before + 1  # nothing refused was queued (the two-step cases queue their first step)


def test_nothing_before_the_table():
    tx = Transaction()
    with pytest.raises(NftError, match="not added first"):
        tx.add(Chain("a"))
    with pytest.raises(NftError, match="not added first"):
        tx.add_chain("a")
    with pytest.raises(NftError, match="family"):
        Transaction("inet6")


def test_delete_forgets_and_later_operations_see_it():
    tx = base_tx()
    tx.delete(Chain("svc"))
    with pytest.raises(NftError, match="not declared"):
        tx.add_rule("svc", "accept")
    tx.add(Chain("svc"))
    tx.add_rule("svc", "accept")
    tx.delete(Map("dispatch", ""))
    with pytest.raises(NftError, match="no set or map"):
        tx.add_element("dispatch", ("1.2.3.4", "tcp", "80"), ("drop",))


def test_a_base_chain_cannot_change_in_place_but_can_after_delete():
    tx = base_tx()
    tx.add(Chain("in", "filter", "input", "0"))
    with pytest.raises(NftError, match="already declared"):
        tx.add(Chain("in", "filter", "input", "10"))
    tx.add(Chain("in"))  # a plain add of an existing base chain keeps it
    assert tx.chains()["in"].priority == "0"
    tx.delete(Chain("in"))
    tx.add(Chain("in", "filter", "input", "10"))
    assert tx.chains()["in"].priority == "10"


# ----------------------------------------------------------------------------- comments


@pytest.mark.parametrize("comment", [
    'ends the quote" ; add table ip x', "line\nbreak", "tab\there", "back\\slash", "caf\u00e9", "x" * 129,
])
def test_unsafe_comments_never_reach_the_text(comment):
    with pytest.raises(NftError):
        check_comment(comment)
    tx = base_tx()
    for op in (lambda: tx.add_rule("svc", "accept", comment),
               lambda: tx.add_element("dispatch", ("1.2.3.4", "tcp", "80"), ("drop",), comment),
               lambda: tx.add(Set("s2", "ipv4_addr", comment=comment)),
               lambda: tx.add(Chain("c2", comment=comment)),
               lambda: tx.add(Table(comment))):
        with pytest.raises(NftError):
            op()
    assert comment not in render(tx)


def test_safe_comments_and_truncation():
    assert check_comment("ns-a/web:http") == "ns-a/web:http"
    assert check_comment("x" * 128) == "x" * 128
    long = "n" * 63 + "/" + "s" * 63 + ":" + "p" * 15
    assert len(long) == 143 and truncate_comment(long) == long[:128]
    assert truncate_comment("ns/a:b") == "ns/a:b"
