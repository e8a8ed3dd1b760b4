"""`rulegen migrate`: the cases' reports, the JSON shape, exit statuses, causes and the table behind them.

The cases under migrate-fixtures/ are whole reports (golden files, one per
direction, `--update-golden` rewrites them); the tests below check what
the reports stand on: every difference is named (a known cause, or
`unexplained`, never dropped), a cause holds only where the modes or the
settings really differ, `--settings-to` says what it removes, and bad
input is exit 2.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest

from rulegen import backends
from rulegen.backends.base import Backend
from rulegen.migrate import migrate
from rulegen.migrate.causes import CAUSE_IDS, CAUSES, UNEXPLAINED
from rulegen.trace.scenarios import CLUSTER_IP

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "migrate-fixtures"
DIRECTIONS = ("iptables-ipvs", "ipvs-iptables", "iptables-nftables", "ipvs-nftables")


def _expected_files() -> list[Path]:
    return sorted(CASES.glob("*/expected.*.txt"))


def _args(path: Path) -> list[str]:
    """expected.FROM-TO[.settings-to].txt → the command line that prints it (paths relative to the root)."""
    parts = path.name.split(".")
    src, dst = parts[1].split("-")
    case = path.parent.relative_to(ROOT)
    args = ["migrate", str(case / "input.yaml"), "--from", src, "--to", dst]
    if "settings-to" in parts:
        args += ["--settings-to", str(case / "settings-to.yaml")]
    return args


@pytest.mark.parametrize("path", _expected_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_case_report(path, cli, monkeypatch, request):
    monkeypatch.chdir(ROOT)
    r = cli(*_args(path))
    assert r.exit_code in (0, 1), r.output
    if request.config.getoption("--update-golden"):
        path.write_text(r.stdout)
        return
    want = path.read_text()
    assert r.stdout == want, "".join(difflib.unified_diff(want.splitlines(True), r.stdout.splitlines(True),
                                                         str(path), "rulegen migrate"))
    assert r.exit_code == (0 if want.rstrip().splitlines()[-1].startswith("no difference") else 1)


def test_every_case_has_a_report_in_each_direction_rulegen_traces():
    for case in sorted(p for p in CASES.iterdir() if p.is_dir()):
        names = {p.name for p in case.glob("expected.*.txt")}
        assert names, f"{case.name}: no expected report"
        if case.name != "same-settings":
            assert {f"expected.{d}.txt" for d in DIRECTIONS} <= names, case.name


def _run(case: str, to: str, src: str | None = None, **kw):
    return migrate([str(CASES / case / "input.yaml")], {}, to, src, **kw)


def _keys(result, cause: str | None = None):
    return {(f.scenario.spn, f.scenario.client.kind, f.scenario.entry.address) for f in result.differences
            if cause is None or f.why.cause == cause}


def test_the_localhost_nodeport_is_one_cause_with_no_setting_in_ipvs():
    r = _run("localhost-nodeport", "ipvs", "iptables")
    [f] = [f for f in r.differences if f.why.cause == "localhost-nodeports"]
    assert (f.scenario.client.kind, f.scenario.entry.address) == ("localhost", "127.0.0.1:31080")
    assert (f.a.behaviour.verdict, f.b.behaviour.verdict) == ("DNAT", "ACCEPT")
    assert f.why.setting is None and "loopback" in f.why.no_setting
    # Back the other way, iptables mode has the setting that keeps IPVS mode's behaviour.
    [g] = [f for f in _run("localhost-nodeport", "iptables", "ipvs").differences
           if f.why.cause == "localhost-nodeports"]
    assert g.why.setting == "iptables.localhostNodePorts: false"


def test_settings_to_says_which_differences_it_removes():
    plain = _run("localhost-nodeport", "iptables", "ipvs")
    assert _keys(plain, "localhost-nodeports") == {("shop/storefront:http", "localhost", "127.0.0.1:31080")}
    r = _run("localhost-nodeport", "iptables", "ipvs",
             settings_to=str(CASES / "localhost-nodeport" / "settings-to.yaml"))
    assert _keys(r, "localhost-nodeports") == set()
    assert {(f.why.cause, f.scenario.entry.address) for f in r.removed} == {("localhost-nodeports", "127.0.0.1:31080")}
    assert _keys(r) == _keys(plain) - _keys(plain, "localhost-nodeports")


def test_a_setting_that_differs_is_the_cause_and_its_old_value_restores():
    # nodePortAddresses set for the old node, unset for the new: the second address now takes NodePorts.
    r = _run("nodeport-addresses-both", "ipvs", "iptables",
             settings_to=str(CASES / "nodeport-addresses-both" / "settings-to.yaml"))
    got = [f for f in r.differences if f.why.cause == "nodeport-addresses"]
    assert {f.scenario.entry.address for f in got} == {"10.31.0.7:31060"}
    assert {f.why.setting for f in got} == {'nodePortAddresses: ["10.30.0.0/24"]'}
    assert all("nodePortAddresses is" in f.why.reason for f in got)
    assert _keys(_run("nodeport-addresses-both", "ipvs", "iptables"), "nodeport-addresses") == set()


def test_the_scheduler_setting_is_named_when_only_it_differs():
    r = _run("scheduler-sh", "ipvs", settings_to=str(CASES / "scheduler-sh" / "settings-to.yaml"))
    assert r.from_mode == "ipvs"  # from the configuration's mode
    causes = {f.why.cause for f in r.differences}
    assert causes == {"balancing"}
    assert {f.why.setting for f in r.differences} == {'ipvs.scheduler: "sh"'}


def test_external_local_causes_are_told_apart():
    r = _run("external-local", "ipvs", "iptables")
    assert {a for _, _, a in _keys(r, "local-policy-no-local-endpoint")} == {"10.30.0.7:30401", "10.31.0.7:30401"}
    short = _keys(r, "local-policy-short-cut")
    assert {c for _, c, _ in short} == {"pod-here", "pod-elsewhere", "node"}
    assert {s for s, _, _ in short} == {"edge/ingress:http"}


def test_json_has_the_documented_shape(cli, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = cli("migrate", "migrate-fixtures/lb-source-ranges/input.yaml", "--to", "ipvs", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert (doc["from"], doc["to"]) == ("iptables", "ipvs")
    d = next(x for x in doc["differences"] if x["cause"] == "source-ranges")
    assert {"service", "client", "destination", "from", "to", "cause", "reason"} <= set(d)
    assert (d["service"], d["client"], d["destination"]) == ("ops/admin:http", "node", "198.51.100.30:443")
    assert d["from"] == {"verdict": "DROP", "destinations": [], "masquerade": False, "affinity_seconds": None}
    assert d["to"]["verdict"] == "DNAT"
    assert d["to"]["destinations"] == [{"endpoint": "10.70.8.31:8443", "probability": 1.0, "chance": "1",
                                        "masquerade": True, "affinity_seconds": None}]
    assert [c["cause"] for c in doc["causes"]] == ["localhost-nodeports", "clusterip-other-ports", "source-ranges"]
    assert doc["causes"][2]["services"] == ["ops/admin"]


def test_affinity_is_carried_in_the_behaviour(cli, monkeypatch):
    monkeypatch.chdir(ROOT)
    doc = json.loads(cli("migrate", "migrate-fixtures/affinity/input.yaml", "--to", "ipvs", "--json").stdout)
    [d] = [x for x in doc["differences"] if x["cause"] == "localhost-nodeports"]
    assert d["from"]["affinity_seconds"] == 600
    assert {x["affinity_seconds"] for x in d["from"]["destinations"]} == {600}


def test_nothing_to_trace_exits_0(cli, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = cli("migrate", "migrate-fixtures/nothing-to-trace/input.yaml", "--to", "ipvs", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["differences"] == []


@pytest.mark.parametrize("args,msg", [
    (["--to", "ipvs", "--mode", "ipvs"], "--mode: migrate compares two modes"),
    (["--to", "iptables"], "--from and --to are both iptables"),
    (["--to", "ipvs", "--service", "shop/none"], "--service shop/none: no such Service"),
    (["--to", "ipvs", "--service", "shop"], "expected NAMESPACE/NAME"),
    (["--to", "ipvs", "--settings-to", "migrate-fixtures/scheduler-sh/input.yaml", "--from", "ipvs"], None),
    (["--to", "iptables", "--settings-to", "migrate-fixtures/scheduler-sh/settings-to.yaml"],
     "its mode is ipvs, not the --to mode iptables"),
])
def test_bad_arguments_are_exit_2(cli, monkeypatch, args, msg):
    monkeypatch.chdir(ROOT)
    r = cli("migrate", "migrate-fixtures/localhost-nodeport/input.yaml", *args)
    if msg is None:  # a settings file for the same mode as --from: allowed, it compares settings
        assert r.exit_code in (0, 1), r.output
        return
    assert r.exit_code == 2, r.output
    assert msg in r.stderr and "Traceback" not in r.output


def test_a_bad_settings_to_file_is_named(cli, tmp_path):
    bad = tmp_path / "nft.yaml"
    bad.write_text("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
                   "nodePortAddresses: [banana]\n")
    r = cli("migrate", str(CASES / "secondary-address" / "input.yaml"), "--to", "nftables", "--settings-to", str(bad))
    assert r.exit_code == 2
    assert f"--settings-to {bad}: nodePortAddresses: 'banana' is not a valid CIDR" in r.stderr
    r = cli("migrate", str(CASES / "secondary-address" / "input.yaml"), "--to", "nftables", "--settings-to",
            str(tmp_path / "none.yaml"))
    assert r.exit_code == 2 and "none.yaml" in r.stderr


def test_unusable_input_is_exit_2(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\n  : : [\n")
    r = cli("migrate", str(bad), "--to", "ipvs")
    assert r.exit_code == 2 and "bad.yaml" in r.stderr
    assert cli("migrate", "--to", "ipvs").exit_code == 2
    assert cli("migrate", str(bad), "--to", "kube-router").exit_code == 2


class _NoTracer(Backend):
    mode = "toy-untraced"


def test_a_mode_without_a_tracer_is_refused():
    backends.register("toy-untraced", _NoTracer())
    try:
        with pytest.raises(Exception) as e:
            _run("clusterip-other-ports", "toy-untraced", "iptables")
        assert "cannot trace toy-untraced mode" in str(e.value)
    finally:
        backends.unregister("toy-untraced")


class _Twisted(Backend):
    """iptables mode whose ClusterIP connections are all dropped: a difference no known cause explains."""

    mode = "toy-twisted"

    def compile(self, plan, settings):
        return backends.get("iptables").compile(plan, settings)

    def tracer(self):
        inner = backends.get("iptables").tracer()

        class T:
            def trace_compiled(self, compiled, src, ip, port, proto="tcp", **kw):
                r = inner.trace_compiled(compiled, src, ip, port, proto, **kw)
                if any(p.cluster_ip == ip and p.port.port == port for p in compiled.plan.ports):
                    from dataclasses import replace
                    from fractions import Fraction
                    return replace(r, verdict="DROP", destinations=(), paths=(), outcomes={"DROP": Fraction(1)})
                return r

        return T()


def test_a_difference_no_cause_explains_is_reported_unexplained():
    backends.register("toy-twisted", _Twisted())
    try:
        r = _run("clusterip-other-ports", "toy-twisted", "iptables")
    finally:
        backends.unregister("toy-twisted")
    assert {f.why.cause for f in r.differences} == {UNEXPLAINED}
    assert {(f.scenario.client.kind, f.scenario.entry.kind) for f in r.differences} == {
        ("outside", CLUSTER_IP), ("pod-here", CLUSTER_IP), ("node", CLUSTER_IP)}
    assert all(f.why.setting is None and f.why.no_setting for f in r.differences)


def test_each_mode_describes_every_known_cause_and_nothing_else():
    known = {c.id for c in CAUSES}
    assert set(CAUSE_IDS) == known | {UNEXPLAINED}
    for mode in ("iptables", "ipvs", "nftables"):
        traits = backends.get(mode).traits()
        assert set(traits) == known, mode
        assert all(t.does and (t.setting or t.fixed) for t in traits.values()), mode


def test_a_cause_holds_only_where_the_modes_differ():
    # iptables and IPVS mode take NodePorts on the same addresses by default: no nodeport-addresses cause
    # between them, even on a node with two addresses.
    r = _run("secondary-address", "ipvs", "iptables")
    assert _keys(r, "nodeport-addresses") == set()
    assert all(f.scenario.entry.kind != "node-port" for f in r.differences)


def test_a_cause_whose_modes_agree_does_not_name_a_difference():
    # The same mode on both sides, no setting apart: the other-port test holds, but the modes' traits
    # agree, so the cause cannot be why the two traces differ.
    from rulegen.migrate.causes import Case, Side, explain
    from rulegen.pipeline import compile_files
    from rulegen.trace.scenarios import OTHER_PORT, enumerate_scenarios

    c = compile_files([str(CASES / "clusterip-other-ports" / "input.yaml")], {"mode": "ipvs"})
    sc = next(s for s in enumerate_scenarios(c.plan, c.settings).scenarios if s.entry.kind == OTHER_PORT)
    side = Side(c, None, None)
    why = explain(Case(sc, c.plan.ports[0], side, side, frozenset({"verdict"}), 4))
    assert why.cause == UNEXPLAINED
    # With IPVS mode on one side and iptables mode on the other, the same scenario is that cause.
    d = compile_files([str(CASES / "clusterip-other-ports" / "input.yaml")], {"mode": "iptables"})
    assert explain(Case(sc, c.plan.ports[0], Side(d, None, None), side, frozenset({"verdict"}), 4)).cause == \
        "clusterip-other-ports"


# ------------------------------------------------------------------ to nftables


def test_localhost_nodeports_stop_working_in_nftables_mode():
    r = _run("localhost-nodeport", "nftables", "iptables")
    [f] = [f for f in r.differences if f.why.cause == "localhost-nodeports"]
    assert f.scenario.entry.address == "127.0.0.1:31080"
    assert (f.a.behaviour.verdict, f.b.behaviour.verdict) == ("DNAT", "ACCEPT")
    assert f.why.setting is None and "does not support localhost NodePorts" in f.why.no_setting
    # IPVS mode has none either: nothing changes there.
    assert _keys(_run("localhost-nodeport", "nftables", "ipvs"), "localhost-nodeports") == set()


@pytest.mark.parametrize("src", ["ipvs", "iptables"])
def test_nodeports_only_on_the_primary_address_and_the_setting_that_restores_them(src):
    r = _run("secondary-address", "nftables", src)
    got = [f for f in r.differences if f.why.cause == "nodeport-addresses"]
    assert {f.scenario.entry.address for f in got} == {"10.31.0.7:31060"}  # the second address only
    assert {f.scenario.client.kind for f in got} == {"outside", "pod-here", "pod-elsewhere", "node"}
    assert {(f.a.behaviour.verdict, f.b.behaviour.verdict) for f in got} == {("DNAT", "ACCEPT")}
    assert {f.why.setting for f in got} == {'nodePortAddresses: ["0.0.0.0/0"]'}
    fixed = _run("secondary-address", "nftables", src, settings_to=str(CASES / "secondary-address" / "settings-to.yaml"))
    assert _keys(fixed, "nodeport-addresses") == set()
    assert {(f.why.cause, f.scenario.entry.address) for f in fixed.removed} == {
        ("nodeport-addresses", "10.31.0.7:31060")}


def test_other_ports_of_a_clusterip_in_each_mode():
    # iptables mode leaves them alone; IPVS mode (kube-ipvs0) and nftables mode (cluster-ips-check) reject them.
    def other(to, src):
        return {(f.scenario.client.kind, f.a.behaviour.verdict, f.b.behaviour.verdict)
                for f in _run("clusterip-other-ports", to, src).differences if f.why.cause == "clusterip-other-ports"}

    assert other("nftables", "iptables") == {("pod-here", "ACCEPT", "REJECT"), ("node", "ACCEPT", "REJECT")}
    assert other("ipvs", "iptables") == {("pod-here", "ACCEPT", "REJECT"), ("node", "ACCEPT", "REJECT")}
    assert other("nftables", "ipvs") == set()


def test_each_mode_reads_its_own_masquerade_all():
    r = _run("masquerade-all", "nftables", "iptables")
    [f] = [f for f in r.differences if f.why.cause == "masquerade-all"]
    assert (f.scenario.client.kind, f.scenario.entry.address) == ("pod-here", "10.100.4.70:53")
    assert f.why.setting == "nftables.masqueradeAll: true"
    assert _keys(_run("masquerade-all", "ipvs", "iptables"), "masquerade-all") == set()  # both read iptables.*


class _Refusing(_Twisted):
    """iptables mode whose tracer cannot follow connections to a ClusterIP (a rule it does not understand)."""

    mode = "toy-refusing"

    def tracer(self):
        inner = backends.get("iptables").tracer()

        class T:
            def trace_compiled(self, compiled, src, ip, port, proto="tcp", **kw):
                if any(p.cluster_ip == ip for p in compiled.plan.ports):
                    from rulegen.trace.model import TraceError
                    raise TraceError("toy", "nat", "KUBE-SERVICES", 3, "-m weird", "unknown match weird")
                return inner.trace_compiled(compiled, src, ip, port, proto, **kw)

        return T()


def test_a_connection_one_mode_cannot_trace_is_reported_with_the_reason(cli, monkeypatch):
    backends.register("toy-refusing", _Refusing())
    try:
        r = _run("clusterip-other-ports", "toy-refusing", "iptables")
        monkeypatch.chdir(ROOT)
        out = cli("migrate", "migrate-fixtures/clusterip-other-ports/input.yaml", "--to", "toy-refusing", "--json")
    finally:
        backends.unregister("toy-refusing")
    assert {(f.scenario.client.kind, f.scenario.entry.kind) for f in r.differences} == {
        ("outside", CLUSTER_IP), ("pod-here", CLUSTER_IP), ("node", CLUSTER_IP), ("pod-here", "other-port"),
        ("node", "other-port")}
    assert {f.why.cause for f in r.differences} == {UNEXPLAINED}
    assert all("toy-refusing (toy: table nat, chain KUBE-SERVICES, rule 3" in f.why.reason for f in r.differences)
    assert out.exit_code == 1
    d = json.loads(out.stdout)["differences"][0]
    assert d["to"] == {"error": "toy: table nat, chain KUBE-SERVICES, rule 3 (-A KUBE-SERVICES -m weird): "
                                "unknown match weird"}


# ------------------------------------------------------------------ grouped traces


GROUP_CASES = [CASES / c / "input.yaml" for c in ("external-local", "lb-source-ranges", "no-endpoints", "shared-external-ip")] + [
    ROOT / "fixtures" / c for c in ("nft-shared-keys", "allocate-kustomize", "externalips", "multi-port",
                                    "dual-stack-ipv4", "service-order", "lb-source-ranges", "ipvs-external-ip-on-node",
                                    "lb-source-ranges-node-inside")]


@pytest.mark.parametrize("path", GROUP_CASES, ids=lambda p: p.parent.name if p.name == "input.yaml" else p.name)
@pytest.mark.parametrize("src,dst", [("iptables", "nftables"), ("ipvs", "nftables"), ("iptables", "ipvs")])
def test_traces_in_groups_say_what_traces_through_the_whole_node_say(path, src, dst):
    from rulegen.migrate.render import render_json

    files = [str(path)] if path.is_file() else [str(p) for p in sorted(path.glob("*.yaml")) if p.name != "trace.yaml"]
    args = ROOT / "fixtures" / path.name / "args"
    flags = {}
    if args.exists():
        from rulegen.flags import parse_args_line
        flags, _ = parse_args_line(args.read_text())
        flags["mode"] = None
    whole = migrate(files, flags, dst, src, grouped=False)
    grouped = migrate(files, flags, dst, src, grouped=True)
    assert render_json(grouped) == render_json(whole)


def test_groups_join_ports_that_share_an_address_or_a_node_port(compile_objs):
    from rulegen.migrate import groups

    def svc(name, ip, ports, **spec):
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "g"},
                "spec": {"clusterIP": ip, "ports": ports, **spec}}

    p = {"name": "a", "protocol": "TCP", "port": 80}
    c = compile_objs([
        svc("one", "10.96.0.1", [p, {**p, "name": "b", "port": 81}]),
        svc("two", "10.96.0.2", [p], externalIPs=["192.0.2.9"]),
        svc("three", "10.96.0.3", [p], externalIPs=["192.0.2.9"]),
        svc("four", "10.96.0.4", [{**p, "nodePort": 30001}], type="NodePort"),
        svc("five", "10.96.0.5", [{**p, "nodePort": 30001}], type="NodePort"),
        svc("six", "10.96.0.6", [{**p, "nodePort": 30001, "protocol": "UDP"}], type="NodePort"),
        svc("seven", "10.96.0.7", [p]),
        svc("eight", "10.96.0.8", [{**p, "port": 30001}], externalIPs=["192.168.9.1"]),
    ])
    got = [sorted(x.spn for x in g) for g in groups(c.plan)]
    assert sorted(got) == sorted([["g/one:a", "g/one:b"], ["g/three:a", "g/two:a"], ["g/five:a", "g/four:a"],
                                  ["g/six:a"], ["g/seven:a"], ["g/eight:a"]])
    # The external IP is a node address: its port meets the NodePorts 30001/TCP there.
    got = [sorted(x.spn for x in g) for g in groups(c.plan, ("192.168.9.1",))]
    assert ["g/eight:a", "g/five:a", "g/four:a"] in got


# ------------------------------------------------------------------ the compile cases


def _golden_cases():
    for case in sorted(p for p in (ROOT / "fixtures").iterdir() if p.is_dir()):
        files = [str(p) for p in sorted(case.iterdir()) if p.suffix in (".yaml", ".json") and p.name != "trace.yaml"]
        if files:
            yield case.name, files


@pytest.mark.parametrize("src,dst", [(a, b) for a in ("iptables", "ipvs", "nftables")
                                     for b in ("iptables", "ipvs", "nftables") if a != b])
def test_every_difference_of_the_compile_cases_has_a_known_cause(src, dst):
    from rulegen.flags import parse_args_line

    unexplained = []
    for name, files in _golden_cases():
        args = ROOT / "fixtures" / name / "args"
        flags, config = parse_args_line(args.read_text()) if args.exists() else ({}, None)
        flags["mode"] = None
        r = migrate(files, flags, dst, src, config)
        unexplained += [(name, f.scenario.describe(), f.why.reason) for f in r.differences
                        if f.why.cause == UNEXPLAINED]
    assert unexplained == []


@pytest.mark.parametrize("src,dst", [("iptables", "nftables"), ("ipvs", "nftables"), ("iptables", "ipvs")])
def test_traces_in_groups_agree_on_every_compile_case(src, dst):
    from rulegen.flags import parse_args_line
    from rulegen.migrate.render import render_json

    apart = []
    for name, files in _golden_cases():
        args = ROOT / "fixtures" / name / "args"
        flags, config = parse_args_line(args.read_text()) if args.exists() else ({}, None)
        flags["mode"] = None
        whole = render_json(migrate(files, flags, dst, src, config, grouped=False))
        if render_json(migrate(files, flags, dst, src, config, grouped=True)) != whole:
            apart.append(name)
    assert apart == []


def test_localhost_nodeports_turned_off_in_the_same_mode_are_the_setting():
    r = _run("localhost-nodeport", "iptables", "iptables",
             settings_to=str(CASES / "localhost-nodeport" / "settings-to.yaml"))
    [f] = r.differences
    assert f.why.cause == "localhost-nodeports"
    assert f.why.reason.startswith("localhost NodePorts are on now (iptables) and off after (iptables)")
    assert f.why.setting == "iptables.localhostNodePorts: true"
