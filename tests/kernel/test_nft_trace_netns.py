"""The nftables tracer against the kernel: real connections through the compiled `ip kube-proxy` table.

For every IPv4 case with a behaviour table and an expected.nftables, the case is compiled in
nftables mode and loaded with `nft -f` into a throw-away node namespace. Around it: one namespace per
endpoint (a tiny server that answers with its own address and the source it saw), one client
namespace per interface the trace says a connection arrives on (its node-side veth carries that
name, so `iifname` matches see what the trace assumed), and a "beyond" namespace that is the node's
default route and answers on the addresses the rules should leave alone, so a connection the rules leave alone is seen to
go on un-NATed. Each table entry is traced, then sent (a bounded number of connections, short
timeouts) from its source, and the kernel must do what the trace says:

* DNAT: every connection answered by an endpoint, the endpoints that answered exactly the trace's
  destinations (with ClientIP affinity: one of them, every time), and the source each endpoint saw
  is the client's own address exactly when the trace says no masquerade (from the node itself:
  a node address);
* REJECT: refused at once; DROP: timed out;
* ACCEPT to a node address: refused (nothing listens); to another address: answered beyond the
  node by that very address, with the client's own source.

The nft listing of the loaded table is traced too and must agree with the compiled trace.
Namespaces are rgnt-*, made per case and always deleted; every helper process is stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from nshelp import namespace_names

from rulegen import golden
from rulegen.backends.nftables.dump import read_text
from rulegen.backends.nftables.trace import trace_saved
from rulegen.pipeline import compile_files
from rulegen.trace import trace_compiled
from rulegen.trace.entry import DEFAULT_SRC
from rulegen.trace.tables import TABLE_FILE, load_table

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "169.254.1.1"
BEYOND = "169.254.9.9"
CONNECTIONS = 24  # per DNAT entry: a 1/3 share goes unseen with chance (2/3)^24 < 1e-4
FAILURES = 3  # connections sent where the trace predicts refusal or silence
TIMEOUT = 0.6  # a DROPped connection is given this long, per try
LIFETIME = 120.0  # helper processes exit on their own after this, whatever happens to the test


def cases() -> list[Path]:
    out = []
    for d in sorted((ROOT / "fixtures").iterdir()):
        if (d / TABLE_FILE).is_file() and "nftables" in golden.load_case(d).modes:
            out.append(d)
    return out


CASES = cases()

SERVER = r"""
import selectors, socket, sys, time
ports = [int(p) for p in sys.argv[1].split(",") if p]
until = time.time() + float(sys.argv[2])
sel = selectors.DefaultSelector()
for p in ports:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", p))
        if kind == socket.SOCK_STREAM:
            s.listen(64)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, kind)
print("ready", flush=True)
while time.time() < until:
    for key, _ in sel.select(0.5):
        s = key.fileobj
        try:
            if key.data == socket.SOCK_STREAM:
                c, peer = s.accept()
                c.sendall(f"{c.getsockname()[0]} {peer[0]}\n".encode())
                c.close()
            else:
                data, peer = s.recvfrom(64)
                s.sendto(f"{s.getsockname()[0]} {peer[0]}\n".encode(), peer)
        except OSError:
            pass
"""

CLIENT = r"""
import errno, json, socket, sys
jobs = json.loads(sys.stdin.read())
out = []
for j in jobs:
    res = []
    for _ in range(j["count"]):
        kind = socket.SOCK_STREAM if j["proto"] == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        s.settimeout(j["timeout"])
        try:
            s.bind((j["src"], 0))
            s.connect((j["dst"], j["port"]))
            if kind == socket.SOCK_DGRAM:
                s.send(b"x")
            data = s.recv(128).decode().split()
            res.append("ok " + " ".join(data))
        except socket.timeout:
            res.append("timeout")
        except ConnectionRefusedError:
            res.append("refused")
        except OSError as e:
            res.append("errno " + errno.errorcode.get(e.errno, str(e.errno)))
        finally:
            s.close()
        if len(res) >= j["give_up"] and not any(r.startswith("ok") for r in res):
            break
    out.append(res)
