"""Node dumps made the way real ones are: kube-proxy's rules among a CNI's, Docker's and a firewall's.

A node's `iptables-save` is never kube-proxy's alone. This helper loads a
compile and kube-proxy's jump rules into a network namespace (as `rulegen
apply` or kube-proxy would), adds chains in the shape of Calico, Flannel,
Docker, firewalld or ufw (written here from their documentation, with
invented hashes and this folder's addresses), then saves `iptables-save`
and `ipset save`. Each `Variant` is one such node: which shape, and in
which order the two were installed, which is what decides whose rules a
packet meets first (kube-proxy inserts its jumps at the top of each
built-in chain; Docker inserts DOCKER-USER at the top of FORWARD and
appends its nat jump; Calico keeps its jumps first; Flannel, firewalld
and ufw append).

The shapes take the node's interfaces as parameters (`Ifaces`), so the
same rules describe a node with eth0 and cali* interfaces (the committed
dumps in tests/node_dumps/) and the lab's throw-away node, whose links are
rgcli (the client), rgp<N> (pods here), rgcp (a client pod) and rgfar
(other nodes), for the real-traffic tests.

`python tests/nodedump.py` (root) rewrites tests/node_dumps/<variant>/
{iptables.save,ipset.save} and the dumps of the lint fixtures
(lint-fixtures/RG9xx-*/node.rules); tests/kernel/test_node_dumps_kernel.py checks
that the committed files are what the kernel prints today.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DUMPS = TESTS / "node_dumps"
CLUSTER = DUMPS / "cluster.yaml"
LINT_DIR = ROOT / "lint-fixtures"
NODE_IP = "192.168.77.10"
OTHER_NODE_IP = "192.168.77.20"
POD_CIDR = "10.244.1.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
REMOTE_POD_CIDR = "10.244.2.0/24"
LOCAL_PODS = ("10.244.1.21", "10.244.1.22", "10.244.1.31")  # this node's endpoints, in address order
REMOTE_PODS = ("10.244.2.23",)
CLIENT_POD = "10.244.1.254"  # a pod of this node that is no endpoint (the lab's client pod)
NODEPORT_WEB, NODEPORT_LOCAL = 30080, 30090


@dataclass(frozen=True)
class Ifaces:
    """The node's interfaces as the foreign rules name them."""

    ext: str  # the uplink, where outside clients arrive
    pods: tuple[tuple[str, str], ...]  # (pod address, its interface) for this node's pods
    pod_wildcard: str  # what matches every pod interface (`-i cali+`)
    remote: str  # toward other nodes' pods (a tunnel, or the uplink)

    def pod_iface(self, ip: str) -> str:
        return dict(self.pods)[ip]

    def routes(self) -> tuple[tuple[str, str], ...]:
        """The node's routes for the tracer (`--route`): each local pod to its interface, other nodes' pods to `remote`."""
        return tuple((f"{ip}/32", name) for ip, name in self.pods) + ((REMOTE_POD_CIDR, self.remote),)


# A node with Calico-style interface names (the committed dumps).
CALICO_IFACES = Ifaces("eth0", tuple((ip, f"cali{i:02d}a7f3e9b1c") for i, ip in enumerate(LOCAL_PODS + (CLIENT_POD,))),
                       "cali+", "vxlan.calico")
# A node whose pods hang off a bridge (Flannel's cni0, and Docker's examples).
BRIDGE_IFACES = Ifaces("eth0", tuple((ip, "cni0") for ip in LOCAL_PODS + (CLIENT_POD,)), "cni0", "flannel.1")


def lab_ifaces(pods: dict[str, str]) -> Ifaces:
    """The lab's node: POD address → its rgp<N> link (the lab names them); the client pod on rgcp."""
    return Ifaces("rgcli", tuple(pods.items()) + ((CLIENT_POD, "rgcp"),), "rgp+", "rgfar")


@dataclass
class Foreign:
    """What a shape adds to a node: chains with their rules, rules in the built-in chains, policies, ipsets.

    `chains` holds restore lines per table (`:CHAIN - [0:0]` declarations and
    `-A CHAIN ...` rules); `builtin` is (table, "-I" | "-A", chain, rule
    body) in the order the daemon runs them (each -I puts its rule first).
    """

    chains: dict[str, list[str]] = field(default_factory=dict)
    builtin: list[tuple[str, str, str, str]] = field(default_factory=list)
    policies: list[tuple[str, str, str]] = field(default_factory=list)
    ipsets: str = ""

    def chain(self, table: str, name: str, *rules: str) -> None:
        lines = self.chains.setdefault(table, [])
        lines.append(f":{name} - [0:0]")
        lines += [f"-A {name} {r}" for r in rules]

    def add(self, table: str, name: str, *rules: str) -> None:
        self.chains.setdefault(table, []).extend(f"-A {name} {r}" for r in rules)

    def restore_text(self) -> str:
        out = []
        for table in ("raw", "mangle", "nat", "filter"):
            lines = self.chains.get(table)
            if lines:
                decl = [x for x in lines if x.startswith(":")]
                out += [f"*{table}", *decl, *[x for x in lines if not x.startswith(":")], "COMMIT"]
        return "\n".join(out) + "\n" if out else ""


