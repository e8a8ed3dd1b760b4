"""`rulegen explain` in the modes whose tracers are still being written: run as soon as a mode has one.

explain reaches a mode only through the registry's tracer hook and the
neutral `TraceResult`, so these tests need no change when a tracer lands:
until then each is skipped, saying so. What they hold a mode's page to is
read from its own traces (the chains on its paths, its shares), plus what
every mode shares with kube-proxy's iptables mode for the classic NodePort
(three endpoints, a third each, masquerade for outside clients), and the
differences kube-proxy documents between modes for `--compare`.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from explainhelp import parse_page

from rulegen import backends
from rulegen.explain import graph as G
from rulegen.explain import page
from rulegen.trace.compare import compare_outcomes

ROOT = Path(__file__).resolve().parents[2]
WEB = str(ROOT / "examples" / "web-frontend")
OTHER_MODES = [m for m in backends.modes() if m != backends.DEFAULT_MODE]


def need_tracer(mode: str) -> None:
    if backends.get(mode).tracer() is None:
        pytest.skip(f"--mode {mode} has no tracer yet (rulegen/backends/{mode}/trace.py); "
                    "explain draws the mode through the registry as soon as it has one")


@pytest.mark.parametrize("mode", OTHER_MODES)
def test_the_example_page_in_the_mode(mode, cli, tmp_path):
    need_tracer(mode)
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
    # Every share the graph computes is written on its edge.
    g = G.build(run.outcomes[0], run.ports[0])
    shares = [e.label for e in g.edge_list() if e.label and "%" in e.label]
    assert shares and all(s in d.labels("rg-elabel") for s in shares)
    by = {(o.scenario.client.kind, o.scenario.entry.kind): o.result for o in run.outcomes[0]}
    outside = by[("outside", "node-port")]
    assert outside.shares() == {ep.ep: Fraction(1, 3) for ep in run.ports[0].endpoints}
    assert all(x.masquerade for x in outside.destinations)  # externalTrafficPolicy Cluster
    assert "MASQ" in d.labels("rg-elabel") and "node node-b" in labels


@pytest.mark.parametrize("mode", OTHER_MODES)
def test_compare_with_iptables_marks_what_kube_proxy_does_differently(mode, cli, tmp_path):
    need_tracer(mode)
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
