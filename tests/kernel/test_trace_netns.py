"""The tracer on what the kernel really holds: each case with a behaviour table is compiled,
loaded into a throw-away network namespace (iptables-restore plus kube-proxy's jump rules, inserted
the way kube-proxy inserts them), dumped with iptables-save, and the dump traced with `--rules`
logic must give the same answer as the compiled rules: verdict, destinations with their exact
chances, masquerade. Namespaces are named rgt-trace-* and always deleted."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from rulegen import golden
from rulegen.backends.iptables.compile import jump_rules
from rulegen.backends.iptables.trace import trace_ruleset
from rulegen.dataplane.xtables.model import BUILTIN_CHAINS
from rulegen.dataplane.xtables.parse import parse
from rulegen.dataplane.xtables.spec import canonical
from rulegen.dataplane.xtables.walk import Rules
from rulegen.pipeline import compile_files
from rulegen.trace import trace_compiled
from rulegen.trace.tables import TABLE_FILE, load_table, problems

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted(d for r in (ROOT / "fixtures", ROOT / "tests" / "trace_cases") if r.is_dir()
               for d in r.iterdir() if (d / TABLE_FILE).is_file())
TOOLS = {4: ("iptables", "iptables-restore", "iptables-save"), 6: ("ip6tables", "ip6tables-restore", "ip6tables-save")}


def in_ns(ns: str, *cmd: str, input: str | None = None) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *cmd], input=input, text=True, capture_output=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {ns} failed: {r.stderr.strip()}")
    return r.stdout


@pytest.fixture
def netns():
    name = f"rgt-trace-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def summary(res):
    return (res.verdict, res.shares(), res.masquerade,
            sorted((d.endpoint, d.masquerade, d.probability) for d in res.destinations))


@pytest.mark.parametrize("case_dir", CASES, ids=[d.name for d in CASES])
def test_trace_of_the_kernel_dump_agrees_with_the_compiled_rules(netns, case_dir):
    case = golden.load_case(case_dir)
    flags, config = golden.case_flags(case)
    flags["nfacct"] = False  # the namespace has no nfacct counters; the rules mean the same without them
    flags["mode"] = "iptables"  # the tables' `expect` is iptables mode's
    c = compile_files([str(p) for p in case.inputs], flags, None, config)
    fam = c.settings.family
    ipt, restore, save = TOOLS[fam]
    if not shutil.which(restore):
        pytest.skip(f"{restore} not installed")
    in_ns(netns, restore, "--noflush", input=c.text)
    for table, chain, spec in jump_rules(c.settings):
        in_ns(netns, ipt, "-t", table, "-I", chain, *shlex.split(spec))
    dump = in_ns(netns, save)
    assert "-A PREROUTING" in dump and "KUBE-SERVICES" in dump
    saved = parse(dump, f"{save} of {netns}", fam)
    # The tracer's idea of the built-in chains (jumps inserted at position 1, in list order) is the kernel's.
    mine = Rules.of(c.ir, "compiled", jump_rules(c.settings)).chains
    real = Rules.of(saved, "dump").chains
    for table in ("filter", "nat"):
        for chain in BUILTIN_CHAINS[table]:
            assert [canonical(s) for s in mine[table][chain]] == [canonical(s) for s in real[table][chain]], chain
    pods = next((tuple(n.pod_cidrs) for n in c.inputs.nodes if n.name == c.settings.hostname), ())
    for chk in filter(None, (c_.for_mode("iptables") for c_ in load_table(case_dir / TABLE_FILE))):
        ip, port = chk.dst_parts()
        want = trace_compiled(c, chk.src, ip, port, chk.proto, in_iface=chk.in_iface, pod_cidrs=pods)
        got = trace_ruleset(saved, c.settings, chk.src, ip, port, chk.proto, plan=c.plan, in_iface=chk.in_iface,
                            pod_cidrs=pods, source="dump")
        assert not any("standard jumps" in n for n in got.notes)  # the dump's own jumps were used
        assert summary(got) == summary(want), f"{case_dir.name}: {chk.name}"
        assert problems(got, chk) == [], f"{case_dir.name}: {chk.name}"
