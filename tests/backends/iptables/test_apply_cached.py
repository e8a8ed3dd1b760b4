"""`rulegen apply` with the compile cache: only the changed Service is parsed and compiled, and the
namespace ends exactly as a fresh full apply of the same input leaves it.

Most tests use `Kernel` (no root); the `root` ones run the real command
in namespaces named `rgt-capply-*` (always deleted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nshelp import namespace_names

from rulegen.apply import COMPILE_CACHE, Kernel, apply
from rulegen.bench import gen
from rulegen.diagnostics import Report
from rulegen.pipeline import compile_files, compile_files_cached

FLAGS = {"cluster_cidr": ["10.128.0.0/9"]}


def write(path: Path, objs) -> None:
    with open(path, "w") as f:
        gen.write(objs, "json", f)


def change_endpoint(objs, index: int, ip: str):
    """A copy of OBJS whose INDEX-th non-empty EndpointSlice has a new first address; and its Service."""
    out = json.loads(json.dumps(objs))
    slices = [o for o in out if o.get("kind") == "EndpointSlice" and o.get("endpoints")]
    s = slices[index]
    s["endpoints"][0]["addresses"] = [ip]
    return out, s["metadata"]["labels"]["kubernetes.io/service-name"]


def state_of(kernel: Kernel, ns: str) -> dict:
    out = {}
    for tname, t in kernel.xtables.tables(ns, 4).items():
        chains = {c: list(r) for c, r in t.chains.items() if r or c not in t.policies}
        if chains:
            out[tname] = chains
    return out


def fresh_state(path: Path, kernel: Kernel, ns: str) -> dict:
    apply(compile_files([str(path)], FLAGS, Report()), ns, create=True, kernel=kernel, state_dir=None)
    return state_of(kernel, ns)


def cached(path: Path, cache: Path):
    c = compile_files_cached([str(path)], FLAGS, Report(), None, str(cache))
    assert c.incremental is not None, "iptables mode compiles incrementally"
    return c


def first_apply(tmp_path: Path, path: Path):
    """A fake namespace given PATH's rules, with both caches written as the command writes them."""
    kernel, state, cache = Kernel.fake(), str(tmp_path / "state"), tmp_path / "compile.msgpack"
    c = cached(path, cache)
    apply(c, "rgt-capply-a", create=True, kernel=kernel, state_dir=state)
    c.save_cache(str(cache))
    return kernel, state, cache


@pytest.fixture
def cluster(tmp_path):
    objs = gen.generate(40, 3, seed=7)
    path = tmp_path / "cluster.json"
    write(path, objs)
    return objs, path


def test_one_endpoint_change_compiles_one_service_and_matches_a_fresh_apply(tmp_path, cluster):
    objs, path = cluster
    kernel, state, cache = Kernel.fake(), str(tmp_path / "state"), tmp_path / "compile.msgpack"
    first = cached(path, cache)
    assert first.stats["compiled"] == first.stats["groups"] > 30
    apply(first, "rgt-capply-a", create=True, kernel=kernel, state_dir=state)
    first.save_cache(str(cache))

    changed, svc = change_endpoint(objs, 3, "10.255.1.9")
    write(path, changed)
    second = cached(path, cache)
    assert second.stats["compiled"] == 1
    assert second.stats["parsed"] < 5  # the changed slice and the cluster-wide objects
    res = apply(second, "rgt-capply-a", kernel=kernel, state_dir=state)
    assert res.source == "cache"
    assert 0 < res.lines < 30
    assert any(svc in c or c.startswith(("KUBE-SVC-", "KUBE-SEP-")) for _, c in res.changed + res.added)
    assert second.incremental.disagreed is False
    assert state_of(kernel, "rgt-capply-a") == fresh_state(path, kernel, "rgt-capply-ref")