# ---------------------------------------------------------------------- the shapes


def calico(i: Ifaces) -> Foreign:
    """Calico's iptables data plane (felix): cali-* chains in raw, mangle, nat and filter, its mark bits
    0xf0000 (0x10000 accept, 0x20000 pass, 0x40000 from a workload), per-workload chains
    cali-fw-<iface> / cali-tw-<iface> with the namespace's profile (allow all), and its ipsets
    cali40all-ipam-pools, cali40masq-ipam-pools (outgoing NAT) and cali40all-vxlan-net."""
    f = Foreign()
    c = iter(range(1, 1000))

    def cm(text: str = "") -> str:
        return f'-m comment --comment "cali:rg{next(c):03d}"' + (f' -m comment --comment "{text}"' if text else "")

    w = i.pod_wildcard
    # raw: clear Calico's bits, mark what comes from workloads, reverse-path check them.
    f.chain("raw", "cali-PREROUTING",
            f"{cm()} -j MARK --set-xmark 0x0/0xf0000",
            f"-i {w} {cm()} -j MARK --set-xmark 0x40000/0x40000",
            f"{cm()} -m mark --mark 0x40000/0x40000 -j cali-rpf-skip",
            f"{cm()} -m mark --mark 0x40000/0x40000 -m rpfilter --validmark --invert -j DROP",
            f"{cm()} -m mark --mark 0x0/0x40000 -j cali-from-host-endpoint",
            f"{cm()} -m mark --mark 0x10000/0x10000 -j ACCEPT")
    f.chain("raw", "cali-OUTPUT",
            f"{cm()} -j MARK --set-xmark 0x0/0xf0000",
            f"{cm()} -j cali-to-host-endpoint",
            f"{cm()} -m mark --mark 0x10000/0x10000 -j ACCEPT")
    for name in ("cali-rpf-skip", "cali-from-host-endpoint", "cali-to-host-endpoint"):
        f.chain("raw", name)
    f.chain("mangle", "cali-PREROUTING",
            f"{cm()} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            f"{cm()} -m mark --mark 0x10000/0x10000 -j ACCEPT",
            f"{cm()} -j cali-from-host-endpoint",
            f"{cm('Host endpoint policy accepted packet.')} -m mark --mark 0x10000/0x10000 -j ACCEPT")
    f.chain("mangle", "cali-from-host-endpoint")
    f.chain("mangle", "cali-POSTROUTING")
    # nat: floating IPs (none here) and outgoing NAT for pods leaving the pools.
    f.chain("nat", "cali-PREROUTING", f"{cm()} -j cali-fip-dnat")
    f.chain("nat", "cali-OUTPUT", f"{cm()} -j cali-fip-dnat")
    f.chain("nat", "cali-POSTROUTING",
            f"{cm()} -j cali-fip-snat",
            f"{cm()} -j cali-nat-outgoing",
            f"-o vxlan.calico {cm()} -m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL "
            "-j MASQUERADE --random-fully")
    f.chain("nat", "cali-fip-dnat")
    f.chain("nat", "cali-fip-snat")
    f.chain("nat", "cali-nat-outgoing",
            f"{cm()} -m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40all-ipam-pools dst "
            "-j MASQUERADE --random-fully")
    # filter
    f.chain("filter", "cali-INPUT",
            f"-p udp {cm('Allow IPv4 VXLAN packets from allowed hosts')} -m multiport --dports 4789 "
            "-m set --match-set cali40all-vxlan-net src -m addrtype --dst-type LOCAL -j ACCEPT",
            f"-p udp {cm('Drop IPv4 VXLAN packets from non-allowed hosts')} -m multiport --dports 4789 "
            "-m addrtype --dst-type LOCAL -j DROP",
            f"-i {w} {cm()} -g cali-wl-to-host",
            f"{cm()} -m mark --mark 0x10000/0x10000 -j ACCEPT",
            f"{cm()} -j MARK --set-xmark 0x0/0xf0000",
            f"{cm()} -j cali-from-host-endpoint",
            f"{cm('Host endpoint policy accepted packet.')} -m mark --mark 0x10000/0x10000 -j ACCEPT")
    f.chain("filter", "cali-wl-to-host",
            f"{cm()} -j cali-from-wl-dispatch",
            f"{cm('Configured DefaultEndpointToHostAction')} -j ACCEPT")
    f.chain("filter", "cali-FORWARD",
            f"{cm()} -j MARK --set-xmark 0x0/0xe0000",
            f"{cm()} -m mark --mark 0x0/0x10000 -j cali-from-hep-forward",
            f"-i {w} {cm()} -j cali-from-wl-dispatch",
            f"-o {w} {cm()} -j cali-to-wl-dispatch",
            f"{cm()} -j cali-to-hep-forward",
            f"{cm()} -j cali-cidr-block")
    f.chain("filter", "cali-OUTPUT",
            f"{cm()} -m mark --mark 0x10000/0x10000 -j ACCEPT",
            f"-o {w} {cm()} -j RETURN",
            f"-p udp {cm('Allow IPv4 VXLAN packets to other allowed hosts')} -m multiport --dports 4789 "
            "-m addrtype --src-type LOCAL -m set --match-set cali40all-vxlan-net dst -j ACCEPT",
            f"{cm()} -j MARK --set-xmark 0x0/0xf0000",
            f"{cm()} -m conntrack ! --ctstate DNAT -j cali-to-host-endpoint",
            f"{cm('Host endpoint policy accepted packet.')} -m mark --mark 0x10000/0x10000 -j ACCEPT")
    for name in ("cali-from-hep-forward", "cali-to-hep-forward", "cali-cidr-block", "cali-from-host-endpoint",
                 "cali-to-host-endpoint"):
        f.chain("filter", name)
    ifaces = sorted({name for _, name in i.pods if not name.endswith("+")})
    f.chain("filter", "cali-from-wl-dispatch",
            *[f"-i {n} {cm()} -g cali-fw-{n}" for n in ifaces],
            f"{cm('Unknown interface')} -j DROP")
    f.chain("filter", "cali-to-wl-dispatch",
            *[f"-o {n} {cm()} -g cali-tw-{n}" for n in ifaces],
            f"{cm('Unknown interface')} -j DROP")
    for n in ifaces:
        f.chain("filter", f"cali-tw-{n}",
                f"{cm()} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                f"{cm()} -m conntrack --ctstate INVALID -j DROP",
                f"{cm()} -j MARK --set-xmark 0x0/0x20000",
                f"{cm()} -j cali-pri-kns.lab",
                f"{cm('Return if profile accepted')} -m mark --mark 0x10000/0x10000 -j RETURN",
                f"{cm('Drop if no profiles matched')} -j DROP")
        f.chain("filter", f"cali-fw-{n}",
                f"{cm()} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                f"{cm()} -m conntrack --ctstate INVALID -j DROP",
                f"{cm()} -j MARK --set-xmark 0x0/0x20000",
                f"-p udp {cm('Drop VXLAN encapped packets originating in workloads')} -m multiport --dports 4789 "
                "-j DROP",
                f"{cm()} -j cali-pro-kns.lab",
                f"{cm('Return if profile accepted')} -m mark --mark 0x10000/0x10000 -j RETURN",
                f"{cm('Drop if no profiles matched')} -j DROP")
    f.chain("filter", "cali-pri-kns.lab",
            f"{cm('Profile kns.lab ingress')} -j MARK --set-xmark 0x10000/0x10000",
            f"{cm()} -m mark --mark 0x10000/0x10000 -j RETURN")
    f.chain("filter", "cali-pro-kns.lab",
            f"{cm('Profile kns.lab egress')} -j MARK --set-xmark 0x10000/0x10000",
            f"{cm()} -m mark --mark 0x10000/0x10000 -j RETURN")
    # felix keeps its jumps first in the built-in chains, and ends FORWARD with its accept mark
    for table, chain in (("raw", "PREROUTING"), ("raw", "OUTPUT"), ("mangle", "PREROUTING"),
                         ("nat", "PREROUTING"), ("nat", "OUTPUT"), ("nat", "POSTROUTING"),
                         ("filter", "INPUT"), ("filter", "FORWARD"), ("filter", "OUTPUT")):
        f.builtin.append((table, "-I", chain, f"{cm()} -j cali-{chain}"))
    f.builtin.append(("filter", "-A", "FORWARD",
                      f"{cm('Policy explicitly accepted packet.')} -m mark --mark 0x10000/0x10000 -j ACCEPT"))
    f.builtin.append(("filter", "-A", "FORWARD", f"{cm()} -j MARK --set-xmark 0x10000/0x10000"))
    f.ipsets = (f"create cali40all-ipam-pools hash:net family inet hashsize 1024 maxelem 1048576\n"
                f"add cali40all-ipam-pools {CLUSTER_CIDR}\n"
                f"create cali40masq-ipam-pools hash:net family inet hashsize 1024 maxelem 1048576\n"
                f"add cali40masq-ipam-pools {CLUSTER_CIDR}\n"
                f"create cali40all-vxlan-net hash:net family inet hashsize 1024 maxelem 1048576\n"
                f"add cali40all-vxlan-net {OTHER_NODE_IP}\n")
    return f


