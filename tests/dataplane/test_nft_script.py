"""The nft script model, the raw netlink encoder and the load plan, without a kernel.

The script model is what the loader trusts to send the same end state in
another order, and what the difference path trusts to send only changes:
playing a script, writing the state back and playing that again must give
the same state; old state plus difference must give the new state; and the
load plan must keep every transaction bounded and every hook for last.
"""

from __future__ import annotations

import re
import struct

import pytest

from rulegen.bench import nftshape
from rulegen.dataplane.nft import loader as L
from rulegen.dataplane.nft import netlink as nl
from rulegen.dataplane.nft import script as sc
from rulegen.dataplane.nft.model import Element, Rule
from rulegen.dataplane.nft.parse import parse_listing
from rulegen.dataplane.nft.state import normalise

T = "ip demo"

SMALL = f"""add table {T} {{ comment "demo table" ; }}
add chain {T} entry {{ type nat hook prerouting priority -100 ; }}
add chain {T} pick
add chain {T} far
add map {T} dispatch {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "where to" ; }}
add set {T} seen {{ type ipv4_addr ; flags dynamic,timeout ; timeout 600s ; }}
add rule {T} entry ip daddr . meta l4proto . th dport vmap @dispatch
add rule {T} pick ip saddr @seen goto far
add rule {T} pick meta l4proto tcp dnat ip addr . port to numgen random mod 2 map {{ 0 : 10.9.0.1 . 80 , 1 : 10.9.0.2 . 80 }}
add rule {T} far update @seen {{ ip saddr }}
add rule {T} far meta l4proto tcp dnat to 10.9.0.3:80 comment "a, b {{c}}"
add element {T} dispatch {{ 10.1.0.1 . tcp . 80 comment "x/y:z" : goto pick }}
add element {T} dispatch {{ 10.1.0.2 . udp . 53 : drop }}
"""


def test_play_reads_the_script():
    t = sc.play(SMALL)
    assert sc.ref(t) == T and t.comment == "demo table"
    assert list(t.chains) == ["entry", "pick", "far"]
    assert sc.is_base(t.chains["entry"]) and not sc.is_base(t.chains["pick"])
    assert t.chains["far"].rules[1] == Rule("far", "meta l4proto tcp dnat to 10.9.0.3:80", "a, b {c}")
    els = t.sets["dispatch"].elements
    assert list(els) == [("10.1.0.1", "tcp", "80"), ("10.1.0.2", "udp", "53")]
    assert els[("10.1.0.1", "tcp", "80")].comment == "x/y:z" and els[("10.1.0.1", "tcp", "80")].value == ("goto pick",)
    assert not t.sets["seen"].is_map and not t.sets["seen"].elements


def test_flush_delete_insert_are_played_in_order():
    t = sc.play(SMALL + f"""flush chain {T} pick
add rule {T} pick counter
insert rule {T} pick ip saddr 10.0.0.1 drop
delete element {T} dispatch {{ 10.1.0.2 . udp . 53 }}
add element {T} dispatch {{ 10.1.0.3 . tcp . 443 : goto far, 10.1.0.4 . tcp . 443 : goto far }}
flush chain {T} far
delete chain {T} far
""")
    assert [r.rule for r in t.chains["pick"].rules] == ["ip saddr 10.0.0.1 drop", "counter"]
    assert "far" not in t.chains
    assert [" . ".join(k) for k in t.sets["dispatch"].elements] == [
        "10.1.0.1 . tcp . 80", "10.1.0.3 . tcp . 443", "10.1.0.4 . tcp . 443"]


