"""The lint checks: each a function of the shared `Context` yielding `Finding`s.

`CHECKS` lists them in the order they run, and the order matters in one way:
root-cause checks (a Service port no EndpointSlice carries, a selector that
matches nothing, a named targetPort no Pod declares) run before the generic
"no endpoints" check and mark the ports they explain, so one broken port
gets one finding that names its cause. Everything a check says about
traffic follows kube-proxy's rules as `plan` and `selection` compute them
(which endpoints are used, when traffic is rejected or dropped); the checks
never recompute endpoint choice on their own.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Callable, Iterable, Iterator

from .. import backends
from ..ipaddr import cidr_contains, endpoint_string, is_loopback
from ..model import Service, ServicePort
from ..plan import PortPlan, skipped
from ..allocate import unschedulable
from .context import Context, Member, place_text, population
from .findings import Finding, port_label
from .labels import selector_text

Check = Callable[[Context], Iterable[Finding]]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def _numeric_target(port: ServicePort) -> int | None:
    """The targetPort as a number (API default: the port itself); None when named."""
    tp = port.target_port
    if tp is None:
        return port.port
    if isinstance(tp, int):
        return tp
    return int(tp) if tp.isdigit() else None


def _targets(pp: PortPlan, external_only: bool = False) -> str:
    """Where a service port is reachable, as the traffic-loss messages name it."""
    out = [] if external_only else [f"{endpoint_string(pp.cluster_ip, pp.port.port)}/{pp.port.protocol}"]
    if pp.node_port:
        out.append(f"NodePort {pp.node_port}/{pp.port.protocol}")
    out += [f"external IP {endpoint_string(ip, pp.port.port)}" for ip in pp.external_ips]
    out += [f"load-balancer IP {endpoint_string(ip, pp.port.port)}" for ip in pp.lb_ips]
    return ", ".join(out)


def _direct(pp: PortPlan) -> str:
    """What still reaches a Local LoadBalancer's node when its health check says down."""
    direct = [f"NodePort {pp.node_port}/{pp.port.protocol}"] if pp.node_port else []
    direct += [f"external IP {endpoint_string(ip, pp.port.port)}" for ip in pp.external_ips]
    if not direct:
        return "anything that still arrives here is dropped"
    return f"clients using this node's {', '.join(direct)} directly are dropped"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _node_list(names: Iterable[str | None]) -> str:
    ns = sorted({n for n in names if n})
    return ", ".join(ns) if ns else "nodes not named"


# --------------------------------------------------------------------- services


def check_cluster_ip(cx: Context) -> Iterator[Finding]:
    for svc in cx.services:
        if not skipped(svc) or svc.headless or svc.type == "ExternalName":
            continue  # proxied, or left out on purpose
        yield cx.finding(
            "RG001", svc,
            "no usable clusterIP (spec.clusterIP missing or not an address): kube-proxy writes no rules, "
            "nothing answers on its ports",
            "give spec.clusterIP as the apiserver allocated it (kubectl get svc -o yaml), "
            "or clusterIP: None for a headless Service",
        )


# --------------------------------------------------------------------- node ports


def check_nodeport_range(cx: Context) -> Iterator[Finding]:
    lo, hi = cx.nodeport_range
    rng = f"{lo}-{hi}"
    for svc in cx.services:
        for port in svc.ports:
            np_ = port.node_port
            if np_ and not lo <= np_ <= hi:
                yield cx.finding(
                    "RG101", svc,
                    f"nodePort {np_}/{port.protocol} is outside the node-port range {rng}: the apiserver "
                    f"rejects it (kube-proxy would still open it on every node)",
                    f"pick a nodePort in {rng} or leave it out to get one allocated; "
                    "if the cluster uses another range, pass --service-node-port-range",
                    port,
                )
        hc = svc.health_check_node_port
        if hc and not lo <= hc <= hi:
            yield cx.finding(
                "RG101", svc,
                f"healthCheckNodePort {hc} is outside the node-port range {rng}: the apiserver rejects it",
                f"pick a healthCheckNodePort in {rng} or leave it out to get one allocated",
            )


