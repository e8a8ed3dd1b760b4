"""Inside the IPVS VM: every committed IPVS node dump, loaded into a real node, answers as `rulegen trace` says.

The dumps are tests/node_dumps/ipvs-*/ (tests/nodedump_ipvs.py builds them:
kube-proxy's IPVS glue among Calico's, Docker's, firewalld's, ufw's chains,
or a host's own INPUT DROP of a NodePort). One node namespace is built once
for all of them (module fixture): the client on its uplink eth0 (as the
dumps name it), a veth per pod for this node's three pods (10.244.1.21,
.22, .31) and one toward the other node's pod (10.244.2.23), the dumps'
virtual servers by `ipvsadm -R` of their ipvsadm.rules (the same text in
every dump; the kernel's own `ipvsadm -Sn` must print it back), kube-ipvs0
with the dumps' bound addresses and kube-proxy's sysctls. (Not `rulegen
apply`: the same state, but it costs most of the guest's time under
emulation; the applier has VM tests of its own.)

Each variant then swaps only what differs: the tables are emptied (so no
rule holds a set), the sets destroyed, and the dump's own `ipset.rules`
and `iptables.rules` restored, in one shell. A few real connections go
from the client to each NodePort at once (web: one per real server, rr
gives each one; local: one), each pod answering with its address and the
peer it sees. `rulegen trace --mode ipvs --rules DIR --json` on the same
folder (the CLI, in process, told the node's routes) gives each path's
outcome: DNAT answers from exactly its endpoints, masqueraded or not as it
says; REJECT is refused; DROP times out. Bounded: at most four
connections a variant, one second of waiting for a SYN nobody answers.
"""

from __future__ import annotations

import errno
import json
import select
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from nodedump_ipvs import DUMPS, VARIANTS
from nshelp import namespace_names

from rulegen.backends.ipvs.apply import SYSCTLS
from rulegen.backends.ipvs.trace import TRACER
from rulegen.cli import main as rulegen_main
from rulegen.kernel.netns import in_netns

pytestmark = [pytest.mark.ipvs_kernel, pytest.mark.root]

