"""Bad input: one line naming file, document, object and field; the documented exit code; no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from rgtest import run_cli

from rulegen.cli import main

GOOD_SVC = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, protocol: TCP}]
"""


def run(tmp_path: Path, text: str, *args: str, name: str = "svc.yaml"):
    f = tmp_path / name
    f.write_text(textwrap.dedent(text))
    return run_cli("compile", str(f), *args), str(f)  # a leaked exception fails the test


def test_malformed_yaml_is_exit_2_with_line(tmp_path):
    r, f = run(tmp_path, "kind: Service\nmetadata: {name: [unclosed\n")
    assert r.exit_code == 2
    assert f"{f}: not valid YAML (line" in r.stderr
    assert "Traceback" not in r.output


def test_bad_json_is_exit_2(tmp_path):
    r, f = run(tmp_path, '{"kind": "List", "items": [', name="x.json")
    assert r.exit_code == 2
    assert f"{f}: not valid JSON" in r.stderr


def test_node_port_out_of_range_is_reported_and_left_out(tmp_path):
    text = GOOD_SVC.replace("protocol: TCP}", "protocol: TCP, nodePort: 99999}").replace("clusterIP:", "type: NodePort\n  clusterIP:")
    r, f = run(tmp_path, "---\nkind: Foo\n---\n" + text)
    assert r.exit_code == 0
    assert f"{f}: document 2 (Service default/web): spec.ports[0].nodePort: 99999 is not a valid port" in r.stderr
    assert "KUBE-NODEPORTS -m comment" not in r.stdout  # the node port was left out
    assert "default/web:http has no endpoints" in r.stdout  # the rest of the Service was kept


def test_strict_makes_any_problem_fatal(tmp_path):
    text = GOOD_SVC.replace("port: 80,", "port: 80, nodePort: -1,")
    r, _ = run(tmp_path, text, "--strict")
    assert r.exit_code == 2
    assert "spec.ports[0].nodePort: -1 is not a valid port" in r.stderr


def test_skipped_kinds_are_one_summary_notice_not_a_problem(tmp_path):
    other = "kind: ConfigMap\nmetadata: {name: x}\n---\nkind: CronJob\nmetadata: {name: d}\n---\n"
    r, f = run(tmp_path, other * 3 + "kind: ConfigMap\nmetadata: {name: y}\n---\n" + GOOD_SVC, "--strict")
    assert r.exit_code == 0
    assert r.stderr.splitlines() == [
        "rulegen: skipped 7 objects of kinds rulegen does not use: ConfigMap (4), CronJob (3)"]


@pytest.mark.parametrize("field_yaml,field,message", [
    ("port: \"eighty\"", "spec.ports[0].port", "expected an integer, got a string"),
    ("port: 0", "spec.ports[0].port", "0 is not a valid port"),
    ("port: 70000", "spec.ports[0].port", "70000 is not a valid port"),
    ("port: 80, protocol: ICMP", "spec.ports[0].protocol", "'ICMP' is not TCP, UDP or SCTP"),
])
def test_bad_service_port_is_left_out(tmp_path, field_yaml, field, message):
    text = GOOD_SVC.replace("port: 80, protocol: TCP", field_yaml)
    r, f = run(tmp_path, text)
    assert r.exit_code == 0
    assert f"{f}: document 1 (Service default/web): {field}: {message}" in r.stderr
    assert "10.96.0.20" not in r.stdout  # the only port was left out, so no rules


def test_bad_cluster_ip_leaves_service_out(tmp_path):
    r, f = run(tmp_path, GOOD_SVC.replace("10.96.0.20", "10.96.0.300"))
    assert r.exit_code == 0
    assert f"{f}: document 1 (Service default/web): spec.clusterIP: '10.96.0.300' is not a valid IP address" in r.stderr
    assert "default/web" not in r.stdout


def test_leading_zero_ip_is_read_as_kube_proxy_reads_it(tmp_path):
    r, _ = run(tmp_path, GOOD_SVC.replace("10.96.0.20", "010.096.000.020"), "--strict")
    assert r.exit_code == 0
    assert "-d 10.96.0.20 --dport 80" in r.stdout


def test_bad_endpoint_address_is_left_out(tmp_path):
    text = GOOD_SVC + textwrap.dedent("""\
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
        addressType: IPv4
        ports: [{name: http, port: 8080, protocol: TCP}]
        endpoints:
          - addresses: [not-an-ip]
          - addresses: [10.244.1.5]
            conditions: {ready: "yes"}
          - addresses: [10.244.1.6]
        """)
    r, f = run(tmp_path, text)
    assert r.exit_code == 0
    assert f"{f}: document 2 (EndpointSlice default/web-1): endpoints[0].addresses[0]: 'not-an-ip' is not a valid IP address" in r.stderr
    assert f"{f}: document 2 (EndpointSlice default/web-1): endpoints[1].conditions.ready: expected true or false, got a string" in r.stderr
    assert "--to-destination 10.244.1.6:8080" in r.stdout
    assert "10.244.1.5" not in r.stdout


