"""The known causes of a difference between two modes, and the matching of a traced difference to one.

A difference is found by tracing the same connection (a `trace.scenarios`
scenario) in both modes and comparing what each trace does
(`trace.compare`). This module says *why*: `CAUSES` is the table of
differences kube-proxy's modes are known to have, each a test on the
scenario (who sends, where to), the Service port's plan (its traffic
policies, its endpoints, its source ranges) and the aspects that differ,
in order from the most particular to the most general. A cause holds
only where the two modes really do differ there: either their settings
differ in what the cause is about (`--settings-to`, or a setting each
mode reads from its own section), or the modes' own descriptions of it
(`Backend.traits`, one `traits` module per mode) differ. The words of a
cause come from those descriptions, and so does what restores the old
behaviour: the target mode's setting, or its reason why none does. A
difference no cause explains is kept and called `unexplained`, never
dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from ..trace.compare import Behaviour
from ..trace.scenarios import (
    CLUSTER_IP,
    EXTERNAL_IP,
    LOAD_BALANCER,
    LOCALHOST_NODE_PORT,
    NODE,
    NODE_PORT,
    OTHER_PORT,
    POD_ELSEWHERE,
    POD_HERE,
    Scenario,
)

EXTERNAL = (NODE_PORT, EXTERNAL_IP, LOAD_BALANCER)
UNEXPLAINED = "unexplained"


@dataclass(frozen=True)
class Side:
    """One mode's half of a comparison: its compile (settings, backend) and its trace of the scenario."""

    compiled: Any
    error: str | None  # the tracer's refusal, when it could not follow the connection
    behaviour: Behaviour | None

    @property
    def mode(self) -> str:
        return self.compiled.settings.mode

    @property
    def settings(self) -> Any:
        return self.compiled.settings

    @property
    def backend(self) -> Any:
        return self.compiled.backend


@dataclass(frozen=True)
class Case:
    """One scenario whose two traces differ, with what a cause may look at."""

    scenario: Scenario
    port: Any  # the plan's PortPlan of the scenario's Service port
    a: Side  # the mode migrated from
    b: Side  # the mode migrated to
    aspects: frozenset[str]
    family: int
    shared: bool = False  # another Service port claims the same address, port and protocol (or NodePort)


@dataclass(frozen=True)
class Explained:
    cause: str
    title: str
    reason: str  # one line: why the two modes differ here
    setting: str | None  # what restores the old behaviour in the target mode
    no_setting: str | None  # why nothing does (when `setting` is None)


@dataclass(frozen=True)
class Cause:
    id: str
    title: str
    matches: Callable[[Case], bool]
    # The settings' part: a sentence when the two sides' settings differ in what the
    # cause is about (then that, not the modes, is the cause), else None.
    by_settings: Callable[[Case], str | None] | None = None
    # What restores the old behaviour when the settings are the cause (else the target mode's trait).
    settings_restore: Callable[[Case], str] | None = None
    # A restore computed from the case even when the modes are the cause (NodePort addresses).
    restore: Callable[[Case], str | None] | None = None


# ---------------------------------------------------------------- the tests


def _entry(c: Case) -> str:
    return c.scenario.entry.kind


def _now(c: Case) -> str:
    return f"now ({c.a.mode})" if c.a.mode == c.b.mode else f"with the {c.a.mode} settings"


def _after(c: Case) -> str:
    return f"after ({c.b.mode})" if c.a.mode == c.b.mode else f"with the {c.b.mode} settings"


def _localhost_answers(s: Side) -> bool:
    return bool(s.backend.localhost_nodeports) and s.settings.localhost_nodeports_effective()


def _localhost_settings(c: Case) -> str | None:
    if (c.a.backend.localhost_nodeports == c.b.backend.localhost_nodeports
            and _localhost_answers(c.a) != _localhost_answers(c.b)):
        on = {True: "on", False: "off"}
        return (f"localhost NodePorts are {on[_localhost_answers(c.a)]} {_now(c)} and "
                f"{on[_localhost_answers(c.b)]} {_after(c)} (iptables.localhostNodePorts, nodePortAddresses)")
    return None


