"""Tests for `rulegen lab`: the statistics and judging (pure), and real runs in namespaces (root).

The root tests run the lab on examples/web-frontend and on tests/lab_cases/
(NodePort with Cluster and Local policy, ClientIP affinity, no endpoints,
source ranges, internalTrafficPolicy Local), break the rules on purpose to
see the lab notice, and interrupt it with SIGINT/SIGTERM mid-run. After
every test no `rglab-` namespace may be left; any that appeared during a
test are removed in teardown even when it fails.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rulegen import lab
from rulegen.diagnostics import UsageError
from rulegen.flags import SETTING_KEYS
from rulegen.pipeline import compile_files

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).resolve().parents[1] / "lab_cases"
EXAMPLE = ROOT / "examples" / "web-frontend" / "cluster.yaml"
NETNS_DIR = "/run/netns"
REQUESTS = 120
# `python -m rulegen.cli` would import cli twice; call main() the way the console script does.
RULEGEN = [sys.executable, "-c", "import sys; from rulegen.cli import main; sys.exit(main())"]


def compiled(path, **flags):
    f = {k: None for k in SETTING_KEYS}
    f.update(flags)
    return compile_files([str(path)], f)


def lab_namespaces() -> set[str]:
    try:
        return {n for n in os.listdir(NETNS_DIR) if n.startswith(lab.PREFIX)}
    except FileNotFoundError:
        return set()


def lab_processes(tag: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"rulegen/lab/net.py") for a in argv) and tag.encode() in argv:
            out.append(int(pid))
    return out


@pytest.fixture
def runs():
    """Run names (rglab-XXXX) a test started; afterwards none of their namespaces may be left.

    Only these runs' namespaces are looked at and removed: other lab runs may
    be going on at the same time (another test session) and are not ours.
    """
    started: list[str] = []
    yield started
    stray = sorted(n for n in lab_namespaces() for r in started if n.startswith(r + "-"))
    for n in stray:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
    assert not stray, f"lab left namespaces behind: {stray}"


def run_id_of(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if line.startswith("rulegen lab: " + lab.PREFIX):
            return line.split()[2].rstrip(":")
    return None


def run_lab(runs: list[str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    cp = subprocess.run([*RULEGEN, "lab", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    rid = run_id_of(cp.stderr)
    if rid:
        runs.append(rid)
    return cp


def _only_chance(doc: dict) -> bool:
    """Every failed path failed only the chi-square test (which a fair split fails 0.1% of the time)."""
    bad = [p for p in doc["paths"] if p["verdict"] != "ok"]
    return bool(bad) and all(all(x.startswith("shares differ") for x in p["problems"]) for p in bad)


def lab_json(runs: list[str], path, *extra: str) -> dict:
    """Run the lab with --json and expect success.

    A correct split still fails p < 0.001 one time in a thousand per path, so
    a run whose only problems are chi-square ones is repeated once; a real
    bias fails both times.
    """
    for attempt in (1, 2):
        cp = run_lab(runs, str(path), "--requests", str(REQUESTS), "--json", *extra)
        assert "Traceback" not in cp.stderr, cp.stderr
        doc = json.loads(cp.stdout) if cp.stdout.strip() else None
        if cp.returncode == 1 and attempt == 1 and doc and _only_chance(doc):
            continue
        break
    assert cp.returncode == 0, cp.stdout + cp.stderr
    return doc


def paths(doc: dict, spn: str | None = None, kind: str | None = None, proto: str | None = None) -> list[dict]:
    out = [p for p in doc["paths"] if (spn is None or p["service_port"] == spn) and (kind is None or p["kind"] == kind)
           and (proto is None or p["protocol"] == proto)]
    assert out, f"no path {spn} {kind} {proto}"
    return out


def assert_answered_everywhere(p: dict, endpoints: set[str]) -> None:
    """Every expected endpoint answered, nothing else did, no connection failed, shares fit."""
    assert p["verdict"] == "ok", p["problems"]
    assert p["answered"] == p["sent"] == REQUESTS
    assert set(p["endpoints"]) == endpoints
    assert all(n > 0 for n in p["endpoints"].values())
    assert set(p["expected_shares"]) == endpoints
    if len(endpoints) > 1:
        assert p["p_value"] is not None and p["p_value"] >= lab.P_FAIL


# ---------------------------------------------------------------------- statistics (no root)


def test_chi2_two_degrees_is_exponential():
    # With 2 degrees of freedom the survival function is exactly exp(-x/2).
    for x in (0.01, 0.5, 1.0, 2.0, 5.0, 13.8, 40.0):
        assert lab.chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-12)


@pytest.mark.parametrize("stat,df,p", [
    (3.841458820694124, 1, 0.05),
    (6.6348966010212145, 1, 0.01),
    (5.991464547107979, 2, 0.05),
    (11.070497693516351, 5, 0.05),
    (18.307038053275146, 10, 0.05),
    (29.58829844507442, 10, 0.001),
    (124.34211340400407, 100, 0.05),
])
def test_chi2_critical_values(stat, df, p):
    assert lab.chi2_sf(stat, df) == pytest.approx(p, rel=1e-9)


def test_chi2_edges():
    assert lab.chi2_sf(0.0, 3) == 1.0
    assert lab.chi2_sf(5.0, 0) == 1.0
    assert 0.0 <= lab.chi2_sf(1e4, 3) < 1e-300 or lab.chi2_sf(1e4, 3) == 0.0
    # odd df against the closed form for df=1: erfc(sqrt(x/2))
    for x in (0.2, 1.0, 3.0, 9.0):
        assert lab.chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-12)
    with pytest.raises(ValueError):
        lab.gammaincc(0, 1.0)


def test_chi_square_p_fits_and_rejects():
    assert lab.chi_square_p([40, 40, 40], [1 / 3] * 3) == pytest.approx(1.0)
    assert lab.chi_square_p([100, 10, 10], [1 / 3] * 3) < lab.P_FAIL
    assert lab.chi_square_p([5], [1.0]) is None
    assert lab.chi_square_p([0, 0], [0.5, 0.5]) is None


# ---------------------------------------------------------------------- planning (no root)


def probe_for(plan, spn, kind, source=None, dst=None):
    found = [p for p in plan.probes if p.spn == spn and p.kind == kind
             and (source is None or p.source == source) and (dst is None or p.dst == dst)]
    assert len(found) == 1, found
    return found[0]


def test_plan_example_paths_and_expectations():
    plan = lab.build_plan(compiled(EXAMPLE), requests=50)
    assert plan.node_ips == ("192.168.56.10",)
    assert plan.hostname == "node-a"
    assert plan.cpod_ip.startswith("10.244.1.")  # inside node-a's pod CIDR
    where = {p.ip: p.where for p in plan.pods}
    assert where == {"10.244.1.11": "local", "10.244.1.12": "local", "10.244.2.21": "remote"}
    spn = "default/web-frontend:http"
    every = {"10.244.1.11:3000", "10.244.1.12:3000", "10.244.2.21:3000"}
    pod = probe_for(plan, spn, "cluster-ip", "cpod")
    assert (pod.expect, set(pod.endpoints), pod.masq, pod.count) == ("answer", every, "client", 50)
    np = probe_for(plan, spn, "node-port")
    assert (np.dst, np.port, np.source, np.masq, set(np.endpoints)) == ("192.168.56.10", 30080, "client", "node", every)
    lo = probe_for(plan, spn, "localhost-node-port")
    assert (lo.dst, lo.masq, lo.expect) == ("127.0.0.1", "node", "answer")


def test_plan_local_policy():
    plan = lab.build_plan(compiled(CASES / "nodeport-local.yaml"), requests=50)
    np = probe_for(plan, "lab/local-web:http", "node-port")
    assert set(np.endpoints) == {"10.244.1.31:8080", "10.244.1.32:8080"} and np.masq == "client"
    lo = probe_for(plan, "lab/local-web:http", "localhost-node-port")
    assert len(lo.endpoints) == 4 and lo.masq == "node"
    drop = probe_for(plan, "lab/remote-only:http", "node-port")
    assert drop.expect == "drop" and drop.count == lab.NEGATIVE_PROBES
    assert probe_for(plan, "lab/internal-remote:tcp", "cluster-ip", "cpod").expect == "drop"
    il = probe_for(plan, "lab/internal-local:http", "cluster-ip", "node")
    assert il.endpoints == ("10.244.1.35:8080",)


def test_plan_masquerade_all_and_no_node_ip():
    plan = lab.build_plan(compiled(EXAMPLE, masquerade_all=True), requests=10)
    assert probe_for(plan, "default/web-frontend:http", "cluster-ip", "cpod").masq == "node"
    c = compiled(CASES / "no-endpoints.yaml")
    c.settings = type(c.settings)(**{**c.settings.__dict__, "node_ips": ()})
    plan = lab.build_plan(c, requests=10)
    assert plan.node_ips == (lab.NODE_IP_CANDIDATES[0],)
    assert any("no node IP" in n for n in plan.notes)


def test_plan_limits_and_filters():
    c = compiled(EXAMPLE)
    with pytest.raises(UsageError, match="--max-pods 2"):
        lab.build_plan(c, max_pods=2)
    assert lab.build_plan(c, max_pods=3).pods
    with pytest.raises(UsageError, match="no such Service"):
        lab.build_plan(c, services=("default/nope",))
    with pytest.raises(UsageError, match="NAMESPACE/NAME"):
        lab.build_plan(c, services=("web-frontend",))
    c2 = compiled(CASES / "nodeport-local.yaml")
    plan = lab.build_plan(c2, services=("lab/remote-only",))
    assert {p.spn for p in plan.probes} == {"lab/remote-only:http"}
    assert [p.ip for p in plan.pods] == ["10.244.2.41"]


# ---------------------------------------------------------------------- judging (no root)


def _probe(**kw) -> lab.Probe:
    base = dict(key="0", spn="ns/s:p", proto="tcp", kind="node-port", source="client", src_ip="203.0.113.10",
                dst="192.168.1.1", port=30000, expect="answer", why="", endpoints=("10.0.0.1:80", "10.0.0.2:80"),
                masq="node", count=100)
    base.update(kw)
    return lab.Probe(**base)


def _raw(answers, sent=100, refused=0, timeout=0, errors=None):
    return {"sent": sent, "answers": answers, "refused": refused, "timeout": timeout, "errors": errors or {}}


NODE = ("192.168.1.1",)


def test_judge_good_split():
    r = lab.judge(_probe(), _raw({"10.0.0.1:80": {"192.168.1.1": 52}, "10.0.0.2:80": {"192.168.1.1": 48}}), NODE)
    assert r.ok and r.masquerade == "masqueraded" and r.p_value > 0.5


def test_judge_problems():
    # one endpoint silent, uneven split
    r = lab.judge(_probe(), _raw({"10.0.0.1:80": {"192.168.1.1": 100}}), NODE)
    assert not r.ok and any("never answered" in p for p in r.problems) and r.p_value < lab.P_FAIL
    # client address arrived where masquerade was expected
    r = lab.judge(_probe(), _raw({"10.0.0.1:80": {"203.0.113.10": 50}, "10.0.0.2:80": {"203.0.113.10": 50}}), NODE)
    assert not r.ok and r.masquerade == "kept" and any("node address" in p for p in r.problems)
    # and the other way round
    r = lab.judge(_probe(masq="client"), _raw({"10.0.0.1:80": {"192.168.1.1": 50}, "10.0.0.2:80": {"192.168.1.1": 50}}), NODE)
    assert not r.ok and any("intact" in p for p in r.problems)
    # a stray endpoint and failed connections
    r = lab.judge(_probe(), _raw({"10.0.0.1:80": {"192.168.1.1": 45}, "10.0.0.2:80": {"192.168.1.1": 45},
                                  "10.0.0.9:80": {"192.168.1.1": 5}}, timeout=5), NODE)
    assert not r.ok and any("10.0.0.9:80" in p for p in r.problems) and any("5 of 100" in p for p in r.problems)
    # fewer sent than planned (deadline)
    r = lab.judge(_probe(), _raw({"10.0.0.1:80": {"192.168.1.1": 20}, "10.0.0.2:80": {"192.168.1.1": 20}}, sent=40), NODE)
    assert not r.ok and any("deadline" in p for p in r.problems)


def test_judge_too_few_requests_is_a_note():
    pr = _probe(endpoints=tuple(f"10.0.0.{i}:80" for i in range(1, 6)), count=5)
    r = lab.judge(pr, _raw({"10.0.0.1:80": {"192.168.1.1": 3}, "10.0.0.2:80": {"192.168.1.1": 2}}, sent=5), NODE)
    assert r.ok and len(r.notes) == 1 and r.notes[0].startswith("3 endpoint(s) did not answer")


def test_judge_affinity():
    pr = _probe(affinity=True)
    assert lab.judge(pr, _raw({"10.0.0.2:80": {"192.168.1.1": 100}}), NODE).ok
    r = lab.judge(pr, _raw({"10.0.0.1:80": {"192.168.1.1": 99}, "10.0.0.2:80": {"192.168.1.1": 1}}), NODE)
    assert not r.ok and any("affinity" in p for p in r.problems)


def test_judge_reject_and_drop():
    rej = _probe(expect="reject", endpoints=(), masq=None, count=6)
    drop = _probe(expect="drop", endpoints=(), masq=None, count=6)
    assert lab.judge(rej, _raw({}, sent=6, refused=6), NODE).ok
    assert not lab.judge(rej, _raw({}, sent=6, timeout=6), NODE).ok
    assert lab.judge(drop, _raw({}, sent=6, timeout=6), NODE).ok
    assert lab.judge(drop, _raw({}, sent=6, errors={"EPERM": 6}), NODE).ok  # the node's OUTPUT dropped it
    assert not lab.judge(drop, _raw({}, sent=6, refused=6), NODE).ok
    assert not lab.judge(drop, _raw({"10.0.0.1:80": {"x": 6}}, sent=6), NODE).ok


# ---------------------------------------------------------------------- real runs (root)


@pytest.mark.root
def test_needs_root_message():
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is not installed")
    cp = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *RULEGEN, "lab",
                         str(EXAMPLE)], capture_output=True, text=True, timeout=60, cwd="/")
    assert cp.returncode == 2
    assert "needs root" in cp.stderr and "Traceback" not in cp.stderr


@pytest.mark.root
def test_web_frontend_example(runs):
    doc = lab_json(runs, EXAMPLE)
    assert doc["ok"] and not doc["left_behind"]
    every = {"10.244.1.11:3000", "10.244.1.12:3000", "10.244.2.21:3000"}
    spn = "default/web-frontend:http"
    for p in doc["paths"]:
        assert_answered_everywhere(p, every)
    pod = paths(doc, spn, "cluster-ip")[0]
    assert pod["source"] == "cpod" and set(pod["masquerade"]["peers"]) == {doc["client_pod_ip"]}
    np = paths(doc, spn, "node-port")[0]
    assert np["masquerade"]["observed"] == "masqueraded"
    assert set(np["masquerade"]["peers"]) <= set(doc["node_ips"])
    lo = paths(doc, spn, "localhost-node-port")[0]
    assert set(lo["masquerade"]["peers"]) <= set(doc["node_ips"])


@pytest.mark.root
def test_nodeport_cluster_policy_tcp_udp(runs):
    doc = lab_json(runs, CASES / "nodeport-cluster.yaml")
    assert doc["ok"]
    assert doc["node_ips"] == ["192.168.77.10", "192.168.77.11"]
    for proto, port in (("tcp", 8080), ("udp", 5353)):
        eps = {f"10.244.1.21:{port}", f"10.244.1.22:{port}", f"10.244.2.23:{port}"}
        nps = paths(doc, kind="node-port", proto=proto)
        assert sorted(p["destination"].split(":")[0] for p in nps) == doc["node_ips"]
        for p in paths(doc, proto=proto):
            assert_answered_everywhere(p, eps)
        for p in nps:
            assert p["masquerade"]["observed"] == "masqueraded"
            assert set(p["masquerade"]["peers"]) <= set(doc["node_ips"])
        pod = [p for p in paths(doc, kind="cluster-ip", proto=proto) if p["source"] == "cpod"][0]
        assert pod["masquerade"]["observed"] == "kept"


@pytest.mark.root
def test_nodeport_addresses_and_localhost_off(runs):
    # Only the first node IP takes NodePorts; without a 127.x CIDR localhost NodePorts are off too.
    doc = lab_json(runs, CASES / "nodeport-cluster.yaml", "--nodeport-addresses", "192.168.77.10/32")
    for proto in ("tcp", "udp"):
        by_dst = {p["destination"].split(":")[0]: p for p in paths(doc, kind="node-port", proto=proto)}
        assert by_dst["192.168.77.10"]["answered"] == REQUESTS
        off = by_dst["192.168.77.11"]
        assert off["expect"] == "refuse" and off["refused"] == off["sent"] > 0 and off["answered"] == 0
        lo = paths(doc, kind="localhost-node-port", proto=proto)[0]
        assert lo["expect"] == "refuse" and lo["refused"] == lo["sent"] > 0


@pytest.mark.root
def test_masquerade_all(runs):
    doc = lab_json(runs, EXAMPLE, "--masquerade-all")
    pod = [p for p in paths(doc, kind="cluster-ip") if p["source"] == "cpod"][0]
    assert pod["masquerade"]["expected"] == "node" and pod["masquerade"]["observed"] == "masqueraded"
    assert set(pod["masquerade"]["peers"]) <= set(doc["node_ips"])


@pytest.mark.root
def test_nodeport_local_policy(runs):
    doc = lab_json(runs, CASES / "nodeport-local.yaml")
    assert doc["ok"]
    local = {"10.244.1.31:8080", "10.244.1.32:8080"}
    every = local | {"10.244.2.33:8080", "10.244.2.34:8080"}
    np = paths(doc, "lab/local-web:http", "node-port")[0]
    assert_answered_everywhere(np, local)  # remote endpoints never get outside traffic
    assert np["masquerade"]["peers"] == {doc["client_ip"]: REQUESTS}  # client address kept
    for p in paths(doc, "lab/local-web:http", "cluster-ip"):
        assert_answered_everywhere(p, every)
    lo = paths(doc, "lab/local-web:http", "localhost-node-port")[0]
    assert_answered_everywhere(lo, every)
    assert set(lo["masquerade"]["peers"]) <= set(doc["node_ips"])
    drop = paths(doc, "lab/remote-only:http", "node-port")[0]
    assert drop["expect"] == "drop" and drop["timeout"] == drop["sent"] > 0 and drop["answered"] == 0
    for p in paths(doc, "lab/internal-local:http", "cluster-ip"):
        assert_answered_everywhere(p, {"10.244.1.35:8080"})
    for p in paths(doc, "lab/internal-remote:tcp") + paths(doc, "lab/internal-remote:udp"):
        assert p["expect"] == "drop" and p["timeout"] == p["sent"] > 0 and p["verdict"] == "ok"


@pytest.mark.root
def test_client_ip_affinity(runs):
    doc = lab_json(runs, CASES / "affinity.yaml")
    assert doc["ok"]
    kinds = {p["kind"] for p in doc["paths"]}
    assert kinds == {"cluster-ip", "node-port", "localhost-node-port", "external-ip", "load-balancer"}
    eps = {"10.244.1.51:8080", "10.244.1.52:8080", "10.244.2.53:8080"}
    for p in doc["paths"]:
        assert p["affinity"] and p["verdict"] == "ok"
        hit = [ep for ep, n in p["endpoints"].items() if n]
        assert len(hit) == 1 and hit[0] in eps and p["endpoints"][hit[0]] == REQUESTS


@pytest.mark.root
def test_no_endpoints_rejects_and_source_ranges_drop(runs):
    doc = lab_json(runs, CASES / "no-endpoints.yaml")
    assert doc["ok"]
    empty = paths(doc, "lab/empty:tcp") + paths(doc, "lab/empty:udp")
    assert {p["kind"] for p in empty} == {"cluster-ip", "node-port", "localhost-node-port", "external-ip",
                                          "load-balancer"}
    for p in empty:
        assert p["expect"] == "reject" and p["refused"] == p["sent"] > 0 and p["answered"] == 0
    lb = paths(doc, "lab/guarded:http", "load-balancer")[0]
    assert lb["expect"] == "drop" and lb["timeout"] == lb["sent"] > 0
    np = paths(doc, "lab/guarded:http", "node-port")[0]
    assert_answered_everywhere(np, {"10.244.1.61:8080"})


def _without(c, pred) -> None:
    """Drop the nat rules matching PRED from a compile (to break it on purpose)."""
    from rulegen.dataplane.xtables.model import Ruleset, Table

    tables = []
    for t in c.ir.tables:
        if t.name == "nat":
            t = Table(t.name, t.chains, tuple(r for r in t.rules if not pred(r)), t.policies, t.deletes)
        tables.append(t)
    c.ir = Ruleset(c.ir.family, tuple(tables))
    c._text = None


@pytest.mark.root
def test_lab_notices_broken_rules(runs):
    c = compiled(EXAMPLE)
    # No masquerade for external traffic, and a first endpoint that takes 90%.
    _without(c, lambda r: r.chain.startswith("KUBE-EXT-") and "KUBE-MARK-MASQ" in r.spec)
    from rulegen.dataplane.xtables.model import Rule, Ruleset, Table

    tables = []
    for t in c.ir.tables:
        rules = tuple(Rule(r.chain, r.spec.replace("--probability 0.3333333333", "--probability 0.9000000000"))
                      for r in t.rules)
        tables.append(Table(t.name, t.chains, rules, t.policies, t.deletes))
    c.ir = Ruleset(c.ir.family, tuple(tables))
    plan = lab.build_plan(c, requests=REQUESTS)
    run_id = os.urandom(2).hex()
    runs.append(lab.PREFIX + run_id)
    rep = lab.run(c, lambda o: pytest.fail("no recompile expected"), plan, timeout=60, run_id=run_id)
    assert not rep.ok and not rep.left
    by_kind = {r.probe.kind: r for r in rep.results if r.probe.source != "node" or r.probe.kind != "cluster-ip"}
    np = by_kind["node-port"]
    assert np.masquerade == "kept" and any("node address" in p for p in np.problems)
    pod = by_kind["cluster-ip"]
    assert pod.p_value is not None and pod.p_value < lab.P_FAIL
    # Without masquerade a 127.0.0.1 source cannot leave the node: no answers, and the lab stops early.
    lo = by_kind["localhost-node-port"]
    assert lo.answered == 0 and lab.GIVE_UP <= lo.sent < REQUESTS and any("gave up" in p for p in lo.problems)
    text = lab.report_text(rep)
    assert "FAIL" in text and "problem:" in text


@pytest.mark.root
def test_refuses_existing_name_and_keeps_it(runs):
    plan = lab.build_plan(compiled(EXAMPLE), requests=5)
    run_id = "t" + os.urandom(2).hex()[:3]
    runs.append(lab.PREFIX + run_id)
    mine = f"{lab.PREFIX}{run_id}-client"
    subprocess.run(["ip", "netns", "add", mine], check=True)
    try:
        with pytest.raises(UsageError, match="already exists"):
            lab.run(compiled(EXAMPLE), lambda o: None, plan, timeout=30, run_id=run_id)
        assert os.path.exists(f"{NETNS_DIR}/{mine}")  # not ours to delete
        assert lab_namespaces() & {f"{lab.PREFIX}{run_id}-node", f"{lab.PREFIX}{run_id}-cpod"} == set()
    finally:
        subprocess.run(["ip", "netns", "del", mine], capture_output=True)
    assert not os.path.exists(f"{NETNS_DIR}/{mine}")


def many_endpoints(tmp_path: Path, n: int) -> Path:
    """A NodePort Service with N endpoints, half on this node: a lab that takes a moment to build."""
    eps = "".join(f"""  - addresses: [10.244.{1 + i % 2}.{10 + i}]
    conditions: {{ready: true}}
    nodeName: {"lab-node" if i % 2 == 0 else "other-node"}
