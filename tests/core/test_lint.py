"""`rulegen lint`: every code proven by a failing and a passing fixture, plus output and exit codes.

`lint-fixtures/<code>-bad/` must raise that code with its registered
severity and no other warning or error (info findings such as the NodePort
exposure may ride along); `lint-fixtures/<code>-good/` must not raise it.
The rest checks the command's contract: the JSON shape, exit status 0/1/2,
the text page, and the finer behaviour of individual checks.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from rgtest import run_cli

import rulegen.lint.labels as labels_mod
from rulegen.commands.lint import command as lint_command
from rulegen.diagnostics import Report, UsageError
from rulegen.flags import flags_of
from rulegen.lint import CODES, check_codes, lint_files, parse_nodeport_range
from rulegen.lint.findings import SEVERITIES, Finding, docs_lines
from rulegen.lint.labels import LabelIndex, edit_distance, near_miss, similar
from rulegen.lint.report import collapse, render_text
from rulegen.lint.versions import from_flags

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "lint-fixtures"
EXAMPLE = ROOT / "examples" / "web-frontend" / "cluster.yaml"


def lint_dir(path: Path, extra: list[str] = ()) -> list[Finding]:
    """Lint one fixture folder in-process, with its `args` file parsed by the lint command itself."""
    # `{dir}` in an args file is the fixture's folder (a node dump beside the input: --rules {dir}/node.rules)
    argv = shlex.split((path / "args").read_text().replace("{dir}", str(path))) if (path / "args").exists() else []
    return lint_args([str(path), *argv, *extra])


def lint_args(argv: list[str]) -> list[Finding]:
    ctx = lint_command.make_context("lint", list(argv))
    p = dict(ctx.params)
    files, config = p.pop("files"), p.pop("config_path")
    rng = parse_nodeport_range(p.pop("nodeport_range"))
    ignore = check_codes(p.pop("ignore"))
    versions = from_flags(p.pop("kernel_version"), p.pop("nft_version"))
    p.pop("as_json")
    rules, ipsets = p.pop("rules_path"), p.pop("ipsets_path")
    return lint_files(list(files), flags_of(p), Report(), config, rng, ignore, versions, rules, ipsets).findings


def run(args: list[str], stdin: str | None = None):
    return run_cli("lint", *args, input=stdin)


def write(tmp_path: Path, text: str, name: str = "in.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --------------------------------------------------------------------------- fixtures, one pair per code


@pytest.mark.parametrize("code", sorted(CODES))
def test_bad_fixture_raises_exactly_its_code(code):
    bad = FIXTURES / f"{code}-bad"
    assert bad.is_dir(), f"{bad} missing: every code needs a failing example"
    found = lint_dir(bad)
    mine = [f for f in found if f.code == code]
    assert mine, f"{code} not raised by {bad}: got {[f.code for f in found]}"
    assert all(f.severity == CODES[code].severity for f in mine)
    others = {f.code for f in found if f.code != code and f.severity != "info"}
    assert not others, f"{bad} also raises {others}"
    for f in mine:
        assert f.message and f.hint
        assert f.object.startswith(("Service ", "EndpointSlice ", "Endpoints ", "KubeProxyConfiguration",
                                    "kube-proxy mode ", "Node ", "iptables ", "nftables ")) or f.object == "input"


@pytest.mark.parametrize("code", sorted(CODES))
def test_good_fixture_does_not_raise_its_code(code):
    good = FIXTURES / f"{code}-good"
    assert good.is_dir(), f"{good} missing: every code needs a passing example"
    found = lint_dir(good)
    assert code not in {f.code for f in found}, [f.to_json() for f in found if f.code == code]


def test_fixture_folders_match_the_code_table():
    names = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    expected = {f"{c}-{k}" for c in CODES for k in ("bad", "good")}
    assert names == expected


def test_docs_list_every_code_with_its_severity():
    text = (ROOT / "docs" / "lint.md").read_text()
    for row in docs_lines():
        assert row in text, f"docs/lint.md is out of date; missing row: {row}"
    for code, c in CODES.items():
        assert f"| {code} | {c.severity} |" in text


def test_codes_are_unique_and_well_formed():
    assert all(c.severity in SEVERITIES for c in CODES.values())
    assert len({c.slug for c in CODES.values()}) == len(CODES)
    assert all(code.startswith("RG") and len(code) == 5 and code[2:].isdigit() for code in CODES)


# --------------------------------------------------------------------------- command contract


def test_json_shape():
    r = run([str(FIXTURES / "RG204-bad"), "--json"])
    assert r.exit_code == 1, r.output
    data = json.loads(r.stdout)
    assert isinstance(data, list) and data
    for item in data:
        assert set(item) == {"code", "severity", "object", "message", "hint"}
        assert all(isinstance(v, str) and v for v in item.values())
        assert item["code"] in CODES and item["severity"] == CODES[item["code"]].severity
    assert [d["code"] for d in data] == ["RG204", "RG701"]  # errors before info
    assert data[0]["object"] == "Service default/web port http:80/TCP"
    assert "NodePort 30080/TCP" in data[0]["message"] and "dropped" in data[0]["message"]


def test_json_empty_list_and_exit_0_when_clean():
    r = run([str(FIXTURES / "RG201-good"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == []


@pytest.mark.parametrize("case,status", [
    ("RG201-bad", 1),  # an error
    ("RG105-bad", 0),  # only a warning
    ("RG701-bad", 0),  # only info
    ("RG201-good", 0),
])
def test_exit_status_follows_the_worst_severity(case, status):
    r = run([str(FIXTURES / case)])
    assert r.exit_code == status, r.output


def test_exit_1_with_errors_and_0_when_they_are_ignored():
    assert run([str(FIXTURES / "RG402-bad")]).exit_code == 1
    r = run([str(FIXTURES / "RG402-bad"), "--ignore", "RG402", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == []


@pytest.mark.parametrize("args,needle", [
    ([], "no input files"),
    (["/nonexistent/x.yaml"], "no such file"),
    (["{bad}", "--service-node-port-range", "32767-30000"], "--service-node-port-range"),
    (["{good}", "--service-node-port-range", "lots"], "--service-node-port-range"),
    (["{good}", "--ignore", "RG999"], "not a lint code"),
    (["{notyaml}"], "not valid YAML"),
])
def test_exit_2_for_unusable_input(tmp_path, args, needle):
    notyaml = write(tmp_path, "kind: [unclosed\n  - x: {\n")
    args = [a.format(bad=FIXTURES / "RG101-bad", good=FIXTURES / "RG201-good", notyaml=notyaml) for a in args]
    r = run(args)
    assert r.exit_code == 2, r.output
    assert needle in r.stderr and "Traceback" not in r.output + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_strict_makes_input_problems_fatal(tmp_path):
    f = write(tmp_path, (FIXTURES / "RG201-good" / "input.yaml").read_text().replace(
        "port: 80, targetPort: 8080", "port: 99999, targetPort: 8080"))
    assert run([f]).exit_code in (0, 1)
    r = run([f, "--strict"])
    assert r.exit_code == 2 and "99999" in r.stderr


def test_reads_stdin():
    text = (FIXTURES / "RG201-bad" / "input.yaml").read_text()
    r = run(["-", "--json"], stdin=text)
    assert r.exit_code == 1
    assert [d["code"] for d in json.loads(r.stdout)] == ["RG201"]


# --------------------------------------------------------------------------- text output


def test_text_output_lists_each_finding_with_its_fix():
    r = run([str(FIXTURES / "RG204-bad")])
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    head = [ln for ln in lines if ln.startswith(("error", "warning", "info"))]
    assert head[0].split()[:2] == ["error", "RG204"] and "Service default/web port http:80/TCP" in head[0]
    assert "RG204-bad/input.yaml: document 1" in head[0]
    assert head[1].split()[:2] == ["info", "RG701"]
    assert any(ln.strip().startswith("fix ") and "DaemonSet" in ln for ln in lines)
    assert lines[-1] == "1 error, 1 info (node node-a; 1 Services, 1 EndpointSlices; IPv4)"


def test_text_output_without_findings():
    r = run([str(FIXTURES / "RG201-good")])
    assert r.exit_code == 0
    assert r.stdout.strip() == "no findings (node node-a; 1 Services, 1 EndpointSlices; IPv4)"


def test_text_output_says_when_no_node_is_known(tmp_path):
    text = (FIXTURES / "RG207-bad" / "input.yaml").read_text()
    text = text.split("---\napiVersion: v1\nkind: Node")[0]  # drop the Node: "this node" is unknown
    r = run([write(tmp_path, text)])
    assert "no node given: node-local checks skipped" in r.stdout
    assert "RG207" not in r.stdout  # needs to know which node is local


def test_text_wraps_to_a_terminal_width():
    findings = lint_dir(FIXTURES / "RG206-bad")
    scope = {"node": "node node-a", "counts": "1 Services", "family": "IPv4"}
    wide = render_text(findings, scope)
    narrow = render_text(findings, scope, width=72)
    assert max(len(ln) for ln in wide.splitlines()) > 72
    body = [ln for ln in narrow.splitlines() if ln.startswith(" ")]
    assert body and all(len(ln) <= 72 for ln in body)
    # wrapping only moves words: the same text, spaces aside
    assert narrow.split() == wide.split()


def test_example_cluster_has_only_the_nodeport_exposure():
    r = run([str(EXAMPLE), "--json"])
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert [d["code"] for d in data] == ["RG701"]
    assert "192.168.56.10" in data[0]["message"] and "127.0.0.1" in data[0]["message"]


# --------------------------------------------------------------------------- individual checks


SVC = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: {type}
  clusterIP: {cip}
  selector: {{app: {name}}}
  ports: {ports}
{extra}
"""