def _nodeport_accepts(s: Side, ip: str, fam: int) -> bool:
    every, ips = s.backend.nodeport_ips(s.settings, fam)
    return every or ip in ips


def _nodeport_addresses(c: Case) -> bool:
    ip = c.scenario.entry.ip
    return _entry(c) == NODE_PORT and _nodeport_accepts(c.a, ip, c.family) != _nodeport_accepts(c.b, ip, c.family)


def _npa_text(s: Side) -> str:
    raw = s.settings.nodeport_addresses
    return json.dumps(list(raw)) if raw else "unset"


def _nodeport_settings(c: Case) -> str | None:
    if (c.a.settings.nodeport_addresses or ()) != (c.b.settings.nodeport_addresses or ()):
        return f"nodePortAddresses is {_npa_text(c.a)} {_now(c)} and {_npa_text(c.b)} {_after(c)}"
    return None


def _nodeport_restore(c: Case) -> str | None:
    """nodePortAddresses as the target mode must read it to take NodePorts where the old mode did."""
    fam = c.family
    every, ips = c.a.backend.nodeport_ips(c.a.settings, fam)
    if every:
        want = ["::/0" if fam == 6 else "0.0.0.0/0"]
    elif c.a.settings.nodeport_addresses:
        want = list(c.a.settings.nodeport_addresses)
    elif ips == (c.a.settings.primary_ip(fam),):
        want = ["primary"]
    else:
        want = [f"{ip}/{128 if fam == 6 else 32}" for ip in ips]
    return f"nodePortAddresses: {json.dumps(want)}"


def _shared(c: Case) -> bool:
    return c.shared and "destinations" in c.aspects


def _no_endpoints(c: Case) -> bool:
    return not c.port.sel.has_any and "trace" not in c.aspects


def _source_ranges(c: Case) -> bool:
    """A load-balancer IP with source ranges, dropped in one mode only: the firewalls differ."""
    verdicts = {s.behaviour.verdict for s in (c.a, c.b) if s.behaviour}
    return (_entry(c) == LOAD_BALANCER and bool(c.port.source_ranges) and "verdict" in c.aspects
            and "DROP" in verdicts)


def _local_no_endpoint(c: Case) -> bool:
    e = _entry(c)
    local = (e in EXTERNAL and c.port.ext_local) or (e == CLUSTER_IP and c.port.int_local)
    return local and not c.port.sel.local


def _local_short_cut(c: Case) -> bool:
    return (_entry(c) in EXTERNAL and c.port.ext_local and c.scenario.client.kind in (POD_HERE, POD_ELSEWHERE, NODE)
            and c.aspects <= {"destinations", "masquerade"})


def _masquerade_all(c: Case) -> bool:
    return c.aspects == {"masquerade"} and c.a.settings.masquerade_all != c.b.settings.masquerade_all


def _masquerade_all_settings(c: Case) -> str | None:
    on = {True: "on", False: "off"}
    ta, tb = c.a.backend.traits().get("masquerade-all"), c.b.backend.traits().get("masquerade-all")
    where_a = f" ({ta.setting})" if ta and ta.setting else ""
    where_b = f" ({tb.setting})" if tb and tb.setting else ""
    return (f"masqueradeAll is {on[c.a.settings.masquerade_all]} for {c.a.mode}{where_a} and "
            f"{on[c.b.settings.masquerade_all]} for {c.b.mode}{where_b}")


def _masquerade_all_restore(c: Case) -> str:
    tb = c.b.backend.traits().get("masquerade-all")
    key = tb.setting if tb and tb.setting else "masqueradeAll"
    return f"{key}: {str(c.a.settings.masquerade_all).lower()}"


def _balancing(c: Case) -> bool:
    ba, bb = c.a.behaviour, c.b.behaviour
    if ba is None or bb is None or c.aspects != {"destinations"}:
        return False
    return {ep for ep, _ in ba.shares} == {ep for ep, _ in bb.shares}