@pytest.mark.parametrize("line, what", [
    (f"add rule {T} pick handle 4 drop", sc.Unsupported),
    (f"add counter {T} c1", sc.Unsupported),
    ("add chain ip other x", sc.Unsupported),
    (f"replace rule {T} pick handle 3 drop", sc.Unsupported),
    (f"add rule {T} nochain drop", sc.ScriptError),
    (f"delete element {T} dispatch {{ 10.7.7.7 . tcp . 1 }}", sc.ScriptError),
    ("add", sc.ScriptError),
])
def test_what_the_model_refuses(line, what):
    with pytest.raises(what) as e:
        sc.play(SMALL + line + "\n")
    assert e.value.line_no == SMALL.count("\n") + 1


@pytest.mark.parametrize("mix", [nftshape.Mix(), nftshape.Mix(affinity=0.3, firewall=1.0, loadbalancer=0.3,
                                                                 no_endpoints=0.1, local_policy=0.5)])
def test_render_then_play_is_the_same_state(mix):
    t = sc.play(nftshape.script(150, 4, mix=mix, seed=3))
    again = sc.play(sc.render(t))
    assert again == t
    assert sc.diff(sc.view(t), sc.view(again), again) == []
    assert sc.play(sc.render(t, per_command=50)) == t  # merged element commands too


def _diff(old: str, new: str) -> list[str]:
    o, n = sc.play(old), sc.play(new)
    return sc.commands(sc.ref(n), sc.diff(sc.view(o), sc.view(n), n))


def _after(old_text: str, cmds: list[str]):
    return sc.play(old_text + "".join(c + "\n" for c in cmds))


@pytest.mark.parametrize("seed", [1, 2])
def test_old_plus_diff_is_new(seed):
    old = nftshape.script(120, 3, seed=seed, mix=nftshape.Mix(affinity=0.2))
    new = nftshape.script(120, 3, seed=seed, mix=nftshape.Mix(affinity=0.2), moved=7)
    cmds = _diff(old, new)
    assert cmds and any(c.startswith("flush chain") for c in cmds)
    assert _after(old, cmds) == sc.play(new)


def test_diff_deletes_what_is_gone_after_what_points_at_it():
    old = nftshape.script(60, 3, seed=5)
    fewer = nftshape.script(40, 3, seed=5)  # the first 40 Services are the same; 20 are gone
    cmds = _diff(old, fewer)
    deletes = [i for i, c in enumerate(cmds) if c.startswith("delete chain")]
    element_deletes = [i for i, c in enumerate(cmds) if c.startswith("delete element")]
    assert deletes and element_deletes and max(element_deletes) < min(deletes)
    assert _after(old, cmds) == sc.play(fewer)
    # And the other way round: new chains come before the elements that name them.
    back = _diff(fewer, old)
    first_chain = min(i for i, c in enumerate(back) if c.startswith("add chain"))
    first_elem = min(i for i, c in enumerate(back) if c.startswith("add element"))
    assert first_chain < first_elem
    assert _after(fewer, back) == sc.play(old)


def test_a_changed_set_declaration_is_made_again_with_its_users_rewritten():
    changed = SMALL.replace("timeout 600s", "timeout 60s")
    cmds = _diff(SMALL, changed)
    assert f"delete set {T} seen" in cmds and f"flush chain {T} pick" in cmds and f"flush chain {T} far" in cmds
    assert _after(SMALL, cmds) == sc.play(changed)


def test_diff_refuses_what_one_transaction_cannot_change_in_place():
    with pytest.raises(sc.Unsupported):
        _diff(SMALL, SMALL.replace("demo table", "another comment"))


def test_anonymous_sets_and_references():
    assert sc.anon_sets("meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : a . 1 , 1 : b . 1 }") == 1
    assert sc.anon_sets("ip saddr != { 10.0.0.0/8, 192.168.0.0/16 } drop") == 1
    assert sc.anon_sets("update @aff-1 { ip saddr }") == 0
    assert sc.anon_sets('ip saddr 1.2.3.4 drop comment "{not a set}"') == 0
    assert sc.set_refs("ip saddr @aff-1 goto endpoint-x") == ["aff-1"]
    assert sc.chain_refs("numgen random mod 2 vmap { 0 : goto a/b , 1 : jump c.d }") == ["a/b", "c.d"]