def check_nodeport_duplicates(cx: Context) -> Iterator[Finding]:
    users: dict[tuple[str, int], list[tuple[Service, ServicePort | None, str]]] = defaultdict(list)
    for svc in cx.services:
        for port in svc.ports:
            if port.node_port:
                users[(port.protocol, port.node_port)].append(
                    (svc, port, f"Service {svc.key} port {port_label(port.name, port.port, port.protocol)}"))
        if svc.health_check_node_port:
            # kube-proxy's health-check server listens on TCP; a TCP NodePort on it collides.
            users[("TCP", svc.health_check_node_port)].append(
                (svc, None, f"Service {svc.key} healthCheckNodePort"))
    for (proto, np_), group in sorted(users.items()):
        if len(group) < 2:
            continue
        for i, (svc, port, _) in enumerate(group):
            others = "; ".join(desc for j, (_, _, desc) in enumerate(group) if j != i)
            what = "nodePort" if port else "healthCheckNodePort"
            yield cx.finding(
                "RG102", svc,
                f"{what} {np_}/{proto} is also used by {others}: only one of them gets the traffic "
                "(whichever rule comes first in KUBE-NODEPORTS; kube-proxy's order is unspecified)",
                "give each Service port its own nodePort, or leave nodePort out to get one allocated",
                port,
            )


# --------------------------------------------------------------------- ports vs slices and pods


def check_ports_in_slices(cx: Context) -> Iterator[Finding]:
    for pp in cx.plan.ports:
        svc, port = pp.service, pp.port
        if cx.is_explained(svc, port):
            continue  # a named targetPort no pod declares: the slices lack the port because of it
        slice_ports = [sp for sl in cx.family_slices_of(svc) for sp in sl.ports]
        if not slice_ports:
            continue  # no slices with ports: the "no endpoints" check speaks
        if any(sp.name == port.name and sp.protocol == port.protocol and sp.port for sp in slice_ports):
            continue
        cx.explain(svc, port)
        carried = ", ".join(sorted({
            f"{sp.name if sp.name is not None else '<no name>'}:{sp.port}/{sp.protocol}" for sp in slice_ports}))
        tp = port.target_port
        if isinstance(tp, str) and any(sp.name == tp for sp in slice_ports):
            hint = (f"the slice port is named {tp!r} after the targetPort; EndpointSlice ports carry the "
                    f"Service port's name: rename it to {port.name!r}")
        elif any(sp.name == port.name and sp.port for sp in slice_ports):
            other = sorted({sp.protocol for sp in slice_ports if sp.name == port.name})
            hint = (f"the slices carry {port.name or 'the unnamed port'} for {'/'.join(other)} only; "
                    f"set protocol: {port.protocol} on the slice port")
        elif not port.name and any(sp.name is None for sp in slice_ports):
            hint = ('a slice port without a name is ignored by kube-proxy; for an unnamed Service port '
                    'write name: "" on the slice port')
        elif any(sp.name == port.name for sp in slice_ports):
            hint = "the slice port has no port number; set ports[].port to the endpoints' port"
        else:
            hint = (f"add a port named {port.name!r} ({port.protocol}) to the EndpointSlices, "
                    "or regenerate them from the Service")
        yield cx.finding(
            "RG103", svc,
            f"no EndpointSlice of the Service carries this port (they carry {carried}): the port has no "
            f"endpoints and connections to {_targets(pp)} are rejected",
            hint, port,
        )


def _fix_labels(svc: Service, m: Member) -> str:
    """How to give M the labels SVC's selector wants: on the Pod, or in the workload's pod template."""
    wanted = _wanted_label(svc.selector or {}, m.labels)
    if m.kind == "Pod":
        return (f"kubectl label pod -n {svc.namespace} {m.name} --overwrite {wanted} (better: in its template), "
                "or fix the selector")
    return f"set {wanted} in {m.what}'s spec.template.metadata.labels, or fix the selector"


