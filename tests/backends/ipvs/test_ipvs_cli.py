"""`rulegen compile --mode ipvs` and `rulegen golden` with expected.ipvs files, from the command line."""

from __future__ import annotations

import shutil
from pathlib import Path

from rgtest import run_cli

from rulegen.backends.ipvs import parse, render

ROOT = Path(__file__).resolve().parents[3]
CASE = ROOT / "fixtures" / "ipvs-scheduler-mh"


def run(*args: str):
    return run_cli(*args)


def test_stdout_holds_the_three_sections_after_their_headers():
    r = run("compile", "--mode", "ipvs", str(CASE))
    assert r.exit_code == 0, r.output
    assert r.stdout == (CASE / "expected.ipvs").read_text()
    heads = [ln for ln in r.stdout.splitlines() if ln.startswith("# rulegen: ")]
    assert heads == ["# rulegen: ipvsadm", "# rulegen: ipset", "# rulegen: iptables"]


def test_output_dir_gets_three_files(tmp_path):
    out = tmp_path / "node" / "rules"  # made if missing
    r = run("compile", "--mode", "ipvs", str(CASE), "-o", str(out), "--timings")
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == ["ipset.rules", "iptables.rules", "ipvsadm.rules"]
    sections = parse.split_sections((CASE / "expected.ipvs").read_text())
    expected = parse.parse((CASE / "expected.ipvs").read_text())
    assert (out / "ipvsadm.rules").read_text() == render.ipvsadm(expected)
    assert (out / "ipset.rules").read_text() == render.ipset(expected)
    assert (out / "iptables.rules").read_text() == render.iptables(expected)
    assert (out / "iptables.rules").read_text() == sections["iptables"].lstrip("\n")
    assert parse.read(str(out)) == expected
    assert "timing: render" in r.stderr and "timing: write" in r.stderr
    # A second compile replaces the files (a stale one would be wrong).
    (out / "ipvsadm.rules").write_text("stale\n")
    assert run("compile", "--mode", "ipvs", str(CASE), "-o", str(out)).exit_code == 0
    assert (out / "ipvsadm.rules").read_text() == render.ipvsadm(expected)


def test_output_that_is_a_file_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "rules.txt"
    target.write_text("keep me\n")
    r = run("compile", "--mode", "ipvs", str(CASE), "-o", str(target))
    assert r.exit_code == 2
    assert "not a directory" in r.stderr and "ipvsadm.rules" in r.stderr and "Traceback" not in r.output
    assert target.read_text() == "keep me\n"
    # iptables mode still writes one file.
    r = run("compile", "--mode", "iptables", str(CASE), "-o", str(target))
    assert r.exit_code == 0 and target.read_text().startswith("*filter\n")


def test_unknown_scheduler_in_a_config_file(tmp_path):
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
                   "mode: ipvs\nipvs: {scheduler: fastest}\n")
    inputs = str(CASE / "input.yaml")
    r = run("compile", inputs, "--config", str(cfg))
    assert r.exit_code == 0
    assert f"{cfg}: document 1 (KubeProxyConfiguration config): ipvs.scheduler: 'fastest' is not" in r.stderr
    assert "-A -t 10.112.70.5:80 -s rr\n" in r.stdout
    strict = run("compile", inputs, "--config", str(cfg), "--strict")
    assert strict.exit_code == 2 and "--strict" in strict.stderr
    assert run("compile", inputs, "--config", str(cfg), "--mode", "iptables").stderr == ""


def test_golden_compares_and_updates_expected_ipvs(tmp_path):
    root = tmp_path / "golden"
    shutil.copytree(CASE, root / CASE.name)
    ok = run("golden", str(root))
    assert ok.exit_code == 0 and "ok       ipvs-scheduler-mh [ipvs]" in ok.stdout
    path = root / CASE.name / "expected.ipvs"
    good = path.read_text()
    path.write_text(good.replace(" -s mh -p 900 -b mh-port\n", " -s mh -p 900\n", 1))
    bad = run("golden", str(root))
    assert bad.exit_code == 1 and "DIFFERS  ipvs-scheduler-mh [ipvs]" in bad.stdout
    assert "+-A -t 10.112.70.4:443 -s mh -p 900 -b mh-port" in bad.stdout
    fixed = run("golden", str(root), "--update")
    assert fixed.exit_code == 0 and path.read_text() == good
