"""The fake xtables client's iptables-restore --noflush semantics, and the restore helpers both clients share.

The fake is what every applier's tests stand on, so its semantics are
pinned here; tests/dataplane/test_parity.py runs the same payloads against
the real iptables-restore where root is available.
"""

from __future__ import annotations

import re
import subprocess

import pytest

import rulegen.dataplane.xtables.restore as restoremod
from rulegen.apply.kernel import Kernel
from rulegen.dataplane.xtables.client import RealXtables
from rulegen.dataplane.xtables.parse import parse
from rulegen.dataplane.xtables.restore import (
    ApplyError,
    backend_tool,
    check_backend,
    choose_backend,
    nft_payload,
    renumber,
    restore_error,
    restore_reason,
    rule_target,
    split_listing,
)
from rulegen.kernel.netns import NetnsError

BASE = """*nat
:KUBE-A - [0:0]
:KUBE-B - [0:0]
-A KUBE-A -m comment --comment "to b" -j KUBE-B
-A KUBE-B -j ACCEPT
-A PREROUTING -j KUBE-A
COMMIT
"""


def chains(ops, ns: str, table: str = "nat", family: int = 4) -> dict[str, list[str]]:
    rs = parse(ops.xtables.save(ns, family), family=family)
    t = rs.table(table)
    return {c: s for c, s in t.by_chain().items() if s or c in t.chains} if t else {}


# ---------------------------------------------------------------------- helpers


def test_rule_target_skips_quoted_comments():
    assert rule_target('-m comment --comment "x -j NOT" -j KUBE-SVC-AB') == "KUBE-SVC-AB"
    assert rule_target('-m comment --comment "other traffic to x will be dropped"') is None
    assert rule_target("-g KUBE-X") == "KUBE-X"


def test_restore_error_maps_line_numbers_of_both_formats():
    payload = "*nat\n:KUBE-A - [0:0]\n-A KUBE-A -m bogus\nCOMMIT\n"
    legacy = restore_error(payload, "iptables-restore: line 3 failed\n", "iptables-restore")
    assert (legacy.line_no, legacy.line) == (3, "-A KUBE-A -m bogus") and legacy.table == "nat"
    nft = restore_error(payload, "iptables-restore v1.8.9 (nf_tables): Couldn't load match `bogus'\n"
                                 "Error occurred at line: 3\nTry `iptables-restore -h' for more.\n", "iptables-restore")
    assert nft.line == "-A KUBE-A -m bogus" and "Couldn't load match `bogus'" in str(nft) and "Try" not in str(nft)


def test_restore_error_blames_the_jump_not_commit():
    payload = "*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j ACCEPT\n-A KUBE-A -j KUBE-GONE\nCOMMIT\n"
    e = restore_error(payload, "iptables-restore v1.8.9 (nf_tables): Chain 'KUBE-GONE' does not exist\n"
                               "Error occurred at line: 5\n", "iptables-restore")
    assert (e.line_no, e.line) == (4, "-A KUBE-A -j KUBE-GONE")


# ---------------------------------------------------------------------- fake


@pytest.fixture
def fake():
    ops = Kernel.fake()
    ops.netns.create("rgt-apply-f")
    ops.xtables.restore("rgt-apply-f", BASE)
    return ops


def test_fake_namespace_lifecycle():
    ops = Kernel.fake()
    assert not ops.netns.exists("rgt-apply-f")
    ops.netns.create("rgt-apply-f")
    with pytest.raises(NetnsError, match="already exists"):
        ops.netns.create("rgt-apply-f")
    first = ops.netns.identity("rgt-apply-f")
    assert ops.netns.list() == ["rgt-apply-f"]
    ops.netns.delete("rgt-apply-f")
    assert not ops.netns.exists("rgt-apply-f")
    with pytest.raises(NetnsError, match="does not exist"):
        ops.xtables.save("rgt-apply-f")
    ops.netns.create("rgt-apply-f")
    assert ops.netns.identity("rgt-apply-f") != first


