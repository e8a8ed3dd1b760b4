"""Names from a file never reach the payload as anything but a quoted comment.

An object whose name, namespace, port name, label or nodeName the API server
would refuse is reported with its place and field and left out whole; the
payload is byte for byte the one the input gives without it, `--strict`
makes it exit 2, and (as root) iptables-restore accepts the payload. Behind
the loader, the iptables compiler writes every comment as kube-proxy does
for valid names and as iptables-save does for anything else, so even a
model built around the loader cannot end a line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from nshelp import namespace_names

from rulegen import apinames, loader
from rulegen.cli import main
from rulegen.dataplane.xtables.comments import COMMENT_MAX, comment_arg, quoted_body
from rulegen.dataplane.xtables.spec import tokenize
from rulegen.diagnostics import Report
from rulegen.lint import lint_files
from rulegen.model import Endpoint, EndpointSlice, Inputs, Service, ServicePort, SlicePort
from rulegen.pipeline import Timings, compile_inputs

BASE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  selector: {app: web}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a1b2c, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: [10.244.1.5]
    nodeName: node-a
  - addresses: [10.244.2.6]
    nodeName: node-b
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.56.10}]}
---
kind: KubeProxyConfiguration
clusterCIDR: 10.244.0.0/16
"""

# An extra Service, and an extra slice for `web`: with good names each adds rules,
# so a payload equal to BASE's proves the hostile copy was left out whole.
EXTRA_SVC = """\
---
apiVersion: v1
kind: Service
metadata: {name: NAME, namespace: NS}
spec:
  clusterIP: 10.96.0.30
  ports: [{name: PORT, port: 81, protocol: TCP, targetPort: TARGET}]
"""
EXTRA_SLICE = """\
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-z9y8x, namespace: shop, labels: {kubernetes.io/service-name: web, team: TEAM}}
addressType: IPv4
ports: [{name: PORT, port: 8080, protocol: TCP}]
endpoints:
  - addresses: [10.244.3.7]
    nodeName: NODE
"""
GOOD = {"NAME": "api", "NS": "shop", "PORT": "http", "TARGET": "8081", "TEAM": "blue", "NODE": "node-c"}
NO_NFACCT = ("--no-nfacct",)  # a fresh namespace has no nfacct counters to match on


def yq(s: str) -> str:
    """S as a double-quoted YAML scalar (escapes for newlines and quotes)."""
    return '"' + s.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


def extra(template: str, **bad: str) -> str:
    text = template
    for key, value in {**GOOD, **{k: yq(v) for k, v in bad.items()}}.items():
        text = text.replace(key, value)
    return text


