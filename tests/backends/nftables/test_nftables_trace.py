"""`rulegen trace --mode nftables`: the behaviour tables (fixtures/*/trace.yaml) against the compiled
table, the same tables across modes, real `nft list` output read with --rules, the CLI, and named
errors for rules the tracer does not understand."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import pytest
from rgtest import run_cli

from rulegen import golden
from rulegen.backends.nftables.dump import read_text
from rulegen.backends.nftables.trace import trace_saved, trace_table
from rulegen.pipeline import compile_files
from rulegen.trace import TraceError, trace_compiled
from rulegen.trace.tables import TABLE_FILE, load_table, problems

ROOT = Path(__file__).resolve().parents[3]
LISTINGS = Path(__file__).resolve().parent / "listings"


def table_dirs(mode: str) -> list[Path]:
    """Cases with a behaviour table and an expected file of MODE."""
    out = []
    for d in sorted((ROOT / "fixtures").iterdir()):
        if (d / TABLE_FILE).is_file() and mode in golden.load_case(d).modes:
            out.append(d)
    return out


@lru_cache(maxsize=None)
def compiled(case_dir: Path, mode: str = "nftables"):
    case = golden.load_case(case_dir)
    flags, config = golden.case_flags(case)
    flags["mode"] = mode
    return compile_files([str(p) for p in case.inputs], flags, None, config)


def pod_cidrs(c) -> tuple[str, ...]:
    return next((tuple(n.pod_cidrs) for n in c.inputs.nodes if n.name == c.settings.hostname), ())


def run(c, chk, **kw):
    ip, port = chk.dst_parts()
    return trace_compiled(c, chk.src, ip, port, chk.proto, in_iface=chk.in_iface, pod_cidrs=pod_cidrs(c), **kw)


def summary(r):
    return (r.verdict, r.shares(), r.masquerade,
            sorted((d.endpoint, d.masquerade, d.probability, d.affinity) for d in r.destinations))


NFT_DIRS = table_dirs("nftables")
ENTRIES = [(d, i, chk.for_mode("nftables")) for d in NFT_DIRS for i, chk in enumerate(load_table(d / TABLE_FILE))
           if chk.for_mode("nftables") is not None]


def test_every_table_of_a_case_with_an_nftables_file_is_run():
    names = {d.name for d in NFT_DIRS}
    with_tables = {d.name for d in (ROOT / "fixtures").iterdir() if (d / TABLE_FILE).is_file()}
    # every behaviour table whose case has an expected.nftables (all but the iptables-only setting
    # and the IPVS-only cases)
    assert {n for n in with_tables - names if not n.startswith("ipvs-")} == {"no-localhost-nodeports"}
    assert {"nft-nodeport-default", "nft-nodeport-all", "nft-service-cidrs", "nft-ipv6", "session-affinity",
            "lb-source-ranges", "nodeport-local"} <= names
    assert len(ENTRIES) >= 60


@pytest.mark.parametrize("case_dir,i,check", ENTRIES, ids=[f"{d.name}[{i + 1}]" for d, i, _ in ENTRIES])
def test_trace_table(case_dir, i, check):
    res = run(compiled(case_dir), check)
    assert problems(res, check) == [], f"{case_dir.name}: {check.name}"


# ------------------------------------------------------------------ the modes side by side

BOTH = [(d, i, chk) for d in NFT_DIRS for i, chk in enumerate(load_table(d / TABLE_FILE))
        if chk.for_mode("iptables") is not None and chk.for_mode("nftables") is not None]


@pytest.mark.parametrize("case_dir,i,chk", BOTH, ids=[f"{d.name}[{i + 1}]" for d, i, _ in BOTH])
def test_the_modes_agree_except_where_the_table_says_why(case_dir, i, chk):
    """The same connection in both modes' compiles: the same outcome, unless `modes.nftables` says why not."""
    ipt, nft = chk.for_mode("iptables"), chk.for_mode("nftables")
    a = run(compiled(case_dir, "iptables"), ipt)
    b = run(compiled(case_dir, "nftables"), nft)
    why = chk.why("nftables")
    if why is None:
        assert summary(a) == summary(b), f"{case_dir.name}: {chk.name}"
    else:
        # a stated difference is real: the common expectation fails in nftables mode
        assert summary(a) != summary(b), f"{case_dir.name}: {chk.name}: the table says {why!r} but the modes agree"
        assert problems(b, ipt), chk.name


# ------------------------------------------------------------------ nft's own listings