def svc(name="web", type="ClusterIP", cip="10.96.0.10", ports=None, extra="") -> str:
    ports = ports or "[{name: http, protocol: TCP, port: 80, targetPort: 8080}]"
    return SVC.format(name=name, type=type, cip=cip, ports=ports, extra=extra)


def slice_(svc="web", port="{name: http, protocol: TCP, port: 8080}", eps=None, name=None) -> str:
    eps = eps or [("10.244.1.11", "node-a", True)]
    body = "\n".join(
        f"  - addresses: [{ip}]\n    conditions: {{ready: {str(r).lower()}}}\n    nodeName: {n}" for ip, n, r in eps)
    return f"""\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name or svc + '-x1'}
  namespace: default
  labels: {{kubernetes.io/service-name: {svc}}}
addressType: IPv4
ports: [{port}]
endpoints:
{body}
"""


NODE = """\
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.56.10}]}
"""


def docs(*parts: str) -> str:
    return "---\n".join(parts)


def codes(findings) -> list[str]:
    return [f.code for f in findings]


def test_near_miss_rules():
    assert edit_distance("web-frontend", "web-frontnd") == 1
    assert edit_distance("kitten", "sitting") == 3
    assert similar("web-frontend", "web-frontnd") and similar("Web", "web") and similar("app", "apps")
    assert not similar("v1", "v2") and not similar("blue", "green") and not similar("web", "web")
    sel = {"app": "web-frontend", "tier": "front"}
    assert near_miss(sel, {"app": "web-frontnd", "tier": "front"}) == \
        "app=web-frontnd where the selector wants app=web-frontend"
    assert near_miss(sel, {"apps": "web-frontend", "tier": "front"}) == \
        "apps=web-frontend where the selector wants app=web-frontend"
    assert near_miss(sel, {"app": "web-frontend", "tier": "front"}) is None  # a match is no miss
    assert near_miss(sel, {"app": "web-frontnd", "tier": "frnt"}) is None  # two labels off
    assert near_miss(sel, {"app": "database", "tier": "front"}) is None


