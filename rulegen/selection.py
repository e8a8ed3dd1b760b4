"""Which endpoints a service port uses: kube-proxy's CategorizeEndpoints, once for every backend.

Given a service port's endpoints (sorted, de-duplicated) this decides the
cluster-policy list, the local-policy list, the endpoints that need a
per-endpoint object (`all_reachable`), and whether any usable endpoint exists
anywhere. Ready endpoints first; when none, serving+terminating ones (the
graceful-termination fallback); topology hints narrow the cluster list only.
It is a pure function of its arguments so that every backend, the tracer and
lint share one answer.
"""

from __future__ import annotations

from itertools import compress
from operator import attrgetter

from msgspec import Struct

# C-level scans: a 10k-Service cluster runs these over ~130k endpoints.
_ready = attrgetter("ready")
_zone_hints = attrgetter("zone_hints")
_node_hints = attrgetter("node_hints")


class EndpointInfo(Struct, frozen=True, gc=False):
    """One endpoint of one service port, as the backends use it."""

    ip: str
    port: int
    ep: str  # "ip:port" / "[ip]:port"
    ready: bool
    serving: bool
    terminating: bool
    local: bool
    node_name: str | None = None
    zone_hints: tuple[str, ...] | None = None
    node_hints: tuple[str, ...] | None = None


class Selection(Struct, frozen=True, gc=False):
    cluster: tuple[EndpointInfo, ...]
    local: tuple[EndpointInfo, ...]
    all_reachable: tuple[EndpointInfo, ...]
    has_any: bool
    topology: str = ""  # "", "PreferSameZone", "PreferSameNode"
    local_fallback: bool = False  # local list is serving+terminating endpoints


def topology_mode(endpoints, node_name: str | None, zone: str | None, prefer_same_node: bool) -> str:
    """kube-proxy's topologyModeFromHints: only when every Ready endpoint carries hints."""
    if not any(map(_zone_hints, endpoints)) and not any(map(_node_hints, endpoints)):
        return ""  # the common case: no hints anywhere, so no Ready endpoint has them
    has_node = has_zone = False
    all_node = all_zone = True
    any_ready = False
    for e in endpoints:
        if not e.ready:
            continue
        any_ready = True
        if not e.node_hints:
            all_node = False
        elif node_name in e.node_hints:
            has_node = True
        if not e.zone_hints:
            all_zone = False
        elif zone in e.zone_hints:
            has_zone = True
    if not any_ready:
        return ""
    if prefer_same_node and all_node and has_node:
        return "PreferSameNode"
    if all_zone and has_zone:
        return "PreferSameZone"
    return ""


def categorize(
    endpoints: tuple[EndpointInfo, ...],
    uses_cluster: bool,
    uses_local: bool,
    node_name: str | None = None,
    zone: str | None = None,
    prefer_same_node: bool = True,
) -> Selection:
    cluster: tuple[EndpointInfo, ...] = ()
    has_any = False
    mode = ""
    if uses_cluster:
        mode = topology_mode(endpoints, node_name, zone, prefer_same_node)
        if mode == "PreferSameNode":
            cluster = tuple(e for e in endpoints if e.ready and node_name in (e.node_hints or ()))
        elif mode == "PreferSameZone":
            cluster = tuple(e for e in endpoints if e.ready and zone in (e.zone_hints or ()))
        else:
            cluster = tuple(compress(endpoints, map(_ready, endpoints)))
        if not cluster:
            cluster = tuple(e for e in endpoints if e.serving and e.terminating)
        has_any = bool(cluster)
    if not uses_local:
        return Selection(cluster, (), cluster, has_any, mode)

    local_ready = local_st = False
    for e in endpoints:
        if e.ready:
            has_any = True
            local_ready = local_ready or e.local
        elif e.serving and e.terminating:
            has_any = True
            local_st = local_st or e.local
    fallback = False
    local: tuple[EndpointInfo, ...] = ()
    if local_ready:
        local = tuple(e for e in endpoints if e.local and e.ready)
    elif local_st:
        fallback = True
        local = tuple(e for e in endpoints if e.local and e.serving and e.terminating)

    if not uses_cluster:
        return Selection((), local, local, has_any, mode, fallback)
    if not mode and not fallback:
        return Selection(cluster, local, cluster, has_any, mode, fallback)
    # kube-proxy merges the two lists in map order; sorted keeps output stable.
    merged = {e.ep: e for e in cluster}
    for e in local:
        merged[e.ep] = e
    reach = tuple(merged[k] for k in sorted(merged))
    return Selection(cluster, local, reach, has_any, mode, fallback)