def flannel(i: Ifaces) -> Foreign:
    """flanneld's masquerade and forward rules (FLANNEL-POSTRTG, FLANNEL-FWD), appended to the built-in chains."""
    f = Foreign()
    masq = '-m comment --comment "flanneld masq"'
    fwd = '-m comment --comment "flanneld forward"'
    f.chain("nat", "FLANNEL-POSTRTG",
            f"-m mark --mark 0x4000/0x4000 {masq} -j RETURN",
            f"-s {POD_CIDR} -d {CLUSTER_CIDR} {masq} -j RETURN",
            f"-s {CLUSTER_CIDR} -d {POD_CIDR} {masq} -j RETURN",
            f"! -s {CLUSTER_CIDR} -d {POD_CIDR} {masq} -j RETURN",
            f"-s {CLUSTER_CIDR} ! -d 224.0.0.0/4 {masq} -j MASQUERADE --random-fully",
            f"! -s {CLUSTER_CIDR} -d {CLUSTER_CIDR} {masq} -j MASQUERADE --random-fully")
    f.chain("filter", "FLANNEL-FWD",
            f"-s {CLUSTER_CIDR} {fwd} -j ACCEPT",
            f"-d {CLUSTER_CIDR} {fwd} -j ACCEPT")
    f.builtin += [("nat", "-A", "POSTROUTING", f"{masq} -j FLANNEL-POSTRTG"),
                  ("filter", "-A", "FORWARD", f"{fwd} -j FLANNEL-FWD")]
    return f


