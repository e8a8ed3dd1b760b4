"""Inside the IPVS VM: `rulegen lab --mode-compare ipvs:nftables` agrees with `rulegen migrate --from ipvs`.

The Services of the migrate-fixtures cases where IPVS differs from
nftables mode (localhost-nodeport and secondary-address: NodePorts on the
second node address; scheduler-sh: the source-hashing scheduler;
clusterip-other-ports: other ports of an IPVS ClusterIP, which nftables
rejects as IPVS does) go into one input with scheduler-sh's configuration,
so the VM builds one lab, loads IPVS mode's objects, sends, swaps in
nftables mode's table and sends again. Every path must agree with
migrate's traces, migrate's differences on the lab's clients must be the
paths it reports, and the differences the cases are about must be seen in
the traffic. A bounded number of connections (6 per path), one run, the
lab's own time limit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rulegen import lab
from rulegen.lab import compare, topology
from rulegen.migrate import migrate
from rulegen.pipeline import compile_files
from rulegen.diagnostics import Report

pytestmark = [pytest.mark.ipvs_kernel, pytest.mark.root]

CASES = Path(__file__).resolve().parents[2] / "migrate-fixtures"
FIXTURES = ("localhost-nodeport", "secondary-address", "clusterip-other-ports", "scheduler-sh")
REQUESTS = 6


def _combined(tmp_path: Path) -> Path:
    """The four cases' Services and EndpointSlices, one Node, scheduler-sh's KubeProxyConfiguration."""
    docs, node, config = [], None, None
    for case in FIXTURES:
        for d in yaml.safe_load_all((CASES / case / "input.yaml").read_text()):
            if d["kind"] in ("Service", "EndpointSlice"):
                docs.append(d)
            elif d["kind"] == "Node":
                node = d
            elif d["kind"] == "KubeProxyConfiguration" and case == "scheduler-sh":
                config = d
    assert node is not None and config is not None and config["ipvs"]["scheduler"] == "sh"
    out = tmp_path / "ipvs-cases.yaml"
    out.write_text(yaml.safe_dump_all([*docs, node, config]))
    return out


def test_ipvs_to_nftables_in_traffic_agrees_with_migrate(tmp_path, monkeypatch):
    # Endpoint servers starting at once on one emulated CPU can take more than the 20 s a real machine gets.
    monkeypatch.setattr(topology, "SERVER_READY_TIMEOUT", 90.0)
    # ... and a connection may wait its turn at a single-threaded Python server for longer than the 2 s a
    # real machine gives it before it counts as timed out (a DROP).
    monkeypatch.setattr(compare, "ANSWER_TIMEOUT", 15.0)
    path = str(_combined(tmp_path))
    result = migrate([path], {}, "nftables", "ipvs")
    assert result.compiled_from.settings.mode == "ipvs" and result.compiled_from.settings.scheduler == "sh"
    cp = compare.plan_compare(result, lab.build_plan(result.compiled_from, requests=REQUESTS), REQUESTS)

    def recompile(mode):
        return lambda override: compile_files([path], {"mode": mode, **override}, Report())

    rep = compare.run_compare(result, cp, (recompile("ipvs"), recompile("nftables")), 240)
    doc = rep.to_json()
    bad = [f"{p['service']} {p['client']} -> {p['destination']}: {p['problems']}"
           for p in doc["paths"] if p["verdict"] != "agree"]
    assert rep.ok and not bad and not doc["left_behind"], "\n".join(bad)
    assert doc["runs"]["from"] == doc["runs"]["to"]  # one topology: the rules were swapped, not rebuilt

    probed = set(compare.SOURCES)
    want = {(d.scenario.spn, d.scenario.client.kind, d.scenario.entry.address): d.why.cause
            for d in result.differences if d.scenario.client.kind in probed}
    got = {(p["service"], p["client"], p["destination"]): p["migrate"]["cause"] for p in doc["paths"]
           if p["migrate"]["differs"]}
    assert got == want

    by = {(p["service"], p["client"], p["destination"]): p for p in doc["paths"]}
    # NodePorts on the second address: IPVS answers (sh: one endpoint for the one client), nftables does not
    for spn, port in (("shop/storefront:http", 31080), ("voice/relay:http", 31060)):
        for client in ("outside", "pod-here", "node"):
            p = by[(spn, client, f"10.31.0.7:{port}")]
            assert p["migrate"]["cause"] == "nodeport-addresses"
            assert p["from"]["observed"]["outcome"] == "answer" and p["to"]["observed"]["outcome"] != "answer"
            assert p["observed_change"] == ["outcome"]
        # and on the primary address both answer
        assert by[(spn, "outside", f"10.30.0.7:{port}")]["to"]["observed"]["outcome"] == "answer"
    # 127.0.0.1: neither IPVS nor nftables mode takes NodePorts there
    lo = by[("shop/storefront:http", "localhost", "127.0.0.1:31080")]
    assert not lo["migrate"]["differs"] and lo["from"]["observed"]["outcome"] != "answer"
    assert lo["to"]["observed"]["outcome"] != "answer"
    # sh: one client's connections all reach one real server; nftables picks at random
    for client in ("outside", "pod-here"):
        p = by[("billing/ledger:http", client, "10.100.4.80:9090")]
        assert p["migrate"]["cause"] == "balancing"
        assert len(p["from"]["observed"]["endpoints"]) == 1 and p["from"]["observed"]["answered"] == REQUESTS
    # another port of an IPVS ClusterIP: refused in both modes, as migrate says
    for client in ("pod-here", "node"):
        p = by[("infra/dns:http", client, "10.100.4.70:1")]
        assert not p["migrate"]["differs"]
        assert p["from"]["observed"]["outcome"] == p["to"]["observed"]["outcome"] == "refused"
