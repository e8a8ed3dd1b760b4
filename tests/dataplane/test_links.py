"""The kube-ipvs0 helper: its fake by hand, and the real one where the host kernel allows.

The host kernel of this project's machines has no dummy interfaces, so the
real client's full behaviour is compared with the fake in the IPVS VM
(tests/vm/test_ipvs_kernel.py); here the real one is checked for its
message on such a kernel and for what needs no dummy (addresses on lo).
"""

from __future__ import annotations

import errno
import subprocess

import pytest
from nshelp import namespace_names

from rulegen.dataplane.links import KUBE_IPVS0, FakeLinks, LinkError, RealLinks, canonical_address


def test_addresses_are_host_length():
    assert canonical_address("10.96.0.10") == "10.96.0.10/32"
    assert canonical_address("fd00:96:0::a/128") == "fd00:96::a/128"
    with pytest.raises(LinkError, match="host length"):
        canonical_address("10.96.0.0/24")
    with pytest.raises(LinkError, match="not an IP address"):
        canonical_address("kube-ipvs0")


def test_fake_makes_the_dummy_once_and_binds_idempotently():
    f = FakeLinks()
    assert f.ensure_dummy() is True and f.ensure_dummy() is False
    assert f.add_address(KUBE_IPVS0, "10.96.0.10") is True
    assert f.add_address(KUBE_IPVS0, "10.96.0.10/32") is False
    assert f.sync_addresses(KUBE_IPVS0, ["fd00::a", "10.96.0.2", "10.96.0.10"]) == (
        ["10.96.0.2/32", "fd00::a/128"], [])
    assert f.sync_addresses(KUBE_IPVS0, ["10.96.0.2"]) == ([], ["10.96.0.10/32", "fd00::a/128"])
    assert f.addresses() == ["10.96.0.2/32"]
    assert f.remove_address(KUBE_IPVS0, "10.96.0.2") is True and f.remove_address(KUBE_IPVS0, "10.96.0.2") is False
    assert f.delete() is True and f.delete() is False and not f.exists(KUBE_IPVS0)


def test_fake_errors_match_the_kernels():
    f = FakeLinks()
    with pytest.raises(LinkError) as e:
        f.add_address("nosuch0", "10.0.0.1")
    assert (e.value.errno, str(e.value)) == (errno.ENODEV, "cannot add address 10.0.0.1/32 to nosuch0: no such interface")
    f.add_device("eth9", "veth")
    with pytest.raises(LinkError, match="eth9: it exists and is a veth interface, not a dummy"):
        f.ensure_dummy("eth9")
    no_dummy = FakeLinks(kinds=set())
    with pytest.raises(LinkError) as e:
        no_dummy.ensure_dummy()
    assert e.value.errno == errno.EOPNOTSUPP and "no 'dummy' module" in str(e.value)
    assert not no_dummy.exists(KUBE_IPVS0)


@pytest.fixture
def ns():
    with namespace_names("rglnk") as name:
        n = name()
        subprocess.run(["ip", "netns", "add", n], check=True)
        yield n


@pytest.mark.root
def test_real_links_bind_idempotently_where_the_host_allows(ns):
    real = RealLinks(ns)
    assert real.exists("lo") and not real.exists(KUBE_IPVS0)
    assert real.add_address("lo", "10.96.7.7") is True
    assert real.add_address("lo", "10.96.7.7") is False
    assert real.addresses("lo") == ["10.96.7.7/32"]
    assert real.remove_address("lo", "10.96.7.7") is True
    assert real.remove_address("lo", "10.96.7.7") is False
    with pytest.raises(LinkError, match="cannot list the addresses of nosuch0: no such interface"):
        real.addresses("nosuch0")


@pytest.mark.root
def test_real_links_say_when_the_kernel_has_no_dummy(ns):
    probe = subprocess.run(["ip", "-n", ns, "link", "add", "rgprobe0", "type", "dummy"], capture_output=True, text=True)
    if probe.returncode == 0:
        pytest.skip("this kernel has dummy interfaces (the VM tests cover them)")
    with pytest.raises(LinkError) as e:
        RealLinks(ns).ensure_dummy()
    assert str(e.value) == "cannot create dummy interface kube-ipvs0: this kernel cannot make dummy interfaces (no 'dummy' module)"
    assert str(e.value) == str(pytest.raises(LinkError, FakeLinks(kinds=set()).ensure_dummy).value)
