"""`rulegen diff` in IPVS mode: virtual servers, real servers and set entries compared as sets, the glue's
chains rule by rule, in IPVS's own words; the combined file, a folder of the three files, a node's dumps
(`ipvsadm -Sn`, `ipset save`, `iptables-save`) and a live namespace's clients as sides."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from rgtest import run_cli

from rulegen.backends.ipvs import render
from rulegen.backends.ipvs.compile import JUMP_RULES
from rulegen.backends.ipvs.views import VIEW, read_live, side
from rulegen.dataplane import ipvs as dipvs
from rulegen.dataplane.ipset.fake import FakeIPSets
from rulegen.dataplane.links.fake import FakeLinks
from rulegen.dataplane.xtables.render import render as render_xtables
from rulegen.dataplane.xtables.views import with_jumps
from rulegen.diff import compare, render_text
from rulegen.pipeline import compile_files

ROOT = Path(__file__).resolve().parents[3]
BEFORE = ROOT / "examples" / "web-frontend"
AFTER = ROOT / "examples" / "web-frontend-rescheduled"
FIX = ROOT / "fixtures"


def compile_to(tmp_path: Path, src: Path, name: str, *extra: str, folder: bool = False) -> Path:
    out = tmp_path / name
    args = ["compile", "--mode", "ipvs", str(src), *extra]
    r = run_cli(*args, "-o", str(out)) if folder else run_cli(*args)
    assert r.exit_code == 0, r.output
    if not folder:
        out.write_text(r.stdout)
    return out


def test_an_endpoint_move_in_ipvs_words(tmp_path):
    a = compile_to(tmp_path, BEFORE, "before.ipvs")
    b = compile_to(tmp_path, AFTER, "after.ipvs")
    r = run_cli("diff", str(a), str(b), "--mode", "ipvs", "--no-color")
    assert r.exit_code == 1, r.output
    assert r.stdout == f"""\
--- {a}
+++ {b}
IPVS
  virtual server TCP 10.96.120.15:80: 1 added, 1 removed
    - real server 10.244.2.21:3000 (weight 1) removed from TCP 10.96.120.15:80
    + real server 10.244.2.37:3000 (weight 1) added to TCP 10.96.120.15:80
  virtual server TCP 192.168.56.10:30080: 1 added, 1 removed
    - real server 10.244.2.21:3000 (weight 1) removed from TCP 192.168.56.10:30080
    + real server 10.244.2.37:3000 (weight 1) added to TCP 192.168.56.10:30080
