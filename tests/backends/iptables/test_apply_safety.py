"""`rulegen apply` never loses what the node had: empty input, concurrent applies, duplicated jumps, hostile state.

- an input with no Service is a warning on compile (exit 2 under --strict)
  and refused by apply unless --allow-empty;
- one apply at a time per namespace (an flock, `rulegen.nslock`), and every
  jump rule from the built-in chains exactly once afterwards;
- state files are regular, private files in folders rulegen marked: a FIFO
  or link in their place is refused at once, pruning leaves foreign files;
- `--json` of compile and apply.

Most tests use `Kernel`; the `root` ones use real namespaces (prefix
`rgt-safe-`, always deleted).
"""

from __future__ import annotations

import collections
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from nshelp import namespace_names
from test_apply import EXAMPLE, canon, cluster, compiled, expected_live, kube_state, save_chains

from rulegen import files
from rulegen.apply import Kernel, apply
from rulegen.apply import lock as nslock
from rulegen.backends.iptables import incremental
from rulegen.backends.iptables.compile import jump_rules
from rulegen.cli import main
from rulegen.dataplane.xtables.parse import parse
from rulegen.dataplane.xtables.restore import ApplyError
from rulegen.pipeline import compile_files

RULEGEN = str(Path(sys.executable).with_name("rulegen"))
NS = "rgt-safe-a"


def _jump_copies(state: dict, settings) -> dict:
    """How many copies of each kube-proxy jump the built-in chains hold."""
    return {(t, ch, a): state.get(t, {}).get(ch, []).count(a) for t, ch, a in jump_rules(settings)}


# ---------------------------------------------------------------------- jumps: exactly one copy


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_a_jump_duplicated_by_hand_is_removed_and_the_first_copy_kept(kernel, tmp_path, backend):
    kernel = kernel.with_iptables(backend)
    c = compiled(cluster())
    state = str(tmp_path)
    apply(c, NS, create=True, kernel=kernel, state_dir=state)
    nat_jump = '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    fwd_jump = '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'
    # by hand: a second copy at the end of PREROUTING behind a foreign rule, a
    # third in front of it, and one more KUBE-FORWARD jump in FORWARD
    kernel.xtables.restore(NS, f"*nat\n-A PREROUTING -p udp -j RETURN\n-A PREROUTING {nat_jump}\n"
                             f"-I PREROUTING 1 {nat_jump}\nCOMMIT\n"
                             f"*filter\n-A FORWARD {fwd_jump}\nCOMMIT\n")
    res = apply(c, NS, kernel=kernel, state_dir=state)
    assert res.source == "dump"  # the generation moved (nft), or legacy reads anyway
    assert sorted(res.jumps_removed) == sorted([("nat", "PREROUTING", nat_jump)] * 2
                                               + [("filter", "FORWARD", fwd_jump)])
    assert not res.jumps and res.lines == 3
    assert "-D PREROUTING 4\n-D PREROUTING 2\n" in res.payload  # by number, highest first
    live = kube_state(kernel, NS)
    assert live["nat"]["PREROUTING"] == [nat_jump, "-p udp -j RETURN"]  # the copy the kernel reached is kept
    assert set(_jump_copies(live, c.settings).values()) == {1}
    assert "3 duplicate jump rules removed" in res.summary()
    # the cache recorded the repaired chains as they are: the next run trusts it and sends nothing
    again = apply(c, NS, kernel=kernel, state_dir=state)
    assert again.lines == 0 and not again.jumps_removed
    if backend == "nft":
        assert again.source == "cache"
        cached = msgspec.json.decode((tmp_path / NS / "iptables-ipv4.json").read_bytes())
        assert cached["tables"]["nat"]["others"]["PREROUTING"] == live["nat"]["PREROUTING"]
        assert cached["tables"]["filter"]["others"]["FORWARD"] == live["filter"]["FORWARD"]