def check_selector(cx: Context) -> Iterator[Finding]:
    for svc in cx.services:
        if svc.type == "ExternalName":
            continue
        chosen = cx.selected_pods(svc)
        if chosen is None:
            continue
        pods = cx.pods_by_namespace[svc.namespace]
        sel = selector_text(svc.selector or {})
        misses = cx.near_misses(svc)
        if not chosen:
            for port in svc.ports:
                cx.explain(svc, port)
            if misses:
                pod, diff = misses[0]
                message = (f"selector {sel} matches none of the {population(pods)} in namespace {svc.namespace}; "
                           f"closest: {pod.what} has {diff}: the Service gets no endpoints")
                hint = f"fix the typo: {_fix_labels(svc, pod)}"
            else:
                message = (f"selector {sel} matches none of the {population(pods)} in namespace {svc.namespace}: "
                           "the Service gets no endpoints")
                hint = (f"compare with kubectl get pods -n {svc.namespace} --show-labels (or the workloads' "
                        "spec.template.metadata.labels) and fix the selector or the labels")
            yield cx.finding("RG301", svc, message, hint)
        elif misses:
            names = ", ".join(f"{p.what} ({d})" for p, d in misses)
            yield cx.finding(
                "RG302", svc,
                f"selector {sel} matches {population(chosen)}, but {names} "
                f"{'almost match: they get' if len(misses) > 1 else 'almost matches: it gets'} no traffic from this Service",
                "correct the mistyped label in the Pod template (or the selector, if those Pods are the intended ones)",
            )


def _wanted_label(selector: dict[str, str], labels: dict[str, str]) -> str:
    off = [(k, v) for k, v in sorted(selector.items()) if labels.get(k) != v]
    return " ".join(f"{k}={v}" for k, v in off)


def _selected(members: list[Member], most: int = 4) -> str:
    """`Deployment web`, or `2 Pods and 1 workload (Pod a, Pod b, Deployment web)`: the selected, for messages."""
    if len(members) == 1:
        return members[0].what
    shown = ", ".join(m.what for m in members[:most])
    more = f" and {len(members) - most} more" if len(members) > most else ""
    return f"{population(members)} ({shown}{more})"


def _declare(members: list[Member]) -> str:
    return "declares" if len(members) == 1 else "declare"


def check_named_target_ports(cx: Context) -> Iterator[Finding]:
    for svc in cx.services:
        chosen = cx.selected_pods(svc)
        if not chosen:
            continue  # no judgement possible, or the selector check already spoke
        for port in svc.ports:
            name = port.target_port
            if not isinstance(name, str) or not name or name.isdigit():
                continue
            if any(cn == name and cproto == port.protocol for p in chosen for cn, _, cproto in p.container_ports):
                continue
            cx.explain(svc, port)
            declared = sorted({f"{cn}:{num}/{cproto}" if cn else f"{num}/{cproto}"
                               for p in chosen for cn, num, cproto in p.container_ports})
            other_proto = sorted({cproto for p in chosen for cn, _, cproto in p.container_ports if cn == name})
            they = "it" if len(chosen) == 1 else "they"
            detail = (f" ({they} {_declare(chosen)} it for {'/'.join(other_proto)} only)" if other_proto
                      else f" ({they} {_declare(chosen)} {', '.join(declared)})" if declared
                      else f" ({they} {_declare(chosen)} no ports)")
            whom = (f"the selected {_selected(chosen)} declares no" if len(chosen) == 1
                    else f"none of the selected {_selected(chosen)} declares a")
            yield cx.finding(
                "RG104", svc,
                f"targetPort {name!r} is a port name, but {whom} {port.protocol} container port named "
                f"{name!r}{detail}: the EndpointSlice controller leaves the port out of the endpoints, so it "
                "has none",
                f"name the container port {name!r} ({port.protocol}) in the Pod template, or use the port number as targetPort",
                port,
            )


