"""The IPVS records and the fake: canonical forms, the kernel's errors, the ipvsadm-save text.

The same script runs against the kernel in the VM (tests/vm/test_ipvs_kernel.py),
which must answer exactly as the fake does; here the fake's answers are
checked by hand.
"""

from __future__ import annotations

import errno

import ipvs_script as S
import pytest

from msgspec.structs import replace

from rulegen.dataplane.ipvs import (
    FLAG_PERSISTENT,
    ROUTE,
    TUNNEL,
    FakeIPVS,
    IPVSError,
    RealServer,
    VirtualServer,
    load_table,
    render,
    sorted_services,
)
from rulegen.dataplane.ipvs.model import FLAG_HASHED
from rulegen.diagnostics import UsageError


def test_records_are_canonical_and_checked():
    vs = VirtualServer.new("TCP", "fd00:0:0::0010", 80, flags=FLAG_PERSISTENT | FLAG_HASHED, timeout=5, netmask=128)
    assert (vs.address, vs.protocol, vs.flags, vs.netmask) == ("fd00::10", "tcp", FLAG_PERSISTENT, 0)
    assert vs == VirtualServer("tcp", "fd00::10", 80, flags=FLAG_PERSISTENT, timeout=5)
    assert VirtualServer.new("udp", "10.0.0.1", 53, netmask=24).netmask == 24
    assert str(vs) == "TCP [fd00::10]:80" and vs.family == 6 and vs.key == ("tcp", "fd00::10", 80)
    for bad in (dict(address="10.0.0.300"), dict(protocol="ICMP"), dict(port=70000), dict(scheduler=""),
                dict(scheduler="x" * 16), dict(netmask=33), dict(timeout=-1)):
        args = dict(address="10.0.0.1", protocol="TCP", port=80) | bad
        with pytest.raises(ValueError):
            VirtualServer.new(**args)
    assert RealServer.new("10.0.0.1", 80, 3, ROUTE) == RealServer("10.0.0.1", 80, 3, "g")
    with pytest.raises(ValueError, match="weight"):
        RealServer.new("10.0.0.1", 80, weight=2**31)
    with pytest.raises(ValueError, match="forwarding"):
        RealServer.new("10.0.0.1", 80, method="dr")
    with pytest.raises(ValueError, match="IPv4-mapped"):
        RealServer.new("::ffff:10.0.0.1", 80)


def test_a_record_with_its_reals_is_still_the_service():
    with_reals = VirtualServer("tcp", "10.0.0.1", 80, reals=(RealServer("10.1.0.1", 80),))
    assert with_reals.bare() == VirtualServer("tcp", "10.0.0.1", 80) and with_reals.key == with_reals.bare().key
    f = FakeIPVS()
    f.add_virtual_server(with_reals)  # destinations have calls of their own
    assert f.virtual_servers() == [with_reals.bare()] and f.real_servers(with_reals) == []


def test_render_is_ipvsadm_save_spelling_in_the_order_given():
    services = (
        VirtualServer("tcp", "fd00::1", 80, "rr", flags=FLAG_PERSISTENT, timeout=60, netmask=64),
        VirtualServer("udp", "10.0.0.2", 53, "wrr", reals=(RealServer("10.1.0.9", 53, 0), RealServer("10.1.0.10", 53, 3))),
        VirtualServer("sctp", "10.0.0.1", 9, "sh", flags=FLAG_PERSISTENT | 0x18, timeout=10, netmask=24,
                      reals=(RealServer("10.1.0.1", 9, method=ROUTE),)),
    )
    assert render(services) == (
        "-A -t [fd00::1]:80 -s rr -p 60 -M 64\n"
        "-A -u 10.0.0.2:53 -s wrr\n"
        "-a -u 10.0.0.2:53 -r 10.1.0.9:53 -m -w 0\n"
        "-a -u 10.0.0.2:53 -r 10.1.0.10:53 -m -w 3\n"
        "-A --sctp-service 10.0.0.1:9 -s sh -p 10 -M 255.255.255.0 -b sh-fallback,sh-port\n"
        "-a --sctp-service 10.0.0.1:9 -r 10.1.0.1:9 -g -w 1\n"
    )
    assert render(sorted_services(services)).splitlines() == [
        "-A -u 10.0.0.2:53 -s wrr",
        "-a -u 10.0.0.2:53 -r 10.1.0.9:53 -m -w 0",
        "-a -u 10.0.0.2:53 -r 10.1.0.10:53 -m -w 3",
        "-A --sctp-service 10.0.0.1:9 -s sh -p 10 -M 255.255.255.0 -b sh-fallback,sh-port",
        "-a --sctp-service 10.0.0.1:9 -r 10.1.0.1:9 -g -w 1",
        "-A -t [fd00::1]:80 -s rr -p 60 -M 64",
    ]


def test_render_formats_a_shared_tuple_of_reals_once_and_right():
    shared = (RealServer("10.1.0.1", 80), RealServer("fd00::1", 80, method=TUNNEL))
    services = [VirtualServer("tcp", f"10.0.0.{i}", 80, reals=shared) for i in (1, 2)]
    assert render(services).splitlines()[-2:] == ["-a -t 10.0.0.2:80 -r 10.1.0.1:80 -m -w 1",
                                                  "-a -t 10.0.0.2:80 -r [fd00::1]:80 -i -w 1"]