def test_fake_declared_chain_is_flushed_and_rules_append(fake):
    fake.xtables.restore("rgt-apply-f", "*nat\n:KUBE-B - [0:0]\n-A KUBE-B -j RETURN\n-A KUBE-B -j ACCEPT\nCOMMIT\n")
    c = chains(fake, "rgt-apply-f")
    assert c["KUBE-B"] == ["-j RETURN", "-j ACCEPT"]
    assert c["KUBE-A"] == ['-m comment --comment "to b" -j KUBE-B']  # untouched: not declared
    assert c["PREROUTING"] == ["-j KUBE-A"]


def test_fake_delete_chain_rules(fake):
    with pytest.raises(ApplyError, match="still referenced"):
        fake.xtables.restore("rgt-apply-f", "*nat\n:KUBE-B - [0:0]\n-X KUBE-B\nCOMMIT\n")
    with pytest.raises(ApplyError, match="not empty"):
        fake.xtables.restore("rgt-apply-f", "*nat\n-X KUBE-B\nCOMMIT\n")
    with pytest.raises(ApplyError, match="built-in"):
        fake.xtables.restore("rgt-apply-f", "*nat\n-X PREROUTING\nCOMMIT\n")
    # flushing the referrer in the same payload frees the chain
    fake.xtables.restore("rgt-apply-f", "*nat\n:KUBE-A - [0:0]\n:KUBE-B - [0:0]\n-A KUBE-A -j ACCEPT\n-X KUBE-B\nCOMMIT\n")
    c = chains(fake, "rgt-apply-f")
    assert "KUBE-B" not in c and c["KUBE-A"] == ["-j ACCEPT"]


def test_fake_insert_delete_and_check(fake):
    fake.xtables.restore("rgt-apply-f", "*nat\n-I PREROUTING 1 -j KUBE-B\n-I PREROUTING -j RETURN\nCOMMIT\n")
    assert chains(fake, "rgt-apply-f")["PREROUTING"] == ["-j RETURN", "-j KUBE-B", "-j KUBE-A"]
    assert fake.xtables.check_rule("rgt-apply-f", "nat", "PREROUTING", "-j KUBE-B")
    assert not fake.xtables.check_rule("rgt-apply-f", "nat", "OUTPUT", "-j KUBE-B")
    assert not fake.xtables.check_rule("rgt-apply-f", "filter", "INPUT", "-j KUBE-B")
    fake.xtables.restore("rgt-apply-f", "*nat\n-D PREROUTING -j KUBE-B\nCOMMIT\n")
    assert chains(fake, "rgt-apply-f")["PREROUTING"] == ["-j RETURN", "-j KUBE-A"]
    fake.xtables.insert_rule("rgt-apply-f", "nat", "OUTPUT", "-j KUBE-A")
    assert chains(fake, "rgt-apply-f")["OUTPUT"] == ["-j KUBE-A"]


def test_fake_delete_by_rule_number(fake):
    fake.xtables.restore("rgt-apply-f", "*nat\n-A PREROUTING -j KUBE-B\n-A PREROUTING -j KUBE-A\nCOMMIT\n")
    assert chains(fake, "rgt-apply-f")["PREROUTING"] == ["-j KUBE-A", "-j KUBE-B", "-j KUBE-A"]
    fake.xtables.restore("rgt-apply-f", "*nat\n-D PREROUTING 3\n-D PREROUTING 1\nCOMMIT\n")
    assert chains(fake, "rgt-apply-f")["PREROUTING"] == ["-j KUBE-B"]
    with pytest.raises(ApplyError, match="Index of deletion too big") as ei:
        fake.xtables.restore("rgt-apply-f", "*nat\n-D PREROUTING 2\nCOMMIT\n")
    assert ei.value.line_no == 2
    assert chains(fake, "rgt-apply-f")["PREROUTING"] == ["-j KUBE-B"]


def test_fake_refused_line_leaves_its_table_and_keeps_earlier_ones(fake):
    payload = ("*filter\n:KUBE-F - [0:0]\n-A KUBE-F -j ACCEPT\nCOMMIT\n"
               "*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j KUBE-MISSING\nCOMMIT\n")
    with pytest.raises(ApplyError) as ei:
        fake.xtables.restore("rgt-apply-f", payload)
    assert (ei.value.line_no, ei.value.line, ei.value.table) == (7, "-A KUBE-A -j KUBE-MISSING", "nat")
    assert chains(fake, "rgt-apply-f")["KUBE-A"] == ['-m comment --comment "to b" -j KUBE-B']
    assert chains(fake, "rgt-apply-f", "filter")["KUBE-F"] == ["-j ACCEPT"]  # like the real one


