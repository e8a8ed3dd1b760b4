"""spec.py: tokenizing rule bodies, the Spec structure, and one canonical spelling per meaning.

Pairs are rulegen's (kube-proxy's) spelling on the left and what
iptables-save prints for the same rule on the right; each pair must share a
canonical form, and rules that differ in meaning must not.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rulegen.backends.iptables.spec import SpecError, _tokenize_chars, canonical, parse_spec, tokenize

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
    from rulegen.backends.iptables import spec
    from rulegen.ipaddr import parse_cidr

    c = parse_cidr(v)
    if c is None:
        want = v
    else:
        ip, _, bits = c.partition("/")
        want = ip if bits == ("128" if ":" in ip else "32") else c
    assert spec._addr(v) == want