def _answers() -> dict[str, list]:
    out: dict[str, list] = {}
    for step, answer, _ in S.run(FakeIPVS()):
        out.setdefault(step, []).append(answer)
    return out


def test_fake_refuses_what_the_kernel_refuses():
    a = _answers()
    errs = {step: [x[1] for x in answers if x[0] == "error"] for step, answers in a.items()}
    assert errs["add_virtual_server(TCP 10.100.0.10:80)"] == [errno.EEXIST]
    assert errs["add_virtual_server(TCP 10.100.0.14:80)"] == [errno.ENOENT]
    assert errs["add_real_server(TCP 10.100.0.10:80, 10.200.1.1:8080)"] == [errno.EEXIST]
    assert errs["add_real_server(TCP 10.100.0.99:80, 10.200.1.1:8080)"] == [errno.ESRCH]
    assert errs["add_real_server(TCP 10.100.0.10:80, [fd00:200::1]:8080)"] == [errno.EINVAL]
    assert errs["add_real_server(TCP 10.100.0.11:443, [fd00:200::7]:443)"] == []  # tunnelled: allowed
    assert errs["update_real_server(UDP 10.100.0.10:53, 10.200.2.9:5353)"] == [errno.ENOENT]
    assert errs["update_real_server(TCP 10.100.0.99:80, 10.200.1.1:8080)"] == [errno.ESRCH]
    assert errs["update_virtual_server(TCP 10.100.0.99:80)"] == [errno.ESRCH]
    assert errs["update_virtual_server(TCP 10.100.0.12:8443)"] == [errno.ENOENT]
    assert errs["delete_real_server(TCP 10.100.0.10:80, 10.200.1.3:8080)"] == [errno.ENOENT]
    assert errs["delete_real_server(TCP 10.100.0.99:80, 10.200.1.3:8080)"] == [errno.ESRCH]
    assert errs["delete_virtual_server(UDP 10.100.0.10:53)"] == [errno.ESRCH]
    assert a["real_servers(UDP 10.100.0.10:53)"] == [("ok", [])]
    assert a["get_virtual_server(TCP 10.100.0.99:80)"] == [("ok", None)]
    assert a["get_virtual_server(TCP 10.100.0.10:80)"] == [("ok", VirtualServer("tcp", "10.100.0.10", 80, "wrr"))]
    assert a["virtual_servers()"][-1] == ("ok", [])


def test_fake_messages_name_the_objects_and_the_reason():
    f = FakeIPVS()
    f.add_virtual_server(S.WEB)
    with pytest.raises(IPVSError) as e:
        f.add_virtual_server(S.WEB)
    assert str(e.value) == "cannot add virtual server TCP 10.100.0.10:80: the virtual server exists already"
    assert isinstance(e.value, UsageError)  # the CLI prints it as one line, exit 2
    with pytest.raises(IPVSError, match=r"ip_vs_nosuch is missing"):
        f.add_virtual_server(S.UNKNOWN_SCHED)
    with pytest.raises(IPVSError, match=r"real server \[fd00:200::1\]:8080 of TCP 10.100.0.10:80: .*tunnel"):
        f.add_real_server(S.WEB, S.V6)


def test_fake_updates_weights_schedulers_and_persistence():
    steps = S.run(FakeIPVS())
    tables = {step: table for step, _, table in steps}
    after_weight = tables["update_real_server(UDP 10.100.0.10:53, 10.200.2.2:5353)"]
    assert "-a -u 10.100.0.10:53 -r 10.200.2.2:5353 -m -w 0\n" in after_weight
    after_sched = tables["update_virtual_server(TCP 10.100.0.11:443)"]
    assert "-A -t 10.100.0.10:80 -s wrr\n" in after_sched
    assert "-A -t 10.100.0.11:443 -s sh\n" in after_sched  # no "-p 10800" any more
    before = steps[S.SCRIPT.index(("add_real_server", S.STICKY, S.TUNNEL6))][2]
    assert "-A -t 10.100.0.11:443 -s sh -p 10800\n" in before
    assert "-a -t 10.100.0.11:443 -r [fd00:200::7]:443 -i -w 1\n" in before
    assert steps[-1][2] == ""  # flushed


def test_a_refused_step_changes_nothing():
    f = FakeIPVS()
    f.add_virtual_server(S.WEB)
    f.add_real_server(S.WEB, S.W1)
    before, log = f.dump(), list(f.log)
    for call in (lambda: f.add_virtual_server(S.WEB), lambda: f.add_real_server(S.WEB, S.W1),
                 lambda: f.update_virtual_server(S.MISSING), lambda: f.delete_real_server(S.WEB, S.W2)):
        with pytest.raises(IPVSError):
            call()
    assert (f.dump(), f.log) == (before, log)


def test_load_table_and_table_round_trip():
    services = [with_reals(S.WEB, S.W2, S.W1), with_reals(S.WEB6, S.V6), S.SCTP]
    f = FakeIPVS()
    load_table(f, services)
    # family, protocol number, address, port; the reals by address
    assert f.table() == (with_reals(S.WEB, S.W1, S.W2), S.SCTP, with_reals(S.WEB6, S.V6))


def with_reals(vs: VirtualServer, *reals: RealServer) -> VirtualServer:
    return replace(vs, reals=reals)
