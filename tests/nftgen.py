"""Small builders for the nftables tests: Kubernetes objects as dicts, compiled in nftables mode.

Every scenario uses the node `edge-2` (192.0.2.20, pods 10.70.2.0/24, cluster
CIDR 10.70.0.0/16); names and addresses are invented.
"""

from __future__ import annotations

import base64
import hashlib

from rulegen.dataplane.nft import state
from rulegen.diagnostics import Place, Report
from rulegen.loader import load_objects
from rulegen.pipeline import Compiled, Timings, compile_inputs

NODE = "edge-2"
NODE_IP = "192.0.2.20"
NODE_IP6 = "2001:db8:2::20"
CLUSTER_CIDR = "10.70.0.0/16"


def hashed(base: str) -> str:
    """kube-proxy's hashAndTruncate, written independently of rulegen.naming."""
    h = base64.b32encode(hashlib.sha256(base.encode()).digest()).decode()[:8]
    full = h + "-" + base
    return full if len(full) <= 240 else full[:237] + "..."


def node(addresses=(NODE_IP, NODE_IP6), pod_cidrs=("10.70.2.0/24", "fd00:70:2::/64")) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
            "spec": {"podCIDRs": list(pod_cidrs)},
            "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]}}


def config(**fields) -> dict:
    doc = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
           "clusterCIDR": CLUSTER_CIDR}
    doc.update(fields)
    return doc


def service(ns: str, name: str, cip: str, ports, type_: str = "ClusterIP", **spec) -> dict:
    """PORTS: (name, port, protocol[, nodePort]) tuples."""
    s = {"type": type_, "clusterIP": cip, "ports": []}
    for p in ports:
        entry = {"name": p[0], "port": p[1], "protocol": p[2]}
        if len(p) > 3:
            entry["nodePort"] = p[3]
        s["ports"].append(entry)
    status = {}
    lb = spec.pop("lb", None)
    if lb:
        status = {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb]}}
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
            "spec": s, "status": status}


def endpoints(ns: str, svc: str, ports, eps, family: str = "IPv4", slice_name: str = "") -> dict:
    """PORTS: (name, port, protocol); EPS: (ip, node or None[, conditions dict])."""
    out = []
    for e in eps:
        ep = {"addresses": [e[0]]}
        if e[1]:
            ep["nodeName"] = e[1]
        if len(e) > 2:
            ep["conditions"] = e[2]
        out.append(ep)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": slice_name or f"{svc}-{family.lower()}",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": family, "ports": [{"name": p[0], "port": p[1], "protocol": p[2]} for p in ports],
            "endpoints": out}


def service_cidr(name: str, *cidrs: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": name},
            "spec": {"cidrs": list(cidrs)}}


def compile_nft(objs: list, **flags) -> Compiled:
    report = Report()
    places = [(Place("test.yaml", i + 1), o) for i, o in enumerate(objs)]
    inputs = load_objects(places, report)
    assert not [p for p in report.problems if not p.notice], report.lines()
    flags.setdefault("mode", "nftables")
    return compile_inputs(inputs, flags, report, Timings())


def table(objs: list, **flags) -> state.TableState:
    """The table the compiled script leaves in an empty namespace (replayed, not normalised)."""
    return state.replay(compile_nft(objs, **flags).ir)


def rules(st: state.TableState, chain: str) -> list[str]:
    """A chain's rules in order, as the script writes them (comment included)."""
    c = st.chains.get(chain)
    assert c is not None, f"no chain {chain}"
    return [r.rule + (f' comment "{r.comment}"' if r.comment is not None else "") for r in c.rules]


def elements(st: state.TableState, name: str) -> set[str]:
    """A set's or map's elements as the script writes them inside `{ }`."""
    s = st.sets.get(name)
    assert s is not None, f"no set or map {name}"
    out = set()
    for e in s.elements.values():
        text = " . ".join(e.key)
        if e.comment is not None:
            text += f' comment "{e.comment}"'
        if e.value:
            text += " : " + " . ".join(e.value)
        out.add(text)
    return out


def service_chains(st: state.TableState) -> set[str]:
    """The per-service-port chains (their names hold a '/')."""
    return {c for c in st.chains if "/" in c}
