"""The incremental compile (`backends/iptables/incremental.py`) gives exactly the full compile's tables.

The reference is always `pipeline.compile_files` on the same files and
flags: for every table the incremental views must have the same name,
declared chains, chain digests and rules (`specs`, which makes the
incremental compile materialize the chains it knows only by hash), and the
same input problems must be reported, whether the cache is missing, warm,
stale, corrupt or from another format.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
from clustergen import NODE, endpoint, service_with_slices
from clustergen import cluster as gen_cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rulegen.backends.iptables import incremental
from rulegen.backends.iptables.compile import is_large
from rulegen.backends.iptables.incremental import FORMAT, CompileCache
from rulegen.bench.gen import generate, to_json, to_yaml
from rulegen.dataplane.xtables.model import chain_digest, views
from rulegen.diagnostics import Report, UsageError
from rulegen.pipeline import Compiled, compile_files, compile_files_cached
from rulegen.units import read_units

CLUSTER_WIDE = ("Node", "KubeProxyConfiguration", "ServiceCIDR")


# --------------------------------------------------------------------------- writing clusters


class Files:
    """A cluster as files: one JSON List, one multi-document YAML file, or a directory of several files.

    Each object keeps the file it was first written to, and documents are
    written with a `---` line before each (the first one of file 0 without),
    so an edit of one object changes the bytes of that object's unit only.
    """

    def __init__(self, root: Path, form: str, nfiles: int = 3):
        self.root = root
        self.form = form
        self.nfiles = nfiles if form == "dir" else 1
        self.entries: list[list[Any]] = []  # [file number, object]

    def add(self, obj: dict, fileno: int | None = None) -> None:
        if fileno is None:
            fileno = len(self.entries) % self.nfiles
        self.entries.append([fileno, obj])

    @property
    def objs(self) -> list[dict]:
        return [o for _, o in self.entries]

    def _name(self, i: int) -> str:
        if self.form == "json":
            return "cluster.json"
        if self.form == "yaml":
            return "cluster.yaml"
        return f"d/f{i}.{'json' if i % 2 else 'yaml'}"

    @property
    def paths(self) -> list[str]:
        return [str(self.root / "d")] if self.form == "dir" else [str(self.root / self._name(0))]

    def write(self) -> None:
        for i in range(self.nfiles):
            objs = [o for f, o in self.entries if f == i]
            p = self.root / self._name(i)
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.suffix == ".json":
                text = to_json(objs)
            else:
                text = "".join(("---\n" if (j or i) else "") + to_yaml([o]) for j, o in enumerate(objs))
            p.write_text(text)


# --------------------------------------------------------------------------- comparing


def full_compile(paths: list[str], flags: dict, config_path: str | None = None):
    report = Report()
    return compile_files(list(paths), dict(flags), report, config_path), report


def assert_views_equal(inc: Compiled, full_ir) -> None:
    want = views(full_ir)
    got = inc.incremental.views()
    assert [v.name for v in got] == [v.name for v in want]
    for mine, theirs in zip(got, want):
        assert mine.name == theirs.name
        assert mine.chains == theirs.chains, mine.name
        assert mine.digests() == theirs.digests(), mine.name
        for c in theirs.chains:
            assert mine.specs(c) == theirs.specs(c), (mine.name, c)
    assert inc.incremental.disagreed is False


def run(files: Files | list[str], flags: dict, cache_file: str, config_path: str | None = None,
        save: bool = True) -> tuple[Compiled, Any, Report, Report]:
    """Incremental compile (cache from CACHE_FILE), checked against the full compile; the cache saved."""
    paths = files.paths if isinstance(files, Files) else files
    report = Report()
    inc = compile_files_cached(list(paths), dict(flags), report, config_path, cache_file)
    assert inc.incremental is not None
    full, full_report = full_compile(paths, flags, config_path)
    assert_views_equal(inc, full.ir)
    assert [str(p) for p in report.problems] == [str(p) for p in full_report.problems]
    assert report.lines() == full_report.lines()  # the skipped-kinds summary too
    assert inc.ir == full.ir
    assert inc.stats["units"] == len(read_units(list(paths)))
    if save:
        inc.save_cache(cache_file)
    return inc, full, report, full_report


def group_of(obj: dict) -> tuple[str, str] | None:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or "default"
    if obj.get("kind") in ("Service", "Endpoints"):
        return ns, meta["name"]
    if obj.get("kind") == "EndpointSlice":
        svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        return (ns, svc) if svc else None
    return None


# --------------------------------------------------------------------------- edits

EDITS = ["ep_address", "ep_add", "ep_remove", "ep_not_ready", "svc_add", "svc_remove", "svc_type", "svc_port",
         "svc_node_port", "svc_etp", "svc_affinity", "slice_add", "slice_rename", "flags", "node",
         "svc_copy", "svc_bad", "svc_namespace", "legacy_endpoints", "move", "other_kind"]


def _pick(data, files: Files, kind: str, want=lambda o: True) -> dict | None:
    cands = [o for o in files.objs if o.get("kind") == kind and want(o)]
    if not cands:
        return None
    return data.draw(st.sampled_from(cands))


def _address(fam: int, n: int) -> str:
    return f"10.244.{n // 250}.{n % 250 + 1}" if fam == 4 else f"fd00:10:244::{n + 1:x}"


def apply_edit(data, files: Files, flags: dict, what: str) -> set | None:
    """Apply one edit; the groups (namespace, Service) it touches, or None when it changes the settings."""
    if what == "flags":
        key = data.draw(st.sampled_from(["masquerade_all", "hostname", "cluster_cidr", "ip_family",
                                         "nodeport_addresses"]))
        flags[key] = data.draw({
            "masquerade_all": st.sampled_from([None, True]),
            # a hostname naming no Node of the input is exit 2 (test_node_choice_fails_as_the_full_compile_does)
            "hostname": st.sampled_from([None, NODE]),
            "cluster_cidr": st.sampled_from([None, ["10.244.0.0/16", "fd00:10:244::/48"], ["10.0.0.0/8"]]),
            "ip_family": st.sampled_from(["ipv4", "ipv6"]),
            "nodeport_addresses": st.sampled_from([None, "192.168.0.0/24,fd00:192::/64", "10.9.0.0/16"]),
        }[key])
        return None
    if what == "node":
        node = _pick(data, files, "Node")
        addrs = node["status"]["addresses"]
        addrs[0]["address"] = data.draw(st.sampled_from(["192.168.0.10", "192.168.0.11", "203.0.0.1"]))
        if data.draw(st.booleans()):
            addrs.append({"type": "ExternalIP", "address": "198.51.0.7"})
        if data.draw(st.booleans()):
            node["metadata"]["labels"]["topology.kubernetes.io/zone"] = data.draw(st.sampled_from(["z1", "z2"]))
        return None
    if what.startswith("ep_"):
        sl = _pick(data, files, "EndpointSlice", lambda o: bool(o["endpoints"]) or what == "ep_add")
        if sl is None:
            return set()
        fam = 4 if sl["addressType"] == "IPv4" else 6
        eps = sl["endpoints"]
        if what == "ep_add":
            eps.append(data.draw(endpoint(fam)))
        else:
            k = data.draw(st.integers(0, len(eps) - 1))
            if what == "ep_address":
                eps[k]["addresses"] = [_address(fam, data.draw(st.integers(0, 60)))]
            elif what == "ep_remove":
                del eps[k]
            else:
                eps[k]["conditions"] = data.draw(st.sampled_from([{"ready": False}, {"ready": False, "serving": False}]))
        return {group_of(sl)}
    if what == "svc_add":
        used = [int(o["metadata"]["name"][3:]) for o in files.objs if o.get("kind") == "Service"]
        idx = max(used, default=-1) + 1
        new = data.draw(service_with_slices(idx))
        fileno = data.draw(st.integers(0, files.nfiles - 1))
        for o in new:
            files.add(o, fileno)
        return {group_of(new[0])}
    if what == "slice_add":
        svc = _pick(data, files, "Service")
        if svc is None:
            return set()
        fam = data.draw(st.sampled_from([4, 6]))
        ns, name = group_of(svc)
        ports = [{"name": p.get("name", ""), "port": data.draw(st.sampled_from([9000, 9001, 7000])),
                  "protocol": p.get("protocol", "TCP")} for p in svc["spec"].get("ports", [])]
        n = sum(1 for o in files.objs if o.get("kind") == "EndpointSlice")
        files.add({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"namespace": ns, "name": f"{name}-extra{n}",
                                "labels": {"kubernetes.io/service-name": name}},
                   "addressType": "IPv4" if fam == 4 else "IPv6", "ports": ports,
                   "endpoints": data.draw(st.lists(endpoint(fam), min_size=1, max_size=4))},
                  data.draw(st.integers(0, files.nfiles - 1)))
        return {(ns, name)}
    if what == "other_kind":
        # objects no Service depends on: nothing to compile again
        n = len(files.entries)
        files.add(data.draw(st.sampled_from([
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{n}", "namespace": "default"},
             "spec": {"nodeName": NODE}, "status": {"podIP": "10.244.0.99"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm{n}"}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": f"orphan{n}"},
             "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.7"]}]},
        ])), data.draw(st.integers(0, files.nfiles - 1)))
        return set()
    if what == "move":
        # an object to the end of some file (the Node stays first in file 0)
        cands = [e for e in files.entries if e[1].get("kind") != "Node"]
        if not cands:
            return set()
        e = data.draw(st.sampled_from(cands))
        files.entries.remove(e)
        files.add(e[1], data.draw(st.integers(0, files.nfiles - 1)))
        return {group_of(e[1])} - {None}
    if what == "slice_rename":
        sl = _pick(data, files, "EndpointSlice")
        if sl is None:
            return set()
        sl["metadata"]["name"] = data.draw(st.sampled_from(["a", "zz", "m"])) + "-" + sl["metadata"]["name"]
        return {group_of(sl)}
    svc = _pick(data, files, "Service")
    if svc is None:
        return set()
    g = group_of(svc)
    spec = svc["spec"]
    if what == "svc_copy":
        # a second copy of the same Service, later in the input: the first one wins
        dup = copy.deepcopy(svc)
        dup["spec"]["sessionAffinity"] = "ClientIP"
        dup["spec"]["ports"] = dup["spec"]["ports"][:1]
        files.add(dup, data.draw(st.integers(0, files.nfiles - 1)))
    elif what == "svc_bad":
        spec[data.draw(st.sampled_from(["externalIPs", "loadBalancerSourceRanges"]))] = ["not-an-address", "300.0.0.1"]
        if data.draw(st.booleans()):
            spec["ports"][0]["nodePort"] = 70000
    elif what == "svc_namespace":
        svc["metadata"]["namespace"] = "moved"
        return {g, ("moved", g[1])}
    elif what == "legacy_endpoints":
        files.add({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": g[1], "namespace": g[0]},
                   "subsets": [{"addresses": [{"ip": "10.244.3.3", "nodeName": NODE}, {"ip": "fd00:10:244::33"}],
                                "notReadyAddresses": [{"ip": "10.244.3.4"}],
                                "ports": [{"name": p.get("name", ""), "port": 7777, "protocol": p.get("protocol", "TCP")}
                                          for p in spec["ports"]]}]},
                  data.draw(st.integers(0, files.nfiles - 1)))
    elif what == "svc_remove":
        drop_slices = data.draw(st.booleans())
        files.entries = [e for e in files.entries if e[1] is not svc
                         and not (drop_slices and e[1].get("kind") == "EndpointSlice" and group_of(e[1]) == g)]
    elif what == "svc_type":
        spec["type"] = data.draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]))
        if spec["type"] == "ExternalName":
            spec["externalName"] = "example.org"
    elif what == "svc_port":
        p = data.draw(st.sampled_from(spec["ports"]))
        p["port"] = data.draw(st.sampled_from([80, 81, 443, 5353, 65535]))
    elif what == "svc_node_port":
        p = data.draw(st.sampled_from(spec["ports"]))
        p["nodePort"] = data.draw(st.sampled_from([30999, 31000, 32767]))
        if data.draw(st.booleans()):
            spec["type"] = "NodePort"
    elif what == "svc_etp":
        spec["externalTrafficPolicy"] = "Cluster" if spec.get("externalTrafficPolicy") == "Local" else "Local"
    elif what == "svc_affinity":
        spec["sessionAffinity"] = "None" if spec.get("sessionAffinity") == "ClientIP" else "ClientIP"
    return {g}


# --------------------------------------------------------------------------- the property

prop = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@prop
@given(gen_cluster(), st.sampled_from(["json", "yaml", "dir"]), st.data())
def test_edits_compile_like_a_full_compile(objs, form, data):
    with tempfile.TemporaryDirectory() as d:
        files = Files(Path(d), form, nfiles=data.draw(st.integers(2, 4)))
        # the Node first, in file 0
        for o in [objs[-1]] + objs[:-1]:
            files.add(o, 0 if o["kind"] == "Node" else None)
        files.write()
        cache = os.path.join(d, "state", "compile.msgpack")
        flags: dict[str, Any] = {}

        inc, full, _, _ = run(files, flags, cache)
        assert inc.stats["compiled"] == inc.stats["groups"]  # nothing cached yet
        assert inc.stats["parsed"] == inc.stats["units"]
        assert os.path.exists(cache)

        for what in data.draw(st.lists(st.sampled_from(EDITS), min_size=1, max_size=4)):
            touched = apply_edit(data, files, flags, what)
            files.write()
            inc, full, _, _ = run(files, flags, cache)
            if touched is not None:
                # Only Service-local things changed (clustergen stays far below 1000 endpoints).
                assert not is_large(full.plan.endpoint_total)
                assert inc.stats["compiled"] <= len(touched), (what, inc.stats)


# --------------------------------------------------------------------------- large-cluster mode


def _weights(objs: list[dict]) -> dict[tuple[str, str], int]:
    return {group_of(o): len(o["spec"]["ports"]) for o in objs if o.get("kind") == "Service"}


def _trim_to(files: Files, target: int) -> int:
    """Remove or add endpoints of single-port ClusterIP Services until the cluster has TARGET endpoints."""
    full, _ = full_compile(files.paths, {})
    total = full.plan.endpoint_total
    w = _weights(files.objs)
    counted = {(p.service.namespace, p.service.name) for p in full.plan.ports}
    slices = [o for o in files.objs if o.get("kind") == "EndpointSlice" and w.get(group_of(o)) == 1
              and group_of(o) in counted]
    extra = 0
    while total != target:
        sl = slices[extra % len(slices)]
        if total > target and sl["endpoints"]:
            sl["endpoints"].pop()
            total -= 1
        elif total < target:
            sl["endpoints"].append({"addresses": [f"10.250.{extra // 250}.{extra % 250 + 1}"],
                                    "conditions": {"ready": True}, "nodeName": "node-0001"})
            total += 1
        extra += 1
    files.write()
    assert full_compile(files.paths, {})[0].plan.endpoint_total == target
    return target


def _single_port_slice(files: Files, skip: int = 0) -> dict:
    """The SKIP-th slice (with endpoints) of a single-port Service with a cluster IP."""
    w = _weights(files.objs)
    proxied = {group_of(o) for o in files.objs if o.get("kind") == "Service" and o["spec"].get("clusterIP") != "None"}
    found = [o for o in files.objs if o.get("kind") == "EndpointSlice" and w.get(group_of(o)) == 1
             and group_of(o) in proxied and o["endpoints"]]
    return found[skip]


@pytest.mark.parametrize("form", ["json", "yaml", "dir"])
@pytest.mark.parametrize("how", ["endpoint", "service"])
def test_large_cluster_mode_switch(tmp_path, form, how):
    files = Files(tmp_path, form)
    for o in generate(60, 17, seed=7):
        files.add(o)
    files.write()
    _trim_to(files, 1000)
    cache = str(tmp_path / "c.msgpack")
    inc, small, _, _ = run(files, {}, cache)
    assert not is_large(small.plan.endpoint_total)

    # Cross above the threshold: one more endpoint, or one more Service with endpoints.
    if how == "endpoint":
        sl = _single_port_slice(files, 3)
        sl["endpoints"].append({"addresses": ["10.251.0.1"], "conditions": {"ready": True}, "nodeName": "node-0002"})
        touched = {group_of(sl)}
    else:
        extra = [o for o in generate(1, 3, seed=99) if o["kind"] in ("Service", "EndpointSlice")]
        for o in extra:
            o["metadata"]["namespace"] = "zz-extra"
            files.add(o)
        touched = {group_of(extra[0])}
    files.write()
    inc, large, _, _ = run(files, {}, cache)
    assert is_large(large.plan.endpoint_total)
    # The mode changes the rules of Services nobody touched, so they cannot come from the cache.
    untouched = _single_port_slice(files, 0)
    assert group_of(untouched) not in touched
    nat_small, nat_large = views(small.ir)[1], views(large.ir)[1]
    changed = [c for c in nat_small.chains if c in nat_large.digests() and c.startswith("KUBE-SVC-")
               and nat_small.digests()[c] != nat_large.digests()[c]]
    assert len(changed) > len(touched)
    assert inc.stats["compiled"] > len(touched)

    # A warm run in large mode, one endpoint changed: only that Service is compiled again.
    sl = _single_port_slice(files, 5)
    sl["endpoints"][0]["conditions"] = {"ready": False}
    files.write()
    inc, large2, _, _ = run(files, {}, cache)
    assert is_large(large2.plan.endpoint_total)
    assert inc.stats["compiled"] <= 1

    # And back below it.
    if how == "endpoint":
        sl = _single_port_slice(files, 3)
        sl["endpoints"].pop()
    else:
        files.entries = [e for e in files.entries if (e[1].get("metadata") or {}).get("namespace") != "zz-extra"]
    files.write()
    inc, back, _, _ = run(files, {}, cache)
    assert back.plan.endpoint_total == 1000 and not is_large(back.plan.endpoint_total)
    assert inc.stats["compiled"] > 1


# --------------------------------------------------------------------------- rules_of


def _per_chain(rules) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in rules:
        out.setdefault(r.chain, []).append(r.spec)
    return out


@pytest.mark.parametrize("form", ["json", "yaml"])
def test_rules_of_equals_the_full_views_rules(tmp_path, form):
    files = Files(tmp_path, form)
    for o in generate(25, 3, seed=3):
        files.add(o)
    files.write()
    cache = str(tmp_path / "c.msgpack")
    first = compile_files_cached(files.paths, {}, Report(), None, cache)
    first.save_cache(cache)

    # Change one Service's endpoint: its chains are compiled again, every other one comes from the cache.
    sl = _single_port_slice(files, 2)
    sl["endpoints"][0]["addresses"] = ["10.252.0.9"]
    files.write()
    inc = compile_files_cached(files.paths, {}, Report(), None, cache)
    assert inc.stats["compiled"] == 1
    full, _ = full_compile(files.paths, {})
    want = {v.name: v for v in views(full.ir)}
    nat = {v.name: v for v in inc.incremental.views()}["nat"]
    ns, name = group_of(sl)
    own = [c for c in nat.chains if c.startswith(("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SVL-"))]
    theirs_nat = want["nat"]
    dirty = [c for c in own if any(f"{ns}/{name}" in s for s in theirs_nat.specs(c))]
    cached = [c for c in own if c not in dirty]
    assert dirty and cached

    picks = [
        ["KUBE-SERVICES", "KUBE-NODEPORTS"],
        dirty[:3],
        cached[:2] + ["KUBE-POSTROUTING"],
        ["KUBE-MARK-MASQ", dirty[0], cached[-1], "KUBE-SVC-NOT-DECLARED"],
        list(reversed(nat.chains)),  # many chains: the full view answers in write order
    ]
    for v in inc.incremental.views():
        for chains in picks:
            chains = [c for c in chains if v.name == "nat" or c in v.chains] or list(v.chains)
            got = v.rules_of(chains)
            exp = want[v.name].rules_of(chains)
            assert _per_chain(got) == _per_chain(exp), (v.name, chains)
            assert sorted(got) == sorted(exp)  # nothing more, nothing less
    assert inc.incremental.disagreed is False
    assert _per_chain(nat.rules_of(cached[:1]))[cached[0]] == theirs_nat.specs(cached[0]) != []


# --------------------------------------------------------------------------- the cache file


def _cluster(tmp_path: Path, form: str = "json", n: int = 12) -> Files:
    files = Files(tmp_path, form)
    for o in generate(n, 2, seed=11):
        files.add(o)
    files.add({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "main"},
               "spec": {"cidrs": ["10.96.0.0/12"]}})
    files.write()
    return files


def _cold(inc: Compiled) -> bool:
    return inc.stats["parsed"] == inc.stats["units"] and inc.stats["compiled"] == inc.stats["groups"]


def _valid_cache(files: Files, cache: str) -> bytes:
    compile_files_cached(files.paths, {}, Report(), None, cache).save_cache(cache)
    with open(cache, "rb") as f:
        return f.read()


@pytest.mark.parametrize("mangle", ["garbage", "truncated", "empty", "wrong shape", "other format",
                                    "other version", "directory"])
def test_unusable_cache_is_a_cold_compile(tmp_path, mangle):
    files = _cluster(tmp_path)
    cache = str(tmp_path / "st" / "compile.msgpack")
    good = _valid_cache(files, cache)
    assert len(good) > 100
    if mangle == "garbage":
        data = bytes(range(256)) * 4
    elif mangle == "truncated":
        data = good[: len(good) // 2]
    elif mangle == "empty":
        data = b""
    elif mangle == "wrong shape":
        data = msgspec.msgpack.encode({"format": FORMAT, "units": [1, 2, 3]})
    else:
        c = msgspec.msgpack.decode(good, type=CompileCache)
        if mangle == "other format":
            c.format = FORMAT + 1
        else:
            c.version = c.version + "-other"
        data = msgspec.msgpack.encode(c)
    if mangle == "directory":
        os.remove(cache)
        os.makedirs(cache)
    else:
        with open(cache, "wb") as f:
            f.write(data)
    assert incremental.load_cache(cache) is None
    # an edit, so the cold run has something to get right
    sl = _single_port_slice(files, 1)
    sl["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}
    files.write()
    inc, _, _, _ = run(files, {}, cache)
    assert _cold(inc)
    assert inc.incremental.cache is not None
    if mangle != "directory":
        # saved over the bad one: the next run is warm
        inc, _, _, _ = run(files, {}, cache)
        assert inc.stats["compiled"] == 0


def test_full_views_detect_a_wrong_cache(tmp_path):
    """A cache whose segments do not match their inputs (here: two groups' outputs swapped) is caught."""
    files = _cluster(tmp_path, "json")
    cache = str(tmp_path / "c.msgpack")
    good = _valid_cache(files, cache)
    c = msgspec.msgpack.decode(good, type=CompileCache)
    with_rules = [i for i, (_, _, seg) in enumerate(c.groups) if seg.nat]
    a, b = with_rules[0], with_rules[-1]
    keep = ("fp", "endpoints")
    sa, sb = c.groups[a][2], c.groups[b][2]
    out_a = {f.name: getattr(sa, f.name) for f in msgspec.structs.fields(sa) if f.name not in keep}
    out_b = {f.name: getattr(sb, f.name) for f in msgspec.structs.fields(sb) if f.name not in keep}
    c.groups[a] = (*c.groups[a][:2], msgspec.structs.replace(sa, **out_b))
    c.groups[b] = (*c.groups[b][:2], msgspec.structs.replace(sb, **out_a))
    with open(cache, "wb") as f:
        f.write(msgspec.msgpack.encode(c))

    inc = compile_files_cached(files.paths, {}, Report(), None, cache)
    assert inc.stats["compiled"] == 0  # the cache was believed
    assert inc.incremental.disagreed is False
    full, _ = full_compile(files.paths, {})
    assert [v.chains for v in inc.incremental.views()] != [v.chains for v in views(full.ir)]
    got = inc.incremental.full_views()
    assert inc.incremental.disagreed is True
    assert [v.digests() for v in got] == [v.digests() for v in views(full.ir)]


def test_cache_of_another_cluster_is_harmless(tmp_path):
    a = _cluster(tmp_path / "a", "json", n=10)
    b = Files(tmp_path / "b", "json")
    for o in generate(14, 3, seed=12):  # same names, other addresses and shapes
        b.add(o)
    b.write()
    cache = str(tmp_path / "c.msgpack")
    run(a, {}, cache)
    inc, _, _, _ = run(b, {}, cache)
    assert inc.stats["compiled"] >= 1
    inc, _, _, _ = run(a, {"masquerade_all": True}, cache)
    assert inc.stats["compiled"] == inc.stats["groups"]


@pytest.mark.parametrize("form", ["json", "yaml", "dir"])
def test_unchanged_rerun_parses_only_cluster_wide_units(tmp_path, form):
    files = _cluster(tmp_path, form)
    cache = str(tmp_path / "st" / "compile.msgpack")
    run(files, {}, cache)
    wide = sum(1 for u in read_units(files.paths)
               if any(isinstance(o, dict) and o.get("kind") in CLUSTER_WIDE for _, o in u.decode()[0]))
    assert wide == 3  # Node, KubeProxyConfiguration, ServiceCIDR
    before = os.stat(cache).st_mtime_ns, open(cache, "rb").read()
    inc, _, _, _ = run(files, {}, cache, save=False)
    assert inc.stats["parsed"] == wide
    assert inc.stats["compiled"] == 0
    assert inc.stats["groups"] == 12
    assert inc.incremental.cache is None
    # nothing to save: save() leaves the file alone, and does not write one where there is none
    inc.save_cache(cache)
    assert (os.stat(cache).st_mtime_ns, open(cache, "rb").read()) == before
    os.remove(cache)
    inc.save_cache(cache)
    assert not os.path.exists(cache)


def test_same_file_twice_and_identical_objects(tmp_path):
    """Units with the same bytes (a file given twice, an object listed twice) share a cache entry."""
    files = _cluster(tmp_path, "yaml")
    svc = next(o for o in files.objs if o["kind"] == "Service")
    files.add(copy.deepcopy(svc))  # the very same document again, later in the file
    files.add(copy.deepcopy(BAD_OBJECTS[0]))
    files.write()
    other = tmp_path / "other.json"
    other.write_text(to_json([copy.deepcopy(svc), copy.deepcopy(BAD_OBJECTS[0])]))
    paths = [files.paths[0], str(other), files.paths[0]]
    cache = str(tmp_path / "c.msgpack")
    _, _, _, full_report = run(paths, {}, cache)
    assert sum("bad-eip" in str(p) for p in full_report.problems) == 6
    inc, _, _, _ = run(paths, {}, cache)
    assert inc.stats["compiled"] == 0
    # one copy gone: only its group changes
    files.entries = [e for e in files.entries if e[1] is not files.objs[-2]]
    files.write()
    inc, _, _, _ = run(paths, {}, cache)
    assert inc.stats["compiled"] == 1


def test_same_object_in_another_file_stays_cached(tmp_path):
    """Moving an unchanged object between files keeps its unit; the output follows the full compile."""
    files = _cluster(tmp_path, "dir")
    cache = str(tmp_path / "c.msgpack")
    run(files, {}, cache)
    # from the end of one YAML file to the end of another, its slices staying behind it
    svc_entry = next(e for e in files.entries if e[1]["kind"] == "Service" and e[0] == 2)
    files.entries.remove(svc_entry)
    files.add(svc_entry[1], 0)
    files.write()
    inc, _, _, _ = run(files, {}, cache)
    assert inc.stats["compiled"] == 0
    assert inc.stats["parsed"] == 3


# --------------------------------------------------------------------------- input problems

BAD_OBJECTS = [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad-eip", "namespace": "p"},
     "spec": {"clusterIP": "10.96.7.1", "externalIPs": ["198.51.100.1", "300.1.1.1", "not-an-ip"],
              "ports": [{"name": "a", "port": 80}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad-port", "namespace": "p"},
     "spec": {"clusterIP": "10.96.7.2", "type": "NodePort",
              "ports": [{"name": "a", "port": 70000}, {"name": "b", "port": 81, "nodePort": 99999}],
              "sessionAffinity": "Sticky"}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "bad-port-1", "namespace": "p", "labels": {"kubernetes.io/service-name": "bad-port"}},
     "addressType": "IPv4", "ports": [{"name": "b", "port": 8081}],
     "endpoints": [{"addresses": ["10.1.1.1"]}, {"addresses": ["10.1.1.x"]}, {"addresses": []}]},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "skipped"}},
]


