"""Inside the IPVS VM: a foreign DROP in filter INPUT shadows a NodePort on a real IPVS node, as the trace says.

A node namespace gets the compile through `rulegen apply --mode ipvs`
(kube-ipvs0, kube-proxy's sysctls and sets, IPVS, the glue and its jumps),
then a host's own rule first in filter INPUT drops one NodePort from the
uplink. Real connections from a client namespace: the other NodePort is
answered by the two pods (rr), the shadowed one never is. The node's own
`ipvsadm -Sn`, `ipset save` and `iptables-save`, as a dump folder, are
traced: DROP by that rule (named) for the one, the pods that answered for
the other. Bounded: six connections, one of them waiting out a short
timeout.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from rulegen.apply import apply
from rulegen.apply.kernel import Kernel
from rulegen.backends.ipvs.trace import TRACER
from rulegen.diagnostics import Report
from rulegen.flags import SETTING_KEYS
from rulegen.kernel.netns import in_netns
from rulegen.pipeline import compile_files

pytestmark = [pytest.mark.ipvs_kernel, pytest.mark.root]

NODE, CLIENT = "192.168.77.10", "192.168.77.1"
PODS = {"p1": "10.244.1.21", "p2": "10.244.1.22"}
POD_GW = "10.244.1.1"
SHADOWED, OPEN, TARGET = 30080, 30081, 8080
DROP_RULE = f"-i eth0 -p tcp -m tcp --dport {SHADOWED} -j DROP"
TIMEOUT = 2.0

CLUSTER = f"""
apiVersion: v1
kind: Node
metadata: {{name: lab-node}}
spec: {{podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24]}}
status: {{addresses: [{{type: InternalIP, address: {NODE}}}]}}
""" + "".join(f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: lab}}
spec:
  type: NodePort
  clusterIP: 10.96.50.{i}
  clusterIPs: [10.96.50.{i}]
  ports: [{{name: http, protocol: TCP, port: 80, targetPort: {TARGET}, nodePort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-a, namespace: lab, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, protocol: TCP, port: {TARGET}}}]
endpoints:
  - {{addresses: [{PODS['p1']}], conditions: {{ready: true}}, nodeName: lab-node}}
  - {{addresses: [{PODS['p2']}], conditions: {{ready: true}}, nodeName: lab-node}}
""" for i, name, port in ((10, "shadowed", SHADOWED), (20, "open", OPEN)))


def _ip_batch(lines: list[str], netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input="".join(ln + "\n" for ln in lines), check=True,
                   capture_output=True, text=True, timeout=30)


def _sh(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True,
                          timeout=60).stdout


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


def _ask(client_ns: str, port: int) -> str:
    """The answering pod's name, or the error's name (a DROP: the connection times out)."""
    try:
        sock = in_netns(client_ns, lambda: socket.create_connection((NODE, port), timeout=TIMEOUT))
    except OSError as e:
        return "timeout" if isinstance(e, (TimeoutError, socket.timeout)) else type(e).__name__
    with sock:
        sock.settimeout(TIMEOUT)
        return sock.recv(64).decode()


def test_a_foreign_input_drop_shadows_a_nodeport_in_the_kernel_as_in_the_trace(netns, tmp_path: Path):
    c, d, p1, p2 = netns(), netns(), netns(), netns()
    # the client on the node's uplink (called eth0, as the rule and the tracer name it); a veth per pod
    _ip_batch([f"link add eth0 netns {d} type veth peer name cli netns {c}",
               f"link add vp1 netns {d} type veth peer name eth0 netns {p1}",
               f"link add vp2 netns {d} type veth peer name eth0 netns {p2}"], d)
    _ip_batch([f"addr add {NODE}/24 dev eth0", "link set eth0 up",
               f"addr add {POD_GW}/32 dev vp1", "link set vp1 up", f"route add {PODS['p1']}/32 dev vp1",
               f"addr add {POD_GW}/32 dev vp2", "link set vp2 up", f"route add {PODS['p2']}/32 dev vp2"], d)
    _ip_batch([f"addr add {CLIENT}/24 dev cli", "link set cli up"], c)
    for ns, key in ((p1, "p1"), (p2, "p2")):
        _ip_batch([f"addr add {PODS[key]}/24 dev eth0", "link set eth0 up",
                   f"route add default via {POD_GW} dev eth0 onlink"], ns)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER)
    flags = {k: None for k in SETTING_KEYS}
    flags.update(mode="ipvs", cluster_cidr=("10.244.0.0/16",), nfacct=False)
    compiled = compile_files([str(cluster)], flags, Report())
    apply(compiled, d, kernel=Kernel.real(), state_dir=None)
    _sh(d, "iptables", "-I", "INPUT", *DROP_RULE.split())

    stop = threading.Event()
    threads = []
    for ns, key in ((p1, "p1"), (p2, "p2")):
        def listen(addr=PODS[key]) -> socket.socket:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, TARGET))
            s.listen(16)
            return s

        listener = in_netns(ns, listen)
        t = threading.Thread(target=_serve, args=(listener, key, stop), daemon=True)
        t.start()
        threads.append((t, listener))
    try:
        opened = Counter(_ask(c, OPEN) for _ in range(4))
        shadowed = Counter(_ask(c, SHADOWED) for _ in range(1))
    finally:
        stop.set()
        for t, listener in threads:
            t.join(timeout=5)
            listener.close()
    assert opened == {"p1": 2, "p2": 2}, opened  # rr over the two pods
    assert shadowed == {"timeout": 1}, shadowed  # dropped: no answer, no refusal

    dump = tmp_path / "node"
    dump.mkdir()
    (dump / "ipvsadm.rules").write_text(_sh(d, "ipvsadm", "-Sn"))
    (dump / "ipset.rules").write_text(_sh(d, "ipset", "save"))
    (dump / "iptables.rules").write_text(_sh(d, "iptables-save"))
    state, name = TRACER.read(str(dump), "ipv4")
    s = compiled.settings

    t = TRACER.trace_saved(state, s, CLIENT, NODE, OPEN, "tcp", plan=compiled.plan, source=name,
                           pod_cidrs=s.node_pod_cidrs)
    assert t.verdict == "DNAT" and not t.assumed
    answered = {PODS[k] for k in opened}
    assert {x.endpoint.rpartition(":")[0] for x in t.destinations} == answered

    t = TRACER.trace_saved(state, s, CLIENT, NODE, SHADOWED, "tcp", plan=compiled.plan, source=name,
                           pod_cidrs=s.node_pod_cidrs)
    assert t.verdict == "DROP" and not t.destinations and not t.assumed
    note = next(n for n in t.notes if n.startswith("DROP by filter INPUT rule 1, outside kube-proxy's chains"))
    assert note.endswith(f"-A INPUT {DROP_RULE}")
    assert any("never saw this connection" in n for n in t.notes)