def compile_text(tmp_path: Path, text: str, *args: str, name: str = "in.yaml"):
    f = tmp_path / name
    f.write_text(text)
    r = CliRunner().invoke(main, ["compile", str(f), *NO_NFACCT, *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    return r, str(f)


def base_payload(tmp_path: Path) -> str:
    r, _ = compile_text(tmp_path, BASE, "--strict", name="base.yaml")
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    return r.stdout


# (case id, the extra document, the field named, words of the message)
INJECTIONS = [
    ("service-name", extra(EXTRA_SVC, NAME="api\n-A INPUT -j ACCEPT"), "metadata.name", "is not a valid Service name"),
    ("service-name-upper", extra(EXTRA_SVC, NAME="Api"), "metadata.name", "(an RFC 1035 label)"),
    ("service-name-trailing-newline", extra(EXTRA_SVC, NAME="api\n"), "metadata.name", "is not a valid Service name"),
    ("namespace", extra(EXTRA_SVC, NS='shop" -j ACCEPT #'), "metadata.namespace", "is not a valid namespace"),
    ("port-name", extra(EXTRA_SVC, PORT="http\n*filter"), "spec.ports[0].name", "is not a valid port name"),
    ("port-name-space", extra(EXTRA_SVC, PORT="h ttp"), "spec.ports[0].name", "is not a valid port name"),
    ("target-port-name", extra(EXTRA_SVC, TARGET="http'x"), "spec.ports[0].targetPort", "is not a valid port name"),
    ("slice-port-name", extra(EXTRA_SLICE, PORT='http" -j DROP'), "ports[0].name", "is not a valid port name"),
    ("label-value", extra(EXTRA_SLICE, TEAM="blue\n-F"), "metadata.labels[team]", "is not a valid label value"),
    ("node-name", extra(EXTRA_SLICE, NODE="node-c\u2028-X"), "endpoints[0].nodeName", "is not a valid node name"),
]


@pytest.mark.parametrize("case,doc,field,words", INJECTIONS, ids=[c[0] for c in INJECTIONS])
def test_injected_object_is_reported_and_left_out(tmp_path, case, doc, field, words):
    want = base_payload(tmp_path)
    r, f = compile_text(tmp_path, BASE + doc)
    assert r.exit_code == 0
    assert r.stdout == want  # byte for byte: nothing of the bad object got in
    lines = [ln for ln in r.stderr.splitlines() if ln]
    assert len(lines) == 1, lines  # one line, whatever the name holds
    assert lines[0].startswith(f"{f}: document 5 (")
    assert f"): {field}: " in lines[0] and words in lines[0]
    assert lines[0].endswith("(the API server refuses the whole Service: left out)") or \
        lines[0].endswith("(the API server refuses the whole EndpointSlice: left out)")
    r, _ = compile_text(tmp_path, BASE + doc, "--strict")
    assert r.exit_code == 2


def test_the_good_copies_do_add_rules(tmp_path):
    """The other half of the proof above: with good names the extra objects change the payload."""
    want = base_payload(tmp_path)
    r, _ = compile_text(tmp_path, BASE + extra(EXTRA_SVC), "--strict")
    assert r.exit_code == 0 and r.stdout != want and "shop/api:http" in r.stdout
    r, _ = compile_text(tmp_path, BASE + extra(EXTRA_SLICE), "--strict")
    assert r.exit_code == 0 and "10.244.3.7:8080" in r.stdout


@pytest.mark.parametrize("ports,field,words", [
    ("[{name: http, port: 80}, {port: 81}]", "spec.ports[1].name", "must name each of them"),
    ("[{name: http, port: 80}, {name: http, port: 81, protocol: UDP}]", "spec.ports[1].name", "duplicate port name 'http'"),
    ("[{name: web.http, port: 80}]", "spec.ports[0].name", "must not contain dots"),
])
def test_service_port_name_rules(tmp_path, ports, field, words):
    doc = extra(EXTRA_SVC).replace("ports: [{name: http, port: 81, protocol: TCP, targetPort: 8081}]", f"ports: {ports}")
    assert f"ports: {ports}" in doc
    want = base_payload(tmp_path)
    r, _ = compile_text(tmp_path, BASE + doc)
    assert r.stdout == want
    assert f"(Service shop/api): {field}: " in r.stderr and words in r.stderr


def test_config_interface_names_are_checked(tmp_path):
    """detectLocal names reach the payload as `-i NAME`: a bad one is reported and ignored."""
    mode = "detectLocalMode: BridgeInterface\n"
    without, _ = compile_text(tmp_path, BASE.replace("clusterCIDR: 10.244.0.0/16\n", mode), name="a.yaml")
    assert without.exit_code == 0 and " -i " not in without.stdout
    good, _ = compile_text(tmp_path, BASE.replace("clusterCIDR: 10.244.0.0/16\n", mode + "detectLocal: {bridgeInterface: cbr0}\n"),
                           "--strict", name="b.yaml")
    assert good.exit_code == 0 and "! -i cbr0 -j KUBE-MARK-MASQ" in good.stdout
    for key, value, words in (("bridgeInterface", "cbr0 -j ACCEPT", "no blanks"),
                              ("bridgeInterface", "a-very-long-name", "no more than 15 characters"),
                              ("interfaceNamePrefix", "veth12345678901", "no more than 14 characters"),
                              ("bridgeInterface", "br0\n-A INPUT", "control characters")):
        text = BASE.replace("clusterCIDR: 10.244.0.0/16\n", mode + f"detectLocal: {{{key}: {yq(value)}}}\n")
        r, f = compile_text(tmp_path, text, name="c.yaml")
        assert r.exit_code == 0
        assert r.stdout == without.stdout  # ignored: no detector, as without the setting
        assert f"{f}: document 4 (KubeProxyConfiguration ?): detectLocal.{key}: " in r.stderr
        assert words in r.stderr and r.stderr.rstrip().endswith("(ignored)")
        r, _ = compile_text(tmp_path, text, "--strict", name="c.yaml")
        assert r.exit_code == 2


def test_other_kinds_names(tmp_path):
    """Nodes, Pods, legacy Endpoints and ServiceCIDRs follow their own API rules too."""
    docs = textwrap.dedent("""\
        ---
        {kind: Node, metadata: {name: "node_x"}}
        ---
        {kind: Pod, metadata: {name: p1, namespace: shop}, spec: {containers: [{ports: [{name: "HTTP", containerPort: 80}]}]}}
        ---
        {kind: Pod, metadata: {name: p2, namespace: shop}, spec: {nodeName: "node a"}}
        ---
        {kind: ServiceCIDR, metadata: {name: "cidr/1"}, spec: {cidrs: [10.96.0.0/16]}}
        ---
        kind: Endpoints
        metadata: {name: legacy, namespace: shop}
        subsets: [{addresses: [{ip: 10.244.9.9}], ports: [{name: a, port: 1}, {port: 2}]}]
        """)
    r, f = compile_text(tmp_path, BASE + docs)
    assert r.exit_code == 0
    err = r.stderr
    assert "(Node 'node_x'): metadata.name: 'node_x' is not a valid Node name" in err
    assert "(Pod shop/p1): spec.containers[0].ports[0].name: 'HTTP' is not a valid port name: " \
           "must contain only lower-case letters, digits and '-' (an IANA_SVC_NAME)" in err
    assert "(Pod shop/p2): spec.nodeName: 'node a' is not a valid node name" in err
    assert "(ServiceCIDR 'cidr/1'): metadata.name: 'cidr/1' is not a valid ServiceCIDR name" in err
    assert "(Endpoints shop/legacy): subsets[0].ports[1].name: missing: a subset with several ports" in err
    assert err.count("the API server refuses the whole") == 5


def test_report_lines_stay_one_line_for_any_name(tmp_path):
    nasty = "x\n\r\x1b[31m\u2028" + "y" * 500
    text = f"kind: Service\nmetadata: {{name: {yq(nasty)}}}\nspec: {{clusterIP: 10.96.0.9, ports: [{{port: 80}}]}}\n"
    r, f = compile_text(tmp_path, text)
    # The only Service is left out, so the empty-input warning follows the report line.
    lines = [l for l in r.stderr.splitlines() if "no Service in the input" not in l]
    assert len(lines) == 1 and "\x1b" not in lines[0] and "\u2028" not in lines[0]
    assert f"... ({len(nasty)} characters)" in lines[0] and len(lines[0]) < 600


def test_lint_names_the_object_and_field(tmp_path):
    f = tmp_path / "in.yaml"
    f.write_text(BASE + extra(EXTRA_SLICE, NODE="Node-C"))
    report = Report()
    found = lint_files([str(f)], {}, report)
    mine = [x for x in found.findings if x.code == "RG002"]
    assert len(mine) == 1
    assert mine[0].object == "EndpointSlice shop/web-z9y8x" and mine[0].severity == "error"
    assert mine[0].message.startswith("endpoints[0].nodeName: 'Node-C' is not a valid node name")
    assert mine[0].where == f"{f}: document 5 (EndpointSlice shop/web-z9y8x)"
    # The same words as the input-problem line every command prints.
    assert [str(p) for p in report.problems] == [f"{mine[0].where}: {mine[0].message}"]
    assert not [x for x in lint_files([str(f)], {}, Report(), ignore=["RG002"]).findings if x.code == "RG002"]


def test_node_names_are_checked_once_each(monkeypatch):
    """100k endpoints name a few hundred nodes: the check runs once per distinct name, not per endpoint."""
    calls = []
    check = apinames.node_name.check
    monkeypatch.setattr(apinames.node_name, "check", lambda s: calls.append(s) or check(s))
    monkeypatch.setattr(apinames.node_name, "good", set())
    monkeypatch.setattr(loader, "_NODE_NAMES", {})
    slices = [{"kind": "EndpointSlice", "metadata": {"name": f"s{k}", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 80}],
               "endpoints": [{"addresses": [f"10.0.{k}.{i}"], "nodeName": f"node-{i % 3}"} for i in range(200)]}
              for k in range(5)]
    inputs = loader.load_objects(((loader.Place("x", k + 1), s) for k, s in enumerate(slices)), Report())
    assert sum(len(s.endpoints) for s in inputs.slices) == 1000
    assert sorted(calls) == ["node-0", "node-1", "node-2"]


# --------------------------------------------------------------------------- the API server's rules


@pytest.mark.parametrize("check,good,bad", [
    (apinames.dns1035_label, ["a", "web-1", "a" * 63], ["", "1web", "web-", "Web", "we_b", "we.b", "a" * 64, "web\n"]),
    (apinames.dns1123_label, ["a", "1web", "web-1", "0"], ["", "web-", "-web", "we.b", "a" * 64, "web\n", "wéb"]),
    (apinames.dns1123_subdomain, ["a", "web.shop.example", "1-2.3"], ["", "web..x", ".web", "web.", "a-.b", "A.b",
                                                                      "a" * 254, "web\n"]),
    (apinames.port_name, ["http", "h2", "a-b-c", "x" * 15], ["", "80", "-http", "http-", "h--p", "HTTP", "x" * 16,
                                                             "http\n"]),
    (apinames.label_value, ["", "a", "A.b_c-1", "x" * 63], ["-a", "a-", "a b", "x" * 64, "a\n", "ä"]),
    (apinames.label_key, ["app", "kubernetes.io/service-name", "A_b.c"], ["", "/app", "a/b/c", "Example.com/x",
                                                                           "a/", "x" * 64, "app\n"]),
])
def test_api_name_rules(check, good, bad):
    for s in good:
        assert check(s) == "", s
    for s in bad:
        assert check(s), s


def test_interface_names():
    assert apinames.interface_name("cbr0") == "" and apinames.interface_name("eth0.100") == ""
    assert apinames.interface_name("x" * 15) == "" and apinames.interface_name("x" * 14, prefix=True) == ""
    for bad in ("", ".", "..", "x" * 16, "a/b", "a:b", "a b", 'a"b', "a\\b", "a\tb", "é"):
        assert apinames.interface_name(bad), bad
    assert apinames.interface_name("x" * 15, prefix=True)


# --------------------------------------------------------------------------- comments, as iptables-save writes them


def save_string(text: str) -> str:
    """libxtables' xtables_save_string, the way iptables-save prints an argument."""
    if text and all(c.isascii() and (c.isalnum() or c in "_-") for c in text):
        return text
    return '"' + "".join("\\" + c if c in "\"\\'" else c for c in text) + '"'


def kube_proxy_or_save(text: str) -> str:
    """Bare as kube-proxy writes `ns/name:port`, else as iptables-save writes it."""
    return text if re.fullmatch(r"[A-Za-z0-9_.:/-]+", text) else save_string(text)


@pytest.mark.parametrize("text", ["default/web:http", "shop/api", "ns/n:p-1", "a_b"])
def test_valid_names_are_written_bare_as_kube_proxy_writes_them(text):
    assert comment_arg(text) == text


@pytest.mark.parametrize("text", ['a"b', "a b", "a\\b", "it's", "#x", "ü", "a b \" ' \\ #", "", "-x", "a_b-c"])
def test_other_text_is_quoted_as_iptables_save_quotes_it(text):
    assert comment_arg(text) == save_string(text)


@hsettings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.text(max_size=300))
def test_a_comment_reads_back_as_its_text_and_never_breaks_a_line(text):
    arg = comment_arg(text)
    assert "\n" not in arg and "\r" not in arg and len(arg.splitlines()) <= 1
    toks = tokenize(f"-m comment --comment {arg} -j ACCEPT")  # as iptables-restore splits a line
    assert toks[:3] == ["-m", "comment", "--comment"] and toks[4:] == ["-j", "ACCEPT"]
    back = toks[3]
    assert len(back.encode()) <= COMMENT_MAX
    clean = "".join(c if c.isprintable() else "?" for c in text)
    assert clean.encode()[:COMMENT_MAX].decode("utf-8", "ignore") == back
    if clean == text and len(text.encode()) <= COMMENT_MAX:
        assert arg == kube_proxy_or_save(text)