def check_declared_target_ports(cx: Context) -> Iterator[Finding]:
    """A numeric targetPort that no selected container declares: legal, and often a typo."""
    for svc in cx.services:
        if svc.headless or svc.type == "ExternalName":
            continue  # no rules: clients reach the pods on whatever port they pick
        chosen = cx.selected_pods(svc)
        if not chosen or not any(p.container_ports for p in chosen):
            continue  # containers that list no ports at all say nothing (ports are informational)
        for port in svc.ports:
            want = _numeric_target(port)
            if want is None:
                continue
            if any(num == want and cproto == port.protocol for p in chosen for _, num, cproto in p.container_ports):
                continue
            declared = sorted({f"{cn}:{num}/{cproto}" if cn else f"{num}/{cproto}"
                               for p in chosen for cn, num, cproto in p.container_ports})
            they = "it" if len(chosen) == 1 else "they"
            yield cx.finding(
                "RG106", svc,
                f"targetPort {want}/{port.protocol} is not a container port of the selected {_selected(chosen)} "
                f"({they} {_declare(chosen)} {', '.join(declared)}): traffic is sent there all the same, and "
                "refused if nothing listens",
                "check the port the container listens on: declare it (containerPort, with a name to use as "
                "targetPort) or correct targetPort",
                port,
            )


def check_unschedulable(cx: Context) -> Iterator[Finding]:
    """Selected workloads whose pods fit none of the input's Nodes (nodeSelector, nodeName, taints)."""
    nodes = cx.inputs.nodes
    if not nodes:
        return  # the Nodes are not in the input: nothing to judge scheduling by
    for svc in cx.services:
        if svc.type == "ExternalName":
            continue
        chosen = cx.selected_pods(svc)
        if not chosen:
            continue
        stuck = [(m, why) for m in chosen if m.workload is not None
                 for why in [unschedulable(m.workload, nodes)] if why]
        if not stuck:
            continue
        every = len(stuck) == len(chosen)
        if every:
            for port in svc.ports:
                cx.explain(svc, port)
        m, why = stuck[0]
        others = f" (and {len(stuck) - 1} more workload(s))" if len(stuck) > 1 else ""
        effect = ("the Service gets no endpoints" if every
                  else "the Service gets endpoints only from the other selected pods")
        yield cx.finding(
            "RG303", svc,
            f"the pods of {m.what}{others} cannot be scheduled: {why}; they stay Pending and {effect}",
            "match the pod template's nodeSelector (or nodeName, tolerations) to the Nodes' labels and taints "
            "(kubectl get nodes --show-labels), or label a Node to fit",
        )


def check_target_port_numbers(cx: Context) -> Iterator[Finding]:
    for svc in cx.services:
        if not svc.selector:
            continue  # selector-less Services manage their own slices; targetPort means nothing there
        for port in svc.ports:
            want = _numeric_target(port)
            if want is None:
                continue
            nums = sorted({sp.port for sl in cx.slices_of(svc) if sl.address_type != "FQDN"
                           for sp in sl.ports
                           if sp.name == port.name and sp.protocol == port.protocol and sp.port})
            if nums and want not in nums:
                carried = ", ".join(str(n) for n in nums)
                yield cx.finding(
                    "RG105", svc,
                    f"targetPort is {want}, but the EndpointSlices carry port {carried} for this Service port: "
                    f"kube-proxy sends traffic to {carried} (the slices are stale or hand-written)",
                    "regenerate the EndpointSlices from the live cluster, or correct targetPort to the port the Pods listen on",
                    port,
                )


# --------------------------------------------------------------------- endpoints


def _conntrack_commands(pp: PortPlan) -> str:
    port = pp.port.port
    cmds = [f"conntrack -D -p udp --orig-dst {pp.cluster_ip} --orig-port-dst {port}"]
    if pp.node_port:
        cmds.append(f"conntrack -D -p udp --orig-port-dst {pp.node_port}")
    cmds += [f"conntrack -D -p udp --orig-dst {ip} --orig-port-dst {port}" for ip in (*pp.external_ips, *pp.lb_ips)]
    return "; ".join(cmds)