def test_the_copy_kept_keeps_kube_proxys_order(kernel):
    # filter OUTPUT holds, in kube-proxy's order, the KUBE-FIREWALL, the
    # KUBE-PROXY-FIREWALL and the KUBE-SERVICES jumps. A copy of the last put
    # in front: the one kept is the one behind the other two.
    c = compiled(cluster())
    apply(c, NS, create=True, kernel=kernel, state_dir=None)
    want = kube_state(kernel, NS)
    svc_jump = '-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    assert want["filter"]["OUTPUT"][-1] == svc_jump
    kernel.xtables.restore(NS, f"*filter\n-I OUTPUT 1 {svc_jump}\nCOMMIT\n")
    res = apply(c, NS, kernel=kernel, state_dir=None)
    assert res.payload == "*filter\n-D OUTPUT 1\nCOMMIT\n"
    assert kube_state(kernel, NS) == want


def test_every_jump_inserted_twice_as_by_two_racing_applies_is_repaired(kernel):
    c = compiled(cluster())
    apply(c, NS, create=True, kernel=kernel, state_dir=None)
    once = kube_state(kernel, NS)
    # what two applies without a lock did: both found every jump missing and inserted it
    by_table: dict[str, list[str]] = {}
    for t, ch, a in jump_rules(c.settings):
        by_table.setdefault(t, []).append(f"-I {ch} 1 {a}")
    kernel.xtables.restore(NS, "".join(f"*{t}\n" + "\n".join(ls) + "\nCOMMIT\n" for t, ls in by_table.items()))
    assert set(_jump_copies(kube_state(kernel, NS), c.settings).values()) == {2}
    res = apply(c, NS, kernel=kernel, state_dir=None)
    assert len(res.jumps_removed) == len(jump_rules(c.settings)) == 14 and not res.jumps
    assert kube_state(kernel, NS) == once
    assert apply(c, NS, kernel=kernel, state_dir=None).lines == 0


def test_a_missing_jump_and_a_duplicated_one_in_one_run(kernel):
    c = compiled(cluster())
    apply(c, NS, create=True, kernel=kernel, state_dir=None)
    want = kube_state(kernel, NS)
    out_jump = '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    kernel.xtables.restore(NS, f"*nat\n-D OUTPUT {out_jump}\n-A PREROUTING {out_jump}\nCOMMIT\n")
    res = apply(c, NS, kernel=kernel, state_dir=None)
    assert res.jumps == [("nat", "OUTPUT", out_jump)] and res.jumps_removed == [("nat", "PREROUTING", out_jump)]
    assert kube_state(kernel, NS) == want


def test_a_refused_later_table_puts_removed_copies_back(kernel):
    c = compiled(cluster())
    apply(c, NS, create=True, kernel=kernel, state_dir=None)
    fwd_jump = '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'
    nat_jump = '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'
    kernel.xtables.restore(NS, f"*filter\n-A FORWARD -p tcp -j ACCEPT\n-A FORWARD {fwd_jump}\nCOMMIT\n"
                             f"*nat\n-A POSTROUTING {nat_jump}\nCOMMIT\n")
    before = kube_state(kernel, NS)
    kernel.xtables.refuse = lambda line: "no" if line.startswith("-D POSTROUTING") else None
    with pytest.raises(ApplyError, match="filter put back as before"):
        apply(c, NS, kernel=kernel, state_dir=None)
    assert kube_state(kernel, NS) == before


# ---------------------------------------------------------------------- state directory


