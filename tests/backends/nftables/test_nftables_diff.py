"""`rulegen diff` in nftables mode: kube-proxy's table as chains of ordered rules and sets and maps of
elements, compared by meaning (rulegen's script and nft's listing of it are equal), reported in nft's
nouns; OLD NEW told apart from iptables files by their text; --against a saved script, listing or
ruleset, --netns a live table (fake nft; as root, the real one)."""

from __future__ import annotations

import json
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
from nshelp import namespace_names
from rgtest import run_cli

from rulegen import golden
from rulegen.apply.kernel import Kernel
from rulegen.backends.nftables.dump import read_text
from rulegen.backends.nftables.views import VIEW, canon_element_item, canon_rule_item, side
from rulegen.diff import compare, render_text
from rulegen.pipeline import compile_files

ROOT = Path(__file__).resolve().parents[3]
LISTINGS = Path(__file__).resolve().parent / "listings"
NFT_CASES = [d for d in sorted((ROOT / "fixtures").iterdir()) if (d / "expected.nftables").is_file()]


@lru_cache(maxsize=None)
def compiled(case_dir: Path):
    case = golden.load_case(case_dir)
    flags, config = golden.case_flags(case)
    flags["mode"] = "nftables"
    return compile_files([str(p) for p in case.inputs], flags, None, config)


def diff_texts(a: str, b: str):
    return compare(side(read_text(a, "old"), "old"), side(read_text(b, "new"), "new"))


@pytest.mark.parametrize("case_dir", NFT_CASES, ids=[d.name for d in NFT_CASES])
def test_a_compile_equals_its_expected_script(case_dir):
    c = compiled(case_dir)
    res = compare(side(read_text((case_dir / "expected.nftables").read_text(), "expected"), "expected"),
                  side(c.ir, "compiled"))
    assert res.empty, render_text(res)
    groups, objects, entries = res.compared
    assert groups == 1 and objects >= 20


LISTED = sorted(LISTINGS.iterdir())


@pytest.mark.parametrize("listing", LISTED, ids=[p.name for p in LISTED])
def test_nfts_listing_equals_the_compile(listing):
    """nft respells rules, merges ranges, names priorities, writes 3h for 10800s: none of it is a difference."""
    c = compiled(ROOT / "fixtures" / listing.name.split(".")[0])
    res = compare(side(read_text(listing.read_text(), str(listing)), "listed", kube_only=True), side(c.ir, "compiled"))
    assert res.empty, render_text(res)


def test_the_spellings_meet():
    assert canon_rule_item("mark set mark or 0x00004000 comment \"x y\"") == \
        canon_rule_item("meta mark set meta mark | 0x00004000 comment \"x y\"")
    assert canon_rule_item("ip daddr { 10.112.0.0/16,10.113.0.0/20 } drop") == \
        canon_rule_item("ip daddr { 10.112.0.0-10.113.15.255 } drop")
    assert canon_element_item("fd00:0:0::1 . tcp . 80 : goto x") == canon_element_item("fd00::1 . tcp . 80 : goto x")
    assert canon_rule_item('ip daddr @x drop comment "a"') != canon_rule_item('ip daddr @x drop comment "b"')


BASE = (ROOT / "fixtures" / "nodeport-local" / "expected.nftables").read_text()
SVC_CHAIN = "service-M3BKPKJ2-media/uploads/tcp/https"


def test_an_element_added_to_a_map_is_named_so():
    new = BASE + "add element ip kube-proxy service-ips { 10.112.22.99 . tcp . 80 : goto " + SVC_CHAIN + " }\n"
    res = diff_texts(BASE, new)
    [c] = res.containers
    assert (c.kind, c.name, c.status) == ("map", "service-ips", "changed")
    assert [(ch.op, ch.rule, ch.old_pos, ch.new_pos) for ch in c.changes] == [
        ("added", f"10.112.22.99 . tcp . 80 : goto {SVC_CHAIN}", None, None)]
    text = render_text(res)
    assert "  map service-ips: 1 added\n" in text
    assert text.endswith("1 map differs: 1 element added\n")
    js = res.to_json()
    assert js["summary"]["elements_added"] == 1 and js["summary"]["maps_changed"] == 1
    assert js["objects"][0]["map"] == "service-ips"


