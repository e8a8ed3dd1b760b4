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
      modes:                                        # optional: where a mode really differs
        ipvs:
          why: IPVS falls back to the cluster endpoints   # required: the reason, said once
          verdict: DNAT                             # any expect key: replaces that key
          destinations: {10.60.2.44:8000: 1/2, 10.60.3.31:8000: 1/2}
        nftables: {skip: "the reason the check does not apply"}

`expect` is kube-proxy's iptables mode; `modes` names the other modes where
kube-proxy itself behaves otherwise, with the keys that change and why
(`for_mode` applies them). Chances are exact fractions (`1/3`), decimals
(`0.5`), or `unknown` where the rules do not fix the share (an IPVS
scheduler that counts live connections). The tests run each table against
the compiled rules of every mode the case has an expected file for, and
against the kernel's own dump; the lab can compare its hit counts with the
`destinations` chances.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from .. import backends
from ..diagnostics import UsageError
from .model import TraceResult

TABLE_FILE = "trace.yaml"
_ENTRY_KEYS = {"name", "src", "dst", "proto", "in_iface", "expect", "modes"}
_EXPECT_KEYS = {"verdict", "destinations", "masquerade", "local", "affinity"}
_MODE_KEYS = _EXPECT_KEYS | {"why", "skip"}
VERDICTS = ("DNAT", "ACCEPT", "DROP", "REJECT")


@dataclass(frozen=True)
class Check:
    name: str
    src: str | None
    dst: str  # IP:PORT / [IPv6]:PORT
    proto: str
    verdict: str
    destinations: dict[str, Fraction | None]  # None: the rules do not fix the share
    masquerade: bool | dict[str, bool]
    in_iface: str | None = None
    local: dict[str, bool] = field(default_factory=dict)
    affinity: int | None = None
    modes: dict[str, dict[str, Any]] = field(default_factory=dict)  # mode → expect keys it replaces (+ why / skip)

    def dst_parts(self) -> tuple[str, int]:
        host, _, port = self.dst.rpartition(":")
        return host.strip("[]"), int(port)

    def for_mode(self, mode: str) -> Check | None:
        """This check as MODE must pass it (its `modes` entry applied); None when it does not apply."""
        over = self.modes.get(mode)
        if not over:
            return self
        if "skip" in over:
            return None
        return replace(self, **{k: v for k, v in over.items() if k in _EXPECT_KEYS})

    def why(self, mode: str) -> str | None:
        """Why MODE differs from the table's `expect` here (None: it does not)."""
        over = self.modes.get(mode) or {}
        return over.get("why") or over.get("skip")


def fraction(value: Any, where: str) -> Fraction | None:
    if isinstance(value, str) and value.strip() == "unknown":
        return None
    if isinstance(value, bool):
        raise UsageError(f"{where}: {value!r} is not a chance")
    try:
        f = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{where}: {value!r} is not a chance (write 1/3, 0.5 or unknown)") from None
    if not 0 <= f <= 1:
        raise UsageError(f"{where}: {value!r} is not between 0 and 1")
    return f


def load_table(path: str | Path) -> list[Check]:
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"{path}: cannot read: {e}") from None
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of connections")
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
        fields = _expect(exp, where)
        modes: dict[str, dict[str, Any]] = {}
        raw_modes = item.get("modes") or {}
        if not isinstance(raw_modes, dict):
            raise UsageError(f"{where}: modes: expected a mapping of mode to what differs")
        for mode, over in raw_modes.items():
            w = f"{where}: modes.{mode}"
            if mode not in backends.modes():
                raise UsageError(f"{w}: {mode!r} is not a mode ({', '.join(backends.modes())})")
            if not isinstance(over, dict) or not over:
                raise UsageError(f"{w}: expected a mapping (the expect keys that differ, and why; or skip)")
            unknown = set(over) - _MODE_KEYS
            if unknown:
                raise UsageError(f"{w}: unknown key(s) {', '.join(sorted(unknown))}")
            if "skip" in over:
                if set(over) != {"skip"} or not isinstance(over["skip"], str) or not over["skip"].strip():
                    raise UsageError(f"{w}: skip takes the reason, alone")
                modes[str(mode)] = {"skip": over["skip"]}
                continue
            if not isinstance(over.get("why"), str) or not over["why"].strip():
                raise UsageError(f"{w}: why: say why the mode differs")
            if set(over) == {"why"}:
                raise UsageError(f"{w}: names no expect key that differs")
            parsed = _expect({"verdict": fields["verdict"], **{k: v for k, v in over.items() if k != "why"}}, w)
            modes[str(mode)] = {k: parsed[k] for k in over if k != "why"} | {"why": over["why"]}
        out.append(Check(
            name=str(item.get("name") or f"entry {i}"), src=None if item.get("src") is None else str(item["src"]),
            dst=str(item["dst"]), proto=str(item.get("proto") or "tcp"), in_iface=item.get("in_iface"),
            modes=modes, **fields,
        ))
    return out


def _expect(exp: dict[str, Any], where: str) -> dict[str, Any]:
    """An `expect` mapping (or a mode's replacement keys on top of its verdict) → Check fields."""
    if exp["verdict"] not in VERDICTS:
        raise UsageError(f"{where}: expect.verdict {exp['verdict']!r} is not one of {', '.join(VERDICTS)}")
    dests = {str(k): fraction(v, f"{where}: destinations[{k}]") for k, v in (exp.get("destinations") or {}).items()}
    masq = exp.get("masquerade", False)
    if isinstance(masq, dict):
        masq = {str(k): bool(v) for k, v in masq.items()}
    return {"verdict": exp["verdict"], "destinations": dests, "masquerade": masq,
            "local": {str(k): bool(v) for k, v in (exp.get("local") or {}).items()},
            "affinity": exp.get("affinity")}


def problems(result: TraceResult, check: Check) -> list[str]:
    """What in `result` differs from `check` (empty when it matches)."""
    out = []
    if result.verdict != check.verdict:
        out.append(f"verdict {result.verdict}, expected {check.verdict}")
    got = result.shares()
    if got != check.destinations:
        show = {k: str(v) if v is not None else "unknown" for k, v in got.items()}
        want = {k: str(v) if v is not None else "unknown" for k, v in check.destinations.items()}
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
    if None in result.outcomes.values():
        out.append(f"the outcomes' chances are not all known: {result.outcomes}")
    else:
        total = sum(result.outcomes.values(), Fraction(0))  # type: ignore[arg-type]
        if total != 1:
            out.append(f"the paths' chances add up to {total}, not 1")
    return out
