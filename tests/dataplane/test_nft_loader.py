"""The nftables loader against the real kernel: same state as a naive load, by every path.

Each test makes its own namespaces (prefix `rgt-nft-`, always deleted) and
compares `nft list table` outputs, normalised so that object order does not
count but rule order and every element does.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from rulegen.bench import nftload, nftshape
from rulegen.dataplane.nft import loader as L
from rulegen.dataplane.nft import netlink as nl
from rulegen.dataplane.nft import script as sc

from nshelp import namespace_names

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not shutil.which("nft"), reason="needs nft (make test installs nftables)")]

REF = "ip kube-proxy"
AFFINITY_MIX = nftshape.Mix(affinity=0.2, firewall=1.0, loadbalancer=0.2, nodeport=0.2, external_ip=0.2,
                            local_policy=0.5, no_endpoints=0.05, udp=0.2)


def _ns(make) -> str:
    name = make()
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def listing(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", *REF.split()],
                          capture_output=True, text=True).stdout


def state(ns: str) -> dict:
    return sc.parse_listing(listing(ns))


def has_table(ns: str) -> bool:
    cp = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", *REF.split()], capture_output=True)
    return cp.returncode == 0


@pytest.mark.parametrize("services, endpoints, mix, netlink, chunk_maps", [
    (150, 3, nftshape.Mix(), True, 40),
    (120, 4, AFFINITY_MIX, True, 25),
    (120, 4, AFFINITY_MIX, False, 25),
    (60, 1, nftshape.Mix(affinity=0.5), True, 1000),
])
def test_phased_load_leaves_the_naive_state(services, endpoints, mix, netlink, chunk_maps):
    text = nftshape.script(services, endpoints, mix=mix, seed=services)
    with namespace_names("rgt-nft") as make:
        naive, phased = _ns(make), _ns(make)
        L.naive(naive, text)
        ld = L.Loader(phased, L.Options(netlink=netlink, chunk_maps=chunk_maps))
        cache = ld.apply(text)
        ld.close()
        assert ld.report.path == "first" and ld.report.chunks > 3
        expected = state(naive)
        assert len(expected) > services  # the comparison sees the whole table
        assert state(phased) == expected
        assert cache is not None and cache.genid is not None


def test_old_layout_with_endpoint_chains_loads_the_same():
    text = nftshape.script(80, 3, layout="endpoint-chains", mix=AFFINITY_MIX)
    with namespace_names("rgt-nft") as make:
        naive, phased = _ns(make), _ns(make)
        L.naive(naive, text)
        ld = L.Loader(phased, L.Options(chunk_maps=30))
        ld.apply(text)
        assert any(c.startswith("rules (netlink") for c, _ in ld.report.timings)
        assert state(phased) == state(naive)


def test_nothing_is_hooked_before_the_last_transaction():
    text = nftshape.script(100, 3, mix=AFFINITY_MIX)
    seen: list[tuple[int, str, bool, int]] = []
    with namespace_names("rgt-nft") as make:
        ns = _ns(make)

        def inspect(i: int, chunk: L.Chunk) -> None:
            out = listing(ns)
            rules = sum(len(v[1]) for k, v in sc.parse_listing(out).items() if k[0] == "chain")
            seen.append((i, chunk.phase, " hook " in out, rules))

        ld = L.Loader(ns, L.Options(chunk_maps=20), on_chunk=inspect)
        ld.apply(text)
    assert len(seen) > 5
    *before, last = seen
    assert not any(hooked for _, _, hooked, _ in before)
    assert before[-1][3] > 0  # the table was full of rules all along, just not reachable
    assert last[1] == "activate" and last[2]


@pytest.mark.parametrize("extra, phase", [
    # refused in the last transaction: a base chain jumps to a chain that does not exist
    ("add chain ip kube-proxy zz-filter { type filter hook forward priority 0 ; }\n"
     "add rule ip kube-proxy zz-filter jump endpoint-nowhere\n", "activate"),
    # refused in an element transaction (netlink): a verdict naming a chain that does not exist
    ("add element ip kube-proxy service-ips { 10.99.0.1 . tcp . 80 : goto endpoint-nowhere }\n", "elements"),
    # refused in a rule transaction (nft): a lookup of a set that does not exist
    ("add chain ip kube-proxy zz-plain\nadd rule ip kube-proxy zz-plain ip daddr @endpoint-nowhere drop\n", "rules"),
])
def test_a_failed_chunk_leaves_no_table(extra, phase):
    good = nftshape.script(80, 3, mix=AFFINITY_MIX)
    with namespace_names("rgt-nft") as make:
        ns = _ns(make)
        ld = L.Loader(ns, L.Options(chunk_maps=20))
        with pytest.raises(L.LoadError) as e:
            ld.apply(good + extra)
        assert "endpoint-nowhere" in str(e.value)
        assert len(ld.report.timings) >= 2  # transactions had committed before the refused one
        assert ld.report.failed.startswith(phase)
        assert extra.strip().split("\n")[-1].split(" { ")[-1].split(" : ")[0] in str(e.value)
        assert not has_table(ns)
        # And the namespace still takes the good script.
        ld.apply(good)
        assert has_table(ns)


def test_a_failed_change_keeps_the_previous_state():
    text = nftshape.script(80, 3)
    with namespace_names("rgt-nft") as make:
        ns = _ns(make)
        ld = L.Loader(ns)
        cache = ld.apply(text)
        before = listing(ns)
        for netlink in (True, False):
            bad = nftshape.script(80, 3, moved=4) + "add element ip kube-proxy service-ips { 10.99.0.1 . tcp . 80 : goto no-such-chain }\n"
            with pytest.raises(L.LoadError):
                L.Loader(ns, L.Options(netlink=netlink)).apply(bad, cache)
            assert listing(ns) == before


@pytest.mark.parametrize("netlink", [True, False])
def test_changes_give_the_state_of_a_full_load(netlink):
    mix = AFFINITY_MIX
    old = nftshape.script(100, 4, mix=mix, seed=9)
    steps = [nftshape.script(100, 4, mix=mix, seed=9, moved=k) for k in (3, 17, 40)]
    steps.append(nftshape.script(70, 4, mix=mix, seed=9))  # 30 Services gone
    steps.append(nftshape.script(110, 4, mix=mix, seed=9))  # and 40 back, 10 new
    with namespace_names("rgt-nft") as make:
        ns, ref = _ns(make), _ns(make)
        ld = L.Loader(ns, L.Options(netlink=netlink))
        cache = ld.apply(old)
        paths = []
        for new in steps:
            cache = ld.apply(new, cache)
            paths.append(ld.report.path)
            subprocess.run(["ip", "netns", "exec", ref, "nft", "delete", "table", *REF.split()], capture_output=True)
            L.naive(ref, new)
            assert state(ns) == state(ref)
        assert all(p.startswith("change") for p in paths)
        if netlink:
            # A one-endpoint change of a ClusterIP Service is only a rule and its map: all netlink.
            assert paths[0] == "change-netlink"


@pytest.mark.parametrize("netlink", [True, False])
def test_cache_is_proven_by_the_generation(netlink):
    text = nftshape.script(60, 3)
    moved = nftshape.script(60, 3, moved=2)
    with namespace_names("rgt-nft") as make:
        ns, ref = _ns(make), _ns(make)
        ld = L.Loader(ns, L.Options(netlink=netlink))
        cache = ld.apply(text)
        assert cache.genid == ld.kernel.genid()
        # Someone else changes the table: the cache is stale and must not be trusted.
        subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "element", *REF.split(), "cluster-ips",
                        "{ 10.250.0.1 }"], check=True)
        cache2 = ld.apply(moved, cache)
        assert ld.report.path == "full"
        L.naive(ref, moved)
        assert state(ns) == state(ref)  # the stray element is gone, as after a full sync
        assert cache2 is not None and cache2.genid == ld.kernel.genid()
        # And a change on the fresh cache is a difference again.
        ld.apply(text, cache2)
        assert ld.report.path.startswith("change")


def test_a_netlink_batch_bound_to_an_old_generation_is_refused_whole():
    text = nftshape.script(30, 2)
    with namespace_names("rgt-nft") as make:
        ns = _ns(make)
        ld = L.Loader(ns)
        cache = ld.apply(text)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "chain", *REF.split(), "someone-elses"], check=True)
        enc = nl.Encoder("ip", "kube-proxy")
        enc.learn_sets(sc.parse(text).sets.values())
        msgs = enc.command("add element ip kube-proxy cluster-ips { 10.250.0.2 }")
        with pytest.raises(nl.NetlinkError) as e:
            ld.kernel.send(msgs, cache.genid)
        assert e.value.errno == 85  # ERESTART
        assert "10.250.0.2" not in listing(ns)
        ld.kernel.send(msgs, ld.kernel.genid())
        assert "10.250.0.2" in listing(ns)


def test_no_cache_means_a_full_sync_that_removes_leftovers():
    text = nftshape.script(60, 3, seed=4)
    fewer = nftshape.script(45, 3, seed=4)
    with namespace_names("rgt-nft") as make:
        ns, ref = _ns(make), _ns(make)
        L.naive(ns, text)
        ld = L.Loader(ns)
        ld.apply(fewer)  # no cache
        assert ld.report.path == "full"
        L.naive(ref, fewer)
        assert state(ns) == state(ref)


def test_bench_answers_for_a_small_cluster():
    res = nftload.run(200, 3, repeat=1, changes=2)
    assert res.state_equal == [True] and res.change_equal == [True]
    assert res.naive.med and res.first.med
    assert len(res.change_netlink.wall) == 4 and len(res.change_nft.wall) == 4 and len(res.change_bare.wall) == 4
    table = nftload.markdown(res)
    assert "| naive: the whole script as one `nft -f` |" in table and "200 Services × 3 endpoints" in table


@pytest.mark.parametrize("family", ["ip", "ip6"])
def test_netlink_encoding_lists_as_nft_encoding(family):
    a, b = ("10.128.0.1", "10.128.0.2") if family == "ip" else ("fd00:10::1", "fd00:10::2")
    sets = f"""add table {family} rgt {{ comment "probe" ; }}