@pytest.mark.parametrize("form", ["json", "yaml", "dir"])
def test_problems_are_the_same_cold_warm_and_full(tmp_path, form):
    files = Files(tmp_path, form)
    objs = generate(8, 2, seed=5)
    for o in objs[:6]:
        files.add(o)
    for o in BAD_OBJECTS:
        files.add(copy.deepcopy(o))
    for o in objs[6:]:
        files.add(o)
    files.write()
    cache = str(tmp_path / "c.msgpack")

    inc, _, cold, full_report = run(files, {}, cache)
    lines = [str(p) for p in full_report.problems]
    assert any("spec.externalIPs[1]: '300.1.1.1' is not a valid IP address" in s for s in lines)
    assert any("spec.externalIPs[2]: 'not-an-ip'" in s for s in lines)
    assert any("spec.ports[0].port: 70000 is not a valid port" in s for s in lines)
    assert any("spec.ports[1].nodePort: 99999 is not a valid port" in s for s in lines)
    assert any("endpoints[1].addresses[0]: '10.1.1.x' is not a valid IP address" in s for s in lines)
    skipped = "skipped 1 object of kinds rulegen does not use: ConfigMap (1)"
    assert full_report.summary() == skipped

    # warm, unchanged: the units with problems are read again and report in place
    inc, _, warm, _ = run(files, {}, cache)
    assert [str(p) for p in warm.problems] == lines
    assert warm.summary() == skipped  # the skipped object's unit is read again too
    assert inc.stats["compiled"] == 0

    # warm, a clean Service before the bad ones changed: places still count from the cached units
    svc = next(o for o in files.objs if o["kind"] == "Service")
    svc["spec"]["sessionAffinity"] = "None" if svc["spec"]["sessionAffinity"] == "ClientIP" else "ClientIP"
    files.write()
    inc, _, warm2, full2 = run(files, {}, cache)
    assert [str(p) for p in warm2.problems] == [str(p) for p in full2.problems] == lines
    assert inc.stats["compiled"] == 1

    # a bad Service fixed: its problem lines go, the others stay
    bad = next(o for o in files.objs if (o.get("metadata") or {}).get("name") == "bad-eip")
    bad["spec"]["externalIPs"] = ["198.51.100.1"]
    files.write()
    _, _, warm3, _ = run(files, {}, cache)
    assert not any("externalIPs" in str(p) for p in warm3.problems)
    assert len(warm3.problems) == len(lines) - 2