def test_selector_without_a_near_miss_says_so(tmp_path):
    pod = """\
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: default, labels: {app: database}}
spec: {nodeName: node-a, containers: [{name: db, image: x}]}
"""
    found = lint_args([write(tmp_path, docs(svc(), pod, NODE))])
    assert codes(found) == ["RG301"]
    assert "closest" not in found[0].message and "--show-labels" in found[0].hint


def test_pods_of_another_namespace_do_not_judge_a_selector(tmp_path):
    pod = """\
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: other, labels: {app: x}}
spec: {nodeName: node-a, containers: [{name: x, image: x}]}
"""
    found = lint_args([write(tmp_path, docs(svc(), slice_(), pod, NODE))])
    assert codes(found) == []


def test_unnamed_service_port_and_a_slice_port_without_name(tmp_path):
    s = svc(ports="[{protocol: TCP, port: 80, targetPort: 8080}]")
    sl = slice_(port="{protocol: TCP, port: 8080}")
    found = lint_args([write(tmp_path, docs(s, sl, NODE))])
    assert codes(found) == ["RG103"]
    assert 'name: ""' in found[0].hint and found[0].object == "Service default/web port 80/TCP"


def test_slice_port_with_the_wrong_protocol(tmp_path):
    found = lint_args([write(tmp_path, docs(svc(), slice_(port="{name: http, protocol: UDP, port: 8080}"), NODE))])
    assert codes(found) == ["RG103"] and "protocol: TCP" in found[0].hint


def test_health_check_node_port_collides_with_a_nodeport(tmp_path):
    lb = svc("lb", "LoadBalancer", "10.96.0.20",
             "[{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 31000}]",
             "  externalTrafficPolicy: Local\n  healthCheckNodePort: 30080")
    np_ = svc("np", "NodePort", "10.96.0.21", "[{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]")
    found = lint_args([write(tmp_path, docs(lb, slice_("lb"), np_, slice_("np"), NODE))])
    dup = [f for f in found if f.code == "RG102"]
    assert {f.name for f in dup} == {"default/lb", "default/np"}
    assert any("healthCheckNodePort 30080/TCP" in f.message for f in dup)


def test_nodeport_range_flag_forms():
    assert parse_nodeport_range("30000-32767") == (30000, 32767)
    assert parse_nodeport_range("20000+100") == (20000, 20100)
    for bad in ("", "30000", "a-b", "0-10", "40000-30000", "60000+10000"):
        with pytest.raises(UsageError):
            parse_nodeport_range(bad)


def test_affinity_names_each_masquerading_condition(tmp_path):
    plain = svc(extra="  sessionAffinity: ClientIP")
    assert codes(lint_args([write(tmp_path, docs(plain, slice_(), NODE))])) == []
    found = lint_args([write(tmp_path, docs(plain, slice_(), NODE)), "--masquerade-all"])
    assert codes(found) == ["RG501"] and "masqueradeAll" in found[0].message
    proxied = svc("lb", "LoadBalancer", "10.96.0.30",
                  "[{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30090}]",
                  "  sessionAffinity: ClientIP\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 30091\n"
                  "status: {loadBalancer: {ingress: [{ip: 203.0.113.9, ipMode: Proxy}]}}")
    found = [f for f in lint_args([write(tmp_path, docs(proxied, slice_("lb"), NODE))]) if f.code == "RG501"]
    assert len(found) == 1 and "ipMode Proxy" in found[0].message
    assert "externalTrafficPolicy Cluster" not in found[0].message


