"""One script of IPVS operations, run against the fake (tests/dataplane) and the kernel (tests/vm).

`run(client)` plays SCRIPT and returns, for every step, what the client
answered (a value, or the errno and message it refused with) and the table
after the step in `ipvsadm-save -n` spelling. The parity test asserts the
kernel's transcript equals the fake's; the fake's own test asserts the
answers that matter by hand, so the fake cannot drift to a wrong idea that
both sides would then share.
"""

from __future__ import annotations

from typing import Any

from rulegen.dataplane.ipvs import FLAG_PERSISTENT, FLAG_SCHED2, IPVS, ROUTE, TUNNEL, IPVSError, RealServer, VirtualServer

WEB = VirtualServer.new("tcp", "10.100.0.10", 80, "rr")
DNS = VirtualServer.new("udp", "10.100.0.10", 53, "wrr")
STICKY = VirtualServer.new("tcp", "10.100.0.11", 443, "sh", flags=FLAG_PERSISTENT, timeout=10800)
MH = VirtualServer.new("tcp", "10.100.0.12", 8443, "mh", flags=FLAG_SCHED2)
SCTP = VirtualServer.new("sctp", "10.100.0.13", 9000, "rr")
WEB6 = VirtualServer.new("tcp", "fd00:100::10", 80, "rr")
STICKY6 = VirtualServer.new("tcp", "fd00:100::11", 80, "rr", flags=FLAG_PERSISTENT, timeout=60, netmask=64)
MISSING = VirtualServer.new("tcp", "10.100.0.99", 80, "rr")
UNKNOWN_SCHED = VirtualServer.new("tcp", "10.100.0.14", 80, "nosuch")

W1 = RealServer.new("10.200.1.1", 8080)
W2 = RealServer.new("10.200.1.2", 8080)
W3 = RealServer.new("10.200.1.3", 8080)
D1 = RealServer.new("10.200.2.1", 5353, weight=3)
D2 = RealServer.new("10.200.2.2", 5353, weight=1)
V6 = RealServer.new("fd00:200::1", 8080, weight=2)
ROUTED = RealServer.new("10.200.3.1", 443, method=ROUTE)
TUNNEL6 = RealServer.new("fd00:200::7", 443, method=TUNNEL)

SCRIPT: list[tuple] = [
    ("add_virtual_server", WEB),
    ("add_virtual_server", DNS),
    ("add_virtual_server", STICKY),
    ("add_virtual_server", MH),
    ("add_virtual_server", SCTP),
    ("add_virtual_server", WEB6),
    ("add_virtual_server", STICKY6),
    ("add_virtual_server", WEB),  # EEXIST
    ("add_virtual_server", UNKNOWN_SCHED),  # ENOENT: no ip_vs_nosuch
    ("add_real_server", WEB, W1),
    ("add_real_server", WEB, W2),
    ("add_real_server", WEB, W3),
    ("add_real_server", DNS, D1),
    ("add_real_server", DNS, D2),
    ("add_real_server", WEB, W1),  # EEXIST
    ("add_real_server", MISSING, W1),  # ESRCH
    ("add_real_server", WEB, V6),  # EINVAL: IPv6 behind IPv4 needs tunnelling
    ("add_real_server", WEB6, V6),
    ("add_real_server", STICKY, ROUTED),
    ("add_real_server", STICKY, TUNNEL6),  # another family, tunnelled: allowed
    ("real_servers", WEB),
    ("update_real_server", DNS, RealServer.new("10.200.2.2", 5353, weight=0)),  # graceful termination
    ("update_real_server", DNS, RealServer.new("10.200.2.9", 5353, weight=1)),  # ENOENT
    ("update_real_server", MISSING, W1),  # ESRCH
    ("update_virtual_server", VirtualServer.new("tcp", "10.100.0.10", 80, "wrr")),
    ("update_virtual_server", VirtualServer.new("tcp", "10.100.0.11", 443, "sh")),  # persistence off
    ("update_virtual_server", MISSING),  # ESRCH
    ("update_virtual_server", VirtualServer.new("tcp", "10.100.0.12", 8443, "nosuch")),  # ENOENT
    ("get_virtual_server", VirtualServer.new("tcp", "10.100.0.10", 80)),
    ("get_virtual_server", MISSING),
    ("delete_real_server", WEB, W3),
    ("delete_real_server", WEB, W3),  # ENOENT
    ("delete_real_server", MISSING, W3),  # ESRCH
    ("delete_virtual_server", DNS),
    ("delete_virtual_server", DNS),  # ESRCH
    ("real_servers", DNS),  # gone: an empty list, not an error
    ("virtual_servers",),
    ("flush",),
    ("virtual_servers",),
]


def step_label(step: tuple) -> str:
    return step[0] + "(" + ", ".join(str(a) for a in step[1:]) + ")"


def run(client: IPVS, script: list[tuple] = SCRIPT) -> list[tuple[str, Any, str]]:
    """(step, answer, table after it) for every step; answer is ("ok", value) or ("error", errno, message)."""
    out: list[tuple[str, Any, str]] = []
    for step in script:
        try:
            answer: tuple = ("ok", getattr(client, step[0])(*step[1:]))
        except IPVSError as e:
            answer = ("error", e.errno, str(e))
        out.append((step_label(step), answer, client.dump()))
    return out
