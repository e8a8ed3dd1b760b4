"""Settings precedence (flag > --config > KubeProxyConfiguration among inputs > Node > default)."""

from __future__ import annotations

from click.testing import CliRunner

from rulegen.cli import main

EXAMPLE = "examples/web-frontend/cluster.yaml"  # carries clusterCIDR 10.244.0.0/16


def compile_(*args):
    r = CliRunner().invoke(main, ["compile", EXAMPLE, *args])
    assert r.exit_code == 0, r.output
    return r.stdout


def test_input_config_is_used():
    out = compile_()
    assert "! -s 10.244.0.0/16 -j KUBE-MARK-MASQ" in out
    assert "--or-mark 0x00004000" in out


def test_config_file_overrides_input_config_and_flag_overrides_both(tmp_path):
    cfg = tmp_path / "kp.yaml"
    cfg.write_text("kind: KubeProxyConfiguration\nclusterCIDR: 10.200.0.0/16\niptables: {masqueradeBit: 10}\n")
    out = compile_("--config", str(cfg))
    assert "! -s 10.200.0.0/16 -j KUBE-MARK-MASQ" in out and "--or-mark 0x00000400" in out
    out = compile_("--config", str(cfg), "--cluster-cidr", "10.77.0.0/16", "--masquerade-bit", "3")
    assert "! -s 10.77.0.0/16 -j KUBE-MARK-MASQ" in out and "--or-mark 0x00000008" in out


def test_node_decides_hostname_and_node_ip_flag_overrides_node():
    out = compile_("--nodeport-addresses", "primary")
    assert "-d 192.168.56.10 -j KUBE-NODEPORTS" in out
    out = compile_("--nodeport-addresses", "primary", "--node-ip", "192.0.2.7")
    assert "-d 192.0.2.7 -j KUBE-NODEPORTS" in out and "192.168.56.10" not in out


def _without_node(text: str) -> str:
    return "---".join(d for d in text.split("---") if "kind: Node\n" not in d)


def test_hostname_without_nodes_in_the_input_only_decides_local_endpoints():
    # No Node to pick: "elsewhere" is the node, and no endpoint is on it, so
    # Local policy means DROP for external traffic.
    import re
    text = open(EXAMPLE).read().replace("type: NodePort", "type: NodePort\n  externalTrafficPolicy: Local")
    r = CliRunner().invoke(main, ["compile", "-", "--hostname", "elsewhere"], input=_without_node(text))
    assert r.exit_code == 0, r.output
    assert re.search(r'KUBE-EXTERNAL-SERVICES .*has no local endpoints.*--dport 30080 -j DROP', r.stdout)
    r = CliRunner().invoke(main, ["compile", "-"], input=text)
    assert "has no local endpoints" not in r.stdout and "KUBE-SVL-" in r.stdout


def test_hostname_naming_no_node_of_the_input_is_exit_2():
    r = CliRunner().invoke(main, ["compile", EXAMPLE, "--hostname", "elsewhere"])
    assert r.exit_code == 2
    assert r.stderr == "rulegen: error: --hostname elsewhere: no Node of that name in the input (Nodes: node-a)\n"


def test_hostname_override_counts_like_the_flag(tmp_path):
    cfg = tmp_path / "kp.yaml"
    cfg.write_text("kind: KubeProxyConfiguration\nhostnameOverride: node-q\n")
    r = CliRunner().invoke(main, ["compile", EXAMPLE, "--config", str(cfg)])
    assert r.exit_code == 2
    assert "hostnameOverride node-q: no Node of that name in the input (Nodes: node-a)" in r.stderr
    r = CliRunner().invoke(main, ["compile", EXAMPLE, "--config", str(cfg), "--hostname", "node-a"])
    assert r.exit_code == 0, r.output


def _node(name: str, ip: str) -> str:
    return (f"---\nkind: Node\nmetadata: {{name: {name}}}\n"
            f"status: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n")


