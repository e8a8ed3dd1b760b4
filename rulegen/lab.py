"""`rulegen lab`: a throw-away node in network namespaces that proves the compiled rules with real traffic.

Topology (IPv4 only). Every namespace is named `rglab-<run id>-<role>`:

    client (203.0.113.10) --veth-- NODE --veth-- cpod (a client pod, inside the pod CIDR)
                                     |--veth-- p0, p1 ...   (endpoints on this node)
                                     |--veth-- far --veth-- p5, p6 ...  (endpoints on other nodes)

* `node` holds the node's IPs on `lo` (so MASQUERADE, which takes the first
  universe-scope address when the outgoing veth has none, picks the primary
  node IP, as on a real node), ip_forward and route_localnet on, and the
  compiled rules (payload plus kube-proxy's jump rules). The node side of
  every veth carries only the link-scope gateway address 169.254.1.1 (the
  Calico pattern); peers reach everything through `default via 169.254.1.1
  onlink`, and the node routes each peer's /32 to its veth. The node's own
  default route points at the client with the primary node IP as source, so
  traffic the node originates to a ClusterIP has a route before OUTPUT DNAT.
  The rules go in through `rulegen.apply` (what `rulegen apply` runs, nfacct
  counters included; where the kernel cannot make them the lab recompiles
  with --no-nfacct and says so). ICMP rate limiting is off in `node`
  (icmp_ratemask=0) so a burst of REJECTs is not mistaken for DROPs.
* one namespace per endpoint IP runs `rulegen.labnet serve` on the ports
  that endpoint serves; it answers with its own address and the source it
  saw. Endpoints whose nodeName is this node hang off the node; every other
  endpoint hangs off one `far` namespace ("other nodes", one for all of
  them) that is itself connected to the node, so a remote endpoint is one
  routed hop further, as in a real cluster. An endpoint whose IP is a node IP
  (hostNetwork) is served inside `node` itself. Replies always come back
  through the node, so conntrack undoes DNAT and SNAT there.
* `client` is outside the cluster; its default route via the node covers
  the node IPs, external IPs and load-balancer IPs. `cpod` is a dedicated
  client pod (not an endpoint, so no hairpin) with an address of this node's
  pod CIDR.

Per service port and access path (ClusterIP from the client pod and from the
node, NodePort from the client to every node IP and from the node to
127.0.0.1, external and load-balancer IPs from the client) the lab knows from
the plan what should happen: which endpoints share the traffic (Cluster
policy: every cluster endpoint equally; Local: the local ones; ClientIP
affinity: all of one client's connections to one endpoint), whether the
client address arrives intact or masqueraded, or whether the connection is
REJECTed (refused at once) or DROPped (times out). It sends the connections
(`rulegen.labnet probe`, one process per source namespace, bounded in count
and time), judges the answers (shares with a chi-square goodness-of-fit test
written with `math` only) and removes everything it made, on success, error,
SIGINT or SIGTERM. It only ever deletes namespaces whose names it generated
in this run and refuses to start if one of those names exists.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .diagnostics import UsageError
from .ipaddr import cidr_contains
from .templating import render

PREFIX = "rglab-"
GATEWAY = "169.254.1.1"  # node side of every node veth (scope link)
FAR_ADDR = "169.254.1.2"  # the "other nodes" namespace on its link to the node
FAR_GATEWAY = "169.254.2.1"  # far side of every remote-endpoint veth
NODE_IP_CANDIDATES = ("192.0.2.10", "192.0.2.20", "192.0.2.30")
CLIENT_CANDIDATES = ("203.0.113.10", "198.51.100.10", "203.0.113.77", "198.51.100.77")
FALLBACK_POD_CIDR = "10.250.0.0/24"
NEGATIVE_PROBES = 6  # connections sent where REJECT/DROP is expected
ANSWER_TIMEOUT = 2.0  # per connection, where an answer is expected
NEGATIVE_TIMEOUT = 1.0  # per connection, where REJECT/DROP is expected (DROP = this long)
GIVE_UP = 16  # a path whose first this many connections all fail is not sent more
MIN_EXPECTED = 10.0  # an endpoint expected this many answers must have answered
P_FAIL = 0.001
SERVER_READY_TIMEOUT = 20.0
SYSCTL = "sysctl"


class LabInterrupted(BaseException):
    """SIGINT or SIGTERM arrived; the lab cleans up and exits.

    A BaseException, like KeyboardInterrupt, so that no library's `except
    Exception` (pyroute2 has some) can swallow it halfway through a step.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupts:
    """SIGINT/SIGTERM → LabInterrupted, except inside `shield()`, where the signal waits.

    Creating a namespace forks a helper (pyroute2) that finishes on its own;
    interrupted halfway, it could make the namespace after cleanup has run.
    So such steps run shielded and the interrupt is raised when they end
    (or, if they fail, after cleanup).
    """

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.depth = 0
        self.pending: int | None = None

    def handler(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.owner:
            # A process forked by a library inherits this handler; it must die
            # as by default, not run our cleanup.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.depth:
            self.pending = self.pending or signum
            return
        raise LabInterrupted(signum)

    @contextmanager
    def shield(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending:
            raise LabInterrupted(self.pending)


# ---------------------------------------------------------------------- statistics


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


# ---------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PodSpec:
    """One endpoint IP: its namespace role, where it hangs, the ports its server opens."""

    ip: str
    where: str  # "local" (off the node), "remote" (behind far), "host" (a node IP: served in node)
    node_name: str | None
    tcp: tuple[int, ...]
    udp: tuple[int, ...]
    index: int  # p<index> namespace / veth name


@dataclass(frozen=True)
class Probe:
    """One service port reached one way, and what the plan says must happen."""

    key: str
    spn: str
    proto: str
    kind: str  # cluster-ip | node-port | localhost-node-port | external-ip | load-balancer
    source: str  # client | cpod | node
    src_ip: str
    dst: str
    port: int
    expect: str  # answer | reject (REJECT rule) | refuse (not captured, nothing listens) | drop
    why: str
    endpoints: tuple[str, ...] = ()  # expected "ip:port" of endpoints, equal shares
    affinity: bool = False
    masq: str | None = None  # "client": source kept; "node": a node address; None: not judged
    count: int = 0
    timeout: float = ANSWER_TIMEOUT

    @property
    def path(self) -> str:
        src = {"client": "client", "cpod": "pod", "node": "node"}[self.source]
        return f"{src} {self.src_ip} -> {self.dst}:{self.port}"


@dataclass
class LabPlan:
    node_ips: tuple[str, ...]
    client_ip: str
    cpod_ip: str
    pods: tuple[PodSpec, ...]
    probes: tuple[Probe, ...]
    hostname: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def namespace_count(self) -> int:
        extra = 1 if any(p.where == "remote" for p in self.pods) else 0
        return 3 + extra + sum(1 for p in self.pods if p.where != "host")


def _pick_free(candidates: tuple[str, ...], used: set[str], avoid_cidrs: tuple[str, ...] = ()) -> str:
    for ip in candidates:
        if ip not in used and not any(cidr_contains(c, ip) for c in avoid_cidrs):
            return ip
    raise UsageError("lab: every spare address it could use for its own namespaces is taken by the input")


def _pick_in_cidr(cidr: str, used: set[str]) -> str | None:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    if net.version != 4 or net.num_addresses < 4:
        return None
    top = int(net.broadcast_address) - 1
    for off in range(min(net.num_addresses - 2, 4096)):
        ip = str(ipaddress.IPv4Address(top - off))
        if ip not in used:
            return ip
    return None


def parse_service_filters(values: tuple[str, ...] | list[str]) -> set[tuple[str, str]]:
    out = set()
    for v in values or ():
        ns, sep, name = v.partition("/")
        if not sep or not ns or not name or "/" in name:
            raise UsageError(f"--service {v!r}: expected NAMESPACE/NAME")
        out.add((ns, name))
    return out


def build_plan(compiled: Any, requests: int = 200, services: tuple[str, ...] = (),
               max_pods: int = 64) -> LabPlan:
    """What to build and what to send, from the compiled plan; pure (no kernel)."""
    settings = compiled.settings
    if settings.mode != "iptables":
        raise UsageError(f"lab: --mode {settings.mode} is not supported; the lab proves iptables rules")
    if settings.family != 4:
        raise UsageError("lab: only --ip-family ipv4 is supported")
    notes: list[str] = []
    wanted = parse_service_filters(services)
    ports = list(compiled.plan.ports)
    if wanted:
        have = {(s.namespace, s.name) for s in compiled.inputs.services}
        planned = {(p.service.namespace, p.service.name) for p in ports}
        for ns, name in sorted(wanted):
            if (ns, name) not in have:
                raise UsageError(f"--service {ns}/{name}: no such Service in the input")
            if (ns, name) not in planned:
                raise UsageError(f"--service {ns}/{name}: has no rules to test (headless, ExternalName or no IPv4 cluster IP)")
        ports = [p for p in ports if (p.service.namespace, p.service.name) in wanted]
    kept = []
    for p in ports:
        if p.proto not in ("tcp", "udp"):
            notes.append(f"{p.spn}: {p.proto.upper()} is not probed (the lab speaks TCP and UDP)")
            continue
        kept.append(p)
    ports = kept

    if not settings.hostname:
        notes.append("no hostname (Node object or --hostname): every endpoint counts as on another node")
    node_ips = settings.node_ips_of(4)
    used: set[str] = set(node_ips)
    for p in compiled.plan.ports:
        used.add(p.cluster_ip)
        used.update(p.external_ips)
        used.update(p.lb_ips)
        used.update(e.ip for e in p.endpoints)
    if not node_ips:
        ip = _pick_free(NODE_IP_CANDIDATES, used)
        node_ips = (ip,)
        used.add(ip)
        notes.append(f"no node IP in the input (Node object or --node-ip): the lab node uses {ip}")
    node_set = set(node_ips)

    cluster_cidrs = settings.cidrs_of(settings.cluster_cidrs, 4)
    client_ip = _pick_free(CLIENT_CANDIDATES, used, cluster_cidrs)
    used.add(client_ip)

    pod_cidrs = settings.cidrs_of(settings.node_pod_cidrs, 4)
    cpod_ip = None
    for c in (*pod_cidrs, *cluster_cidrs):
        cpod_ip = _pick_in_cidr(c, used)
        if cpod_ip:
            break
    if cpod_ip is None:
        cpod_ip = _pick_in_cidr(FALLBACK_POD_CIDR, used)
        notes.append(f"no pod CIDR in the input: the client pod uses {cpod_ip}")
    assert cpod_ip is not None
    used.add(cpod_ip)

    # Endpoint namespaces: every endpoint of the probed ports, ready or not, so
    # traffic wrongly sent to a non-ready endpoint shows up as an answer.
    by_ip: dict[str, dict[str, Any]] = {}
    for p in ports:
        for e in p.endpoints:
            d = by_ip.setdefault(e.ip, {"local": e.local, "node": e.node_name, "tcp": set(), "udp": set()})
            d[p.proto].add(e.port)
    pods: list[PodSpec] = []
    for i, (ip, d) in enumerate(sorted(by_ip.items(), key=lambda kv: ipaddress.IPv4Address(kv[0]))):
        where = "host" if ip in node_set else ("local" if d["local"] else "remote")
        if ip in (GATEWAY, FAR_ADDR, FAR_GATEWAY) or ip.startswith("127."):
            raise UsageError(f"lab: endpoint {ip} collides with an address the lab needs for its own links")
        pods.append(PodSpec(ip, where, d["node"], tuple(sorted(d["tcp"])), tuple(sorted(d["udp"])), i))
    n_ns = sum(1 for p in pods if p.where != "host")
    if n_ns > max_pods:
        raise UsageError(f"lab: {n_ns} endpoint namespaces needed, more than --max-pods {max_pods}; "
                         "raise --max-pods or pick Services with --service")
    if any(p.where == "host" for p in pods):
        notes.append("endpoints on a node IP (hostNetwork) are served inside the node namespace")

    probes = _probes(compiled, ports, node_ips, client_ip, cpod_ip, requests, notes)
    return LabPlan(node_ips, client_ip, cpod_ip, tuple(pods), tuple(probes), settings.hostname, notes)


def _probes(compiled: Any, ports, node_ips: tuple[str, ...], client_ip: str, cpod_ip: str,
            requests: int, notes: list[str]) -> list[Probe]:
    settings = compiled.settings
    det = settings.local_detector(4)
    if det.cidr:
        cpod_local = cidr_contains(det.cidr, cpod_ip)
    else:
        cpod_local = False  # interface detectors match kube-proxy's veth names, not the lab's
    if settings.masquerade_all:
        cpod_masq = "node"
    elif det.implemented:
        cpod_masq = "client" if cpod_local else "node"
    else:
        cpod_masq = "client"
    if det.implemented and not det.cidr:
        notes.append(f"local-traffic detector {settings.detect_local_mode} matches interfaces the lab does not "
                     "have: ClusterIP traffic from the client pod counts as off-cluster")
    match_all, np_ips = settings.nodeport_ips(4)
    localhost = settings.localhost_nodeports_effective(4)
    out: list[Probe] = []

    def add(p, kind, source, src_ip, dst, port, outcome):
        expect, why, eps, masq = outcome
        neg = expect != "answer"
        out.append(Probe(
            key=f"{len(out)}", spn=p.spn, proto=p.proto, kind=kind, source=source, src_ip=src_ip, dst=dst,
            port=port, expect=expect, why=why, endpoints=tuple(e.ep for e in eps),
            affinity=bool(p.affinity) and expect == "answer", masq=masq,
            count=min(requests, NEGATIVE_PROBES) if neg else requests,
            timeout=NEGATIVE_TIMEOUT if neg else ANSWER_TIMEOUT,
        ))

    for p in ports:
        sel = p.sel
        port = p.port.port
        # ClusterIP (5.2, 5.4, 5.7)
        if not sel.has_any:
            cip = ("reject", "no endpoints: REJECT", (), None)
            cip_node = cip
        elif not p.has_internal:
            cip = ("drop", "internalTrafficPolicy Local and no local endpoints: DROP", (), None)
            cip_node = cip
        else:
            eps = sel.local if p.int_local else sel.cluster
            pol = "Local" if p.int_local else "Cluster"
            cip = ("answer", f"internalTrafficPolicy {pol}", eps, cpod_masq)
            cip_node = ("answer", f"internalTrafficPolicy {pol}; the node's own address", eps, "node")
        add(p, "cluster-ip", "cpod", cpod_ip, p.cluster_ip, port, cip)
        add(p, "cluster-ip", "node", node_ips[0], p.cluster_ip, port, cip_node)

        # External traffic (5.2, 5.3, 5.5, 5.6)
        def external(source_ip: str, via_fw: bool) -> tuple:
            if not sel.has_any:
                return ("reject", "no endpoints: REJECT", (), None)
            if via_fw and p.source_ranges and not any(cidr_contains(r, source_ip) for r in p.source_ranges):
                return ("drop", "client outside loadBalancerSourceRanges: DROP", (), None)
            if not p.has_external:
                return ("drop", "externalTrafficPolicy Local and no local endpoints: DROP", (), None)
            if p.ext_local:
                return ("answer", "externalTrafficPolicy Local: local endpoints, client address kept",
                        sel.local, "client")
            return ("answer", "externalTrafficPolicy Cluster: masqueraded to the node", sel.cluster, "node")

        def uncaptured(why: str) -> tuple:
            # nat does not capture this address, but the filter rule for a NodePort without
            # (external) endpoints matches every LOCAL address, whatever nodePortAddresses
            # says (5.3), so it still REJECTs or DROPs; only otherwise nothing listens.
            if not sel.has_any:
                return ("reject", f"{why}, but no endpoints: REJECT on every node address", (), None)
            if not p.has_external:
                return ("drop", f"{why}, but externalTrafficPolicy Local and no local endpoints: "
                                "DROP on every node address", (), None)
            return ("refuse", f"{why}: nothing listens, refused", (), None)

        if p.node_port:
            for ip in node_ips:
                if match_all or ip in np_ips:
                    add(p, "node-port", "client", client_ip, ip, p.node_port, external(client_ip, False))
                else:
                    add(p, "node-port", "client", client_ip, ip, p.node_port, uncaptured("not in nodePortAddresses"))
            if localhost:
                if not sel.has_any:
                    lo = ("reject", "no endpoints: REJECT", (), None)
                else:
                    # EXT: LOCAL sources are masqueraded and sent to the SVC chain, even with Local policy.
                    lo = ("answer", "from the node itself: masqueraded, every cluster endpoint", sel.cluster, "node")
                add(p, "localhost-node-port", "node", "127.0.0.1", "127.0.0.1", p.node_port, lo)
            else:
                add(p, "localhost-node-port", "node", "127.0.0.1", "127.0.0.1", p.node_port,
                    uncaptured("localhost NodePorts off: not captured"))
        for eip in p.external_ips:
            add(p, "external-ip", "client", client_ip, eip, port, external(client_ip, False))
        for lb in p.lb_ips:
            add(p, "load-balancer", "client", client_ip, lb, port, external(client_ip, True))
    return out


# ---------------------------------------------------------------------- judging


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


# ---------------------------------------------------------------------- the kernel side


def _log(msg: str) -> None:
    print(f"rulegen lab: {msg}", file=sys.stderr, flush=True)


def _set_no_pdeath() -> None:  # pragma: no cover - runs in the child
    # Our helpers die with us even if we are killed without cleanup.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Lab:
    """The namespaces, links, rules and helper processes of one run; `close()` removes them all."""

    def __init__(self, plan: LabPlan, run_id: str | None = None, kernel: Any = None,
                 deadline: float | None = None) -> None:
        from .apply.kernel import Kernel

        self.plan = plan
        self.run_id = run_id or secrets.token_hex(2)
        self.prefix = f"{PREFIX}{self.run_id}"
        self.kernel = kernel or Kernel.real()
        self.ns = self.kernel.netns
        self.deadline = deadline if deadline is not None else time.time() + 120
        self.attempted: list[str] = []  # names we generated and tried to create, in order
        self.procs: list[subprocess.Popen] = []
        self.closed = False
        self.owner = os.getpid()
        self.signals = Interrupts()

    # names
    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def node(self) -> str:
        return self.name("node")

    def pod_ns(self, pod: PodSpec) -> str:
        return self.node if pod.where == "host" else self.name(f"p{pod.index}")

    def all_names(self) -> list[str]:
        names = [self.name("node"), self.name("client"), self.name("cpod")]
        if any(p.where == "remote" for p in self.plan.pods):
            names.append(self.name("far"))
        names += [self.pod_ns(p) for p in self.plan.pods if p.where != "host"]
        return names

    def left(self) -> float:
        return self.deadline - time.time()

    def _check_time(self, what: str) -> None:
        if self.left() <= 0:
            raise UsageError(f"lab: --timeout reached while {what}")

    # building
    def build(self) -> None:
        names = self.all_names()
        taken = [n for n in names if self.ns.exists(n)]
        if taken:
            raise UsageError(f"lab: namespace {taken[0]} already exists; refusing to touch it")
        for n in names:
            self._check_time("creating namespaces")
            with self.signals.shield():
                self.attempted.append(n)
                self.ns.create(n)
        with self.signals.shield():
            self._links()
        self._sysctls()

    def _links(self) -> None:
        from pyroute2 import IPRoute

        p = self.plan
        node = self.node
        local = [x for x in p.pods if x.where == "local"]
        remote = [x for x in p.pods if x.where == "remote"]
        # (node-side ifname, peer namespace, peer address)
        links = [("rgcli", self.name("client"), p.client_ip), ("rgcp", self.name("cpod"), p.cpod_ip)]
        links += [(f"rgp{x.index}", self.pod_ns(x), x.ip) for x in local]
        with IPRoute(netns=node) as ip:
            lo = ip.link_lookup(ifname="lo")[0]
            ip.link("set", index=lo, state="up")
            for a in p.node_ips:
                ip.addr("add", index=lo, address=a, prefixlen=32)
            for ifname, peer_ns, _ in links:
                ip.link("add", ifname=ifname, kind="veth", peer={"ifname": "eth0", "net_ns_fd": peer_ns})
            if remote:
                ip.link("add", ifname="rgfar", kind="veth", peer={"ifname": "eth0", "net_ns_fd": self.name("far")})
                links_far = [("rgfar", self.name("far"), FAR_ADDR)]
            else:
                links_far = []
            for ifname, _, peer_ip in links + links_far:
                idx = ip.link_lookup(ifname=ifname)[0]
                ip.addr("add", index=idx, address=GATEWAY, prefixlen=32, scope=253)
                ip.link("set", index=idx, state="up")
                ip.route("add", dst=f"{peer_ip}/32", oif=idx, scope=253)
            if remote:
                far_idx = ip.link_lookup(ifname="rgfar")[0]
                for x in remote:
                    ip.route("add", dst=f"{x.ip}/32", gateway=FAR_ADDR, oif=far_idx)
            cli = ip.link_lookup(ifname="rgcli")[0]
            ip.route("add", dst="0.0.0.0/0", gateway=p.client_ip, oif=cli, prefsrc=p.node_ips[0])
        for _, peer_ns, peer_ip in links:
            self._peer(peer_ns, peer_ip, GATEWAY)
        if remote:
            far = self.name("far")
            with IPRoute(netns=far) as ip:
                for x in remote:
                    ip.link("add", ifname=f"rgp{x.index}", kind="veth",
                            peer={"ifname": "eth0", "net_ns_fd": self.pod_ns(x)})
                for x in remote:
                    idx = ip.link_lookup(ifname=f"rgp{x.index}")[0]
                    ip.addr("add", index=idx, address=FAR_GATEWAY, prefixlen=32, scope=253)
                    ip.link("set", index=idx, state="up")
                    ip.route("add", dst=f"{x.ip}/32", oif=idx, scope=253)
            self._peer(far, FAR_ADDR, GATEWAY, scope=253)
            for x in remote:
                self._peer(self.pod_ns(x), x.ip, FAR_GATEWAY)

    def _peer(self, ns: str, addr: str, gateway: str, scope: int = 0) -> None:
        from pyroute2 import IPRoute

        with IPRoute(netns=ns) as ip:
            lo = ip.link_lookup(ifname="lo")[0]
            ip.link("set", index=lo, state="up")
            idx = ip.link_lookup(ifname="eth0")[0]
            ip.addr("add", index=idx, address=addr, prefixlen=32, scope=scope)
            ip.link("set", index=idx, state="up")
            ip.route("add", dst="0.0.0.0/0", gateway=gateway, oif=idx, flags=4)  # RTNH_F_ONLINK

    def _sysctl(self, ns: str, pairs: list[tuple[str, str]]) -> None:
        if shutil.which(SYSCTL):
            argv = [SYSCTL, "-q", "-w"] + [f"{k}={v}" for k, v in pairs]
        else:  # no procps: the same writes by hand (our keys hold no interface names with dots)
            argv = ["sh", "-c", " && ".join(f"echo {v} > /proc/sys/{k.replace('.', '/')}" for k, v in pairs)]
        cp = self.ns.run(ns, argv)
        if cp.returncode != 0:
            raise UsageError(f"lab: sysctl in {ns} failed: {cp.stderr.strip()}")

    def _sysctls(self) -> None:
        # route_localnet (localhost NodePorts) is set by rulegen.apply with the rules.
        routers = [("net.ipv4.ip_forward", "1"),
                   ("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0"),
                   # REJECT answers with ICMP; the default rate limit would turn a burst of
                   # rejected probes into apparent DROPs. The lab judges rules, not rate limits.
                   ("net.ipv4.icmp_ratemask", "0")]
        self._sysctl(self.node, routers)
        if any(p.where == "remote" for p in self.plan.pods):
            self._sysctl(self.name("far"), routers)

    # rules
    def apply_rules(self, compiled: Any) -> None:
        from .apply import apply

        # Also sets route_localnet when localhost NodePorts are on.
        # state_dir=None: leave no cache files behind for a namespace about to vanish.
        apply(compiled, self.node, kernel=self.kernel, state_dir=None)
        if compiled.settings.tcp_be_liberal:
            self._sysctl(self.node, [("net.netfilter.nf_conntrack_tcp_be_liberal", "1")])

    def nfacct_works(self) -> bool:
        """Whether nfacct counters can be made here (else the payload must go without -m nfacct)."""
        try:
            self.kernel.xtables.ensure_nfacct(self.node, ["localhost_nps_accepted_pkts"])
            return True
        except UsageError:
            return False

    # helpers
    def _spawn(self, ns: str, args: list[str], stdin_data: bool = False) -> subprocess.Popen:
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "rulegen.labnet", *args]
        # A session of their own: a terminal's Ctrl-C reaches only us, and we stop them in order.
        with self.signals.shield():  # so no helper starts without being in self.procs
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True, preexec_fn=_set_no_pdeath)
            self.procs.append(proc)
        return proc

    def start_servers(self) -> None:
        lifetime = max(30.0, self.left() + 30.0)
        servers = []
        for pod in self.plan.pods:
            args = ["serve", "--ip", pod.ip, "--tag", self.prefix, "--lifetime", f"{lifetime:.0f}"]
            if pod.tcp:
                args += ["--tcp", ",".join(map(str, pod.tcp))]
            if pod.udp:
                args += ["--udp", ",".join(map(str, pod.udp))]
            servers.append((pod, self._spawn(self.pod_ns(pod), args)))
        sel = selectors.DefaultSelector()
        for pod, proc in servers:
            sel.register(proc.stdout, selectors.EVENT_READ, (pod, proc))
        waiting = len(servers)
        end = time.monotonic() + min(SERVER_READY_TIMEOUT, max(1.0, self.left()))
        while waiting:
            left = end - time.monotonic()
            if left <= 0:
                raise UsageError(f"lab: {waiting} endpoint server(s) did not start within {SERVER_READY_TIMEOUT:g} s")
            for key, _ in sel.select(timeout=left):
                pod, proc = key.data
                line = proc.stdout.readline()
                sel.unregister(proc.stdout)
                waiting -= 1
                if line.strip() != b"ready":
                    proc.wait(timeout=5)
                    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                    raise UsageError(f"lab: the server for endpoint {pod.ip} did not start: "
                                     f"{err[-1] if err else 'exit ' + str(proc.returncode)}")
        sel.close()

    def run_probes(self) -> dict[str, dict]:
        groups: dict[str, list[Probe]] = {}
        for pr in self.plan.probes:
            groups.setdefault(pr.source, []).append(pr)
        stop_at = self.deadline - 5.0
        running = []
        for source, probes in groups.items():
            jobs = [{"id": pr.key, "proto": pr.proto, "dst": pr.dst, "port": pr.port, "count": pr.count,
                     "timeout": pr.timeout, "sticky": pr.affinity,
                     "give_up": GIVE_UP if pr.expect == "answer" else 0} for pr in probes]
            proc = self._spawn(self.name(source), ["probe", "--deadline", f"{stop_at:.3f}"])
            # The prober reads all of stdin before it starts, so this cannot block for long.
            proc.stdin.write(json.dumps(jobs).encode())
            proc.stdin.close()
            proc.stdin = None  # communicate() below must not touch it again
            running.append((source, proc))
        results: dict[str, dict] = {}
        for source, proc in running:
            try:
                out, err = proc.communicate(timeout=max(1.0, self.left()))
            except subprocess.TimeoutExpired:
                raise UsageError(f"lab: the prober in {source} did not finish before --timeout") from None
            if proc.returncode != 0:
                msg = err.decode(errors="replace").strip().splitlines()
                raise UsageError(f"lab: the prober in {source} failed: {msg[-1] if msg else proc.returncode}")
            for r in json.loads(out):
                results[r["id"]] = r
        return results

    # tearing down
    def close(self) -> list[str]:
        """Stop helpers and delete exactly the namespaces this run created; returns what is left."""
        if self.closed or os.getpid() != self.owner:
            return []
        self.closed = True
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.kill()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for f in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    if f:
                        f.close()
                except OSError:
                    pass
        left = []
        for n in reversed(self.attempted):
            if not n.startswith(self.prefix + "-"):  # never anything we did not name
                continue
            try:
                self.ns.delete(n)
            except Exception:
                pass
            if self.ns.exists(n):
                left.append(n)
        return left


# ---------------------------------------------------------------------- one run


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


def run(compiled: Any, recompile: Callable[[dict], Any], plan: LabPlan, timeout: float,
        run_id: str | None = None) -> LabReport:
    """Build, apply, probe, judge and tear down; signals become LabInterrupted after cleanup."""
    t0 = time.time()
    lab = Lab(plan, run_id=run_id, deadline=t0 + timeout)
    notes = list(plan.notes)

    # A SIGINT ignored by whoever started us (a background job) stays ignored.
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    old = {s: signal.signal(s, lab.signals.handler) for s in sigs}
    stage = "building namespaces"
    try:
        _log(f"{lab.prefix}: building {plan.namespace_count} namespaces, {len(plan.pods)} endpoint server(s)")
        lab.build()
        stage = "applying the rules"
        if "-m nfacct" in compiled.text and not lab.nfacct_works():
            compiled = recompile({"nfacct": False})
            notes.append("nfacct counters cannot be created in this kernel: the rules were compiled "
                         "with --no-nfacct (only the -m nfacct matches differ)")
        lab.apply_rules(compiled)
        stage = "starting the endpoint servers"
        lab.start_servers()
        stage = "sending connections"
        _log(f"{lab.prefix}: sending {sum(p.count for p in plan.probes)} connections on {len(plan.probes)} path(s)")
        raw = lab.run_probes()
        results = [judge(pr, raw.get(pr.key, {}), plan.node_ips) for pr in plan.probes]
    except LabInterrupted:
        raise
    except Exception as e:
        if lab.signals.pending:  # the step failed because the interrupt killed its helper
            raise LabInterrupted(lab.signals.pending) from None
        if isinstance(e, UsageError):
            raise
        # A kernel or tool surprise: one line, after cleanup, never a traceback.
        raise UsageError(f"lab: failed while {stage}: {type(e).__name__}: {e}") from e
    finally:
        # Cleanup must finish: a signal during it is only remembered.
        late: list[int] = []
        for s in old:
            signal.signal(s, lambda signum, frame: late.append(signum))
        left: list[str] = []
        try:
            left = lab.close()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if left:
            _log("could not delete: " + ", ".join(left))
    if late or lab.signals.pending:
        raise LabInterrupted(lab.signals.pending or late[0])
    return LabReport(plan, lab.prefix, results, notes, time.time() - t0, left)


# ---------------------------------------------------------------------- report


def _pct(x: float) -> str:
    return f"{x * 100:5.1f}%"


def report_text(rep: LabReport) -> str:
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
