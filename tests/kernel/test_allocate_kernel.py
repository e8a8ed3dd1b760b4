"""`--allocate` on real kernels (root): the lab's real traffic reaches the synthesized pods; apply and diff agree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nshelp import namespace_names
from test_lab import lab_json, runs  # noqa: F401  (runs: the fixture that checks lab namespaces are gone)

from rulegen.diagnostics import Report
from rulegen.pipeline import compile_files

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "examples" / "helm-rendered"
RULEGEN = [sys.executable, "-c", "import sys; from rulegen.cli import main; sys.exit(main())"]


def allocated(path: str):
    report = Report()
    return compile_files([path], {"allocate": True}, report), report


def svc_by_name(c, name: str, ns: str = "default"):
    return next(s for s in c.inputs.services if s.name == name and s.namespace == ns)


def slices_of(c, name: str, ns: str = "default"):
    return [sl for sl in c.inputs.slices if sl.service_name == name and sl.namespace == ns]




@pytest.mark.root
def test_lab_sends_real_traffic_to_the_synthesized_pods(runs):
    c, _ = allocated(str(HELM))
    frontend = {f"{e.ip}:8080" for sl in slices_of(c, "demo-shop-frontend") for e in sl.endpoints}
    (agent,) = [f"{e.ip}:9100" for sl in slices_of(c, "demo-shop-agent") for e in sl.endpoints]
    doc = lab_json(runs, HELM, "--allocate", "--service", "default/demo-shop-frontend",
                   "--service", "default/demo-shop-agent")
    assert doc["ok"] and doc["hostname"] == "node-1"
    by = {(p["service_port"], p["kind"], p["source"]): p for p in doc["paths"]}
    kinds = {k[1] for k in by if k[0] == "default/demo-shop-frontend:http"}
    assert kinds == {"cluster-ip", "node-port", "localhost-node-port"}
    for (spn, kind, _), p in by.items():
        assert p["verdict"] == "ok" and p["answered"] == p["sent"] > 0, p
        if spn == "default/demo-shop-frontend:http":
            # All three replicas answered, each expected a third of the connections.
            assert set(p["endpoints"]) == frontend and len(frontend) == 3
            assert p["expected_shares"] == {ep: pytest.approx(1 / 3) for ep in frontend}
            assert all(n > 0 for n in p["endpoints"].values())
        else:
            assert p["endpoints"] == {agent: p["sent"]}


@pytest.mark.root
def test_apply_loads_the_allocated_rules_and_diff_agrees(tmp_path):
    env = dict(os.environ, RULEGEN_STATE_DIR=str(tmp_path / "state"))
    exe = [*RULEGEN, "apply", str(HELM), "--allocate"]
    with namespace_names("rgt-alloc") as name:
        ns = name()
        cp = subprocess.run([*exe, "--netns", ns, "--create"], capture_output=True, text=True, env=env, timeout=120)
        assert cp.returncode == 0, cp.stderr
        c, _ = allocated(str(HELM))
        live = subprocess.run(["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"], capture_output=True,
                              text=True, check=True).stdout
        assert svc_by_name(c, "demo-shop-frontend").cluster_ip in live and "10.244.0.5:8080" in live
        cp = subprocess.run([*RULEGEN, "diff", str(HELM), "--allocate", "--netns", ns], capture_output=True,
                            text=True, env=env, timeout=120)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        cp = subprocess.run([*exe, "--netns", ns], capture_output=True, text=True, env=env, timeout=120)
        assert cp.returncode == 0 and "sent 0 lines" in cp.stdout, cp.stdout + cp.stderr


