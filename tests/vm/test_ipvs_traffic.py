"""Inside the IPVS VM: real connections through a virtual server that masquerades to two real servers.

Four namespaces of the guest: a client, a director holding the virtual
server (its address on kube-ipvs0, as kube-proxy binds it) and two real
servers that route back through the director, as NAT needs. Every socket is
made inside its namespace (a socket keeps the namespace it was made in), so
the servers and the client run as threads of this process and no program
is started per connection. Each side is bounded: a fixed number of
connections, each with a timeout.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections import Counter

import pytest

from rulegen.dataplane.ipvs import RealIPVS, RealServer, VirtualServer
from rulegen.dataplane.links import RealLinks
from rulegen.kernel.netns import in_netns

pytestmark = [pytest.mark.ipvs_kernel, pytest.mark.root]

VIP, PORT = "10.96.50.10", 80
SERVERS = {"s1": ("10.10.2.2", "10.10.2.1"), "s2": ("10.10.3.2", "10.10.3.1")}
CLIENT, CLIENT_GW = "10.10.1.2", "10.10.1.1"
BACKEND_PORT = 8080
TIMEOUT = 10.0


def _ip_batch(lines: list[str], netns: str | None = None) -> None:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    subprocess.run(argv, input="".join(ln + "\n" for ln in lines), check=True, capture_output=True, text=True)


def _forwarding_on() -> None:
    # /proc/sys/net is the namespace of the thread that opens it.
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")


def _serve(listener: socket.socket, name: str, stop: threading.Event) -> None:
    listener.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except (TimeoutError, socket.timeout):
            continue
        except OSError:
            return
        with conn:
            conn.sendall(name.encode())


def _ask(client_ns: str) -> str:
    sock = in_netns(client_ns, lambda: socket.create_connection((VIP, PORT), timeout=TIMEOUT))
    with sock:
        sock.settimeout(TIMEOUT)
        return sock.recv(64).decode()


def test_round_robin_splits_connections_and_weight_zero_drains(netns):
    c, d, s1, s2 = netns(), netns(), netns(), netns()
    # veth pairs from the director to each of the others, made in place.
    _ip_batch([f"link add dc netns {d} type veth peer name cd netns {c}",
               f"link add d1 netns {d} type veth peer name s netns {s1}",
               f"link add d2 netns {d} type veth peer name s netns {s2}"])
    _ip_batch([f"addr add {CLIENT_GW}/24 dev dc", "link set dc up",
               f"addr add {SERVERS['s1'][1]}/24 dev d1", "link set d1 up",
               f"addr add {SERVERS['s2'][1]}/24 dev d2", "link set d2 up"], d)
    _ip_batch([f"addr add {CLIENT}/24 dev cd", "link set cd up", f"route add default via {CLIENT_GW}"], c)
    for ns, key in ((s1, "s1"), (s2, "s2")):
        addr, gw = SERVERS[key]
        _ip_batch([f"addr add {addr}/24 dev s", "link set s up", f"route add default via {gw}"], ns)
    in_netns(d, _forwarding_on)

    links = RealLinks(d)
    assert links.ensure_dummy() is True
    links.add_address("kube-ipvs0", VIP)
    ipvs = RealIPVS(d)
    vs = VirtualServer("tcp", VIP, PORT, "rr")
    dests = {key: RealServer(SERVERS[key][0], BACKEND_PORT) for key in SERVERS}
    ipvs.add_virtual_server(vs)
    for rs in dests.values():
        ipvs.add_real_server(vs, rs)

    stop = threading.Event()
    threads = []
    for ns, key in ((s1, "s1"), (s2, "s2")):
        def listen(addr=SERVERS[key][0]) -> socket.socket:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, BACKEND_PORT))
            s.listen(16)
            return s

        listener = in_netns(ns, listen)
        t = threading.Thread(target=_serve, args=(listener, key, stop), daemon=True)
        t.start()
        threads.append((t, listener))
    try:
        split = Counter(_ask(c) for _ in range(6))
        assert split == {"s1": 3, "s2": 3}  # rr alternates: exactly half each

        ipvs.update_real_server(vs, RealServer(SERVERS["s2"][0], BACKEND_PORT, weight=0))
        drained = Counter(_ask(c) for _ in range(4))
        assert drained == {"s1": 4}  # weight 0: no new connections (kube-proxy's graceful termination)
    finally:
        stop.set()
        for t, listener in threads:
            t.join(timeout=5)
            listener.close()