def check_input_has_slices(cx: Context) -> Iterator[Finding]:
    """An input without a single EndpointSlice (or Endpoints) says nothing about endpoints.

    That is `kubectl get svc -o yaml` alone, not a cluster where every
    Service lost its Pods: the EndpointSlice controller keeps a slice for
    every Service with a selector, even an empty one. One finding says so;
    the per-port "no endpoints" errors it replaces would all be the same
    guess.
    """
    if cx.inputs.slices:
        return
    # A port a root-cause check explained (a selector matching no Pod, say) is not in doubt.
    empty = [pp for pp in cx.plan.ports if not pp.endpoints and not cx.is_explained(pp.service, pp.port)]
    if not empty:
        return
    services = {(pp.service.namespace, pp.service.name) for pp in empty}
    for pp in empty:
        cx.explain(pp.service, pp.port)
    yield Finding(
        "RG200", "input", "",
        f"the input holds no EndpointSlice or Endpoints object, so the endpoints of {_count(len(services), 'Service')} "
        f"({_count(len(empty), 'port')}) cannot be checked; rules compiled from this input reject every "
        "connection to them",
        "add the slices to the input: kubectl get endpointslices -A -o yaml "
        "(Services and slices together: kubectl get svc,endpointslices -A -o yaml)",
    )


def check_endpoints(cx: Context) -> Iterator[Finding]:
    for pp in cx.plan.ports:
        svc, port = pp.service, pp.port
        eps = pp.endpoints
        if not eps and not cx.inputs.slices:
            continue  # no slice in the whole input: RG200 (or a root-cause check) spoke for this port
        ready = [e for e in eps if e.ready]
        fallback = [e for e in eps if not e.ready and e.serving and e.terminating]
        if port.protocol == "UDP" and not ready:
            state = ("no endpoints" if not eps else
                     f"{len(fallback)} terminating endpoint(s) and none ready" if fallback else
                     f"{len(eps)} endpoint(s), none ready")
            yield cx.finding(
                "RG502", svc,
                f"UDP port with {state}: datagrams to {_targets(pp)} are "
                f"{'rejected' if not fallback else 'sent to endpoints about to exit'}, and the conntrack entries "
                "made meanwhile keep black-holing each client's flow after endpoints are back "
                "(kube-proxy flushes them when it sees endpoints return; rules loaded any other way do not)",
                f"once endpoints are ready, clear the stale entries on every node: {_conntrack_commands(pp)}",
                port,
            )
            continue
        if cx.is_explained(svc, port):
            continue
        if not eps:
            slices = cx.slices_of(svc)
            if not svc.selector and not slices:
                hint = (f"a Service without a selector needs EndpointSlices you write: label them "
                        f"{SERVICE_NAME_LABEL}={svc.name}")
            elif not slices:
                hint = (f"no EndpointSlice in the input: check that Pods match {selector_text(svc.selector or {})} "
                        f"and run, and include kubectl get endpointslices -n {svc.namespace} "
                        f"-l {SERVICE_NAME_LABEL}={svc.name} -o yaml")
            else:
                hint = "the EndpointSlices list no endpoints: scale the workload up or check why its Pods are gone"
            yield cx.finding(
                "RG201", svc,
                f"no endpoints: connections to {_targets(pp)} are rejected", hint, port,
            )
        elif not ready and not fallback:
            yield cx.finding(
                "RG202", svc,
                f"{len(eps)} endpoint(s), none ready or serving: connections to {_targets(pp)} are rejected",
                f"find out why the Pods are not ready: kubectl describe pods -n {svc.namespace} (readiness probes, crash loops)",
                port,
            )
        elif not ready:
            yield cx.finding(
                "RG203", svc,
                f"no ready endpoint: only {len(fallback)} terminating endpoint(s) still serving take the traffic, "
                "and connections are rejected once they exit",
                "check why the replacement Pods are not ready (kubectl rollout status; readiness probes)",
                port,
            )


