"""Properties of the iptables compiler over generated clusters (hypothesis).

- compile never raises, whatever the cluster;
- the payload does not depend on the order of the input objects;
- every jump target is declared (or is a built-in target);
- no declared per-service chain is left unused;
- along every KUBE-SVC/KUBE-SVL chain each endpoint is reached with chance 1/N.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction

from clustergen import cluster, settings_flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BUILTIN_TARGETS = {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "MASQUERADE", "MARK", "SNAT"}
PER_SERVICE = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")
FIXED_NAT = {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"}


def _target(spec: str) -> str | None:
    m = re.search(r"(?:^| )-j (\S+)", spec)
    return m.group(1) if m else None


prop_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@prop_settings
@given(cluster(), settings_flags)
def test_compile_never_raises_and_targets_are_declared(compile_objs, objs, flags):
    c = compile_objs(objs, flags)
    text = c.text
    assert text.startswith("*filter\n") and text.endswith("COMMIT\n")
    for table in c.ir.tables:
        declared = set(table.chains)
        for r in table.rules:
            assert r.chain in declared, f"rule for undeclared chain {r.chain}"
            t = _target(r.spec)
            if t is not None:
                assert t in BUILTIN_TARGETS or t in declared, f"{table.name}: -j {t} not declared"


@prop_settings
@given(cluster(), settings_flags)
def test_no_declared_per_service_chain_is_unused(compile_objs, objs, flags):
    c = compile_objs(objs, flags)
    nat = c.ir.table("nat")
    jumped = {_target(r.spec) for r in nat.rules}
    for chain in nat.chains:
        if chain.startswith(PER_SERVICE):
            assert chain in jumped, f"{chain} declared but nothing jumps to it"
            assert any(r.chain == chain for r in nat.rules), f"{chain} declared but empty"


@prop_settings
@given(cluster(), settings_flags, st.randoms(use_true_random=False))
def test_output_does_not_depend_on_input_order(compile_objs, objs, flags, rnd: random.Random):
    first = compile_objs(objs, flags).text
    shuffled = list(objs)
    rnd.shuffle(shuffled)
    assert compile_objs(shuffled, flags).text == first


def chances(rules: list[str]) -> dict[str, Fraction]:
    """Probability that a new connection entering the chain jumps to each KUBE-SEP."""
    left = Fraction(1)
    out: dict[str, Fraction] = {}
    for spec in rules:
        t = _target(spec)
        if t is None or not t.startswith("KUBE-SEP-") or "--rcheck" in spec:
            continue  # masquerade rule; affinity rules never match a first connection
        m = re.search(r"--probability (\S+)", spec)
        p = Fraction(m.group(1)).limit_denominator(100000) if m else Fraction(1)
        out[t] = out.get(t, Fraction(0)) + left * p
        left *= 1 - p
    assert left == 0, "some connections fall through the service chain"
    return out


@prop_settings
@given(cluster(), settings_flags)
def test_every_endpoint_is_reached_with_equal_chance(compile_objs, objs, flags):
    c = compile_objs(objs, flags)
    by_chain = c.ir.table("nat").by_chain()
    checked = 0
    for chain, rules in by_chain.items():
        if not chain.startswith(("KUBE-SVC-", "KUBE-SVL-")):
            continue
        got = chances(rules)
        n = len(got)
        assert n >= 1
        for sep, p in got.items():
            assert p == Fraction(1, n), f"{chain} -> {sep}: {p} instead of 1/{n}"
        checked += 1
    # every service port with a usable cluster list has its chain checked
    expected = sum(1 for p in c.plan.ports if p.sel.cluster and p.uses_cluster) + sum(
        1 for p in c.plan.ports if p.sel.local and p.uses_local)
    assert checked == expected