print(json.dumps(out))
"""


def sh(*argv: str, input: str | None = None) -> str:
    r = subprocess.run(argv, input=input, text=True, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    return r.stdout


def ns_do(ns: str, *argv: str, input: str | None = None) -> str:
    return sh("ip", "netns", "exec", ns, *argv, input=input)


class Node:
    """The throw-away node of one case and what hangs off it; `close` removes every process it started."""

    def __init__(self, name, compiled):
        self.name, self.c = name, compiled
        self.node = name()
        self.procs: list[subprocess.Popen] = []
        self.ns_of_ep: dict[str, str] = {}
        self.clients: dict[str, str] = {}  # node-side interface → client namespace
        s = compiled.settings
        self.node_ips = tuple(s.node_ips_of(4))
        sh("ip", "netns", "add", self.node)
        ns_do(self.node, "ip", "link", "set", "lo", "up")
        for ip in self.node_ips:
            ns_do(self.node, "ip", "addr", "add", f"{ip}/32", "dev", "lo")
        for k, v in (("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.rp_filter", "0"),
                     ("net.ipv4.conf.default.rp_filter", "0"), ("net.ipv4.icmp_ratemask", "0")):
            ns_do(self.node, "sysctl", "-q", "-w", f"{k}={v}")
        # beyond: the node's default route, answering on any address
        self.beyond = name()
        sh("ip", "netns", "add", self.beyond)
        self._link("rgbeyond", self.beyond, BEYOND)
        ns_do(self.node, "ip", "route", "add", "default", "via", BEYOND, "dev", "rgbeyond",
              *(("src", self.node_ips[0]) if self.node_ips else ()))
        ports: dict[str, set[int]] = {}
        for p in compiled.plan.ports:
            for e in p.endpoints:
                ports.setdefault(e.ip, set()).add(e.port)
        for i, (ip, eps) in enumerate(sorted(ports.items())):
            if ip in self.node_ips:
                continue  # a hostNetwork endpoint: none in these cases
            ns = name()
            sh("ip", "netns", "add", ns)
            self._link(f"rgep{i}", ns, ip)
            self.ns_of_ep[ip] = ns
            self._serve(ns, eps)
        sh("ip", "netns", "exec", self.node, "nft", "-f", "-", input=compiled.text)

    def _link(self, ifname: str, peer: str, addr: str) -> None:
        ns_do(self.node, "ip", "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", peer)
        ns_do(self.node, "ip", "addr", "add", f"{GATEWAY}/32", "dev", ifname, "scope", "link")
        ns_do(self.node, "ip", "link", "set", ifname, "up")
        ns_do(self.node, "ip", "route", "replace", f"{addr}/32", "dev", ifname, "scope", "link")
        ns_do(peer, "ip", "link", "set", "lo", "up")
        ns_do(peer, "ip", "addr", "add", f"{addr}/32", "dev", "eth0")
        ns_do(peer, "ip", "link", "set", "eth0", "up")
        ns_do(peer, "ip", "route", "add", "default", "via", GATEWAY, "dev", "eth0", "onlink")

    def _serve(self, ns: str, ports) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER,
                              ",".join(str(x) for x in sorted(ports)), str(LIFETIME)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        line = p.stdout.readline()
        assert line.strip() == "ready", f"server in {ns} did not start: {p.stderr.read() if p.poll() else ''}"

    def serve_beyond(self, ports) -> None:
        self._serve(self.beyond, ports)

    def beyond_owns(self, ip: str) -> None:
        """BEYOND answers for IP as its own (one local route per address: a catch-all would swallow replies)."""
        ns_do(self.beyond, "ip", "route", "replace", "local", f"{ip}/32", "dev", "lo")

    def client(self, iface: str, src: str) -> str:
        """The namespace that sends SRC's connections in on IFACE (the node's route to SRC points there)."""
        ns = self.clients.get(iface)
        if ns is None:
            ns = self.clients[iface] = self.name()
            sh("ip", "netns", "add", ns)
            self._link(iface, ns, src)
        else:
            ns_do(ns, "ip", "addr", "replace", f"{src}/32", "dev", "eth0")
            ns_do(self.node, "ip", "route", "replace", f"{src}/32", "dev", iface, "scope", "link")
        return ns

    def send(self, ns: str, jobs: list[dict]) -> list[list[str]]:
        return json.loads(ns_do(ns, sys.executable, "-c", CLIENT, input=json.dumps(jobs)))

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(timeout=10)
            p.stdout.close()
            p.stderr.close()


@lru_cache(maxsize=None)
def compiled(case_dir: Path):
    case = golden.load_case(case_dir)
    flags, config = golden.case_flags(case)
    flags["mode"] = "nftables"
    return compile_files([str(p) for p in case.inputs], flags, None, config)


def expectation(t, node_ips) -> str | None:
    """What the kernel should show for trace T, in one word; None where it cannot be told apart."""
    if len(t.outcomes) != 1:
        return None
    if t.verdict == "ACCEPT":
        local = t.packet.dst in node_ips or t.packet.dst.startswith("127.")
        if local:
            return "refused"
        return "beyond" if t.packet.proto == "tcp" else None
    return {"DNAT": "answered", "REJECT": "refused", "DROP": "timeout"}[t.verdict]


@pytest.mark.parametrize("case_dir", CASES, ids=[d.name for d in CASES])
def test_the_kernel_does_what_the_nft_trace_says(case_dir):
    c = compiled(case_dir)
    if c.settings.family != 4:
        pytest.skip("IPv6 cases are traced against nft's listing, not with packets, here")
    pods = next((tuple(n.pod_cidrs) for n in c.inputs.nodes if n.name == c.settings.hostname), ())
    checks = [c for c in (x.for_mode("nftables") for x in load_table(case_dir / TABLE_FILE)) if c is not None]
    with namespace_names("rgnt") as name:
        node = Node(name, c)
        try:
            beyond_ports = {chk.dst_parts()[1] for chk in checks}
            node.serve_beyond(beyond_ports)
            listing = read_text(ns_do(node.node, "nft", "list", "table", "ip", "kube-proxy"), "nft list table")
            bad: list[str] = []
            judged = 0
            for chk in checks:
                ip, port = chk.dst_parts()
                src = chk.src or DEFAULT_SRC[4]
                t = trace_compiled(c, chk.src, ip, port, chk.proto, in_iface=chk.in_iface, pod_cidrs=pods)
                got = trace_saved(listing, c.settings, chk.src, ip, port, chk.proto, plan=c.plan,
                                  in_iface=chk.in_iface, pod_cidrs=pods, source="listing")
                assert (got.verdict, got.shares(), got.masquerade) == (t.verdict, t.shares(), t.masquerade), chk.name
                want = expectation(t, node.node_ips)
                if want is None or src == ip:
                    continue  # a verdict that depends on the path, or a client that owns the destination
                if want == "beyond":
                    node.beyond_owns(ip)
                if t.entry.hook == "OUTPUT":
                    ns = node.node
                elif src in node.ns_of_ep:
                    ns = node.ns_of_ep[src]  # an endpoint reaching itself (hairpin)
                else:
                    ns = node.client(t.entry.in_iface, src)
                count = CONNECTIONS if want == "answered" else FAILURES
                [res] = node.send(ns, [{"src": src, "dst": ip, "port": port, "proto": chk.proto, "count": count,
                                        "timeout": TIMEOUT if want == "timeout" else 3.0, "give_up": 2}])
                judged += 1
                bad += judge(chk.name, t, want, res, src, node.node_ips)
            assert judged >= 1
            assert bad == [], "\n".join(bad)
        finally:
            node.close()


def judge(what: str, t, want: str, res: list[str], src: str, node_ips) -> list[str]:
    oks = [r.split()[1:] for r in res if r.startswith("ok ")]
    if want == "answered":
        if len(oks) != len(res):
            return [f"{what}: the trace says DNAT, the kernel: {sorted(set(res))}"]
        shares = {d.endpoint.rsplit(":", 1)[0] for d in t.destinations if d.probability > 0}
        seen = {own for own, _ in oks}
        out = []
        if any(d.affinity for d in t.destinations):
            if len(seen) != 1 or not seen <= shares:
                out.append(f"{what}: with affinity one of {sorted(shares)} answers every time; answered: {sorted(seen)}")
        elif seen != shares:
            out.append(f"{what}: answered by {sorted(seen)}, the trace's destinations {sorted(shares)}")
        masq = {d.endpoint.rsplit(":", 1)[0]: d.masquerade for d in t.destinations}
        for own, peer in oks:
            if t.entry.hook == "OUTPUT":
                ok = peer in node_ips or peer.startswith("127.")
            else:
                ok = (peer != src) == masq.get(own, False)
            if not ok:
                out.append(f"{what}: {own} saw {peer} (client {src}); the trace says masquerade "
                           f"{masq.get(own)}")
                break
        return out
    if want == "beyond":
        if not oks or any(own != t.packet.dst or peer != src for own, peer in oks) or len(oks) != len(res):
            return [f"{what}: the trace leaves it alone; beyond the node it should arrive un-NATed from {src}, "
                    f"the kernel: {res}"]
        return []
    if set(res) != {want}:
        return [f"{what}: the trace says {t.verdict} ({want}), the kernel: {res}"]
    return []