def check_local_policies(cx: Context) -> Iterator[Finding]:
    node = cx.hostname
    if not node:
        return  # "this node" unknown: nothing local to judge
    for pp in cx.plan.ports:
        svc, port = pp.service, pp.port
        if not pp.sel.has_any or pp.sel.local:
            continue
        usable = [e for e in pp.endpoints if e.ready] or [e for e in pp.endpoints if e.serving and e.terminating]
        none_here = (f"no usable endpoint on node {node} ({len(usable)} in use elsewhere: "
                     f"{_node_list(e.node_name for e in usable)})")
        if pp.ext_local and pp.externally_accessible:
            if svc.type == "LoadBalancer" and pp.hc_node_port:
                yield cx.finding(
                    "RG205", svc,
                    f"externalTrafficPolicy Local and {none_here}: the load balancer's health check on port "
                    f"{pp.hc_node_port} marks this node down; {_direct(pp)}",
                    f"expected for a Local LoadBalancer: make sure the load balancer checks healthCheckNodePort "
                    f"{pp.hc_node_port} and clients do not use this node's NodePort directly",
                    port,
                )
            else:
                yield cx.finding(
                    "RG204", svc,
                    f"externalTrafficPolicy Local and {none_here}: connections to this node's {_targets(pp, external_only=True)} are dropped",
                    "run an endpoint on every node that receives external traffic (DaemonSet or topology spread), "
                    "send clients only to nodes with endpoints, or use externalTrafficPolicy Cluster (loses the client address)",
                    port,
                )
        if pp.int_local:
            yield cx.finding(
                "RG207", svc,
                f"internalTrafficPolicy Local and {none_here}: this node's Pods get their connections to "
                f"{endpoint_string(pp.cluster_ip, port.port)}/{port.protocol} dropped",
                "run an endpoint on every node whose Pods use the Service (DaemonSet), or use internalTrafficPolicy Cluster",
                port,
            )


def check_local_spread(cx: Context) -> Iterator[Finding]:
    node_objects = [n.name for n in cx.inputs.nodes]
    for pp in cx.plan.ports:
        if not (pp.ext_local and pp.externally_accessible and pp.sel.has_any):
            continue
        # Each node picks its own local endpoints: its ready ones, else its serving+terminating ones.
        ready: dict[str, int] = defaultdict(int)
        draining: dict[str, int] = defaultdict(int)
        for e in pp.endpoints:
            if e.node_name and e.ready:
                ready[e.node_name] += 1
            elif e.node_name and e.serving and e.terminating:
                draining[e.node_name] += 1
        counts = {n: ready.get(n) or draining[n] for n in set(ready) | set(draining)}
        known = sorted(set(node_objects) | {e.node_name for e in pp.endpoints if e.node_name})
        if len(known) < 2:
            continue
        # This node without an endpoint is the local-policy check's finding, not this one's.
        this_reported = cx.hostname is not None and not pp.sel.local
        empty = [n for n in known if not counts.get(n) and not (this_reported and n == cx.hostname)]
        filled = sorted({c for c in counts.values() if c})
        if not empty and len(filled) < 2:
            continue
        spread = ", ".join(f"{n} {counts.get(n, 0)}" for n in known)
        parts = []
        if len(filled) >= 2:
            parts.append(f"an endpoint on a node with {filled[0]} carries {filled[-1] / filled[0]:g}x the load of "
                         f"one on a node with {filled[-1]} (when the nodes get equal traffic)")
        if empty and pp.service.type == "LoadBalancer" and pp.hc_node_port:
            parts.append(f"{', '.join(empty)} {'has' if len(empty) == 1 else 'have'} none: the load balancer's "
                         f"health check leaves {'it' if len(empty) == 1 else 'them'} out, and NodePort traffic sent there "
                         "directly is dropped")
        elif empty:
            parts.append(f"{', '.join(empty)} drop{'s' if len(empty) == 1 else ''} the external traffic "
                         f"{'it receives' if len(empty) == 1 else 'they receive'}")
        yield cx.finding(
            "RG206", pp.service,
            f"externalTrafficPolicy Local with endpoints per node {spread}: each node spreads its own external "
            f"traffic over its own endpoints only, so {'; and '.join(parts)}",
            "spread replicas evenly over the nodes that get traffic (topologySpreadConstraints, a DaemonSet), "
            "or use externalTrafficPolicy Cluster if the client address is not needed",
            pp.port,
        )


# --------------------------------------------------------------------- addresses