LISTING = """table ip demo {
	comment "demo table"
	map dispatch {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "where to"
		elements = { 10.1.0.2 . udp . 53 : drop,
			     10.1.0.1 . tcp . 80 comment "x/y:z" : goto pick }
	}

	chain entry {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr . meta l4proto . th dport vmap @dispatch
	}

	chain pick {
		ip saddr 1.1.1.1 drop
		ip saddr 2.2.2.2 drop
	}
}
"""


def test_listings_compare_by_object_not_by_order():
    a = normalise(parse_listing(LISTING)[0])
    reordered = LISTING.replace("10.1.0.2 . udp . 53 : drop,\n\t\t\t     10.1.0.1 . tcp . 80 comment \"x/y:z\" : goto pick",
                                "10.1.0.1 . tcp . 80 comment \"x/y:z\" : goto pick,\n\t\t\t     10.1.0.2 . udp . 53 : drop")
    assert reordered != LISTING and normalise(parse_listing(reordered)[0]) == a
    swapped_rules = LISTING.replace("1.1.1.1", "X").replace("2.2.2.2", "1.1.1.1").replace("X", "2.2.2.2")
    assert normalise(parse_listing(swapped_rules)[0]) != a
    t = parse_listing(LISTING)[0]
    assert t.comment == "demo table" and t.chains["entry"].decl.hook == "prerouting"
    # A listing and the script that made it have one normal view, so a live table diffs against a compile.
    assert sc.diff(sc.normal_view(t), sc.normal_view(t), t) == []


# ---------------------------------------------------------------- netlink encoding