def test_quoted_body_escapes_and_cuts():
    assert quoted_body('a"b\\c\'d') == 'a\\"b\\\\c\\\'d'
    assert quoted_body("a\nb\x00c\u2028d") == "a?b?c?d"
    assert quoted_body("é" * 10, room=5) == "éé"  # 4 bytes: never half a character


def hostile_inputs(name: str) -> Inputs:
    """A model the loader would never make: the compiler's own guard is all that stands."""
    svc = Service(namespace="default", name=name, type="NodePort", cluster_ip="10.96.0.10",
                  ports=(ServicePort("http", "TCP", 80, 30080, 8080),), external_ips=("203.0.113.9",),
                  session_affinity="ClientIP")
    sl = EndpointSlice("default", "s", name, "IPv4", (SlicePort("http", "TCP", 8080),),
                       (Endpoint("10.244.1.1", node_name="n1"), Endpoint("10.244.1.2", node_name="n1")))
    return Inputs([svc], [sl], [], [], [], [])


HOSTILE = ["web\n-A INPUT -j ACCEPT", 'we"b -j DROP #', "back\\slash 'q'", "é" * 300, "a\u2028b\rc\x00d"]


@pytest.mark.parametrize("name", HOSTILE)
def test_compiler_quotes_a_hostile_name_behind_the_loader(name):
    text = compile_inputs(hostile_inputs(name), {"mode": "iptables", "nfacct": False, "node_ip": ("192.168.1.1",)},
                          Report(), Timings()).text
    assert len(text.splitlines()) == text.count("\n")  # no line breaks but the real ones
    rules = [ln for ln in text.splitlines() if "--comment" in ln and "default/" in ln]
    assert len(rules) > 10
    for ln in rules:
        toks = tokenize(ln.split(" ", 2)[2])
        comment = toks[toks.index("--comment") + 1]
        assert len(comment.encode()) <= COMMENT_MAX
        assert comment.startswith("default/") or " default/" in comment