def test_udp_hint_has_conntrack_commands_for_every_address(tmp_path):
    s = svc("dns", "NodePort", "10.96.0.53", "[{name: dns, protocol: UDP, port: 53, targetPort: 53, nodePort: 30053}]",
            "  externalIPs: [203.0.113.53]")
    sl = slice_("dns", "{name: dns, protocol: UDP, port: 53}", [("10.244.1.53", "node-a", False)])
    found = [f for f in lint_args([write(tmp_path, docs(s, sl, NODE))]) if f.code == "RG502"]
    assert len(found) == 1
    hint = found[0].hint
    assert "conntrack -D -p udp --orig-dst 10.96.0.53 --orig-port-dst 53" in hint
    assert "conntrack -D -p udp --orig-port-dst 30053" in hint
    assert "conntrack -D -p udp --orig-dst 203.0.113.53 --orig-port-dst 53" in hint
    assert "RG202" not in codes(lint_args([write(tmp_path, docs(s, sl, NODE))]))  # one finding per cause


def test_nodeport_exposure_follows_nodeport_addresses_and_localhost(tmp_path):
    s = svc(type="NodePort", ports="[{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]")
    f = write(tmp_path, docs(s, slice_(), NODE))
    [default] = lint_args([f])
    assert default.code == "RG701" and "192.168.56.10" in default.message and "127.0.0.1" in default.message
    [no_lo] = lint_args([f, "--no-localhost-nodeports"])
    assert "127.0.0.1" not in no_lo.message and "192.168.56.10" in no_lo.message
    [narrow] = lint_args([f, "--nodeport-addresses", "10.0.0.0/8"])
    assert "192.168.56.10" not in narrow.message and "10.0.0.0/8" in narrow.message
    assert "127.0.0.1" not in narrow.message  # localhost NodePorts need a loopback CIDR there


def test_local_spread_needs_two_nodes_to_compare(tmp_path):
    s = svc(type="NodePort", ports="[{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]",
            extra="  externalTrafficPolicy: Local")
    one_node = slice_(eps=[("10.244.1.11", "node-a", True), ("10.244.1.12", "node-a", True)])
    assert "RG206" not in codes(lint_args([write(tmp_path, docs(s, one_node, NODE))]))
    uneven = slice_(eps=[("10.244.1.11", "node-a", True), ("10.244.2.1", "node-b", True),
                         ("10.244.2.2", "node-b", True), ("10.244.2.3", "node-b", True)])
    found = [f for f in lint_args([write(tmp_path, docs(s, uneven, NODE))]) if f.code == "RG206"]
    assert len(found) == 1 and "3x" in found[0].message and "node-a 1, node-b 3" in found[0].message
    # node-b has only a terminating (still serving) endpoint: it falls back to it, nothing is dropped
    draining = slice_(eps=[("10.244.1.11", "node-a", True), ("10.244.2.1", "node-b", False)]).replace(
        "conditions: {ready: false}", "conditions: {ready: false, serving: true, terminating: true}")
    assert "RG206" not in codes(lint_args([write(tmp_path, docs(s, draining, NODE))]))
    # a node whose only endpoint is not serving at all is a node without one
    dead = slice_(eps=[("10.244.1.11", "node-a", True), ("10.244.2.1", "node-b", False)])
    found = [f for f in lint_args([write(tmp_path, docs(s, dead, NODE))]) if f.code == "RG206"]
    assert len(found) == 1 and "node-b drops" in found[0].message


def test_ports_with_the_same_finding_are_listed_once(tmp_path):
    ports = ("[{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080},"
             " {name: https, protocol: TCP, port: 443, targetPort: 8443, nodePort: 30443}]")
    s = svc(type="NodePort", ports=ports, extra="  externalTrafficPolicy: Local")
    eps = [("10.244.1.11", "node-a", True), ("10.244.2.1", "node-b", True), ("10.244.2.2", "node-b", True)]
    sl = slice_(port="{name: http, protocol: TCP, port: 8080}, {name: https, protocol: TCP, port: 8443}", eps=eps)
    spread = [f for f in lint_args([write(tmp_path, docs(s, sl, NODE))]) if f.code == "RG206"]
    assert len(spread) == 1
    assert spread[0].object == "Service default/web ports http:80/TCP, https:443/TCP"


def test_collapse_keeps_different_words_apart():
    a = Finding("RG201", "Service", "ns/a", "m1", "h", "http:80/TCP")
    b = Finding("RG201", "Service", "ns/a", "m2", "h", "https:443/TCP")
    c = Finding("RG201", "Service", "ns/a", "m1", "h", "dns:53/UDP")
    out = collapse([a, b, c])
    assert [f.port for f in out] == ["http:80/TCP, dns:53/UDP", "https:443/TCP"]


def test_legacy_endpoints_for_a_missing_service_name_the_endpoints_object(tmp_path):
    ep = """\
apiVersion: v1
kind: Endpoints
metadata: {name: gone, namespace: default}
subsets:
- addresses: [{ip: 10.244.1.5}]
  ports: [{name: http, port: 8080, protocol: TCP}]
"""
    found = lint_args([write(tmp_path, docs(svc(), slice_(), ep, NODE))])
    assert codes(found) == ["RG602"] and found[0].object == "Endpoints default/gone"


def test_unlabelled_slice_hint_names_the_likely_service(tmp_path):
    sl = slice_(name="web-zz9").replace("  labels: {kubernetes.io/service-name: web}\n", "")
    found = lint_args([write(tmp_path, docs(svc(), slice_(), sl, NODE))])
    assert codes(found) == ["RG601"] and "kubernetes.io/service-name: web " in found[0].hint + " "