""" for i in range(n))
    path = tmp_path / "many.yaml"
    path.write_text(f"""apiVersion: v1
kind: Service
metadata: {{name: many, namespace: lab}}
spec:
  type: NodePort
  clusterIP: 10.96.44.10
  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30450}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: many-1, namespace: lab, labels: {{kubernetes.io/service-name: many}}}}
addressType: IPv4
ports: [{{name: http, protocol: TCP, port: 8080}}]
endpoints:
{eps}---
apiVersion: v1
kind: Node
metadata: {{name: lab-node}}
spec: {{podCIDR: 10.244.1.0/24}}
status: {{addresses: [{{type: InternalIP, address: 192.168.77.10}}]}}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clusterCIDR: 10.244.0.0/16
""")
    return path


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.root
@pytest.mark.parametrize("sig,phase", [(signal.SIGINT, "sending"), (signal.SIGTERM, "sending"),
                                       (signal.SIGINT, "building")])
def test_interrupt_cleans_up(runs, tmp_path, sig, phase):
    src = many_endpoints(tmp_path, 40) if phase == "building" else CASES / "nodeport-cluster.yaml"
    # A terminal's Ctrl-C reaches a process whose SIGINT is at its default. A test runner
    # started as a background job inherits an ignored SIGINT, which the lab keeps ignored
    # (as nohup asks), so the child starts from the default, as a shell's foreground job does.
    proc = subprocess.Popen([*RULEGEN, "lab", str(src), "--requests", "5000", "--timeout", "90"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=_default_sigint)
    run = None
    try:
        t_end = time.monotonic() + 30
        while time.monotonic() < t_end:
            line = proc.stderr.readline()
            if not line:
                break
            if run is None:
                run = run_id_of(line)
                if run:
                    runs.append(run)
            if phase in line:
                break
        assert run, "the lab never said which run it is"
        if phase == "sending":
            time.sleep(0.5)
        # Wait (bounded) for the first namespace instead of sleeping a fixed time:
        # on a loaded 2-core machine a fixed 0.15 s could pass before any exists.
        deadline = time.monotonic() + 20
        while (not any(n.startswith(run + "-") for n in lab_namespaces())
               and proc.poll() is None and time.monotonic() < deadline):
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert any(n.startswith(run + "-") for n in lab_namespaces())
        if phase == "sending":
            assert lab_processes(run), "no endpoint servers running mid-run"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)  # the bound; that it stopped early is checked below
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert "interrupted" in err and "Traceback" not in err
    assert not out  # no report for an interrupted run
    if phase == "building":  # it stopped building: it never went on to send (5000 connections a path)
        assert "sending" not in err, err
    assert not any(n.startswith(run + "-") for n in lab_namespaces())
    deadline = time.monotonic() + 5
    while lab_processes(run) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not lab_processes(run)
