"""`rulegen explain` in every mode the registry can trace, and a clear refusal in the others.

explain reaches a mode only through the registry's tracer hook and the
neutral `TraceResult`, so a mode whose tracer lands (nftables) is drawn,
and tested here, with no change: the tests are parametrized over the
registry's modes with a tracer, and a test holds that list to the
registry's (iptables and IPVS at least), so no mode drops out unseen. A
mode without a tracer is tested too: explain refuses it with exit 2 and
the modes that have one. What a mode's page must show is read from its
own traces (the chains on its paths, its shares), plus what every mode
shares with kube-proxy's iptables mode for the classic NodePort (three
endpoints, a third each, masquerade for outside clients), and the
differences kube-proxy documents between modes for `--compare`.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest
from explainhelp import parse_page

from rulegen import backends
from rulegen.backends.base import Backend
from rulegen.explain import graph as G
from rulegen.explain import page
from rulegen.trace.compare import compare_outcomes

ROOT = Path(__file__).resolve().parents[2]
WEB = str(ROOT / "examples" / "web-frontend")
TESTED = ("iptables", "ipvs", "nftables")  # every mode rulegen has; each is tested below, drawn or refused


def traced(mode: str) -> bool:
    return backends.get(mode).tracer() is not None


DRAWN = [m for m in TESTED if traced(m)]
REFUSED = [m for m in TESTED if not traced(m)]


def test_the_modes_tested_are_the_registrys():
    assert set(TESTED) == set(backends.modes())
    assert set(DRAWN) == {m for m in backends.modes() if traced(m)}
    assert {"iptables", "ipvs"} <= set(DRAWN)  # their tracers are merged: a page in each is tested


class _Untraced(Backend):
    """A mode that compiles but has no tracer: always there, so the refusal is tested once every real mode has one."""

    mode = "untraced"

    def compile(self, plan, settings):
        return []


@pytest.fixture
def untraced():
    backends.register("untraced", _Untraced())
    try:
        yield "untraced"
    finally:
        backends.unregister("untraced")


def test_a_mode_without_a_tracer_is_refused_naming_those_with_one(untraced, cli, tmp_path):
    out = tmp_path / "page.html"
    for mode in REFUSED + [untraced]:
        r = cli("explain", WEB, "--mode", mode, "-o", str(out))
        assert r.exit_code == 2 and f"--mode {mode}: trace is not implemented yet (implemented for: " in r.output
        assert all(m in r.output.split("implemented for: ", 1)[1] for m in DRAWN) and not out.exists()
        r = cli("explain", WEB, "--compare", mode, "-o", str(out))
        assert r.exit_code == 2 and f"--mode {mode}: trace is not implemented yet" in r.output, mode


@pytest.mark.parametrize("mode", DRAWN)
def test_the_example_page_in_the_mode(mode, cli, tmp_path):
    out = tmp_path / "page.html"
    r = cli("explain", WEB, "--mode", mode, "-o", str(out))
    assert r.exit_code == 0, r.output
    p = parse_page(out.read_text())
    d = p.sections[0].diagrams[0]
    run = page.run([WEB], {"mode": mode})
    for o in run.outcomes[0]:
        assert o.result is not None, o.error
    labels = d.labels("rg-label")
    for e in run.ports[0].endpoints:
        assert e.ep in labels
    # Every chain a connection is handed down in this mode is drawn, named in full in its title.
    titles = "\n".join(g["title"] or "" for g in d.groups)
    spines = {c for o in run.outcomes[0] for pth in o.result.paths
              for _, c in G.path_shape(pth, o.result.base_chains).spine}
    assert spines
    for chain in spines:
        assert f"chain {chain}" in titles, chain
    # A balancer outside the rules (IPVS) is drawn where it chooses, one node per virtual server.
    balancers = {h.rule.split(": ")[0] for o in run.outcomes[0] for pth in o.result.paths for h in pth.hops
                 if h.kind == "balance"}
    assert balancers or mode != "ipvs"  # IPVS always chooses outside the rules
    for what in balancers:
        assert f"{what} chooses the endpoint" in titles, what
        vs = what.split("virtual server ", 1)[1].split(" (")[0]  # its edges say which one
        assert any(f" {vs} → " in t for t in titles.splitlines()), vs
    # Every share the graph computes is written on its edge.
    g = G.build(run.outcomes[0], run.ports[0])
    shares = [e.label for e in g.edge_list() if e.label and "%" in e.label]
    assert shares and all(s in d.labels("rg-elabel") for s in shares)
    by = {(o.scenario.client.kind, o.scenario.entry.kind): o.result for o in run.outcomes[0]}
    outside = by[("outside", "node-port")]
    assert outside.shares() == {ep.ep: Fraction(1, 3) for ep in run.ports[0].endpoints}
    assert all(x.masquerade for x in outside.destinations)  # externalTrafficPolicy Cluster
    assert "MASQ" in d.labels("rg-elabel") and "node node-b" in labels
    # Each masqueraded edge names the rule that rewrote the source, in its mode's own words.
    masq = [g["title"] for g in d.groups if "rg-masq" in g["attrs"].get("class", "").split()]
    assert masq and all(re.search(r"the endpoint sees the node's address \((MASQUERADE|SNAT) in ", t) for t in masq)


@pytest.mark.parametrize("mode", [m for m in DRAWN if m != backends.DEFAULT_MODE])
def test_compare_with_iptables_marks_what_kube_proxy_does_differently(mode, cli, tmp_path):
    out = tmp_path / "compare.html"
    r = cli("explain", WEB, "--compare", mode, "-o", str(out))
    assert r.exit_code == 0, r.output
    p = parse_page(out.read_text())
    (sec,) = p.sections
    assert len(sec.diagrams) == 2
    run = page.run([WEB], {}, compare=mode)
    diffs = compare_outcomes(run.outcomes[0], run.outcomes[1])
    marked = [row["cells"][:2] for row in sec.rows if row["class"] == "differs"]
    assert len(marked) == len(diffs)
    kinds = {(k[1], k[2]) for k in diffs}
    if not backends.get(mode).localhost_nodeports:
        # Only iptables mode answers NodePorts on 127.0.0.1 (route_localnet).
        assert ("localhost", "localhost-node-port") in kinds
        assert ["localhost 127.0.0.1", "NodePort on localhost 127.0.0.1:30080 TCP"] in marked
    if mode == "nftables":
        # kube-proxy's nftables mode rejects other ports of a ClusterIP (its cluster-ips-check chain);
        # iptables mode lets them through, unchanged.
        assert ("pod-here", "other-port") in kinds and ("node", "other-port") in kinds
        other = next(o for o in run.outcomes[1] if o.scenario.entry.kind == "other-port")
        assert other.result.verdict == "REJECT"
