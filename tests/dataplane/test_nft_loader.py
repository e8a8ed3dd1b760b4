"""The nftables loader and sync against the real kernel: same state as a naive load, by every path.

Each test makes its own namespaces (prefix `rgt-nft-`, always deleted) and
compares `nft list table` outputs in the normal form (`state.normalise`),
so that object order does not count but rule order and every element do.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from rulegen.apply.kernel import Kernel
from rulegen.bench import nftload, nftshape
from rulegen.dataplane.nft import loader as L
from rulegen.dataplane.nft import netlink as nl
from rulegen.dataplane.nft import script as sc
from rulegen.dataplane.nft import sync
from rulegen.dataplane.nft.parse import parse_listing
from rulegen.dataplane.nft.state import normalise

from nshelp import namespace_names

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not shutil.which("nft"), reason="needs nft (make test installs nftables)")]

REF = "ip kube-proxy"
AFFINITY_MIX = nftshape.Mix(affinity=0.2, firewall=1.0, loadbalancer=0.2, nodeport=0.2, external_ip=0.2,
                            local_policy=0.5, no_endpoints=0.05, udp=0.2)


@pytest.fixture
def kernel():
    k = Kernel.real()
    yield k
    k.nft.close()


def _ns(make) -> str:
    name = make()
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def listing(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", *REF.split()],
                          capture_output=True, text=True).stdout


def state(ns: str):
    return normalise(parse_listing(listing(ns))[0])


def has_table(ns: str) -> bool:
    cp = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", *REF.split()], capture_output=True)
    return cp.returncode == 0


def naive(ns: str, text: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True, check=True)


def first(kernel: Kernel, ns: str, text: str, opts: L.Options, on_chunk=None) -> L.Sent:
    link = L.Link(kernel.nft, ns, opts.netlink)
    return L.load_first(link, sc.play(text), opts, link.genid(), on_chunk)


def apply(kernel: Kernel, ns: str, text: str, state_dir, **opts) -> sync.NftApplyResult:
    return sync.sync(sc.play(text), ns, kernel, mode="nftables", family=4, state_dir=str(state_dir),
                     opts=L.Options(**opts))


@pytest.mark.parametrize("services, endpoints, mix, netlink, chunk_maps", [
    (150, 3, nftshape.Mix(), True, 40),
    (120, 4, AFFINITY_MIX, True, 25),
    (120, 4, AFFINITY_MIX, False, 25),
    (60, 1, nftshape.Mix(affinity=0.5), True, 1000),
])
def test_phased_load_leaves_the_naive_state(kernel, services, endpoints, mix, netlink, chunk_maps):
    text = nftshape.script(services, endpoints, mix=mix, seed=services)
    with namespace_names("rgt-nft") as make:
        by_nft, phased = _ns(make), _ns(make)
        naive(by_nft, text)
        sent = first(kernel, phased, text, L.Options(netlink=netlink, chunk_maps=chunk_maps))
        assert len(sent.chunks) > 3
        assert {c.via for c in sent.chunks} == ({"nft", "netlink"} if netlink else {"nft"})
        expected = state(by_nft)
        assert len(expected.chains) > services  # the comparison sees the whole table
        assert state(phased) == expected
        assert sent.generation is not None and sent.generation == kernel.nft.generation(phased)


def test_old_layout_with_endpoint_chains_loads_the_same(kernel):
    text = nftshape.script(80, 3, layout="endpoint-chains", mix=AFFINITY_MIX)
    with namespace_names("rgt-nft") as make:
        by_nft, phased = _ns(make), _ns(make)
        naive(by_nft, text)
        sent = first(kernel, phased, text, L.Options(chunk_maps=30))
        assert any(name.startswith("rules (netlink") for name, _ in sent.timings)
        assert state(phased) == state(by_nft)


def test_nothing_is_hooked_before_the_last_transaction(kernel):
    text = nftshape.script(100, 3, mix=AFFINITY_MIX)
    seen: list[tuple[int, str, bool, int]] = []
    with namespace_names("rgt-nft") as make:
        ns = _ns(make)

        def inspect(i: int, chunk: L.Chunk) -> None:
            out = listing(ns)
            rules = sum(len(c.rules) for c in parse_listing(out)[0].chains.values())
            seen.append((i, chunk.phase, " hook " in out, rules))

        first(kernel, ns, text, L.Options(chunk_maps=20), inspect)
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
def test_a_failed_chunk_leaves_no_table(kernel, extra, phase):
    good = nftshape.script(80, 3, mix=AFFINITY_MIX)
    with namespace_names("rgt-nft") as make:
        ns = _ns(make)
        done: list[str] = []
        st = sc.play(good)
        # The model refuses what the kernel would: build the bad state by hand, past the model.
        bad = sc.play(good + extra.replace("@endpoint-nowhere", "@cluster-ips")
                      .replace("goto endpoint-nowhere", "drop").replace("jump endpoint-nowhere", "accept"))
        for c in bad.chains.values():
            c.rules = [r._replace(rule=r.rule.replace("@cluster-ips", "@endpoint-nowhere")
                                  .replace("accept", "jump endpoint-nowhere"))
                       if r.chain.startswith("zz-") else r for r in c.rules]
        els = bad.sets["service-ips"].elements
        k = ("10.99.0.1", "tcp", "80")
        if k in els and k not in st.sets["service-ips"].elements:
            els[k] = els[k]._replace(value=("goto endpoint-nowhere",))
        link = L.Link(kernel.nft, ns)
        with pytest.raises(L.LoadError) as e:
            L.load_first(link, bad, L.Options(chunk_maps=20), link.genid(), lambda i, ch: done.append(ch.phase))
        assert "endpoint-nowhere" in str(e.value)
        assert len(done) >= 2  # transactions had committed before the refused one
        assert f"({phase}, " in str(e.value) and "the namespace is as it was" in str(e.value)
        assert not has_table(ns)
        # And the namespace still takes the good script.
        L.load_first(link, st, L.Options(chunk_maps=20), link.genid())
        assert has_table(ns)


@pytest.mark.parametrize("netlink", [True, False])
def test_a_refused_change_keeps_the_previous_state(kernel, tmp_path, netlink):
    text = nftshape.script(80, 3)
    with namespace_names("rgt-nft") as make:
        ns = _ns(make)
        apply(kernel, ns, text, tmp_path)
        before = listing(ns)
        bad = sc.play(nftshape.script(80, 3, moved=4))
        # an element whose verdict names a chain that does not exist: the kernel refuses the whole batch
        el = next(iter(bad.sets["service-ips"].elements.values()))
        bad.sets["service-ips"].elements[("10.99.0.1", "tcp", "80")] = el._replace(
            key=("10.99.0.1", "tcp", "80"), value=("goto no-such-chain",))
        with pytest.raises(L.LoadError) as e:
            sync.sync(bad, ns, kernel, mode="nftables", family=4, state_dir=str(tmp_path),
                      opts=L.Options(netlink=netlink))
        assert "10.99.0.1" in str(e.value) and "previous state is left in place" in str(e.value)
        assert listing(ns) == before
        # and the cache still holds: the next apply of the old state sends nothing
        again = apply(kernel, ns, text, tmp_path)
        assert again.source == "cache" and again.path == "unchanged" and again.lines == 0


@pytest.mark.parametrize("netlink", [True, False])
def test_changes_give_the_state_of_a_full_load(kernel, tmp_path, netlink):
    mix = AFFINITY_MIX
    old = nftshape.script(100, 4, mix=mix, seed=9)
    steps = [nftshape.script(100, 4, mix=mix, seed=9, moved=k) for k in (3, 17, 40)]
    steps.append(nftshape.script(70, 4, mix=mix, seed=9))  # 30 Services gone
    steps.append(nftshape.script(110, 4, mix=mix, seed=9))  # and 40 back, 10 new
    with namespace_names("rgt-nft") as make:
        ns, ref = _ns(make), _ns(make)
        apply(kernel, ns, old, tmp_path, netlink=netlink)
        results = []
        for new in steps:
            results.append(apply(kernel, ns, new, tmp_path, netlink=netlink))
            subprocess.run(["ip", "netns", "exec", ref, "nft", "delete", "table", *REF.split()], capture_output=True)
            naive(ref, new)
            assert state(ns) == state(ref)
        assert all(r.path == "change" and r.source == "cache" and r.transactions == 1 for r in results)
        # A one-endpoint change of a ClusterIP Service is a rule and its map: all netlink when asked.
        assert results[0].via == ("netlink" if netlink else "nft")


@pytest.mark.parametrize("netlink", [True, False])
def test_a_stale_cache_is_found_by_the_generation_and_repaired(kernel, tmp_path, netlink):
    text = nftshape.script(60, 3)
    moved = nftshape.script(60, 3, moved=2)
    with namespace_names("rgt-nft") as make:
        ns, ref = _ns(make), _ns(make)
        apply(kernel, ns, text, tmp_path, netlink=netlink)
        # Someone else changes the table: the cache is stale and must not be trusted.
        subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "element", *REF.split(), "cluster-ips",
                        "{ 10.250.0.1 }"], check=True)
        res = apply(kernel, ns, moved, tmp_path, netlink=netlink)
        assert res.source == "dump" and res.path == "change"
        assert ("set", "cluster-ips") in res.changed and res.elements_removed >= 1
        naive(ref, moved)
        assert state(ns) == state(ref)  # the stray element is gone, as after a full sync
        # And the next change is against the fresh cache again.
        res = apply(kernel, ns, text, tmp_path, netlink=netlink)
        assert res.source == "cache" and res.path == "change"


def test_a_netlink_batch_bound_to_an_old_generation_is_refused_whole(kernel):
    text = nftshape.script(30, 2)
    with namespace_names("rgt-nft") as make:
        ns = _ns(make)
        naive(ns, text)
        gen = kernel.nft.generation(ns)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "chain", *REF.split(), "someone-elses"], check=True)
        enc = nl.Encoder("ip", "kube-proxy")
        enc.learn_sets(sc.play(text).sets.values())
        msgs = enc.command("add element ip kube-proxy cluster-ips { 10.250.0.2 }")
        with pytest.raises(nl.NetlinkError) as e:
            kernel.nft.send(ns, msgs, gen)
        assert e.value.errno == 85  # ERESTART
        assert "10.250.0.2" not in listing(ns)
        kernel.nft.send(ns, msgs, kernel.nft.generation(ns))
        assert "10.250.0.2" in listing(ns)


def test_no_cache_means_a_full_comparison_that_removes_leftovers(kernel, tmp_path):
    text = nftshape.script(60, 3, seed=4)
    fewer = nftshape.script(45, 3, seed=4)
    with namespace_names("rgt-nft") as make:
        ns, ref = _ns(make), _ns(make)
        naive(ns, text)
        res = apply(kernel, ns, fewer, tmp_path)  # no cache
        assert res.source == "dump" and res.path == "change" and res.removed
        naive(ref, fewer)
        assert state(ns) == state(ref)


def test_a_table_the_parser_cannot_read_is_rebuilt(kernel, tmp_path):
    text = nftshape.script(40, 2, seed=4)
    with namespace_names("rgt-nft") as make:
        ns, ref = _ns(make), _ns(make)
        naive(ns, text)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "counter", *REF.split(), "someones-counter"],
                       check=True)
        res = apply(kernel, ns, text, tmp_path)
        assert res.path == "rebuild" and any("rebuilt" in w for w in res.warnings)
        assert "someones-counter" not in listing(ns)
        naive(ref, text)
        assert state(ns) == state(ref)


def test_bench_answers_for_a_small_cluster():
    res = nftload.run(200, 3, repeat=1, changes=2)
    assert res.state_equal == [True] and res.change_equal == [True]
    assert res.naive.med and res.first.med
    assert len(res.change_netlink.wall) == 4 and len(res.change_nft.wall) == 4 and len(res.change_bare.wall) == 4
    table = nftload.markdown(res)
    assert "| naive: the whole script as one `nft -f` |" in table and "200 Services × 3 endpoints" in table


def test_bench_loads_rulegens_own_compile_of_the_generated_cluster_and_its_endpoint_changes():
    """`make bench`'s apply figures are of rulegen's compile of the `bench gen` cluster, not the stand-in."""
    text, moved = nftload.compiled_scripts(40, 3, 1, 2)
    assert len(moved) == 2 and len({text, *moved}) == 3 and "numgen random mod 3 map" in text
    gone = [line for line in text.splitlines() if line not in set(moved[0].splitlines())]
    assert gone and all("10.128." in line or "endpoint" in line for line in gone)  # one endpoint's objects only
    res = nftload.run(40, 3, repeat=1, changes=2, source="compile")
    assert res.source == "compile" and res.commands == text.count("\n")
    assert res.state_equal == [True] and res.change_equal == [True]
    assert len(res.change_netlink.wall) == 4 and nftload.budgets(res) == []  # judged at 10k only
    table = nftload.summary([res])
    assert "| 40 × 3 |" in table and "| yes |" in table


@pytest.mark.parametrize("family", ["ip", "ip6"])
def test_netlink_encoding_lists_as_nft_encoding(kernel, family):
    a, b = ("10.128.0.1", "10.128.0.2") if family == "ip" else ("fd00:10::1", "fd00:10::2")
    addr = "ipv4_addr" if family == "ip" else "ipv6_addr"
    sets = f"""add table {family} rgt {{ comment "probe" ; }}
add chain {family} rgt svc
add chain {family} rgt ep1
add chain {family} rgt ep2
add map {family} rgt dispatch {{ type {addr} . inet_proto . inet_service : verdict ; comment "d" ; }}
add set {family} rgt pairs {{ type {addr} . {addr} . inet_proto . inet_service ; }}
add map {family} rgt ports {{ type inet_proto . inet_service : verdict ; }}
"""
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
        naive(by_nft, sets + cmds)
        naive(by_netlink, sets)
        enc = nl.Encoder(family, "rgt")
        enc.learn_sets(sc.play(sets).sets.values())
        msgs = []
        for line in cmds.strip().split("\n"):
            m = enc.command(line)
            assert m is not None, line
            msgs += m
        kernel.nft.send(by_netlink, msgs, kernel.nft.generation(by_netlink))

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
