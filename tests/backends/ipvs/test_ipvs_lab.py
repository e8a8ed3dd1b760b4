"""The lab's plan in IPVS mode: each path expects what IPVS mode's tracer says, where iptables mode differs too."""

from __future__ import annotations

from pathlib import Path

from rulegen import lab
from rulegen.pipeline import compile_files

FIX = Path(__file__).resolve().parents[3] / "fixtures"


def plans(case: str) -> tuple[lab.LabPlan, lab.LabPlan]:
    return tuple(lab.build_plan(compile_files([str(FIX / case)], {"mode": m}), requests=30)  # type: ignore[return-value]
                 for m in ("iptables", "ipvs"))


def by_path(plan: lab.LabPlan) -> dict[str, lab.Probe]:
    return {f"{p.proto} {p.path}": p for p in plan.probes}


def test_ipvs_paths_take_the_tracers_outcome_where_the_modes_differ():
    ipt, ipvs = plans("ipvs-scheduler-wrr")
    a, b = by_path(ipt), by_path(ipvs)
    assert a.keys() == b.keys()
    # externalTrafficPolicy Local with no local endpoint: iptables drops, IPVS falls back to the cluster's
    np_ = "tcp client 203.0.113.10 -> 172.19.8.23:30554"
    assert a[np_].expect == "drop" and a[np_].count == lab.NEGATIVE_PROBES
    assert (b[np_].expect, b[np_].endpoints, b[np_].masq, b[np_].count, b[np_].timeout) == (
        "answer", ("10.60.1.66:8554", "10.60.2.66:8554"), "client", 30, lab.ANSWER_TIMEOUT)
    assert b[np_].why.startswith("IPVS mode: scheduler wrr")
    # 127.0.0.1 NodePorts: no virtual server there
    lo = "udp node 127.0.0.1 -> 127.0.0.1:30504"
    assert a[lo].expect == "answer" and (b[lo].expect, b[lo].endpoints, b[lo].count) == ("refuse", (), 6)
    # ClusterIP: the same in both modes, the probe untouched
    cip = "tcp pod 10.60.3.254 -> 10.112.72.6:554"
    assert a[cip] == b[cip]
    assert ipvs.notes[-1] == "IPVS mode: 6 path(s) expected otherwise than in iptables mode (from IPVS mode's tracer)"


def test_a_virtual_server_without_real_servers_behind_a_source_range_drops():
    ipt, ipvs = plans("no-endpoints")
    a, b = by_path(ipt), by_path(ipvs)
    lb = "tcp client 203.0.113.10 -> 192.0.2.101:443"
    assert (a[lb].expect, b[lb].expect) == ("reject", "drop")
    assert {k for k in a if a[k] != b[k]} == {lb, "tcp node 127.0.0.1 -> 127.0.0.1:30300"}