def test_state_files_are_private(kernel, tmp_path):
    old = os.umask(0o022)
    try:
        apply(compiled(cluster()), NS, create=True, kernel=kernel, state_dir=str(tmp_path))
    finally:
        os.umask(old)
    folder = tmp_path / NS
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    made = [p for p in folder.iterdir() if p.name != files.STATE_MARK]
    assert {p.name for p in made} == {"iptables-ipv4.json", "iptables-ipv4.gen"}
    for p in made:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def _run_bounded(fn):
    """FN() in a thread that must end (a FIFO that blocks would hang the test run otherwise)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "apply blocked"
    return out[0]


def test_a_fifo_at_the_cache_path_is_refused_at_once_and_replaced(kernel, tmp_path):
    c = compiled(cluster())
    state = str(tmp_path)
    apply(c, NS, create=True, kernel=kernel, state_dir=state)
    for name in ("iptables-ipv4.json", "iptables-ipv4.gen"):
        os.unlink(tmp_path / NS / name)
        os.mkfifo(tmp_path / NS / name)
    res = _run_bounded(lambda: apply(c, NS, kernel=kernel, state_dir=state))
    assert res.source == "dump" and res.lines == 0
    assert any("iptables-ipv4.json: a FIFO where a state file should be" in w for w in res.warnings), res.warnings
    assert (tmp_path / NS / "iptables-ipv4.json").is_file()  # replaced by a cache
    again = apply(c, NS, kernel=kernel, state_dir=state)
    assert again.source == "cache" and again.warnings == []


def test_a_link_at_the_cache_path_is_not_followed(kernel, tmp_path):
    c = compiled(cluster())
    state = str(tmp_path / "state")
    apply(c, NS, create=True, kernel=kernel, state_dir=state)
    precious = tmp_path / "precious"
    precious.write_text("not a cache")
    cache = tmp_path / "state" / NS / "iptables-ipv4.json"
    cache.unlink()
    cache.symlink_to(precious)
    res = apply(c, NS, kernel=kernel, state_dir=state)
    assert any("symbolic link" in w for w in res.warnings)
    assert precious.read_text() == "not a cache" and not cache.is_symlink()


def test_a_fifo_at_the_compile_cache_path_is_refused(tmp_path):
    fifo = tmp_path / "ns" / "compile.msgpack"
    files.write_state(tmp_path / "ns" / "x", b"")
    os.mkfifo(fifo)
    warn: list[str] = []
    assert _run_bounded(lambda: incremental.load_cache(str(fifo), warn)) is None
    assert warn and "a FIFO" in warn[0]


def test_prune_in_a_shared_state_dir_touches_only_what_rulegen_made(kernel, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    # other programs' things, some named like rulegen's
    (shared / "notes.txt").write_text("keep")
    theirs = shared / "rgt-safe-gone"  # a folder named like a namespace that does not exist
    theirs.mkdir()
    (theirs / "iptables-ipv4.json").write_text("their own json")
    (theirs / "compile.msgpack").write_text("their own data")
    (shared / "rgt-safe-empty").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "compile.msgpack").write_text("keep too")
    (shared / "rgt-safe-link").symlink_to(elsewhere)
    c = compiled(cluster())
    apply(c, "rgt-safe-b", create=True, kernel=kernel, state_dir=str(shared))
    apply(c, "rgt-safe-c", create=True, kernel=kernel, state_dir=str(shared))
    (shared / "rgt-safe-c" / "mine.txt").write_text("a user's file in rulegen's folder")
    kernel.netns.delete("rgt-safe-b")
    kernel.netns.delete("rgt-safe-c")
    apply(c, NS, create=True, kernel=kernel, state_dir=str(shared))
    assert not (shared / "rgt-safe-b").exists()  # rulegen's own: gone
    assert sorted(os.listdir(shared / "rgt-safe-c")) == ["mine.txt"]  # only rulegen's files went
    assert (shared / "notes.txt").read_text() == "keep"
    assert (theirs / "iptables-ipv4.json").read_text() == "their own json"
    assert (theirs / "compile.msgpack").read_text() == "their own data"
    assert (shared / "rgt-safe-empty").is_dir()
    assert (elsewhere / "compile.msgpack").read_text() == "keep too"


def test_prune_leaves_a_namespace_whose_lock_is_held(kernel, tmp_path):
    state, locks = str(tmp_path / "state"), str(tmp_path / "locks")
    c = compiled(cluster())
    apply(c, "rgt-safe-b", create=True, kernel=kernel, state_dir=state, lock_dir=locks)
    kernel.netns.delete("rgt-safe-b")
    with _held_elsewhere(locks, "rgt-safe-b"):  # an apply about to make it again
        apply(c, NS, create=True, kernel=kernel, state_dir=state, lock_dir=locks)
        assert (tmp_path / "state" / "rgt-safe-b").is_dir()
        assert (tmp_path / "locks" / "rgt-safe-b.lock").exists()
    apply(c, NS, kernel=kernel, state_dir=state, lock_dir=locks)
    assert not (tmp_path / "state" / "rgt-safe-b").exists()
    assert sorted(os.listdir(locks)) == [f"{NS}.lock"]


# ---------------------------------------------------------------------- the lock

_HOLDER = textwrap.dedent("""
    import os, sys
    from rulegen.apply import lock as nslock
    lock_dir, netns, unlink = sys.argv[1], sys.argv[2], sys.argv[3] == "unlink"
    with nslock.namespace_lock(netns, lock_dir):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes it
        if unlink:  # as prune does to a namespace that is gone
            os.unlink(nslock.lock_path(lock_dir, netns))
