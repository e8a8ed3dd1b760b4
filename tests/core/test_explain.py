"""`rulegen explain`: the page is read back with the stdlib HTML parser and checked against the traces.

What the page must hold is taken from the compile itself (the chain names
of the payload, the plan's endpoints), so the checks say "every chain the
example's connections pass is drawn", not "this string appears". Then: no
URL anywhere, the same input gives the same bytes (across hash seeds), the
stops are drawn as stops, settings and findings sit beside their diagram,
`--service`, `--max-ports`, `--compare` with a second mode, the errors,
and what makes it readable without colour or a mouse. The graph and
layout helpers have tests of their own at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
from explainhelp import parse_page

from rulegen import backends
from rulegen.backends.base import Backend
from rulegen.explain import graph as G
from rulegen.explain import layout as L
from rulegen.explain import page
from rulegen.pipeline import compile_files
from rulegen.trace.compare import compare_outcomes
from rulegen.trace.model import Hop, Packet, Path as TPath

ROOT = Path(__file__).resolve().parents[2]
WEB = str(ROOT / "examples" / "web-frontend")
FIX = ROOT / "fixtures"


def explain(cli, tmp_path, *args: str, name: str = "page.html"):
    out = tmp_path / name
    r = cli("explain", *args, "-o", str(out))
    assert r.exit_code == 0, r.output
    html = out.read_text()
    return r, html, parse_page(html)


@pytest.fixture(scope="module")
def web_page(tmp_path_factory):
    from rgtest import run_cli

    out = tmp_path_factory.mktemp("explain") / "web.html"
    r = run_cli("explain", WEB, "-o", str(out))
    assert r.exit_code == 0, r.output
    html = out.read_text()
    return r, html, parse_page(html)


# ---------------------------------------------------------------- what the example's page holds


def test_the_example_page_draws_every_endpoint_share_and_chain(web_page):
    r, html, p = web_page
    assert r.output == ("rulegen: explain: wrote " + r.output.split("wrote ", 1)[1].split(":")[0]
                        + ": 1 Service port, 10 connections traced (iptables mode)\n")
    (sec,) = p.sections
    (d,) = sec.diagrams
    texts = d.labels()
    c = compile_files([WEB], {})
    nat = next(t for t in c.ir.tables if t.name == "nat")
    own = [ch for ch in nat.by_chain() if ch.startswith(("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-"))]
    assert len(own) == 5  # one KUBE-SVC, one KUBE-EXT, three KUBE-SEP
    for chain in own + ["KUBE-SERVICES", "KUBE-NODEPORTS"]:
        assert chain in d.labels("rg-label"), chain
    assert "↪ KUBE-MARK-MASQ" in d.labels("rg-badge")  # where the masquerade is decided
    for e in c.plan.ports[0].endpoints:
        assert e.ep in d.labels("rg-label"), e.ep
    # Each KUBE-SEP is reached by a third of the connections reaching KUBE-SVC.
    assert d.labels("rg-elabel").count("33.3%") == 3
    assert [t for t in d.titles if t.startswith("KUBE-SVC-V6JAHO4SRYC5AWNY → KUBE-SEP-")] == [
        f"KUBE-SVC-V6JAHO4SRYC5AWNY → {sep}; 1/3 (33.3%) of the connections reaching KUBE-SVC-V6JAHO4SRYC5AWNY"
        for sep in ("KUBE-SEP-YFRUJBD27JJTVA3P", "KUBE-SEP-4VHTZCDFL5MQN7WU", "KUBE-SEP-GHSFPL7H5BOTHA73")]
    for label in ("outside client", "pod on this node", "pod on another node", "the node itself", "localhost",
                  "ClusterIP", "NodePort", "NodePort on localhost", "ClusterIP, no Service port", "not captured"):
        assert label in texts, label
    assert "192.168.56.10:30080 TCP" in texts and "127.0.0.1:30080 TCP" in texts


def test_masquerade_and_the_other_node_are_drawn_in_words_and_dashes(web_page):
    _, _, p = web_page
    d = p.sections[0].diagrams[0]
    masq = [g for g in d.groups if "rg-masq" in g["attrs"].get("class", "")]
    assert masq and all("masqueraded: the endpoint sees the node's address (MASQUERADE in nat KUBE-POSTROUTING)"
                        in g["title"] for g in masq)
    assert d.labels("rg-elabel").count("MASQ") == 3  # one edge into each endpoint
    assert "node node-b" in d.labels("rg-label") and "another node: extra hop" in d.labels("rg-sub")
    remote = [g for g in d.groups if "rg-remote" in g["attrs"].get("class", "")]
    assert len(remote) == 1 and remote[0]["title"].startswith("10.244.2.21:3000 on node-b. endpoint")
    assert sorted(t for t in d.labels("rg-sub") if t.startswith(("this node", "on "))) == [
        "on node-b", "this node (node-a)", "this node (node-a)"]


def test_the_table_lists_every_flow_with_its_share_and_masquerade(web_page):
    _, _, p = web_page
    rows = p.sections[0].rows
    assert rows[0]["cells"] == ["from", "to", "iptables: verdict", "iptables: where it goes"]
    body = {(r["cells"][0], r["cells"][1]): r["cells"][2:] for r in rows[1:]}
    assert len(body) == 10
    assert body[("pod on this node 10.244.1.254", "ClusterIP 10.96.120.15:80 TCP")] == [
        "DNAT", "10.244.1.11:3000 33.3% (this node; client address kept); "
                "10.244.1.12:3000 33.3% (this node; client address kept); "
                "10.244.2.21:3000 33.3% (on node-b, extra hop; client address kept)"]
    assert body[("the node itself 192.168.56.10", "ClusterIP, no Service port 10.96.120.15:1 TCP")] == [
        "ACCEPT", "not captured: routed on, unchanged"]


def test_settings_and_lint_findings_sit_beside_the_diagram(web_page):
    _, html, p = web_page
    text = " ".join(" ".join(p.sections[0].text).split())
    for fact in ("externalTrafficPolicy Cluster", "internalTrafficPolicy Cluster", "sessionAffinity None",
                 "nodePortAddresses unset (the mode's default)", "localhost NodePorts on",
                 "endpoints 3 in the slices, 2 on this node; 3 used for cluster-wide traffic"):
        assert fact in text, fact
    assert "RG701 info: NodePort 30080/TCP is open to any source" in text
    body = html[html.index('<section class="port"'):]
    assert body.index("Settings that shaped it") < body.index("<table")  # in the aside, not under the table


def test_the_page_names_no_url_and_runs_no_script(web_page):
    _, html, p = web_page
    assert not re.search(r"(?i)https?:|ftp:|//[a-z0-9]|@import|@font-face|<script|<link|<img|<iframe|<object", html)
    for tag, a in p.tags:
        for k in ("href", "src", "xlink:href", "action", "data"):
            if k in a:
                assert a[k].startswith("#"), (tag, a)
    for ref in re.findall(r"url\(([^)]*)\)", html):
        assert ref.startswith("#"), ref
        assert ref[1:] in p.ids, ref  # and the page holds it


def test_the_same_input_gives_the_same_bytes(tmp_path):
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"p{seed}.html"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([sys.executable, "-m", "rulegen", "explain", WEB, "-o", str(out)], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    r = subprocess.run([sys.executable, "-m", "rulegen", "explain", WEB], capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stdout == outs[0]  # standard output holds the same page


def test_every_node_can_be_reached_by_keyboard_and_read_aloud(web_page):
    _, html, p = web_page
    assert '<html lang="en">' in html and '<a class="skip" href="#main">' in html
    d = p.sections[0].diagrams[0]
    assert d.attrs["role"] == "group"
    for ref in d.attrs["aria-labelledby"].split():
        assert ref in p.ids
    nodes = [g for g in d.groups if "rg-node" in g["attrs"].get("class", "").split()]
    edges = [g for g in d.groups if "rg-edge" in g["attrs"].get("class", "").split()]
    assert len(nodes) == 21 and len(edges) == 29  # 5 clients, 4 entries, 7 chains, 1 hop, 3 endpoints, 1 end
    for g in nodes:
        assert g["attrs"]["tabindex"] == "0" and g["attrs"]["role"] == "img" and g["title"], g
    for g in edges:
        assert g["attrs"]["role"] == "img" and g["title"], g
    scroll = [a for t, a in p.tags if "scroll" in a.get("class", "")]
    assert scroll and all(a["tabindex"] == "0" and a["aria-label"] for a in scroll)
    assert "@media print" in html


def test_stops_are_octagons_named_by_their_verdict_and_reason(cli, tmp_path):
    want = {
        "no-endpoints": ("REJECT", "no endpoints"),
        "lb-source-ranges": ("DROP", "firewall: not in loadBalancerSourceRanges"),
        "nodeport-local-no-local": ("DROP", "externalTrafficPolicy Local: no local endpoint"),
    }
    for case, (verdict, reason) in want.items():
        _, _, p = explain(cli, tmp_path, str(FIX / case), name=f"{case}.html")
        stops = [(d, g) for s in p.sections for d in s.diagrams for g in d.groups
                 if "rg-stop" in g["attrs"].get("class", "")]
        assert stops, case
        hits = [g for _, g in stops if g["title"].startswith(f"{verdict} {reason}. {verdict} by filter ")]
        assert hits, (case, [g["title"][:80] for _, g in stops])
        d = stops[0][0]
        assert d.labels("rg-label").count(verdict) >= 1 and reason in d.labels("rg-sub")
        assert any(tag == "polygon" for tag, _ in d.shapes)
        cells = [c for s in p.sections for row in s.rows for c in row["cells"]]
        assert any(c.startswith("stopped in filter KUBE-") and c.endswith(f": {reason}") for c in cells), case
    # A Service with neither endpoints nor an allowed source is rejected for want of endpoints: kube-proxy
    # rejects before its firewall could drop, and the page says so, not "firewall".
    _, _, p = explain(cli, tmp_path, str(FIX / "no-endpoints"), name="again.html")
    reasons = {t for s in p.sections for d in s.diagrams for g in d.groups
               if "rg-stop" in g["attrs"].get("class", "") for t in [g["title"].split(".")[0]]}
    assert reasons == {"REJECT no endpoints"}


def test_service_picks_what_is_drawn_and_max_ports_bounds_the_rest(cli, tmp_path):
    args = [str(FIX / "no-endpoints")]
    _, _, p = explain(cli, tmp_path, *args)
    assert len(p.sections) == 2
    _, _, p = explain(cli, tmp_path, *args, "--service", "billing/payments", name="one.html")
    assert [s.attrs["id"] for s in p.sections] == ["p1"]
    assert "billing/payments" in " ".join(p.sections[0].text)
    r = cli("explain", *args, "--max-ports", "1", "-o", str(tmp_path / "x.html"))
    assert r.exit_code == 2 and "2 Service ports: a page that large" in r.output and "--service" in r.output
    assert not (tmp_path / "x.html").exists()
    _, _, p = explain(cli, tmp_path, *args, "--max-ports", "1", "--service", "billing/invoices", name="two.html")
    assert len(p.sections) == 1
    r = cli("explain", *args, "--service", "billing/nope")
    assert r.exit_code == 2 and "rulegen: error: --service billing/nope: no such Service in the input\n" in r.output
    r = cli("explain", *args, "--service", "nope")
    assert r.exit_code == 2 and "expected NAMESPACE/NAME" in r.output


def test_findings_about_services_not_drawn_are_listed_apart(cli, tmp_path):
    _, _, p = explain(cli, tmp_path, str(FIX / "no-endpoints"), "--service", "billing/payments")
    text = " ".join(" ".join(p.text).split())
    assert "Lint findings not about the Services drawn" in text
    about = text.split("Lint findings not about the Services drawn", 1)[1]
    assert "Service billing/invoices" in about and "Service billing/payments" not in about.split("Service ports")[0]


def test_bad_input_and_arguments_are_one_line_and_exit_2(cli, tmp_path):
    r = cli("explain")
    assert r.exit_code == 2 and "no input files given" in r.output
    r = cli("explain", WEB, "--compare", "iptables")
    assert r.exit_code == 2 and "--compare iptables: the page is already in mode iptables" in r.output
    r = cli("explain", WEB, "-o", str(tmp_path / "no" / "such" / "dir.html"))
    assert r.exit_code == 2 and "cannot write" in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 99999}]}\n")
    r = cli("explain", str(bad), "--strict", "-o", str(tmp_path / "s.html"))
    assert r.exit_code == 2 and "bad.yaml: document 1" in r.output and not (tmp_path / "s.html").exists()


def test_a_file_name_reaches_the_page_escaped(cli, tmp_path):
    odd = tmp_path / '<b>x&"y.yaml'
    odd.write_text((Path(WEB) / "cluster.yaml").read_text())
    r, html, p = explain(cli, tmp_path, str(odd))
    assert "<b>" not in html and "&lt;b&gt;x&amp;&#34;y.yaml" in html


def test_an_input_without_services_gives_a_page_that_says_so(cli, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    r, html, p = explain(cli, tmp_path, str(empty))
    assert p.sections == [] and "No Service port to draw" in html


def test_ipv6_is_drawn_too(cli, tmp_path):
    case = FIX / "ipv6-basic"
    args = (case / "args").read_text().split() if (case / "args").exists() else []
    _, html, p = explain(cli, tmp_path, str(case), *args)
    assert p.sections and all(s.diagrams for s in p.sections)
    labels = [t for s in p.sections for d in s.diagrams for t in d.labels("rg-label")]
    assert any(t.startswith("[fd") for t in labels) and "NodePort on localhost" not in labels


# ---------------------------------------------------------------- two modes side by side


class _MasqueradeAll(Backend):
    """iptables mode compiled as if masqueradeAll were on: a second mode that differs on purpose."""

    mode = "iptables-masq-all"

    def compile(self, plan, settings):
        return backends.get("iptables").compile(plan, replace(settings, masquerade_all=True))

    def render(self, ir):
        return backends.get("iptables").render(ir)

    def tracer(self):
        return backends.get("iptables").tracer()


@pytest.fixture
def twin():
    backends.register("iptables-masq-all", _MasqueradeAll())
    try:
        yield "iptables-masq-all"
    finally:
        backends.unregister("iptables-masq-all")


def test_compare_draws_both_modes_side_by_side_and_marks_what_differs(cli, tmp_path, twin):
    r, html, p = explain(cli, tmp_path, WEB, "--compare", twin)
    assert r.output.endswith("10 connections traced in each of iptables and iptables-masq-all mode, "
                             "1 behaving differently\n")
    (sec,) = p.sections
    assert len(sec.diagrams) == 2
    assert [t for t, a in p.tags if t == "figcaption"] and "iptables-masq-all mode" in html
    run = page.run([WEB], {}, compare=twin)
    diffs = compare_outcomes(run.outcomes[0], run.outcomes[1])
    assert list(diffs) == [("default/web-frontend:http", "pod-here", "cluster-ip", "10.96.120.15", 80, "tcp")]
    marked = [r for r in sec.rows if r["class"] == "differs"]
    assert len(marked) == 1
    assert marked[0]["cells"][0] == "pod on this node 10.244.1.254"
    assert marked[0]["cells"][-1] == "masquerade: client address kept → masqueraded"
    # In both diagrams the entry of that flow and its edge carry "≠" in words, not only in colour.
    for d in sec.diagrams:
        diff_edges = [g for g in d.groups if "rg-edge-differs" in g["attrs"].get("class", "")]
        assert [g["title"] for g in diff_edges] == [
            "pod on this node → ClusterIP; behaves differently in the other mode"]
        assert "≠" in d.labels("rg-elabel") and "≠ differs" in d.labels("rg-badge")
    assert "<strong>1</strong> traced connection behaves differently in iptables and iptables-masq-all mode" in html


def test_compare_with_a_mode_without_a_tracer_is_refused_before_any_work(cli, tmp_path):
    class NoTracer(Backend):
        mode = "untraced"

        def compile(self, plan, settings):
            return []

    backends.register("untraced", NoTracer())
    try:
        r = cli("explain", WEB, "--compare", "untraced")
        assert r.exit_code == 2
        assert "rulegen: error: --mode untraced: trace is not implemented yet (implemented for: " in r.output
        r = cli("explain", WEB, "--mode", "untraced")
        assert r.exit_code == 2 and "--mode untraced: trace is not implemented yet" in r.output
    finally:
        backends.unregister("untraced")


# ---------------------------------------------------------------- the graph and the layout


def _hop(table, chain, verdict, kind="rule"):
    return Hop(kind, table, chain, 1, f"-A {chain}", verdict)


def test_a_path_is_read_as_calls_and_returns():
    hops = (
        _hop("nat", "PREROUTING", "jump KUBE-SERVICES"),
        _hop("nat", "KUBE-SERVICES", "jump KUBE-FW-X"),
        _hop("nat", "KUBE-FW-X", "jump KUBE-EXT-X"),
        _hop("nat", "KUBE-EXT-X", "jump KUBE-MARK-MASQ"),
        _hop("nat", "KUBE-MARK-MASQ", "mark is now 0x4000"),
        _hop("nat", "KUBE-EXT-X", "jump KUBE-SVC-X"),
        _hop("nat", "KUBE-SVC-X", "jump KUBE-SEP-A"),
        _hop("nat", "KUBE-SEP-A", "DNAT 10.0.0.1:80 → 10.244.1.5:8080"),
        _hop("", "", "forwarded", kind="route"),
        _hop("filter", "FORWARD", "jump KUBE-FORWARD"),
        _hop("filter", "KUBE-FORWARD", "ACCEPT"),
        _hop("nat", "POSTROUTING", "jump KUBE-POSTROUTING"),
        _hop("nat", "KUBE-POSTROUTING", "MASQUERADE: the source becomes the node's address"),
    )
    pkt = Packet("tcp", "1.2.3.4", 4000, "10.244.1.5", 8080, "eth0", dnat=True)
    p = TPath(Fraction(1), "DNAT", hops, pkt, True)
    base = frozenset({"PREROUTING", "FORWARD", "POSTROUTING"})
    assert G.decisive_index(p) == 7
    shape = G.path_shape(p, base)
    assert [c for _, c in shape.spine] == ["KUBE-SERVICES", "KUBE-FW-X", "KUBE-EXT-X", "KUBE-SVC-X", "KUBE-SEP-A"]
    assert shape.calls == {("nat", "KUBE-EXT-X"): ["KUBE-MARK-MASQ"]}
    assert shape.masq_at == ("nat", "KUBE-POSTROUTING", "MASQUERADE") and shape.stop_at is None
    stopped = TPath(Fraction(1), "DROP", hops[:3] + (_hop("", "", "x", kind="route"),
                                                     _hop("filter", "FORWARD", "jump KUBE-PROXY-FIREWALL"),
                                                     _hop("filter", "KUBE-PROXY-FIREWALL", "DROP")), pkt, False)
    s2 = G.path_shape(stopped, base)
    assert s2.spine == [("nat", "KUBE-SERVICES"), ("nat", "KUBE-FW-X"), ("filter", "KUBE-PROXY-FIREWALL")]
    assert s2.stop_at == ("filter", "KUBE-PROXY-FIREWALL")


def test_the_layout_is_layered_and_nothing_overlaps(web_page):
    run = page.run([WEB], {})
    g = G.build(run.outcomes[0], run.ports[0])
    lay = L.layout(g)
    col = {nid: b.col for nid, b in lay.boxes.items()}
    assert {col[n.id] for n in g.node_list() if n.kind == "client"} == {0}
    assert {col[n.id] for n in g.node_list() if n.kind == "entry"} == {1}
    ends = {col[n.id] for n in g.node_list() if n.kind in ("endpoint", "stop", "pass")}
    assert ends == {lay.columns - 1}
    assert col["chain:nat:KUBE-SVC-V6JAHO4SRYC5AWNY"] > col["chain:nat:KUBE-EXT-V6JAHO4SRYC5AWNY"]
    for e in g.edge_list():  # every edge runs left to right
        assert col[e.dst] > col[e.src], (e.src, e.dst)
    for c in range(lay.columns):
        boxes = sorted((b for b in lay.boxes.values() if b.col == c), key=lambda b: b.y)
        for a, b in zip(boxes, boxes[1:]):
            assert a.y + a.h <= b.y, (a.node.id, b.node.id)
    # An edge that skips columns passes each in a lane clear of the boxes there.
    lanes = lay.lanes[("chain:nat:KUBE-SERVICES", "chain:nat:KUBE-SVC-V6JAHO4SRYC5AWNY", False)]
    for ln in lanes:
        for b in lay.boxes.values():
            if b.col == ln.col:
                assert not b.y <= ln.y <= b.y + b.h, b.node.id
    again = L.layout(G.build(run.outcomes[0], run.ports[0]))
    assert [(b.x, b.y, b.w, b.h) for b in again.boxes.values()] == [(b.x, b.y, b.w, b.h) for b in lay.boxes.values()]


def test_long_names_wrap_at_their_separators():
    name = "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    lines = L.wrap(name, 30)
    assert "".join(lines) == name and all(len(x) <= 30 for x in lines)
    assert lines[0].endswith("/")
    assert L.wrap("KUBE-SVC-V6JAHO4SRYC5AWNY") == ["KUBE-SVC-V6JAHO4SRYC5AWNY"]


def test_the_readme_shows_the_picture_the_command_makes():
    from pngread import read_png

    readme = (ROOT / "README.md").read_text()
    png = ROOT / "docs" / "img" / "explain-web-frontend.png"
    assert "](docs/img/explain-web-frontend.png)" in readme
    assert "$ rulegen explain examples/web-frontend/ -o web-frontend.html" in readme  # a README run, checked
    img = read_png(png.read_bytes())
    colours = img.colours(step=3)
    assert img.width >= 1600 and len(colours) > 40 and colours.most_common(1)[0][1] < 0.97 * sum(colours.values())
    script = (ROOT / "scripts" / "explain_screenshot.py").read_text()
    assert '"explain", "examples/web-frontend/", "-o"' in script and str(png.relative_to(ROOT)) in script
    assert "explain-png:" in (ROOT / "Makefile").read_text()


def test_text_in_the_svg_is_escaped():
    from rulegen.explain import svg as S

    nasty = '<script>alert("x")</script> & KUBE-'
    g = G.Graph({"a": G.Node("a", "chain", nasty, [nasty], nasty, [nasty], [nasty]),
                 "b": G.Node("b", "stop", "DROP", [], nasty)},
                {("a", "b", False): G.Edge("a", "b", label=nasty, title=nasty)})
    html = S.render(g, L.layout(g), nasty, nasty, "x")
    assert "<script" not in html
    p = parse_page("<section>" + html + "</section>")
    (d,) = p.sections[0].diagrams
    assert d.labels("rg-sub") == [nasty] and d.labels("rg-badge") == [nasty] and d.labels("rg-elabel") == [nasty]
    assert nasty in d.labels("rg-label")
    assert d.titles[0] == nasty and all(nasty in t for t in d.titles[1:])