def test_problem_places_in_yaml_with_empty_and_merged_documents(tmp_path):
    """Document numbers after empty, null, comment-only and uncut (`--- # ...`) documents, cold and warm."""
    node, cfg, s0, s1, s2, sl0, sl1, sl2 = generate(3, 2, seed=2)  # kubectl's order: kind by kind
    y = lambda o: to_yaml([o])  # noqa: E731
    parts = ["# header\n", "---\n", "---\n# nothing here\n", "---\nnull\n", "---\n" + y(s0),
             "--- # no cut here\n" + y(sl0), "--- # nor here\n" + y(s1), "---\n" + y(sl1),
             "---\n" + y(BAD_OBJECTS[0]), "---\n" + y(s2), "---\n" + y(sl2), "---\n" + y(node), "---\n" + y(cfg)]
    p = tmp_path / "c.yaml"
    p.write_text("".join(parts))
    cache = str(tmp_path / "c.msgpack")
    _, _, _, full_report = run([str(p)], {}, cache)
    lines = [str(s) for s in full_report.problems]
    assert any(f"{p}: document 5 (Service p/bad-eip): spec.externalIPs" in s for s in lines), lines
    # warm: the merged unit is known to the cache, the bad one is read again
    inc, _, warm, _ = run([str(p)], {}, cache)
    assert [str(s) for s in warm.problems] == lines
    assert inc.stats["compiled"] == 0
    # another document changed: still the same places
    sl1["endpoints"][0]["conditions"] = {"ready": False}
    parts[7] = "---\n" + y(sl1)
    p.write_text("".join(parts))
    inc, _, warm, _ = run([str(p)], {}, cache)
    assert [str(s) for s in warm.problems] == lines
    assert inc.stats["compiled"] == 1