""")


class _held_elsewhere:
    """Another process holds NETNS's lock until the block ends."""

    def __init__(self, lock_dir: str, netns: str, unlink: bool = False):
        self.args = [sys.executable, "-c", _HOLDER, lock_dir, netns, "unlink" if unlink else "keep"]

    def __enter__(self) -> subprocess.Popen:
        self.p = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline() == "held\n"
        return self.p

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.p.stdin and not self.p.stdin.closed:
            self.p.stdin.close()
        assert self.p.wait(timeout=30) == 0


def test_a_second_apply_gives_up_after_the_timeout_naming_the_netns_and_holder(kernel, tmp_path):
    locks = str(tmp_path / "locks")
    c = compiled(cluster())
    heard: list[str] = []
    with _held_elsewhere(locks, NS) as holder:
        with pytest.raises(nslock.LockError) as ei:
            apply(c, NS, create=True, kernel=kernel, state_dir=None, lock_dir=locks, lock_timeout=0.2,
                  notify=heard.append)
        assert f"netns {NS}" in str(ei.value) and f"pid {holder.pid}" in str(ei.value)
        assert "nothing was changed" in str(ei.value)
        assert len(heard) == 1 and f"netns {NS}" in heard[0] and f"pid {holder.pid}" in heard[0]
        assert not kernel.netns.exists(NS) and not kernel.xtables.restores()
    res = apply(c, NS, create=True, kernel=kernel, state_dir=None, lock_dir=locks, lock_timeout=0.2)
    assert res.created and res.lines > 0


def test_a_second_apply_waits_for_the_first(kernel, tmp_path):
    locks = str(tmp_path / "locks")
    c = compiled(cluster())
    heard: list[str] = []
    done = threading.Event()
    holder = _held_elsewhere(locks, NS)
    with holder:
        t = threading.Thread(target=lambda: (apply(c, NS, create=True, kernel=kernel, state_dir=None, lock_dir=locks,
                                                   notify=heard.append), done.set()), daemon=True)
        t.start()
        assert not done.wait(0.5)  # waits while the other holds the lock
        assert not kernel.netns.exists(NS)
    t.join(timeout=60)
    assert done.is_set() and kernel.netns.exists(NS)
    assert heard and "waiting" in heard[0] and f"pid {holder.p.pid}" in heard[0]


