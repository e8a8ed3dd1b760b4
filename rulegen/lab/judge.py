"""Judging what a probe saw: shares against the plan with a chi-square test, masquerade, refusals and drops.

Pure functions and records: the answers one path got in, a `PathResult`
out. The chi-square goodness-of-fit test is written with `math` only (the
regularised upper incomplete gamma function), so the lab needs no
statistics package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .probes import Probe

MIN_EXPECTED = 10.0  # an endpoint expected this many answers must have answered
P_FAIL = 0.001


def gammaincc(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x).

    Series for P(a, x) below a+1, Lentz's continued fraction above it (where
    each converges quickly), as in any numerical-methods text.
    """
    if a <= 0:
        raise ValueError("a must be positive")
    if x <= 0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        n = a
        for _ in range(10000):
            n += 1.0
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return min(1.0, max(0.0, 1.0 - total * math.exp(log_front)))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < tiny:
            d = tiny
        c = b + an / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return min(1.0, max(0.0, math.exp(log_front) * h))


def chi2_sf(stat: float, df: int) -> float:
    """P(X >= stat) for X chi-square distributed with df degrees of freedom."""
    if df <= 0:
        return 1.0
    return gammaincc(df / 2.0, stat / 2.0)


def chi_square_p(observed: list[int], shares: list[float]) -> float | None:
    """Goodness-of-fit p-value of counts against expected shares (None when untestable)."""
    total = sum(observed)
    if len(observed) < 2 or total == 0:
        return None
    stat = 0.0
    for o, s in zip(observed, shares):
        e = s * total
        if e <= 0:
            return None
        stat += (o - e) ** 2 / e
    return chi2_sf(stat, len(observed) - 1)


@dataclass
class PathResult:
    probe: Probe
    sent: int
    hits: dict[str, int]  # every answering endpoint
    peers: dict[str, int]  # source addresses the servers saw
    refused: int
    timeouts: int
    dropped_local: int  # EPERM: the node's OUTPUT dropped its own packet
    errors: dict[str, int]
    p_value: float | None
    masquerade: str  # kept | masqueraded | mixed | none
    problems: list[str]
    notes: list[str]
    # endpoint → source addresses it saw: masquerade per destination (tests compare it with the tracer's)
    peers_by_endpoint: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def answered(self) -> int:
        return sum(self.hits.values())

    def to_json(self) -> dict:
        pr = self.probe
        shares = _shares(pr)
        return {
            "service": pr.spn.split(":")[0], "service_port": pr.spn, "protocol": pr.proto, "kind": pr.kind,
            "path": pr.path, "source": pr.source, "source_ip": pr.src_ip, "destination": f"{pr.dst}:{pr.port}",
            "expect": pr.expect, "why": pr.why, "sent": self.sent, "answered": self.answered,
            "endpoints": dict(sorted(self.hits.items())), "expected_shares": shares,
            "affinity": pr.affinity, "p_value": self.p_value,
            "refused": self.refused, "timeout": self.timeouts + self.dropped_local, "errors": self.errors,
            "masquerade": {"expected": pr.masq, "observed": self.masquerade, "peers": dict(sorted(self.peers.items())),
                           "by_endpoint": {ep: dict(sorted(seen.items()))
                                           for ep, seen in sorted(self.peers_by_endpoint.items())}},
            "verdict": "ok" if self.ok else "fail", "problems": self.problems, "notes": self.notes,
        }


def _shares(pr: Probe) -> dict[str, float]:
    if not pr.endpoints:
        return {}
    if pr.affinity:
        return {}
    return {ep: 1.0 / len(pr.endpoints) for ep in pr.endpoints}