def test_unchanged_input_sends_nothing_and_saves_nothing(tmp_path, cluster):
    _, path = cluster
    kernel, state, cache = first_apply(tmp_path, path)
    again = cached(path, cache)
    assert again.stats["compiled"] == 0 and again.incremental.cache is None
    res = apply(again, "rgt-capply-a", kernel=kernel, state_dir=state)
    assert res.lines == 0


def test_chain_changed_behind_the_cache_is_repaired_from_a_full_compile(tmp_path, cluster):
    """A live chain of an unchanged Service was altered: apply reads everything and needs that
    chain's rules, which the incremental compile knows only by hash, so it compiles in full."""
    objs, path = cluster
    kernel, state, cache = first_apply(tmp_path, path)
    nat = kernel.xtables.tables("rgt-capply-a")["nat"]
    victim = sorted(ch for ch in nat.chains if ch.startswith("KUBE-SVC-"))[5]
    nat.chains[victim] = ["-j RETURN"]
    kernel.netns.spaces["rgt-capply-a"].gen += 1  # a foreign commit, as the kernel would count it

    changed, _ = change_endpoint(objs, 0, "10.255.1.10")
    write(path, changed)
    c2 = cached(path, cache)
    assert c2.stats["compiled"] == 1
    res = apply(c2, "rgt-capply-a", kernel=kernel, state_dir=state)
    assert res.source == "dump"
    assert ("nat", victim) in res.changed
    assert c2.incremental.disagreed is False
    assert state_of(kernel, "rgt-capply-a") == fresh_state(path, kernel, "rgt-capply-ref")


def test_corrupt_compile_cache_is_ignored(tmp_path, cluster):
    objs, path = cluster
    kernel, state, cache = first_apply(tmp_path, path)
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    changed, _ = change_endpoint(objs, 1, "10.255.1.11")
    write(path, changed)
    c2 = cached(path, cache)
    assert c2.stats["compiled"] == c2.stats["groups"]
    apply(c2, "rgt-capply-a", kernel=kernel, state_dir=state)
    assert state_of(kernel, "rgt-capply-a") == fresh_state(path, kernel, "rgt-capply-ref")


# ---------------------------------------------------------------------- the real command (root)


def _rulegen(*args: str, state: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RULEGEN_STATE_DIR=state)
    return subprocess.run([sys.executable, "-m", "rulegen", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.root
def test_cli_apply_uses_the_compile_cache_and_ends_as_a_fresh_apply(tmp_path, cluster):
    objs, path = cluster
    state = str(tmp_path / "state")
    with namespace_names("rgt-capply") as name:
        ns, ref = name(), name()
        flags = ["--cluster-cidr", "10.128.0.0/9"]
        first = _rulegen("apply", str(path), "--netns", ns, "--create", *flags, "--timings", state=state)
        assert first.returncode == 0, first.stderr
        assert os.path.exists(os.path.join(state, ns, COMPILE_CACHE))
        changed, _ = change_endpoint(objs, 2, "10.255.1.12")
        write(path, changed)
        second = _rulegen("apply", str(path), "--netns", ns, *flags, "--timings", state=state)
        assert second.returncode == 0, second.stderr
        assert "compiled 1 of" in second.stderr, second.stderr
        assert "live state from the cache" in second.stdout
        sent = int(second.stdout.split(" sent ")[1].split()[0])
        assert 0 < sent < 30
        fresh = _rulegen("apply", str(path), "--netns", ref, "--create", *flags,
                         state=str(tmp_path / "state-ref"))
        assert fresh.returncode == 0, fresh.stderr
        kernel = Kernel.real()
        assert _live(kernel, ns) == _live(kernel, ref)


def _live(kernel: Kernel, ns: str) -> dict:
    from rulegen.dataplane.xtables.parse import parse

    out = {}
    for t in parse(kernel.xtables.save(ns, 4), source=ns, family=4).tables:
        for chain, specs in t.by_chain().items():
            if specs or chain.startswith("KUBE-"):
                out[(t.name, chain)] = specs
    return out
