"""Chain-name hashes and sloppy IP parsing: the fast paths agree with the slow definitions."""

from __future__ import annotations

import base64
import hashlib
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from rulegen.ipaddr import parse_cidr, parse_ip
from rulegen.naming import IptablesNames, b32_16, port_hash


def slow_hash(s: str) -> str:
    return base64.b32encode(hashlib.sha256(s.encode()).digest())[:16].decode()


def test_spec_examples():
    assert port_hash("demo/web:http" + "tcp") == "XRY76EGRC3BSCIIJ"
    assert port_hash("demo/web" + "tcp") == "YTGZ2JEENUBCE3T3"
    n = IptablesNames("demo/web:http", "tcp")
    assert n.svc == "KUBE-SVC-XRY76EGRC3BSCIIJ" and n.fw == "KUBE-FW-XRY76EGRC3BSCIIJ"
    assert n.sep("10.244.1.5:8080") == "KUBE-SEP-NW5VICAF3Z2QABHQ"


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_fast_base32_equals_base64_module(s):
    assert b32_16(s.encode()) == slow_hash(s)


@settings(max_examples=300)
@given(st.ip_addresses(v=4))
def test_v4_fast_path_is_canonical(ip):
    assert parse_ip(str(ip)) == str(ip)


@settings(max_examples=300)
@given(st.ip_addresses(v=6))
def test_v6_canonical(ip):
    got = parse_ip(str(ip).upper())
    expected = str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)
    assert got == expected


def test_sloppy_forms():
    assert parse_ip("010.096.000.010") == "10.96.0.10"  # decimal, not octal
    assert parse_ip("10.0.0.256") is None
    assert parse_ip("10.0.0") is None
    assert parse_ip("1.2.3.4 ") is None
    assert parse_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert parse_ip("fd00::0a") == "fd00::a"
    assert parse_ip("fe80::1%eth0") is None
    assert parse_cidr("10.244.1.0/016") == "10.244.0.0/16"
    assert parse_cidr("10.0.0.1/33") is None
    assert parse_cidr("fd00:1::5/64") == "fd00:1::/64"
    assert parse_cidr("bogus/8") is None and parse_cidr("10.0.0.0") is None
    assert str(ipaddress.ip_network(parse_cidr("192.168.001.000/24"))) == "192.168.1.0/24"


def test_canonical_ipv4_addresses_are_not_cached():
    """100k distinct endpoint addresses must not fill the cache meant for the odd spellings."""
    from rulegen import ipaddr

    before = ipaddr._parse_ip.cache_info().currsize
    assert [ipaddr.parse_ip(f"10.77.{i // 256}.{i % 256}") for i in range(2000)][-1] == "10.77.7.207"
    assert ipaddr._parse_ip.cache_info().currsize == before
    assert ipaddr.parse_ip("010.077.0.1") == "10.77.0.1"  # the slow spellings still go through it
    assert ipaddr._parse_ip.cache_info().currsize == before + 1
    assert ipaddr.parse_ip(None) is None and ipaddr.parse_ip("10.0.0.256") is None  # type: ignore[arg-type]
    assert ipaddr.parse_ip("::ffff:10.0.0.1") == "10.0.0.1"