def test_headless_and_external_name_services_need_no_endpoints(tmp_path):
    headless = svc(cip="None")
    ext = """\
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: example.com}
"""
    assert codes(lint_args([write(tmp_path, docs(headless, ext, NODE))])) == []


def test_no_cluster_ip_is_judged_as_the_rules_judge_it(tmp_path):
    """spec.clusterIP alone decides whether kube-proxy proxies a Service; spec.clusterIPs does not."""
    from rulegen.pipeline import compile_files

    only_ips = svc().replace("  clusterIP: 10.96.0.10\n", "  clusterIPs: [10.96.0.10]\n")
    assert "clusterIPs: [10.96.0.10]" in only_ips and "clusterIP:" not in only_ips
    f = write(tmp_path, docs(only_ips, slice_(), NODE))
    assert "10.96.0.10" not in compile_files([f], {}).text  # no rules for it ...
    assert codes(lint_args([f])) == ["RG001"]  # ... and lint says so
    both = write(tmp_path, docs(svc(extra="  clusterIPs: [10.96.0.10]"), slice_(), NODE), "both.yaml")
    assert "10.96.0.10" in compile_files([both], {}).text
    assert "RG001" not in codes(lint_args([both]))


def test_external_ip_in_a_service_cidr_flag(tmp_path):
    s = svc(extra="  externalIPs: [10.100.0.7]")
    f = write(tmp_path, docs(s, slice_(), NODE))
    assert "RG404" not in codes(lint_args([f]))
    assert "RG404" in codes(lint_args([f, "--service-cidr", "10.100.0.0/16"]))


def test_ipv6_family_lints_the_ipv6_endpoints(tmp_path):
    s = svc(cip="fd00::10", extra="  ipFamilies: [IPv6]\n  clusterIPs: [fd00::10]")
    sl6 = slice_().replace("addressType: IPv4", "addressType: IPv6").replace("10.244.1.11", "fd00:244::11")
    f = write(tmp_path, docs(s, sl6, NODE))
    assert codes(lint_args([f, "--ip-family", "ipv6"])) == []
    assert codes(lint_args([f])) == []  # an IPv6-only Service has nothing to check in the IPv4 rules


def _lint_calls(path: str) -> int:
    """Python calls made inside rulegen/lint/ while linting PATH: the work, counted."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event == "call" and "/rulegen/lint/" in frame.f_code.co_filename:
            calls += 1

    sys.setprofile(count)
    try:
        found = lint_args([path])
    finally:
        sys.setprofile(None)
    assert found == []
    return calls


def _services(tmp_path: Path, n: int) -> str:
    parts = []
    for i in range(n):
        parts.append(svc(f"s{i}", cip=f"10.96.{i // 250}.{i % 250 + 1}"))
        parts.append(slice_(f"s{i}", eps=[(f"10.244.{i // 250}.{i % 250 + 1}", "node-a", True)]))
    return write(tmp_path, docs(*parts, NODE), f"services-{n}.yaml")


def test_lint_work_grows_linearly_with_the_services(tmp_path):
    """Twice the Services, twice the work: no check compares every Service with every other."""
    small, large = _lint_calls(_services(tmp_path, 1000)), _lint_calls(_services(tmp_path, 2000))
    assert small > 1000 and large <= 2.1 * small, (small, large)


# --------------------------------------------------------------------------- the label index agrees with brute force

_word = st.sampled_from(["web", "web-frontend", "web-frontnd", "Web-frontend", "api", "apps", "app",
                         "prod", "prd", "v1", "v2", "canary", "tier", "front", "frnt"])
_labels = st.dictionaries(st.sampled_from(["app", "apps", "tier", "env", "version"]), _word, max_size=3)


@hsettings(max_examples=300, deadline=None)
@given(st.lists(_labels, max_size=12), _labels.filter(bool))
def test_label_index_finds_what_a_full_scan_finds(sets, selector):
    idx = LabelIndex(sets)
    assert idx.matching(selector) == [i for i, s in enumerate(sets) if all(s.get(k) == v for k, v in selector.items())]
    brute = [(i, d) for i, s in enumerate(sets) if (d := near_miss(selector, s))]
    assert idx.near_misses(selector) == brute


def test_lint_with_many_pods_matches_labels_through_the_index(tmp_path, monkeypatch):
    """400 Services x 2000 Pods: each selector is matched against its label sets once, not against every Pod."""
    n = 400
    parts = [NODE]
    for i in range(n):
        parts.append(svc(f"app{i:03d}", cip=f"10.96.{i // 250}.{i % 250 + 1}"))
        parts.append(slice_(f"app{i:03d}", eps=[(f"10.244.{i // 250}.{i % 250 + 1}", "node-a", True)]))
        for r in range(5):  # replicas share their labels
            parts.append(f"""\
