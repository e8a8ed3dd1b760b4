"""`rulegen lab --mode-compare iptables:nftables` (root, namespaces): real traffic agrees with `rulegen migrate`.

For every case of migrate-fixtures/ whose iptables → nftables report says
something, the lab runs in both modes and every path must agree with
migrate's traces; the paths migrate reports are exactly its differences
on the clients the lab has, with the same causes, and where migrate says
the outcome changes (answered / refused / timed out) the traffic changed
so too. Also: a case with --settings-to, cases with no difference, a run
whose second half loads the wrong mode's rules (the lab must disagree,
exit-1 material), and IPVS on a kernel without it (exit 2, nothing built).
Requests are few (6 per path) and the cases run three at a time; each run
is bounded by --timeout; every namespace a run made is checked gone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from rulegen import lab
from rulegen.lab import compare
from rulegen.migrate import migrate
from rulegen.migrate.render import render_json

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "migrate-fixtures"
NETNS_DIR = "/run/netns"
REQUESTS = "6"
RULEGEN = [sys.executable, "-c", "import sys; from rulegen.cli import main; sys.exit(main())"]
PROBED = set(compare.SOURCES)


def _need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for tool in ("ip", "iptables-restore", "iptables-save", "iptables", "nft"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool}")


def _cases_with_a_difference() -> list[str]:
    out = []
    for p in sorted(CASES.glob("*/expected.iptables-nftables.txt")):
        if not p.read_text().rstrip().splitlines()[-1].startswith("no difference"):
            out.append(p.parent.name)
    return out


def _namespaces(prefixes: list[str]) -> list[str]:
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names for r in prefixes if n.startswith(r + "-"))


SETTINGS_JOBS = (
    ("secondary-address", "iptables:nftables", ("--settings-to", str(CASES / "secondary-address" / "settings-to.yaml"))),
    ("same-settings", "nftables:nftables", ("--settings-to", str(CASES / "same-settings" / "settings-to.yaml"))),
    ("nothing-to-trace", "iptables:nftables", ()),
)


@pytest.fixture(scope="module")
def background():
    """Every CLI run of this file, started at once in the background (three at a time); name → future.

    The runs are subprocesses, so the in-process test can run meanwhile; the
    module's run names are checked for leftovers at the end.
    """
    _need_root()
    started: list[str] = []
    pool = ThreadPoolExecutor(3)
    jobs = {c: (c, "iptables:nftables", ()) for c in _cases_with_a_difference()}
    jobs.update({f"{c}:{pair}": (c, pair, extra) for c, pair, extra in SETTINGS_JOBS})
    futures = {k: pool.submit(_lab, started, *j[:2], *j[2]) for k, j in jobs.items()}
    yield futures
    pool.shutdown(wait=True)
    stray = _namespaces(started)
    for n in stray:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
    assert not stray, f"lab left namespaces behind: {stray}"


@pytest.fixture
def runs():
    """Lab run names (rglab-XXXX) the test started; none of their namespaces may be left after it."""
    started: list[str] = []
    yield started
    stray = _namespaces(started)
    for n in stray:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
    assert not stray, f"lab left namespaces behind: {stray}"


def _lab(runs: list[str], case: str, pair: str, *extra: str) -> tuple[int, dict | None, str]:
    cp = subprocess.run([*RULEGEN, "lab", str(CASES / case / "input.yaml"), "--mode-compare", pair, "--requests",
                         REQUESTS, "--timeout", "60", "--json", *extra],
                        capture_output=True, text=True, timeout=90, cwd=ROOT)
    for line in cp.stderr.splitlines():
        if line.startswith("rulegen lab: " + lab.PREFIX):
            runs.append(line.split()[2].rstrip(":"))
    assert "Traceback" not in cp.stderr, cp.stderr
    return cp.returncode, (json.loads(cp.stdout) if cp.stdout.startswith("{") else None), cp.stdout + cp.stderr


def _migrate_report(case: str, a: str, b: str, settings_to: str | None = None) -> dict:
    st = str(CASES / case / settings_to) if settings_to else None
    return json.loads(render_json(migrate([str(CASES / case / "input.yaml")], {}, b, a, None, st)))


def _check_against_migrate(doc: dict, report: dict) -> None:
    assert doc["ok"] and doc["disagree"] == 0 and not doc["left_behind"], json.dumps(
        [p for p in doc["paths"] if p["verdict"] != "agree"], indent=1)
    # migrate's differences on the clients the lab has are exactly the paths it reports, cause for cause
    want = {(d["service"], d["client"], d["destination"]): d["cause"] for d in report["differences"]
            if d["client"] in PROBED}
    got = {(p["service"], p["client"], p["destination"]): p["migrate"]["cause"] for p in doc["paths"]
           if p["migrate"]["differs"]}
    assert got == want
    skipped = {(d["service"], d["client"], d["destination"]) for d in report["differences"]
               if d["client"] not in PROBED}
    assert skipped == {(x["service"], x["client"], x["destination"]) for x in doc["not_probed"]
                       if x["migrate_differs"]}
    for p in doc["paths"]:
        a, b = p["from"], p["to"]
        allowed_a, allowed_b = set(a["predicted"]["allows"]), set(b["predicted"]["allows"])
        if not p["migrate"]["differs"]:
            assert a["observed"]["outcome"] == b["observed"]["outcome"], p
        elif not allowed_a & allowed_b:  # migrate says the outcome changes: the traffic must show it
            assert "outcome" in p["observed_change"], p
        assert a["observed"]["outcome"] in allowed_a and b["observed"]["outcome"] in allowed_b, p


def test_the_wrong_rules_in_the_second_run_disagree(background, runs):
    """The nftables half loads iptables mode's rules: where migrate predicts a change, the lab must disagree."""
    case = CASES / "localhost-nodeport" / "input.yaml"
    result = migrate([str(case)], {}, "nftables", "iptables")
    cp = compare.plan_compare(result, lab.build_plan(result.compiled_from, requests=6), 6)
    wrong = replace(result, compiled_to=result.compiled_from)

    def runner(modes, timeout):
        reps = lab.run_modes(modes, timeout)
        runs.append(reps[0].run)
        return reps

    rep = compare.run_compare(wrong, cp, (lambda o: result.compiled_from, lambda o: result.compiled_from), 60,
                              runner=runner)
    assert not rep.ok
    bad = {(p.scenario.client.kind, p.scenario.entry.kind, p.scenario.entry.ip) for p in rep.paths if not p.agrees}
    changed = {(p.scenario.client.kind, p.scenario.entry.kind, p.scenario.entry.ip) for p in rep.paths
               if p.found is not None}
    assert bad == changed  # exactly the paths whose predicted change did not happen
    assert ("localhost", "localhost-node-port", "127.0.0.1") in bad
    text = compare.report_text(rep)
    assert "DISAGREES localhost 127.0.0.1 -> 127.0.0.1:31080" in text


