"""IPVS mode's tracer on what the kernel really holds: each IPVS case with a behaviour table has its
ipsets restored and its iptables glue loaded (with kube-proxy's IPVS-mode jumps, inserted as kube-proxy
inserts them) into a throw-away network namespace; `ipset save` and `iptables-save` of it, with the
compile's ipvsadm text (this kernel may have no ip_vs to hold the virtual servers), must trace as the
compile does. So the set matches are read in the kernel's own spelling. Namespaces are named
rgt-ipvstr-* and always deleted."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from rulegen import golden
from rulegen.backends.ipvs import render
from rulegen.backends.ipvs.compile import JUMP_RULES
from rulegen.backends.ipvs.parse import parse_parts
from rulegen.backends.ipvs.trace import trace_state
from rulegen.pipeline import compile_files
from rulegen.trace import trace_compiled
from rulegen.trace.tables import TABLE_FILE, load_table, problems

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted(d for d in (ROOT / "fixtures").iterdir()
               if (d / TABLE_FILE).is_file() and (d / "expected.ipvs").is_file())
TOOLS = {4: ("iptables", "iptables-restore", "iptables-save"), 6: ("ip6tables", "ip6tables-restore", "ip6tables-save")}


def in_ns(ns: str, *cmd: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", "netns", "exec", ns, *cmd], input=input, text=True, capture_output=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {ns} failed: {r.stderr.strip()}")
    return r


@pytest.fixture
def netns():
    name = f"rgt-ipvstr-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def summary(res):
    return (res.verdict, res.shares(), res.masquerade, res.outcomes,
            sorted((d.endpoint, d.masquerade, str(d.probability), d.affinity) for d in res.destinations))


@pytest.mark.parametrize("case_dir", CASES, ids=[d.name for d in CASES])
def test_trace_of_the_kernel_dumps_agrees_with_the_compile(netns, case_dir):
    if not shutil.which("ipset"):
        pytest.skip("ipset not installed")
    case = golden.load_case(case_dir)
    flags, config = golden.case_flags(case)
    flags["mode"] = "ipvs"
    c = compile_files([str(p) for p in case.inputs], flags, None, config)
    fam = c.ir.family
    ipt, restore, save = TOOLS[fam]
    in_ns(netns, "ipset", "restore", input=render.ipset(c.ir))
    glue = render.iptables(c.ir)
    # Without ip_vs the kernel has no xt_ipvs either: the glue's `-m ipvs` rules (KUBE-IPVS-OUT-FILTER)
    # cannot be loaded. They are left out of the load and put back, as compiled, into the dump.
    held = [ln for ln in glue.splitlines() if " -m ipvs " in ln]
    r = in_ns(netns, restore, "--noflush", input=glue, check=False)
    if r.returncode != 0:
        assert held and "ipvs" in r.stderr, r.stderr
        in_ns(netns, restore, "--noflush", input="".join(ln + "\n" for ln in glue.splitlines() if ln not in held))
    else:
        held = []
    for table, chain, spec in JUMP_RULES:
        in_ns(netns, ipt, "-t", table, "-I", chain, *shlex.split(spec))
    sets, rules = in_ns(netns, "ipset", "save").stdout, in_ns(netns, save).stdout
    if held:
        start = rules.index("*filter\n")
        end = rules.index("COMMIT\n", start)
        rules = rules[:end] + "".join(ln + "\n" for ln in held) + rules[end:]
    assert "bucketsize" in sets and "--match-set" in rules  # the kernel's own spelling
    state = parse_parts(render.ipvsadm(c.ir), sets, rules, fam)
    pods = next((tuple(n.pod_cidrs) for n in c.inputs.nodes if n.name == c.settings.hostname), ())
    for chk in filter(None, (x.for_mode("ipvs") for x in load_table(case_dir / TABLE_FILE))):
        ip, port = chk.dst_parts()
        want = trace_compiled(c, chk.src, ip, port, chk.proto, in_iface=chk.in_iface, pod_cidrs=pods)
        got = trace_state(state, c.settings, chk.src, ip, port, chk.proto, plan=c.plan, in_iface=chk.in_iface,
                          pod_cidrs=pods, source="dump")
        assert not any("assumed" in n for n in got.notes)  # the dump's own jumps were used
        assert summary(got) == summary(want), f"{case_dir.name}: {chk.name}"
        assert problems(got, chk) == [], f"{case_dir.name}: {chk.name}"
