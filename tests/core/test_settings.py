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


def test_unknown_hostname_makes_every_endpoint_remote():
    # With Local policy, no endpoint on "elsewhere" means DROP for external traffic.
    import re
    text = open(EXAMPLE).read().replace("type: NodePort", "type: NodePort\n  externalTrafficPolicy: Local")
    r = CliRunner().invoke(main, ["compile", "-", "--hostname", "elsewhere"], input=text)
    assert r.exit_code == 0
    assert re.search(r'KUBE-EXTERNAL-SERVICES .*has no local endpoints.*--dport 30080 -j DROP', r.stdout)
    r = CliRunner().invoke(main, ["compile", "-"], input=text)
    assert "has no local endpoints" not in r.stdout and "KUBE-SVL-" in r.stdout


def test_bad_config_file_is_exit_2(tmp_path):
    cfg = tmp_path / "kp.yaml"
    cfg.write_text("kind: ConfigMap\n")
    r = CliRunner().invoke(main, ["compile", EXAMPLE, "--config", str(cfg)])
    assert r.exit_code == 2 and "no KubeProxyConfiguration document" in r.stderr