def test_a_waiter_whose_lock_file_was_pruned_locks_the_new_one(tmp_path):
    locks = str(tmp_path / "locks")
    got = threading.Event()
    release = threading.Event()

    def waiter():
        with nslock.namespace_lock(NS, locks):
            got.set()
            release.wait(30)

    holder = _held_elsewhere(locks, NS, unlink=True)
    with holder:
        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        assert not got.wait(0.3)
    # The holder deleted the file and let go: the waiter held the old inode
    # for a moment, saw the name gone, and locked a new file under the name.
    assert got.wait(30)
    try:
        assert os.path.exists(nslock.lock_path(locks, NS))
        third = subprocess.run([sys.executable, "-c", textwrap.dedent("""
            import sys
            from rulegen.apply import lock as nslock
            with nslock.try_lock(sys.argv[1], sys.argv[2]) as got:
                sys.exit(3 if got else 0)
        """), locks, NS], timeout=30)
        assert third.returncode == 0, "a third process got the lock the waiter holds"
    finally:
        release.set()
        t.join(timeout=30)


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    locks = str(tmp_path / "locks")
    with nslock.namespace_lock(NS, locks, timeout=0):
        with nslock.namespace_lock(NS, locks, timeout=0):
            pass
        assert (tmp_path / "locks" / f"{NS}.lock").read_text() == f"{os.getpid()}\n"
    assert (tmp_path / "locks" / f"{NS}.lock").read_text() == ""  # no stale pid for the next waiter
    assert stat.S_IMODE(os.stat(locks).st_mode) == 0o700


@pytest.mark.parametrize("trap", ["fifo", "link"])
def test_a_trap_at_the_lock_path_is_refused(tmp_path, trap):
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    path = locks / f"{NS}.lock"
    if trap == "fifo":
        os.mkfifo(path)
    else:
        target = tmp_path / "target"
        target.write_text("untouched")
        path.symlink_to(target)

    def take():
        try:
            with nslock.namespace_lock(NS, str(locks)):
                return None
        except nslock.LockError as e:
            return e

    err = _run_bounded(take)
    assert isinstance(err, nslock.LockError) and str(path) in str(err)
    if trap == "link":
        assert (tmp_path / "target").read_text() == "untouched"


# ---------------------------------------------------------------------- empty input


NODE_ONLY = """apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.56.10}]}
"""


@pytest.mark.parametrize("text", ["", NODE_ONLY])
def test_compile_of_an_input_without_services_warns_and_strict_refuses(text):
    r = CliRunner().invoke(main, ["compile", "-"], input=text)
    assert r.exit_code == 0
    assert "rulegen: warning: -: no Service in the input" in r.stderr
    assert r.stdout.startswith("*filter\n")
    r = CliRunner().invoke(main, ["compile", "-", "--strict"], input=text)
    assert r.exit_code == 2 and "no Service in the input" in r.stderr and "--strict" in r.stderr
    assert r.stdout == ""


def test_compile_with_services_does_not_warn():
    r = CliRunner().invoke(main, ["compile", str(EXAMPLE)])
    assert r.exit_code == 0 and "no Service" not in r.stderr


def test_the_compile_cache_counts_services_it_did_not_parse(tmp_path):
    from rulegen.bench import gen
    from rulegen.diagnostics import Report
    from rulegen.pipeline import compile_files_cached

    src, cache = tmp_path / "cluster.json", str(tmp_path / "ns" / "compile.msgpack")
    with open(src, "w") as f:
        gen.write(gen.generate(12, 2, seed=3), "json", f)
    first = compile_files_cached([str(src)], {}, Report(), None, cache)
    first.save_cache(cache)
    again = compile_files_cached([str(src)], {}, Report(), None, cache)
    assert again.stats["parsed"] <= 2 < again.stats["units"]  # only the Node and config units are parsed again
    assert first.services == again.services == 12


@pytest.fixture
def cli_fake(monkeypatch, tmp_path):
    """The apply command on a Kernel (as Kernel), its state in tmp_path."""
    kernel = Kernel.fake()
    monkeypatch.setattr(Kernel, "real", staticmethod(lambda backend="auto": kernel))
    monkeypatch.setenv("RULEGEN_STATE_DIR", str(tmp_path / "state"))
    return kernel


