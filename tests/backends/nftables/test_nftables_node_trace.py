"""`rulegen trace --mode nftables --rules RULESET` on a node's whole `nft list ruleset`.

The dumps in tests/node_dumps/nft-*/ were built by tests/nftnode.py in a
network namespace (a compile of tests/node_dumps/cluster.yaml in nftables
mode, then firewalld's, Docker's or a server firewall's tables, listed by
`nft list ruleset`); tests/kernel/test_nft_node_dumps_kernel.py checks that
the kernel still prints them so and that real traffic agrees. Here, without
root: each dump traces to the endpoints the compiled rules reach, or to the
foreign rule or policy that stops the connection, named with its table,
chain, rule number (and handle); what the walk cannot decide splits into
assumed branches that name the reason.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from rgtest import run_cli
from rulegen.backends.nftables.dump import read_text
from rulegen.backends.nftables.trace import trace_compiled, trace_saved

TESTS = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TESTS))
import nftnode as N  # noqa: E402

NODE = N.NODE_IP
POD = "10.244.1.254"  # a pod of this node that is no endpoint
CLIENT = "203.0.113.5"
# (source, destination): outside client to both NodePorts, a pod to the ClusterIPs, the node to a NodePort
PROBES = [(CLIENT, NODE, 30080), (CLIENT, NODE, 30090), (POD, "10.96.50.10", 80), (POD, "10.96.50.30", 80),
          (NODE, NODE, 30080), (NODE, "10.96.50.10", 80)]


@pytest.fixture(scope="module")
def compiled():
    return N.compile_cluster()


def dump_of(name: str):
    return read_text((N.DUMPS / f"nft-{name}" / "ruleset.nft").read_text(), f"nft-{name}")


def both(c, name: str, src: str, dst: str, port: int):
    kw = {"plan": c.plan, "pod_cidrs": c.settings.node_pod_cidrs}
    got = trace_saved(dump_of(name), c.settings, src, dst, port, "tcp", source=name, **kw)
    want = trace_compiled(c, src, dst, port, "tcp", pod_cidrs=c.settings.node_pod_cidrs)
    return got, want


def test_the_dumps_hold_the_shapes_they_claim():
    fw = dump_of("firewalld")
    assert [t.where for t in fw.foreign] == ["inet firewalld"] and set(fw.tables) == {4}
    bases = {(n, h, p) for n, _, h, p in fw.foreign[0].base_chains()}
    assert ("filter_FORWARD", "forward", 10) in bases and ("nat_PREROUTING", "prerouting", -90) in bases
    dk = dump_of("docker")
    assert [t.where for t in dk.foreign] == ["ip docker-bridges", "ip filter"]
    assert dk.foreign[1].iptables_nft and dk.foreign[1].xt == [
        "FORWARD rule 1: xt match physdev counter packets 0 bytes 0 accept"]
    sf = dump_of("server-filter")
    assert sf.foreign[0].policies == {"input": "drop", "forward": "drop"}
    assert sf.foreign[0].handles[("input", 7)] == 10


@pytest.mark.parametrize("name", ["firewalld", "docker"])
@pytest.mark.parametrize("src,dst,port", PROBES)
def test_a_whole_node_traces_to_the_compiles_endpoints(compiled, name, src, dst, port):
    got, want = both(compiled, name, src, dst, port)
    assert got.verdict == want.verdict
    assert got.shares() == want.shares()
    assert got.masquerade == want.masquerade
    assert not got.assumed, got.assumptions()
    assert any("the whole ruleset is traced" in n for n in got.notes)


def test_firewalld_lets_service_dnat_through_by_its_ct_status_rule(compiled):
    got, _ = both(compiled, "firewalld", CLIENT, NODE, 30080)
    hops = [h for p in got.paths for h in p.hops if h.table == "inet firewalld" and h.kind == "rule"]
    assert {(h.chain, h.number) for h in hops} >= {("filter_FORWARD", 2)}
    assert all("ct status dnat accept" in h.rule for h in hops if h.chain == "filter_FORWARD")
    # its nat chains come after kube-proxy's (dstnat + 10, srcnat + 10): kube-proxy's NAT is done, they are skipped
    assert any("inet firewalld chain nat_PREROUTING (type nat hook prerouting priority -90) is not consulted" in n
               for n in got.notes)


def test_firewalld_rejects_what_no_zone_allows_at_the_node_itself(compiled):
    r = trace_saved(dump_of("firewalld"), compiled.settings, CLIENT, NODE, 8443, "tcp", plan=compiled.plan)
    assert r.verdict == "REJECT"
    assert any(n.startswith("REJECT by inet firewalld chain filter_INPUT rule 6, outside kube-proxy's table: "
                            "reject with icmpx admin-prohibited") for n in r.notes), r.notes
    r = trace_saved(dump_of("firewalld"), compiled.settings, CLIENT, NODE, 22, "tcp", plan=compiled.plan)
    assert r.verdict == "ACCEPT"


def test_dockers_published_port_and_the_iptables_nft_table(compiled):
    r = trace_saved(dump_of("docker"), compiled.settings, CLIENT, NODE, 8080, "tcp", plan=compiled.plan,
                    routes=(("172.17.0.0/16", "docker0"),))
    assert r.shares() == {"172.17.0.2:80": Fraction(1)}
    assert any(n.startswith("DNAT by ip docker-bridges chain nat-prerouting-and-output rule 1, outside kube-proxy's "
                            "table: 192.168.77.10:8080 → 172.17.0.2:80") for n in r.notes), r.notes
    assert any("table ip filter is iptables-nft's" in n and "xt match physdev" in n and "iptables-save" in n
               for n in r.notes)
    # Docker's raw-priority guard drops direct access to the container from outside the bridge
    r = trace_saved(dump_of("docker"), compiled.settings, CLIENT, "172.17.0.2", 80, "tcp", plan=compiled.plan)
    assert r.verdict == "DROP"
    assert any(n.startswith("DROP by ip docker-bridges chain raw-PREROUTING rule 1, outside kube-proxy's table")
               and 'comment "DROP DIRECT ACCESS"' in n for n in r.notes), r.notes


@pytest.mark.parametrize("src,dst,port", PROBES)
def test_a_forward_policy_drop_shadows_every_forwarded_service_connection(compiled, src, dst, port):
    got, want = both(compiled, "server-filter", src, dst, port)
    forwarded = src != NODE
    if not forwarded:
        assert (got.verdict, got.shares()) == (want.verdict, want.shares())
        return
    # inet filter's forward chain shares priority 0 with kube-proxy's filter-forward and was made later, so the
    # kernel runs it first: even kube-proxy's REJECT for a Service without endpoints is never reached
    assert got.verdict == "DROP" and not got.destinations
    assert any(n.startswith("base chains of several tables share hook forward priority 0; traced in the order "
                            "inet filter forward, then ip kube-proxy filter-forward") for n in got.notes), got.notes
    assert any(n.startswith("DROP by the policy of inet filter chain forward (hook forward, priority 0)")
               for n in got.notes), got.notes
    assert any(h.kind == "policy" and h.table == "inet filter" for p in got.paths for h in p.hops)


def test_the_servers_input_reject_is_named_with_its_handle(compiled):
    r = trace_saved(dump_of("server-filter"), compiled.settings, CLIENT, NODE, 8443, "tcp", plan=compiled.plan)
    assert r.verdict == "REJECT"
    assert any(n.startswith("REJECT by inet filter chain input rule 7 (handle 10), outside kube-proxy's table")
               for n in r.notes), r.notes
    assert any("`limit` taken as matching" in n for n in r.notes)
    from rulegen.trace.render import render_text
    assert "⇒ REJECT: the client is refused (icmpx admin-prohibited)" in render_text(r)
    assert any(h.rule.endswith("reject with icmpx admin-prohibited # handle 10") for p in r.paths for h in p.hops)


# ------------------------------------------------------------------ what the walk cannot decide

GUARD = """table inet guard {
\tchain pre {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tip saddr @blocklist drop
\t\ttcp flags & (syn | ack) == syn meta cpu 3 counter drop
\t}
\tchain out {
\t\ttype filter hook output priority filter; policy accept;
\t\tmeta skuid 1000 reject
\t}
}
"""


def guarded() -> str:
    return (N.DUMPS / "nft-firewalld" / "ruleset.nft").read_text() + GUARD


def test_undecidable_parts_split_into_named_assumed_branches(compiled):
    d = read_text(guarded(), "guarded")
    r = trace_saved(d, compiled.settings, CLIENT, NODE, 30080, "tcp", plan=compiled.plan)
    qs = {a.question: a.reason for a in r.assumptions()}
    assert "inet guard: ip saddr @blocklist holds" in qs
    assert "no such set" in qs["inet guard: ip saddr @blocklist holds"]
    assert "inet guard chain pre rule 2 matches" in qs
    assert "the trace does not evaluate this rule" in qs["inet guard chain pre rule 2 matches"]
    # either rule dropping is one world; neither is the compile's
    assert set(r.outcomes) == {"DROP", "DNAT"}
    clean = [p for p in r.paths if not any(a.holds for a in p.assumptions)]
    assert {p.packet.dst_endpoint for p in clean} == {"10.244.1.21:8080", "10.244.1.22:8080", "10.244.2.23:8080"}
    # the node's own connection meets `meta skuid` (which user sends is not in a packet trace)
    r = trace_saved(d, compiled.settings, NODE, "10.96.50.10", 80, "tcp", plan=compiled.plan)
    assert "inet guard chain out rule 1 matches" in {a.question for a in r.assumptions()}
    assert set(r.outcomes) == {"REJECT", "DNAT"}


def test_the_cli_carries_the_whole_node_trace_in_json(tmp_path):
    f = tmp_path / "ruleset.nft"
    f.write_text(guarded())
    r = run_cli("trace", "--mode", "nftables", "--rules", str(f), str(N.CLUSTER), "--dst", f"{NODE}:30080",
                "--src", CLIENT, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["assumed"] is True
    assert {a["question"] for a in doc["assumptions"]} >= {"inet guard: ip saddr @blocklist holds",
                                                           "inet guard chain pre rule 2 matches"}
    drops = [p for p in doc["paths"] if p["verdict"] == "DROP"]
    assert drops and all(p["assuming"] for p in drops)
    assert any(h["table"] == "inet guard" and h["kind"] == "assume" for p in drops for h in p["hops"])
    text = run_cli("trace", "--mode", "nftables", "--rules", str(f), str(N.CLUSTER), "--dst", f"{NODE}:30080",
                   "--src", CLIENT)
    assert text.exit_code == 0 and "Assumed" in text.stdout and "@blocklist" in text.stdout


def test_the_readme_example_is_the_server_filter_dump():
    ex = N.ROOT / "examples" / "node-dump-nft"
    assert (ex / "ruleset.nft").read_text() == (N.DUMPS / "nft-server-filter" / "ruleset.nft").read_text()
    body = lambda p: p.read_text().split("apiVersion", 1)[1]  # noqa: E731 - the header comment differs
    assert body(ex / "cluster.yaml") == body(N.CLUSTER)


def test_a_guards_drop_before_kube_proxy_is_named_and_the_rest_passes(compiled):
    got, _ = both(compiled, "guard-drop", CLIENT, NODE, 30080)
    assert got.verdict == "DROP" and not got.destinations
    assert any(n.startswith("DROP by inet guard chain prerouting rule 1, outside kube-proxy's table: "
                            'iifname "eth0" tcp dport 30080 counter packets 0 bytes 0 drop') for n in got.notes)
    # its first hop is the guard's (raw, -300), before any of kube-proxy's
    assert got.paths[0].hops[0].table == "inet guard"
    for src, dst, port in PROBES[1:]:
        got, want = both(compiled, "guard-drop", src, dst, port)
        assert (got.verdict, got.shares()) == (want.verdict, want.shares())


def test_a_dnat_before_kube_proxys_nat_chain_takes_the_node_port(compiled):
    got, want = both(compiled, "nat-first", CLIENT, NODE, 30090)
    assert want.shares() == {"10.244.1.31:8080": Fraction(1)}
    assert got.shares() == {"10.244.1.21:8080": Fraction(1)}
    assert any(n.startswith("DNAT by ip natfirst chain prerouting rule 1, outside kube-proxy's table") and
               n.endswith("kube-proxy's nat chain on this hook is not consulted for this connection") for n in got.notes), got.notes
    assert any("ip kube-proxy chain nat-prerouting (type nat hook prerouting priority -100) is not consulted" in n
               for n in got.notes)
    assert not any(h.table == "ip kube-proxy" and h.chain == "nat-prerouting" for p in got.paths for h in p.hops)
    # from a pod (not the uplink) the foreign rule does not match: kube-proxy's DNAT as compiled
    got, want = both(compiled, "nat-first", POD, NODE, 30090)
    assert got.shares() == want.shares()


def test_an_ipv6_connection_through_firewalds_inet_table(tmp_path):
    v6 = (TESTS / "backends" / "nftables" / "listings" / "nft-ipv6.list").read_text()
    fw = (N.DUMPS / "nft-firewalld" / "ruleset.nft").read_text()
    f = tmp_path / "v6.nft"
    f.write_text(v6 + fw[fw.index("table inet firewalld"):])
    r = run_cli("trace", "--mode", "nftables", "--rules", str(f), "--node-ip", "fd00:19::6",
                "--dst", "[fd00:19::6]:30680", "--src", "2001:db8::5", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [d["endpoint"] for d in doc["destinations"]] == ["[fd00:60:6::80]:8080"]
    assert not doc["assumed"]  # the IPv6-only rules (rpfilter, icmpv6) are read, decided, and pass
    assert any(n.startswith("reverse-path check (fib saddr . iif oif) taken as passing") for n in doc["notes"])
    assert any(h["table"] == "inet firewalld" for p in doc["paths"] for h in p["hops"])


def test_a_foreign_notrack_keeps_the_node_port_from_kube_proxys_dnat(compiled):
    got, want = both(compiled, "notrack", CLIENT, NODE, 30080)
    assert want.verdict == "DNAT"
    assert got.verdict == "ACCEPT" and not got.destinations  # delivered, un-NATed, to the node itself
    assert got.paths[0].hops[-1].rule == "delivered to 192.168.77.10:30080 on this node"
    assert any(n.startswith("NOTRACK by inet raw chain prerouting rule 1, outside kube-proxy's table") for n in got.notes)
    assert any(n.startswith("ip kube-proxy chain nat-prerouting (type nat hook prerouting priority -100) is not "
                            "consulted: the connection is untracked") for n in got.notes), got.notes
    for src, dst, port in PROBES[1:]:  # the rest is kube-proxy's as compiled
        got, want = both(compiled, "notrack", src, dst, port)
        assert (got.verdict, got.shares()) == (want.verdict, want.shares())
