"""Fake and kernel agree: one script of operations, run against each client's fake and its real one (root).

Each data-plane client ships a fake that the appliers' tests stand on; these
tests keep the fakes honest. xtables: the same iptables-restore payloads
against FakeXtables and the real iptables-restore, compared chain by chain,
refusals included. nft: hand-written scripts (every kind of refusal the
fake models) and the golden nftables scripts, twice and then one over
another, against FakeNft and the real nft, compared in the normal form
(`state.normalise`), refusals by the line nft names, the nf_tables
generation by whether it moved. Namespaces are named `rgt-apply-*` /
`rgt-nft-*` (tests/nshelp.py) and deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from nshelp import namespace_names

from rulegen.apply.kernel import Kernel
from rulegen.dataplane.nft import parse, state
from rulegen.dataplane.nft.client import NftRunError
from rulegen.dataplane.xtables.parse import parse as parse_xtables
from rulegen.dataplane.xtables.restore import ApplyError

ROOT = Path(__file__).resolve().parents[2]
root = pytest.mark.root
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("iptables-restore"),
                                reason="needs root and iptables-restore")
needs_nft = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")

BASE = """*nat
:KUBE-A - [0:0]
:KUBE-B - [0:0]
-A KUBE-A -m comment --comment "to b" -j KUBE-B
-A KUBE-B -j ACCEPT
-A PREROUTING -j KUBE-A
COMMIT
"""


def chains(k: Kernel, ns: str, table: str = "nat", family: int = 4) -> dict[str, list[str]]:
    rs = parse_xtables(k.xtables.save(ns, family), family=family)
    t = rs.table(table)
    return {c: s for c, s in t.by_chain().items() if s or c in t.chains} if t else {}


@pytest.fixture
def real():
    """A real kernel bundle and a maker of namespaces that are deleted afterwards."""
    k = Kernel.real()
    with namespace_names("rgt-apply") as name:

        def make() -> str:
            n = name()
            k.netns.create(n)
            return n

        yield k, make


# ---------------------------------------------------------------------- xtables


@root
@needs_root
def test_real_matches_fake_semantics(real):
    ops, make = real
    ns = make()
    fake = Kernel.fake()
    fake.netns.create("rgt-apply-f")
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
        ops.xtables.restore(ns, p)
        fake.xtables.restore("rgt-apply-f", p)
        assert chains(ops, ns) == chains(fake, "rgt-apply-f"), p
    refused = "*filter\n:KUBE-F - [0:0]\nCOMMIT\n*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j KUBE-NOPE\nCOMMIT\n"
    for o, n in ((ops, ns), (fake, "rgt-apply-f")):
        with pytest.raises(ApplyError) as ei:
            o.xtables.restore(n, refused)
        assert ei.value.line == "-A KUBE-A -j KUBE-NOPE" and ei.value.line_no == 6
    assert chains(ops, ns) == chains(fake, "rgt-apply-f")
    assert chains(ops, ns, "filter") == chains(fake, "rgt-apply-f", "filter")
    too_far = "*nat\n-D PREROUTING 1\n-D PREROUTING 9\nCOMMIT\n"
    for o, n in ((ops, ns), (fake, "rgt-apply-f")):
        with pytest.raises(ApplyError) as ei:
            o.xtables.restore(n, too_far)
        assert ei.value.line == "-D PREROUTING 9" and ei.value.line_no == 3
    assert chains(ops, ns) == chains(fake, "rgt-apply-f")
    assert chains(ops, ns)["PREROUTING"] == ["-j KUBE-C", "-j KUBE-A", "-j KUBE-C"]


# ---------------------------------------------------------------------- nft

NFT_STEPS: list[tuple[str, int | None]] = [  # (script, the line nft refuses or None)
    ("add table ip rgt\nadd chain ip rgt c\nadd chain ip rgt d\nadd rule ip rgt c jump d\n", None),
    ("add set ip rgt s { type ipv4_addr ; }\nadd element ip rgt s { 10.0.0.1 }\n"
     "add rule ip rgt d ip daddr @s drop\n", None),
    ("add map ip rgt m { type ipv4_addr : verdict ; }\nadd element ip rgt m { 10.0.0.2 : goto d }\n", None),
    ("add chain ip rgt e\nadd rule ip rgt e jump nope\n", 2),
    ("delete chain ip rgt nope\n", 1),
    ("flush chain ip rgt nope\n", 1),
    ("add element ip rgt s { 10.0.0.1 . 80 }\n", 1),
    ("delete element ip rgt s { 10.9.9.9 }\n", 1),
    ("add element ip rgt m { 10.0.0.2 : goto c }\n", 1),
    ("add element ip rgt m { 10.0.0.3 : goto nope }\n", 1),
    ("flush chain ip rgt c\ndelete chain ip rgt d\n", 2),  # the map still jumps to d
    ("delete set ip rgt s\n", 1),
    ("add set ip rgt s { type ipv6_addr ; }\n", 1),
    ("add map ip rgt s { type ipv4_addr : verdict ; }\n", 1),
    ("add chain ip rgt c { type filter hook input priority 0 ; }\n", 1),
    ("flush map ip rgt s\n", 1),
    ("add chain ip nope c\n", 1),
    ("add chain ip rgt base { type filter hook input priority 0 ; }\nadd rule ip rgt base jump c\n", None),
    ("flush set ip rgt s\nadd element ip rgt s { 10.0.0.3 }\n", None),
    ("flush chain ip rgt c\ndelete element ip rgt m { 10.0.0.2 }\ndelete chain ip rgt d\n", None),
    ("delete set ip rgt s\n", None),
    ("delete table ip rgt\n", None),
    ("delete table ip rgt\n", 1),
]


def _listed(k: Kernel, ns: str, family: str, table: str) -> state.NormTable | None:
    text = k.nft.list_table(ns, family, table)
    return None if text is None else state.normalise(parse.read_state(text, family, table))


def _run_both(real: Kernel, rns: str, fake: Kernel, fns: str, script: str, refused_at: int | None,
              family: str = "ip", table: str = "rgt", check: bool = False) -> None:
    got = []
    for k, ns in ((real, rns), (fake, fns)):
        g0 = k.nft.generation(ns)
        try:
            k.nft.run(ns, script, check=check)
            line = None
        except NftRunError as e:
            line = e.line_no
        moved = k.nft.generation(ns) != g0
        got.append((line, moved))
    (rline, rmoved), (fline, fmoved) = got
    assert rline == fline == refused_at, script
    if refused_at is not None or check:
        assert not rmoved and not fmoved, script  # nothing committed
    elif fmoved:
        assert rmoved, script  # the fake moves it only for a change, which the kernel always counts
    assert _listed(real, rns, family, table) == _listed(fake, fns, family, table), script


@root
@needs_nft
def test_nft_real_matches_fake_semantics(real):
    k, make = real
    ns = make()
    fake = Kernel.fake()
    fake.netns.create("rgt-nft-f")
    for script, refused_at in NFT_STEPS:
        _run_both(k, ns, fake, "rgt-nft-f", script, refused_at)
    _run_both(k, ns, fake, "rgt-nft-f", NFT_STEPS[0][0], None, check=True)  # nft -c: nothing lands


CASES = ("clusterip-basic", "session-affinity", "loadbalancer-local-healthcheck", "nft-ipv6", "lb-source-ranges")


@root
@needs_nft
def test_nft_golden_scripts_land_the_same_in_the_kernel_and_the_fake(real):
    k, make = real
    fake = Kernel.fake()
    for i, case in enumerate(CASES):
        text = (ROOT / "fixtures" / case / "expected.nftables").read_text()
        tx = parse.parse_script(text)
        ns, fns = make(), f"rgt-nft-f{i}"
        fake.netns.create(fns)
        _run_both(k, ns, fake, fns, text, None, tx.family, tx.table)
        _run_both(k, ns, fake, fns, text, None, tx.family, tx.table)  # a full sync over itself
        nxt = (ROOT / "fixtures" / CASES[(i + 1) % len(CASES)] / "expected.nftables").read_text()
        if parse.parse_script(nxt).family == tx.family:
            try:
                k.nft.run(ns, nxt, check=True)
                refused_at = None
            except NftRunError as e:
                refused_at = e.line_no
            _run_both(k, ns, fake, fns, nxt, refused_at, tx.family, tx.table)  # another cluster's sync over it