def test_usage_error_is_the_same_warm(tmp_path):
    files = _cluster(tmp_path, "yaml")
    cache = str(tmp_path / "c.msgpack")
    run(files, {}, cache)
    p = Path(files.paths[0])
    text = p.read_text()
    parts = text.split("\n---\n")
    parts[3] = parts[3] + "\nbroken: [unclosed"
    p.write_text("\n---\n".join(parts))
    with pytest.raises(UsageError) as full_err:
        compile_files(files.paths, {}, Report())
    with pytest.raises(UsageError) as inc_err:
        compile_files_cached(files.paths, {}, Report(), None, cache)
    assert str(inc_err.value) == str(full_err.value)
    assert "(line " in str(full_err.value)


# --------------------------------------------------------------------------- cluster-wide changes


def _config(files: Files) -> dict:
    return next(o for o in files.objs if o["kind"] == "KubeProxyConfiguration")


def _node(files: Files) -> dict:
    return next(o for o in files.objs if o["kind"] == "Node")


@pytest.mark.parametrize("form", ["json", "yaml", "dir"])
def test_node_and_config_changes_take_effect_warm(tmp_path, form):
    files = _cluster(tmp_path, form)
    for o in files.objs:  # some Services the node address matters for
        if o["kind"] == "Service" and o["spec"]["type"] == "LoadBalancer":
            o["spec"]["loadBalancerSourceRanges"] = ["192.168.0.0/24"]
    files.write()
    cache = str(tmp_path / "c.msgpack")
    _, prev, _, _ = run(files, {}, cache)

    def step(change) -> Compiled:
        nonlocal prev
        change()
        files.write()
        inc, full, _, _ = run(files, {}, cache)
        assert views(full.ir)[1].digests() != views(prev.ir)[1].digests() or \
            views(full.ir)[0].digests() != views(prev.ir)[0].digests(), "the change should show"
        prev = full
        return inc

    inc = step(lambda: _config(files).update(clusterCIDR="10.0.0.0/8"))
    assert inc.stats["compiled"] == inc.stats["groups"]
    step(lambda: _config(files).update(masqueradeAll=True))
    step(lambda: _config(files).update(nodePortAddresses=["192.168.0.0/16"]))
    step(lambda: _node(files)["status"]["addresses"].__setitem__(0, {"type": "InternalIP", "address": "192.168.9.9"}))
    step(lambda: _node(files)["status"]["addresses"].__setitem__(0, {"type": "InternalIP", "address": "10.1.0.1"}))
    step(lambda: files.entries.remove(next(e for e in files.entries if e[1]["kind"] == "KubeProxyConfiguration")))