def test_fake_test_mode_checks_syntax_only(fake):
    before = fake.xtables.save("rgt-apply-f")
    fake.xtables.restore("rgt-apply-f", "*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j KUBE-MISSING\nCOMMIT\n", test=True)
    with pytest.raises(ApplyError, match="unbalanced"):
        fake.xtables.restore("rgt-apply-f", '*nat\n-A KUBE-A -m comment --comment "x\nCOMMIT\n', test=True)
    with pytest.raises(ApplyError, match="COMMIT expected"):
        fake.xtables.restore("rgt-apply-f", "*nat\n:KUBE-Z - [0:0]\n", test=True)
    with pytest.raises(ApplyError, match="table 'bogus' does not exist"):
        fake.xtables.restore("rgt-apply-f", "*bogus\nCOMMIT\n", test=True)
    assert fake.xtables.save("rgt-apply-f") == before


def test_fake_families_are_separate(fake):
    assert "*nat" not in fake.xtables.save("rgt-apply-f", 6)
    fake.xtables.restore("rgt-apply-f", "*filter\n:KUBE-6 - [0:0]\nCOMMIT\n", family=6)
    assert "KUBE-6" in fake.xtables.save("rgt-apply-f", 6) and "KUBE-6" not in fake.xtables.save("rgt-apply-f", 4)


def test_fake_spelling_applies_to_save_and_check():
    ops = Kernel.fake(spelling=lambda s: re.sub(r"-d (\d+\.\d+\.\d+\.\d+) ", r"-d \1/32 ", s))
    ops.netns.create("rgt-apply-f")
    ops.xtables.restore("rgt-apply-f", "*nat\n-A OUTPUT -d 10.0.0.1 -j ACCEPT\nCOMMIT\n")
    assert "-A OUTPUT -d 10.0.0.1/32 -j ACCEPT" in ops.xtables.save("rgt-apply-f")
    assert ops.xtables.check_rule("rgt-apply-f", "nat", "OUTPUT", "-d 10.0.0.1/32 -j ACCEPT")


def test_fake_backends_are_separate_and_auto_follows_the_tables():
    ops = Kernel.fake(system="nft")
    ops.netns.create("rgt-inc-f")
    assert ops.xtables.backend_for("rgt-inc-f") == "nft"  # fresh: the system's
    legacy = ops.with_iptables("legacy")
    legacy.xtables.restore("rgt-inc-f", BASE)
    assert ops.xtables.backend_for("rgt-inc-f") == "legacy"  # now in use
    assert "KUBE-A" in ops.xtables.save("rgt-inc-f")
    assert "KUBE-A" not in ops.with_iptables("nft").xtables.save("rgt-inc-f")
    ops.with_iptables("nft").xtables.restore("rgt-inc-f", "*filter\n:KUBE-F - [0:0]\nCOMMIT\n")
    assert ops.xtables.backend_for("rgt-inc-f") == "nft"  # both in use, neither has KUBE-SERVICES: the system's
    legacy.xtables.restore("rgt-inc-f", "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n")
    assert ops.xtables.backend_for("rgt-inc-f") == "legacy"  # only legacy has kube-proxy's rules
    assert Kernel.fake(system="legacy").xtables.backend_for("rgt-inc-gone") == "legacy"


def test_fake_generation_counts_committed_tables_on_nft_only():
    ops = Kernel.fake()
    ops.netns.create("rgt-inc-f")
    g0 = ops.xtables.generation("rgt-inc-f")
    ops.xtables.restore("rgt-inc-f", "*filter\n:KUBE-F - [0:0]\nCOMMIT\n*nat\n:KUBE-A - [0:0]\nCOMMIT\n")
    assert ops.xtables.generation("rgt-inc-f") == g0 + 2
    ops.xtables.restore("rgt-inc-f", "*nat\n:KUBE-B - [0:0]\nCOMMIT\n", test=True)
    ops.xtables.check_rule("rgt-inc-f", "nat", "PREROUTING", "-j KUBE-A")
    assert ops.xtables.list_chains("rgt-inc-f", 4, "nat", ["KUBE-A"]) == {"KUBE-A": []}
    assert ops.xtables.generation("rgt-inc-f") == g0 + 2  # tests, checks and listings change nothing
    with pytest.raises(ApplyError):
        ops.xtables.restore("rgt-inc-f", "*nat\n-A KUBE-A -j KUBE-NOPE\nCOMMIT\n")
    assert ops.xtables.generation("rgt-inc-f") == g0 + 2  # a refused table commits nothing
    assert ops.with_iptables("legacy").xtables.generation("rgt-inc-f") is None


