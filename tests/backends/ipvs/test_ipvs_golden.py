"""Golden IPVS outputs (fixtures/*/expected.ipvs): consistent with kube-proxy's logic, and loadable.

`tests/core/test_golden.py` compares every expected file with the compiler byte
for byte. Here each expected.ipvs is read back and checked against rules
re-derived from kube-proxy's IPVS proxier with nothing but the text (which
virtual servers each set implies, which glue rules each non-empty set
brings, what kube-ipvs0 holds), so a compiler change that rewrote the files
wrongly would still fail; the fixtures together must cover every feature
of the mode. As root, every ipset section is restored with `ipset restore`
in a fresh namespace and `ipset save` there reads back to the same sets,
and every iptables section passes `iptables-restore --test` (ip6tables for
IPv6) with those sets present; payloads without `-m ipvs` (which needs the
ip_vs module) are also loaded for real and read back by meaning.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rulegen import golden
from rulegen.backends.ipvs import parse, render
from rulegen.backends.ipvs.ir import BITMAP_PORT, IPVSState, normalised, set_name

from nshelp import namespace_names

ROOT = Path(__file__).resolve().parents[3]
CASES = [c for c in golden.discover(ROOT / "fixtures") if "ipvs" in c.modes]
IDS = [c.name for c in CASES]


def expected(case: golden.Case) -> tuple[str, IPVSState]:
    text = case.expected_path("ipvs").read_text()
    return text, parse.parse(text, case.name)


def test_enough_ipvs_cases_and_every_feature_is_covered():
    assert len(CASES) >= 40
    texts = {c.name: c.expected_path("ipvs").read_text() for c in CASES}
    everything = "\n".join(texts.values())
    markers = [
        " -s rr\n", " -s wrr\n", " -s sh -p 10800\n", " -s mh -b mh-port\n", " -s mh -p 900 -b mh-port\n",
        " -p 600\n", "-A -u ", "-A --sctp-service ", "-A -t [fd00:", " -r [fd00:",
        "add KUBE-LOOP-BACK ", "add KUBE-CLUSTER-IP ", "add KUBE-EXTERNAL-IP ", "add KUBE-EXTERNAL-IP-LOCAL ",
        "add KUBE-LOAD-BALANCER ", "add KUBE-LOAD-BALANCER-LOCAL ", "add KUBE-LOAD-BALANCER-FW ",
        "add KUBE-LOAD-BALANCER-SOURCE-IP ", "add KUBE-LOAD-BALANCER-SOURCE-CIDR ", "add KUBE-NODE-PORT-TCP ",
        "add KUBE-NODE-PORT-LOCAL-TCP ", "add KUBE-NODE-PORT-UDP ", "add KUBE-NODE-PORT-LOCAL-UDP ",
        "add KUBE-NODE-PORT-SCTP-HASH ", "add KUBE-6-NODE-PORT-LOCAL-SCTP-HAS ",
        "add KUBE-6-LOAD-BALANCER-SOURCE-CID ", "add KUBE-HEALTH-CHECK-NODE-PORT ", "add KUBE-IPVS-IPS ",
        "create KUBE-6-LOOP-BACK hash:ip,port,ip family inet6 ", "-A KUBE-SERVICES -s ::1/128 -j RETURN",
        "-m ipvs --vaddr ", "KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ", "KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ",
        "KUBE-CLUSTER-IP dst,dst ! -i cbr0 -j KUBE-MARK-MASQ", "-j MASQUERADE\n", "--or-mark 0x00000200",
    ]
    missing = [m for m in markers if m not in everything]
    assert not missing, f"no expected.ipvs covers: {missing}"
    # Shown by an absence or a difference between files.
    by_case = {n: parse.parse(t, n) for n, t in texts.items()}
    assert any(not vs.reals for st in by_case.values() for vs in st.virtual_servers), "no VS without endpoints"
    assert any(len({vs.address for vs in st.virtual_servers if vs.port >= 30000}) > 1 for st in by_case.values()), \
        "no NodePort on several node addresses"
    assert any(len(st.bound) < len({vs.address for vs in st.virtual_servers if vs.port < 30000})
               for st in by_case.values()), "no external or LB IP left unbound because it is a node address"


def _key(entry: str) -> tuple[str, str, int]:
    """`IP,proto:port[,...]` → (proto, IP, port)."""
    ip, rest = entry.split(",", 1)
    proto, _, port = rest.split(",", 1)[0].partition(":")
    return (proto, ip, int(port))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_expected_ipvs_is_consistent_with_kube_proxy(case: golden.Case):
    text, st = expected(case)
    fam = 6 if "--ip-family ipv6" in case.args else 4
    assert st.family == fam
    assert text.startswith("# rulegen: ipvsadm\n") and text.endswith("COMMIT\n")
    assert render.render(st) == text  # nothing in the file the IR cannot hold

    def entries(name: str) -> tuple[str, ...]:
        s = st.ipset(set_name(name, fam))
        assert s is not None, f"set {set_name(name, fam)} missing"
        return s.entries

    # 17 sets, every one created, with kube-proxy's options.
    assert len(st.ipsets) == 17
    for s in st.ipsets:
        assert s.name.startswith("KUBE-6-" if fam == 6 else "KUBE-") and len(s.name) <= 31
        if s.type == BITMAP_PORT:
            assert s.options == (("range", "0-65535"),)
        else:
            assert s.family == ("inet6" if fam == 6 else "inet")
            assert s.options == (("hashsize", "1024"), ("maxelem", "65536"))
        assert list(s.entries) == sorted(s.entries, key=int if s.type == BITMAP_PORT else str)

    # Every ClusterIP / external / LB entry is a virtual server; NodePort servers are the node-port entries.
    services = {vs.key: vs for vs in st.virtual_servers}
    vip_keys = {_key(e) for n in ("KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL",
                                  "KUBE-LOAD-BALANCER") for e in entries(n)}
    node_ports = {("tcp", int(p)) for p in entries("KUBE-NODE-PORT-TCP")} | \
                 {("udp", int(p)) for p in entries("KUBE-NODE-PORT-UDP")}
    sctp_node_keys = {_key(e) for e in entries("KUBE-NODE-PORT-SCTP-HASH")}
    others = set(services) - vip_keys
    assert vip_keys <= set(services)
    for proto, addr, port in others:
        assert (proto, port) in node_ports or (proto, addr, port) in sctp_node_keys, (proto, addr, port)
    assert {k for k in others if k[0] == "sctp"} == sctp_node_keys
    assert {(p, port) for p, _, port in others if p != "sctp"} == node_ports
    node_addresses = {a for _, a, _ in others}
    assert not (node_addresses & set(st.bound)), "a node address is bound to kube-ipvs0"
    # kube-ipvs0: every ClusterIP, and every external/LB IP that is not a node address.
    cluster_ips = {_key(e)[1] for e in entries("KUBE-CLUSTER-IP")}
    ext_lb = {k[1] for k in vip_keys} - cluster_ips
    assert set(st.bound) == cluster_ips | (ext_lb - node_addresses)
    assert st.bound == entries("KUBE-IPVS-IPS")
    # Local-policy sets are subsets of their siblings.
    for local, main in (("KUBE-LOAD-BALANCER-LOCAL", "KUBE-LOAD-BALANCER"),
                        ("KUBE-NODE-PORT-LOCAL-TCP", "KUBE-NODE-PORT-TCP"),
                        ("KUBE-NODE-PORT-LOCAL-UDP", "KUBE-NODE-PORT-UDP"),
                        ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "KUBE-NODE-PORT-SCTP-HASH"),
                        ("KUBE-LOAD-BALANCER-FW", "KUBE-LOAD-BALANCER")):
        assert set(entries(local)) <= set(entries(main)), local
    for e in entries("KUBE-LOAD-BALANCER-SOURCE-IP"):
        ip, _, ip2 = e.rpartition(",")
        assert ip.split(",")[0] == ip2 and _key(e) in {_key(x) for x in entries("KUBE-LOAD-BALANCER-FW")}
    for e in entries("KUBE-LOOP-BACK"):
        ip, rest = e.split(",", 1)
        assert rest.endswith("," + ip)

    # Real servers: masquerading at weight 1; persistence always with a timeout; one scheduler everywhere.
    assert len({vs.scheduler for vs in st.virtual_servers}) <= 1
    for vs in st.virtual_servers:
        assert all(r.method == "m" and r.weight == 1 for r in vs.reals), vs.key
        assert vs.persistent == (vs.timeout > 0)
        assert vs.flags & 0x10 == (0x10 if vs.scheduler == "mh" else 0)

    # The glue: a set-matching rule with a comment exists exactly for the sets kube-proxy filled.
    tables = {t.name: t for t in st.iptables.tables}
    assert list(tables) == ["nat", "filter"]
    nat = [r.line() for r in tables["nat"].rules]
    flt = [r.line() for r in tables["filter"].rules]
    created = {s.name for s in st.ipsets}
    for line in nat + flt:
        for m in re.findall(r"--match-set (\S+)", line):
            assert m in created, line
    conditional = {"KUBE-LOOP-BACK", "KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER-LOCAL", "KUBE-NODE-PORT-TCP",
                   "KUBE-NODE-PORT-LOCAL-TCP", "KUBE-NODE-PORT-UDP", "KUBE-NODE-PORT-LOCAL-UDP",
                   "KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH", "KUBE-LOAD-BALANCER-FW",
                   "KUBE-LOAD-BALANCER-SOURCE-CIDR", "KUBE-LOAD-BALANCER-SOURCE-IP", "KUBE-CLUSTER-IP",
                   "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL"}
    zero_range = any("0.0.0.0/0" in p.read_text() or "::/0" in p.read_text() for p in case.inputs)
    for n in conditional:
        name = set_name(n, fam)
        has_rule = any("-m comment --comment " in ln and f"--match-set {name} " in ln for ln in nat + flt)
        filled = bool(entries(n))
        if n == "KUBE-LOAD-BALANCER-SOURCE-CIDR" and zero_range and entries("KUBE-LOAD-BALANCER-FW"):
            assert has_rule  # a /0 range: counted by kube-proxy, refused by the kernel
        else:
            assert has_rule == filled, f"{name}: rule {has_rule}, entries {filled}"
    # KUBE-IPVS-OUT-FILTER drops node-originated traffic to LB IPs whose ranges miss the node.
    outs = [ln for ln in flt if ln.startswith("-A KUBE-IPVS-OUT-FILTER ")]
    fw = {_key(e) for e in entries("KUBE-LOAD-BALANCER-FW")}
    allowed = {_key(e) for e in entries("KUBE-LOAD-BALANCER-SOURCE-IP")}
    assert len(outs) == len(fw - allowed)
    for ln in outs:
        m = re.fullmatch(r"-A KUBE-IPVS-OUT-FILTER -s (\S+) -m ipvs --vaddr \1 --vproto (\w+) --vport (\d+) -j DROP", ln)
        assert m and (m.group(2), m.group(1), int(m.group(3))) in fw - allowed, ln
    # Fixed rules in place: first and last of KUBE-SERVICES, the REJECT closing KUBE-IPVS-FILTER.
    svc = [ln for ln in nat if ln.startswith("-A KUBE-SERVICES ")]
    assert svc[0] == f"-A KUBE-SERVICES -s {'::1/128' if fam == 6 else '127.0.0.0/8'} -j RETURN"
    assert flt[-1].endswith(f"--match-set {set_name('KUBE-IPVS-IPS', fam)} dst -j REJECT")
    assert nat[-1].startswith("-A KUBE-MARK-MASQ -j MARK --or-mark ")


# ----------------------------------------------------------------------------- the kernel


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def ipset_problem() -> str | None:
    """Probed once: why this machine cannot hold ipsets in a namespace (None when it can)."""
    if not shutil.which("ipset"):
        return "ipset not installed (make test installs it)"
    with namespace_names("rgt-ipvsg") as fresh:
        ns = fresh()
        r = _run("ip", "netns", "add", ns)
        if r.returncode:
            return f"cannot create a network namespace: {r.stderr.strip()}"
        r = _run("ip", "netns", "exec", ns, "ipset", "list")
        return None if r.returncode == 0 else f"no ip_set in this kernel: {r.stderr.strip()}"


def _rule_counts(text: str) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            key = (table, line.split(" ", 2)[1])
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.root
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_outputs_load_into_a_namespace(case: golden.Case, ipset_problem):
    if ipset_problem:
        pytest.skip(ipset_problem)
    _, st = expected(case)
    sets_text, rules_text = render.ipset(st), render.iptables(st)
    restore, save = ("ip6tables-restore", "ip6tables-save") if st.family == 6 else ("iptables-restore", "iptables-save")
    with namespace_names("rgt-ipvsg") as fresh:
        ns = fresh()
        assert _run("ip", "netns", "add", ns).returncode == 0
        r = _run("ip", "netns", "exec", ns, "ipset", "restore", stdin=sets_text)
        assert r.returncode == 0, f"ipset restore refused {case.name}: {r.stderr}"
        r = _run("ip", "netns", "exec", ns, "ipset", "save")
        assert r.returncode == 0, r.stderr
        back = parse.parse_ipset(r.stdout, f"{case.name} (ipset save)")
        assert [s.name for s in back] == [s.name for s in st.ipsets]
        live = IPVSState(st.family, st.virtual_servers, back, st.bound, st.iptables)
        assert normalised(live)["ipsets"] == normalised(st)["ipsets"]
        r = _run("ip", "netns", "exec", ns, restore, "--test", stdin=rules_text)
        assert r.returncode == 0, f"{restore} --test refused {case.name}: {r.stderr}"
        if "-m ipvs " in rules_text:
            return  # loading it for real needs the ip_vs module (xt_ipvs); --test has checked the syntax
        r = _run("ip", "netns", "exec", ns, restore, "--noflush", stdin=rules_text)
        assert r.returncode == 0, f"{restore} refused {case.name}: {r.stderr}"
        dump = _run("ip", "netns", "exec", ns, save)
        assert dump.returncode == 0, dump.stderr
        want = _rule_counts(rules_text)
        got = _rule_counts(dump.stdout)
        assert {k: got.get(k, 0) for k in want} == want, "the kernel holds a different number of rules"
        live = parse.parse_parts("", sets_text, dump.stdout, st.family)
        wanted = normalised(st, canonical=True)["iptables"]
        have = normalised(live, canonical=True)["iptables"]
        for table, chains in wanted.items():
            for chain, specs in chains.items():
                assert have[table].get(chain) == specs, f"{table}/{chain} reads back differently"
