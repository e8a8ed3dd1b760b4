"""Golden nftables scripts: each expected.nftables is consistent on its own, loads into a kernel, and lists back as compiled.

`tests/test_golden.py` already compares every expected.<mode> file with the
compiler byte for byte. Here, each fixtures/*/expected.nftables is also
checked against rules re-derived from kube-proxy's scheme (object names are
the hash of their readable part, every `numgen ... mod N` maps exactly 0..N-1,
every ClusterIP is either served or refused), and, as root, passes
`nft -c -f`, loads with `nft -f` into a fresh network namespace, and `nft list
table` there has the normal form of the compiled Transaction: the round trip
from compile through the kernel back to the IR.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rulegen import golden
from rulegen.backends.nftables import parse, state
from rulegen.pipeline import compile_files

from nshelp import namespace_names

ROOT = Path(__file__).resolve().parent.parent
CASES = [c for c in golden.discover(ROOT / "fixtures") if "nftables" in c.modes]
IDS = [c.name for c in CASES]
PREFIXES = ("service-", "local-", "external-", "firewall-", "endpoint-", "affinity-")


def _expected(case: golden.Case) -> str:
    return case.expected_path("nftables").read_text()


def _family(case: golden.Case) -> str:
    return "ip6" if "--ip-family ipv6" in case.args else "ip"


def test_enough_cases_and_the_mode_features_are_covered():
    assert len(CASES) >= 50
    texts = {c.name: _expected(c) for c in CASES}
    everything = "\n".join(texts.values())
    markers = [
        "add table ip6 kube-proxy", "dnat ip6 addr . port to numgen", "flags dynamic,timeout ; timeout 120s",
        "update @affinity-", "dnat to [fd00:", "local-", "firewall-", "goto reject-chain }", " : drop }",
        "iifname != cbr0", "iifname veth* goto", "delete set ip kube-proxy nodeport-ips",
        "fib daddr type local ip daddr != 127.0.0.0/8", "drop comment \"Drop traffic to unallocated ClusterIPs\"",
        "{ 10.112.0.0/16,10.113.0.0/20 }", "masquerade all clusterIP traffic", "0x00001000",
        "delete element ip kube-proxy service-ips", "udp . ", "sctp . ", "numgen random mod 1 map",
    ]
    missing = [m for m in markers if m not in everything]
    assert not missing, f"no fixture covers: {missing}"
    # The cases left out are exactly the iptables-only ones, as fixtures/README.md says.
    all_cases = {c.name for c in golden.discover(ROOT / "fixtures")}
    ipvs_cases = {n for n in all_cases if n.startswith("ipvs-")}  # IPVS-mode cases, no nftables script
    assert all_cases - set(IDS) - ipvs_cases == {"large-cluster", "large-cluster-threshold", "masquerade-bit",
                                                 "no-localhost-nodeports", "no-nfacct", "no-random-fully",
                                                 "tcp-be-liberal"}
    readme = (ROOT / "fixtures" / "README.md").read_text()
    for name in all_cases - set(IDS):
        assert re.search(rf"^\| {re.escape(name)} \|.*\| no: ", readme, re.M), f"README gives no reason for {name}"


def _hash8(base: str) -> str:
    return base64.b32encode(hashlib.sha256(base.encode()).digest()).decode()[:8]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_expected_script_is_consistent_with_kube_proxys_scheme(case: golden.Case):
    text = _expected(case)
    tx = parse.parse_script(text)  # every operation re-checked: declared chains, sets, keys, comments
    assert (tx.family, tx.table) == (_family(case), "kube-proxy")
    st = state.replay(tx)
    names = list(st.chains) + list(st.sets)
    for name in names:
        if name.startswith(PREFIXES):
            prefix, rest = name.split("-", 1)
            h, base = rest[:8], rest[9:]
            if "/" not in base:
                continue  # a fixed name such as service-endpoints-check
            if not base.endswith("..."):
                assert h == _hash8(base), f"{name}: hash is not of {base!r}"
    for chain in st.chains.values():
        for r in chain.rules:
            m = re.search(r"numgen random mod (\d+) v?map \{ (.*) \}", r.rule)
            if m:
                keys = [int(item.split(" : ")[0]) for item in m.group(2).split(" , ")]
                assert keys == list(range(int(m.group(1)))), r.rule
    served = {e.key[0] for e in st.sets["service-ips"].elements.values()}
    refused = {e.key[0] for e in st.sets["no-endpoint-services"].elements.values()}
    for e in st.sets["cluster-ips"].elements.values():
        assert e.key[0] in served | refused, f"cluster IP {e.key[0]} is neither served nor refused"
    for e in st.sets["no-endpoint-services"].elements.values():
        assert e.value in (("goto reject-chain",), ("drop",)) and e.comment
    # Elements only point at chains that exist and hold rules.
    for s in st.sets.values():
        for e in s.elements.values():
            for v in e.value:
                if v.startswith("goto "):
                    assert st.chains[v[5:]].rules or v == "goto reject-chain" or v[5:].startswith("firewall-")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_expected_script_reads_back_to_the_compiled_state(case: golden.Case):
    flags, config = golden.case_flags(case)
    flags["mode"] = "nftables"
    compiled = compile_files([str(p) for p in case.inputs], flags, None, config)
    assert state.normalise(parse.read_state(_expected(case))) == state.normalise(state.replay(compiled.ir))


# ----------------------------------------------------------------------------- the kernel


def _nft(ns: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=stdin, text=True,
                          capture_output=True, timeout=120)


@pytest.mark.root
@pytest.mark.skipif(not shutil.which("nft"), reason="needs nft (make test installs nftables)")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_script_loads_into_a_namespace_and_lists_back_as_compiled(case: golden.Case):
    text = _expected(case)
    flags, config = golden.case_flags(case)
    flags["mode"] = "nftables"
    compiled = compile_files([str(p) for p in case.inputs], flags, None, config)
    want = state.normalise(state.replay(compiled.ir))
    fam = _family(case)
    with namespace_names("rgt-nftg") as fresh:
        ns = fresh()
        r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        r = _nft(ns, "-c", "-f", "-", stdin=text)
        assert r.returncode == 0, f"nft -c refused {case.name}: {r.stderr}"
        r = _nft(ns, "-f", "-", stdin=text)
        assert r.returncode == 0, f"nft refused {case.name}: {r.stderr}"
        listed = _nft(ns, "list", "table", fam, "kube-proxy")
        assert listed.returncode == 0, listed.stderr
        # Loading the same script again (kube-proxy's next full sync) leaves the same state.
        r = _nft(ns, "-f", "-", stdin=text)
        assert r.returncode == 0, f"a second load failed for {case.name}: {r.stderr}"
        again = _nft(ns, "list", "table", fam, "kube-proxy").stdout
    got = state.normalise(parse.read_state(listed.stdout, family=fam))
    assert state.compare(want, got) == []
    assert got == want
    assert state.normalise(parse.read_state(again, family=fam)) == want