LONGEST = textwrap.dedent(f"""\
    apiVersion: v1
    kind: Service
    metadata: {{name: s{"e" * 61}1, namespace: n{"s" * 62}}}
    spec:
      type: LoadBalancer
      externalTrafficPolicy: Local
      clusterIP: 10.96.0.40
      loadBalancerSourceRanges: [192.168.0.0/16]
      ports:
        - {{name: p{"o" * 61}1, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30081}}
        - {{name: q{"o" * 61}2, port: 81, protocol: TCP, targetPort: 8081, nodePort: 30082}}
    status: {{loadBalancer: {{ingress: [{{ip: 198.51.100.7}}]}}}}
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {{name: x, namespace: n{"s" * 62}, labels: {{kubernetes.io/service-name: s{"e" * 61}1}}}}
    addressType: IPv4
    ports: [{{name: p{"o" * 61}1, port: 8080}}, {{name: q{"o" * 61}2, port: 8081}}]
    endpoints: [{{addresses: [10.244.1.5], nodeName: node-a}}, {{addresses: [10.244.2.6], nodeName: node-b}}]
    ---
    {{kind: Node, metadata: {{name: node-a}}, status: {{addresses: [{{type: InternalIP, address: 192.168.56.10}}]}}}}
    """)


def test_the_longest_valid_names_fit_the_comment_match(tmp_path):
    """63-character namespace, name and port name: 191 bytes, bare, and every phrase around them within 255."""
    r, _ = compile_text(tmp_path, LONGEST, "--strict", "--cluster-cidr", "10.244.0.0/16")
    assert r.exit_code == 0, r.stderr
    spn = f"n{'s' * 62}/s{'e' * 61}1:p{'o' * 61}1"
    assert len(spn) == 191 and f"--comment {spn} " in r.stdout  # bare, as kube-proxy writes it
    comments = [toks[toks.index("--comment") + 1] for toks in
                (tokenize(ln.split(" ", 2)[2]) for ln in r.stdout.splitlines() if "--comment" in ln)]
    assert f"other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL" in comments
    assert f"masquerade LOCAL traffic for {spn} external destinations" in comments
    assert max(len(c.encode()) for c in comments) <= COMMENT_MAX


