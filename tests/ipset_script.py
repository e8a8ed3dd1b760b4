"""One script of `ipset restore` payloads, run against the fake and the real ipset (tests/dataplane).

`run(client)` restores each payload and returns, per step, what happened
(ok, or the error's kind and line) and the sets after it, as records. The
real ipset's wording is not compared, only what it means.
"""

from __future__ import annotations

from typing import Any

from rulegen.dataplane.ipset import IPSetError, IPSets

CREATE = """\
create RG-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 comment
create RG-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536
create RG-LB-SRC-CIDR hash:ip,port,net family inet hashsize 1024 maxelem 65536
create RG-NODE-PORT-TCP bitmap:port range 0-65535
create RG-IPVS-IPS hash:ip family inet hashsize 100 maxelem 65536
create RG-6-IPS hash:ip family inet6
create RG-NETS hash:net family inet counters
"""

ADD = """\
add RG-CLUSTER-IP 10.96.0.10,udp:53
add RG-CLUSTER-IP 10.96.0.1,443
add RG-CLUSTER-IP 10.96.0.2,TCP:80 comment "web frontend"
add RG-CLUSTER-IP 10.96.0.3,tcp:http
add RG-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5
add RG-LB-SRC-CIDR 192.0.2.10,tcp:80,203.0.113.7/24
add RG-LB-SRC-CIDR 192.0.2.10,tcp:80,198.51.100.9/32
add RG-NODE-PORT-TCP 30080
add RG-IPVS-IPS 10.96.0.10
add RG-IPVS-IPS 10.96.0.11/32
add RG-6-IPS fd00:96:0::10
add RG-NETS 10.0.0.0/8
"""

# (payload, -exist?)
SCRIPT: list[tuple[str, bool]] = [
    (CREATE, False),
    (ADD, False),
    ("add RG-CLUSTER-IP 10.96.0.10,udp:53\n", False),  # entry-exists
    ("add RG-CLUSTER-IP 10.96.0.10,udp:53\n", True),
    ("create RG-IPVS-IPS hash:ip\n", False),  # set-exists
    ("create RG-IPVS-IPS hash:ip hashsize 4096\n", True),  # same set but for hashsize: fine
    ("create RG-IPVS-IPS hash:net\n", True),  # set-exists: another type
    ("create RG-IPVS-IPS hash:ip maxelem 10\n", True),  # set-exists: another maxelem
    ("add RG-NODE-PORT-TCP 30081\nadd RG-NODE-PORT-TCP 30081\nadd RG-NODE-PORT-TCP 30082\n", False),  # line 2
    ("del RG-CLUSTER-IP 10.96.0.99,tcp:80\n", False),  # no-entry
    ("del RG-CLUSTER-IP 10.96.0.99,tcp:80\n", True),
    ("add RG-NOPE 10.0.0.1\n", True),  # no-set
    ("create RG-SMALL bitmap:port range 30000-30010\nadd RG-SMALL 80\n", True),  # out-of-range, line 2
    ("add RG-IPVS-IPS 10.0.0.1,80\n", True),  # syntax: no port in a hash:ip
    ("add RG-IPVS-IPS fd00::1\n", True),  # syntax: IPv6 in an inet set
    ("create RG-IPVS-IPS-NEW hash:ip family inet hashsize 1024 maxelem 65536\nadd RG-IPVS-IPS-NEW 10.96.0.20\n"
     "swap RG-IPVS-IPS-NEW RG-IPVS-IPS\ndestroy RG-IPVS-IPS-NEW\n", True),
    ("swap RG-IPVS-IPS RG-NETS\n", True),  # type-mismatch
    ("create RG-TINY hash:ip maxelem 2\nadd RG-TINY 10.0.0.1\nadd RG-TINY 10.0.0.2\nadd RG-TINY 10.0.0.3\n", True),
    ("flush RG-CLUSTER-IP\n", False),
    ("destroy RG-SMALL\n", False),
    ("destroy RG-SMALL\n", False),  # no-set
    ("destroy\n", False),
]


def run(client: IPSets, script: list[tuple[str, bool]] = SCRIPT) -> list[tuple[int, Any, list]]:
    """(step number, ("ok",) or ("error", kind, line), sets after) for every step."""
    out = []
    for no, (payload, exist) in enumerate(script):
        try:
            client.restore(payload, exist=exist)
            answer: tuple = ("ok",)
        except IPSetError as e:
            answer = ("error", e.kind, e.line)
        out.append((no, answer, client.sets()))
    return out