def docker(i: Ifaces, user_rules: tuple[str, ...] = (), publish: tuple[int, str] = (8080, "172.17.0.2:80"),
           nat_first: bool = False) -> Foreign:
    """dockerd's bridge network: FORWARD policy DROP, DOCKER-USER and DOCKER-ISOLATION-STAGE-1/2 first in
    FORWARD, DOCKER for published ports (PUBLISH: host port → container address), masquerade for the
    bridge. USER_RULES go into DOCKER-USER (where Docker's documentation puts a host's own filters);
    NAT_FIRST puts Docker's nat PREROUTING jump first, ahead of kube-proxy's."""
    f = Foreign()
    host_port, container = publish
    cip, _, cport = container.partition(":")
    f.chain("filter", "DOCKER", f"-d {cip}/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport {cport} -j ACCEPT")
    f.chain("filter", "DOCKER-ISOLATION-STAGE-1", "-i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2", "-j RETURN")
    f.chain("filter", "DOCKER-ISOLATION-STAGE-2", "-o docker0 -j DROP", "-j RETURN")
    f.chain("filter", "DOCKER-USER", *user_rules, "-j RETURN")
    f.chain("nat", "DOCKER", "-i docker0 -j RETURN",
            f"! -i docker0 -p tcp -m tcp --dport {host_port} -j DNAT --to-destination {container}")
    f.policies.append(("filter", "FORWARD", "DROP"))
    f.builtin += [
        ("filter", "-A", "FORWARD", "-o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        ("filter", "-A", "FORWARD", "-o docker0 -j DOCKER"),
        ("filter", "-A", "FORWARD", "-i docker0 ! -o docker0 -j ACCEPT"),
        ("filter", "-A", "FORWARD", "-i docker0 -o docker0 -j ACCEPT"),
        ("filter", "-I", "FORWARD", "-j DOCKER-ISOLATION-STAGE-1"),
        ("filter", "-I", "FORWARD", "-j DOCKER-USER"),
        ("nat", "-I" if nat_first else "-A", "PREROUTING", "-m addrtype --dst-type LOCAL -j DOCKER"),
        ("nat", "-A", "OUTPUT", "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER"),
        ("nat", "-A", "POSTROUTING", "-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"),
        ("nat", "-A", "POSTROUTING", f"-s {cip}/32 -d {cip}/32 -p tcp -m tcp --dport {cport} -j MASQUERADE"),
    ]
    return f


def firewalld(i: Ifaces) -> Foreign:
    """firewalld's iptables back end with the public zone on the uplink (ssh allowed): *_direct and
    *_ZONES chains in raw, mangle, nat and filter, conntrack ACCEPT first (DNAT included), REJECT last."""
    f = Foreign()
    zone = ("_pre", "_log", "_deny", "_allow", "_post")

    def zoned(table: str, base: str, prefix: str, direction: str, extra: tuple[str, ...] = ()) -> None:
        f.chain(table, f"{base}_ZONES", f"{direction} {i.ext} -g {prefix}_public", f"-g {prefix}_public")
        f.chain(table, f"{prefix}_public", *[f"-j {prefix}_public{s}" for s in zone], *extra)
        for s in zone:
            f.chain(table, f"{prefix}_public{s}")

    for table in ("raw", "mangle", "nat"):
        f.chain(table, "PREROUTING_direct")
        zoned(table, "PREROUTING", "PRE", "-i")
        f.builtin += [(table, "-A", "PREROUTING", "-j PREROUTING_direct"),
                      (table, "-A", "PREROUTING", "-j PREROUTING_ZONES")]
        f.chain(table, "OUTPUT_direct")
        f.builtin.append((table, "-A", "OUTPUT", "-j OUTPUT_direct"))
    for hook in ("INPUT", "FORWARD", "POSTROUTING"):
        f.chain("mangle", f"{hook}_direct")
        f.builtin.append(("mangle", "-A", hook, f"-j {hook}_direct"))
    f.chain("nat", "POSTROUTING_direct")
    zoned("nat", "POSTROUTING", "POST", "-o")
    f.builtin += [("nat", "-A", "POSTROUTING", "-j POSTROUTING_direct"),
                  ("nat", "-A", "POSTROUTING", "-j POSTROUTING_ZONES")]
    for name in ("INPUT_direct", "FORWARD_direct", "OUTPUT_direct"):
        f.chain("filter", name)
    zoned("filter", "INPUT", "IN", "-i", ("-p icmp -j ACCEPT",))
    f.add("filter", "IN_public_allow", "-p tcp -m tcp --dport 22 -m conntrack --ctstate NEW,UNTRACKED -j ACCEPT")
    f.chain("filter", "FORWARD_IN_ZONES", f"-i {i.ext} -g FWDI_public", "-g FWDI_public")
    f.chain("filter", "FORWARD_OUT_ZONES", f"-o {i.ext} -g FWDO_public", "-g FWDO_public")
    for prefix in ("FWDI", "FWDO"):
        f.chain("filter", f"{prefix}_public", *[f"-j {prefix}_public{s}" for s in zone],
                *(("-p icmp -j ACCEPT",) if prefix == "FWDI" else ()))
        for s in zone:
            f.chain("filter", f"{prefix}_public{s}")
    for hook, rules in (
        ("INPUT", ("-m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT", "-i lo -j ACCEPT", "-j INPUT_direct",
                   "-j INPUT_ZONES", "-m conntrack --ctstate INVALID -j DROP",
                   "-j REJECT --reject-with icmp-host-prohibited")),
        ("FORWARD", ("-m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT", "-i lo -j ACCEPT",
                     "-j FORWARD_direct", "-j FORWARD_IN_ZONES", "-j FORWARD_OUT_ZONES",
                     "-m conntrack --ctstate INVALID -j DROP", "-j REJECT --reject-with icmp-host-prohibited")),
        ("OUTPUT", ("-o lo -j ACCEPT", "-j OUTPUT_direct")),
    ):
        f.builtin += [("filter", "-A", hook, r) for r in rules]
    return f


def ufw(i: Ifaces) -> Foreign:
    """ufw's framework with its defaults (incoming deny, routed deny, ssh allowed): INPUT and FORWARD
    policy DROP, the ufw-before/after/user chains, logging under a rate limit."""
    f = Foreign()
    log = "-m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix"
    hooks = {"INPUT": "input", "FORWARD": "forward", "OUTPUT": "output"}
    for hook, h in hooks.items():
        for part in ("before-logging", "before", "after", "after-logging", "reject", "track"):
            f.builtin.append(("filter", "-A", hook, f"-j ufw-{part}-{h}"))
    icmp = [f"-p icmp -m icmp --icmp-type {t} -j ACCEPT" for t in (3, 11, 12, 8)]
    f.chain("filter", "ufw-before-input", "-i lo -j ACCEPT",
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-m conntrack --ctstate INVALID -j ufw-logging-deny", "-m conntrack --ctstate INVALID -j DROP",
            *icmp, "-p udp -m udp --sport 67 --dport 68 -j ACCEPT", "-j ufw-not-local",
            "-d 224.0.0.251/32 -p udp -m udp --dport 5353 -j ACCEPT",
            "-d 239.255.255.250/32 -p udp -m udp --dport 1900 -j ACCEPT", "-j ufw-user-input")
    f.chain("filter", "ufw-before-forward", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            *icmp, "-j ufw-user-forward")
    f.chain("filter", "ufw-before-output", "-o lo -j ACCEPT", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-j ufw-user-output")
    f.chain("filter", "ufw-after-input", "-p udp -m udp --dport 137 -j ufw-skip-to-policy-input",
            "-p udp -m udp --dport 138 -j ufw-skip-to-policy-input",
            "-p tcp -m tcp --dport 139 -j ufw-skip-to-policy-input",
            "-p tcp -m tcp --dport 445 -j ufw-skip-to-policy-input",
            "-m addrtype --dst-type BROADCAST -j ufw-skip-to-policy-input")
    f.chain("filter", "ufw-after-logging-input", f'{log} "[UFW BLOCK] "')
    f.chain("filter", "ufw-after-logging-forward", f'{log} "[UFW BLOCK] "')
    for h in hooks.values():
        f.chain("filter", f"ufw-before-logging-{h}")
        f.chain("filter", f"ufw-reject-{h}")
        f.chain("filter", f"ufw-user-logging-{h}")
        if h != "input":
            f.chain("filter", f"ufw-after-{h}")
        if h == "output":
            f.chain("filter", "ufw-after-logging-output")
    f.chain("filter", "ufw-track-input")
    f.chain("filter", "ufw-track-forward")
    f.chain("filter", "ufw-track-output", "-p tcp -m conntrack --ctstate NEW -j ACCEPT",
            "-p udp -m conntrack --ctstate NEW -j ACCEPT")
    f.chain("filter", "ufw-logging-deny",
            "-m conntrack --ctstate INVALID -m limit --limit 3/min --limit-burst 10 -j RETURN",
            f'{log} "[UFW BLOCK] "')
    f.chain("filter", "ufw-logging-allow", f'{log} "[UFW ALLOW] "')
    f.chain("filter", "ufw-not-local", "-m addrtype --dst-type LOCAL -j RETURN",
            "-m addrtype --dst-type MULTICAST -j RETURN", "-m addrtype --dst-type BROADCAST -j RETURN",
            "-m limit --limit 3/min --limit-burst 10 -j ufw-logging-deny", "-j DROP")
    f.chain("filter", "ufw-skip-to-policy-input", "-j DROP")
    f.chain("filter", "ufw-skip-to-policy-forward", "-j DROP")
    f.chain("filter", "ufw-skip-to-policy-output", "-j ACCEPT")
    f.chain("filter", "ufw-user-input", '-p tcp -m tcp --dport 22 -m comment --comment "\'dapp_OpenSSH\'" -j ACCEPT')
    f.chain("filter", "ufw-user-forward")
    f.chain("filter", "ufw-user-output")
    f.chain("filter", "ufw-user-limit", '-m limit --limit 3/min -j LOG --log-prefix "[UFW LIMIT BLOCK] "',
            "-j REJECT --reject-with icmp-port-unreachable")
    f.chain("filter", "ufw-user-limit-accept", "-j ACCEPT")
    f.policies += [("filter", "INPUT", "DROP"), ("filter", "FORWARD", "DROP")]
    return f


@dataclass(frozen=True)
class Variant:
    """One node: a shape, and how it meets kube-proxy's jumps.

    `kube_first`: kube-proxy (re)inserted its jumps after the shape was
    installed, so they come first; otherwise the shape's -I rules come
    first. `without_kube_jumps` leaves kube-proxy's jumps out of these
    tables (a firewall reload flushed them and kube-proxy has not synced
    yet).
    """

    name: str
    shape: str
    kube_first: bool
    options: tuple[tuple[str, object], ...] = ()
    without_kube_jumps: tuple[str, ...] = ()
    about: str = ""

    def foreign(self, ifaces: Ifaces) -> Foreign:
        return SHAPES[self.shape](ifaces, **dict(self.options))


def custom(i: Ifaces, builtin: tuple[tuple[str, str, str, str], ...] = (),
           policies: tuple[tuple[str, str, str], ...] = ()) -> Foreign:
    """A few rules of a host's own in the built-in chains (what the lint fixtures need, one pitfall each)."""
    return Foreign(builtin=list(builtin), policies=list(policies))


SHAPES = {"calico": calico, "flannel": flannel, "docker": docker, "firewalld": firewalld, "ufw": ufw,
          "custom": custom}

VARIANTS = (
    Variant("calico", "calico", False, about="Calico's jumps first in every built-in chain (felix keeps them there)"),
    Variant("flannel", "flannel", True, about="flanneld's rules appended after kube-proxy's jumps"),
    Variant("docker", "docker", False,
            about="dockerd started after kube-proxy: DOCKER-USER first in FORWARD, whose policy is DROP"),
    Variant("docker-user-drop", "docker", False,
            options=(("user_rules", ("-i {ext} ! -s 192.0.2.1/32 -j DROP",)),),
            about="Docker's documented DOCKER-USER filter (only 192.0.2.1 may reach the bridge from the uplink)"),
    Variant("docker-dnat-first", "docker", False,
            options=(("publish", (NODEPORT_WEB, "10.244.1.31:8080")), ("nat_first", True)),
            about="a container published on the NodePort, Docker's nat jump ahead of kube-proxy's"),
    Variant("firewalld", "firewalld", True, about="firewalld (iptables back end), kube-proxy's jumps re-inserted after"),
    Variant("firewalld-reloaded", "firewalld", False, without_kube_jumps=("filter", "nat"),
            about="firewalld reloaded: kube-proxy's jumps are gone until its next sync"),
    Variant("ufw", "ufw", True, about="ufw with its defaults (routed traffic denied), kube-proxy's jumps first"),
)


def _one(table: str, verb: str, chain: str, spec: str, **kw) -> Variant:
    return Variant("", "custom", False, options=(("builtin", ((table, verb, chain, spec),)),), **kw)


# lint-fixtures/<code>-<bad|good>/: (the variant, the cluster file in that folder). Each bad one shows one
# pitfall; its good twin is the same rule where it does no harm (after kube-proxy's jumps), or none at all.
LINT_FIXTURES: dict[str, Variant] = {
    "RG901-bad": _one("filter", "-I", "FORWARD", "-i {ext} -p tcp -m tcp --dport 8080 -j DROP"),
    "RG901-good": _one("filter", "-A", "FORWARD", "-i {ext} -p tcp -m tcp --dport 8080 -j DROP"),
    "RG902-bad": _one("nat", "-I", "PREROUTING", f"-p tcp -m tcp --dport {NODEPORT_WEB} -j DNAT "
                      "--to-destination 10.244.1.31:8080"),
    "RG902-good": _one("nat", "-A", "PREROUTING", f"-p tcp -m tcp --dport {NODEPORT_WEB} -j DNAT "
                       "--to-destination 10.244.1.31:8080"),
    "RG903-bad": _one("nat", "-I", "PREROUTING", "-i {ext} -j ACCEPT"),
    "RG903-good": _one("nat", "-A", "PREROUTING", "-i {ext} -j ACCEPT"),
    "RG904-bad": _one("filter", "-I", "FORWARD", "-i {ext} -j ACCEPT"),
    "RG904-good": _one("filter", "-A", "FORWARD", "-i {ext} -j ACCEPT"),
    "RG905-bad": _one("nat", "-I", "PREROUTING", "-i {ext} -j RETURN"),
    "RG905-good": _one("nat", "-A", "PREROUTING", "-i {ext} -j RETURN"),
    # lab/local only: its connections are not masqueraded, so kube-proxy's mark ACCEPT does not hold them
    "RG906-bad": Variant("", "custom", False, options=(("policies", (("filter", "FORWARD", "DROP"),)),)),
    "RG906-good": Variant("", "custom", False, options=(("builtin", (("filter", "-A", "FORWARD", "-j ACCEPT"),)),
                                                        ("policies", (("filter", "FORWARD", "DROP"),)))),
    # lab/web only: from outside masqueraded and accepted by kube-proxy alone; the node's pods by the host's rule
    "RG907-bad": Variant("", "custom", False, options=(
        ("builtin", (("filter", "-A", "FORWARD", "-i {pods} -j ACCEPT"),)),
        ("policies", (("filter", "FORWARD", "DROP"),)))),
    "RG907-good": Variant("", "custom", False, options=(
        ("builtin", (("filter", "-A", "FORWARD", "-i {pods} -j ACCEPT"),)),)),
    "RG908-bad": Variant("", "custom", False, without_kube_jumps=("nat",)),
    "RG908-good": Variant("", "custom", False),
}


def variant(name: str) -> Variant:
    return next(v for v in VARIANTS if v.name == name)


def expand(f: Foreign, ifaces: Ifaces) -> Foreign:
    """`{ext}` in a shape's user rules is the uplink's name, `{pods}` what matches every pod interface."""
    fmt = {"ext": ifaces.ext, "pods": ifaces.pod_wildcard}
    return Foreign({t: [x.format(**fmt) if "{" in x else x for x in ls] for t, ls in f.chains.items()},
                   [(t, v, c, s.format(**fmt) if "{ext}" in s or "{pods}" in s else s) for t, v, c, s in f.builtin],
                   list(f.policies), f.ipsets)


# ---------------------------------------------------------------------- loading into a namespace (root)


def run_in(ns: str, *argv: str, input: str | None = None) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, text=True, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns} failed: {r.stderr.strip()}")
    return r.stdout


def install(ns: str, compiled, v: Variant, ifaces: Ifaces, kube_loaded: bool = False) -> None:
    """Put V's node into NS: the compile and kube-proxy's jumps (unless KUBE_LOADED: `rulegen apply` did),
    the shape's ipsets, chains, built-in rules and policies, in V's order."""
    from rulegen.backends.iptables.compile import jump_rules

    f = expand(v.foreign(ifaces), ifaces)
    if f.ipsets:
        run_in(ns, "ipset", "restore", "-exist", input=f.ipsets)
    if not kube_loaded:
        run_in(ns, "iptables-restore", "--noflush", input=compiled.text)
    jumps = [j for j in jump_rules(compiled.settings) if j[0] not in v.without_kube_jumps]

    def kube() -> None:
        if kube_loaded:
            return
        for table, chain, spec in jumps:
            run_in(ns, "iptables", "-t", table, "-I", chain, *shlex.split(spec))

    if v.kube_first:
        foreign_rules(ns, f)
        kube()
    else:
        kube()
        foreign_rules(ns, f)
    if kube_loaded and v.without_kube_jumps:
        for table, chain, spec in jump_rules(compiled.settings):
            if table in v.without_kube_jumps:
                run_in(ns, "iptables", "-t", table, "-D", chain, *shlex.split(spec))


def foreign_rules(ns: str, f: Foreign) -> None:
    text = f.restore_text()
    if text:
        run_in(ns, "iptables-restore", "--noflush", input=text)
    for table, verb, chain, spec in f.builtin:
        run_in(ns, "iptables", "-t", table, verb, chain, *shlex.split(spec))
    for table, chain, policy in f.policies:
        run_in(ns, "iptables", "-t", table, "-P", chain, policy)


def saved(ns: str) -> tuple[str, str]:
    """The namespace's iptables-save (without the date lines) and ipset save."""
    text = run_in(ns, "iptables-save")
    lines = [x for x in text.splitlines() if not x.startswith(("# Generated", "# Completed"))]
    return "\n".join(lines) + "\n", run_in(ns, "ipset", "save")


def compile_cluster(path: Path = CLUSTER):
    from rulegen.flags import SETTING_KEYS
    from rulegen.pipeline import compile_files

    flags = {k: None for k in SETTING_KEYS}
    flags["nfacct"] = False  # a namespace has no nfacct counters; the rules mean the same without them
    return compile_files([str(path)], flags)


def make(v: Variant, ns: str, ifaces: Ifaces = CALICO_IFACES, cluster: Path = CLUSTER) -> tuple[str, str]:
    """V's node built in a fresh namespace NS (created and deleted here): (iptables-save, ipset save)."""
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
    try:
        install(ns, compile_cluster(cluster), v, ifaces)
        return saved(ns)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def ifaces_of(v: Variant) -> Ifaces:
    return CALICO_IFACES if v.shape == "calico" else BRIDGE_IFACES


def main() -> None:  # pragma: no cover - run by hand, as root, to rewrite the committed dumps
    import os

    for v in VARIANTS:
        ipt, sets = make(v, f"rgt-nodedump-{os.getpid()}", ifaces_of(v))
        d = DUMPS / v.name
        d.mkdir(exist_ok=True)
        (d / "iptables.save").write_text(ipt)
        (d / "ipset.save").write_text(sets)
        print(f"{d}: {len(ipt.splitlines())} lines, {sets.count(chr(10))} ipset lines", file=sys.stderr)
    for name, v in LINT_FIXTURES.items():
        d = LINT_DIR / name
        ipt, _ = make(v, f"rgt-nodedump-{os.getpid()}", BRIDGE_IFACES, d / "input.yaml")
        (d / "node.rules").write_text(ipt)
        print(f"{d}/node.rules: {len(ipt.splitlines())} lines", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