# Each file is what nft 1.0.6 printed (`nft list table ip kube-proxy`, or `nft list ruleset` for
# session-affinity, with iptables-nft's tables beside kube-proxy's) after loading the case's
# expected.nftables; nft respells rules, merges ranges, names priorities.
LISTED = [(p, ROOT / "fixtures" / p.name.split(".")[0]) for p in sorted(LISTINGS.iterdir())]
LISTED_ENTRIES = [(p, d, chk.for_mode("nftables")) for p, d in LISTED for chk in load_table(d / TABLE_FILE)
                  if chk.for_mode("nftables") is not None]


def test_the_listings_cover_nfts_respellings():
    text = "".join(p.read_text() for p, _ in LISTED)
    for spelling in ("priority dstnat - 10", "meta mark set meta mark | 0x00004000", "dnat ip to numgen",
                     "dnat ip6 to numgen", 'iifname "veth*"', "fib daddr type local ip daddr != 127.0.0.0/8",
                     "ip daddr { 10.112.0.0-10.113.15.255 } drop", "timeout 30m", "table ip filter"):
        assert spelling in text, spelling


@pytest.mark.parametrize("listing,case_dir,check", LISTED_ENTRIES,
                         ids=[f"{p.name}:{c.name}" for p, _, c in LISTED_ENTRIES])
def test_a_listing_traces_as_the_compile(listing, case_dir, check):
    c = compiled(case_dir)
    dump = read_text(listing.read_text(), str(listing))
    dump = type(dump)(dump.tables)  # kube-proxy's table alone (a whole ruleset's other tables: tests below)
    ip, port = check.dst_parts()
    got = trace_saved(dump, c.settings, check.src, ip, port, check.proto, plan=c.plan, source=str(listing),
                      in_iface=check.in_iface, pod_cidrs=pod_cidrs(c))
    assert summary(got) == summary(run(c, check))
    assert problems(got, check) == []


def test_the_other_tables_of_a_ruleset_are_walked_too():
    c = compiled(ROOT / "fixtures" / "session-affinity")
    dump = read_text((LISTINGS / "session-affinity.ruleset").read_text(), "ruleset")
    assert dump.others == ("ip filter", "ip nat") and set(dump.tables) == {4}
    assert [t.where for t in dump.foreign] == ["ip filter", "ip nat"] and dump.foreign[0].iptables_nft
    # ip filter's FORWARD (iptables-nft's, at filter priority after kube-proxy's) drops 192.0.2.66 by rule
    # and every other forwarded connection by its policy: kube-proxy's accepts do not keep it open
    r = trace_saved(dump, c.settings, "192.0.2.66", "10.112.90.10", 80, plan=c.plan, source="ruleset")
    assert r.verdict == "DROP" and not r.destinations
    assert any(n.startswith("DROP by ip filter chain FORWARD rule 1, outside kube-proxy's table: ip saddr 192.0.2.66")
               for n in r.notes), r.notes
    r = trace_saved(dump, c.settings, "192.0.2.67", "10.112.90.10", 80, plan=c.plan, source="ruleset")
    assert r.verdict == "DROP"
    assert any(n.startswith("DROP by the policy of ip filter chain FORWARD (hook forward, priority 0)")
               for n in r.notes), r.notes
    assert any("ip filter is iptables-nft's" in n for n in r.notes)
    # the node itself to a ClusterIP: the output hook, where ip filter has no chain; ip nat's masquerade on eth9 only
    r = trace_saved(dump, c.settings, "172.19.8.23", "10.112.90.10", 80, plan=c.plan, source="ruleset")
    alone = trace_saved(type(dump)(dump.tables), c.settings, "172.19.8.23", "10.112.90.10", 80, plan=c.plan,
                        source="ruleset")
    assert r.shares() == alone.shares() and r.verdict == alone.verdict


def test_an_affinity_entry_in_a_listing_is_followed():
    c = compiled(ROOT / "fixtures" / "session-affinity")
    text = (LISTINGS / "session-affinity.ruleset").read_text()
    name = "affinity-AHMELHKX-auth/sessions/tcp/http__10.60.2.10/8080"
    assert f"set {name} {{" in text
    # the kernel lists a live entry with its timers
    live = text.replace(f"set {name} {{\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 10m\n",
                        f"set {name} {{\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 10m\n"
                        "\t\telements = { 10.60.3.8 timeout 10m expires 9m12s }\n")
    assert live != text
    dump = read_text(live, "live")
    dump = type(dump)(dump.tables)  # kube-proxy's table alone: ip filter's FORWARD policy drops pods' traffic
    r = trace_saved(dump, c.settings, "10.60.3.8", "10.112.90.10", 80, plan=c.plan, source="live")
    assert r.shares() == {"10.60.2.10:8080": Fraction(1)}
    assert any("already holds 10.60.3.8" in n for n in r.notes)
    # another client has no entry: a first connection, balanced
    r = trace_saved(dump, c.settings, "10.60.3.9", "10.112.90.10", 80, plan=c.plan, source="live")
    assert r.shares() == {"10.60.1.10:8080": Fraction(1, 2), "10.60.2.10:8080": Fraction(1, 2)}
    assert any("this trace is a first connection" in n for n in r.notes)