def test_config_file_and_hostname_changes_take_effect_warm(tmp_path):
    files = _cluster(tmp_path, "json")
    second = copy.deepcopy(_node(files))
    second["metadata"]["name"] = "node-0001"
    second["status"]["addresses"] = [{"type": "InternalIP", "address": "192.168.0.11"}]
    files.add(second)
    # a Service whose rules depend on which node this is
    files.add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "local", "namespace": "x"},
               "spec": {"type": "NodePort", "clusterIP": "10.96.9.9", "externalTrafficPolicy": "Local",
                        "ports": [{"name": "", "port": 80, "nodePort": 31111}]}})
    files.add({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "local-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "local"}},
               "addressType": "IPv4", "ports": [{"name": "", "port": 8080}],
               "endpoints": [{"addresses": ["10.128.0.5"], "nodeName": "node-0000"},
                             {"addresses": ["10.128.2.5"], "nodeName": "node-0001"},
                             {"addresses": ["10.128.4.5"], "nodeName": "node-0002"}]})
    files.write()
    cfg = tmp_path / "kp.yaml"
    cache = str(tmp_path / "c.msgpack")
    seen = set()
    for flags, cfg_text in [
        ({"hostname": "node-0000"}, None),
        ({"hostname": "node-0000"}, "kind: KubeProxyConfiguration\nclusterCIDR: 10.0.0.0/8\n"),
        ({"hostname": "node-0000"}, "kind: KubeProxyConfiguration\nclusterCIDR: 10.128.0.0/9\nmasqueradeAll: true\n"),
        ({"hostname": "node-0001"}, "kind: KubeProxyConfiguration\nclusterCIDR: 10.128.0.0/9\nmasqueradeAll: true\n"),
        ({"hostname": "node-0001"}, "kind: KubeProxyConfiguration\nhostnameOverride: node-0000\n"),
        ({}, "kind: KubeProxyConfiguration\nhostnameOverride: node-0000\n"),
    ]:
        if cfg_text is not None:
            cfg.write_text(cfg_text)
        _, full, _, _ = run(files, flags, cache, str(cfg) if cfg_text is not None else None)
        seen.add(full.ir)
    assert len(seen) == 6