def test_rules_moved_added_removed_in_a_chain():
    a = BASE + "add rule ip kube-proxy services ip daddr 10.9.9.9 drop\n"
    # the same rule first instead of last: a move; and one rule replaced
    b = BASE.replace("add rule ip kube-proxy services ip daddr @cluster-ips",
                     "add rule ip kube-proxy services ip daddr 10.9.9.9 drop\n"
                     "add rule ip kube-proxy services ip daddr @cluster-ips", 1)
    res = diff_texts(a, b)
    [c] = res.containers
    assert c.name == "services" and [ch.op for ch in c.changes] == ["moved"]
    assert "  chain services: 1 moved" in render_text(res)
    c2 = diff_texts(BASE, BASE.replace("ip saddr 10.60.0.0/16 goto", "ip saddr 10.61.0.0/16 goto")).containers
    assert [(x.name, [ch.op for ch in x.changes]) for x in c2] == [
        ("external-M3BKPKJ2-media/uploads/tcp/https", ["removed", "added"])]


def test_a_declaration_change_is_one_even_without_rules_or_elements():
    sa = (ROOT / "fixtures" / "session-affinity" / "expected.nftables").read_text()
    res = diff_texts(sa, sa.replace("timeout 600s", "timeout 900s"))
    assert {c.name for c in res.containers} == {"affinity-AHMELHKX-auth/sessions/tcp/http__10.60.2.10/8080",
                                                "affinity-UY4MQZFH-auth/sessions/tcp/http__10.60.1.10/8080"}
    assert all(c.kind == "set" and c.changes == () and "timeout 900s" in c.new_policy for c in res.containers)
    assert render_text(res).endswith("2 sets differ: 2 declarations changed\n")
    prio = diff_texts(BASE, BASE.replace("hook input priority 0 ;", "hook input priority 10 ;"))
    assert [c.name for c in prio.containers] == ["filter-input"]


def test_objects_added_and_removed():
    a = BASE
    b = BASE + "add chain ip kube-proxy extra\nadd rule ip kube-proxy extra drop\n" \
               "add set ip kube-proxy more { type ipv4_addr ; }\nadd element ip kube-proxy more { 10.0.0.1 }\n"
    res = diff_texts(a, b)
    assert [(c.kind, c.name, c.status) for c in res.containers] == [("chain", "extra", "added"), ("set", "more", "added")]
    assert render_text(res).endswith("1 chain, 1 set differ: 1 rule added, 1 chain added; 1 element added, 1 set added\n")
    assert diff_texts(b, a).summary()["sets_removed"] == 1


def _swap_lines(text: str, a: str, b: str) -> str:
    """TEXT with the lines A and B (each present once) trading places."""
    lines = text.split("\n")
    i, j = lines.index(a), lines.index(b)
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


LB = (ROOT / "fixtures" / "lb-source-ranges" / "expected.nftables").read_text()
LB_LISTING = (LISTINGS / "lb-source-ranges.list").read_text()


def test_compiled_scripts_compare_elements_as_a_set_and_rules_in_order():
    """Two scripts that add a map's elements in another order are equal; two that add a chain's
    rules in another order differ by exactly that move."""
    els = [ln for ln in LB.splitlines() if ln.startswith("add element ip kube-proxy service-ips ")]
    assert len(els) >= 3
    assert diff_texts(LB, _swap_lines(LB, els[0], els[-1])).empty
    rules = [ln for ln in LB.splitlines() if ln.startswith("add rule ip kube-proxy services ")]
    assert len(rules) >= 2
    res = diff_texts(LB, _swap_lines(LB, rules[0], rules[1]))
    [c] = res.containers
    assert (c.kind, c.name) == ("chain", "services") and [ch.op for ch in c.changes] == ["moved"]
    # one element fewer in a map is one element removed, nothing else
    res = diff_texts(LB, LB.replace(els[1] + "\n", ""))
    [c] = res.containers
    assert (c.kind, c.status, [ch.op for ch in c.changes]) == ("map", "changed", ["removed"])
    assert c.changes[0].old_pos is None  # an element has no position


def test_nft_listings_compare_elements_as_a_set_and_rules_in_order():
    """The same on what `nft list table` prints: elements inside `elements = { ... }` in another
    order are no difference, a chain's lines in another order are a move."""
    a = "192.0.2.80 . tcp . 443 : goto external-TGL3QN4K-ops/admin-api/tcp/https"
    b = "10.112.50.9 . tcp . 443 : goto service-TGL3QN4K-ops/admin-api/tcp/https"
    assert LB_LISTING.count(a) == 1 and LB_LISTING.count(b) == 1
    swapped = LB_LISTING.replace(a, "@A@").replace(b, a).replace("@A@", b)
    assert swapped != LB_LISTING and diff_texts(LB_LISTING, swapped).empty
    r1 = "\t\tip daddr . meta l4proto . th dport vmap @service-ips"
    r2 = "\t\tip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
    res = diff_texts(LB_LISTING, _swap_lines(LB_LISTING, r1, r2))
    [c] = res.containers
    assert (c.kind, c.name) == ("chain", "services") and [ch.op for ch in c.changes] == ["moved"]
    # and the listing against the compiled script it came from: equal, then the same change shows
    assert diff_texts(LB, LB_LISTING).empty
    res = diff_texts(LB, LB_LISTING.replace(",\n\t\t\t     " + a, ""))
    assert [(c.name, [ch.op for ch in c.changes]) for c in res.containers] == [("service-ips", ["removed"])]


