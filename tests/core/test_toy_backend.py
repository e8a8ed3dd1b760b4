"""A third backend in a few lines plugs into compile, golden and diff through the registry alone.

The toy mode compiles each service port to one line of text and has a diff
view (one unordered container of lines); it has no applier or tracer, so
apply and trace refuse it with the registry's one message. Nothing in
rulegen is told about it except `backends.register`. The same refusal is
checked here for the real modes that lack a hook.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rulegen import backends
from rulegen.backends.base import Backend
from rulegen.diagnostics import UsageError
from rulegen.diff import Container, Layout, Side

ROOT = Path(__file__).resolve().parents[2]
CASE = ROOT / "fixtures" / "clusterip-basic"


class ToyBackend(Backend[list]):
    mode = "toy"
    output = "one line per service port"

    def compile(self, plan, settings) -> list:
        return [f"{p.spn} {p.proto} {p.cluster_ip}:{p.port.port} -> {','.join(e.ep for e in p.sel.cluster)}"
                for p in plan.ports]

    def render(self, ir: list) -> str:
        return "".join(line + "\n" for line in ir)

    def parse(self, text: str, source: str = "<input>", family: int | None = None) -> list:
        return [line for line in text.splitlines() if line]

    def diff_view(self):
        return ToyView(self)


class ToyView:
    def __init__(self, backend: ToyBackend):
        self.backend = backend

    def read(self, path: str, ip_family: str | None):
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise UsageError(f"{path}: cannot read: {e.strerror}") from None
        return self.backend.parse(text, path), path

    def live(self, kernel, netns, family):
        raise UsageError("the toy mode has no kernel")

    def side(self, ir: list, name: str, kube_only: bool) -> Side:
        lines = Container(kind="list", ordered=False, items=list(enumerate(ir, 1)))
        layout = Layout()
        layout.group_noun, layout.container_noun, layout.item_noun = "toy", "list", "line"
        return Side(name, 4, {"toy": {"ports": lines}}, layout, kube_only)

    def has_outside(self, ir: list) -> bool:
        return False

    def with_outside(self, ir: list, settings) -> list:
        return ir


@pytest.fixture
def toy():
    backends.register("toy", ToyBackend())
    try:
        yield
    finally:
        backends.unregister("toy")


def inputs() -> list[str]:
    return [str(CASE / "input.yaml"), str(CASE / "node.yaml")]


def test_compile_prints_the_toy_text(toy, cli):
    r = cli("compile", *inputs(), "--mode", "toy")
    assert r.exit_code == 0, r.output
    assert r.output == "shop/catalog:http tcp 10.112.14.7:80 -> 10.60.1.14:8080,10.60.2.9:8080,10.60.3.22:8080\n"
    doc = json.loads(cli("compile", *inputs(), "--mode", "toy", "--json").output)
    assert doc["mode"] == "toy" and doc["counts"]["tables"] == {} and doc["counts"]["services"] == 1


def test_the_configuration_may_name_the_mode(toy, cli, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: toy\n")
    r = cli("compile", *inputs(), "--config", str(cfg))
    assert r.exit_code == 0 and r.output.startswith("shop/catalog:http tcp "), r.output


def test_without_the_registry_entry_there_is_no_toy_mode(cli):
    assert "toy" not in backends.modes()
    r = cli("compile", *inputs(), "--mode", "toy")
    assert r.exit_code == 2 and "'toy' is not one of 'iptables', 'ipvs', 'nftables'" in r.output


def test_golden_checks_and_updates_an_expected_toy_file(toy, cli, tmp_path):
    case = tmp_path / "cases" / "basic"
    case.mkdir(parents=True)
    for f in ("input.yaml", "node.yaml"):
        (case / f).write_text((CASE / f).read_text())
    (case / "expected.toy").write_text("stale\n")
    r = cli("golden", str(tmp_path / "cases"))
    assert r.exit_code == 1 and "DIFFERS  basic [toy]" in r.output and "+shop/catalog:http tcp" in r.output
    assert cli("golden", str(tmp_path / "cases"), "--update").exit_code == 0
    assert (case / "expected.toy").read_text().startswith("shop/catalog:http tcp 10.112.14.7:80")
    r = cli("golden", str(tmp_path / "cases"))
    assert r.exit_code == 0 and "ok       basic [toy]" in r.output


def test_diff_compares_toy_texts_by_membership(toy, cli, tmp_path):
    saved = tmp_path / "saved.toy"
    line = "shop/catalog:http tcp 10.112.14.7:80 -> 10.60.1.14:8080,10.60.2.9:8080,10.60.3.22:8080"
    saved.write_text(line + "\n")
    r = cli("diff", *inputs(), "--mode", "toy", "--against", str(saved), "--no-color")
    assert r.exit_code == 0 and "no differences (1 toy, 1 list, 1 line compared" in r.output, r.output
    saved.write_text("old/gone:http tcp 10.112.0.1:80 -> 10.60.9.9:80\n" + line + "\n")
    r = cli("diff", *inputs(), "--mode", "toy", "--against", str(saved), "--json")
    assert r.exit_code == 1
    doc = json.loads(r.output)
    assert doc["lists"] == [{"table": "toy", "list": "ports", "status": "changed", "policy": None, "changes": [
        {"op": "removed", "rule": "old/gone:http tcp 10.112.0.1:80 -> 10.60.9.9:80", "old_position": 1,
         "new_position": None}]}]


NOT_YET = [
    ("apply", ["--netns", "rgt-toy-x", "--dry-run"], "apply"),
    ("trace", ["--dst", "10.112.14.7:80"], "trace"),
    pytest.param("lab", [], "apply", marks=pytest.mark.root),
]
# Every mode rulegen ships has every command's hook now; the toy mode lacks apply and trace.
SHIPPED = ("iptables", "ipvs", "nftables")


def test_every_shipped_mode_has_every_hook():
    assert backends.modes() == SHIPPED
    for mode in SHIPPED:
        for hook in backends.HOOKS:
            if hook != "incremental":
                assert backends.require(mode, hook) is not None, (mode, hook)


@pytest.mark.parametrize("command, extra, what", NOT_YET)
def test_a_missing_hook_is_refused_in_one_voice(toy, cli, command, extra, what, monkeypatch):
    monkeypatch.setenv("RULEGEN_STATE_DIR", "")
    r = cli(command, *inputs(), "--mode", "toy", *extra)
    assert r.exit_code == 2, r.output
    assert f"rulegen: error: --mode toy: {what} is not implemented yet (implemented for: {', '.join(SHIPPED)})\n" \
        in r.output
    assert not os.path.exists("/run/netns/rgt-toy-x")  # refused before anything was made


def test_require_names_the_hook_and_the_modes_that_have_it(toy):
    assert backends.require("iptables", "applier") is backends.require("iptables", "applier")
    with pytest.raises(UsageError, match=r"^--mode toy: trace is not implemented yet \(implemented for: iptables, ipvs, nftables\)$"):
        backends.require("toy", "tracer")
    assert backends.require("toy", "diff_view") is not None
    with pytest.raises(UsageError, match="not implemented yet in this version of rulegen"):
        backends.get("nope")
