"""Behaviour tables (trace.yaml): per-mode corrections and unknown shares, read and checked."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from rulegen.diagnostics import UsageError
from rulegen import backends
from rulegen.trace.tables import TABLE_FILE, load_table

ROOT = Path(__file__).resolve().parents[2]

ENTRY = """\
- name: one
  dst: 10.96.0.10:80
  expect:
    verdict: DNAT
    destinations: {10.0.0.1:80: 1/2, 10.0.0.2:80: 1/2}
    masquerade: true
"""


def table(tmp_path, text: str):
    p = tmp_path / "trace.yaml"
    p.write_text(text)
    return load_table(p)


def test_a_mode_correction_replaces_only_its_keys(tmp_path):
    [chk] = table(tmp_path, ENTRY + """\
  modes:
    ipvs:
      why: because
      destinations: {10.0.0.1:80: unknown, 10.0.0.2:80: unknown}
    nftables: {skip: not for this mode}
""")
    assert chk.for_mode("iptables") is chk
    ipvs = chk.for_mode("ipvs")
    assert ipvs.destinations == {"10.0.0.1:80": None, "10.0.0.2:80": None}
    assert (ipvs.verdict, ipvs.masquerade) == ("DNAT", True)  # untouched keys stay
    assert chk.destinations == {"10.0.0.1:80": Fraction(1, 2), "10.0.0.2:80": Fraction(1, 2)}
    assert chk.why("ipvs") == "because" and chk.why("iptables") is None
    assert chk.for_mode("nftables") is None and chk.why("nftables") == "not for this mode"


@pytest.mark.parametrize("modes,msg", [
    ("  modes:\n    kube-router: {why: x, verdict: DROP}\n", "'kube-router' is not a mode"),
    ("  modes:\n    ipvs: {verdict: DROP}\n", "modes.ipvs: why: say why the mode differs"),
    ("  modes:\n    ipvs: {why: x}\n", "names no expect key that differs"),
    ("  modes:\n    ipvs: {why: x, verdict: LOST}\n", "'LOST' is not one of"),
    ("  modes:\n    ipvs: {why: x, colour: red}\n", "unknown key(s) colour"),
    ("  modes:\n    ipvs: {skip: x, verdict: DROP}\n", "skip takes the reason, alone"),
    ("  modes:\n    ipvs: {why: x, destinations: {10.0.0.1:80: most}}\n", "is not a chance"),
    ("  modes: [ipvs]\n", "modes: expected a mapping"),
])
def test_bad_corrections_are_named(tmp_path, modes, msg):
    with pytest.raises(UsageError) as e:
        table(tmp_path, ENTRY + modes)
    assert msg in str(e.value) and "entry 1" in str(e.value)


def _readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("### Where the modes differ")
    return text[start:text.index("\n#", start + 4)]


def test_every_cause_in_the_tables_is_listed_in_the_readme_with_its_mode():
    """A correction's `why` starts with its cause ("CAUSE: detail"); README's "Where the modes differ"
    lists each cause once, in bold, with the modes it concerns."""
    section = _readme_section()
    seen: dict[str, set[str]] = {}
    for d in sorted((ROOT / "fixtures").iterdir()):
        if not (d / TABLE_FILE).is_file():
            continue
        for chk in load_table(d / TABLE_FILE):
            for mode in backends.modes():
                why = chk.why(mode)
                if why is None:
                    continue
                assert ": " in why, f"{d.name}: {chk.name}: modes.{mode}.why must start with its cause (CAUSE: detail)"
                seen.setdefault(why.split(": ", 1)[0], set()).add(mode)
    assert {"no localhost NodePorts", "NodePorts only on the primary node IP", "other ports of a ClusterIP are rejected",
            "unallocated ClusterIPs are dropped", "a Local policy without a local endpoint falls back"} <= set(seen)
    for cause, modes in sorted(seen.items()):
        assert section.count(f"- **{cause}**") == 1, f"README's 'Where the modes differ' does not list {cause!r}"
        head = section.split(f"- **{cause}**", 1)[1].split(")", 1)[0]
        for mode in modes:
            name = "IPVS" if mode == "ipvs" else mode
            assert name in head, f"README names {cause!r} without the {name} mode"