@pytest.mark.root
def test_payloads_load_into_a_namespace(tmp_path):
    """Every payload above is one iptables-restore accepts; the hostile comments read back as written."""
    if not shutil.which("iptables-save"):
        pytest.skip("iptables-save not installed")
    payloads = [base_payload(tmp_path), compile_text(tmp_path, LONGEST, "--cluster-cidr", "10.244.0.0/16")[0].stdout]
    for _, doc, _, _ in INJECTIONS:
        payloads.append(compile_text(tmp_path, BASE + doc)[0].stdout)
    flags = {"mode": "iptables", "nfacct": False, "node_ip": ("192.168.1.1",)}
    hostile = [compile_inputs(hostile_inputs(n), flags, Report(), Timings()).text for n in HOSTILE]
    with namespace_names("rgt-names") as fresh:
        ns = fresh()
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        for text in payloads + hostile:
            r = subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "--test"], input=text,
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
        # Loaded for real, each hostile comment is what the compiler wrote: a rule is never split.
        for text in hostile:
            r = subprocess.run(["ip", "netns", "exec", ns, "iptables-restore"], input=text,
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            live = subprocess.run(["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"],
                                  capture_output=True, text=True, timeout=60).stdout
            want, got = nat_comments(text), nat_comments(live)
            assert got == want and len([c for c in want if c.startswith("default/")]) >= 2


def nat_comments(text: str) -> list[str]:
    """The comment of every nat rule, read as iptables-restore reads it (iptables-save orders options its own way)."""
    out, table = [], None
    for ln in text.splitlines():
        if ln.startswith("*"):
            table = ln[1:]
        elif table == "nat" and ln.startswith("-A ") and "--comment" in ln:
            toks = tokenize(ln.split(" ", 2)[2])
            out.append(toks[toks.index("--comment") + 1])
    return sorted(out)
