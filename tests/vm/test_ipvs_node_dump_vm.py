"""Inside the IPVS VM: a foreign DROP in filter INPUT shadows a NodePort on a real IPVS node, as the trace says.

A node namespace is loaded as tests/nodedump_ipvs.py loads the committed
IPVS dumps (`ipset restore` and `iptables-restore` of the compile's
ipset.rules and iptables.rules, kube-proxy's IPVS-mode jumps prepended,
then the foreign rule: a host's own DROP of one NodePort from the uplink,
first in filter INPUT), plus what that host cannot hold: the compile's
virtual servers by `ipvsadm -R`, kube-ipvs0 with the cluster IPs, and
kube-proxy's sysctls. (Not `rulegen apply`: the same state, but it took
most of the guest's 20 s under emulation; the applier has VM tests of its
own.) Real connections from a client namespace: the other NodePort is
answered by the two pods (rr), the shadowed one never is. The node's own
`ipvsadm -Sn`, `ipset save` and `iptables-save`, as a dump folder, are
traced: DROP by that rule (named) for the one, the pods that answered for
the other. Bounded: six connections, one of them waiting out a short
timeout.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path

import pytest

from rulegen.backends.ipvs.apply import SYSCTLS
from rulegen.backends.ipvs.compile import JUMP_RULES
from rulegen.backends.ipvs.render import files
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
TIMEOUT = 2.0  # an answered connection's
DROPPED_AFTER = 1.0  # a dropped SYN never gets an answer: one second of waiting shows it as well as more

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


def _load(ns: str, compiled) -> None:
    """The node as tests/nodedump_ipvs.py builds it (kube-proxy's jumps prepended, then the foreign rule first in
    INPUT), in one `iptables-restore --noflush` (each process costs seconds under emulation), plus IPVS,
    kube-ipvs0 and kube-proxy's sysctls."""
    texts = files(compiled.ir)
    inserts: dict[str, list[str]] = {}
    for table, chain, spec in JUMP_RULES:  # each prepended in turn, as kube-proxy's EnsureRule(Prepend) does
        inserts.setdefault(table, []).append(f"-I {chain} 1 {spec}")
    inserts["filter"].append(f"-I INPUT 1 {DROP_RULE}")
    lines, table = [], ""
    for line in texts["iptables.rules"].splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line == "COMMIT":
            lines += inserts.pop(table, [])
        lines.append(line)
    assert not inserts, inserts  # every table with a jump is in the compile
    restore = "\n".join(lines) + "\n"
    script = (f"ipset restore < {ns}.ipset && iptables-restore --noflush < {ns}.ipt && ipvsadm -R < {ns}.ipvs && "
              f"sysctl -q -w {' '.join(f'{k}={v}' for k, v in SYSCTLS)}")
    with tempfile.TemporaryDirectory() as tmp:
        for ext, text in (("ipset", texts["ipset.rules"]), ("ipt", restore), ("ipvs", texts["ipvsadm.rules"])):
            Path(tmp, f"{ns}.{ext}").write_text(text)
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], cwd=tmp, check=True, capture_output=True,
                       timeout=60)
    _ip_batch(["link add kube-ipvs0 type dummy", *(f"addr add {a}/32 dev kube-ipvs0" for a in compiled.ir.bound)], ns)


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


def _ask(client_ns: str, port: int, timeout: float = TIMEOUT) -> str:
    """The answering pod's name, or the error's name (a DROP: the connection times out)."""
    try:
        sock = in_netns(client_ns, lambda: socket.create_connection((NODE, port), timeout=timeout))
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
    _load(d, compiled)
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
        shadowed = Counter(_ask(c, SHADOWED, DROPPED_AFTER) for _ in range(1))
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