def test_fake_list_chains(fake):
    assert fake.xtables.list_chains("rgt-apply-f", 4, "nat", ["KUBE-A", "PREROUTING"]) == {
        "KUBE-A": ['-m comment --comment "to b" -j KUBE-B'], "PREROUTING": ["-j KUBE-A"]}
    assert fake.xtables.list_chains("rgt-apply-f", 4, "nat", ["KUBE-A", "KUBE-GONE"]) is None
    assert fake.xtables.list_chains("rgt-apply-f", 4, "nat", []) == {}


# ---------------------------------------------------------------------- backends and tools


@pytest.mark.parametrize("requested, present, kube, expected", [
    ("nft", {"legacy"}, set(), "nft"),  # an explicit choice wins
    ("legacy", set(), set(), "legacy"),
    ("auto", set(), set(), "SYSTEM"),  # a fresh namespace: what `iptables` is
    ("auto", {"legacy"}, set(), "legacy"),  # the backend already in use
    ("auto", {"nft"}, set(), "nft"),
    ("auto", {"nft", "legacy"}, {"legacy"}, "legacy"),  # both in use: the one with kube-proxy's rules
    ("auto", {"nft", "legacy"}, {"nft"}, "nft"),
    ("auto", {"nft", "legacy"}, {"nft", "legacy"}, "SYSTEM"),
])
@pytest.mark.parametrize("system", ["nft", "legacy"])
def test_choose_backend_as_iptables_wrapper(requested, present, kube, expected, system):
    asked = []

    def has_kube(b):
        asked.append(b)
        return b in kube

    got = choose_backend(requested, system, present, has_kube)
    assert got == (system if expected == "SYSTEM" else expected)
    assert bool(asked) == (requested == "auto" and len(present) == 2)  # the costly probe only when needed


def test_choose_backend_rejects_unknown_names():
    with pytest.raises(NetnsError, match="choose one of auto, nft, legacy"):
        choose_backend("iptables", "nft", set())
    with pytest.raises(NetnsError, match="choose one of"):
        Kernel.real("nftables")
    with pytest.raises(NetnsError, match="choose one of"):
        Kernel.fake(iptables_backend="bogus")


def test_backend_tool_names(monkeypatch):
    have = {"iptables-nft-restore", "ip6tables-legacy-save", "iptables"}
    monkeypatch.setattr(restoremod.shutil, "which", lambda n: f"/usr/sbin/{n}" if n in have else None)
    monkeypatch.setattr(restoremod, "system_backend", lambda: "nft")
    assert backend_tool("restore", 4, "nft") == "iptables-nft-restore"
    assert backend_tool("save", 6, "legacy") == "ip6tables-legacy-save"
    assert backend_tool("", 4, "nft") == "iptables"  # only the plain name: fine for the system's own backend
    with pytest.raises(NetnsError, match="iptables-legacy is not installed"):
        backend_tool("", 4, "legacy")


def test_real_tools_ask_the_backend_once(monkeypatch):
    """restore and list_chains pick the backend (a namespace visit on auto) once per call."""
    monkeypatch.setattr(restoremod.shutil, "which", lambda n: f"/usr/sbin/{n}")
    xt = RealXtables(backend="auto")
    asked, ran = [], []
    monkeypatch.setattr(xt.netns, "need", lambda name: None)
    monkeypatch.setattr(xt, "backend_for", lambda name, family=4: asked.append(name) or "legacy")
    monkeypatch.setattr(xt.netns, "exec", lambda name, argv, **kw: ran.append(argv) or
                        subprocess.CompletedProcess(argv, 0, "-A KUBE-X -j ACCEPT\n", ""))
    xt.restore("rgt-x", "*nat\nCOMMIT\n", 6)
    assert xt.list_chains("rgt-x", 4, "nat", ["KUBE-X"]) == {"KUBE-X": ["-j ACCEPT"]}
    assert asked == ["rgt-x", "rgt-x"]
    assert ran == [["ip6tables-legacy-restore", "--noflush"], ["iptables-legacy-restore", "--noflush", "--test"]]


