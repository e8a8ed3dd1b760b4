"""The fake nft client (`dataplane/nft/fake.py`): scripts run as one transaction, listings read back.

No root: what the fake leaves is compared with what the script itself
describes (`state.replay`), its refusals are pinned, and the same scripts run
against the kernel in tests/dataplane/test_parity.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rulegen.dataplane.nft import parse, state
from rulegen.dataplane.nft.client import NftRunError
from rulegen.dataplane.nft.fake import FakeNft
from rulegen.kernel.fake import FakeNamespaces

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(ROOT.glob("fixtures/*/expected.nftables"))
NS = "rgt-nft-f"

BASE = ("add table ip rgt\nadd chain ip rgt c\nadd chain ip rgt d\nadd rule ip rgt c jump d\n"
        "add set ip rgt s { type ipv4_addr ; }\nadd element ip rgt s { 10.0.0.1 }\n"
        "add rule ip rgt d ip daddr @s drop\n"
        "add map ip rgt m { type ipv4_addr : verdict ; }\nadd element ip rgt m { 10.0.0.2 : goto d }\n")


@pytest.fixture
def nft() -> FakeNft:
    f = FakeNft(FakeNamespaces())
    f.netns.create(NS)
    return f


def listed(f: FakeNft, family: str = "ip", table: str = "rgt") -> state.NormTable:
    text = f.list_table(NS, family, table)
    assert text is not None
    return state.normalise(parse.read_state(text, family, table))


def test_some_golden_scripts_exist():
    assert len(SCRIPTS) >= 40


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.parent.name)
def test_a_golden_script_leaves_what_it_describes_and_runs_again(nft, path):
    text = path.read_text()
    tx = parse.parse_script(text)
    nft.run(NS, text)
    want = state.normalise(state.replay(tx))
    assert listed(nft, tx.family, tx.table) == want
    nft.run(NS, text)  # kube-proxy's full sync, again: base chains deleted and made, sets flushed and refilled
    assert listed(nft, tx.family, tx.table) == want


def test_the_dump_is_deterministic_and_lists_sets_before_chains(nft):
    nft.run(NS, BASE)
    text = nft.list_table(NS, "ip", "rgt")
    assert text == nft.list_table(NS, "ip", "rgt")
    assert text.index("set s {") < text.index("map m {") < text.index("chain c {") < text.index("chain d {")
    assert nft.list_ruleset(NS) == text
    assert nft.list_table(NS, "ip", "nope") is None


def test_a_refusal_changes_nothing_and_names_its_line(nft):
    nft.run(NS, BASE)
    before, gen = nft.list_table(NS, "ip", "rgt"), nft.generation(NS)
    with pytest.raises(NftRunError) as ei:
        nft.run(NS, "add chain ip rgt e\nadd rule ip rgt e jump nope\n")
    assert (ei.value.line_no, ei.value.line) == (2, "add rule ip rgt e jump nope")
    assert "No such file or directory" in str(ei.value)
    assert nft.list_table(NS, "ip", "rgt") == before and nft.generation(NS) == gen


@pytest.mark.parametrize("script, line, reason", [
    ("delete chain ip rgt nope\n", 1, "No such file or directory"),
    ("flush chain ip rgt nope\n", 1, "No such file or directory"),
    ("add rule ip rgt nope accept\n", 1, "No such file or directory"),
    ("add rule ip rgt c ip daddr @nope drop\n", 1, "No such file or directory"),
    ("add element ip rgt s { 10.0.0.1 . 80 }\n", 1, "No such file or directory"),  # wrong arity
    ("delete element ip rgt s { 10.9.9.9 }\n", 1, "No such file or directory"),
    ("add element ip rgt m { 10.0.0.2 : goto c }\n", 1, "File exists"),  # another value for a key
    ("add element ip rgt m { 10.0.0.3 : goto nope }\n", 1, "No such file or directory"),
    ("delete chain ip rgt d\n", 1, "Device or resource busy"),  # jumped to from c and from m
    ("delete set ip rgt s\n", 1, "Device or resource busy"),  # d's rule uses it
    ("add set ip rgt s { type ipv6_addr ; }\n", 1, "File exists"),
    ("add map ip rgt s { type ipv4_addr : verdict ; }\n", 1, "File exists"),
    ("add chain ip rgt c { type filter hook input priority 0 ; }\n", 1, "File exists"),
    ("flush map ip rgt s\n", 1, "No such file or directory"),
    ("delete table ip nope\n", 1, "No such file or directory"),
    ("add chain ip nope c\n", 1, "No such file or directory"),
    ("flush table ip rgt\n", 1, "not modelled"),
    ("insert rule ip rgt c accept\n", 1, "not modelled"),
])
def test_refusals(nft, script, line, reason):
    nft.run(NS, BASE)
    before = nft.list_table(NS, "ip", "rgt")
    with pytest.raises(NftRunError, match=reason) as ei:
        nft.run(NS, script)
    assert ei.value.line_no == line
    assert nft.list_table(NS, "ip", "rgt") == before


def test_what_nft_allows(nft):
    nft.run(NS, BASE)
    nft.run(NS, "add element ip rgt m { 10.0.0.2 : goto d }\nadd set ip rgt s { type ipv4_addr ; }\n")  # as they are
    # a chain's own rules go with it; once nothing jumps to d, it can go
    nft.run(NS, "flush chain ip rgt c\ndelete element ip rgt m { 10.0.0.2 }\ndelete chain ip rgt d\n")
    got = listed(nft)
    assert [c.name for c in got.chains] == ["c"] and got.set("m").elements == frozenset()
    nft.run(NS, "delete set ip rgt s\ndelete table ip rgt\n")
    assert nft.list_table(NS, "ip", "rgt") is None


def test_check_commits_nothing_and_the_generation_counts_changes(nft):
    g0 = nft.generation(NS)
    nft.run(NS, BASE, check=True)
    assert nft.list_table(NS, "ip", "rgt") is None and nft.generation(NS) == g0
    with pytest.raises(NftRunError) as ei:
        nft.run(NS, "add chain ip rgt c\n", check=True)  # no table yet
    assert str(ei.value).startswith("nft -c refused line 1 of the script")
    nft.run(NS, BASE)
    assert nft.generation(NS) == g0 + 1  # one transaction
    nft.run(NS, "add chain ip rgt c\nadd element ip rgt s { 10.0.0.1 }\n")
    assert nft.generation(NS) == g0 + 1  # nothing changed, nothing committed
    nft.run(NS, "add element ip rgt s { 10.0.0.9 }\n")
    assert nft.generation(NS) == g0 + 2


def test_namespaces_are_separate_and_deleting_one_drops_its_tables():
    ns = FakeNamespaces()
    nft = FakeNft(ns)
    ns.create("rgt-nft-a")
    ns.create("rgt-nft-b")
    nft.run("rgt-nft-a", "add table ip rgt\n")
    assert nft.list_table("rgt-nft-b", "ip", "rgt") is None
    ns.delete("rgt-nft-a")
    ns.create("rgt-nft-a")
    assert nft.list_table("rgt-nft-a", "ip", "rgt") is None
