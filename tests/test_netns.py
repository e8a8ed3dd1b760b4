"""The kernel interface: the fake's iptables-restore --noflush semantics, and the real one.

The fake is what apply's tests stand on, so its semantics are pinned here
and, where root is available, checked against the real iptables-restore
with the same payloads (namespaces prefixed `rgt-apply-`, always deleted).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid

import pytest

from rulegen.backends.iptables.parse import parse
from rulegen.netns import ApplyError, FakeNetns, NetnsError, RealNetns, check_name, restore_error, rule_target

BASE = """*nat
:KUBE-A - [0:0]
:KUBE-B - [0:0]
-A KUBE-A -m comment --comment "to b" -j KUBE-B
-A KUBE-B -j ACCEPT
-A PREROUTING -j KUBE-A
COMMIT
"""


def chains(ops, ns: str, table: str = "nat", family: int = 4) -> dict[str, list[str]]:
    rs = parse(ops.iptables_save(ns, family), family=family)
    t = rs.table(table)
    return {c: s for c, s in t.by_chain().items() if s or c in t.chains} if t else {}


# ---------------------------------------------------------------------- helpers


def test_rule_target_skips_quoted_comments():
    assert rule_target('-m comment --comment "x -j NOT" -j KUBE-SVC-AB') == "KUBE-SVC-AB"
    assert rule_target('-m comment --comment "other traffic to x will be dropped"') is None
    assert rule_target("-g KUBE-X") == "KUBE-X"


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden", "x" * 65, "sp ace"])
def test_check_name_rejects_unsafe_names(bad):
    with pytest.raises(NetnsError):
        check_name(bad)


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
    ops = FakeNetns()
    ops.create("rgt-apply-f")
    ops.iptables_restore("rgt-apply-f", BASE)
    return ops


def test_fake_namespace_lifecycle():
    ops = FakeNetns()
    assert not ops.exists("rgt-apply-f")
    ops.create("rgt-apply-f")
    with pytest.raises(NetnsError, match="already exists"):
        ops.create("rgt-apply-f")
    first = ops.identity("rgt-apply-f")
    assert ops.list() == ["rgt-apply-f"]
    ops.delete("rgt-apply-f")
    assert not ops.exists("rgt-apply-f")
    with pytest.raises(NetnsError, match="does not exist"):
        ops.iptables_save("rgt-apply-f")
    ops.create("rgt-apply-f")
    assert ops.identity("rgt-apply-f") != first


def test_fake_declared_chain_is_flushed_and_rules_append(fake):
    fake.iptables_restore("rgt-apply-f", "*nat\n:KUBE-B - [0:0]\n-A KUBE-B -j RETURN\n-A KUBE-B -j ACCEPT\nCOMMIT\n")
    c = chains(fake, "rgt-apply-f")
    assert c["KUBE-B"] == ["-j RETURN", "-j ACCEPT"]
    assert c["KUBE-A"] == ['-m comment --comment "to b" -j KUBE-B']  # untouched: not declared
    assert c["PREROUTING"] == ["-j KUBE-A"]


def test_fake_delete_chain_rules(fake):
    with pytest.raises(ApplyError, match="still referenced"):
        fake.iptables_restore("rgt-apply-f", "*nat\n:KUBE-B - [0:0]\n-X KUBE-B\nCOMMIT\n")
    with pytest.raises(ApplyError, match="not empty"):
        fake.iptables_restore("rgt-apply-f", "*nat\n-X KUBE-B\nCOMMIT\n")
    with pytest.raises(ApplyError, match="built-in"):
        fake.iptables_restore("rgt-apply-f", "*nat\n-X PREROUTING\nCOMMIT\n")
    # flushing the referrer in the same payload frees the chain
    fake.iptables_restore("rgt-apply-f", "*nat\n:KUBE-A - [0:0]\n:KUBE-B - [0:0]\n-A KUBE-A -j ACCEPT\n-X KUBE-B\nCOMMIT\n")
    c = chains(fake, "rgt-apply-f")
    assert "KUBE-B" not in c and c["KUBE-A"] == ["-j ACCEPT"]


def test_fake_insert_delete_and_check(fake):
    fake.iptables_restore("rgt-apply-f", "*nat\n-I PREROUTING 1 -j KUBE-B\n-I PREROUTING -j RETURN\nCOMMIT\n")
    assert chains(fake, "rgt-apply-f")["PREROUTING"] == ["-j RETURN", "-j KUBE-B", "-j KUBE-A"]
    assert fake.check_rule("rgt-apply-f", "nat", "PREROUTING", "-j KUBE-B")
    assert not fake.check_rule("rgt-apply-f", "nat", "OUTPUT", "-j KUBE-B")
    assert not fake.check_rule("rgt-apply-f", "filter", "INPUT", "-j KUBE-B")
    fake.iptables_restore("rgt-apply-f", "*nat\n-D PREROUTING -j KUBE-B\nCOMMIT\n")
    assert chains(fake, "rgt-apply-f")["PREROUTING"] == ["-j RETURN", "-j KUBE-A"]
    fake.insert_rule("rgt-apply-f", "nat", "OUTPUT", "-j KUBE-A")
    assert chains(fake, "rgt-apply-f")["OUTPUT"] == ["-j KUBE-A"]


def test_fake_refused_line_leaves_its_table_and_keeps_earlier_ones(fake):
    payload = ("*filter\n:KUBE-F - [0:0]\n-A KUBE-F -j ACCEPT\nCOMMIT\n"
               "*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j KUBE-MISSING\nCOMMIT\n")
    with pytest.raises(ApplyError) as ei:
        fake.iptables_restore("rgt-apply-f", payload)
    assert (ei.value.line_no, ei.value.line, ei.value.table) == (7, "-A KUBE-A -j KUBE-MISSING", "nat")
    assert chains(fake, "rgt-apply-f")["KUBE-A"] == ['-m comment --comment "to b" -j KUBE-B']
    assert chains(fake, "rgt-apply-f", "filter")["KUBE-F"] == ["-j ACCEPT"]  # like the real one


def test_fake_test_mode_checks_syntax_only(fake):
    before = fake.iptables_save("rgt-apply-f")
    fake.iptables_restore("rgt-apply-f", "*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j KUBE-MISSING\nCOMMIT\n", test=True)
    with pytest.raises(ApplyError, match="unbalanced"):
        fake.iptables_restore("rgt-apply-f", '*nat\n-A KUBE-A -m comment --comment "x\nCOMMIT\n', test=True)
    with pytest.raises(ApplyError, match="COMMIT expected"):
        fake.iptables_restore("rgt-apply-f", "*nat\n:KUBE-Z - [0:0]\n", test=True)
    with pytest.raises(ApplyError, match="table 'bogus' does not exist"):
        fake.iptables_restore("rgt-apply-f", "*bogus\nCOMMIT\n", test=True)
    assert fake.iptables_save("rgt-apply-f") == before


def test_fake_families_are_separate(fake):
    assert "*nat" not in fake.iptables_save("rgt-apply-f", 6)
    fake.iptables_restore("rgt-apply-f", "*filter\n:KUBE-6 - [0:0]\nCOMMIT\n", family=6)
    assert "KUBE-6" in fake.iptables_save("rgt-apply-f", 6) and "KUBE-6" not in fake.iptables_save("rgt-apply-f", 4)


def test_fake_spelling_applies_to_save_and_check():
    ops = FakeNetns(spelling=lambda s: re.sub(r"-d (\d+\.\d+\.\d+\.\d+) ", r"-d \1/32 ", s))
    ops.create("rgt-apply-f")
    ops.iptables_restore("rgt-apply-f", "*nat\n-A OUTPUT -d 10.0.0.1 -j ACCEPT\nCOMMIT\n")
    assert "-A OUTPUT -d 10.0.0.1/32 -j ACCEPT" in ops.iptables_save("rgt-apply-f")
    assert ops.check_rule("rgt-apply-f", "nat", "OUTPUT", "-d 10.0.0.1/32 -j ACCEPT")


# ---------------------------------------------------------------------- real

root = pytest.mark.root
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("iptables-restore"),
                                reason="needs root and iptables-restore")


@pytest.fixture
def real():
    ops = RealNetns()
    names: list[str] = []

    def make() -> str:
        n = f"rgt-apply-{uuid.uuid4().hex[:8]}"
        names.append(n)
        ops.create(n)
        return n

    try:
        yield ops, make
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        assert not [n for n in names if os.path.exists(f"/run/netns/{n}")]


@root
@needs_root
def test_real_lifecycle(real):
    ops, make = real
    ns = make()
    assert ops.exists(ns) and ns in ops.list() and ops.identity(ns)
    with pytest.raises(NetnsError, match="already exists"):
        ops.create(ns)
    assert "state UNKNOWN" in ops.run(ns, ["ip", "link", "show", "lo"]).stdout or \
        "UP" in ops.run(ns, ["ip", "link", "show", "lo"]).stdout
    ops.delete(ns)
    assert not ops.exists(ns) and ns not in ops.list()
    ops.delete(ns)  # deleting twice is fine
    with pytest.raises(NetnsError, match="does not exist"):
        ops.iptables_save(ns)
    with pytest.raises(NetnsError, match="does not exist"):
        ops.run(ns, ["true"])


@root
@needs_root
def test_real_matches_fake_semantics(real):
    ops, make = real
    ns = make()
    fake = FakeNetns()
    fake.create("rgt-apply-f")
    steps = [
        BASE,
        "*nat\n:KUBE-B - [0:0]\n-A KUBE-B -j RETURN\nCOMMIT\n",
        "*nat\n-I PREROUTING 1 -j KUBE-B\nCOMMIT\n",
        "*nat\n:KUBE-A - [0:0]\n:KUBE-C - [0:0]\n-A KUBE-A -j KUBE-C\n-A KUBE-C -j ACCEPT\nCOMMIT\n",
        "*nat\n-D PREROUTING -j KUBE-B\n:KUBE-B - [0:0]\n-X KUBE-B\nCOMMIT\n",
    ]
    for p in steps:
        ops.iptables_restore(ns, p)
        fake.iptables_restore("rgt-apply-f", p)
        assert chains(ops, ns) == chains(fake, "rgt-apply-f"), p
    refused = "*filter\n:KUBE-F - [0:0]\nCOMMIT\n*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j KUBE-NOPE\nCOMMIT\n"
    for o, n in ((ops, ns), (fake, "rgt-apply-f")):
        with pytest.raises(ApplyError) as ei:
            o.iptables_restore(n, refused)
        assert ei.value.line == "-A KUBE-A -j KUBE-NOPE" and ei.value.line_no == 6
    assert chains(ops, ns) == chains(fake, "rgt-apply-f")
    assert chains(ops, ns, "filter") == chains(fake, "rgt-apply-f", "filter")


@root
@needs_root
def test_real_check_and_insert_rule(real):
    ops, make = real
    ns = make()
    ops.iptables_restore(ns, BASE)
    args = '-m comment --comment "kubernetes service portals" -j KUBE-A'
    assert not ops.check_rule(ns, "nat", "OUTPUT", args)
    ops.insert_rule(ns, "nat", "OUTPUT", args)
    assert ops.check_rule(ns, "nat", "OUTPUT", args)
    assert not ops.check_rule(ns, "nat", "OUTPUT", "-j KUBE-NOT-THERE")
    with pytest.raises(ApplyError):
        ops.insert_rule(ns, "nat", "OUTPUT", "-j KUBE-NOT-THERE")


@root
@needs_root
def test_real_test_mode_changes_nothing_and_ipv6(real):
    ops, make = real
    ns = make()
    ops.iptables_restore(ns, BASE.replace("-A PREROUTING -j KUBE-A\n", ""), test=True)
    assert "KUBE-A" not in ops.iptables_save(ns)
    ops.iptables_restore(ns, "*filter\n:KUBE-V6 - [0:0]\n-A KUBE-V6 -d fd00::1/128 -j ACCEPT\nCOMMIT\n", family=6)
    assert "-A KUBE-V6 -d fd00::1/128 -j ACCEPT" in ops.iptables_save(ns, 6)
    assert "KUBE-V6" not in ops.iptables_save(ns, 4)


@root
@needs_root
def test_real_nfacct_counters(real):
    ops, make = real
    ns = make()
    rule = "*filter\n:KUBE-N - [0:0]\n-A KUBE-N -m nfacct --nfacct-name rgt_apply_ctr -j ACCEPT\nCOMMIT\n"
    with pytest.raises(ApplyError):
        ops.iptables_restore(ns, rule)
    ops.ensure_nfacct(ns, ["rgt_apply_ctr"])
    ops.ensure_nfacct(ns, ["rgt_apply_ctr"])  # exists already: fine
    ops.iptables_restore(ns, rule)
    assert "--nfacct-name" in ops.iptables_save(ns)
    other = make()  # counters are per namespace
    with pytest.raises(ApplyError):
        ops.iptables_restore(other, rule)


@root
@needs_root
def test_real_sysctl(real):
    ops, make = real
    ns = make()
    ops.set_sysctl(ns, "net.ipv4.conf.all.route_localnet", "1")
    out = ops.run(ns, ["sysctl", "-n", "net.ipv4.conf.all.route_localnet"]).stdout.strip()
    assert out == "1"


def test_real_without_root_is_clear(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsError, match="needs root"):
        RealNetns().iptables_save("rgt-apply-x")
    with pytest.raises(NetnsError, match="needs root"):
        RealNetns().create("rgt-apply-x")