def check_source_ranges(cx: Context) -> Iterator[Finding]:
    for svc in cx.services:
        if svc.source_ranges and svc.type != "LoadBalancer":
            yield cx.finding(
                "RG401", svc,
                f"loadBalancerSourceRanges ({', '.join(svc.source_ranges)}) on a {svc.type} Service: kube-proxy "
                "only filters traffic to load-balancer IPs, so nothing is restricted",
                "make it type LoadBalancer, or restrict sources with a NetworkPolicy or the node firewall",
            )


def check_external_ips(cx: Context) -> Iterator[Finding]:
    service_ranges = cx.settings.service_cidrs
    for svc in cx.services:
        if not svc.external_ips or svc.type == "ExternalName":
            continue
        ports = ", ".join(f"{p.port}/{p.protocol}" for p in svc.ports) or "its ports"
        for ip in svc.external_ips:
            node = cx.node_addresses.get(ip)
            if node:
                yield cx.finding(
                    "RG402", svc,
                    f"externalIP {ip} is an address of node {node}: kube-proxy captures every connection to "
                    f"{ip} on {ports}, including ones meant for the node itself",
                    "use an address no node owns (routed to the nodes), or a NodePort / LoadBalancer Service",
                )
            inside = [what for cidr, what in cx.pod_ranges if cidr_contains(cidr, ip)]
            if inside:
                yield cx.finding(
                    "RG403", svc,
                    f"externalIP {ip} is inside {inside[0]} ({_cidr_of(cx.pod_ranges, inside[0])}): connections to a "
                    f"Pod with that address on {ports} go to this Service instead",
                    "use an address outside the pod network",
                )
            rng = next((c for c in service_ranges if cidr_contains(c, ip)), None)
            if rng:
                yield cx.finding(
                    "RG404", svc,
                    f"externalIP {ip} is inside the service range {rng}: a ClusterIP the apiserver allocates "
                    "there collides with it",
                    "use an address outside the service ranges",
                )


def _cidr_of(ranges: list[tuple[str, str]], what: str) -> str:
    return next(c for c, w in ranges if w == what)


# --------------------------------------------------------------------- masquerading


def check_affinity(cx: Context) -> Iterator[Finding]:
    for svc in cx.services:
        if svc.session_affinity != "ClientIP" or svc.headless or svc.type == "ExternalName":
            continue
        why = []
        proxied = [i.ip for i in svc.lb_ingress if i.ip_mode == "Proxy"]
        if proxied:
            why.append(f"load-balancer ingress {', '.join(proxied)} has ipMode Proxy: every client arrives from "
                       "the load balancer's own address, so all of them stick to one endpoint")
        external = [p for p in svc.ports if p.node_port] or svc.external_ips or [i for i in svc.lb_ingress if i.ip_mode != "Proxy"]
        if external and svc.external_traffic_policy != "Local":
            why.append("externalTrafficPolicy Cluster with NodePort/load-balancer/external IP access: external "
                       "clients are masqueraded to the node's address before they reach the endpoint, and each "
                       "node keeps its own affinity table, so a client spread over nodes is not sticky")
        if cx.settings.masquerade_all:
            why.append("masqueradeAll is on: every connection reaches the endpoint from a node address, so the "
                       "endpoint sees one client per node (kube-proxy's affinity still keys on the real source, per node)")
        if why:
            yield cx.finding(
                "RG501", svc,
                "sessionAffinity ClientIP, but " + "; and ".join(why),
                "use externalTrafficPolicy Local (keeps the client address), do affinity at the load balancer or "
                "ingress (e.g. a cookie), or drop sessionAffinity",
            )


# --------------------------------------------------------------------- slices