def test_apply_refuses_an_empty_input_and_keeps_the_rules(cli_fake):
    kernel = cli_fake
    r = CliRunner().invoke(main, ["apply", str(EXAMPLE), "--netns", NS, "--create"])
    assert r.exit_code == 0, r.output
    before, sent = kube_state(kernel, NS), len(kernel.xtables.restores())
    r = CliRunner().invoke(main, ["apply", "-", "--netns", NS], input="")
    assert r.exit_code == 2
    assert f"remove every Service rule from netns {NS}, so nothing was changed (use --allow-empty" in r.stderr
    assert "Traceback" not in r.output
    assert kube_state(kernel, NS) == before and len(kernel.xtables.restores()) == sent
    # a dry run says what it would send, and that the real run would refuse
    r = CliRunner().invoke(main, ["apply", "-", "--netns", NS, "--dry-run"], input="")
    assert r.exit_code == 2 and "so apply would refuse it" in r.stderr
    assert "-X KUBE-SVC-" in r.stdout and "would send" in r.stderr
    assert kube_state(kernel, NS) == before
    # asked for: done, and said
    r = CliRunner().invoke(main, ["apply", "-", "--netns", NS, "--allow-empty"], input="")
    assert r.exit_code == 0, r.output
    assert "every Service rule is removed (--allow-empty)" in r.stderr
    assert not any(c.startswith("KUBE-SVC-") for c in kube_state(kernel, NS)["nat"])


def test_apply_with_no_service_on_a_missing_namespace_creates_nothing(cli_fake):
    r = CliRunner().invoke(main, ["apply", "-", "--netns", NS, "--create"], input="")
    assert r.exit_code == 2 and not cli_fake.netns.exists(NS)


# ---------------------------------------------------------------------- --json

BAD = """apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.80
  ports: [{name: http, port: 80, nodePort: 99999}]
"""


def test_compile_json_holds_the_payload_counts_and_warnings(tmp_path):
    plain = CliRunner().invoke(main, ["compile", str(EXAMPLE)])
    r = CliRunner().invoke(main, ["compile", str(EXAMPLE), "--json"])
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert out["payload"] == plain.stdout and out["mode"] == "iptables" and out["family"] == 4
    rs = parse(plain.stdout)
    assert out["counts"]["tables"] == {t.name: {"chains": len(t.chains), "rules": len(t.rules)} for t in rs.tables}
    assert out["counts"]["services"] >= 1 and out["counts"]["service_ports"] >= out["counts"]["services"] - 1
    assert out["counts"]["endpoints"] > 0 and out["warnings"] == []
    assert [s["stage"] for s in out["timings"]][:1] == ["load"]
    # with -o: where it went and how big, not the payload
    dest = tmp_path / "out.rules"
    r = CliRunner().invoke(main, ["compile", str(EXAMPLE), "--json", "-o", str(dest)])
    out = json.loads(r.stdout)
    assert "payload" not in out and out["output"] == {"path": str(dest), "bytes": dest.stat().st_size}
    assert dest.read_text() == plain.stdout


def test_compile_json_warnings_are_the_problems_in_parts(tmp_path):
    src = tmp_path / "svc.yaml"
    src.write_text(BAD)
    r = CliRunner().invoke(main, ["compile", str(src), "--json"])
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    w = out["warnings"][0]
    assert w["file"] == str(src) and w["document"] == 1 and w["object"] == "Service default/web"
    assert w["field"] == "spec.ports[0].nodePort" and "99999" in w["message"]
    line = f"{w['file']}: document {w['document']} ({w['object']}): {w['field']}: {w['message']}"
    assert line in r.stderr  # the same problem stderr shows
    r = CliRunner().invoke(main, ["compile", "-", "--json"], input="")
    out = json.loads(r.stdout)
    assert out["counts"]["services"] == 0
    assert out["warnings"][-1]["file"] is None and "no Service in the input" in out["warnings"][-1]["message"]