def _scheduler_settings(c: Case) -> str | None:
    if c.a.backend.reads_scheduler and c.b.backend.reads_scheduler and c.a.settings.scheduler != c.b.settings.scheduler:
        return f"ipvs.scheduler is {c.a.settings.scheduler} {_now(c)} and {c.b.settings.scheduler} {_after(c)}"
    return None


def _affinity(c: Case) -> bool:
    return c.aspects == {"affinity"}


# In order: the first that holds names the difference.
CAUSES: tuple[Cause, ...] = (
    Cause("localhost-nodeports", "NodePorts on 127.0.0.1", lambda c: _entry(c) == LOCALHOST_NODE_PORT,
          by_settings=_localhost_settings,
          settings_restore=lambda c: ("iptables.localhostNodePorts: "
                                      f"{str(_localhost_answers(c.a)).lower()}")),
    Cause("nodeport-addresses", "the node addresses that take NodePorts", _nodeport_addresses,
          by_settings=_nodeport_settings, settings_restore=lambda c: _nodeport_restore(c) or "",
          restore=_nodeport_restore),
    Cause("clusterip-other-ports", "a ClusterIP on a port no Service uses", lambda c: _entry(c) == OTHER_PORT),
    Cause("shared-address", "several Services claiming one address and port", _shared),
    Cause("masquerade-all", "masqueradeAll", _masquerade_all, by_settings=_masquerade_all_settings,
          settings_restore=_masquerade_all_restore),
    Cause("no-endpoints", "a Service without endpoints", _no_endpoints),
    Cause("source-ranges", "loadBalancerSourceRanges", _source_ranges),
    Cause("local-policy-no-local-endpoint", "a Local traffic policy with no endpoint on this node",
          _local_no_endpoint),
    Cause("local-policy-short-cut", "cluster traffic to a Local-policy external address", _local_short_cut),
    Cause("balancing", "how an endpoint is picked", _balancing, by_settings=_scheduler_settings,
          settings_restore=lambda c: f'ipvs.scheduler: "{c.a.settings.scheduler}"'),
    Cause("affinity", "session affinity", _affinity),
)
CAUSE_IDS = tuple(c.id for c in CAUSES) + (UNEXPLAINED,)
TITLES = {c.id: c.title for c in CAUSES} | {UNEXPLAINED: "no known cause"}


def explain(c: Case) -> Explained:
    """The first known cause that holds for C, worded from the settings or the two modes' traits."""
    if "trace" in c.aspects:
        return _unexplained(c, "rulegen could not follow this connection in "
                               + " and ".join(f"{s.mode} ({s.error})" for s in (c.a, c.b) if s.error))
    for cause in CAUSES:
        if not cause.matches(c):
            continue
        why = cause.by_settings(c) if cause.by_settings else None
        if why:
            restore = cause.settings_restore(c) if cause.settings_restore else None
            return Explained(cause.id, cause.title, why, restore or None,
                             None if restore else "the settings given are the cause")
        ta, tb = c.a.backend.traits().get(cause.id), c.b.backend.traits().get(cause.id)
        if ta is None and tb is None:
            continue
        if ta is not None and tb is not None and ta.does == tb.does:
            continue  # the modes agree here: something else differs
        said_a = f"{c.a.mode} {ta.does}" if ta else f"{c.a.mode} does not describe this"
        said_b = f"{c.b.mode} {tb.does}" if tb else f"{c.b.mode} does not describe this"
        setting = cause.restore(c) if cause.restore else None
        if setting is None and tb is not None and tb.setting:
            setting = tb.setting
        no_setting = None if setting else (tb.fixed if tb and tb.fixed else "none is known")
        return Explained(cause.id, cause.title, f"{said_a}; {said_b}", setting, no_setting)
    return _unexplained(c, "no known difference between the modes explains this; trace the connection in "
                           "both modes (rulegen trace --mode ...) to see where it parts")


def _unexplained(c: Case, reason: str) -> Explained:
    return Explained(UNEXPLAINED, TITLES[UNEXPLAINED], reason, None, "the cause is not known")