2 virtual servers differ: 2 real servers added, 2 removed
"""
    doc = json.loads(run_cli("diff", str(a), str(b), "--mode", "ipvs", "--json").stdout)
    assert doc["summary"]["items_added"] == 2 and doc["summary"]["objects_changed"] == 2
    first = doc["objects"][0]
    assert (first["table"], first["virtual_server"], first["status"]) == ("ipvs", "TCP 10.96.120.15:80", "changed")
    assert [c["op"] for c in first["changes"]] == ["removed", "added"]


def test_without_mode_the_one_view_that_reads_both_is_used_and_a_folder_equals_its_combined_file(tmp_path):
    a = compile_to(tmp_path, BEFORE, "before.ipvs")
    d = compile_to(tmp_path, BEFORE, "before", folder=True)
    r = run_cli("diff", str(a), str(d))
    assert r.exit_code == 0, r.output
    assert "no differences (5 sections, " in r.stdout and " objects, " in r.stdout
    # A file no view reads is the default mode's error.
    junk = tmp_path / "junk.rules"
    junk.write_text("-A -t 10.0.0.1:80 -s rr\n")
    r = run_cli("diff", str(junk), str(a))
    assert r.exit_code == 2 and "junk.rules" in r.stderr and "Traceback" not in r.output


def test_settings_entries_chains_and_links_each_in_their_words(tmp_path):
    base = compile_to(tmp_path, FIX / "session-affinity", "a.ipvs")
    text = base.read_text()
    # the same node with the scheduler changed, one set entry gone, one glue rule gone
    changed = (text.replace(" -s rr", " -s wrr")
               .replace("add KUBE-IPVS-IPS ", "add KUBE-IPVS-IPS-GONE ", 1))
    lines = changed.splitlines(keepends=True)
    gone = next(ln for ln in lines if ln.startswith("add KUBE-IPVS-IPS-GONE "))
    lines.remove(gone)
    glue_rule = next(ln for ln in lines if ln.startswith("-A KUBE-FORWARD "))
    lines.remove(glue_rule)
    other = tmp_path / "b.ipvs"
    other.write_text("".join(lines))
    r = run_cli("diff", str(base), str(other), "--mode", "ipvs", "--no-color")
    assert r.exit_code == 1, r.output
    out = r.stdout
    assert "settings -s rr -p 10800 -> -s wrr -p 10800" in out
    address = gone.split()[-1]
    assert f"  set KUBE-IPVS-IPS: 1 removed\n    - entry {address} removed from KUBE-IPVS-IPS\n" in out
    assert f"links\n  interface kube-ipvs0: 1 removed\n    - address {address} removed from kube-ipvs0\n" in out
    assert "table filter\n  chain KUBE-FORWARD: 1 removed\n    - 1 " in out
    assert out.endswith("\n4 virtual servers, 1 set, 1 interface, 1 chain differ: 4 settings changed; "
                        "1 entry removed; 1 address removed; 1 rule removed\n")


NODE_IPSET_EXTRA = "create cali40all-hosts-net hash:net family inet hashsize 1024 maxelem 1048576 bucketsize 12 " \
                   "initval 0x11\nadd cali40all-hosts-net 172.19.8.0/24\n"


def node_dump(tmp_path: Path, c, name: str = "node") -> Path:
    """The compile as a node would dump it: ipvsadm -Sn order and spelling, ipset save words, iptables-save
    spelling with kube-proxy's jumps and a CNI's rules, both families' sets."""
    d = tmp_path / name
    d.mkdir()
    table = dipvs.sorted_services(c.ir.virtual_servers)  # ipvsadm -Sn's order, not the compile's
    (d / "ipvsadm.rules").write_text(dipvs.render(table) + "-A -t [fd00::10]:80 -s rr\n")
    sets = render.ipset(c.ir).replace("maxelem 65536\n", "maxelem 65536 bucketsize 12 initval 0x5eed\n")
    (d / "ipset.rules").write_text(sets + NODE_IPSET_EXTRA +
                                   "create KUBE-6-CLUSTER-IP hash:ip,port family inet6 hashsize 1024 maxelem 65536\n")
    glue = with_jumps(c.ir.iptables, JUMP_RULES)
    text = render_xtables(glue).replace("--or-mark 0x00004000", "--set-xmark 0x4000/0x4000")
    text = text.replace(":KUBE-FORWARD - [0:0]\n", ":KUBE-FORWARD - [0:0]\n:cali-INPUT - [0:0]\n"
                        "-A INPUT -j cali-INPUT\n-A cali-INPUT -m set --match-set cali40all-hosts-net src -j ACCEPT\n")
    (d / "iptables.rules").write_text("# Generated by iptables-save v1.8.9\n" + text)
    return d


def test_a_node_dump_folder_matches_the_compile_on_kube_proxys_part(tmp_path):
    c = compile_files([str(FIX / "ipvs-scheduler-mh")], {"mode": "ipvs"})
    d = node_dump(tmp_path, c)
    r = run_cli("diff", str(FIX / "ipvs-scheduler-mh"), "--mode", "ipvs", "--against", str(d), "--no-color")
    assert r.exit_code == 0, r.output
    assert "+ kube-proxy's jump rules" in r.stdout and "kube-proxy's objects only" in r.stdout
    # --all-chains: the CNI's set and chain show, as objects the compile does not have
    r = run_cli("diff", str(FIX / "ipvs-scheduler-mh"), "--mode", "ipvs", "--against", str(d), "--all-chains",
                "--no-color")
    assert r.exit_code == 1
    assert "set cali40all-hosts-net: removed (1 entry)" in r.stdout and "chain cali-INPUT: removed" in r.stdout
    assert "KUBE-6-" not in r.stdout and "fd00::10" not in r.stdout  # the other family stays out
    # The configuration among FILES names ipvs: no --mode needed, the folder is read by IPVS mode's view.
    r = run_cli("diff", str(FIX / "ipvs-scheduler-mh"), "--against", str(d))
    assert r.exit_code == 0, r.output


def test_a_weight_the_node_changed_shows(tmp_path):
    c = compile_files([str(FIX / "ipvs-scheduler-mh")], {"mode": "ipvs"})
    d = node_dump(tmp_path, c)
    p = d / "ipvsadm.rules"
    p.write_text(p.read_text().replace("-r 10.60.1.41:8443 -m -w 1", "-r 10.60.1.41:8443 -m -w 0"))
    r = run_cli("diff", str(FIX / "ipvs-scheduler-mh"), "--mode", "ipvs", "--against", str(d), "--no-color")
    assert r.exit_code == 1
    assert ("    - real server 10.60.1.41:8443 (weight 0) removed from TCP 10.112.70.4:443\n"
            "    + real server 10.60.1.41:8443 (weight 1) added to TCP 10.112.70.4:443\n") in r.stdout