NODE, CLIENT = "192.168.77.10", "192.168.77.1"  # cluster.yaml's node address, and a client on its uplink
POD_GW = "10.244.1.1"  # the node's address toward every pod link (what masqueraded connections come from)
# each endpoint of the dumps (cluster.yaml) → the node's link to it; the other node's pod behind "far"
LINKS = {"10.244.1.21": "vp1", "10.244.1.22": "vp2", "10.244.1.31": "vp3", "10.244.2.23": "far"}
ROUTES = {"vp1": "10.244.1.21/32", "vp2": "10.244.1.22/32", "vp3": "10.244.1.31/32", "far": "10.244.2.0/24"}
NODEPORTS = (30080, 30090)  # lab/web (Cluster: two pods here, one there), lab/local (Local: one pod here)
TARGET = 8080
ANSWER_WITHIN = 3.0  # an accepted connection's pod must have answered by then
DROPPED_AFTER = 1.0  # a SYN with no SYN-ACK nor refusal by then was dropped (the first retransmit is at 1 s)
EMPTY = "".join(f"*{t}\n" + "".join(f":{c} ACCEPT [0:0]\n" for c in chains) + "COMMIT\n" for t, chains in (
    ("raw", ("PREROUTING", "OUTPUT")), ("mangle", ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")),
    ("nat", ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")), ("filter", ("INPUT", "FORWARD", "OUTPUT"))))


def _ip_batch(lines: list[str], netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input="".join(ln + "\n" for ln in lines), check=True,
                   capture_output=True, text=True, timeout=30)


def _sh(ns: str, script: str, cwd: Path | None = None) -> str:
    cp = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], cwd=cwd, capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, f"{script!r} in {ns}: {cp.stderr.strip()}"
    return cp.stdout


def _serve(listener: socket.socket, name: str, stop: threading.Event) -> None:
    listener.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, peer = listener.accept()
        except (TimeoutError, socket.timeout):
            continue
        except OSError:
            return
        with conn:
            conn.sendall(f"{name} {peer[0]}".encode())


class Node:
    """The node namespace, its client and pods, the pods' servers running (`start`; `close` stops them)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "empty.rules").write_text(EMPTY)
        self.stop = threading.Event()
        self.servers: list[tuple[threading.Thread, socket.socket]] = []
        self.ipvsadm = ""

    def start(self, names) -> None:
        def make() -> str:
            n = names()
            subprocess.run(["ip", "netns", "add", n], check=True, capture_output=True, timeout=30)
            return n

        self.node, self.client = make(), make()
        self.pods = {ip: make() for ip in LINKS}
        d = self.node
        _ip_batch([f"link add eth0 netns {d} type veth peer name cli netns {self.client}",
                   *(f"link add {LINKS[ip]} netns {d} type veth peer name eth0 netns {p}"
                     for ip, p in self.pods.items())], d)
        first = DUMPS / VARIANTS[0].name
        state, _ = TRACER.read(str(first), "ipv4")
        _ip_batch(["link set lo up", f"addr add {NODE}/24 dev eth0", "link set eth0 up",
                   *(x for link, cidr in ROUTES.items()
                     for x in (f"addr add {POD_GW}/32 dev {link}", f"link set {link} up",
                               f"route add {cidr} dev {link}")),
                   "link add kube-ipvs0 type dummy", *(f"addr add {a}/32 dev kube-ipvs0" for a in state.bound)], d)
        _ip_batch(["link set lo up", f"addr add {CLIENT}/24 dev cli", "link set cli up"], self.client)
        for ip, p in self.pods.items():
            _ip_batch(["link set lo up", f"addr add {ip}/24 dev eth0", "link set eth0 up",
                       f"route add default via {POD_GW} dev eth0 onlink"], p)
        # the virtual servers: the same ipvsadm.rules in every dump (a test checks), and what the kernel prints
        self.ipvsadm = _sh(d, f"ipvsadm -R < {first / 'ipvsadm.rules'} && "
                              f"sysctl -q -w {' '.join(f'{k}={v}' for k, v in SYSCTLS)} && ipvsadm -Sn")
        for ip, p in self.pods.items():
            def listen(addr=ip) -> socket.socket:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((addr, TARGET))
                s.listen(16)
                return s

            listener = in_netns(p, listen)
            t = threading.Thread(target=_serve, args=(listener, ip, self.stop), daemon=True)
            t.start()
            self.servers.append((t, listener))

    def close(self) -> None:
        self.stop.set()
        for t, listener in self.servers:
            t.join(timeout=5)
            listener.close()

    def load(self, dump: Path) -> None:
        """DUMP's sets and rules in place of the last ones: tables emptied, sets destroyed, both restored."""
        _sh(self.node, f"iptables-restore < empty.rules && ipset destroy && ipset restore < {dump / 'ipset.rules'} "
                       f"&& iptables-restore < {dump / 'iptables.rules'}", cwd=self.tmp)

    def connect(self, ports: list[int]) -> list[str]:
        """One connection from the client to the node per entry of PORTS, all at once: each one's answer
        ("<pod> <peer it saw>"), "refused" (RST or ICMP unreachable) or "timeout" (nothing by DROPPED_AFTER)."""
        socks = in_netns(self.client, lambda: [socket.socket() for _ in ports])
        out = ["?"] * len(ports)
        try:
            for s, port in zip(socks, ports):
                s.setblocking(False)
                rc = s.connect_ex((NODE, port))
                assert rc in (0, errno.EINPROGRESS), errno.errorcode.get(rc, rc)
            pending = dict(enumerate(socks))  # no SYN-ACK nor refusal yet
            reading: dict[int, socket.socket] = {}  # connected, the pod's answer not read yet
            t0 = time.monotonic()
            for _ in range(4 * len(ports) + 4):  # bounded: each turn settles a socket or reaches a deadline
                now = time.monotonic()
                if pending and now >= t0 + DROPPED_AFTER:
                    for i in pending:
                        out[i] = "timeout"
                    pending.clear()
                if not pending and not reading or now >= t0 + ANSWER_WITHIN:
                    break
                until = t0 + (DROPPED_AFTER if pending else ANSWER_WITHIN)
                r, w, _ = select.select(list(reading.values()), list(pending.values()), [], max(until - now, 0))
                for i, s in list(pending.items()):
                    if s in w:
                        del pending[i]
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err == 0:
                            reading[i] = s
                        else:  # an ICMP host-prohibited (REJECT) or a reset: refused either way
                            refused = err in (errno.ECONNREFUSED, errno.EHOSTUNREACH)
                            out[i] = "refused" if refused else errno.errorcode.get(err, str(err))
                for i, s in list(reading.items()):
                    if s in r:
                        del reading[i]
                        out[i] = s.recv(64).decode() or "closed"
            for i in reading:
                out[i] = "connected, no answer"
        finally:
            for s in socks:
                s.close()
        return out


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with namespace_names("rgvm-ipvsdump") as names:
        n = Node(tmp_path_factory.mktemp("ipvsdump"))
        try:
            n.start(names)
            yield n
        finally:
            n.close()


def _trace(dump: Path, port: int) -> dict:
    """`rulegen trace --mode ipvs --rules DUMP --json` from the client to the NodePort, told the node's routes."""
    argv = ["trace", "--mode", "ipvs", "--rules", str(dump), "--node-ip", NODE, "--dst", f"{NODE}:{port}",
            "--src", CLIENT, "--json", *(x for link, cidr in ROUTES.items() for x in ("--route", f"{cidr}={link}"))]
    r = CliRunner().invoke(rulegen_main, argv, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _expected(t: dict) -> tuple[int, Counter]:
    """How many connections a path gets, and what they must meet: each endpoint answering as often as the
    trace's chance says (rr over N endpoints: N connections, one each), with the peer it says it sees."""
    if t["verdict"] == "DNAT":
        n = len(t["destinations"])
        want = Counter()
        for d in t["destinations"]:
            ip = d["endpoint"].rpartition(":")[0]
            want[f"{ip} {POD_GW if d['masquerade'] else CLIENT}"] += round(d["probability"] * n)
        assert sum(want.values()) == n, t["destinations"]
        return n, want
    return 1, Counter({{"DROP": "timeout", "REJECT": "refused"}[t["verdict"]]: 1})


def test_the_node_holds_the_dumps_virtual_servers(node):
    """What every dump's ipvsadm.rules says (the compile's text) is what the kernel prints back."""
    texts = {(DUMPS / v.name / "ipvsadm.rules").read_text() for v in VARIANTS}
    assert len(texts) == 1, "the IPVS dumps differ in ipvsadm.rules: one node namespace cannot hold them all"
    assert sorted(node.ipvsadm.splitlines()) == sorted(texts.pop().splitlines())


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS])
def test_real_connections_through_a_node_dump_meet_what_the_trace_says(node, variant: str):
    dump = DUMPS / variant
    node.load(dump)
    traces = {port: _trace(dump, port) for port in NODEPORTS}
    plan = {port: _expected(t) for port, t in traces.items()}
    ports = [port for port, (n, _) in plan.items() for _ in range(n)]
    answers = node.connect(ports)
    got = {port: Counter(a for p, a in zip(ports, answers) if p == port) for port in NODEPORTS}
    for port, t in traces.items():
        assert not t["assumed"], t["assumptions"]  # the folder's own ipset.rules decides every set
        assert got[port] == plan[port][1], (f"NodePort {port}: the trace says {t['verdict']}, so "
                                            f"{dict(plan[port][1])}; the kernel: {dict(got[port])}; "
                                            f"the trace's notes: {t['notes']}")
        if t["verdict"] in ("DROP", "REJECT"):  # who stopped it is named: the foreign rule or policy
            assert any(n.startswith(f"{t['verdict']} by ") for n in t["notes"]), t["notes"]
    if variant == "ipvs-input-drop":  # the host's own DROP of the web NodePort, first in filter INPUT
        t = traces[30080]
        assert t["verdict"] == "DROP"
        note = next(n for n in t["notes"] if n.startswith("DROP by filter INPUT rule 1, outside kube-proxy's chains"))
        assert note.endswith("-A INPUT -i eth0 -p tcp -m tcp --dport 30080 -j DROP")
        assert any("never saw this connection" in n for n in t["notes"])
