"""The lab's report: the page a person reads (templates/lab.j2) and the `--json` document."""

from __future__ import annotations

from dataclasses import dataclass, field

from .judge import PathResult, _shares
from .probes import LabPlan


@dataclass
class LabReport:
    plan: LabPlan
    run: str
    results: list[PathResult]
    notes: list[str]
    elapsed: float
    left: list[str] = field(default_factory=list)  # namespaces that could not be deleted

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and not self.left

    def to_json(self) -> dict:
        return {
            "run": self.run, "node_ips": list(self.plan.node_ips), "hostname": self.plan.hostname,
            "client_ip": self.plan.client_ip, "client_pod_ip": self.plan.cpod_ip,
            "endpoints": [{"ip": p.ip, "where": p.where, "node": p.node_name} for p in self.plan.pods],
            "notes": self.notes, "elapsed": round(self.elapsed, 2),
            "paths": [r.to_json() for r in self.results],
            "ok": self.ok, "failed": sum(1 for r in self.results if not r.ok), "left_behind": self.left,
        }


def _pct(x: float) -> str:
    return f"{x * 100:5.1f}%"


def report_text(rep: LabReport) -> str:
    from ..templating import render  # not at import: the lab's helper processes import this package

    where = {p.ip: p.where for p in rep.plan.pods}
    groups: list[dict] = []
    by_spn: dict[str, dict] = {}
    for r in rep.results:
        pr = r.probe
        g = by_spn.get(pr.spn + pr.proto)
        if g is None:
            g = by_spn[pr.spn + pr.proto] = {"spn": pr.spn, "proto": pr.proto, "paths": []}
            groups.append(g)
        rows = []
        shares = _shares(pr)
        answered = r.answered
        for ep in sorted(set(pr.endpoints) | set(r.hits)):
            n = r.hits.get(ep, 0)
            if pr.affinity:
                exp = "one of " + str(len(pr.endpoints))
            elif ep in shares:
                exp = _pct(shares[ep]).strip()
            else:
                exp = "none"
            rows.append({"ep": ep, "where": where.get(ep.rsplit(":", 1)[0], "?"), "hits": n,
                         "share": _pct(n / answered).strip() if answered else "-", "expected": exp})
        if pr.expect == "answer":
            seen = ", ".join(f"{ip} ({n})" for ip, n in sorted(r.peers.items())) or "-"
            if pr.src_ip in rep.plan.node_ips:
                masq = f"source seen: {seen}"
            elif r.masquerade == "kept":
                masq = f"client address kept: {seen}"
            elif r.masquerade == "masqueraded":
                masq = f"masqueraded: {seen}"
            else:
                masq = f"sources seen: {seen}"
            want = {"client": "expected the client's address", "node": "expected a node address",
                    None: "not judged"}[pr.masq]
            masq += f"; {want}"
        else:
            masq = ""
        outcome = []
        if r.refused:
            outcome.append(f"{r.refused} refused")
        if r.timeouts or r.dropped_local:
            outcome.append(f"{r.timeouts + r.dropped_local} timed out/dropped")
        outcome += [f"{n} {e}" for e, n in sorted(r.errors.items())]
        g["paths"].append({
            "kind": pr.kind, "path": pr.path,
            "expect": {"answer": "answer", "refuse": "a refusal"}.get(pr.expect, pr.expect.upper()),
            "why": pr.why, "ok": r.ok, "sent": r.sent, "answered": answered, "rows": rows,
            "p": (f"{r.p_value:.3g}" if r.p_value is not None else None), "affinity": pr.affinity,
            "masq": masq, "outcome": ", ".join(outcome), "problems": r.problems, "notes": r.notes,
        })
    return render("lab.j2", rep=rep, groups=groups, failed=sum(1 for r in rep.results if not r.ok))
