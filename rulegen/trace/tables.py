"""Behaviour tables: `trace.yaml` beside a golden case, saying which packets go where.

A table is a YAML list; each entry names one connection and what must
happen to it:

    - name: outside client to the NodePort          # optional
      src: 203.0.113.10                             # optional (default outside client)
      dst: 172.19.8.23:31080
      proto: tcp                                    # optional, tcp
      in_iface: cbr0                                # optional
      expect:
        verdict: DNAT                               # DNAT | ACCEPT | DROP | REJECT
        destinations: {10.60.2.44:8000: 1/2, 10.60.3.31:8000: 1/2}
        masquerade: true                            # or {endpoint: bool}
        local: {10.60.3.31:8000: true}              # optional: on this node?
        affinity: 600                               # optional: ClientIP timeout
      differs:                                      # optional: where kube-proxy's modes differ
        nftables:                                   # a mode's name (rulegen --mode)
          because: no localhost NodePorts           # required: the cause, as README.md's
          verdict: ACCEPT                           #   "Where the modes differ" names it
          destinations: {}                          # replaces these keys of `expect` in that mode

Chances are exact fractions (`1/3`) or decimals (`0.5`). `expect` holds in
every mode; `differs` gives, per mode, the keys whose answer is another
there and why (`load_table(path, mode)` applies them; without a mode, the
table is read as `expect` says). The tests run each table against every
mode's compiled rules and against the kernel's own dump; the lab can
compare its hit counts with the `destinations` chances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from .. import backends
from ..diagnostics import UsageError
from .model import TraceResult

TABLE_FILE = "trace.yaml"
_ENTRY_KEYS = {"name", "src", "dst", "proto", "in_iface", "expect", "differs"}
_EXPECT_KEYS = {"verdict", "destinations", "masquerade", "local", "affinity"}
VERDICTS = ("DNAT", "ACCEPT", "DROP", "REJECT")


@dataclass(frozen=True)
class Check:
    name: str
    src: str | None
    dst: str  # IP:PORT / [IPv6]:PORT
    proto: str
    verdict: str
    destinations: dict[str, Fraction]
    masquerade: bool | dict[str, bool]
    in_iface: str | None = None
    local: dict[str, bool] = field(default_factory=dict)
    affinity: int | None = None
    because: str | None = None  # why this mode's answer is not the common one (None: it is)

    def dst_parts(self) -> tuple[str, int]:
        host, _, port = self.dst.rpartition(":")
        return host.strip("[]"), int(port)


def fraction(value: Any, where: str) -> Fraction:
    if isinstance(value, bool):
        raise UsageError(f"{where}: {value!r} is not a chance")
    try:
        f = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{where}: {value!r} is not a chance (write 1/3 or 0.5)") from None
    if not 0 <= f <= 1:
        raise UsageError(f"{where}: {value!r} is not between 0 and 1")
    return f


def differences(path: str | Path) -> list[tuple[str, str, str]]:
    """(entry name, mode, cause) for every `differs` of a table (checked as `load_table` checks it)."""
    load_table(path)
    out = []
    for i, item in enumerate(_read(Path(path)), 1):
        for mode, over in (item.get("differs") or {}).items():
            out.append((str(item.get("name") or f"entry {i}"), str(mode), str(over["because"])))
    return out


def _read(path: Path) -> list:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"{path}: cannot read: {e}") from None
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of connections")
    return data


def load_table(path: str | Path, mode: str | None = None) -> list[Check]:
    """The table at PATH as MODE must answer it (`differs.MODE` applied); without MODE, `expect` as written."""
    path = Path(path)
    data = _read(path)
    out = []
    for i, item in enumerate(data, 1):
        where = f"{path}: entry {i}"
        if not isinstance(item, dict):
            raise UsageError(f"{where}: expected a mapping")
        unknown = set(item) - _ENTRY_KEYS
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        exp = item.get("expect")
        if not isinstance(exp, dict) or "verdict" not in exp or "dst" not in item:
            raise UsageError(f"{where}: needs dst and expect.verdict")
        unknown = set(exp) - _EXPECT_KEYS
        if unknown:
            raise UsageError(f"{where}: expect: unknown key(s) {', '.join(sorted(unknown))}")
        differs = item.get("differs") or {}
        if not isinstance(differs, dict):
            raise UsageError(f"{where}: differs: expected a mapping of mode → keys of expect")
        because = None
        for m, over in differs.items():
            if m not in backends.modes():
                raise UsageError(f"{where}: differs: {m!r} is not a mode (modes: {', '.join(backends.modes())})")
            if not isinstance(over, dict) or not str(over.get("because") or "").strip():
                raise UsageError(f"{where}: differs.{m}: needs `because` (why kube-proxy's {m} mode differs)")
            unknown = set(over) - _EXPECT_KEYS - {"because"}
            if unknown:
                raise UsageError(f"{where}: differs.{m}: unknown key(s) {', '.join(sorted(unknown))}")
            if m == mode:
                exp = {**exp, **{k: v for k, v in over.items() if k != "because"}}
                because = str(over["because"])
        if exp["verdict"] not in VERDICTS:
            raise UsageError(f"{where}: expect.verdict {exp['verdict']!r} is not one of {', '.join(VERDICTS)}")
        dests = {str(k): fraction(v, f"{where}: destinations[{k}]") for k, v in (exp.get("destinations") or {}).items()}
        masq = exp.get("masquerade", False)
        if isinstance(masq, dict):
            masq = {str(k): bool(v) for k, v in masq.items()}
        out.append(Check(
            name=str(item.get("name") or f"entry {i}"), src=None if item.get("src") is None else str(item["src"]),
            dst=str(item["dst"]), proto=str(item.get("proto") or "tcp"), verdict=exp["verdict"],
            destinations=dests, masquerade=masq, in_iface=item.get("in_iface"),
            local={str(k): bool(v) for k, v in (exp.get("local") or {}).items()},
            affinity=exp.get("affinity"), because=because,
        ))
    return out


def problems(result: TraceResult, check: Check) -> list[str]:
    """What in `result` differs from `check` (empty when it matches)."""
    out = []
    if result.verdict != check.verdict:
        out.append(f"verdict {result.verdict}, expected {check.verdict}")
    got = result.shares()
    if got != check.destinations:
        show = {k: str(v) for k, v in got.items()}
        want = {k: str(v) for k, v in check.destinations.items()}
        out.append(f"destinations {show}, expected {want}")
    if isinstance(check.masquerade, dict):
        for ep, want_m in check.masquerade.items():
            ds = [d for d in result.destinations if d.endpoint == ep]
            got_m = any(d.masquerade for d in ds)
            if not ds or got_m != want_m:
                out.append(f"masquerade for {ep}: {got_m if ds else 'not reached'}, expected {want_m}")
    elif result.masquerade != check.masquerade:
        out.append(f"masquerade {result.masquerade}, expected {check.masquerade}")
    for ep, want_l in check.local.items():
        ds = [d for d in result.destinations if d.endpoint == ep]
        if not ds or ds[0].local != want_l:
            out.append(f"local for {ep}: {ds[0].local if ds else 'not reached'}, expected {want_l}")
    if check.affinity is not None:
        got_a = {d.affinity for d in result.destinations}
        if got_a != {check.affinity}:
            out.append(f"affinity {sorted(got_a, key=str)}, expected {check.affinity}")
    total = sum(result.outcomes.values(), Fraction(0))
    if total != 1:
        out.append(f"the paths' chances add up to {total}, not 1")
    return out
