"""The tracer's prediction against the kernel: every path the lab probes, traced on the same rules.

For the lab fixtures (examples/web-frontend and tests/lab_cases/: NodePort
with Cluster and Local policy, ClientIP affinity, no endpoints, plus a few
settings that change the rules: masquerade-all, nodePortAddresses,
localhost NodePorts off) the lab (`rulegen.lab`, as a library) builds its
throw-away node, applies the compiled rules and sends real connections. Each
probed path (source address, destination IP:port, protocol) is then traced
with `trace_compiled` on the very rules the lab applied, from the same
source, and the two must agree:

* the verdict: answers ↔ DNAT, refused ↔ REJECT (or ACCEPT to a node
  address where nothing listens), timed out ↔ DROP;
* the endpoints that answered are exactly the trace's destinations with a
  non-zero chance (with ClientIP affinity: one endpoint, one of the trace's,
  and the trace records the affinity);
* the hit counts fit the trace's exact chances (chi-square, p >= 0.001);
* masquerade, per destination: the source each endpoint saw is the client's
  own address exactly when the trace says no MASQUERADE.

The lab's own plan (what it expects) is held to the trace as well, without
root. Namespaces are `rglab-<run>-*`, made and removed by the lab; after each
test none of this test's runs may be left.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from rulegen import lab
from rulegen.flags import SETTING_KEYS
from rulegen.pipeline import compile_files
from rulegen.trace import trace_compiled

ROOT = Path(__file__).resolve().parents[2]
LAB_CASES = Path(__file__).resolve().parents[1] / "lab_cases"
EXAMPLE = ROOT / "examples" / "web-frontend" / "cluster.yaml"
NETNS_DIR = "/run/netns"
REQUESTS = 150
LAB_TIMEOUT = 60.0

# (id, input file, settings): the four lab cases and the example as they are, and with the
# settings that change which path is captured, masqueraded or filtered.
CASES = [
    ("web-frontend", EXAMPLE, {}),
    ("web-frontend-masquerade-all", EXAMPLE, {"masquerade_all": True}),
    ("nodeport-cluster", LAB_CASES / "nodeport-cluster.yaml", {}),
    ("nodeport-cluster-nodeport-addresses", LAB_CASES / "nodeport-cluster.yaml",
     {"nodeport_addresses": "192.168.77.10/32"}),
    ("nodeport-local", LAB_CASES / "nodeport-local.yaml", {}),
    # A second node address outside nodePortAddresses: nat leaves it alone, but the filter
    # DROP of a Local NodePort without local endpoints still applies there (and on 127.0.0.1).
    ("nodeport-local-uncaptured", LAB_CASES / "nodeport-local.yaml",
     {"node_ip": ["192.168.77.10", "192.168.77.11"], "nodeport_addresses": "192.168.77.10/32"}),
    ("affinity", LAB_CASES / "affinity.yaml", {}),
    ("no-endpoints", LAB_CASES / "no-endpoints.yaml", {}),
    ("no-endpoints-localhost-off", LAB_CASES / "no-endpoints.yaml", {"localhost_nodeports": False}),
]
IDS = [c[0] for c in CASES]

# What the lab's plan expects, in the tracer's words.
PLAN_VERDICT = {"answer": "DNAT", "reject": "REJECT", "drop": "DROP", "refuse": "ACCEPT"}


def compile_case(path: Path, flags: dict):
    f = {k: None for k in SETTING_KEYS}
    f.update(flags)
    return compile_files([str(path)], f)


def pod_cidrs(c) -> tuple[str, ...]:
    return next((tuple(n.pod_cidrs) for n in c.inputs.nodes if n.name == c.settings.hostname), ())


def trace_probe(c, pr: lab.Probe):
    return trace_compiled(c, pr.src_ip, pr.dst, pr.port, pr.proto, pod_cidrs=pod_cidrs(c))


def where(pr: lab.Probe) -> str:
    return f"{pr.spn} {pr.proto} {pr.kind}: {pr.path}"


def check_entry(pr: lab.Probe, t) -> list[str]:
    """The tracer must take the lab's source for what it is in the lab."""
    want = {"client": ("PREROUTING", "outside"), "cpod": ("PREROUTING", "pod on this node"),
            "node": ("OUTPUT", "the node itself")}[pr.source]
    if t.entry.hook != want[0] or want[1] not in t.entry.who:
        return [f"{where(pr)}: the trace enters at {t.entry.hook} as {t.entry.who!r}; "
                f"the lab's {pr.source} is {want[1]!r} at {want[0]}"]
    return []


