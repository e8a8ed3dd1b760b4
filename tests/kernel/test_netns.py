"""Real network namespaces and the real xtables client: lifecycle, identity, generation, tools (root).

Every namespace here is named `rgt-apply-*` or `rgt-inc-*` (tests/nshelp.py)
and deleted afterwards. The netlink framing of nfacct requests is checked
without root.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import struct
import subprocess

import pytest
from nshelp import namespace_names

import rulegen.dataplane.xtables.restore as restoremod
from rulegen.apply.kernel import Kernel
from rulegen.dataplane.xtables.parse import parse
from rulegen.dataplane.xtables.restore import ApplyError, nft_payload
from rulegen.kernel import netlink
from rulegen.kernel.netns import NetnsError, check_name

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


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden", "x" * 65, "sp ace"])
def test_check_name_rejects_unsafe_names(bad):
    with pytest.raises(NetnsError):
        check_name(bad)


root = pytest.mark.root


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("iptables-restore"),
                                reason="needs root and iptables-restore")


@pytest.fixture
def real():
    ops = Kernel.real()
    with namespace_names("rgt-apply") as name:

        def make() -> str:
            n = name()
            ops.netns.create(n)
            return n

        yield ops, make


@root
@needs_root
def test_real_lifecycle(real):
    ops, make = real
    ns = make()
    assert ops.netns.exists(ns) and ns in ops.netns.list() and ops.netns.identity(ns)
    with pytest.raises(NetnsError, match="already exists"):
        ops.netns.create(ns)
    assert "state UNKNOWN" in ops.netns.run(ns, ["ip", "link", "show", "lo"]).stdout or \
        "UP" in ops.netns.run(ns, ["ip", "link", "show", "lo"]).stdout
    ops.netns.delete(ns)
    assert not ops.netns.exists(ns) and ns not in ops.netns.list()
    ops.netns.delete(ns)  # deleting twice is fine
    with pytest.raises(NetnsError, match="does not exist"):
        ops.xtables.save(ns)
    with pytest.raises(NetnsError, match="does not exist"):
        ops.netns.run(ns, ["true"])


@root
@needs_root
def test_real_check_and_insert_rule(real):
    ops, make = real
    ns = make()
    ops.xtables.restore(ns, BASE)
    args = '-m comment --comment "kubernetes service portals" -j KUBE-A'
    assert not ops.xtables.check_rule(ns, "nat", "OUTPUT", args)
    ops.xtables.insert_rule(ns, "nat", "OUTPUT", args)
    assert ops.xtables.check_rule(ns, "nat", "OUTPUT", args)
    assert not ops.xtables.check_rule(ns, "nat", "OUTPUT", "-j KUBE-NOT-THERE")
    with pytest.raises(ApplyError):
        ops.xtables.insert_rule(ns, "nat", "OUTPUT", "-j KUBE-NOT-THERE")


@root
@needs_root
def test_real_test_mode_changes_nothing_and_ipv6(real):
    ops, make = real
    ns = make()
    ops.xtables.restore(ns, BASE.replace("-A PREROUTING -j KUBE-A\n", ""), test=True)
    assert "KUBE-A" not in ops.xtables.save(ns)
    ops.xtables.restore(ns, "*filter\n:KUBE-V6 - [0:0]\n-A KUBE-V6 -d fd00::1/128 -j ACCEPT\nCOMMIT\n", family=6)
    assert "-A KUBE-V6 -d fd00::1/128 -j ACCEPT" in ops.xtables.save(ns, 6)
    assert "KUBE-V6" not in ops.xtables.save(ns, 4)


@root
@needs_root
def test_real_nfacct_counters(real):
    ops, make = real
    ns = make()
    rule = "*filter\n:KUBE-N - [0:0]\n-A KUBE-N -m nfacct --nfacct-name rgt_apply_ctr -j ACCEPT\nCOMMIT\n"
    with pytest.raises(ApplyError):
        ops.xtables.restore(ns, rule)
    ops.xtables.ensure_nfacct(ns, ["rgt_apply_ctr"])
    ops.xtables.ensure_nfacct(ns, ["rgt_apply_ctr"])  # exists already: fine
    ops.xtables.restore(ns, rule)
    assert "--nfacct-name" in ops.xtables.save(ns)
    other = make()  # counters are per namespace
    with pytest.raises(ApplyError):
        ops.xtables.restore(other, rule)


@root
@needs_root
def test_real_sysctl(real):
    ops, make = real
    ns = make()
    ops.netns.set_sysctl(ns, "net.ipv4.conf.all.route_localnet", "1")
    out = ops.netns.run(ns, ["sysctl", "-n", "net.ipv4.conf.all.route_localnet"]).stdout.strip()
    assert out == "1"


def test_real_without_root_is_clear(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsError, match="needs root"):
        Kernel.real().xtables.save("rgt-apply-x")
    with pytest.raises(NetnsError, match="needs root"):
        Kernel.real().netns.create("rgt-apply-x")


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
        assert netlink.nfacct_new(sock, "rgt_ctr", 3) == err
        assert sock.sent == [want]
    with pytest.raises(OSError) as e:  # the socket's own failure is not an ack's errno
        netlink.nfacct_new(_AckSocket(fail=OSError(errno.ENOBUFS, "No buffer space available")), "rgt_ctr", 1)
    assert e.value.errno == errno.ENOBUFS


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


has_legacy = pytest.mark.skipif(not shutil.which("iptables-legacy-restore"), reason="needs iptables-legacy-restore")


has_nft = pytest.mark.skipif(not shutil.which("iptables-nft-restore"), reason="needs iptables-nft-restore")


@pytest.fixture
def inc():
    """Namespaces named rgt-inc-*, deleted afterwards whatever happens."""
    with namespace_names("rgt-inc") as name:

        def make(ops) -> str:
            n = name()
            ops.netns.create(n)
            return n

        yield make


@root
@needs_root
@has_nft
def test_real_generation_and_identity(inc):
    ops = Kernel.real("nft")
    ns = inc(ops)
    g0 = ops.xtables.generation(ns)
    assert isinstance(g0, int)
    ops.xtables.restore(ns, "*filter\n:KUBE-F - [0:0]\nCOMMIT\n*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j RETURN\nCOMMIT\n")
    assert ops.xtables.generation(ns) == g0 + 2  # one step per committed table
    ops.xtables.restore(ns, "*nat\n:KUBE-B - [0:0]\nCOMMIT\n", test=True)
    assert ops.xtables.check_rule(ns, "nat", "KUBE-A", "-j RETURN")
    assert ops.xtables.list_chains(ns, 4, "nat", ["KUBE-A"]) == {"KUBE-A": ["-j RETURN"]}
    assert ops.xtables.list_chains(ns, 4, "nat", ["KUBE-A", "KUBE-GONE"]) is None
    assert ops.xtables.generation(ns) == g0 + 2
    with pytest.raises(ApplyError):
        ops.xtables.restore(ns, "*nat\n-A KUBE-A -j KUBE-NOPE\nCOMMIT\n")
    assert ops.xtables.generation(ns) == g0 + 2
    subprocess.run(["ip", "netns", "exec", ns, "iptables-nft", "-t", "nat", "-A", "KUBE-A", "-j", "ACCEPT"], check=True)
    assert ops.xtables.generation(ns) == g0 + 3  # anybody's change counts
    # identity: the namespace cookie tells a namespace made again apart even on the same inode
    first = ops.netns.identity(ns)
    assert first.count(":") >= 3
    ops.netns.delete(ns)
    ops.netns.create(ns)
    assert ops.netns.identity(ns) != first
    assert Kernel.real("legacy").xtables.generation(ns) is None


@root
@needs_root
@has_nft
@has_legacy
def test_real_auto_follows_the_backend_in_use(inc):
    auto = Kernel.real()
    ns = inc(auto)
    assert auto.xtables.backend_for(ns) == restoremod.system_backend()  # fresh
    Kernel.real("legacy").xtables.restore(ns, BASE)
    auto2 = Kernel.real()
    assert auto2.xtables.backend_for(ns) == "legacy"
    assert "KUBE-A" in auto2.xtables.save(ns) and "KUBE-A" not in Kernel.real("nft").xtables.save(ns)
    assert auto2.xtables.list_chains(ns, 4, "nat", ["KUBE-B"]) == {"KUBE-B": ["-j ACCEPT"]}  # legacy lists in --test
    assert "KUBE-A" in Kernel.real("legacy").xtables.save(ns)  # and --test changed nothing
    Kernel.real("nft").xtables.restore(ns, "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n")
    assert Kernel.real().xtables.backend_for(ns) == "nft"  # both in use: the one with kube-proxy's KUBE-SERVICES


@root
@needs_root
@has_nft
def test_real_nft_payload_with_S_loads_the_same_rules(inc, monkeypatch):
    ops = Kernel.real("nft")
    plain, tricked = inc(ops), inc(ops)
    payload = BIG.replace("-X KUBE-SEP-OLD\n", "")
    ops.xtables.restore(plain, payload)
    monkeypatch.setattr(restoremod, "NFT_CHAIN_LIST_MAX", 0)
    assert nft_payload(payload)[1] is not None
    ops.xtables.restore(tricked, payload)  # a fresh table: built-in chains made before -S
    assert chains(ops, plain) == chains(ops, tricked) and chains(ops, plain)["OUTPUT"]
    assert chains(ops, plain, "filter") == chains(ops, tricked, "filter")
    with pytest.raises(ApplyError) as ei:  # errors still name the caller's line
        ops.xtables.restore(tricked, payload.replace("-A KUBE-FIREWALL -j DROP", "-A KUBE-FIREWALL -j KUBE-NOPE"))
    assert ei.value.line == "-A KUBE-FIREWALL -j KUBE-NOPE"
