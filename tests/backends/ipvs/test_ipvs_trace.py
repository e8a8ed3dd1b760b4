"""`rulegen trace --mode ipvs`: the behaviour tables in IPVS mode, each scheduler's shares, saved dumps,
and the command line.

Every fixture with a trace.yaml and an expected.ipvs runs its table in IPVS mode (with the table's
`modes.ipvs` corrections, each of which names why kube-proxy's IPVS mode differs). rr and wrr shares
must be the scheduler's weights for every virtual server of every fixture; the other schedulers are
tried on hand-made states whose weights differ. The compile's three files and a node's dump spelling
read back with `--rules` must trace the same as the compile.
"""

from __future__ import annotations

import json
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import msgspec
import pytest
from rgtest import run_cli

from rulegen import golden
from rulegen.backends.ipvs import parse as iparse
from rulegen.backends.ipvs.ir import FLAG_PERSISTENT, FLAG_SCHED2, RealServer, VirtualServer
from rulegen.backends.ipvs.trace import IPVSStep, trace_state
from rulegen.pipeline import compile_files
from rulegen.trace import TraceError, trace_compiled
from rulegen.trace.model import Packet
from rulegen.trace.render import render_text
from rulegen.trace.tables import TABLE_FILE, load_table, problems

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "fixtures"


def ipvs_table_dirs() -> list[Path]:
    return sorted(d for d in FIXTURES.iterdir() if (d / TABLE_FILE).is_file() and (d / "expected.ipvs").is_file())


@lru_cache(maxsize=None)
def compiled(case_dir: Path):
    case = golden.load_case(case_dir)
    flags, config = golden.case_flags(case)
    flags["mode"] = "ipvs"
    return compile_files([str(p) for p in case.inputs], flags, None, config)


def pod_cidrs(c) -> tuple[str, ...]:
    return next((tuple(n.pod_cidrs) for n in c.inputs.nodes if n.name == c.settings.hostname), ())


ENTRIES = [(d, i, chk) for d in ipvs_table_dirs() for i, chk in enumerate(load_table(d / TABLE_FILE))]


def test_every_ipvs_case_with_a_table_is_traced_and_the_differences_are_said():
    names = {d.name for d in ipvs_table_dirs()}
    for want in ("clusterip-basic", "nodeport-cluster", "nodeport-local", "nodeport-local-no-local", "itp-local",
                 "lb-source-ranges", "session-affinity", "ipvs-scheduler-wrr", "ipvs-scheduler-sh",
                 "ipvs-scheduler-mh", "ipvs-lb-source-range-any"):
        assert want in names
    differ = [chk for _, _, chk in ENTRIES if "ipvs" in chk.modes]
    assert len(differ) >= 15 and all(chk.why("ipvs") for chk in differ)
    assert len(ENTRIES) >= 50


@pytest.mark.parametrize("case_dir,i,check", ENTRIES, ids=[f"{d.name}[{i + 1}]" for d, i, _ in ENTRIES])
def test_trace_table_in_ipvs_mode(case_dir, i, check):
    chk = check.for_mode("ipvs")
    if chk is None:
        pytest.skip(check.why("ipvs"))
    c = compiled(case_dir)
    ip, port = chk.dst_parts()
    res = trace_compiled(c, chk.src, ip, port, chk.proto, in_iface=chk.in_iface, pod_cidrs=pod_cidrs(c))
    assert problems(res, chk) == [], f"{case_dir.name}: {chk.name}"


def test_an_override_is_what_makes_a_differing_check_pass():
    # Without its ipvs correction, the check that IPVS mode rejects fails: the correction is needed.
    [chk] = [c for d, _, c in ENTRIES if d.name == "clusterip-basic" and "wrong port" in c.name]
    c = compiled(FIXTURES / "clusterip-basic")
    ip, port = chk.dst_parts()
    res = trace_compiled(c, chk.src, ip, port, chk.proto, pod_cidrs=pod_cidrs(c))
    assert problems(res, chk) == ["verdict REJECT, expected ACCEPT"]
    assert problems(res, chk.for_mode("ipvs")) == []


