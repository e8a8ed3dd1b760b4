"""Lint's nftables-only checks (RG811-RG819): run only in nftables mode, fed by the node's versions from flags
or the Node object, and the shared NodePort exposure check told where this mode takes NodePorts."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from rgtest import run_cli

from rulegen.commands.lint import command as lint_command
from rulegen.diagnostics import Report
from rulegen.flags import flags_of
from rulegen.lint import CODES, check_codes, lint_files, parse_nodeport_range
from rulegen.lint.versions import from_flags, parse_version
from rulegen.loader import load

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "lint-fixtures"
NFT_CODES = sorted(c for c in CODES if c.startswith("RG81"))


def lint_args(argv: list[str]):
    ctx = lint_command.make_context("lint", list(argv))
    p = dict(ctx.params)
    files, config = p.pop("files"), p.pop("config_path")
    rng = parse_nodeport_range(p.pop("nodeport_range"))
    ignore = check_codes(p.pop("ignore"))
    versions = from_flags(p.pop("kernel_version"), p.pop("nft_version"))
    p.pop("as_json")
    return lint_files(list(files), flags_of(p), Report(), config, rng, ignore, versions).findings


def lint_dir(name: str, *extra: str):
    path = FIXTURES / name
    argv = shlex.split((path / "args").read_text()) if (path / "args").exists() else []
    return lint_args([str(path), *argv, *extra])


def codes(found) -> list[str]:
    return sorted(f.code for f in found)


def test_the_nftables_codes_are_there():
    assert NFT_CODES == ["RG811", "RG812", "RG813", "RG814", "RG815", "RG816", "RG817"]


@pytest.mark.parametrize("code", NFT_CODES)
def test_in_iptables_mode_no_nftables_pitfall_is_said(code):
    assert not [f for f in lint_dir(f"{code}-bad", "--mode", "iptables") if f.code.startswith("RG81")]


def test_the_kernel_comes_from_the_node_unless_the_flag_says():
    [f] = [x for x in lint_dir("RG811-bad") if x.code == "RG811"]
    assert f.object == "Node node-a"
    assert "Linux 5.10.0 (Node node-a status.nodeInfo.kernelVersion 5.10.0-28-amd64)" in f.message
    assert "RG811" not in codes(lint_dir("RG811-bad", "--kernel-version", "6.6.1"))
    [f] = [x for x in lint_dir("RG811-good", "--nft-version", "nftables v1.0.0 (Lester Gooch)") if x.code == "RG811"]
    assert "nft 1.0.0 (--nft-version nftables v1.0.0 (Lester Gooch))" in f.message


def test_unknown_versions_are_an_info_and_known_ones_silence_it():
    [f] = [x for x in lint_dir("RG817-bad") if x.code == "RG817"]
    assert "the kernel's and nft's version are not known" in f.message and f.severity == "info"
    [f] = [x for x in lint_dir("RG817-bad", "--kernel-version", "6.8.0") if x.code == "RG817"]
    assert "nft's version is not known" in f.message
    assert "RG817" not in codes(lint_dir("RG817-bad", "--kernel-version", "6.8.0", "--nft-version", "1.1.0"))


def test_the_conntrack_workaround_matters_only_between_5_13_and_6_1():
    def found(kernel):
        return codes(lint_dir("RG816-bad", "--kernel-version", kernel))
    assert "RG816" in found("5.15.0-91-generic") and "RG816" in found("6.0.19")
    assert "RG816" not in found("6.1.0-18-amd64")
    assert "RG816" not in found("5.4.0") and "RG811" in found("5.4.0")  # too old for the mode at all


def test_bad_versions_are_one_line_exit_2():
    r = run_cli("lint", str(FIXTURES / "RG817-bad"), "--kernel-version", "latest")
    assert r.exit_code == 2 and "--kernel-version: 'latest' is not a version" in r.stderr
    assert r.stderr.count("\n") == 1


def test_parse_version():
    assert parse_version("5.15.0-91-generic") == (5, 15, 0)
    assert parse_version("nftables v1.0.6 (Lester Gooch #5)") == (1, 0, 6)
    assert parse_version("6.1") == (6, 1, 0)
    assert parse_version("4.19.0-26-cloud-amd64") < (5, 13, 0) <= parse_version("5.13.0")
    assert parse_version("none") is None


def test_the_loader_reads_the_nodes_kernel_version(tmp_path):
    f = tmp_path / "n.yaml"
    f.write_text("apiVersion: v1\nkind: Node\nmetadata: {name: a}\nstatus:\n  nodeInfo: {kernelVersion: 6.8.0-45-generic}\n"
                 "---\napiVersion: v1\nkind: Node\nmetadata: {name: b}\nstatus:\n  nodeInfo: {kernelVersion: 7}\n"
                 "---\napiVersion: v1\nkind: Node\nmetadata: {name: c}\n")
    nodes = load([str(f)], Report()).nodes
    assert [(n.name, n.kernel_version) for n in nodes] == [("a", "6.8.0-45-generic"), ("b", None), ("c", None)]


def test_rg802_names_the_addresses_that_stop_answering():
    [f] = [x for x in lint_dir("RG812-bad") if x.code == "RG812"]
    assert "answers only on 192.168.56.10, the node's primary address" in f.message
    assert "192.168.57.10 stops answering" in f.message and f.port == "http:80/TCP"


def test_rg804_says_what_is_in_effect(tmp_path):
    [f] = [x for x in lint_dir("RG814-bad") if x.code == "RG814"]
    assert f.object == "KubeProxyConfiguration"
    assert "iptables.masqueradeAll: true (in effect: masqueradeAll false)" in f.message
    # the flag sets it for every mode: then nothing is lost
    assert "RG814" not in codes(lint_dir("RG814-bad", "--masquerade-all"))
    text = (FIXTURES / "RG814-bad" / "input.yaml").read_text().replace(
        "iptables: {masqueradeAll: true}", "iptables: {masqueradeBit: 9, localhostNodePorts: true}")
    f2 = tmp_path / "in.yaml"
    f2.write_text(text)
    [f] = [x for x in lint_args([str(f2), "--nft-version", "1.0.6"]) if x.code == "RG814"]
    assert "iptables.masqueradeBit: 9 (in effect: 14, mark 0x00004000)" in f.message
    assert "iptables.localhostNodePorts: true" in f.message


def test_rg804_reads_a_config_file_too(tmp_path):
    cfg = tmp_path / "kp.yaml"
    cfg.write_text("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n"
                   "iptables: {masqueradeAll: true}\n")
    svc = (FIXTURES / "RG815-good" / "input.yaml").read_text().split("---\napiVersion: kubeproxy")[0]
    f = tmp_path / "in.yaml"
    f.write_text(svc)
    assert "RG814" in codes(lint_args([str(f), "--config", str(cfg)]))


def test_the_exposure_check_knows_where_nftables_mode_takes_nodeports():
    [f] = [x for x in lint_dir("RG812-bad") if x.code == "RG701"]
    assert "the primary node address (this mode's default when nodePortAddresses is unset): 192.168.56.10 " \
           "(node node-a)" in f.message
    assert "192.168.57.10" not in f.message
    [f] = [x for x in lint_dir("RG812-bad", "--mode", "iptables") if x.code == "RG701"]
    assert "every node address: 192.168.56.10, 192.168.57.10" in f.message


def test_json_of_an_nftables_run():
    r = run_cli("lint", str(FIXTURES / "RG811-bad"), "--nft-version", "1.0.6", "--json")
    assert r.exit_code == 1  # RG811 is an error
    data = json.loads(r.stdout)
    assert [d["code"] for d in data][0] == "RG811"
    assert {d["code"] for d in data} == {"RG811", "RG815", "RG701"}