apiVersion: v1
kind: Pod
metadata: {{name: app{i:03d}-{r}, namespace: default, labels: {{app: app{i:03d}, pod-template-hash: h{i}}}}}
spec: {{nodeName: node-a, containers: [{{name: c, image: x, ports: [{{name: http, containerPort: 8080}}]}}]}}
""")
    f = write(tmp_path, docs(*parts))
    work = {"matches": 0, "edit_distance": 0}
    for name in work:
        real = getattr(labels_mod, name)

        def counted(*a, _real=real, _name=name):
            work[_name] += 1
            return _real(*a)

        monkeypatch.setattr(labels_mod, name, counted)
    found = lint_args([f])
    # app001 and app011 are one edit apart, but each selector matches its own Pods: no finding.
    assert found == []
    # A handful of checks look each selector up (RG104, RG106, RG301, RG303, ...): a few
    # matches per Service, never one per Pod per Service (that would be 400 x 2000).
    assert work["matches"] <= 6 * n and work["edit_distance"] <= n, work


def test_lint_needs_no_backend_for_other_modes(tmp_path):
    s = svc(type="NodePort", ports="[{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]")
    f = write(tmp_path, docs(s, slice_(), NODE))
    [found] = [x for x in lint_args([f, "--mode", "nftables"]) if x.code == "RG701"]
    assert "127.0.0.1" not in found.message  # no localhost NodePorts outside iptables
    r = run([str(FIXTURES / "RG201-bad"), "--mode", "ipvs"])
    assert r.exit_code == 1 and "RG201" in r.stdout


def test_numbered_siblings_are_not_typos():
    assert not similar("app-1", "app-2") and not similar("redis000", "redis001")
    assert similar("redis-main", "redis-mian")


def test_a_pod_another_service_selects_is_no_near_miss(tmp_path):
    def pod(name, app):
        return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}
spec: {{nodeName: node-a, containers: [{{name: c, image: x}}]}}
"""
    a = svc("cart-east", cip="10.96.0.21")
    b = svc("cart-west", cip="10.96.0.22")  # one small edit from cart-east, on purpose
    objs = [a, slice_("cart-east"), b, slice_("cart-west"), pod("e-1", "cart-east"), pod("w-1", "cart-west"), NODE]
    assert codes(lint_args([write(tmp_path, docs(*objs))])) == []
    # an orphan one transposition from cart-east, selected by nobody, is reported against it only
    found = lint_args([write(tmp_path, docs(*objs, pod("e-2", "cart-eats")))])
    assert codes(found) == ["RG302"] and found[0].name == "default/cart-east" and "e-2" in found[0].message


# --------------------------------------------------------------------------- one finding per cause


def test_a_nodeport_service_without_cluster_ip_gets_rg001_and_no_rg701(tmp_path):
    """kube-proxy writes no rules for it, so the NodePort is not open anywhere: RG701 would be wrong."""
    np_svc = svc(type="NodePort", ports="[{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]")
    no_ip = np_svc.replace("  clusterIP: 10.96.0.10\n", "")
    assert codes(lint_args([write(tmp_path, docs(no_ip, slice_(), NODE))])) == ["RG001"]
    # with its clusterIP the port is open, and RG701 says so
    assert codes(lint_args([write(tmp_path, docs(np_svc, slice_(), NODE), "ok.yaml")])) == ["RG701"]


def test_an_input_without_any_slice_gets_one_rg200_instead_of_an_error_per_port(tmp_path):
    many = [svc(name=f"s{i}", cip=f"10.96.0.{10 + i}",
                ports="[{name: http, protocol: TCP, port: 80}, {name: dns, protocol: UDP, port: 53}]")
            for i in range(5)]
    found = lint_args([write(tmp_path, docs(*many, NODE))])
    assert codes(found) == ["RG200"]
    (f,) = found
    assert f.severity == "warning" and f.object == "input" and f.where == ""
    assert "5 Services (10 ports) cannot be checked" in f.message
    assert "kubectl get endpointslices -A -o yaml" in f.hint
    r = run([write(tmp_path, docs(*many, NODE), "j.yaml"), "--json"])
    assert r.exit_code == 0  # a warning: the input is incomplete, nothing is known to be broken
    assert json.loads(r.stdout) == [f.to_json()] and json.loads(r.stdout)[0]["object"] == "input"


def test_one_slice_anywhere_makes_a_missing_slice_an_rg201_again(tmp_path):
    found = lint_args([write(tmp_path, docs(svc(), svc(name="api", cip="10.96.0.11"), slice_(svc="api"), NODE))])
    assert codes(found) == ["RG201"] and found[0].name == "default/web"


def test_legacy_endpoints_count_as_slices_for_rg200(tmp_path):
    ep = """\
apiVersion: v1
kind: Endpoints
metadata: {name: api, namespace: default}
subsets:
- addresses: [{ip: 10.244.1.5}]
  ports: [{name: http, port: 8080, protocol: TCP}]
"""
    found = lint_args([write(tmp_path, docs(svc(), svc(name="api", cip="10.96.0.11"), ep, NODE))])
    assert codes(found) == ["RG201"] and found[0].name == "default/web"


def test_rg200_leaves_ports_a_root_cause_explains_to_that_cause(tmp_path):
    pod = """\
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: default, labels: {app: web}}
spec: {containers: [{name: c, image: x}]}
"""
    # web's Pod exists (its endpoints are unknown: RG200); api's selector matches no Pod (RG301 says why)
    found = lint_args([write(tmp_path, docs(svc(), svc(name="api", cip="10.96.0.11"), pod, NODE))])
    assert sorted(codes(found)) == ["RG200", "RG301"]
    rg200 = next(f for f in found if f.code == "RG200")
    assert "1 Service (1 port) cannot be checked" in rg200.message
    assert next(f for f in found if f.code == "RG301").name == "default/api"