def test_several_nodes_need_a_hostname():
    text = open(EXAMPLE).read() + _node("node-c", "192.168.56.12") + _node("node-b", "192.168.56.11")
    r = CliRunner().invoke(main, ["compile", "-"], input=text)
    assert r.exit_code == 2
    assert r.stderr == ("rulegen: error: 3 Nodes in the input and no --hostname to pick one "
                        "(Nodes: node-a, node-b, node-c)\n")
    r = CliRunner().invoke(main, ["compile", "-", "--hostname", "node-b", "--nodeport-addresses", "primary"],
                           input=text)
    assert r.exit_code == 0, r.output
    assert "-d 192.168.56.11 -j KUBE-NODEPORTS" in r.stdout


def test_the_same_node_twice_is_one_node():
    text = open(EXAMPLE).read()
    r = CliRunner().invoke(main, ["compile", "-", "-"], input=text)
    assert r.exit_code == 0, r.output


def test_hundreds_of_nodes_are_listed_in_one_bounded_line():
    text = open(EXAMPLE).read() + "".join(_node(f"n-{i:03}", f"10.1.{i // 250}.{i % 250 + 1}") for i in range(300))
    r = CliRunner().invoke(main, ["compile", "-", "--hostname", "node-z"], input=text)
    assert r.exit_code == 2
    line = r.stderr.rstrip("\n")
    assert "\n" not in line and len(line) < 400
    assert line.endswith("(Nodes: n-000, n-001, n-002, n-003, n-004, n-005, n-006, n-007, n-008, n-009, n-010, "
                         "n-011, n-012, n-013, n-014, n-015, n-016, n-017, n-018, n-019 and 281 more)")


def test_node_ip_without_a_node_stays_allowed():
    text = _without_node(open(EXAMPLE).read())
    r = CliRunner().invoke(main, ["compile", "-", "--node-ip", "192.0.2.7", "--nodeport-addresses", "primary"],
                           input=text)
    assert r.exit_code == 0, r.output
    assert "-d 192.0.2.7 -j KUBE-NODEPORTS" in r.stdout


def test_cluster_cidr_with_host_bits_is_read_as_its_network_with_a_notice():
    r = CliRunner().invoke(main, ["compile", EXAMPLE, "--cluster-cidr", "10.244.1.5/16", "--strict"])
    assert r.exit_code == 0, r.output  # a notice: kube-proxy takes the value as it is
    assert "! -s 10.244.0.0/16 -j KUBE-MARK-MASQ" in r.stdout
    assert r.stderr == ("--cluster-cidr: '10.244.1.5/16' has bits set past its prefix length; read as 10.244.0.0/16, "
                        "as kube-proxy reads it (did you mean 10.244.0.0/16, or 10.244.1.5 alone?)\n")
    r = CliRunner().invoke(main, ["compile", EXAMPLE, "--cluster-cidr", "10.244.0.0/16"])
    assert r.stderr == ""


def test_config_cluster_cidr_with_host_bits_is_a_notice(tmp_path):
    cfg = tmp_path / "kp.yaml"
    cfg.write_text("kind: KubeProxyConfiguration\nclusterCIDR: 10.200.3.4/16,fd00:1::5/64\n")
    r = CliRunner().invoke(main, ["compile", EXAMPLE, "--config", str(cfg), "--strict"])
    assert r.exit_code == 0, r.output
    assert "! -s 10.200.0.0/16 -j KUBE-MARK-MASQ" in r.stdout
    assert "clusterCIDR: '10.200.3.4/16' has bits set past its prefix length; read as 10.200.0.0/16" in r.stderr
    assert "clusterCIDR: 'fd00:1::5/64' has bits set past its prefix length; read as fd00:1::/64" in r.stderr


def test_bad_config_file_is_exit_2(tmp_path):
    cfg = tmp_path / "kp.yaml"
    cfg.write_text("kind: ConfigMap\n")
    r = CliRunner().invoke(main, ["compile", EXAMPLE, "--config", str(cfg)])
    assert r.exit_code == 2 and "no KubeProxyConfiguration document" in r.stderr
