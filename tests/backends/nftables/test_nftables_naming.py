"""nftables object names: kube-proxy's hash scheme and its cut at 240 characters, held to a slow definition."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rulegen.naming import NFT_NAME_MAX, NftNames, b32_8, nft_base, nft_name


def slow_base(base: str) -> str:
    """hashAndTruncate written the obvious way."""
    h = base64.b32encode(hashlib.sha256(base.encode()).digest()).decode()[:8]
    full = h + "-" + base
    return full if len(full) <= 240 else full[:237] + "..."


label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)


@settings(max_examples=300)
@given(st.binary(max_size=100))
def test_fast_hash_equals_base64_module(data):
    assert b32_8(data) == base64.b32encode(hashlib.sha256(data).digest()).decode()[:8]


@settings(max_examples=200)
@given(label, label, st.sampled_from(["tcp", "udp", "sctp"]), st.one_of(st.just(""), label))
def test_port_names_share_one_hashed_base(ns, name, proto, port):
    n = NftNames(ns, name, proto, port)
    base = slow_base(f"{ns}/{name}/{proto}/{port}")
    assert (n.svc, n.local, n.ext, n.fw) == ("service-" + base, "local-" + base, "external-" + base,
                                             "firewall-" + base)
    assert len(base) <= 205  # a service port's base is never cut


def test_invented_examples():
    n = NftNames("shop", "cart", "tcp", "http")
    assert n.svc == "service-" + slow_base("shop/cart/tcp/http")
    assert n.svc.startswith("service-") and n.svc.endswith("-shop/cart/tcp/http") and len(n.svc) == 8 + 9 + 18
    # An unnamed port leaves a trailing slash; IPv6 colons become dots.
    assert NftNames("shop", "cart", "udp", "").fw.endswith("-shop/cart/udp/")
    assert NftNames("shop", "cart", "tcp", "http").endpoint_base("fd00:7::1:2", 8443) == \
        slow_base("shop/cart/tcp/http__fd00.7..1.2/8443")
    assert nft_name("affinity-", "shop/cart/tcp/http__10.1.2.3/80") == \
        "affinity-" + slow_base("shop/cart/tcp/http__10.1.2.3/80")


def test_long_endpoint_names_are_cut_at_240_after_hashing():
    ns, name, port = "n" * 63, "s" * 63, "p" * 63
    n = NftNames(ns, name, "sctp", port)
    a = n.endpoint_base("fd00:aaaa:bbbb:cccc:dddd:eeee:ffff:1111", 65535)
    b = n.endpoint_base("fd00:aaaa:bbbb:cccc:dddd:eeee:ffff:2222", 65535)
    assert len(a) == len(b) == NFT_NAME_MAX == 240
    assert a.endswith("...") and b.endswith("...")
    assert a[9:] == b[9:]  # the visible text is the same after the hash...
    assert a[:8] != b[:8]  # ...and the hash, taken before the cut, tells them apart
    assert a == slow_base(f"{ns}/{name}/sctp/{port}__fd00.aaaa.bbbb.cccc.dddd.eeee.ffff.1111/65535")
    # An endpoint base that just fits is not cut.
    short = n.endpoint_base("10.0.0.1", 80)
    assert not short.endswith("...") and len(short) < 240
    assert len("endpoint-" + a) <= 256  # the longest prefix still fits knftables' limit


@pytest.mark.parametrize("bad", ["ns/web/tcp/http; flush ruleset", "ns/web/tcp/Http", "ns/web\n", " ns/web/tcp/"])
def test_bases_outside_kubernetes_names_are_refused(bad):
    with pytest.raises(ValueError, match="nftables object name"):
        nft_base(bad)