def test_check_backend():
    assert [check_backend(b) for b in ("auto", "nft", "legacy")] == ["auto", "nft", "legacy"]
    with pytest.raises(NetnsError, match=r"^--iptables-backend 'x': choose one of auto, nft, legacy$"):
        check_backend("x")


def test_restore_reason_drops_nft_warnings():
    err = ("# Warning: iptables-legacy tables present, use iptables-legacy to see them\n"
           "iptables-restore v1.8.9 (nf_tables): line 3: RULE_APPEND failed (No such file or directory)\n")
    assert restore_reason(err) == "RULE_APPEND failed (No such file or directory)"


def test_split_listing_reads_iptables_S_output():
    text = ("-P PREROUTING ACCEPT\n-A PREROUTING -j KUBE-A\n-N KUBE-A\n"
            '-A KUBE-A -m comment --comment "x y" -j KUBE-B\n-N KUBE-EMPTY\n')
    assert split_listing(text, ["PREROUTING", "KUBE-A", "KUBE-EMPTY"]) == {
        "PREROUTING": ["-j KUBE-A"], "KUBE-A": ['-m comment --comment "x y" -j KUBE-B'], "KUBE-EMPTY": []}


BIG = """*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-A - [0:0]
-A KUBE-SERVICES -d 10.96.0.1 -j KUBE-SVC-A
-A KUBE-SVC-A -j KUBE-SEP-A
-A KUBE-SEP-A -p tcp -j DNAT --to-destination 10.0.0.1:80
-I OUTPUT 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-I PREROUTING 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-X KUBE-SEP-OLD
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
-A KUBE-FIREWALL -j DROP
COMMIT
"""


def test_nft_payload_small_is_untouched():
    assert nft_payload(BIG) == (BIG, None)


def test_nft_payload_puts_S_after_builtin_commands(monkeypatch):
    monkeypatch.setattr(restoremod, "NFT_CHAIN_LIST_MAX", 5)  # nat: 7 commands x 3 chains; filter: 2 x 1
    text, where = nft_payload(BIG)
    sent = text.splitlines()
    orig = BIG.splitlines()
    assert sent.count("-S") == 1 and sorted(ln for ln in sent if ln != "-S") == sorted(orig)
    s = sent.index("-S")
    # before -S: the built-in chains' commands and the declaration of what they jump to
    assert sent[1:s] == [":KUBE-SERVICES - [0:0]", orig[7], orig[8]]
    assert sent[s + 1] == ":KUBE-SVC-A - [0:0]" and sent[-5:] == orig[-5:]  # filter as it was
    for chain in ("KUBE-SERVICES", "KUBE-SVC-A", "PREROUTING"):  # each chain's own order kept
        mine = [ln for ln in sent if ln.split(" ")[1:2] == [chain]]
        assert mine == [ln for ln in orig if ln.split(" ")[1:2] == [chain]]
    assert [orig[w - 1] if w else "-S" for w in where] == sent  # every sent line maps back
    # an error reported against the sent text is renumbered to the caller's payload
    n = sent.index("-X KUBE-SEP-OLD") + 1
    want = orig.index("-X KUBE-SEP-OLD") + 1
    assert renumber(f"line {n}: CHAIN_DEL failed", where) == f"line {want}: CHAIN_DEL failed"


def test_nft_payload_leaves_unusual_shapes_alone(monkeypatch):
    monkeypatch.setattr(restoremod, "NFT_CHAIN_LIST_MAX", 0)
    mixed = "*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j ACCEPT\n:KUBE-B - [0:0]\n-A KUBE-B -j ACCEPT\nCOMMIT\n"
    assert nft_payload(mixed) == (mixed, None)  # a declaration after a rule: no reasoning covers a move