def test_chain_digest_is_of_the_specs():
    assert chain_digest([]) == chain_digest(())
    assert chain_digest(["a", "b"]) != chain_digest(["b", "a"])
    assert chain_digest(["a b"]) != chain_digest(["a", "b"])


@pytest.mark.parametrize("flags,extra_node,want", [
    ({"hostname": "node-x"}, False, "--hostname node-x: no Node of that name in the input (Nodes: node-0000)"),
    ({}, True, "2 Nodes in the input and no --hostname to pick one (Nodes: node-0000, node-0001)"),
])
def test_node_choice_fails_as_the_full_compile_does(tmp_path, flags, extra_node, want):
    files = _cluster(tmp_path, "json")
    cache = str(tmp_path / "c.msgpack")
    run(files, {}, cache)  # warm: the failing run below has a cache to consult
    if extra_node:
        second = copy.deepcopy(_node(files))
        second["metadata"]["name"] = "node-0001"
        files.add(second)
        files.write()
    with pytest.raises(UsageError) as full_err:
        compile_files(files.paths, flags, Report())
    with pytest.raises(UsageError) as inc_err:
        compile_files_cached(files.paths, flags, Report(), None, cache)
    assert str(inc_err.value) == str(full_err.value) == want


@pytest.mark.parametrize("mode", ["ipvs", "nftables"])
def test_other_modes_compile_as_the_full_compile_does(tmp_path, mode):
    """The compile cache is iptables mode's: another mode goes the full way and writes no cache."""
    files = _cluster(tmp_path, "yaml")
    _config(files)["mode"] = mode
    files.write()
    full = compile_files(files.paths, {}, Report())
    inc = compile_files_cached(files.paths, {}, Report(), None, str(tmp_path / "c.msgpack"))
    assert full.settings.mode == inc.settings.mode == mode
    assert inc.text == full.text
    assert not os.path.exists(tmp_path / "c.msgpack")


