"""Behaviour tables (trace.yaml): per-mode corrections and unknown shares, read and checked."""

from __future__ import annotations

from fractions import Fraction

import pytest

from rulegen.diagnostics import UsageError
from rulegen.trace.tables import load_table

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