def test_live_affinity_entries_are_no_difference():
    text = (LISTINGS / "session-affinity.ruleset").read_text()
    name = "affinity-AHMELHKX-auth/sessions/tcp/http__10.60.2.10/8080"
    live = text.replace(f"set {name} {{\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 10m\n",
                        f"set {name} {{\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 10m\n"
                        "\t\telements = { 10.60.3.8 timeout 10m expires 9m12s }\n")
    assert live != text
    assert diff_texts(text, live).empty


# ------------------------------------------------------------------ the command

def cli(*args: str):
    return run_cli("diff", *args)


@pytest.fixture
def files(tmp_path):
    a = tmp_path / "a.nft"
    a.write_text(BASE)
    b = tmp_path / "b.nft"
    b.write_text(BASE + "add element ip kube-proxy cluster-ips { 10.112.22.99 }\n")
    return str(a), str(b)


def test_cli_old_new_recognises_nft_files(files):
    a, b = files
    r = cli(a, b)
    assert r.exit_code == 1, r.output
    assert "table ip kube-proxy\n  set cluster-ips: 1 added\n    +         10.112.22.99\n" in r.stdout
    assert cli(a, a).exit_code == 0
    r = cli(a, b, "--json")
    assert json.loads(r.stdout)["summary"]["elements_added"] == 1
    # the listing of the same table is the same
    listing = str(LISTINGS / "nft-nodeport-all.list")
    script = str(ROOT / "fixtures" / "nft-nodeport-all" / "expected.nftables")
    r = cli(listing, script)
    assert r.exit_code == 0 and "no differences (1 table," in r.stdout, r.output


def test_cli_old_new_with_mode_and_stdin(files):
    a, b = files
    r = run_cli("diff", "-", b, "--mode", "nftables", input=open(a).read())
    assert r.exit_code == 1 and "1 element added" in r.stdout
    r = cli(a, b, "--hostname", "x")
    assert r.exit_code == 2 and "--hostname applies only when compiling" in r.stderr


def test_cli_against_a_ruleset_of_both_families_compares_the_compiles_family(tmp_path):
    both = tmp_path / "ruleset"
    both.write_text((LISTINGS / "session-affinity.ruleset").read_text() + (LISTINGS / "nft-ipv6.list").read_text())
    r = cli(str(ROOT / "fixtures" / "session-affinity"), "--mode", "nftables", "--against", str(both))
    assert r.exit_code == 0, r.output
    assert "no differences (1 table," in r.stdout and "table kube-proxy only" in r.stdout
    r = cli(str(ROOT / "fixtures" / "nodeport-local"), "--mode", "nftables", "--against", str(both))
    assert r.exit_code == 1 and " differ: " in r.stdout


def test_cli_against_a_bad_file_is_one_line(tmp_path):
    f = tmp_path / "bad"
    f.write_text("table ip kube-proxy {\n\tchain x {\n\t\ttype filter hook input priority 0; policy drop;\n\t}\n}\n")
    r = cli(str(ROOT / "fixtures" / "nodeport-local"), "--mode", "nftables", "--against", str(f))
    assert r.exit_code == 2 and "policy drop is not kube-proxy's" in r.stderr and r.stderr.count("\n") == 1


def test_live_reads_the_namespaces_table_through_the_nft_client():
    k = Kernel.fake()
    k.netns.create("n1")
    dump, name = VIEW.live(k, "n1", 4)
    assert name == "netns n1 (nft list table ip kube-proxy): no such table" and not dump.tables[4].chains
    c = compiled(ROOT / "fixtures" / "nodeport-local")
    k.nft.run("n1", c.text)
    dump, name = VIEW.live(k, "n1", 4)
    assert compare(side(dump, name), side(c.ir, "compiled")).empty
    k.nft.run("n1", "add element ip kube-proxy cluster-ips { 10.112.22.99 }\n")
    res = compare(side(VIEW.live(k, "n1", 4)[0], name), side(c.ir, "compiled"))
    assert [(c_.name, [ch.op for ch in c_.changes]) for c_ in res.containers] == [("cluster-ips", ["removed"])]