# ------------------------------------------------------------------ rr and wrr: shares are the weights

def _rr_wrr_cases() -> list[Path]:
    return [d for d in sorted(FIXTURES.iterdir()) if (d / "expected.ipvs").is_file()
            and compiled(d).ir.virtual_servers and compiled(d).ir.virtual_servers[0].scheduler in ("rr", "wrr")]


def _weights(vs: VirtualServer) -> dict[str, Fraction]:
    alive = [r for r in vs.reals if r.weight > 0]
    total = sum(r.weight for r in alive)
    if vs.scheduler == "rr":
        return {f"{r.address}:{r.port}" if ":" not in r.address else f"[{r.address}]:{r.port}":
                Fraction(1, len(alive)) for r in alive}
    return {f"{r.address}:{r.port}" if ":" not in r.address else f"[{r.address}]:{r.port}":
            Fraction(r.weight, total) for r in alive}


def test_rr_and_wrr_shares_are_the_weights_for_every_virtual_server_of_every_fixture():
    cases = _rr_wrr_cases()
    assert len(cases) >= 30 and any(compiled(d).ir.virtual_servers[0].scheduler == "wrr" for d in cases)
    traced = 0
    for d in cases:
        c = compiled(d)
        for vs in c.ir.virtual_servers:
            if not vs.reals:
                continue
            # The IPVS step itself, for a packet to the virtual server.
            step = IPVSStep(c.ir, frozenset())
            pkt = Packet(vs.protocol, "203.0.113.10" if c.ir.family == 4 else "2001:db8::10", 40000, vs.address,
                         vs.port, "eth0")
            got = {b.packet.dst_endpoint: b.share for b in step(pkt)}
            assert got == _weights(vs), f"{d.name}: {vs.key}"
            # And the whole trace, from a pod of this node (never filtered by source ranges).
            src = next((p.split("/")[0].rsplit(".", 1)[0] + ".250" for p in pod_cidrs(c) if ":" not in p), None)
            if src is None or c.ir.family != 4:
                continue
            res = trace_compiled(c, src, vs.address, vs.port, vs.protocol, pod_cidrs=pod_cidrs(c))
            if res.verdict == "DNAT":
                assert res.shares() == _weights(vs), f"{d.name}: {vs.key}"
                traced += 1
    assert traced >= 60


# ------------------------------------------------------------------ each scheduler, on hand-made states

BASE = FIXTURES / "clusterip-basic"  # shop/catalog 10.112.14.7:80 on wrk-3, pods 10.60.0.0/16
REALS = (RealServer("10.60.1.14", 8080, 1), RealServer("10.60.2.9", 8080, 2), RealServer("10.60.3.22", 8080, 3))


def state_with(scheduler: str, reals=REALS, flags: int = 0, timeout: int = 0):
    c = compiled(BASE)
    vss = tuple(msgspec.structs.replace(vs, scheduler=scheduler, reals=reals, flags=flags, timeout=timeout)
                if vs.address == "10.112.14.7" else vs for vs in c.ir.virtual_servers)
    return c, msgspec.structs.replace(c.ir, virtual_servers=vss)


def trace_with(scheduler: str, reals=REALS, flags: int = 0, timeout: int = 0, src: str = "10.60.3.9"):
    c, state = state_with(scheduler, reals, flags, timeout)
    return trace_state(state, c.settings, src, "10.112.14.7", 80, plan=c.plan, pod_cidrs=pod_cidrs(c))


EPS = ("10.60.1.14:8080", "10.60.2.9:8080", "10.60.3.22:8080")


def test_wrr_is_weight_over_the_sum_and_rr_ignores_the_weights():
    assert trace_with("wrr").shares() == dict(zip(EPS, (Fraction(1, 6), Fraction(1, 3), Fraction(1, 2))))
    assert trace_with("rr").shares() == dict.fromkeys(EPS, Fraction(1, 3))


