"""spec.py: tokenizing rule bodies, the Spec structure, and one canonical spelling per meaning.

Pairs are rulegen's (kube-proxy's) spelling on the left and what
iptables-save prints for the same rule on the right; each pair must share a
canonical form, and rules that differ in meaning must not.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rulegen.dataplane.xtables.spec import (
    SpecError,
    _tokenize_chars,
    canonical,
    canonical_of,
    parse_spec,
    tokenize,
)

SAME = [
    # option order, implicit /32, explicit protocol match placement
    ('-m comment --comment "ns/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-X',
     '-d 10.96.0.10/32 -p tcp -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-X'),
    # unquoted and quoted comment
    ("-m comment --comment ns/web:http -s 10.244.1.5 -j KUBE-MARK-MASQ",
     '-s 10.244.1.5/32 -m comment --comment "ns/web:http" -j KUBE-MARK-MASQ'),
    # mark spellings
    ("-m mark ! --mark 0x00004000/0x00004000 -j RETURN", "-m mark ! --mark 0x4000/0x4000 -j RETURN"),
    ("-j MARK --or-mark 0x00004000", "-j MARK --set-xmark 0x4000/0x4000"),
    ("-j MARK --xor-mark 0x00004000", "-j MARK --set-xmark 0x4000/0x0"),
    # probability: Go's %0.10f and iptables-save's 11 decimals
    ("-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-A",
     "-m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A"),
    ("-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-A",
     "-m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-A"),
    # recent defaults and REJECT default
    ("-m recent --name KUBE-SEP-A --set -j DNAT --to-destination 10.0.0.1:80",
     "-m recent --set --name KUBE-SEP-A --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.0.0.1:80"),
    ("-j REJECT", "-j REJECT --reject-with icmp-port-unreachable"),
    ("-j REJECT", "-j REJECT --reject-with icmp6-port-unreachable"),
    # IPv6 address spelling and host prefix
    ("-d fd00:96:0::a -j ACCEPT", "-d fd00:96::a/128 -j ACCEPT"),
    # long option names, ctstate order, state vs conntrack name
    ("--source 10.0.0.0/8 --jump ACCEPT", "-s 10.0.0.0/8 -j ACCEPT"),
    ("-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
    ("-p tcp -m tcp --destination-port 80 -j ACCEPT", "-p tcp -m tcp --dport 80 -j ACCEPT"),
    # an any-address match is no match (kube-proxy writes it for loadBalancerSourceRanges 0.0.0.0/0)
    ('-m comment --comment "ns/web loadbalancer IP" -s 0.0.0.0/0 -j KUBE-EXT-X',
     '-m comment --comment "ns/web loadbalancer IP" -j KUBE-EXT-X'),
    ("-d ::/0 -j ACCEPT", "-j ACCEPT"),
    ("-s 10.1.2.3/0 -j ACCEPT", "-j ACCEPT"),
    # in-rule counters (iptables-restore -c form) carry no meaning
    ("-c 10 840 -s 10.0.0.1 -j ACCEPT", "-s 10.0.0.1/32 -j ACCEPT"),
    ("--set-counters 0 0 -p udp -m udp --dport 53 -j ACCEPT", "-p udp -m udp --dport 53 -j ACCEPT"),
    # the ipvs match as kube-proxy writes it and as iptables-save printed it in the IPVS VM
    ("-s 192.0.2.74 -m ipvs --vaddr 192.0.2.74 --vproto tcp --vport 5432 -j DROP",
     "-s 192.0.2.74/32 -m ipvs --vproto 6 --vaddr 192.0.2.74 --vport 5432 -j DROP"),
    ("-m ipvs --vaddr fd00::74 --vproto sctp --vport 80 -j DROP", "-m ipvs --vproto 132 --vaddr fd00::74/128 --vport 80 -j DROP"),
]

DIFFERENT = [
    ("-d 10.96.0.10 -j ACCEPT", "-d 10.96.0.11 -j ACCEPT"),
    ("-d 10.96.0.10/31 -j ACCEPT", "-d 10.96.0.10 -j ACCEPT"),
    ("-m mark --mark 0x4000/0x4000 -j RETURN", "-m mark ! --mark 0x4000/0x4000 -j RETURN"),
    ("-m mark --mark 0x4000/0x4000 -j RETURN", "-m mark --mark 0x8000/0x8000 -j RETURN"),
    ("-m statistic --mode random --probability 0.5000000000 -j X", "-m statistic --mode random --probability 0.2500000000 -j X"),
    ("-j REJECT", "-j REJECT --reject-with icmp-host-prohibited"),
    ("-m comment --comment a -j ACCEPT", "-m comment --comment b -j ACCEPT"),
    ("-p tcp -m tcp --dport 80 -j ACCEPT", "-p udp -m udp --dport 80 -j ACCEPT"),
    ("-j KUBE-SVC-A", "-g KUBE-SVC-A"),
    ("-c 10 840 -s 10.0.0.1 -j ACCEPT", "-s 10.0.0.2 -j ACCEPT"),
    ("! -s 0.0.0.0/0 -j ACCEPT", "-j ACCEPT"),
    ("-m ipvs --vaddr 192.0.2.74 --vproto tcp -j DROP", "-m ipvs --vproto 17 --vaddr 192.0.2.74 -j DROP"),
]


@pytest.mark.parametrize("a,b", SAME)
def test_same_meaning_same_canonical(a, b):
    assert canonical(a) == canonical(b)


@pytest.mark.parametrize("a,b", DIFFERENT)
def test_different_meaning_different_canonical(a, b):
    assert canonical(a) != canonical(b)


def test_canonical_is_idempotent():
    for a, b in SAME + DIFFERENT:
        for s in (a, b):
            assert canonical(canonical(s)) == canonical(s)


def test_tokenize_quotes_and_escapes():
    assert tokenize('-m comment --comment "a b" -j X') == ["-m", "comment", "--comment", "a b", "-j", "X"]
    assert tokenize(r'--comment "say \"hi\""') == ["--comment", 'say "hi"']
    assert tokenize('--comment ""') == ["--comment", ""]
    with pytest.raises(SpecError):
        tokenize('--comment "open')


def test_counters_option_is_not_kept_in_the_structure():
    sp = parse_spec("-c 1 2 -s 10.0.0.1 -j ACCEPT")
    assert [o.name for o in sp.base] == ["-s"]
    assert sp.target == "ACCEPT"


def test_unparsable_body_compares_by_text():
    bad = '-m comment --comment "open -j ACCEPT'
    assert canonical(bad) == bad
    with pytest.raises(SpecError):
        parse_spec("! ! -s 1.2.3.4")


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet='a- "\t\\', max_size=14))
def test_fast_tokenizer_paths_agree_with_the_character_loop(s):
    try:
        want = _tokenize_chars(s)
    except SpecError:
        with pytest.raises(SpecError):
            tokenize(s)
        return
    assert tokenize(s) == want


@pytest.mark.parametrize("v", ["10.0.0.1/32", "010.0.0.1/32", "10.0.0.400/32", "::ffff:10.0.0.1/32",
                               "10.0.0.1/032", "10.0.0.1/24", "fd00::1/128", "::ffff:10.0.0.1/128"])
def test_host_prefix_fast_path_matches_the_cidr_rules(v):
    from rulegen.dataplane.xtables import spec
    from rulegen.ipaddr import parse_cidr

    c = parse_cidr(v)
    if c is None:
        want = v
    else:
        ip, _, bits = c.partition("/")
        want = ip if bits == ("128" if ":" in ip else "32") else c
    assert spec._addr(v) == want


# ------------------------------------------------------------------ the two routes to a canonical form
#
# `canonical` reads a body's words and prints them straight away, without a
# Spec, and skips quoting for bodies without quotes, escapes or tabs. It must
# print exactly what `canonical_of(parse_spec(s))` prints (or the text itself
# on SpecError), and fail the same way where that fails.


def _general(s):
    """The general path's answer, or the exception it lets out (compared by type and text)."""
    try:
        return canonical_of(parse_spec.__wrapped__(s))
    except SpecError:
        return s
    except Exception as e:  # e.g. `--probability inf`: both paths must fail the same way
        return (type(e), str(e))