def test_every_case_with_a_difference_agrees_with_migrate(background):
    cases = _cases_with_a_difference()
    assert len(cases) >= 8
    seen_changes = 0
    for case in cases:
        rc, doc, out = background[case].result()
        assert rc == 0 and doc is not None, f"{case}: {out}"
        _check_against_migrate(doc, _migrate_report(case, "iptables", "nftables"))
        assert any(p["migrate"]["differs"] for p in doc["paths"]), case
        seen_changes += sum(1 for p in doc["paths"] if p["observed_change"])
    assert seen_changes >= len(cases)  # every case's change was seen in traffic, not only predicted


def test_settings_to_and_cases_without_a_difference(background):
    rc, doc, out = background["secondary-address:iptables:nftables"].result()
    assert rc == 0 and doc is not None, out
    _check_against_migrate(doc, _migrate_report("secondary-address", "iptables", "nftables", "settings-to.yaml"))
    second = [p for p in doc["paths"] if p["destination"] == "10.31.0.7:31060"]
    assert second and all(p["to"]["observed"]["outcome"] == "answer" and not p["migrate"]["differs"]
                          for p in second)  # nodePortAddresses 0.0.0.0/0: the second address answers again
    assert doc["settings_to"].endswith("settings-to.yaml")

    rc, doc, out = background["same-settings:nftables:nftables"].result()
    assert rc == 0 and doc is not None, out
    _check_against_migrate(doc, _migrate_report("same-settings", "nftables", "nftables", "settings-to.yaml"))
    # (which endpoints answer a few connections may differ from run to run: random, not a change)
    assert doc["paths"] and not any(p["migrate"]["differs"] or set(p["observed_change"]) - {"endpoints"}
                                    for p in doc["paths"])

    rc, doc, out = background["nothing-to-trace:iptables:nftables"].result()
    assert rc == 0 and "no path to compare" in out


def test_the_node_is_reset_between_the_modes(background, runs):
    """After iptables then nftables, `reset_rules` leaves no rule, no conntrack entry, route_localnet as built."""
    from rulegen.lab.topology import Lab

    if Lab.can_reset() is not None:
        pytest.skip(f"the node cannot be reset here: {Lab.can_reset()}")
    case = str(CASES / "localhost-nodeport" / "input.yaml")
    ipt = migrate([case], {}, "nftables", "iptables")
    plan = lab.build_plan(ipt.compiled_from, requests=1)
    one = Lab(plan)
    runs.append(one.prefix)
    key = "net.ipv4.conf.all.route_localnet"
    try:
        one.build()
        before = one.snapshot_sysctls()
        one.apply_rules(ipt.compiled_from)
        ns = one.kernel.netns
        assert ns.sysctl(one.node, key) == "1" and "KUBE-SERVICES" in one.kernel.xtables.save(one.node)
        # a conntrack entry to forget: one connection through the rules
        ns.run(one.node, ["sh", "-c", "echo | timeout 2 nc -w1 10.100.4.10 80 || true"])
        one.reset_rules(["iptables"], before)
        assert ns.sysctl(one.node, key) == before[key] == "0"
        assert "KUBE-" not in one.kernel.xtables.save(one.node)
        one.apply_rules(ipt.compiled_to)
        assert "kube-proxy" in ns.run(one.node, ["nft", "list", "tables"]).stdout
        one.reset_rules(["iptables", "nftables"], before)
        assert ns.run(one.node, ["nft", "list", "ruleset"]).stdout.strip() == ""
        assert ns.run(one.node, ["conntrack", "-L"]).stdout.strip() == ""
    finally:
        one.close()


def test_ipvs_on_a_kernel_without_it_is_exit_2_and_builds_nothing(runs):
    _need_root()
    from rulegen.apply.kernel import Kernel

    if Kernel.real().ipvs_missing() is None:
        pytest.skip("this kernel has IPVS (tests/vm runs ipvs:nftables)")
    rc, doc, out = _lab(runs, "scheduler-sh", "ipvs:nftables")
    assert rc == 2 and "no IP Virtual Server" in out and "IPVS mode needs it" in out
    assert not runs  # stopped before any namespace was made
