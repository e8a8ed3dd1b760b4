"""Inside the IPVS VM: the real IPVS and link clients against a kernel with ip_vs, compared with their fakes.

Each test makes its own namespaces (the guest's, gone with the VM, and
deleted anyway) and checks the kernel's answers against the fake's for the
same operations, so the fakes the fast tests use stay true to the kernel.
"""

from __future__ import annotations

import subprocess

import ipvs_script as S
import pytest
from msgspec.structs import replace

from rulegen.dataplane.ipvs import FakeIPVS, RealIPVS, ipvs_missing_reason, load_table, render, sorted_services
from rulegen.dataplane.links import FakeLinks, LinkError, RealLinks

pytestmark = [pytest.mark.ipvs_kernel, pytest.mark.root]


def test_the_guest_kernel_has_ipvs(netns):
    assert ipvs_missing_reason(netns()) is None


def test_kernel_answers_the_script_as_the_fake_does(netns):
    got = RealIPVS(netns()).batch(lambda c: S.run(c))
    want = S.run(FakeIPVS())
    assert [step for step, _, _ in got] == [step for step, _, _ in want]
    for (step, answer, table), (_, expected, fake_table) in zip(got, want):
        assert answer == expected, f"{step}: the kernel answered {answer}, the fake {expected}"
        assert table == fake_table, f"after {step} the kernel's table differs from the fake's"


def test_render_matches_ipvsadm_save(netns):
    ns = netns()
    client = RealIPVS(ns)
    services = [replace(S.WEB, reals=(S.W1, S.W2)), replace(S.DNS, reals=(S.D1, S.D2)),
                replace(S.STICKY, reals=(S.ROUTED,)), S.MH, S.SCTP, replace(S.WEB6, reals=(S.V6,)), S.STICKY6]
    load_table(client, services)
    saved = subprocess.run(["ip", "netns", "exec", ns, "ipvsadm-save", "-n"], capture_output=True, text=True,
                           check=True).stdout
    assert sorted(saved.splitlines()) == sorted(render(services).splitlines())
    assert client.dump() == render(sorted_services(services))
    assert client.table() == sorted_services(services)


def test_namespaces_have_their_own_tables_and_flush_empties_one(netns):
    a, b = RealIPVS(netns()), RealIPVS(netns())
    load_table(a, [replace(S.WEB, reals=(S.W1,))])
    load_table(b, [replace(S.DNS, reals=(S.D1,))])
    assert [vs.bare() for vs in a.table()] == [S.WEB] and [vs.bare() for vs in b.table()] == [S.DNS]
    a.flush()
    assert a.table() == () and [vs.bare() for vs in b.table()] == [S.DNS]


def _links_script(links) -> list:
    """One script of link operations; (step, answer) for each."""
    steps = [
        ("ensure_dummy", ()), ("ensure_dummy", ()),
        ("add_address", ("kube-ipvs0", "10.96.0.10")), ("add_address", ("kube-ipvs0", "10.96.0.10/32")),
        ("add_address", ("kube-ipvs0", "fd00:96::10")), ("add_address", ("kube-ipvs0", "10.96.0.0/24")),
        ("addresses", ()),
        ("sync_addresses", ("kube-ipvs0", ["10.96.0.11", "fd00:96::10", "10.96.0.12"])),
        ("addresses", ()),
        ("remove_address", ("kube-ipvs0", "10.96.0.11")), ("remove_address", ("kube-ipvs0", "10.96.0.11")),
        ("add_address", ("nosuch0", "10.96.0.10")), ("addresses", ("nosuch0",)),
        ("ensure_dummy", ("rgveth0",)),
        ("delete", ()), ("delete", ()), ("exists", ("kube-ipvs0",)),
    ]
    out = []
    for op, args in steps:
        try:
            out.append((op, args, ("ok", getattr(links, op)(*args))))
        except LinkError as e:
            out.append((op, args, ("error", e.errno, str(e))))
    return out


def test_links_answer_as_the_fake_does(netns):
    ns = netns()
    subprocess.run(["ip", "-n", ns, "link", "add", "rgveth0", "type", "veth", "peer", "name", "rgveth1"], check=True)
    fake = FakeLinks()
    fake.add_device("rgveth0", "veth")
    fake.add_device("rgveth1", "veth")
    got, want = _links_script(RealLinks(ns)), _links_script(fake)
    for g, w in zip(got, want):
        assert g == w
    assert len(got) == len(want)