def check_plan(pr: lab.Probe, t) -> list[str]:
    """The lab's expectation (from the plan) against the trace."""
    out = check_entry(pr, t)
    if PLAN_VERDICT[pr.expect] != t.verdict:
        out.append(f"{where(pr)}: the lab expects {pr.expect} ({pr.why}), the trace says {t.verdict}")
        return out
    if t.verdict != "DNAT":
        return out
    dests = {ep for ep, p in t.shares().items() if p > 0}
    if set(pr.endpoints) != dests:
        out.append(f"{where(pr)}: the lab expects endpoints {sorted(pr.endpoints)}, the trace {sorted(dests)}")
    shares = t.shares()
    if not pr.affinity and any(p != Fraction(1, len(dests)) for p in shares.values()):
        out.append(f"{where(pr)}: the lab expects equal shares, the trace {dict(shares)}")
    traced_affinity = any(d.affinity for d in t.destinations)
    if pr.affinity != traced_affinity:
        out.append(f"{where(pr)}: affinity in the lab's plan {pr.affinity}, in the trace {traced_affinity}")
    masq = {d.masquerade for d in t.destinations}
    want = {"client": {False}, "node": {True}}.get(pr.masq)
    if want is not None and masq != want:
        out.append(f"{where(pr)}: the lab expects masquerade {pr.masq!r}, the trace says {sorted(masq)}")
    return out


def observed(r: lab.PathResult) -> str:
    """What the kernel did with the path's connections, in one word (or a description of a mix)."""
    failed = r.refused + r.timeouts + r.dropped_local + sum(r.errors.values())
    if r.sent == 0:
        return "nothing sent"
    if r.answered == r.sent and not failed:
        return "answered"
    if r.refused == r.sent:
        return "refused"
    if r.timeouts + r.dropped_local == r.sent:
        return "dropped"
    return (f"mixed ({r.answered} answered, {r.refused} refused, {r.timeouts + r.dropped_local} timed out, "
            f"errors {r.errors})")


def expected_observation(t, node_ips: tuple[str, ...]) -> str:
    if len(t.outcomes) != 1:
        return f"a mix of {dict(t.outcomes)}"  # the lab's paths never split between verdicts
    if t.verdict == "DNAT":
        return "answered"
    if t.verdict == "REJECT":
        return "refused"
    if t.verdict == "DROP":
        return "dropped"
    if t.verdict == "ACCEPT" and (t.packet.dst in node_ips or t.packet.dst.startswith("127.")):
        return "refused"  # delivered, un-NATed, to a node port nothing listens on
    return f"verdict {t.verdict} to {t.packet.dst} (not comparable)"