def test_the_other_family_of_a_dual_stack_dump(tmp_path):
    c = compile_files([str(FIX / "ipvs-ipv6-sctp")], {"mode": "ipvs", "ip_family": "ipv6"})
    assert c.ir.family == 6
    d = tmp_path / "node"
    d.mkdir()
    (d / "ipvsadm.rules").write_text("-A -t 10.96.0.1:443 -s rr\n" + render.ipvsadm(c.ir))
    (d / "ipset.rules").write_text("create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n"
                                   "add KUBE-CLUSTER-IP 10.96.0.1,tcp:443\n" + render.ipset(c.ir))
    (d / "iptables.rules").write_text(render.iptables(c.ir))
    state, _ = VIEW.read(str(d), "ipv6")
    assert state.virtual_servers == c.ir.virtual_servers and state.ipsets == c.ir.ipsets
    r = run_cli("diff", str(FIX / "ipvs-ipv6-sctp"), "--mode", "ipvs", "--against", str(d), "--ip-family", "ipv6")
    assert r.exit_code == 0, r.output


def test_a_live_namespace_through_its_clients_reads_as_the_compile():
    c = compile_files([str(FIX / "ipvs-scheduler-sh")], {"mode": "ipvs"})
    ipvs, sets, links = dipvs.FakeIPVS(), FakeIPSets(), FakeLinks()
    dipvs.load_table(ipvs, c.ir.virtual_servers)
    sets.restore(render.ipset(c.ir))
    links.ensure_dummy()
    for a in c.ir.bound:
        links.add_address("kube-ipvs0", a)
    saved = render_xtables(with_jumps(c.ir.iptables, JUMP_RULES))
    live = read_live(ipvs, sets, links, saved, 4, "netns x")
    res = compare(side(live, "live", True), VIEW.side(VIEW.with_outside(c.ir, c.settings), "compiled", True))
    assert res.empty, render_text(res)
    # an address missing from kube-ipvs0 (the set still lists it) is what a live read catches
    links.remove_address("kube-ipvs0", c.ir.bound[0])
    res = compare(side(read_live(ipvs, sets, links, saved, 4, "netns x"), "live", True),
                  VIEW.side(VIEW.with_outside(c.ir, c.settings), "compiled", True))
    assert [(d.kind, d.name, [ch.rule for ch in d.changes]) for d in res.containers] == [
        ("interface", "kube-ipvs0", [c.ir.bound[0]])]


def test_netns_without_ip_vs_is_a_clean_refusal(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    from rulegen.dataplane.ipvs import ipvs_missing_reason
    name = f"rgt-ipvsd-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        if ipvs_missing_reason(name, load=False) is None:
            pytest.skip("this kernel has ip_vs (the refusal is for kernels without it)")
        r = run_cli("diff", str(BEFORE), "--mode", "ipvs", "--netns", name)
        assert r.exit_code == 2 and "no IP Virtual Server" in r.stderr and "Traceback" not in r.output
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.mark.root
def test_a_kernel_dump_of_the_glue_and_sets_diffs_empty(tmp_path):
    """ipset save and iptables-save of a namespace the glue and sets were loaded into, with the compile's
    ipvsadm text (the host may lack ip_vs), against the compile: no difference."""
    if not shutil.which("ipset"):
        pytest.skip("ipset not installed")
    src = FIX / "ipvs-scheduler-wrr"
    c = compile_files([str(src)], {"mode": "ipvs"})
    name = f"rgt-ipvsd-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)

    def ns(*cmd: str, input: str | None = None) -> str:
        r = subprocess.run(["ip", "netns", "exec", name, *cmd], input=input, text=True, capture_output=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout
    try:
        ns("ipset", "restore", input=render.ipset(c.ir))
        ns("iptables-restore", "--noflush", input=render.iptables(c.ir))
        for table, chain, spec in JUMP_RULES:
            ns("iptables", "-t", table, "-I", chain, *shlex.split(spec))
        d = tmp_path / "node"
        d.mkdir()
        (d / "ipvsadm.rules").write_text(render.ipvsadm(c.ir))
        (d / "ipset.rules").write_text(ns("ipset", "save"))
        (d / "iptables.rules").write_text(ns("iptables-save"))
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    r = run_cli("diff", str(src), "--mode", "ipvs", "--against", str(d))
    assert r.exit_code == 0, r.output
    assert "bucketsize" in (d / "ipset.rules").read_text()