def test_weight_zero_is_left_out():
    reals = (RealServer("10.60.1.14", 8080, 0),) + REALS[1:]
    assert trace_with("wrr", reals).shares() == {EPS[1]: Fraction(2, 5), EPS[2]: Fraction(3, 5)}
    assert trace_with("rr", reals).shares() == {EPS[1]: Fraction(1, 2), EPS[2]: Fraction(1, 2)}


@pytest.mark.parametrize("reals,why", [((), "has no real server"),
                                       ((RealServer("10.60.1.14", 8080, 0),), "no real server of weight above 0")])
def test_no_usable_real_server_is_refused(reals, why):
    r = trace_with("rr", reals)
    assert r.verdict == "REJECT" and r.destinations == () and r.outcomes == {"REJECT": 1}
    assert any(why in n for n in r.notes)


@pytest.mark.parametrize("sched", ["lc", "wlc", "sed", "nq", "lblc", "lblcr"])
def test_connection_count_schedulers_say_the_share_depends_on_load_and_show_the_weights(sched):
    r = trace_with(sched)
    assert r.verdict == "DNAT" and r.outcomes == {"DNAT": 1}  # where it goes is known, how it splits is not
    assert r.shares() == dict.fromkeys(EPS)
    assert {d.endpoint: d.weight for d in r.destinations} == dict(zip(EPS, (1, 2, 3)))
    assert all(f"depends on live load ({sched}:" in d.unknown for d in r.destinations)
    doc = json.loads(json.dumps(r.as_json()))
    assert [(d["probability"], d["chance"], d["weight"]) for d in doc["destinations"]] == [
        (None, None, 1), (None, None, 2), (None, None, 3)]
    assert all(d["reason"].startswith("depends on live load") for d in doc["destinations"])
    assert doc["outcomes"] == {"DNAT": {"probability": 1.0, "chance": "1"}}
    text = render_text(r)
    assert "chance not fixed by the rules (depends on live load" in text and "weight: 3" in text


@pytest.mark.parametrize("sched,flags,key", [
    ("sh", 0, "source address (10.60.3.9)"),
    ("sh", FLAG_SCHED2, "source address and port (10.60.3.9:…)"),  # ipvsadm's sh-port
    ("mh", FLAG_SCHED2, "source address and port (10.60.3.9:…)"),  # kube-proxy's mh-port
    ("mh", 0, "source address (10.60.3.9)"),
    ("dh", 0, "destination address (10.112.14.7)"),
])
def test_hashing_schedulers_name_the_hashed_key(sched, flags, key):
    r = trace_with(sched, flags=flags)
    assert r.shares() == dict.fromkeys(EPS)
    assert all(key in d.unknown for d in r.destinations), r.destinations[0].unknown


def test_one_real_server_takes_everything_whatever_the_scheduler():
    assert trace_with("wlc", REALS[:1]).shares() == {EPS[0]: 1}


def test_weighted_failover_picks_the_heaviest():
    assert trace_with("fo").shares() == {EPS[2]: 1}
    tied = (RealServer("10.60.1.14", 8080, 3),) + REALS[1:]
    assert trace_with("fo", tied).shares() == {EPS[0]: None, EPS[2]: None}


def test_persistence_is_noted_with_its_timeout():
    r = trace_with("rr", flags=FLAG_PERSISTENT, timeout=600)
    assert {d.affinity for d in r.destinations} == {600}
    assert any("within 600 seconds go to the same real server" in n for n in r.notes)
    assert trace_with("rr").destinations[0].affinity is None


def test_direct_routing_is_refused_by_name():
    reals = (RealServer("10.60.1.14", 8080, 1, "g"),)
    with pytest.raises(TraceError, match="direct routing: the tracer follows masquerading"):
        trace_with("rr", reals)