def test_missing_name_and_kind(tmp_path):
    r, f = run(tmp_path, "kind: Service\nspec: {}\n---\nmetadata: {name: x}\n---\n- 1\n- 2\n")
    assert r.exit_code == 0
    assert f"{f}: document 1 (Service default/?): metadata.name: missing (object left out)" in r.stderr
    assert f"{f}: document 2: kind: missing (object left out)" in r.stderr
    assert f"{f}: document 3: expected a Kubernetes object (a mapping), got a list (left out)" in r.stderr


def test_wrong_type_for_a_whole_section(tmp_path):
    r, f = run(tmp_path, "kind: Service\nmetadata: {name: web}\nspec: [1, 2]\n")
    assert r.exit_code == 0
    assert f"{f}: document 1 (Service default/web): spec: expected a mapping, got a list (object left out)" in r.stderr


def test_list_items_are_placed_by_item(tmp_path):
    text = '{"kind": "List", "items": [{"kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "1.2.3"}}]}'
    r, f = run(tmp_path, text, name="list.json")
    assert f"{f}: document 1 item 1 (Service default/a): spec.clusterIP: '1.2.3' is not a valid IP address" in r.stderr


def test_missing_file_and_bad_flag_values_are_exit_2(tmp_path):
    r = CliRunner().invoke(main, ["compile", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "no such file or directory" in r.stderr
    f = tmp_path / "s.yaml"
    f.write_text(GOOD_SVC)
    r = CliRunner().invoke(main, ["compile", str(f), "--node-ip", "1.2.3.4.5"])
    assert r.exit_code == 2 and "--node-ip: '1.2.3.4.5' is not a valid IP address" in r.stderr
    r = CliRunner().invoke(main, ["compile", str(f), "--nodeport-addresses", "bogus"])
    assert r.exit_code == 2 and "nodePortAddresses: 'bogus'" in r.stderr
    r = CliRunner().invoke(main, ["compile"])
    assert r.exit_code == 2 and "no input files" in r.stderr


def test_binary_file_is_exit_2(tmp_path):
    f = tmp_path / "blob.yaml"
    f.write_bytes(b"\xff\xfe\x00\x01garbage")
    r = CliRunner().invoke(main, ["compile", str(f)])
    assert r.exit_code == 2
    assert "not a text file" in r.stderr or "not valid YAML" in r.stderr


def test_stdin_and_no_traceback_in_a_real_process(tmp_path):
    exe = Path(sys.executable).with_name("rulegen")
    p = subprocess.run([str(exe), "compile", "-"], input="kind: Service\nmetadata: {name: [\n",
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert "<stdin>: not valid YAML" in p.stderr
    assert "Traceback" not in p.stderr
    p = subprocess.run([str(exe), "compile", "-"], input=GOOD_SVC, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "default/web:http has no endpoints" in p.stdout


@pytest.mark.parametrize("locale_env", [{"LC_ALL": "C.UTF-8"}, {"PYTHONIOENCODING": "utf-8:strict"}])
def test_bytes_not_utf8_on_stdin_in_any_locale(tmp_path, locale_env):
    """Standard input decoded like a file, whatever the locale makes of sys.stdin: a message, not a traceback."""
    import os

    exe = Path(sys.executable).with_name("rulegen")
    env = {**os.environ, "PYTHONIOENCODING": "", **locale_env}
    p = subprocess.run([str(exe), "compile", "-"], input=GOOD_SVC.encode() + b'  x: "\xff"\n',
                       capture_output=True, timeout=30, env=env)
    assert p.returncode == 2 and b"Traceback" not in p.stderr
    assert p.stderr.decode().strip() == "rulegen: error: <stdin>: not a text file (YAML or JSON expected)"
    # A rules file given on stdin is read as the same file would be: a bad byte is replaced.
    rules = b'*nat\n:X - [0:0]\n-A X -m comment --comment "\xff" -j RETURN\nCOMMIT\n'
    f = tmp_path / "r.rules"
    f.write_bytes(rules)
    p = subprocess.run([str(exe), "diff", str(f), "-"], input=rules, capture_output=True, timeout=30, env=env)
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
    assert b"no differences" in p.stdout
