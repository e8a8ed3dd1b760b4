"""The lab's kernel side: the throw-away namespaces, links, rules and helper processes of one run.

Topology (IPv4 only). Every namespace is named `rglab-<run id>-<role>`:

    client (203.0.113.10) --veth-- NODE --veth-- cpod (a client pod, inside the pod CIDR)
                                     |--veth-- p0, p1 ...   (endpoints on this node)
                                     |--veth-- far --veth-- p5, p6 ...  (endpoints on other nodes)

* `node` holds the node's IPs on `lo` (so MASQUERADE, which takes the first
  universe-scope address when the outgoing veth has none, picks the primary
  node IP, as on a real node), ip_forward and route_localnet on, and the
  compiled rules (payload plus kube-proxy's jump rules). The node side of
  every veth carries only the link-scope gateway address 169.254.1.1 (the
  Calico pattern); peers reach everything through `default via 169.254.1.1
  onlink`, and the node routes each peer's /32 to its veth. The node's own
  default route points at the client with the primary node IP as source, so
  traffic the node originates to a ClusterIP has a route before OUTPUT DNAT.
  The rules go in through `rulegen.apply` (what `rulegen apply` runs, nfacct
  counters included; where the kernel cannot make them the lab recompiles
  with --no-nfacct and says so). ICMP rate limiting is off in `node`
  (icmp_ratemask=0) so a burst of REJECTs is not mistaken for DROPs.
* one namespace per endpoint IP, where `rulegen.lab.net serve` (one process
  for all of them: it enters each namespace to open that endpoint's
  sockets) listens on the ports that endpoint serves; it answers with its
  own address and the source it saw. Endpoints whose nodeName is this node hang off the node; every other
  endpoint hangs off one `far` namespace ("other nodes", one for all of
  them) that is itself connected to the node, so a remote endpoint is one
  routed hop further, as in a real cluster. An endpoint whose IP is a node IP
  (hostNetwork) is served inside `node` itself. Replies always come back
  through the node, so conntrack undoes DNAT and SNAT there.
* `client` is outside the cluster; its default route via the node covers
  the node IPs, external IPs and load-balancer IPs. `cpod` is a dedicated
  client pod (not an endpoint, so no hairpin) with an address of this node's
  pod CIDR.

Per service port and access path (ClusterIP from the client pod and from the
node, NodePort from the client to every node IP and from the node to
127.0.0.1, external and load-balancer IPs from the client) the lab knows from
the plan what should happen: which endpoints share the traffic (Cluster
policy: every cluster endpoint equally; Local: the local ones; ClientIP
affinity: all of one client's connections to one endpoint), whether the
client address arrives intact or masqueraded, or whether the connection is
REJECTed (refused at once) or DROPped (times out). It sends the connections
(`rulegen.lab.net probe`, one process per source namespace, bounded in count
and time), judges the answers (shares with a chi-square goodness-of-fit test
written with `math` only) and removes everything it made, on success, error,
SIGINT or SIGTERM. It only ever deletes namespaces whose names it generated
in this run and refuses to start if one of those names exists.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ..diagnostics import UsageError
from .probes import FAR_ADDR, FAR_GATEWAY, GATEWAY, LabPlan, PodSpec, Probe

PREFIX = "rglab-"
GIVE_UP = 16  # a path whose first this many connections all fail is not sent more
SERVER_READY_TIMEOUT = 20.0
SYSCTL = "sysctl"
NET_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "net.py")  # the helpers' program


class LabInterrupted(BaseException):
    """SIGINT or SIGTERM arrived; the lab cleans up and exits.

    A BaseException, like KeyboardInterrupt, so that no library's `except
    Exception` (pyroute2 has some) can swallow it halfway through a step.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupts:
    """SIGINT/SIGTERM → LabInterrupted, except inside `shield()`, where the signal waits.

    Creating a namespace forks a helper (pyroute2) that finishes on its own;
    interrupted halfway, it could make the namespace after cleanup has run.
    So such steps run shielded and the interrupt is raised when they end
    (or, if they fail, after cleanup).
    """

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.depth = 0
        self.pending: int | None = None

    def handler(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.owner:
            # A process forked by a library inherits this handler; it must die
            # as by default, not run our cleanup.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.depth:
            self.pending = self.pending or signum
            return
        raise LabInterrupted(signum)

    @contextmanager
    def shield(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending:
            raise LabInterrupted(self.pending)


def _log(msg: str) -> None:
    print(f"rulegen lab: {msg}", file=sys.stderr, flush=True)


def _set_no_pdeath() -> None:  # pragma: no cover - runs in the child
    # Our helpers die with us even if we are killed without cleanup.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Lab:
    """The namespaces, links, rules and helper processes of one run; `close()` removes them all."""

    def __init__(self, plan: LabPlan, run_id: str | None = None, kernel: Any = None,
                 deadline: float | None = None) -> None:
        from ..apply.kernel import Kernel

        self.plan = plan
        self.run_id = run_id or secrets.token_hex(2)
        self.prefix = f"{PREFIX}{self.run_id}"
        self.kernel = kernel or Kernel.real()
        self.ns = self.kernel.netns
        self.deadline = deadline if deadline is not None else time.time() + 120
        self.attempted: list[str] = []  # names we generated and tried to create, in order
        self.procs: list[subprocess.Popen] = []
        self.closed = False
        self.owner = os.getpid()
        self.signals = Interrupts()

    # names
    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def node(self) -> str:
        return self.name("node")

    def pod_ns(self, pod: PodSpec) -> str:
        return self.node if pod.where == "host" else self.name(f"p{pod.index}")

    def all_names(self) -> list[str]:
        names = [self.name("node"), self.name("client"), self.name("cpod")]
        if any(p.where == "remote" for p in self.plan.pods):
            names.append(self.name("far"))
        names += [self.pod_ns(p) for p in self.plan.pods if p.where != "host"]
        return names

    def left(self) -> float:
        return self.deadline - time.time()

    def _check_time(self, what: str) -> None:
        if self.left() <= 0:
            raise UsageError(f"lab: --timeout reached while {what}")

    # building
    def build(self) -> None:
        names = self.all_names()
        taken = [n for n in names if self.ns.exists(n)]
        if taken:
            raise UsageError(f"lab: namespace {taken[0]} already exists; refusing to touch it")
        for n in names:
            self._check_time("creating namespaces")
            with self.signals.shield():
                self.attempted.append(n)
                self.ns.create(n)
        with self.signals.shield():
            self._links()
        self._sysctls()

    def _links(self) -> None:
        from pyroute2 import IPRoute

        p = self.plan
        node = self.node
        local = [x for x in p.pods if x.where == "local"]
        remote = [x for x in p.pods if x.where == "remote"]
        # (node-side ifname, peer namespace, peer address)
        links = [("rgcli", self.name("client"), p.client_ip), ("rgcp", self.name("cpod"), p.cpod_ip)]
        links += [(f"rgp{x.index}", self.pod_ns(x), x.ip) for x in local]
        with IPRoute(netns=node) as ip:
            lo = ip.link_lookup(ifname="lo")[0]
            ip.link("set", index=lo, state="up")
            for a in p.node_ips:
                ip.addr("add", index=lo, address=a, prefixlen=32)
            for ifname, peer_ns, _ in links:
                ip.link("add", ifname=ifname, kind="veth", peer={"ifname": "eth0", "net_ns_fd": peer_ns})
            if remote:
                ip.link("add", ifname="rgfar", kind="veth", peer={"ifname": "eth0", "net_ns_fd": self.name("far")})
                links_far = [("rgfar", self.name("far"), FAR_ADDR)]
            else:
                links_far = []
            for ifname, _, peer_ip in links + links_far:
                idx = ip.link_lookup(ifname=ifname)[0]
                ip.addr("add", index=idx, address=GATEWAY, prefixlen=32, scope=253)
                ip.link("set", index=idx, state="up")
                ip.route("add", dst=f"{peer_ip}/32", oif=idx, scope=253)
            if remote:
                far_idx = ip.link_lookup(ifname="rgfar")[0]
                for x in remote:
                    ip.route("add", dst=f"{x.ip}/32", gateway=FAR_ADDR, oif=far_idx)
            cli = ip.link_lookup(ifname="rgcli")[0]
            ip.route("add", dst="0.0.0.0/0", gateway=p.client_ip, oif=cli, prefsrc=p.node_ips[0])
        for _, peer_ns, peer_ip in links:
            self._peer(peer_ns, peer_ip, GATEWAY)
        if remote:
            far = self.name("far")
            with IPRoute(netns=far) as ip:
                for x in remote:
                    ip.link("add", ifname=f"rgp{x.index}", kind="veth",
                            peer={"ifname": "eth0", "net_ns_fd": self.pod_ns(x)})
                for x in remote:
                    idx = ip.link_lookup(ifname=f"rgp{x.index}")[0]
                    ip.addr("add", index=idx, address=FAR_GATEWAY, prefixlen=32, scope=253)
                    ip.link("set", index=idx, state="up")
                    ip.route("add", dst=f"{x.ip}/32", oif=idx, scope=253)
            self._peer(far, FAR_ADDR, GATEWAY, scope=253)
            for x in remote:
                self._peer(self.pod_ns(x), x.ip, FAR_GATEWAY)

    def _peer(self, ns: str, addr: str, gateway: str, scope: int = 0) -> None:
        from pyroute2 import IPRoute

        with IPRoute(netns=ns) as ip:
            lo = ip.link_lookup(ifname="lo")[0]
            ip.link("set", index=lo, state="up")
            idx = ip.link_lookup(ifname="eth0")[0]
            ip.addr("add", index=idx, address=addr, prefixlen=32, scope=scope)
            ip.link("set", index=idx, state="up")
            ip.route("add", dst="0.0.0.0/0", gateway=gateway, oif=idx, flags=4)  # RTNH_F_ONLINK

    def _sysctl(self, ns: str, pairs: list[tuple[str, str]]) -> None:
        if shutil.which(SYSCTL):
            argv = [SYSCTL, "-q", "-w"] + [f"{k}={v}" for k, v in pairs]
        else:  # no procps: the same writes by hand (our keys hold no interface names with dots)
            argv = ["sh", "-c", " && ".join(f"echo {v} > /proc/sys/{k.replace('.', '/')}" for k, v in pairs)]
        cp = self.ns.run(ns, argv)
        if cp.returncode != 0:
            raise UsageError(f"lab: sysctl in {ns} failed: {cp.stderr.strip()}")

    def _sysctls(self) -> None:
        # route_localnet (localhost NodePorts) is set by rulegen.apply with the rules.
        routers = [("net.ipv4.ip_forward", "1"),
                   ("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0"),
                   # REJECT answers with ICMP; the default rate limit would turn a burst of
                   # rejected probes into apparent DROPs. The lab judges rules, not rate limits.
                   ("net.ipv4.icmp_ratemask", "0")]
        self._sysctl(self.node, routers)
        if any(p.where == "remote" for p in self.plan.pods):
            self._sysctl(self.name("far"), routers)

    # rules
    def apply_rules(self, compiled: Any) -> None:
        from ..apply import apply

        # Also sets route_localnet when localhost NodePorts are on.
        # state_dir=None: leave no cache files behind for a namespace about to vanish.
        apply(compiled, self.node, kernel=self.kernel, state_dir=None)
        if compiled.settings.tcp_be_liberal:
            self._sysctl(self.node, [("net.netfilter.nf_conntrack_tcp_be_liberal", "1")])

    # Every sysctl a mode's apply may set in the node (iptables: route_localnet; IPVS: kube-proxy's); a
    # reset puts back what they were before the first apply. (`tcp_be_liberal` is the lab's own.)
    MODE_SYSCTLS = ("net.ipv4.conf.all.route_localnet", "net.netfilter.nf_conntrack_tcp_be_liberal",
                    "net.ipv4.vs.conntrack", "net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template",
                    "net.ipv4.ip_forward")

    @staticmethod
    def can_reset() -> str | None:
        """None when `reset_rules` can work here, else what it lacks (then each mode gets its own namespaces)."""
        missing = [t for t in ("conntrack",) if not shutil.which(t)]
        return f"{', '.join(missing)} is not installed" if missing else None

    def snapshot_sysctls(self) -> dict[str, str]:
        got = {k: self.kernel.netns.sysctl(self.node, k) for k in self.MODE_SYSCTLS}
        return {k: v for k, v in got.items() if v is not None}

    def reset_rules(self, applied: list[str], sysctls: dict[str, str]) -> None:
        """Take every object the APPLIED modes loaded out of the node, so the next mode starts as on a fresh node.

        IPVS's virtual servers and kube-ipvs0; every iptables table (either
        backend); every nftables table (iptables-nft's too); the ipsets
        (once no rule uses them); the conntrack table, so no connection
        of the last mode keeps its NAT; and the sysctls a mode's apply sets,
        back to SYSCTLS (what they were before the first apply).
        """
        from ..dataplane.links.client import KUBE_IPVS0

        node = self.node
        k = self.kernel
        if "ipvs" in applied:
            k.ipvs(node).flush()
            links = k.links(node)
            if links.exists(KUBE_IPVS0):
                links.delete(KUBE_IPVS0)
        # The lab is IPv4 only. iptables-restore without --noflush empties each table it is given
        # (rules and chains) in one commit.
        try:
            saved = k.xtables.save(node, 4)
            tool = k.xtables._tool("restore", node, 4)  # type: ignore[attr-defined]
        except UsageError:
            saved, tool = "", ""  # no iptables tools: nothing was loaded with them
        tables = [ln[1:].strip() for ln in saved.splitlines() if ln.startswith("*")]
        if tables:
            cp = self.ns.run(node, [tool], input="".join(f"*{t}\nCOMMIT\n" for t in tables))
            if cp.returncode != 0:
                raise UsageError(f"lab: {tool} in {node} failed while emptying the iptables tables: "
                                 f"{cp.stderr.strip()}")
        if shutil.which("nft"):
            self._run_ok(node, ["nft", "flush", "ruleset"], "removing the nftables tables")
        if "ipvs" in applied and shutil.which("ipset"):
            self._run_ok(node, ["ipset", "destroy"], "destroying the ipsets")
        cp = self.ns.run(node, ["conntrack", "-F"])
        if cp.returncode != 0 and "0 flow entries" not in cp.stderr:
            raise UsageError(f"lab: conntrack -F in {node} failed: {cp.stderr.strip()}")
        now = self.snapshot_sysctls()
        back = [(key, v) for key, v in sysctls.items() if now.get(key) != v]
        if back:
            self._sysctl(node, back)

    def _run_ok(self, ns: str, argv: list[str], what: str) -> None:
        cp = self.ns.run(ns, argv)
        if cp.returncode != 0:
            raise UsageError(f"lab: {' '.join(argv)} in {ns} failed while {what}: {cp.stderr.strip()}")

    def nfacct_works(self) -> bool:
        """Whether nfacct counters can be made here (else the payload must go without -m nfacct)."""
        try:
            self.kernel.xtables.ensure_nfacct(self.node, ["localhost_nps_accepted_pkts"])
            return True
        except UsageError:
            return False

    # helpers
    def _spawn(self, ns: str, args: list[str], stdin_data: bool = False) -> subprocess.Popen:
        # net.py by its path, isolated (-I) and without `site` (-S): it needs only the standard library, and
        # `-m rulegen.lab.net` would import the whole lab package and the site hooks first (in the IPVS
        # VM's emulation that made each helper's start 2 s instead of 0.5 s).
        argv = ["ip", "netns", "exec", ns, sys.executable, "-I", "-S", NET_SCRIPT, *args]
        # A session of their own: a terminal's Ctrl-C reaches only us, and we stop them in order.
        with self.signals.shield():  # so no helper starts without being in self.procs
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True, preexec_fn=_set_no_pdeath)
            self.procs.append(proc)
        return proc

    def start_servers(self) -> None:
        """One server process for every endpoint: it makes each endpoint's sockets in the endpoint's namespace."""
        from ..kernel.netns import NETNS_DIR

        lifetime = max(30.0, self.left() + 30.0)
        args = ["serve", "--tag", self.prefix, "--lifetime", f"{lifetime:.0f}"]
        for pod in self.plan.pods:
            args += ["--endpoint", f"{NETNS_DIR}/{self.pod_ns(pod)},{pod.ip},"
                                   f"{'+'.join(map(str, pod.tcp))},{'+'.join(map(str, pod.udp))}"]
        if not self.plan.pods:
            return
        proc = self._spawn(self.node, args)
        limit = min(SERVER_READY_TIMEOUT, max(1.0, self.left()))
        ready, _, _ = select.select([proc.stdout], [], [], limit)
        if not ready:
            raise UsageError(f"lab: the endpoint server did not start within {limit:g} s")
        if proc.stdout.readline().strip() != b"ready":
            proc.wait(timeout=5)
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise UsageError("lab: the endpoint server did not start: "
                             f"{err[-1] if err else 'exit ' + str(proc.returncode)}")

    def run_probes(self) -> dict[str, dict]:
        """Every probe of the plan: one prober per source namespace, all at once.

        (Not one prober for every source: it would start the paths' connections
        in turn, and two paths to one IPVS virtual server would then take the
        round-robin scheduler's turns in lockstep, each path always one real
        server.)
        """
        groups: dict[str, list[Probe]] = {}
        for pr in self.plan.probes:
            groups.setdefault(pr.source, []).append(pr)
        stop_at = self.deadline - 5.0
        running = []
        for source, probes in groups.items():
            jobs = [{"id": pr.key, "proto": pr.proto, "dst": pr.dst, "port": pr.port, "count": pr.count,
                     "timeout": pr.timeout, "sticky": pr.affinity,
                     "give_up": GIVE_UP if pr.expect == "answer" else 0} for pr in probes]
            proc = self._spawn(self.name(source), ["probe", "--deadline", f"{stop_at:.3f}"])
            # The prober reads all of stdin before it starts, so this cannot block for long.
            proc.stdin.write(json.dumps(jobs).encode())
            proc.stdin.close()
            proc.stdin = None  # communicate() below must not touch it again
            running.append((source, proc))
        results: dict[str, dict] = {}
        for source, proc in running:
            try:
                out, err = proc.communicate(timeout=max(1.0, self.left()))
            except subprocess.TimeoutExpired:
                raise UsageError(f"lab: the prober in {source} did not finish before --timeout") from None
            if proc.returncode != 0:
                msg = err.decode(errors="replace").strip().splitlines()
                raise UsageError(f"lab: the prober in {source} failed: {msg[-1] if msg else proc.returncode}")
            for r in json.loads(out):
                results[r["id"]] = r
        return results

    # tearing down
    def close(self) -> list[str]:
        """Stop helpers and delete exactly the namespaces this run created; returns what is left."""
        if self.closed or os.getpid() != self.owner:
            return []
        self.closed = True
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.kill()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for f in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    if f:
                        f.close()
                except OSError:
                    pass
        left = []
        for n in reversed(self.attempted):
            if not n.startswith(self.prefix + "-"):  # never anything we did not name
                continue
            try:
                self.ns.delete(n)
            except Exception:
                pass
            if self.ns.exists(n):
                left.append(n)
        return left
