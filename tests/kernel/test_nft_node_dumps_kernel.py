"""Whole-node nftables dumps against the kernel: the committed dumps are what it prints, and real traffic agrees.

* tests/node_dumps/nft-<variant>/ruleset.nft (and the RG91x lint fixtures'
  node.nft) are rebuilt in a fresh namespace (tests/nftnode.py: a compile in
  nftables mode, then firewalld's, Docker's or a server's tables) and must
  equal the committed files.
* For each variant the lab (`rulegen.lab` as a library, nftables mode)
  builds its throw-away node and applies the compile, tests/nftnode.py adds
  the variant's tables (written for the lab's interfaces), real connections
  are sent on every path the lab plans, and the namespace's own
  `nft list ruleset` is traced for each path from the same source on the
  same interface: the kernel's outcome (answered, refused, dropped) and the
  endpoints that answered must be the trace's. The server firewall's
  forward policy drop and a guard's raw-priority drop shadow NodePorts (the
  trace must say DROP and name the policy or rule), and a DNAT in a nat
  chain before kube-proxy's takes one (kube-proxy's nat chain is then not
  consulted: the kernel's connections must reach the foreign DNAT's pod).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import pytest

from rulegen import lab

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
import nftnode as N  # noqa: E402
from test_node_dumps_kernel import agree  # noqa: E402

pytestmark = pytest.mark.root
REQUESTS = 12  # few: the lab's time budget must cover the paths a foreign rule drops (each one times out)
LAB_TIMEOUT = 90.0
SHADOWED = {"server-filter": ("DROP", "DROP by the policy of inet filter chain forward (hook forward, priority 0)"),
            "guard-drop": ("DROP", "DROP by inet guard chain prerouting rule 1, outside kube-proxy's table"),
            "nat-first": ("DNAT", "DNAT by ip natfirst chain prerouting rule 1, outside kube-proxy's table: "
                                  "192.168.77.10:30090 → 10.244.1.21:8080; kube-proxy's nat chain on this hook is "
                                  "not consulted"),
            "notrack": ("ACCEPT", "NOTRACK by inet raw chain prerouting rule 1, outside kube-proxy's table")}


def _need_root():
    if os.geteuid() != 0 or not shutil.which("nft"):
        pytest.skip("needs root and nft")


@pytest.mark.parametrize("v", N.VARIANTS, ids=[v.name for v in N.VARIANTS])
def test_the_committed_nft_dumps_are_what_the_kernel_prints(v):
    _need_root()
    text = N.make(v, f"rgt-nodenft-{secrets.token_hex(3)}")
    assert text == (v.dir / "ruleset.nft").read_text(), f"rewrite with `python {N.__file__}` (root)"


@pytest.mark.parametrize("name", sorted(N.LINT_FIXTURES))
def test_the_nft_lint_fixture_dumps_are_what_the_kernel_prints(name):
    _need_root()
    d = N.LINT_DIR / name
    text = N.make(N.LINT_FIXTURES[name], f"rgt-nodenft-{secrets.token_hex(3)}", N.BRIDGE, d / "input.yaml")
    assert text == (d / "node.nft").read_text(), f"rewrite with `python {N.__file__}` (root)"


def _routes(plan: lab.LabPlan) -> tuple[tuple[str, str], ...]:
    local = tuple((f"{x.ip}/32", f"rgp{x.index}") for x in plan.pods if x.where == "local")
    remote = tuple((f"{x.ip}/32", "rgfar") for x in plan.pods if x.where == "remote")
    return local + ((f"{plan.cpod_ip}/32", "rgcp"),) + remote


@pytest.mark.parametrize("v", N.VARIANTS, ids=[v.name for v in N.VARIANTS])
def test_real_traffic_through_an_nft_node_dump_agrees_with_its_trace(v, tmp_path):
    _need_root()
    from rulegen.backends.nftables.dump import read_text
    from rulegen.backends.nftables.trace import trace_saved

    c = N.compile_cluster()
    plan = lab.build_plan(c, requests=REQUESTS)
    node = lab.Lab(plan, run_id=secrets.token_hex(2), deadline=time.time() + LAB_TIMEOUT)
    try:
        node.build()
        node.apply_rules(c)
        N.install(node.node, v, N.Ifaces("rgcli", "rgp*"))
        node.start_servers()
        raw = node.run_probes()
        text = N.listed(node.node, v.handles)
    finally:
        left = node.close()
    assert not left, f"the lab could not delete {left}"
    (tmp_path / "ruleset.nft").write_text(text)
    dump = read_text(text, str(tmp_path / "ruleset.nft"))
    assert dump.foreign, "the variant's tables are in the listing"
    routes = _routes(plan)
    bad: list[str] = []
    seen_shadow = False
    for pr in plan.probes:
        r = lab.judge(pr, raw.get(pr.key, {}), plan.node_ips)
        in_iface = {"client": "rgcli", "cpod": "rgcp"}.get(pr.source)
        t = trace_saved(dump, c.settings, pr.src_ip, pr.dst, pr.port, pr.proto, plan=c.plan, source="ruleset",
                        in_iface=in_iface, out_iface="rgcli", routes=routes, pod_cidrs=c.settings.node_pod_cidrs)
        assert not t.assumed, f"{pr.path}: {t.assumptions()}"
        bad += agree(pr, r, t, plan)
        verdict, want = SHADOWED.get(v.name, ("", ""))
        if want and pr.kind == "node-port" and pr.source == "client" and any(n.startswith(want) for n in t.notes):
            assert t.verdict == verdict, (pr.path, t.verdict)
            seen_shadow = True
    assert not bad, "\n".join(bad)
    assert seen_shadow or v.name not in SHADOWED, f"{v.name}: no path showed the foreign policy's DROP"