def test_an_unknown_split_with_two_verdicts_leaves_their_outcomes_unknown():
    # A filter rule that drops one real server's packets: which share is dropped depends on the load.
    c, state = state_with("wlc")
    from rulegen.dataplane.xtables.model import Rule, Ruleset, Table

    rs = state.iptables
    filt = next(t for t in rs.tables if t.name == "filter")
    filt = Table(filt.name, filt.chains, (Rule("KUBE-IPVS-OUT-FILTER", "-d 10.60.1.14/32 -j DROP"),) + filt.rules)
    state = msgspec.structs.replace(state, iptables=Ruleset(
        rs.family, tuple(filt if t.name == "filter" else t for t in rs.tables)))
    r = trace_state(state, c.settings, "10.60.3.9", "10.112.14.7", 80, plan=c.plan, pod_cidrs=pod_cidrs(c))
    assert r.outcomes == {"DROP": None, "DNAT": None}
    assert r.verdict == "DNAT" and set(r.shares()) == set(EPS[1:])


# ------------------------------------------------------------------ saved files and node dumps

def test_the_three_files_trace_as_the_compile_does(tmp_path):
    for d in ipvs_table_dirs():
        c = compiled(d)
        out = tmp_path / d.name
        r = run_cli("compile", *[str(p) for p in golden.load_case(d).inputs], "--mode", "ipvs", "-o", str(out),
                    *(golden.read_args(d / "args").split() if (d / "args").is_file() else []))
        assert r.exit_code == 0, r.output
        state = iparse.read(str(out))
        for chk in filter(None, (x.for_mode("ipvs") for x in load_table(d / TABLE_FILE))):
            ip, port = chk.dst_parts()
            want = trace_compiled(c, chk.src, ip, port, chk.proto, in_iface=chk.in_iface, pod_cidrs=pod_cidrs(c))
            got = trace_state(state, c.settings, chk.src, ip, port, chk.proto, plan=c.plan, in_iface=chk.in_iface,
                              pod_cidrs=pod_cidrs(c), source=str(out))
            assert any("jumps" in n and "assumed" in n for n in got.notes)  # the files hold no built-in rules
            assert (got.verdict, got.shares(), got.masquerade) == (want.verdict, want.shares(), want.masquerade)