def test_apply_json(cli_fake):
    r = CliRunner().invoke(main, ["apply", str(EXAMPLE), "--netns", NS, "--create", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["netns"] == NS and out["mode"] == "iptables" and out["family"] == 4 and out["created"]
    assert not out["dry_run"] and "payload" not in out and out["live_state_from"] == "dump"
    live = kube_state(cli_fake, NS)
    assert out["chains"]["added"] == sum(1 for t in live.values() for c in t if c.startswith("KUBE-"))
    assert out["chains"]["changed"] == out["chains"]["removed"] == 0
    assert len(out["jumps"]["inserted"]) == 14 and out["jumps"]["removed"] == []
    assert out["jumps"]["inserted"][0].keys() == {"table", "chain", "rule"}
    assert out["lines"] > 0 and out["warnings"] == []
    stages = [t["stage"] for t in out["timings"]]
    assert "lock" in stages and "restore" in stages and "compile" in stages
    # a repeat that finds a duplicated jump; and a dry run shows its payload
    cli_fake.xtables.restore(NS, "*nat\n-A OUTPUT -m comment --comment \"kubernetes service portals\" "
                                  "-j KUBE-SERVICES\nCOMMIT\n")
    r = CliRunner().invoke(main, ["apply", str(EXAMPLE), "--netns", NS, "--json", "--dry-run"])
    out = json.loads(r.stdout)
    assert out["dry_run"] and out["lines"] == 1 and out["payload"] == "*nat\n-D OUTPUT 2\nCOMMIT\n"
    assert out["jumps"]["removed"] == [{"table": "nat", "chain": "OUTPUT",
                                        "rule": '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'}]


def test_apply_json_lists_a_state_warning(cli_fake, tmp_path):
    r = CliRunner().invoke(main, ["apply", str(EXAMPLE), "--netns", NS, "--create"])
    assert r.exit_code == 0
    cache = tmp_path / "state" / NS / "compile.msgpack"
    cache.unlink()
    os.mkfifo(cache)
    r = _run_bounded(lambda: CliRunner().invoke(main, ["apply", str(EXAMPLE), "--netns", NS, "--json"]))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert any("compile.msgpack: a FIFO" in w["message"] for w in out["warnings"])
    assert "compile.msgpack: a FIFO" in r.stderr


# ---------------------------------------------------------------------- real namespaces


@pytest.fixture
def real():
    with namespace_names("rgt-safe") as name:
        yield name


def _rule_counts(ns: str, backend: str) -> collections.Counter:
    dump = subprocess.run(["ip", "netns", "exec", ns, f"iptables-{backend}-save"], capture_output=True,
                          text=True, check=True).stdout
    table = ""
    out: collections.Counter = collections.Counter()
    for line in dump.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            out[(table, line)] += 1
    return out


@pytest.mark.root
def test_real_two_applies_at_once_leave_one_copy_of_every_rule(real, tmp_path):
    want = expected_live(compile_files([str(EXAMPLE)], {}))
    for rnd in range(10):
        ns = real()
        # Every other round without a state directory (the lock must not
        # depend on it), and with the namespace made beforehand (both race
        # to load, not to create).
        env = dict(os.environ, RULEGEN_STATE_DIR=str(tmp_path / "state") if rnd % 2 else "")
        cmd = [RULEGEN, "apply", str(EXAMPLE), "--netns", ns]
        if rnd % 2:
            Kernel.real().netns.create(ns)
        else:
            cmd.append("--create")
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        counts = _rule_counts(ns, "nft")
        assert counts and max(counts.values()) == 1, [k for k, v in counts.items() if v > 1]
        kernel = Kernel.real()
        assert canon(save_chains(kernel, ns)) == want
        sent = sorted(int(o.split("sent ")[1].split(" lines")[0]) for o, _ in outs)
        assert sent[0] == 0 and sent[1] > 0  # the second found the first's work done


@pytest.mark.root
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_real_hand_duplicated_jumps_are_repaired_and_diff_agrees(real, tmp_path, backend):
    ns = real()
    env = dict(os.environ, RULEGEN_STATE_DIR=str(tmp_path / "state"))
    base = [RULEGEN, "apply", str(EXAMPLE), "--netns", ns, "--iptables-backend", backend]
    r = subprocess.run(base + ["--create"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tool = f"iptables-{backend}"
    for argv in (["-t", "nat", "-A", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals",
                  "-j", "KUBE-SERVICES"],
                 ["-t", "filter", "-I", "OUTPUT", "1", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment",
                  "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]):
        subprocess.run(["ip", "netns", "exec", ns, tool, "-w", "5", *argv], check=True)
    diff = [RULEGEN, "diff", str(EXAMPLE), "--netns", ns]
    assert subprocess.run(diff, env=env, capture_output=True, text=True).returncode == 1
    r = subprocess.run(base + ["--json"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["jumps"]["removed"]) == 2 and out["lines"] == 2
    assert max(_rule_counts(ns, backend).values()) == 1
    d = subprocess.run(diff, env=env, capture_output=True, text=True)
    assert d.returncode == 0, d.stdout
    r = subprocess.run(base, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "sent 0 lines" in r.stdout


@pytest.mark.root
def test_real_cli_lock_timeout_exits_2(real, tmp_path):
    ns = real()  # only a name: the lock is taken before anything else
    with _held_elsewhere(nslock.LOCK_DIR, ns) as holder:
        r = subprocess.run([RULEGEN, "apply", str(EXAMPLE), "--netns", ns, "--create", "--lock-timeout", "0.3"],
                           env=dict(os.environ, RULEGEN_STATE_DIR=str(tmp_path)), capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2, r.stderr
        assert f"netns {ns}: another rulegen apply (pid {holder.pid}) holds the lock" in r.stderr
        assert "after --lock-timeout 0.3 s; nothing was changed" in r.stderr
        assert not os.path.exists(f"/run/netns/{ns}")
    nslock.remove_lock(nslock.LOCK_DIR, ns)


def _readme_json(heading: str) -> dict:
    """The first ```json block of README.md after HEADING."""
    text = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = text.split(heading, 1)[1]
    return json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])


def _shape(v):
    """The keys of V, nested (lists by their first item), as the README promises them."""
    if isinstance(v, dict):
        return {k: _shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_shape(v[0])] if v else []
    return type(v).__name__ if v is not None else "null"


def test_readme_documents_the_json_shapes(cli_fake, tmp_path):
    src = tmp_path / "svc.yaml"
    src.write_text(BAD)
    got = json.loads(CliRunner().invoke(main, ["compile", str(EXAMPLE), str(src), "--json"]).stdout)
    doc = _readme_json("### `rulegen compile FILES...")
    assert doc.keys() == got.keys()
    assert doc["counts"].keys() == got["counts"].keys()
    assert doc["warnings"][0].keys() == got["warnings"][0].keys()
    assert doc["timings"][0].keys() == got["timings"][0].keys()
    r = CliRunner().invoke(main, ["apply", str(EXAMPLE), "--netns", NS, "--create"])
    assert r.exit_code == 0
    cli_fake.xtables.restore(NS, "*nat\n-A PREROUTING -m comment --comment \"kubernetes service portals\" "
                                  "-j KUBE-SERVICES\nCOMMIT\n")
    got = json.loads(CliRunner().invoke(main, ["apply", str(EXAMPLE), "--netns", NS, "--json"]).stdout)
    doc = _readme_json("### `rulegen apply FILES...")
    assert doc.keys() == got.keys()
    assert _shape(doc["chains"]).keys() == _shape(got["chains"]).keys()
    assert _shape(doc["jumps"]) == _shape(got["jumps"])
    assert doc["timings"][0].keys() == got["timings"][0].keys()