def check_slices(cx: Context) -> Iterator[Finding]:
    seen: set[tuple[str, str, str]] = set()
    for sl in sorted(cx.inputs.slices, key=lambda s: (s.namespace, s.name)):
        kind = sl.place.kind if sl.place and sl.place.kind else "EndpointSlice"
        name = sl.place.name if sl.place and sl.place.name and kind == "Endpoints" else f"{sl.namespace}/{sl.name}"
        where = place_text(sl.place)
        if not sl.service_name:
            owner = max((s for s in cx.services if s.namespace == sl.namespace and sl.name.startswith(s.name + "-")),
                        key=lambda s: len(s.name), default=None)
            guess = owner.name if owner else "<service>"
            yield Finding(
                "RG601", kind, name,
                f"no {SERVICE_NAME_LABEL} label: kube-proxy ignores this slice "
                f"({len(sl.endpoints)} endpoint(s) serve no Service)",
                f"add the label {SERVICE_NAME_LABEL}: {guess} (and endpointslice.kubernetes.io/managed-by for a "
                "slice you manage)",
                where=where,
            )
        elif (sl.namespace, sl.service_name) not in cx.service_keys and (kind, name, sl.service_name) not in seen:
            seen.add((kind, name, sl.service_name))
            yield Finding(
                "RG602", kind, name,
                f"belongs to Service {sl.namespace}/{sl.service_name}, which is not in the input: kube-proxy "
                "writes no rules for it",
                "include the Service in the input, or delete the stale slice",
                where=where,
            )


# --------------------------------------------------------------------- exposure


def check_nodeport_exposure(cx: Context) -> Iterator[Finding]:
    s = cx.settings
    fam = s.family
    backend = backends.get(s.mode)
    # Where this mode takes NodePorts: an unset nodePortAddresses is every address in iptables
    # mode, the primary node IP in nftables mode.
    match_all, listed = backend.nodeport_ips(s, fam)
    # Only a mode that routes 127.0.0.1 to NodePorts (route_localnet: iptables) exposes them there.
    localhost = backend.localhost_nodeports and s.localhost_nodeports_effective(fam)
    here = [ip for ip in (s.node_ips_of(fam) if match_all else listed) if not is_loopback(ip)]
    _, cidrs = s.nodeport_cidrs(fam)
    others = []
    for node in cx.inputs.nodes:
        if node.name == s.hostname:
            continue
        theirs = replace(s, hostname=node.name, node_ips=node.addresses)
        all_n, listed_n = backend.nodeport_ips(theirs, fam)
        ips = [ip for ip in (theirs.node_ips_of(fam) if all_n else listed_n) if not is_loopback(ip)]
        if ips:
            others.append(f"node {node.name} {', '.join(ips)}")
    if here:
        addrs = ", ".join(here) + (f" (node {s.hostname})" if s.hostname else "")
    elif match_all:
        addrs = "every address of every node (no node address given)"
    else:
        addrs = "no address of this node (nodePortAddresses match none)"
    if others:
        addrs += "; " + "; ".join(others)
    if localhost:
        addrs += "; and 127.0.0.1 (localhost NodePorts are on)"
    if match_all:
        scope = "every node address"
    elif s.nodeport_addresses is None:
        scope = "the primary node address (this mode's default when nodePortAddresses is unset)"
    else:
        scope = f"the node addresses in nodePortAddresses ({', '.join(cidrs)})"
    for svc in cx.services:
        if skipped(svc):
            continue  # kube-proxy writes no rules for it, so opens no port (RG001 says why)
        for port in svc.ports:
            if not port.node_port:
                continue
            note = "; loadBalancerSourceRanges do not restrict it" if svc.source_ranges else ""
            hint = ("if that is more than intended: restrict nodePortAddresses, firewall the port, or use a ClusterIP "
                    "Service behind an ingress")
            if localhost:
                hint += "; any local process reaches it on 127.0.0.1 unless iptables.localhostNodePorts is false"
            yield cx.finding(
                "RG701", svc,
                f"NodePort {port.node_port}/{port.protocol} is open to any source on {scope}: {addrs}{note}",
                hint, port,
            )


CHECKS: tuple[Check, ...] = (
    check_cluster_ip,
    check_nodeport_range,
    check_nodeport_duplicates,
    check_selector,  # root causes first: they mark the ports they explain
    check_named_target_ports,
    check_unschedulable,
    check_ports_in_slices,
    check_target_port_numbers,
    check_declared_target_ports,
    check_input_has_slices,  # before the per-port endpoint checks: it stands for all of them
    check_endpoints,
    check_local_policies,
    check_local_spread,
    check_source_ranges,
    check_external_ips,
    check_affinity,
    check_slices,
    check_nodeport_exposure,
)