NODE_DUMP_IPVSADM = """\
-A -t 10.112.14.7:80 -s wrr
-a -t 10.112.14.7:80 -r 10.60.1.14:8080 -m -w 1
-a -t 10.112.14.7:80 -r 10.60.2.9:8080 -m -w 3
"""
NODE_DUMP_IPSET = """\
create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x8f2c11aa
add KUBE-CLUSTER-IP 10.112.14.7,tcp:80
create KUBE-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1b2c3d4e
add KUBE-IPVS-IPS 10.112.14.7
create cali40all-hosts-net hash:net family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x11
add cali40all-hosts-net 172.19.8.0/24
"""
NODE_DUMP_IPTABLES = """\
# Generated by iptables-save v1.8.9 (nf_tables) on Mon Dec  1 10:00:00 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN
-A KUBE-SERVICES ! -s 10.60.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-IPVS-FILTER - [0:0]
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A INPUT -m set --match-set cali40all-hosts-net src -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""


def node_dump(tmp_path: Path) -> Path:
    d = tmp_path / "node"
    d.mkdir()
    (d / "ipvsadm.rules").write_text(NODE_DUMP_IPVSADM)
    (d / "ipset.rules").write_text(NODE_DUMP_IPSET)
    (d / "iptables.rules").write_text(NODE_DUMP_IPTABLES)
    return d


def test_a_node_dump_folder_in_save_spelling(tmp_path):
    d = node_dump(tmp_path)
    r = run_cli("trace", "--mode", "ipvs", "--rules", str(d), "--node-ip", "172.19.8.23", "--cluster-cidr",
                "10.60.0.0/16", "--dst", "10.112.14.7:80", "--src", "203.0.113.10", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "DNAT" and doc["masquerade"] is True
    assert [(x["endpoint"], x["chance"], x["weight"]) for x in doc["destinations"]] == [
        ("10.60.1.14:8080", "1/4", 1), ("10.60.2.9:8080", "3/4", 3)]
    assert doc["packet"]["target"] == "IPVS virtual server TCP 10.112.14.7:80 on a kube-ipvs0 address (per the rules)"
    assert "assumed" not in " ".join(doc["notes"])  # the dump's own jumps were used
    # another port of the bound address: KUBE-IPVS-FILTER rejects it
    r = run_cli("trace", "--mode", "ipvs", "--rules", str(d), "--node-ip", "172.19.8.23", "--dst", "10.112.14.7:81",
                "--json")
    assert json.loads(r.stdout)["verdict"] == "REJECT"


def test_a_set_the_dump_lacks_splits_into_branches_that_name_it(tmp_path):
    # A node's dump never stops the trace: both answers are followed, each marked with the set's name.
    d = node_dump(tmp_path)
    (d / "ipset.rules").write_text(NODE_DUMP_IPSET.split("create cali40")[0])
    r = run_cli("trace", "--mode", "ipvs", "--rules", str(d), "--node-ip", "172.19.8.23", "--dst", "10.112.14.7:80",
                "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "DNAT"
    hops = [h["verdict"] for h in doc["hops"] if h["kind"] == "assume"]
    # ACCEPT there or not, IPVS comes next either way: the two branches join again
    assert hops[0].endswith(f"ipset cali40all-hosts-net is not in {d / 'ipset.rules'}")
    assert hops[-1] == "the two assumed branches join again" and doc["assumed"] is False


# ------------------------------------------------------------------ the command line

def test_cli_text_names_ipvs_and_the_shares():
    r = run_cli("trace", "--mode", "ipvs", str(FIXTURES / "ipvs-scheduler-wrr"), "--dst", "172.19.8.23:30554")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "IPVS virtual server TCP 172.19.8.23:30554 (-s wrr): weighted round robin" in out
    assert "→ KUBE-SERVICES → KUBE-NODE-PORT → IPVS wrr → KUBE-POSTROUTING → pod 10.60.1.66:8554 on wrk-1" in out
    assert "10.60.2.66:8554  chance 1/2 (50%)" in out and "weight: 1" in out


def test_cli_json_gives_null_and_a_reason_where_the_share_is_not_known():
    r = run_cli("trace", "--mode", "ipvs", str(FIXTURES / "ipvs-scheduler-mh"), "--dst", "172.19.8.23:30443",
                "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [d["probability"] for d in doc["destinations"]] == [None, None]
    assert all("mh hashes the client's source address and port" in d["reason"] for d in doc["destinations"])
    assert all(d["affinity_seconds"] == 900 for d in doc["destinations"])
    assert doc["outcomes"]["DNAT"]["chance"] == "1"
    assert [p["probability"] for p in doc["paths"]] == [None, None]


def test_the_iptables_output_keeps_its_shape():
    # No weight line, no reason key: what iptables mode printed before IPVS mode's tracer.
    r = run_cli("trace", str(FIXTURES / "nodeport-cluster"), "--dst", "172.19.8.23:31080", "--json")
    doc = json.loads(r.stdout)
    assert set(doc["destinations"][0]) == {"endpoint", "probability", "chance", "node", "local", "masquerade"}
    assert all(set(p) == {"probability", "chance", "verdict", "endpoint", "masquerade", "hops"} for p in doc["paths"])
    text = run_cli("trace", str(FIXTURES / "nodeport-cluster"), "--dst", "172.19.8.23:31080").stdout
    assert "weight:" not in text and "IPVS" not in text


def test_a_real_server_on_a_node_address_is_delivered_on_this_node():
    # A hostNetwork endpoint: IPVS's forward to a local address goes on to nat INPUT and the node's socket.
    r = trace_with("rr", (RealServer("172.19.8.23", 9100, 1),))
    [p] = r.paths
    assert r.verdict == "DNAT" and r.shares() == {"172.19.8.23:9100": 1}
    assert p.hops[-1].rule == "delivered to 172.19.8.23:9100 on this node"
    assert not any(h.chain == "KUBE-POSTROUTING" for h in p.hops)  # not sent out again
    assert r.destinations[0].local is True