def check_kernel(pr: lab.Probe, r: lab.PathResult, t, node_ips: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The lab's observation against the trace: (disagreements, chi-square-only disagreements)."""
    bad: list[str] = []
    chance: list[str] = []
    seen = observed(r)
    want = expected_observation(t, node_ips)
    if r.sent != pr.count:
        bad.append(f"{where(pr)}: {r.sent} of {pr.count} connections sent")
    if seen != want:
        bad.append(f"{where(pr)}: the kernel {seen}, the trace predicts {want} ({t.verdict})")
        return bad, chance
    if t.verdict != "DNAT":
        return bad, chance

    shares = {ep: p for ep, p in t.shares().items() if p > 0}
    answering = {ep for ep, n in r.hits.items() if n}
    if any(d.affinity for d in t.destinations):
        if len(answering) != 1 or not answering <= set(shares):
            bad.append(f"{where(pr)}: with ClientIP affinity one of {sorted(shares)} should answer every "
                       f"connection; answered: {dict(r.hits)}")
    else:
        if answering != set(shares):
            bad.append(f"{where(pr)}: endpoints that answered {sorted(answering)} != the trace's "
                       f"destinations {sorted(shares)}")
        eps = sorted(shares)
        p = lab.chi_square_p([r.hits.get(ep, 0) for ep in eps], [float(shares[ep]) for ep in eps])
        if len(eps) >= 2:
            if p is None:
                bad.append(f"{where(pr)}: no chi-square test possible on {dict(r.hits)}")
            elif p < lab.P_FAIL:
                chance.append(f"{where(pr)}: hits {dict(r.hits)} do not fit the trace's chances "
                              f"{ {ep: str(s) for ep, s in shares.items()} } (chi-square p={p:.2g})")

    # Masquerade, per destination. The lab's node sends from its primary address, which is also
    # what MASQUERADE picks there, so for node sources only "a node address" can be checked.
    masq_of: dict[str, set[bool]] = {}
    for d in t.destinations:
        masq_of.setdefault(d.endpoint, set()).add(d.masquerade)
    for ep, peers in sorted(r.peers_by_endpoint.items()):
        flags = masq_of.get(ep)
        if flags is None:
            continue  # already reported as an endpoint the trace does not predict
        srcs = set(peers)
        kept = srcs == {pr.src_ip}
        masqueraded = pr.src_ip not in srcs and srcs <= set(node_ips)
        if pr.src_ip in node_ips:
            ok = srcs <= set(node_ips)
        elif flags == {True}:
            ok = masqueraded
        elif flags == {False}:
            ok = kept
        else:
            ok = srcs <= {pr.src_ip, *node_ips}
        if not ok:
            bad.append(f"{where(pr)}: {ep} saw sources {sorted(srcs)}; the trace says masquerade "
                       f"{'/'.join(map(str, sorted(flags)))} (client {pr.src_ip}, node {', '.join(node_ips)})")
    return bad, chance


# ---------------------------------------------------------------------- the plan (no root)


@pytest.mark.parametrize("name,path,flags", CASES, ids=IDS)
def test_lab_plan_agrees_with_trace(name, path, flags):
    c = compile_case(path, flags)
    plan = lab.build_plan(c, requests=REQUESTS)
    assert plan.probes
    problems = [msg for pr in plan.probes for msg in check_plan(pr, trace_probe(c, pr))]
    assert not problems, "\n".join(problems)


def probe_of(plan: lab.LabPlan, spn: str, kind: str, dst: str) -> lab.Probe:
    found = [p for p in plan.probes if p.spn == spn and p.kind == kind and p.dst == dst]
    assert len(found) == 1, found
    return found[0]


def test_uncaptured_nodeport_still_meets_the_filter_rules():
    # nat captures neither 192.168.77.11 (outside nodePortAddresses) nor 127.0.0.1 (localhost
    # NodePorts then off), but filter KUBE-EXTERNAL-SERVICES matches every LOCAL address.
    c = compile_case(LAB_CASES / "nodeport-local.yaml", dict(CASES[5][2]))
    plan = lab.build_plan(c, requests=10)
    assert probe_of(plan, "lab/remote-only:http", "node-port", "192.168.77.11").expect == "drop"
    assert probe_of(plan, "lab/remote-only:http", "localhost-node-port", "127.0.0.1").expect == "drop"
    assert probe_of(plan, "lab/local-web:http", "node-port", "192.168.77.11").expect == "refuse"
    assert probe_of(plan, "lab/local-web:http", "node-port", "192.168.77.10").expect == "answer"
    c = compile_case(LAB_CASES / "no-endpoints.yaml", {"localhost_nodeports": False})
    plan = lab.build_plan(c, requests=10)
    assert probe_of(plan, "lab/empty:tcp", "localhost-node-port", "127.0.0.1").expect == "reject"
    assert probe_of(plan, "lab/guarded:http", "localhost-node-port", "127.0.0.1").expect == "refuse"


# ---------------------------------------------------------------------- the kernel (root)


def lab_namespaces(run: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(run + "-"))
    except FileNotFoundError:
        return []


@pytest.fixture
def runs():
    """Run names this test started; none of their namespaces may outlive it."""
    for tool in ("ip", "iptables", "iptables-restore", "iptables-save"):
        if not shutil.which(tool):
            pytest.skip(f"the lab needs {tool}, which is not installed")
    started: list[str] = []
    yield started
    stray = [n for r in started for n in lab_namespaces(r)]
    for n in stray:
        subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)
    assert not stray, f"lab left namespaces behind: {stray}"


def run_lab(path: Path, flags: dict, runs: list[str]):
    """One lab run; returns the report and the compile the lab really applied."""
    applied = [compile_case(path, flags)]

    def recompile(override: dict):
        applied.append(compile_case(path, {**flags, **override}))  # e.g. no nfacct in this kernel
        return applied[-1]

    plan = lab.build_plan(applied[0], requests=REQUESTS)
    run_id = secrets.token_hex(2)
    runs.append(lab.PREFIX + run_id)
    rep = lab.run(applied[0], recompile, plan, timeout=LAB_TIMEOUT, run_id=run_id)
    assert not rep.left, f"the lab could not delete {rep.left}"
    return rep, applied[-1]


@pytest.mark.root
@pytest.mark.parametrize("name,path,flags", CASES, ids=IDS)
def test_kernel_agrees_with_trace(runs, name, path, flags):
    # A fair split fails p < 0.001 once in a thousand paths: a run whose only disagreements are
    # chi-square ones is repeated once; a real bias fails both times.
    for attempt in (1, 2):
        rep, c = run_lab(path, flags, runs)
        node_ips = rep.plan.node_ips
        bad: list[str] = []
        chance: list[str] = []
        compared = 0
        for r in rep.results:
            t = trace_probe(c, r.probe)
            bad += check_entry(r.probe, t)
            b, ch = check_kernel(r.probe, r, t, node_ips)
            bad += b
            chance += ch
            compared += 1
        # The lab's own judgement (its plan against the kernel) counts as chance only for its
        # equal-split test; the plan itself is held to the trace without root above.
        lab_bad = [f"{where(r.probe)}: lab: {p}" for r in rep.results for p in r.problems
                   if not p.startswith("shares differ")]
        lab_chance = [f"{where(r.probe)}: lab: {p}" for r in rep.results for p in r.problems
                      if p.startswith("shares differ")]
        if attempt == 1 and not bad and not lab_bad and (chance or lab_chance):
            continue
        break
    assert compared == len(rep.plan.probes) > 0
    problems = bad + lab_bad + chance + lab_chance
    assert not problems, "\n".join(problems)