# --------------------------------------------------------------------------- BOM before a directive; saving the cache


def test_bom_and_directive_compile_like_the_full_compile(tmp_path):
    p = tmp_path / "bom.yaml"
    p.write_text("\ufeff%YAML 1.1\n---\n" + to_yaml(generate(2, 1, seed=1)))
    full, _ = full_compile([str(p)], {})
    inc = compile_files_cached([str(p)], {}, Report(), None, str(tmp_path / "c.msgpack"))
    assert_views_equal(inc, full.ir)


def test_save_to_a_bare_file_name(tmp_path, monkeypatch):
    files = _cluster(tmp_path, "json")
    monkeypatch.chdir(tmp_path)
    inc = compile_files_cached(files.paths, {}, Report(), None, "compile.msgpack")
    inc.save_cache("compile.msgpack")
    assert os.path.exists(tmp_path / "compile.msgpack")


def test_failed_save_leaves_no_temporary_file(tmp_path):
    files = _cluster(tmp_path, "json")
    cache = tmp_path / "st" / "compile.msgpack"
    cache.mkdir(parents=True)  # a directory where the cache file should be: os.replace fails
    inc = compile_files_cached(files.paths, {}, Report(), None, str(cache))
    inc.save_cache(str(cache))
    assert os.listdir(tmp_path / "st") == ["compile.msgpack"]