def judge(pr: Probe, raw: dict, node_ips: tuple[str, ...]) -> PathResult:
    hits: dict[str, int] = {}
    peers: dict[str, int] = {}
    by_ep: dict[str, dict[str, int]] = {}
    for ep, seen in (raw.get("answers") or {}).items():
        hits[ep] = sum(seen.values())
        by_ep[ep] = dict(seen)
        for peer, n in seen.items():
            peers[peer] = peers.get(peer, 0) + n
    errors = dict(raw.get("errors") or {})
    eperm = errors.pop("EPERM", 0)
    refused = int(raw.get("refused", 0))
    timeouts = int(raw.get("timeout", 0))
    sent = int(raw.get("sent", 0))
    problems: list[str] = []
    notes: list[str] = []
    p_value = None
    if raw.get("gave_up"):
        problems.append(f"none of the first {sent} connections got an answer; gave up on the other "
                        f"{pr.count - sent}")
    elif sent < pr.count:
        problems.append(f"only {sent} of {pr.count} connections were sent before the run's deadline")
    answered = sum(hits.values())
    if pr.expect == "answer":
        exp = set(pr.endpoints)
        stray = {ep: n for ep, n in hits.items() if ep not in exp}
        if stray:
            problems.append("answers from endpoints that should get none: "
                            + ", ".join(f"{ep} ({n})" for ep, n in sorted(stray.items())))
        failed = refused + timeouts + eperm + sum(errors.values())
        if failed:
            what = [f"{n} {w}" for n, w in ((refused, "refused"), (timeouts + eperm, "timed out/dropped"))
                    if n] + [f"{n} {e}" for e, n in sorted(errors.items())]
            problems.append(f"{failed} of {sent} connections got no answer ({', '.join(what)})")
        good = {ep: hits.get(ep, 0) for ep in pr.endpoints}
        n_good = sum(good.values())
        if pr.affinity:
            answering = [ep for ep, n in hits.items() if n]
            if len(answering) > 1:
                problems.append(f"ClientIP affinity: one client's connections went to {len(answering)} endpoints")
        elif n_good:
            share = 1.0 / len(pr.endpoints)
            silent = [ep for ep, n in good.items() if n == 0]
            if silent and share * n_good >= MIN_EXPECTED:
                problems.append(f"{', '.join(silent)} never answered (expected ~{share * n_good:.0f} each)")
            elif silent:
                notes.append(f"{len(silent)} endpoint(s) did not answer ({', '.join(silent[:4])}"
                             f"{', ...' if len(silent) > 4 else ''}); too few requests to require every one")
            p_value = chi_square_p(list(good.values()), [share] * len(good))
            if p_value is not None and p_value < P_FAIL:
                problems.append(f"shares differ from the expected equal split (chi-square p={p_value:.2g})")
    else:
        if answered:
            what = "a refusal" if pr.expect == "refuse" else pr.expect.upper()
            problems.append(f"{answered} connection(s) answered where {what} was expected")
        if pr.expect in ("reject", "refuse"):
            other = timeouts + eperm + sum(errors.values())
            if other:
                what = "REJECT (refused at once)" if pr.expect == "reject" else "a refusal (nothing listens)"
                problems.append(f"expected {what}, but {other} connection(s) timed out or failed")
        else:
            other = refused + sum(errors.values())
            if other:
                problems.append(f"expected DROP (no answer), but {other} connection(s) were refused or failed")
    masq = _masquerade_seen(peers, pr.src_ip)
    if pr.masq and answered:
        if pr.masq == "client" and masq != "kept":
            problems.append(f"the client address {pr.src_ip} should arrive intact; servers saw "
                            + ", ".join(sorted(peers)))
        elif pr.masq == "node" and not all(p in node_ips for p in peers):
            problems.append("the source should be a node address; servers saw " + ", ".join(sorted(peers)))
    return PathResult(pr, sent, hits, peers, refused, timeouts, eperm, errors, p_value, masq, problems, notes, by_ep)


def _masquerade_seen(peers: dict[str, int], src_ip: str) -> str:
    if not peers:
        return "none"
    if set(peers) == {src_ip}:
        return "kept"
    if src_ip not in peers:
        return "masqueraded"
    return "mixed"