def _attrs(buf: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off + 4 <= len(buf):
        ln, typ = struct.unpack_from("HH", buf, off)
        out.append((typ & 0x7FFF, buf[off + 4:off + ln]))
        off += (ln + 3) & ~3
    return out


def test_dnat_map_rule_is_encoded_as_nft_encodes_it():
    enc = nl.Encoder("ip", "kube-proxy")
    msgs = enc.rule("svc", "meta l4proto udp dnat ip addr . port to numgen random mod 2 "
                           "map { 0 : 10.128.0.1 . 8080 , 1 : 10.128.0.2 . 53 }")
    assert [m.mtype for m in msgs] == [nl.NFT_MSG_NEWSET, nl.NFT_MSG_NEWSETELEM, nl.NFT_MSG_NEWRULE]
    newset = dict(_attrs(msgs[0].body))
    assert newset[3] == struct.pack(">I", 0x0B)  # anonymous, constant, map
    assert newset[6] == struct.pack(">I", (7 << 6) | 13)  # ipv4_addr . inet_service
    assert newset[7] == struct.pack(">I", 8)
    assert not newset[2].startswith(b"__map")  # a concrete name, not nft's template
    elems = dict(_attrs(msgs[1].body))
    assert 2 not in elems  # by set id only
    first = _attrs(_attrs(elems[3])[0][1])
    assert dict(first)[1] == bytes.fromhex("0800 0100") + struct.pack("=I", 0)
    assert bytes.fromhex("0a800001 1f90 0000") in dict(first)[2]
    rule = dict(_attrs(msgs[2].body))
    names = [dict(_attrs(e))[1].rstrip(b"\0") for _, e in _attrs(rule[4])]
    assert names == [b"meta", b"cmp", b"numgen", b"lookup", b"nat"]
    assert msgs[2].flags & nl.NLM_F_APPEND


def test_first_load_names_anonymous_maps_short_and_apart_from_tagged_names():
    rule = "numgen random mod 2 vmap { 0 : goto a , 1 : goto b }"

    def names(enc: nl.Encoder, n: int) -> list[bytes]:
        return [dict(_attrs(enc.rule("c", rule)[0].body))[2].rstrip(b"\0") for _ in range(n)]

    fresh = names(nl.Encoder("ip", "kube-proxy", fresh=True), 50000)
    tagged = names(nl.Encoder("ip", "kube-proxy"), 50000)
    # Up to 46,656 maps the name and its NUL fit the kernel's 8-byte allocations.
    assert max(len(x) for x in fresh[:46656]) + 1 <= 8
    assert len(set(fresh)) == len(fresh) and len(set(tagged)) == len(tagged)
    assert not set(fresh) & set(tagged)  # a later change's maps never collide with a first load's
    # Never a template, and never equal to a name nft makes (`__set%d`, `__map%d`: no dot).
    assert all(x.startswith(b"__") and b"%" not in x and x.endswith(b".") for x in fresh)


def test_encoder_declines_what_it_does_not_know():
    enc = nl.Encoder("ip", "kube-proxy")
    assert enc.rule("c", "ip saddr 1.2.3.4 drop") is None
    assert enc.rule("c", "meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.0.0.1 . 80 }") is None
    assert enc.rule("c", "meta l4proto tcp dnat ip addr . port to numgen random mod 1 map { 0 : 10.0.0.300 . 80 }") is None
    assert enc.rule("c", "meta l4proto tcp dnat ip6 addr . port to numgen random mod 1 map { 0 : fd00::1 . 80 }") is None
    assert enc.command("add chain ip kube-proxy base { type nat hook output priority -100 ; }") is None
    assert enc.command("add element ip kube-proxy unknown-set { 1.2.3.4 }") is None
    t = sc.play(SMALL)
    enc6 = nl.Encoder("ip", "demo")
    enc6.learn_sets(t.sets.values())
    assert "seen" not in enc6.set_types  # a dynamic set with timeouts is left to nft
    assert enc6.set_types["dispatch"] == (["ipv4_addr", "inet_proto", "inet_service"], "verdict")
    assert enc6.command(f"add element {T} dispatch {{ 10.1.0.9 . tcp . 99999 : drop }}") is None


def test_large_element_lists_are_split_into_several_messages():
    enc = nl.Encoder("ip", "demo")
    enc.learn_sets(sc.play(SMALL).sets.values())
    items = [Element("", "dispatch", (f"10.{i >> 8 & 255}.{i & 255}.1", "tcp", "80"), ("goto pick",))
             for i in range(5000)]
    msgs = enc.elements("add", "dispatch", items)
    assert len(msgs) > 1 and all(len(m.body) < 65536 for m in msgs)
    assert sum(len(_attrs(dict(_attrs(m.body))[3])) for m in msgs) == 5000


# ---------------------------------------------------------------- the load plan


def test_plan_bounds_transactions_and_hooks_go_last():
    t = sc.play(nftshape.script(400, 4, mix=nftshape.Mix(affinity=0.1, firewall=1.0, loadbalancer=0.2)))
    enc = nl.Encoder(t.family, t.name)
    enc.learn_sets(t.sets.values())
    opts = L.Options(chunk_maps=50, chunk_commands=300)
    chunks = L.plan_first(t, opts, enc)
    assert all(c.maps <= 50 and len(c.commands) <= 300 for c in chunks)
    base = {name for name, c in t.chains.items() if sc.is_base(c)}
    for c in chunks[:-1]:
        assert not any(cmd.split()[4] in base for cmd in c.commands if cmd.startswith(("add chain", "add rule")))
    assert chunks[-1].phase == "activate"
    assert {cmd.split()[4] for cmd in chunks[-1].commands} == base
    # Every rule and element of the state is sent exactly once.
    rules = [cmd for c in chunks for cmd in c.commands if cmd.startswith("add rule")]
    assert len(rules) == sum(len(c.rules) for c in t.chains.values())
    assert sum(c.elements for c in chunks) == sum(len(s.elements) for s in t.sets.values())
    # Affinity sets (no elements, few rules each) come after the anonymous maps of every chain that does
    # not use them, and before the rules that do.
    late = [i for i, c in enumerate(chunks) if c.phase == "late sets"]
    assert late
    uses = [i for i, c in enumerate(chunks) for cmd in c.commands
            if cmd.startswith("add rule") and "@affinity-" in cmd]
    others = [i for i, c in enumerate(chunks) if c.phase == "rules" and c.maps
              and not any("@affinity-" in cmd for cmd in c.commands)]
    assert uses and others and max(others) < min(late) and max(late) < min(uses)


def test_plan_without_netlink_sends_everything_through_nft():
    t = sc.play(nftshape.script(100, 3))
    chunks = L.plan_first(t, L.Options(netlink=False), None)
    assert {c.via for c in chunks} == {"nft"}
    text = "".join(cmd + "\n" for c in chunks for cmd in c.commands).replace("create table", "add table", 1)
    assert sc.play(text) == t


# ---------------------------------------------------------------- the generator


def test_generated_scripts_are_deterministic_and_have_every_part():
    text = nftshape.script(400, 3, seed=7)
    assert text == nftshape.script(400, 3, seed=7) != nftshape.script(400, 3, seed=8)
    t = sc.play(text)
    prefixes = {name.split("-")[0] for name in t.chains if "/" in name}
    assert prefixes == {"service", "external", "firewall", "local", "endpoint"}
    assert any(name.startswith("affinity-") for name in t.sets)
    assert sum(1 for c in t.chains.values() if sc.is_base(c)) == 8
    assert all(len(s.elements) for name, s in t.sets.items() if not name.startswith("affinity-")
               and name not in ("firewall-ips", "no-endpoint-nodeports"))
    # Every Service port's chain is named as kube-proxy names it: prefix, 8 hash characters, the port.
    svc = next(n for n in t.chains if n.startswith("service-") and "/svc-0/" in n)
    assert re.fullmatch(r"service-[A-Z2-7]{8}-ns0/svc-0/(tcp|udp)/p\d+", svc)
    old_layout = sc.play(nftshape.script(50, 3, layout="endpoint-chains"))
    # The older layout: an endpoint chain per endpoint of every Service that has endpoints.
    assert sum(1 for n in old_layout.chains if n.startswith("endpoint-")) == 3 * sum(
        1 for n in old_layout.chains if n.startswith("service-") and "/" in n)


def test_a_moved_endpoint_changes_one_service():
    cmds = _diff(nftshape.script(200, 4), nftshape.script(200, 4, moved=5))
    chains = {c.split()[4] for c in cmds if c.startswith(("flush chain", "add rule"))}
    assert len(chains) == 1 and next(iter(chains)).startswith("service-")
    assert all(c.startswith(("flush chain", "add rule", "add element", "delete element")) for c in cmds)


# ---------------------------------------------------------------- the load budgets


def test_budgets_compare_each_figure_with_the_naive_load_of_the_same_runs():
    from rulegen.bench import nftload

    res = nftload.Result(10000, 10, 96000)
    for naive, first in ((40.0, 5.6), (50.0, 8.0), (60.0, 8.4)):
        res.naive.add(naive, naive)
        res.first.add(first, first)
    for w in (0.2, 0.3, 0.25):
        res.change_netlink.add(w, w)
        res.change_nft.add(w + 0.9, w)
    got = {name.split(" (")[0]: (measured, met) for name, measured, _, met in nftload.budgets(res)}
    assert got["first apply, of the naive load"] == ("16.0%", False)  # 8.0 s of 50.0 s: the medians
    assert got["one endpoint change over netlink"] == ("0.250 s", True)
    assert got["one endpoint change through nft -f"] == ("1.150 s", False)
    table = nftload.markdown(res)
    assert "| budget | measured | limit | met |" in table and "per run 14.0%, 16.0%, 14.0%" in table
