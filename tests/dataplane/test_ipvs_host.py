"""IPVS on the host kernel: the probe, and what a client does where there is no ip_vs.

The machines of this project run a kernel without ip_vs; the message must
say so by name, and nothing may be changed. On a kernel that has IPVS these
tests are skipped (the VM tests cover that case).
"""

from __future__ import annotations

import errno
import subprocess

import pytest
from nshelp import namespace_names

from rulegen.dataplane.ipvs import IPVSUnavailable, RealIPVS, VirtualServer, ipvs_missing_reason, kernel_has_ipvs
from rulegen.dataplane.ipvs.client import require_ipvs
from rulegen.diagnostics import UsageError
from rulegen.kernel.netns import NetnsError, in_netns

pytestmark = pytest.mark.root


@pytest.fixture
def ns():
    with namespace_names("rgvsh") as name:
        n = name()
        subprocess.run(["ip", "netns", "add", n], check=True)
        yield n


@pytest.fixture
def no_ipvs(ns):
    if ipvs_missing_reason(ns) is None:
        pytest.skip("this kernel has IPVS; the missing-ip_vs message is for kernels without it")
    return ns


def test_the_probe_names_the_missing_module(no_ipvs):
    reason = ipvs_missing_reason(no_ipvs)
    assert "has no IP Virtual Server: the ip_vs module is not loaded and " in reason
    assert kernel_has_ipvs(no_ipvs) is False
    with pytest.raises(IPVSUnavailable) as e:
        require_ipvs(no_ipvs)
    assert str(e.value) == reason and isinstance(e.value, UsageError)  # one line, exit 2


def test_a_client_stops_before_changing_anything(no_ipvs):
    client = RealIPVS(no_ipvs)
    with pytest.raises(IPVSUnavailable, match="ip_vs"):
        client.add_virtual_server(VirtualServer("tcp", "10.96.0.10", 80))
    with pytest.raises(IPVSUnavailable):
        client.table()


def test_other_failures_are_not_missing_ipvs():
    with pytest.raises(NetnsError, match="cannot enter network namespace 'rg-no-such-ns'"):
        ipvs_missing_reason("rg-no-such-ns")


def test_in_netns_passes_the_callables_errors_through(ns):
    def fail():
        raise OSError(errno.EEXIST, "made up")

    with pytest.raises(OSError) as e:
        in_netns(ns, fail)
    assert e.value.errno == errno.EEXIST and not isinstance(e.value, NetnsError)
    mine = in_netns(ns, lambda: open("/proc/thread-self/net/dev").read())
    assert "lo:" in mine and len(mine.splitlines()) == 3  # only lo: the namespace's own view
    assert in_netns(None, lambda: 42) == 42
    with pytest.raises(NetnsError, match="not a valid namespace name"):
        in_netns("../etc", lambda: None)