# --------------------------------------------------------------------------- workloads (Helm / kustomize output)


def workload(name="web", kind="Deployment", labels="{app: web}", ports="[{name: http, containerPort: 8080}]",
             spec_extra="") -> str:
    return f"""\
apiVersion: apps/v1
kind: {kind}
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{matchLabels: {labels}}}
  template:
    metadata: {{labels: {labels}}}
    spec:
{spec_extra}      containers: [{{name: main, image: x, ports: {ports}}}]
"""


def test_a_selector_that_matches_no_workload_names_the_closest_one(tmp_path):
    s = svc(name="web-frontend", ports="[{name: http, protocol: TCP, port: 80, targetPort: http}]")
    found = lint_args([write(tmp_path, docs(s, workload(labels="{app: web-frontnd}"), NODE))])
    (f,) = [f for f in found if f.code == "RG301"]
    assert f.message == ("selector app=web-frontend matches none of the 1 workload in namespace default; closest: "
                         "Deployment web has app=web-frontnd where the selector wants app=web-frontend: the Service "
                         "gets no endpoints")
    assert f.hint == ("fix the typo: set app=web-frontend in Deployment web's spec.template.metadata.labels, "
                      "or fix the selector")
    # With the right labels, the workload is what the selector matches: no RG301.
    found = lint_args([write(tmp_path, docs(s, workload(labels="{app: web-frontend}"), NODE), "b.yaml")])
    assert "RG301" not in codes(found)


def test_a_named_target_port_no_template_declares_is_an_error_naming_it(tmp_path):
    s = svc(ports="[{name: http, protocol: TCP, port: 80, targetPort: web}]")
    found = lint_args([write(tmp_path, docs(s, workload(kind="StatefulSet"), NODE))])
    (f,) = [f for f in found if f.code == "RG104"]
    assert f.severity == "error" and f.port == "http:80/TCP"
    assert ("targetPort 'web' is a port name, but the selected StatefulSet web declares no TCP container port "
            "named 'web' (it declares http:8080/TCP)") in f.message
    # Declared in a sidecar (an init container that keeps running), it counts.
    sidecar = ("      initContainers: [{name: proxy, image: y, restartPolicy: Always, "
               "ports: [{name: web, containerPort: 15001}]}]\n")
    found = lint_args([write(tmp_path, docs(s, workload(kind="StatefulSet", spec_extra=sidecar), NODE), "b.yaml")])
    assert "RG104" not in codes(found)


def test_an_undeclared_numeric_target_port_is_info_only_when_ports_are_declared(tmp_path):
    s = svc(ports="[{name: http, protocol: TCP, port: 80, targetPort: 8000}]")
    found = lint_args([write(tmp_path, docs(s, workload(kind="DaemonSet"), NODE))])
    (f,) = [f for f in found if f.code == "RG106"]
    assert f.severity == "info" and "targetPort 8000/TCP is not a container port of the selected DaemonSet web" in f.message
    found = lint_args([write(tmp_path, docs(s, workload(kind="DaemonSet", ports="[]"), NODE), "b.yaml")])
    assert "RG106" not in codes(found)  # a template that lists no ports says nothing about them


def test_pods_of_a_dump_stand_for_their_workload(tmp_path):
    """`kubectl get all`: the Deployment's Pods are judged, not its template a second time."""
    pod = """\
apiVersion: v1
kind: Pod
metadata:
  name: web-7c9d-{s}
  namespace: default
  labels: {{app: web}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: web-7c9d, uid: u, controller: true}}]
spec: {{nodeName: node-a, containers: [{{name: main, image: x, ports: [{{name: http, containerPort: 8080}}]}}]}}
status: {{podIP: 10.244.1.{n}}}
"""
    s = svc(ports="[{name: http, protocol: TCP, port: 80, targetPort: web}]")
    found = lint_args([write(tmp_path, docs(s, workload(), pod.format(s="aaaaa", n=5), pod.format(s="bbbbb", n=6),
                                            NODE))])
    (f,) = [f for f in found if f.code == "RG104"]
    assert "none of the selected 2 Pods (Pod web-7c9d-aaaaa, Pod web-7c9d-bbbbb)" in f.message


def test_unschedulable_workload_pods_are_rg303_and_explain_the_missing_endpoints(tmp_path):
    w = workload(spec_extra="      nodeSelector: {disktype: ssd}\n")
    found = lint_args([write(tmp_path, docs(svc(), w, slice_(eps=[("10.244.1.11", "node-a", True)]), NODE))])
    assert "RG303" in codes(found)
    # Without Nodes in the input there is nothing to judge scheduling by.
    found = lint_args([write(tmp_path, docs(svc(), w, slice_()), "b.yaml")])
    assert "RG303" not in codes(found)
    # With --allocate the pods stay Pending, so the port has no endpoints: RG303 says why, no RG201.
    found = lint_args([write(tmp_path, docs(svc(), w, NODE), "c.yaml"), "--allocate"])
    assert codes(found) == ["RG303"]