@pytest.mark.root
def test_cli_netns_against_the_real_table():
    c_dir = ROOT / "fixtures" / "session-affinity"
    with namespace_names("rgnd") as name:
        ns = name()
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
        r = cli(str(c_dir), "--mode", "nftables", "--netns", ns)
        assert r.exit_code == 1 and ": no such table" in r.stdout and " differ: " in r.stdout
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(c_dir / "expected.nftables")], check=True,
                       capture_output=True, timeout=60)
        r = cli(str(c_dir), "--mode", "nftables", "--netns", ns)
        assert r.exit_code == 0, r.output
        # a client's affinity entry is run-time state; a missing map element is a difference
        name_ = "affinity-AHMELHKX-auth/sessions/tcp/http__10.60.2.10/8080"
        for cmd in (f"add element ip kube-proxy {name_} {{ 10.60.3.8 }}",
                    "delete element ip kube-proxy service-ips { 10.112.90.11 . tcp . 9000 }"):
            subprocess.run(["ip", "netns", "exec", ns, "nft", cmd], check=True, capture_output=True, timeout=30)
        r = cli(str(c_dir), "--mode", "nftables", "--netns", ns, "--json")
        assert r.exit_code == 1
        doc = json.loads(r.stdout)
        assert [(o.get("map"), [ch["op"] for ch in o["changes"]]) for o in doc["objects"]] == [("service-ips", ["added"])]


@pytest.mark.root
def test_cli_netns_live_rule_order_matters_element_order_does_not(tmp_path):
    """A live table: the kernel lists a set's elements in its own order (no difference), and a chain
    whose rules were re-added in another order is reported as that move."""
    c_dir = ROOT / "fixtures" / "lb-source-ranges"
    with namespace_names("rgnd") as name:
        ns = name()
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
        # the elements of service-ips added in reverse order: the kernel keeps its own order either way
        els = [ln for ln in LB.splitlines() if ln.startswith("add element ip kube-proxy service-ips ")]
        script = tmp_path / "reordered.nft"
        script.write_text(_swap_lines(LB, els[0], els[-1]))
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(script)], check=True,
                       capture_output=True, timeout=60)
        r = cli(str(c_dir), "--mode", "nftables", "--netns", ns)
        assert r.exit_code == 0, r.output
        rules = [ln for ln in LB.splitlines() if ln.startswith("add rule ip kube-proxy services ")]
        swap = tmp_path / "swap.nft"
        swap.write_text("flush chain ip kube-proxy services\n" + "\n".join([rules[1], rules[0], *rules[2:]]) + "\n")
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(swap)], check=True,
                       capture_output=True, timeout=60)
        r = cli(str(c_dir), "--mode", "nftables", "--netns", ns, "--json")
        assert r.exit_code == 1, r.output
        doc = json.loads(r.stdout)
        assert [(o.get("chain"), [ch["op"] for ch in o["changes"]]) for o in doc["objects"]] == [("services", ["moved"])]
        assert doc["summary"]["rules_moved"] == 1 and doc["summary"]["chains_changed"] == 1


def test_golden_checks_and_rewrites_an_expected_nftables(tmp_path):
    """`rulegen golden` compares a case's expected.nftables with the compile, names the line that
    differs, and `--update` rewrites it; the rewritten file diffs empty against the compile."""
    import shutil

    case = tmp_path / "cases" / "nft-nodeport-all"
    shutil.copytree(ROOT / "fixtures" / "nft-nodeport-all", case)
    (case / "trace.yaml").unlink()
    r = run_cli("golden", str(tmp_path / "cases"))
    assert r.exit_code == 0 and "ok       nft-nodeport-all [nftables]" in r.stdout, r.output
    exp = case / "expected.nftables"
    line = next(ln for ln in exp.read_text().splitlines() if ln.startswith("add element ip kube-proxy service-ips "))
    exp.write_text(exp.read_text().replace(line + "\n", ""))
    r = run_cli("golden", str(tmp_path / "cases"))
    assert r.exit_code == 1 and "DIFFERS  nft-nodeport-all [nftables]" in r.stdout
    assert f"\n+{line}\n" in r.stdout
    r = run_cli("golden", str(tmp_path / "cases"), "--update")
    assert r.exit_code == 0 and "rewrote expected.nftables" in r.stdout
    r = cli(str(case), "--mode", "nftables", "--against", str(exp))
    assert r.exit_code == 0 and "no differences" in r.stdout, r.output
