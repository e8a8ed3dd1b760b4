"""`rulegen trace`: every behaviour table (fixtures/*/trace.yaml, tests/trace_cases/*/trace.yaml)
against the compiled rules, the command line (text, JSON, exit codes), saved dumps read with
--rules, and named errors for rules the tracer does not understand."""

from __future__ import annotations

import json
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import pytest
from rgtest import run_cli

from rulegen import golden
from rulegen.backends.iptables.trace import trace_ruleset
from rulegen.dataplane.xtables.parse import parse
from rulegen.pipeline import compile_files
from rulegen.trace import TraceError, trace_compiled
from rulegen.trace.tables import TABLE_FILE, load_table, problems

ROOT = Path(__file__).resolve().parents[3]
CASE_ROOTS = (ROOT / "fixtures", ROOT / "tests" / "trace_cases")


def table_dirs() -> list[Path]:
    return sorted(d for r in CASE_ROOTS if r.is_dir() for d in r.iterdir() if (d / TABLE_FILE).is_file())


@lru_cache(maxsize=None)
def compiled_case(case_dir: Path):
    case = golden.load_case(case_dir)
    flags, config = golden.case_flags(case)
    flags["mode"] = "iptables"  # a table's `expect` is iptables mode's (an IPVS case's configuration names ipvs)
    return compile_files([str(p) for p in case.inputs], flags, None, config)


def pod_cidrs(c) -> tuple[str, ...]:
    return next((tuple(n.pod_cidrs) for n in c.inputs.nodes if n.name == c.settings.hostname), ())


def run_check(c, check, **kw):
    ip, port = check.dst_parts()
    return trace_compiled(c, check.src, ip, port, check.proto, in_iface=check.in_iface,
                          pod_cidrs=pod_cidrs(c), **kw)


TABLE_ENTRIES = [(d, i, chk.for_mode("iptables")) for d in table_dirs()
                 for i, chk in enumerate(load_table(d / TABLE_FILE)) if chk.for_mode("iptables") is not None]


def test_the_tables_cover_the_cases_the_tracer_promises():
    names = {d.name for d in table_dirs()}
    for want in ("nodeport-cluster", "nodeport-local", "nodeport-local-no-local", "clusterip-basic",
                 "lb-source-ranges", "externalips", "session-affinity", "no-endpoints"):
        assert want in names
    assert len(TABLE_ENTRIES) >= 40


@pytest.mark.parametrize("case_dir,i,check", TABLE_ENTRIES,
                         ids=[f"{d.name}[{i + 1}]" for d, i, _ in TABLE_ENTRIES])
def test_trace_table(case_dir, i, check):
    c = compiled_case(case_dir)
    res = run_check(c, check)
    assert problems(res, check) == [], f"{case_dir.name}: {check.name}"


# ------------------------------------------------------------------------ CLI

NP = str(ROOT / "fixtures" / "nodeport-cluster")


def cli(*args: str, input: str | None = None):
    return run_cli("trace", *args, input=input)


def test_cli_text_draws_the_path_and_the_destinations():
    r = cli(NP, "--dst", "172.19.8.23:31080")
    assert r.exit_code == 0, r.output
    out = r.output
    assert "no --src given" in out and "203.0.113.10" in out
    assert "client 203.0.113.10 → node port 172.19.8.23:31080 → KUBE-SERVICES → KUBE-NODEPORTS → KUBE-EXT-" in out
    assert "→ DNAT →" in out and "MASQUERADE → pod 10.60.3.31:8000 on wrk-3" in out
    assert "10.60.2.44:8000  chance 1/2 (50%)" in out
    assert "wrk-2 (another node: extra hop)" in out and "wrk-3 (this node)" in out
    assert "masqueraded" in out
    assert "Verdict: DNAT" in out
    # every hop names its table and the rule text
    assert 'nat    -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in out