# ------------------------------------------------------------------ the command

NP = str(ROOT / "fixtures" / "nodeport-local")


def cli(*args: str, input: str | None = None):
    return run_cli("trace", *args, input=input)


def test_cli_text_names_the_chains_hop_by_hop():
    r = cli(NP, "--mode", "nftables", "--dst", "172.19.8.23:31443")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert ("client 203.0.113.10 → node port 172.19.8.23:31443 → services → external-M3BKPKJ2-media/uploads/"
            "tcp/https → local-M3BKPKJ2-media/uploads/tcp/https → DNAT → pod 10.60.3.41:8443 on wrk-3") in out
    assert "ip kube-proxy nat-prerouting: jump services   (rule 1)" in out
    assert ("⇒ vmap @service-nodeports: tcp . 31443 → goto external-M3BKPKJ2-media/uploads/tcp/https" in out)
    assert "Verdict: DNAT" in out and "Masquerade: no" in out


def test_cli_json_has_the_iptables_shape():
    r = cli(str(ROOT / "fixtures" / "nodeport-cluster"), "--mode", "nftables", "--dst", "172.19.8.23:31080",
            "--src", "10.60.3.31", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    ipt = json.loads(cli(str(ROOT / "fixtures" / "nodeport-cluster"), "--dst", "172.19.8.23:31080",
                         "--src", "10.60.3.31", "--json").stdout)
    assert set(doc) == set(ipt)
    assert {d["endpoint"]: d["chance"] for d in doc["destinations"]} == \
        {d["endpoint"]: d["chance"] for d in ipt["destinations"]} == {"10.60.2.44:8000": "1/2", "10.60.3.31:8000": "1/2"}
    assert doc["masquerade"] is True
    assert doc["hops"][0] == {"kind": "rule", "table": "ip kube-proxy", "chain": "filter-prerouting-pre-dnat",
                              "number": 1, "rule": "filter-prerouting-pre-dnat: ct state new jump firewall-check",
                              "verdict": "jump firewall-check"}
    shares = [h["chance"] for p in doc["paths"] for h in p["hops"] if "numgen" in h["rule"]]
    assert shares == ["1/2", "1/2"]


def test_cli_rules_reads_an_nft_listing_and_a_script(tmp_path):
    listing = LISTINGS / "nft-nodeport-all.list"
    r = cli("--rules", str(listing), "--mode", "nftables", "--dst", "172.19.9.23:30700",
            "--node-ip", "172.19.8.23", "--node-ip", "172.19.9.23", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [d["endpoint"] for d in doc["destinations"]] == ["10.60.2.70:8080"]
    assert doc["packet"]["target"] == "node port of retail/shopfront:http (per the rules)"
    assert all(d["node"] is None for d in doc["destinations"])
    # rulegen's own script works the same, and with the Kubernetes files the nodes are named
    script = ROOT / "fixtures" / "nft-nodeport-all" / "expected.nftables"
    r = cli(str(ROOT / "fixtures" / "nft-nodeport-all"), "--rules", str(script), "--dst", "172.19.9.23:30700",
            "--json")
    assert r.exit_code == 0, r.stderr
    assert [(d["endpoint"], d["node"]) for d in json.loads(r.stdout)["destinations"]] == [("10.60.2.70:8080", "wrk-2")]


def test_cli_rules_picks_the_table_of_the_destinations_family(tmp_path):
    both = tmp_path / "ruleset"
    both.write_text((LISTINGS / "session-affinity.ruleset").read_text() + (LISTINGS / "nft-ipv6.list").read_text())
    r = cli("--rules", str(both), "--mode", "nftables", "--dst", "[fd00:19::6]:30680", "--node-ip", "fd00:19::6",
            "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["destinations"][0]["endpoint"] == "[fd00:60:6::80]:8080"
    r = cli("--rules", str(LISTINGS / "nft-ipv6.list"), "--mode", "nftables", "--dst", "10.0.0.1:80")
    assert r.exit_code == 2 and "--dst 10.0.0.1 is IPv4 but the rules are IPv6" in r.stderr
    assert "holds no table ip kube-proxy" in r.stderr
    r = cli("--rules", str(LISTINGS / "nft-ipv6.list"), "--mode", "nftables", "--dst", "10.0.0.1:80",
            "--ip-family", "ipv4")
    assert r.exit_code == 2 and "no table ip kube-proxy in the listing (tables: ip6 kube-proxy)" in r.stderr


@pytest.mark.parametrize("text,msg", [
    ("", "empty: no nftables script or listing"),
    ("table ip filter {\n}\n", "no table ip/ip6 kube-proxy in the listing (tables: ip filter)"),
    ("table ip kube-proxy {\n\tchain x {\n", "has no closing '}'"),
    ("add table ip other\n", "the script is for table ip other"),
    ("this is not nft\n", "not an add/flush/delete command"),
])
def test_cli_rules_bad_files_are_one_line(tmp_path, text, msg):
    f = tmp_path / "bad.nft"
    f.write_text(text)
    r = cli("--rules", str(f), "--mode", "nftables", "--dst", "10.0.0.1:80")
    assert r.exit_code == 2, r.output
    assert msg in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


TINY = """table ip kube-proxy {
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.96.0.1 . tcp . 80 : goto svc }
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.9.9.9 return
		RULE
	}
	chain svc {
		meta l4proto tcp dnat to 10.244.1.5:8080
	}
}
"""


@pytest.mark.parametrize("rule,msg", [
    ("ip daddr . meta l4proto . th dport vmap @service-ips accept", "vmap is followed by more"),
    ("ip daddr . meta l4proto . th dport vmap @service-ips counter", "unknown expression 'counter'"),
    ("counter ip daddr . meta l4proto . th dport vmap @service-ips", "unknown expression 'counter'"),
    ("meta skuid 0 accept", "unknown expression 'meta skuid'"),
    ("numgen inc mod 2 vmap { 0 : goto svc, 1 : goto svc }", "numgen inc"),
    ("ip daddr . meta l4proto . th dport vmap @nowhere", "@nowhere: the table has no such set or map"),
    ("jump elsewhere", "jump to 'elsewhere', a chain the table does not have"),
    ("reject with tcp reset", "kube-proxy rejects plainly"),
    ("masquerade", "only nat postrouting masquerades"),
    ("ip daddr 10.96.0.1 tcp dport < 100 accept", "comparison '<'"),
])
def test_an_unknown_rule_on_the_way_is_a_named_error(tmp_path, rule, msg):
    f = tmp_path / "odd.list"
    f.write_text(TINY.replace("RULE", rule))
    r = cli("--rules", str(f), "--mode", "nftables", "--dst", "10.96.0.1:80")
    assert r.exit_code == 2, r.output
    err = r.stderr
    assert f"{f}: table ip kube-proxy, chain nat-prerouting, rule 2 (" in err, err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_an_unknown_rule_off_the_way_does_no_harm(tmp_path):
    f = tmp_path / "odd.list"
    f.write_text(TINY.replace("RULE", "meta skuid 0 accept"))
    r = cli("--rules", str(f), "--mode", "nftables", "--dst", "10.9.9.9:80", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["verdict"] == "ACCEPT"
    r = cli("--rules", str(f), "--mode", "nftables", "--dst", "10.96.0.2:80")
    assert r.exit_code == 2  # this one reaches the odd rule


def test_the_library_raises_a_trace_error_with_the_place():
    dump = read_text(TINY.replace("RULE", "meta skuid 0 accept"), "tiny")
    c = compiled(ROOT / "fixtures" / "clusterip-basic")
    with pytest.raises(TraceError) as e:
        trace_table(dump.table(4), c.settings, None, "10.96.0.1", 80, source="tiny")
    assert (e.value.table, e.value.chain, e.value.number) == ("ip kube-proxy", "nat-prerouting", 2)
    assert e.value.spec == "meta skuid 0 accept"


def test_a_mode_without_a_localhost_nodeport_says_what_happens_on_127():
    c = compiled(ROOT / "fixtures" / "nodeport-cluster")
    r = trace_compiled(c, "127.0.0.1", "127.0.0.1", 31080)
    assert r.verdict == "ACCEPT" and r.destinations == ()
    assert r.paths[0].hops[-1].rule == "delivered to 127.0.0.1:31080 on this node"


def test_the_trace_of_a_reject_names_why():
    c = compiled(ROOT / "fixtures" / "no-endpoints")
    r = trace_compiled(c, "10.60.3.8", "10.112.100.1", 80)
    assert r.verdict == "REJECT"
    assert [h.chain for h in r.paths[0].hops if h.kind == "rule"][-3:] == \
        ["filter-forward", "service-endpoints-check", "reject-chain"]
    assert any(re.search(r"REJECT through @no-endpoint-services \(\S+/\S+\)", n) for n in r.notes), r.notes