# Pieces of rule bodies in rulegen's spelling and in iptables-save's, plus noise
# that is legal for one parser state and not another.
_ADDRS = ["10.1.2.3", "10.1.2.3/32", "010.1.2.3", "10.1.2.0/24", "10.1.2.3/24", "0.0.0.0/0", "::/0",
          "fd00::1", "fd00:0::1/128", "fd00::/64", "::ffff:10.0.0.1", "10.0.0.400", "x"]
_PIECES = st.one_of(
    st.tuples(st.sampled_from(["-s", "-d", "--source", "--destination"]), st.sampled_from(_ADDRS)).map(" ".join),
    st.sampled_from(["-p tcp", "-p TCP", "-p udp", "--protocol sctp", "-i eth0", "-o lo", "--in-interface eth1"]),
    st.sampled_from(["-m tcp", "-m udp", "-m sctp", "--match tcp", "--dport 80", "--destination-port 443",
                     "--source-port 1", "--sport 2:3"]),
    st.sampled_from(['-m comment --comment "ns/web:http cluster IP"', "-m comment --comment ns/web:http",
                     '-m comment --comment ""', '-m comment --comment "say \\"hi\\""', '--comment "-j X"']),
    st.sampled_from(["-m statistic --mode random --probability 0.5000000000",
                     "-m statistic --mode random --probability 0.33333333349", "--probability 0.1",
                     "--probability nan", "--probability inf", "--probability x y"]),
    st.sampled_from(["-m recent --name KUBE-SEP-A --set", "--mask 255.255.255.255", "--rsource",
                     "--mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "--rcheck --seconds 10800 --reap"]),
    st.sampled_from(["-m mark --mark 0x00004000/0x00004000", "--mark 0x4000", "--mark zz",
                     "-m conntrack --ctstate RELATED,ESTABLISHED,DNAT", "-m state --state NEW,BOGUS,INVALID",
                     "-m addrtype --dst-type LOCAL", "-c 10 840", "--set-counters 0 0"]),
    st.sampled_from(["-j KUBE-SVC-X", "-g KUBE-SVC-X", "--jump ACCEPT", "-j DNAT --to-destination 10.0.0.1:80",
                     "-j MARK --or-mark 0x00004000", "-j MARK --set-xmark 0x4000/0x4000", "-j MARK --xor-mark 0x1",
                     "-j MARK --and-mark 0x1", "-j MARK --set-mark 0x10/0xff", "-j MARK --set-xmark zz",
                     "-j REJECT --reject-with icmp-port-unreachable", "-j REJECT --reject-with icmp-host-prohibited",
                     "-j MASQUERADE --random-fully"]),
    st.sampled_from(["!", "!", "-1", "80", "x", '"', '"a b"', "\\", "\t", "-", '""']),
)


def _canonical_uncached(s):
    try:
        return canonical.__wrapped__(s)
    except Exception as e:
        return (type(e), str(e))


@settings(max_examples=3000, deadline=None)
@given(st.lists(_PIECES, max_size=8), st.sampled_from([" ", "  ", "\t", " \t "]))
def test_canonical_agrees_with_the_spec_route(pieces, sep):
    s = sep.join(pieces)
    assert _canonical_uncached(s) == _general(s)


@settings(max_examples=1000, deadline=None)
@given(st.permutations(["-d 10.96.0.10/32", "-p tcp", '-m comment --comment "ns/web:http cluster IP"',
                        "-m tcp --dport 80", "! -s 10.244.0.0/16", "-m mark ! --mark 0x4000/0x4000"]),
       st.integers(0, 6))
def test_canonical_reads_well_formed_rules_in_any_order(parts, cut):
    s = " ".join(parts[:cut]) + " -j KUBE-SVC-X"
    assert parse_spec.__wrapped__(s).target == "KUBE-SVC-X", s  # read as a rule, not compared as text
    assert _canonical_uncached(s) == _general(s)


FAST_CASES = [a for pair in SAME + DIFFERENT for a in pair] + [
    "-s 10.0.0.1 -s 10.0.0.2 -d 1.2.3.4 ! -p udp -i eth0 -o eth1 -j X",  # duplicate base options keep their order
    "-p tcp --dport 80 --dport 81 -m comment --comment b --comment a -j X",  # equal names keep their order
    "-m tcp udp -p TCP --destination-port 80 -j X",  # extra module word ignored; implicit match is lower case
    "-j DNAT --jump x --match y --source z",  # long names after the target are still renamed
    "-j MARK --set-xmark zz",  # canonical_of raises ValueError; so must canonical
    "-m statistic --mode random --probability inf -j X",  # OverflowError in both
    "-m statistic --probability 0.5 extra -j X", "-m statistic --probability abc extra -j X",
    "-m recent ! --mask 255.255.255.255 ! --rsource --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --name A",
    "-m state --state ,NEW,BOGUS,INVALID -j ACCEPT",
    '-m comment --comment "" -j X', '-m comment --comment "a\tb" -j X', '-m comment --comment -j X',
    "-c 1 2 -j X", "-c 1 -j X", "! -c 1 2 -j X", "-j X -c 1 2",
    "-j X !", "! ! -s 1.2.3.4", "-j X Y", "-m", "-s 1 2", "--dport 80", "", " \t ", "-j  X", "-j\tX",
]


@pytest.mark.parametrize("s", FAST_CASES)
def test_canonical_explicit_cases(s):
    assert _canonical_uncached(s) == _general(s)


@pytest.mark.parametrize("s, want", [
    ("-s 10.1.2.3/32 -j KUBE-MARK-MASQ", "-s 10.1.2.3 -j KUBE-MARK-MASQ"),
    ("-m tcp -p tcp -j DNAT --to-destination 10.1.2.3:8080", "-p tcp -m tcp -j DNAT --to-destination 10.1.2.3:8080"),
    ("-m statistic --mode random --probability 0.10000000009 -j KUBE-SEP-A",
     "-m statistic --mode random --probability 0.10000000009 -j KUBE-SEP-A"),
    ('-m comment --comment "ns/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-X',
     '-d 10.96.0.10 -p tcp -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-X'),
    ("-p tcp -m recent --set --name KUBE-SEP-A --mask 255.255.255.255 --rsource -m tcp"
     " -j DNAT --to-destination 10.0.0.1:80",
     "-p tcp -m recent --name KUBE-SEP-A --set -m tcp -j DNAT --to-destination 10.0.0.1:80"),
    ("-j MARK --or-mark 0x4000", "-j MARK --set-xmark 0x4000/0x4000"),
])
def test_canonical_of_the_hot_shapes(s, want):
    # the spellings a 10k-Service node holds by the hundred thousand, in both dialects
    assert _canonical_uncached(s) == want == _general(s)