def test_cli_json_document():
    r = cli(NP, "--dst", "172.19.8.23:31080", "--src", "10.60.3.31", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "DNAT"
    assert doc["masquerade"] is True  # the hairpin path
    by_ep = {d["endpoint"]: d for d in doc["destinations"]}
    assert set(by_ep) == {"10.60.2.44:8000", "10.60.3.31:8000"}
    assert by_ep["10.60.2.44:8000"]["probability"] == 0.5
    assert by_ep["10.60.3.31:8000"]["node"] == "wrk-3" and by_ep["10.60.3.31:8000"]["local"] is True
    assert by_ep["10.60.2.44:8000"]["local"] is False
    assert by_ep["10.60.3.31:8000"]["masquerade"] is True  # hairpin
    assert by_ep["10.60.2.44:8000"]["masquerade"] is True  # NodePort with Cluster policy
    assert doc["hops"] and {"table", "chain", "rule", "verdict"} <= set(doc["hops"][0])
    assert doc["hops"][0]["chain"] == "PREROUTING"
    assert len(doc["paths"]) == 2 and sum(p["probability"] for p in doc["paths"]) == 1


def test_cli_reject_is_exit_0():
    r = cli(str(ROOT / "fixtures" / "no-endpoints"), "--dst", "10.112.100.1:80", "--src", "10.60.3.8", "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "REJECT" and doc["destinations"] == [] and doc["masquerade"] is False
    assert doc["hops"][-1]["verdict"] == "REJECT" and doc["hops"][-1]["table"] == "filter"


@pytest.mark.parametrize("args,msg", [
    (("--dst", "10.1.2.3"), "is not IP:PORT"),
    (("--dst", "10.1.2.3:0"), "between 1 and 65535"),
    (("--dst", "fd00::1:80"), "[ADDRESS]:PORT"),
    (("--dst", "[fd00::1]:80", "--ip-family", "ipv4"), "is an IPv6 address but --ip-family ipv4 was given"),
    (("--dst", "10.1.2.3:80", "--ip-family", "ipv6"), "is an IPv4 address but --ip-family ipv6 was given"),
    (("--dst", "10.1.2.3:80", "--src", "nope"), "--src"),
])
def test_cli_bad_arguments_exit_2(args, msg):
    r = cli(NP, *args)
    assert r.exit_code == 2
    assert msg in r.stderr and "Traceback" not in r.output


V6 = str(ROOT / "fixtures" / "ipv6-basic" / "input.yaml"), str(ROOT / "fixtures" / "ipv6-basic" / "node.yaml")


def test_cli_ipv6_dst_infers_the_family_and_brackets_the_source():
    # No --ip-family: the bracketed destination alone says IPv6 (before, the IPv4 rules were compiled
    # and the trace refused the destination).
    r = cli(*V6, "--dst", "[2001:db8:1b::7]:443", "--src", "2001:db8:f00::1")
    assert r.exit_code == 0, r.output
    first = r.stdout.splitlines()[0]
    assert first == "Trace: TCP [2001:db8:f00::1]:40000 → [2001:db8:1b::7]:443"
    assert "chance 1/3" in r.stdout and "Verdict: DNAT" in r.stdout


def test_cli_ipv6_dst_with_matching_family_flag():
    r = cli(*V6, "--dst", "[2001:db8:1b::7]:443", "--ip-family", "ipv6")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("Trace: TCP [2001:db8::10]:40000 → [2001:db8:1b::7]:443\n")
    r = cli(*V6, "--dst", "[2001:db8:1b::7]:443", "--src", "2001:db8:f00::1", "--ip-family", "ipv6", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["verdict"] == "DNAT"


def test_rules_of_the_other_family_are_named_not_misread(tmp_path):
    f = tmp_path / "v4.rules"
    f.write_text(SAVED)
    r = cli("--rules", str(f), "--dst", "[fd00::1]:80")
    assert r.exit_code == 2 and "is IPv6 but the rules are IPv4" in r.stderr


def _route_hops(res):
    return {p.packet.dst: [h.verdict for h in p.hops if h.kind == "route"] for p in res.paths}


def test_a_local_pod_is_reached_through_the_pod_interface_a_remote_one_through_eth0():
    c = compiled_case(Path(NP))
    res = trace_compiled(c, None, "172.19.8.23", 31080, "tcp", pod_cidrs=pod_cidrs(c))
    routes = _route_hops(res)
    assert routes["10.60.3.31"] == ["forwarded (FORWARD, out cni0, to a pod on this node)"]  # wrk-3 = this node
    assert routes["10.60.2.44"] == ["forwarded (FORWARD, out eth0)"]
    by_dst = {p.packet.dst: p for p in res.paths}
    assert by_dst["10.60.3.31"].packet.out_iface == "cni0"
    assert by_dst["10.60.3.31"].hops[-1].rule == "sent on to 10.60.3.31:8000 via cni0"
    assert by_dst["10.60.2.44"].hops[-1].rule == "sent on to 10.60.2.44:8000 via eth0"


def test_from_the_node_a_local_pod_is_reached_through_the_pod_interface():
    c = compiled_case(Path(NP))
    res = trace_compiled(c, "172.19.8.23", "172.19.8.23", 31080, "tcp", pod_cidrs=pod_cidrs(c))
    routes = _route_hops(res)
    assert routes["10.60.3.31"][0] == "out cni0, to a pod on this node"
    assert routes["10.60.2.44"][0] == "out eth0"


def test_the_pod_interface_follows_the_local_detector():
    c = compiled_case(ROOT / "fixtures" / "detect-local-bridge")
    ep = next(e for p in c.plan.ports for e in p.endpoints if e.node_name == c.settings.hostname)
    p = next(p for p in c.plan.ports if ep in p.endpoints)
    res = trace_compiled(c, None, p.cluster_ip, p.port.port, p.proto, pod_cidrs=pod_cidrs(c))
    path = next(x for x in res.paths if x.packet.dst == ep.ip)
    assert path.packet.out_iface == c.settings.bridge_interface


def test_cli_needs_files_or_rules():
    r = cli("--dst", "10.1.2.3:80")
    assert r.exit_code == 2 and "no input files" in r.stderr


# ------------------------------------------------------------------ --rules

SAVED = """\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A DOCKER-USER -s 192.0.2.66/32 -j DROP
-A DOCKER-USER -j RETURN
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -m comment --comment "demo/none has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
:KUBE-SVC-X - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-A -s 10.244.1.5/32 -m comment --comment demo/web -j KUBE-MARK-MASQ
-A KUBE-SEP-A -p tcp -m comment --comment demo/web -m recent --set --name KUBE-SEP-A --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SEP-B -s 10.244.2.7/32 -m comment --comment demo/web -j KUBE-MARK-MASQ
-A KUBE-SEP-B -p tcp -m comment --comment demo/web -m recent --set --name KUBE-SEP-B --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.2.7:8080
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "demo/web cluster IP" -m tcp --dport 80 -j KUBE-SVC-X
-A KUBE-SVC-X ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "demo/web cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-X -m comment --comment "demo/web -> 10.244.1.5:8080" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-A --mask 255.255.255.255 --rsource -j KUBE-SEP-A
-A KUBE-SVC-X -m comment --comment "demo/web -> 10.244.2.7:8080" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-B --mask 255.255.255.255 --rsource -j KUBE-SEP-B
-A KUBE-SVC-X -m comment --comment "demo/web -> 10.244.1.5:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A
-A KUBE-SVC-X -m comment --comment "demo/web -> 10.244.2.7:8080" -j KUBE-SEP-B
COMMIT
"""


def test_rules_mode_reads_iptables_save_spelling(tmp_path):
    f = tmp_path / "node.rules"
    f.write_text(SAVED)
    r = cli("--rules", str(f), "--dst", "10.96.0.10:80", "--node-ip", "192.168.1.10", "--json")
    assert r.exit_code == 0, r.output + r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "DNAT"
    assert {d["endpoint"]: d["chance"] for d in doc["destinations"]} == {"10.244.1.5:8080": "1/2",
                                                                        "10.244.2.7:8080": "1/2"}
    assert doc["masquerade"] is True  # 203.0.113.10 is outside 10.244.0.0/16
    assert all(d["node"] is None and d["local"] is None for d in doc["destinations"])
    assert all(d["affinity_seconds"] == 10800 for d in doc["destinations"])
    # the dump's own FORWARD (policy DROP, DOCKER-USER first) is what the packet meets
    assert [h["chain"] for h in doc["paths"][0]["hops"] if h["table"] == "filter"][:2] == ["FORWARD", "DOCKER-USER"]


def test_rules_mode_pod_source_keeps_address_and_dump_policy_applies(tmp_path):
    f = tmp_path / "node.rules"
    f.write_text(SAVED)
    r = cli("--rules", str(f), "--dst", "10.96.0.10:80", "--src", "10.244.1.9", "--cluster-cidr", "10.244.0.0/16",
            "--json")
    doc = json.loads(r.stdout)
    # no KUBE-MARK-MASQ for a pod source, so KUBE-FORWARD does not accept and FORWARD's policy DROP decides
    assert doc["verdict"] == "DROP" and doc["destinations"] == []
    assert doc["paths"][0]["hops"][-1]["verdict"] == "policy DROP"
    r = cli("--rules", str(f), "--dst", "10.96.0.10:80", "--src", "192.0.2.66", "--json")
    assert json.loads(r.stdout)["verdict"] == "DROP"  # DOCKER-USER's rule


def test_rules_mode_reject_rule_in_iptables_save_spelling(tmp_path):
    f = tmp_path / "node.rules"
    f.write_text(SAVED)
    r = cli("--rules", str(f), "--dst", "10.96.0.99:80", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["verdict"] == "REJECT"


def test_rules_mode_on_rulegen_payload_assumes_kube_proxy_jumps(tmp_path):
    c = compiled_case(Path(NP))
    f = tmp_path / "payload.rules"
    f.write_text(c.text)
    r = cli("--rules", str(f), "--dst", "172.19.8.23:31080", "--node-ip", "172.19.8.23",
            "--cluster-cidr", "10.60.0.0/16", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert any("standard jumps" in n for n in doc["notes"])
    want = trace_compiled(c, None, "172.19.8.23", 31080, "tcp")
    assert {d["endpoint"]: Fraction(d["chance"]) for d in doc["destinations"]} == want.shares()
    assert doc["masquerade"] == want.masquerade
    # the same payload with the Kubernetes files names the nodes
    r = cli(NP, "--rules", str(f), "--dst", "172.19.8.23:31080", "--json")
    nodes = {d["endpoint"]: d["node"] for d in json.loads(r.stdout)["destinations"]}
    assert nodes == {"10.60.2.44:8000": "wrk-2", "10.60.3.31:8000": "wrk-3"}


def test_trace_ruleset_matches_trace_compiled_for_every_table_entry():
    """The library on a parsed payload (jumps assumed) agrees with the compiled trace."""
    for d, _, chk in TABLE_ENTRIES:
        c = compiled_case(d)
        rs = parse(c.text, "payload", c.settings.family)
        ip, port = chk.dst_parts()
        a = run_check(c, chk)
        b = trace_ruleset(rs, c.settings, chk.src, ip, port, chk.proto, plan=c.plan, in_iface=chk.in_iface,
                          pod_cidrs=pod_cidrs(c))
        assert (a.verdict, a.shares(), a.masquerade) == (b.verdict, b.shares(), b.masquerade), (d.name, chk.name)


# ------------------------------------------------------------------ unknown rules

def _dump(extra_nat: str, chains: str = "") -> str:
    return ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            ":POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n" + chains +
            "-A PREROUTING -j KUBE-SERVICES\n" + extra_nat + "COMMIT\n")


@pytest.mark.parametrize("rule,msg", [
    ("-A KUBE-SERVICES -m geoip --src-cc DE -j ACCEPT", "unknown match module 'geoip'"),
    ("-A KUBE-SERVICES -p tcp -m tcp --tcp-option 5 -j ACCEPT", "option --tcp-option of match 'tcp'"),
    ("-A KUBE-SERVICES -j CONNMARK --set-mark 1", "unknown target 'CONNMARK'"),
    ("-A KUBE-SERVICES -j KUBE-NOWHERE", "unknown target 'KUBE-NOWHERE'"),
    ("-A KUBE-SERVICES -m statistic --mode nth --every 2 -j ACCEPT", "nth"),
    ("-A KUBE-SERVICES -p tcp -j DNAT --to-destination 10.0.0.1-10.0.0.5:80", "range"),
    ("-A KUBE-SERVICES -m addrtype --dst-type LOCAL --limit-iface-in -j ACCEPT", "--limit-iface-in"),
])
def test_unknown_rule_is_a_named_error(tmp_path, rule, msg):
    f = tmp_path / "odd.rules"
    f.write_text(_dump("-A KUBE-SERVICES -d 10.9.9.9/32 -j RETURN\n" + rule + "\n"))
    r = cli("--rules", str(f), "--dst", "10.96.0.1:80")
    assert r.exit_code == 2, r.output
    err = r.stderr
    assert f"{f}: table nat, chain KUBE-SERVICES, rule 2 ({rule})" in err
    assert msg in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unknown_rule_off_the_path_does_no_harm(tmp_path):
    f = tmp_path / "odd.rules"
    f.write_text(_dump("-A KUBE-SERVICES -d 10.96.0.1/32 -j RETURN\n-A KUBE-SERVICES -m geoip --src-cc DE -j ACCEPT\n"))
    r = cli("--rules", str(f), "--dst", "10.96.0.1:80", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["verdict"] == "ACCEPT"


def test_library_raises_trace_error_with_place():
    rs_name = "odd.rules"
    rs = parse(_dump("-A KUBE-SERVICES -m geoip --src-cc DE -j ACCEPT\n"), rs_name)
    c = compiled_case(Path(NP))
    with pytest.raises(TraceError) as e:
        trace_ruleset(rs, c.settings, None, "10.96.0.1", 80, source=rs_name)
    assert (e.value.table, e.value.chain, e.value.number) == ("nat", "KUBE-SERVICES", 1)
    assert e.value.source == "odd.rules"


def test_error_in_assumed_jump_rules_is_attributed_to_them(tmp_path):
    # The dump declares KUBE-SERVICES but has no built-in rules; the assumed jump reaches the odd rule.
    rs_name = "x.rules"
    rs = parse("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j CONNMARK --set-mark 1\nCOMMIT\n", rs_name)
    c = compiled_case(Path(NP))
    with pytest.raises(TraceError) as e:
        trace_ruleset(rs, c.settings, None, "10.96.0.1", 80, source=rs_name)
    assert e.value.chain == "KUBE-SERVICES" and e.value.source == "x.rules"
