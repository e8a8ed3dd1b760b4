"""Inside the IPVS VM: IPVS mode's diff view and tracer on a namespace that really holds a compile.

The compile's virtual servers are programmed over netlink, its sets restored, kube-ipvs0 made with its
addresses and the glue loaded with kube-proxy's jumps (`-m ipvs` included: this kernel has xt_ipvs).
Read back live (the IPVS table, `ipset save`, kube-ipvs0, `iptables-save`) it must diff empty against the
compile, a real server changed in the kernel must show, and the live state must trace as the compile.
Both tests read one namespace, loaded once (a module fixture: the load is a dozen programs started under
emulation); the test that changes a real server puts it back.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from nshelp import namespace_names

from rulegen import golden
from rulegen.apply.kernel import Kernel
from rulegen.backends.ipvs import render
from rulegen.backends.ipvs.compile import JUMP_RULES
from rulegen.backends.ipvs.trace import trace_state
from rulegen.backends.ipvs.views import VIEW
from rulegen.dataplane import ipvs as dipvs
from rulegen.dataplane.links import RealLinks
from rulegen.diff import compare, render_text
from rulegen.pipeline import compile_files
from rulegen.trace import trace_compiled
from rulegen.trace.tables import TABLE_FILE, load_table

pytestmark = [pytest.mark.ipvs_kernel, pytest.mark.root]

ROOT = Path(__file__).resolve().parents[2]
CASE = ROOT / "fixtures" / "ipvs-lb-source-range-any"  # its glue has KUBE-IPVS-OUT-FILTER's -m ipvs rule


def _ns(name: str, *cmd: str, input: str | None = None) -> str:
    r = subprocess.run(["ip", "netns", "exec", name, *cmd], input=input, text=True, capture_output=True, timeout=60)
    assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
    return r.stdout


def _load(ns: str, c) -> None:
    client = dipvs.RealIPVS(ns)
    dipvs.load_table(client, c.ir.virtual_servers)  # the IR's records are the client's
    _ns(ns, "ipset", "restore", input=render.ipset(c.ir))
    _ns(ns, "iptables-restore", "--noflush", input=render.iptables(c.ir))
    for table, chain, spec in JUMP_RULES:
        _ns(ns, "iptables", "-t", table, "-I", chain, *shlex.split(spec))
    links = RealLinks(ns)
    links.ensure_dummy()
    for a in c.ir.bound:
        links.add_address("kube-ipvs0", a)


@pytest.fixture(scope="module")
def loaded():
    """(namespace, compile) of the case with its own flags, loaded once for this module's tests."""
    case = golden.load_case(CASE)
    flags, config = golden.case_flags(case)
    flags["mode"] = "ipvs"
    c = compile_files([str(p) for p in case.inputs], flags, None, config)
    with namespace_names("rgvm-views") as name:
        ns = name()
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True)
        _load(ns, c)
        yield ns, c


def test_a_live_namespace_diffs_empty_and_shows_a_changed_real_server(loaded):
    ns, c = loaded
    live, name = VIEW.live(Kernel.real(), ns, 4)
    compiled = VIEW.with_outside(c.ir, c.settings)
    res = compare(VIEW.side(live, name, True), VIEW.side(compiled, "compiled", True))
    assert res.empty, render_text(res)
    assert " -m ipvs " in _ns(ns, "iptables-save")  # the rule the host could not load is here
    vs = c.ir.virtual_servers[0]
    rs = vs.reals[0]
    client = dipvs.RealIPVS(ns)
    client.update_real_server(vs, dipvs.RealServer(rs.address, rs.port, 0))
    try:
        live, name = VIEW.live(Kernel.real(), ns, 4)
        res = compare(VIEW.side(live, name, True), VIEW.side(compiled, "compiled", True))
        assert [(d.kind, d.name) for d in res.containers] == [("virtual server", f"TCP {vs.address}:{vs.port}")]
        assert "(weight 0) removed from" in render_text(res)
    finally:
        client.update_real_server(vs, dipvs.RealServer(rs.address, rs.port, rs.weight))


def test_the_live_state_traces_as_the_compile(loaded):
    ns, c = loaded
    live, name = VIEW.live(Kernel.real(), ns, 4)
    res = compare(VIEW.side(live, name, True), VIEW.side(VIEW.with_outside(c.ir, c.settings), "compiled", True))
    assert res.empty, render_text(res)  # as loaded (whichever test ran first)
    pods = next((tuple(n.pod_cidrs) for n in c.inputs.nodes if n.name == c.settings.hostname), ())
    checks = [x.for_mode("ipvs") for x in load_table(CASE / TABLE_FILE)]
    assert any("IPVS-OUT-FILTER" in (x.why("ipvs") or "") for x in load_table(CASE / TABLE_FILE))
    for chk in filter(None, checks):
        ip, port = chk.dst_parts()
        want = trace_compiled(c, chk.src, ip, port, chk.proto, pod_cidrs=pods)
        got = trace_state(live, c.settings, chk.src, ip, port, chk.proto, plan=c.plan, pod_cidrs=pods)
        assert (got.verdict, got.shares(), got.masquerade) == (want.verdict, want.shares(), want.masquerade), chk.name