def test_the_helm_example_is_linted_by_its_workloads_with_and_without_allocate():
    helm = ROOT / "examples" / "helm-rendered"
    found = lint_args([str(helm)])
    # Not yet applied: no cluster IPs (RG001); but every selector matches a workload, every named port is declared.
    assert not {"RG301", "RG302", "RG104"} & set(codes(found))
    assert codes(found).count("RG001") == 4
    found = lint_args([str(helm), "--allocate"])
    assert set(codes(found)) <= {"RG701"}  # as the cluster would hold it: only the NodePort's exposure
    r = run([str(helm), "--allocate"])
    assert "6 Services, 5 EndpointSlices, 3 workloads" in r.stdout


# --------------------------------------------------------------------------- IPVS mode's own checks (RG8xx)

LB = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations: {ANNOTATIONS}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  {CLASS}
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
status:
  loadBalancer:
    ingress: [{ip: INGRESS}]
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses:
  - {type: InternalIP, address: 192.168.56.10}
  - {type: InternalIP, address: fd00:56::10}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: MODE
ipvs: {strictARP: STRICT}
"""


def lb(tmp_path, ingress="203.0.113.7", annotations="{}", cls="", mode="ipvs", strict="false"):
    text = (LB.replace("{ANNOTATIONS}", annotations).replace("{CLASS}", cls).replace("INGRESS", ingress)
            .replace("MODE", mode).replace("STRICT", strict))
    return [f for f in lint_args([write(tmp_path, text)]) if f.code in ("RG801", "RG802", "RG803")]


@pytest.mark.parametrize("kw,why", [
    ({"annotations": "{metallb.universe.tf/address-pool: lan}"}, "a MetalLB annotation (metallb.universe.tf/…)"),
    ({"annotations": "{metallb.io/loadBalancerIPs: 203.0.113.7}"}, "a MetalLB annotation (metallb.io/…)"),
    ({"annotations": "{kube-vip.io/loadbalancerIPs: 203.0.113.7}"}, "a kube-vip annotation (kube-vip.io/…)"),
    ({"cls": "loadBalancerClass: kube-vip.io/kube-vip-class"}, "loadBalancerClass of kube-vip"),
    ({"ingress": "192.168.56.240"}, "192.168.56.240 is in the subnet of node node-a (192.168.56.10) (a /24 assumed)"),
    ({"ingress": "'fd00:56::240'"}, "fd00:56::240 is in the subnet of node node-a (fd00:56::10) (a /64 assumed)"),
])
def test_strict_arp_off_with_an_in_cluster_announcer(tmp_path, kw, why):
    found = lb(tmp_path, **kw)
    [f] = [f for f in found if f.code == "RG801"]
    assert f"announced from inside the cluster ({why})" in f.message and f.object == "Service default/web"


@pytest.mark.parametrize("kw", [
    {},  # a cloud load balancer's address, outside the nodes' subnets
    {"ingress": "192.168.57.240"},  # the next /24
    {"annotations": "{metallb.universe.tf/address-pool: lan}", "strict": "true"},
    {"annotations": "{metallb.universe.tf/address-pool: lan}", "mode": "iptables"},  # an IPVS-mode pitfall only
    {"annotations": "{service.beta.kubernetes.io/aws-load-balancer-type: nlb}"},
])
def test_strict_arp_is_not_asked_for_without_cause(tmp_path, kw):
    assert "RG801" not in {f.code for f in lb(tmp_path, **kw)}


def test_an_ingress_in_proxy_mode_is_not_bound_so_not_announced_by_every_node(tmp_path):
    text = LB.replace("{ANNOTATIONS}", "{}").replace("{CLASS}", "").replace("[{ip: INGRESS}]",
                      "[{ip: 192.168.56.240, ipMode: Proxy}]").replace("MODE", "ipvs").replace("STRICT", "false")
    assert "RG801" not in {f.code for f in lint_args([write(tmp_path, text)])}


def test_deprecation_and_scheduler_findings_follow_the_mode(tmp_path):
    assert [f.code for f in lb(tmp_path)] == ["RG803"]
    assert lb(tmp_path, mode="iptables") == [] and lb(tmp_path, mode="nftables") == []
    bad = LB.replace("ipvs: {strictARP: STRICT}", "ipvs: {scheduler: fastest}")
    for mode, want in (("ipvs", ["RG802", "RG803"]), ("iptables", [])):
        text = bad.replace("{ANNOTATIONS}", "{}").replace("{CLASS}", "").replace("INGRESS", "203.0.113.7")
        found = lint_args([write(tmp_path, text.replace("MODE", mode))])
        assert [f.code for f in found if f.code.startswith("RG8")] == want
    r = run([write(tmp_path, text.replace("MODE", "ipvs")), "--json"])
    assert r.exit_code == 1
    [f] = [f for f in json.loads(r.stdout) if f["code"] == "RG802"]
    assert f["severity"] == "error" and "'fastest' is not an IPVS scheduler" in f["message"]
    assert run([write(tmp_path, text.replace("MODE", "ipvs")), "--ignore", "RG802,RG803"]).exit_code == 0