add chain {family} rgt svc
add chain {family} rgt ep1
add chain {family} rgt ep2
add map {family} rgt dispatch {{ type {family}v4_addr . inet_proto . inet_service : verdict ; comment "d" ; }}
add set {family} rgt pairs {{ type {family}v4_addr . {family}v4_addr . inet_proto . inet_service ; }}
add map {family} rgt ports {{ type inet_proto . inet_service : verdict ; }}
""".replace("ipv4_addr", "ipv4_addr").replace("ip6v4_addr", "ipv6_addr")
    cmds = f"""add rule {family} rgt svc meta l4proto tcp dnat {family} addr . port to numgen random mod 2 map {{ 0 : {a} . 8080 , 1 : {b} . 8080 }}
add rule {family} rgt svc meta l4proto udp dnat {family} addr . port to numgen random mod 1 map {{ 0 : {b} . 53 }}
add rule {family} rgt svc numgen random mod 2 vmap {{ 0 : goto ep1 , 1 : jump ep2 }}
add element {family} rgt dispatch {{ {a} . tcp . 80 comment "ns/svc:http" : goto ep1 }}
add element {family} rgt dispatch {{ {b} . sctp . 9 : drop }}
add element {family} rgt pairs {{ {a} . {a} . tcp . 8080 }}
add element {family} rgt ports {{ udp . 30053 comment "ns/dns" : goto ep2 }}
flush chain {family} rgt ep2
"""
    with namespace_names("rgt-nft") as make:
        by_nft, by_netlink = _ns(make), _ns(make)
        L.naive(by_nft, sets + cmds)
        L.naive(by_netlink, sets)
        enc = nl.Encoder(family, "rgt")
        enc.learn_sets(sc.parse(sets).sets.values())
        msgs = []
        for line in cmds.strip().split("\n"):
            m = enc.command(line)
            assert m is not None, line
            msgs += m
        k = L.Kernel(by_netlink)
        k.send(msgs, k.genid())

        def show(ns):
            return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", family, "rgt"],
                                  capture_output=True, text=True, check=True).stdout
        assert show(by_netlink) == show(by_nft)
        assert "numgen random mod 2 map" in show(by_nft)


def test_cost_experiments_run_and_report_every_row():
    from rulegen.bench import nftcost

    rows = nftcost.experiments(60, 3, chunk=20, timeout=120)
    names = [r[0] for r in rows]
    assert names[:4] == ["naive", "check-only", "naive phasing", "no anonymous maps"]
    assert "maps via netlink, chunked" in names and "on the loaded table: nft list table" in names
    assert all(float(r[1]) >= 0 for r in rows)
    assert "chunks, first" in dict((r[0], r[3]) for r in rows)["maps via netlink, chunked"]
