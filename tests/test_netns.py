"""The kernel interface: the fake's iptables-restore --noflush semantics, and the real one.

The fake is what apply's tests stand on, so its semantics are pinned here
and, where root is available, checked against the real iptables-restore
with the same payloads (namespaces prefixed `rgt-apply-`, always deleted).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import struct
import subprocess

import pytest
from nshelp import namespace_names

import rulegen.netns as netnsmod
from rulegen.dataplane.xtables.parse import parse
from rulegen.netns import (
    ApplyError,
    FakeNetns,
    NetnsError,
    RealNetns,
    _renumber,
    backend_tool,
    check_name,
    choose_backend,
    nft_payload,
    restore_error,
    restore_reason,
    rule_target,
    split_listing,
)

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


def test_fake_delete_by_rule_number(fake):
    fake.iptables_restore("rgt-apply-f", "*nat\n-A PREROUTING -j KUBE-B\n-A PREROUTING -j KUBE-A\nCOMMIT\n")
    assert chains(fake, "rgt-apply-f")["PREROUTING"] == ["-j KUBE-A", "-j KUBE-B", "-j KUBE-A"]
    fake.iptables_restore("rgt-apply-f", "*nat\n-D PREROUTING 3\n-D PREROUTING 1\nCOMMIT\n")
    assert chains(fake, "rgt-apply-f")["PREROUTING"] == ["-j KUBE-B"]
    with pytest.raises(ApplyError, match="Index of deletion too big") as ei:
        fake.iptables_restore("rgt-apply-f", "*nat\n-D PREROUTING 2\nCOMMIT\n")
    assert ei.value.line_no == 2
    assert chains(fake, "rgt-apply-f")["PREROUTING"] == ["-j KUBE-B"]


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
    with namespace_names("rgt-apply") as name:

        def make() -> str:
            n = name()
            ops.create(n)
            return n

        yield ops, make


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
        # copies removed by number, highest first (how apply removes duplicated jumps)
        "*nat\n-A PREROUTING -j KUBE-C\n-A PREROUTING -j KUBE-A\n-A PREROUTING -j KUBE-C\nCOMMIT\n",
        "*nat\n-D PREROUTING 4\n-D PREROUTING 3\n-I PREROUTING 1 -j KUBE-C\nCOMMIT\n",
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
    too_far = "*nat\n-D PREROUTING 1\n-D PREROUTING 9\nCOMMIT\n"
    for o, n in ((ops, ns), (fake, "rgt-apply-f")):
        with pytest.raises(ApplyError) as ei:
            o.iptables_restore(n, too_far)
        assert ei.value.line == "-D PREROUTING 9" and ei.value.line_no == 3
    assert chains(ops, ns) == chains(fake, "rgt-apply-f")
    assert chains(ops, ns)["PREROUTING"] == ["-j KUBE-C", "-j KUBE-A", "-j KUBE-C"]


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


# ---------------------------------------------------------------------- backends (rgt-inc-)


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
        RealNetns("nftables")
    with pytest.raises(NetnsError, match="choose one of"):
        FakeNetns(backend="bogus")


def test_backend_tool_names(monkeypatch):
    have = {"iptables-nft-restore", "ip6tables-legacy-save", "iptables"}
    monkeypatch.setattr(netnsmod.shutil, "which", lambda n: f"/usr/sbin/{n}" if n in have else None)
    monkeypatch.setattr(netnsmod, "system_backend", lambda: "nft")
    assert backend_tool("restore", 4, "nft") == "iptables-nft-restore"
    assert backend_tool("save", 6, "legacy") == "ip6tables-legacy-save"
    assert backend_tool("", 4, "nft") == "iptables"  # only the plain name: fine for the system's own backend
    with pytest.raises(NetnsError, match="iptables-legacy is not installed"):
        backend_tool("", 4, "legacy")


def test_real_tools_ask_the_backend_once(monkeypatch):
    """iptables_restore and list_chains pick the backend (a namespace visit on auto) once per call."""
    monkeypatch.setattr(netnsmod.shutil, "which", lambda n: f"/usr/sbin/{n}")
    ops = RealNetns("auto")
    asked, ran = [], []
    monkeypatch.setattr(ops, "_need", lambda name: None)
    monkeypatch.setattr(ops, "backend_for", lambda name, family=4: asked.append(name) or "legacy")
    monkeypatch.setattr(ops, "_run_raw", lambda name, argv, **kw: ran.append(argv) or
                        subprocess.CompletedProcess(argv, 0, "-A KUBE-X -j ACCEPT\n", ""))
    ops.iptables_restore("rgt-x", "*nat\nCOMMIT\n", 6)
    assert ops.list_chains("rgt-x", 4, "nat", ["KUBE-X"]) == {"KUBE-X": ["-j ACCEPT"]}
    assert asked == ["rgt-x", "rgt-x"]
    assert ran == [["ip6tables-legacy-restore", "--noflush"], ["iptables-legacy-restore", "--noflush", "--test"]]


class _AckSocket:
    """A netlink socket stand-in that answers every request with one ack carrying ERR."""

    def __init__(self, err: int = 0, fail: OSError | None = None):
        self.err, self.fail, self.sent = err, fail, []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        if self.fail:
            raise self.fail
        req = self.sent[-1]
        seq = struct.unpack_from("IHHII", req)[3]
        return struct.pack("IHHII", 36, 2, 0, seq, 0) + struct.pack("i", -self.err) + req[:16]


def test_nfacct_new_message_and_ack():
    name = b"rgt_ctr\0"
    attr = struct.pack("HH", 4 + len(name), 1) + name
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("BBH", socket.AF_UNSPEC, 0, 0) + attr
    want = struct.pack("IHHII", 16 + len(body), 7 << 8, 0x1 | 0x4 | 0x400, 3, 0) + body
    for err in (0, errno.EBUSY, errno.EEXIST, errno.ENOENT):
        sock = _AckSocket(err)
        assert netnsmod._nfacct_new(sock, "rgt_ctr", 3) == err
        assert sock.sent == [want]
    with pytest.raises(OSError) as e:  # the socket's own failure is not an ack's errno
        netnsmod._nfacct_new(_AckSocket(fail=OSError(errno.ENOBUFS, "No buffer space available")), "rgt_ctr", 1)
    assert e.value.errno == errno.ENOBUFS


def test_check_backend():
    assert [netnsmod.check_backend(b) for b in ("auto", "nft", "legacy")] == ["auto", "nft", "legacy"]
    with pytest.raises(NetnsError, match=r"^--iptables-backend 'x': choose one of auto, nft, legacy$"):
        netnsmod.check_backend("x")


def test_restore_reason_drops_nft_warnings():
    err = ("# Warning: iptables-legacy tables present, use iptables-legacy to see them\n"
           "iptables-restore v1.8.9 (nf_tables): line 3: RULE_APPEND failed (No such file or directory)\n")
    assert restore_reason(err) == "RULE_APPEND failed (No such file or directory)"


def test_fake_backends_are_separate_and_auto_follows_the_tables():
    ops = FakeNetns(system="nft")
    ops.create("rgt-inc-f")
    assert ops.backend_for("rgt-inc-f") == "nft"  # fresh: the system's
    legacy = ops.view("legacy")
    legacy.iptables_restore("rgt-inc-f", BASE)
    assert ops.backend_for("rgt-inc-f") == "legacy"  # now in use
    assert "KUBE-A" in ops.iptables_save("rgt-inc-f")
    assert "KUBE-A" not in ops.view("nft").iptables_save("rgt-inc-f")
    ops.view("nft").iptables_restore("rgt-inc-f", "*filter\n:KUBE-F - [0:0]\nCOMMIT\n")
    assert ops.backend_for("rgt-inc-f") == "nft"  # both in use, neither has KUBE-SERVICES: the system's
    legacy.iptables_restore("rgt-inc-f", "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n")
    assert ops.backend_for("rgt-inc-f") == "legacy"  # only legacy has kube-proxy's rules
    assert FakeNetns(system="legacy").backend_for("rgt-inc-gone") == "legacy"


def test_fake_generation_counts_committed_tables_on_nft_only():
    ops = FakeNetns()
    ops.create("rgt-inc-f")
    g0 = ops.generation("rgt-inc-f")
    ops.iptables_restore("rgt-inc-f", "*filter\n:KUBE-F - [0:0]\nCOMMIT\n*nat\n:KUBE-A - [0:0]\nCOMMIT\n")
    assert ops.generation("rgt-inc-f") == g0 + 2
    ops.iptables_restore("rgt-inc-f", "*nat\n:KUBE-B - [0:0]\nCOMMIT\n", test=True)
    ops.check_rule("rgt-inc-f", "nat", "PREROUTING", "-j KUBE-A")
    assert ops.list_chains("rgt-inc-f", 4, "nat", ["KUBE-A"]) == {"KUBE-A": []}
    assert ops.generation("rgt-inc-f") == g0 + 2  # tests, checks and listings change nothing
    with pytest.raises(ApplyError):
        ops.iptables_restore("rgt-inc-f", "*nat\n-A KUBE-A -j KUBE-NOPE\nCOMMIT\n")
    assert ops.generation("rgt-inc-f") == g0 + 2  # a refused table commits nothing
    assert ops.view("legacy").generation("rgt-inc-f") is None


def test_fake_list_chains(fake):
    assert fake.list_chains("rgt-apply-f", 4, "nat", ["KUBE-A", "PREROUTING"]) == {
        "KUBE-A": ['-m comment --comment "to b" -j KUBE-B'], "PREROUTING": ["-j KUBE-A"]}
    assert fake.list_chains("rgt-apply-f", 4, "nat", ["KUBE-A", "KUBE-GONE"]) is None
    assert fake.list_chains("rgt-apply-f", 4, "nat", []) == {}


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
    monkeypatch.setattr(netnsmod, "NFT_CHAIN_LIST_MAX", 5)  # nat: 7 commands x 3 chains; filter: 2 x 1
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
    assert _renumber(f"line {n}: CHAIN_DEL failed", where) == f"line {want}: CHAIN_DEL failed"


def test_nft_payload_leaves_unusual_shapes_alone(monkeypatch):
    monkeypatch.setattr(netnsmod, "NFT_CHAIN_LIST_MAX", 0)
    mixed = "*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j ACCEPT\n:KUBE-B - [0:0]\n-A KUBE-B -j ACCEPT\nCOMMIT\n"
    assert nft_payload(mixed) == (mixed, None)  # a declaration after a rule: no reasoning covers a move


# ---------------------------------------------------------------------- real backends (rgt-inc-)

has_legacy = pytest.mark.skipif(not shutil.which("iptables-legacy-restore"), reason="needs iptables-legacy-restore")
has_nft = pytest.mark.skipif(not shutil.which("iptables-nft-restore"), reason="needs iptables-nft-restore")


@pytest.fixture
def inc():
    """Namespaces named rgt-inc-*, deleted afterwards whatever happens."""
    with namespace_names("rgt-inc") as name:

        def make(ops) -> str:
            n = name()
            ops.create(n)
            return n

        yield make


@root
@needs_root
@has_nft
def test_real_generation_and_identity(inc):
    ops = RealNetns("nft")
    ns = inc(ops)
    g0 = ops.generation(ns)
    assert isinstance(g0, int)
    ops.iptables_restore(ns, "*filter\n:KUBE-F - [0:0]\nCOMMIT\n*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j RETURN\nCOMMIT\n")
    assert ops.generation(ns) == g0 + 2  # one step per committed table
    ops.iptables_restore(ns, "*nat\n:KUBE-B - [0:0]\nCOMMIT\n", test=True)
    assert ops.check_rule(ns, "nat", "KUBE-A", "-j RETURN")
    assert ops.list_chains(ns, 4, "nat", ["KUBE-A"]) == {"KUBE-A": ["-j RETURN"]}
    assert ops.list_chains(ns, 4, "nat", ["KUBE-A", "KUBE-GONE"]) is None
    assert ops.generation(ns) == g0 + 2
    with pytest.raises(ApplyError):
        ops.iptables_restore(ns, "*nat\n-A KUBE-A -j KUBE-NOPE\nCOMMIT\n")
    assert ops.generation(ns) == g0 + 2
    subprocess.run(["ip", "netns", "exec", ns, "iptables-nft", "-t", "nat", "-A", "KUBE-A", "-j", "ACCEPT"], check=True)
    assert ops.generation(ns) == g0 + 3  # anybody's change counts
    # identity: the namespace cookie tells a namespace made again apart even on the same inode
    first = ops.identity(ns)
    assert first.count(":") >= 3
    ops.delete(ns)
    ops.create(ns)
    assert ops.identity(ns) != first
    assert RealNetns("legacy").generation(ns) is None


@root
@needs_root
@has_nft
@has_legacy
def test_real_auto_follows_the_backend_in_use(inc):
    auto = RealNetns()
    ns = inc(auto)
    assert auto.backend_for(ns) == netnsmod.system_backend()  # fresh
    RealNetns("legacy").iptables_restore(ns, BASE)
    auto2 = RealNetns()
    assert auto2.backend_for(ns) == "legacy"
    assert "KUBE-A" in auto2.iptables_save(ns) and "KUBE-A" not in RealNetns("nft").iptables_save(ns)
    assert auto2.list_chains(ns, 4, "nat", ["KUBE-B"]) == {"KUBE-B": ["-j ACCEPT"]}  # legacy lists in --test
    assert "KUBE-A" in RealNetns("legacy").iptables_save(ns)  # and --test changed nothing
    RealNetns("nft").iptables_restore(ns, "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n")
    assert RealNetns().backend_for(ns) == "nft"  # both in use: the one with kube-proxy's KUBE-SERVICES


@root
@needs_root
@has_nft
def test_real_nft_payload_with_S_loads_the_same_rules(inc, monkeypatch):
    ops = RealNetns("nft")
    plain, tricked = inc(ops), inc(ops)
    payload = BIG.replace("-X KUBE-SEP-OLD\n", "")
    ops.iptables_restore(plain, payload)
    monkeypatch.setattr(netnsmod, "NFT_CHAIN_LIST_MAX", 0)
    assert nft_payload(payload)[1] is not None
    ops.iptables_restore(tricked, payload)  # a fresh table: built-in chains made before -S
    assert chains(ops, plain) == chains(ops, tricked) and chains(ops, plain)["OUTPUT"]
    assert chains(ops, plain, "filter") == chains(ops, tricked, "filter")
    with pytest.raises(ApplyError) as ei:  # errors still name the caller's line
        ops.iptables_restore(tricked, payload.replace("-A KUBE-FIREWALL -j DROP", "-A KUBE-FIREWALL -j KUBE-NOPE"))
    assert ei.value.line == "-A KUBE-FIREWALL -j KUBE-NOPE"
