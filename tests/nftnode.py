"""Whole-node nftables dumps built the way real ones are: a compile plus other programs' tables, then `nft list ruleset`.

The cluster is tests/node_dumps/cluster.yaml (the iptables node dumps'
one). Each variant loads `rulegen compile --mode nftables` into a fresh
network namespace, then the tables of the node's other programs, written
here from their documentation (no upstream file is copied):

* `firewalld` — firewalld's nftables backend: table `inet firewalld`,
  base chains at `raw + 10`, `mangle + 10`, `dstnat + 10`, `filter + 10`,
  `srcnat + 10`, zones dispatched by interface (`public` on the uplink,
  `trusted` for the pod interfaces), `ct status dnat accept` in INPUT and
  FORWARD (what lets Service DNAT through), a final
  `reject with icmpx admin-prohibited`;
* `docker` — Docker's nftables firewall backend: table `ip docker-bridges`,
  verdict maps keyed by bridge name, a published port (8080 → a container),
  its raw-priority DROP of direct access to the container, masquerade of the
  bridge's network; and one rule iptables-nft wrote (`iptables -I FORWARD`,
  as a legacy tool would), so `ip filter` appears as iptables-nft's table;
* `server-filter` — the nftables wiki's "simple ruleset for a server":
  `inet filter` with input and forward policy drop. Its forward policy
  drops every NodePort and ClusterIP connection kube-proxy DNATs to a pod
  (kube-proxy's accepts do not keep another table's base chain open): the
  trace must report DROP and name the policy;
* `guard-drop` — a hand-made `inet guard` at raw priority dropping one
  NodePort from the uplink: DROP, named by its rule;
* `nat-first` — a DNAT in an `ip natfirst` nat chain at dstnat - 5 that
  takes a NodePort before kube-proxy's nat chain, which is then not
  consulted for those connections;
* `notrack` — an `inet raw` table that takes one NodePort's connections out
  of conntrack: no nat chain sees them, kube-proxy's DNAT never happens, and
  the node itself refuses them.

`python tests/nftnode.py` (root) rewrites tests/node_dumps/nft-<variant>/ruleset.nft;
tests/kernel/test_nft_node_dumps_kernel.py rebuilds them and checks them
against real traffic.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DUMPS = TESTS / "node_dumps"
CLUSTER = DUMPS / "cluster.yaml"
NODE_IP = "192.168.77.10"


@dataclass(frozen=True)
class Ifaces:
    ext: str  # the uplink
    pods: str  # an nft wildcard for every pod interface ("cni0", "rgp*")


BRIDGE = Ifaces("eth0", "cni0")

FIREWALLD = """
table inet firewalld {
\tchain raw_PREROUTING {
\t\ttype filter hook prerouting priority raw + 10; policy accept;
\t\ticmpv6 type { nd-router-advert, nd-neighbor-solicit } accept
\t\tmeta nfproto ipv6 fib saddr . mark . iif oif missing drop
\t\tjump raw_PREROUTING_ZONES
\t}
\tchain raw_PREROUTING_ZONES {
\t\tiifname "{pods}" goto raw_PRE_trusted
\t\tiifname "{ext}" goto raw_PRE_public
\t\tgoto raw_PRE_public
\t}
\tchain raw_PRE_public {
\t\tjump raw_PRE_public_pre
\t\tjump raw_PRE_public_allow
\t\tjump raw_PRE_public_post
\t}
\tchain raw_PRE_public_pre {
\t}
\tchain raw_PRE_public_allow {
\t}
\tchain raw_PRE_public_post {
\t}
\tchain raw_PRE_trusted {
\t}
\tchain mangle_PREROUTING {
\t\ttype filter hook prerouting priority mangle + 10; policy accept;
\t\tjump mangle_PREROUTING_ZONES
\t}
\tchain mangle_PREROUTING_ZONES {
\t\tiifname "{pods}" goto mangle_PRE_trusted
\t\tiifname "{ext}" goto mangle_PRE_public
\t\tgoto mangle_PRE_public
\t}
\tchain mangle_PRE_public {
\t\tjump mangle_PRE_public_allow
\t}
\tchain mangle_PRE_public_allow {
\t}
\tchain mangle_PRE_trusted {
\t}
\tchain nat_PREROUTING {
\t\ttype nat hook prerouting priority dstnat + 10; policy accept;
\t\tjump nat_PREROUTING_ZONES
\t}
\tchain nat_PREROUTING_ZONES {
\t\tiifname "{pods}" goto nat_PRE_trusted
\t\tiifname "{ext}" goto nat_PRE_public
\t\tgoto nat_PRE_public
\t}
\tchain nat_PRE_public {
\t\tjump nat_PRE_public_allow
\t}
\tchain nat_PRE_public_allow {
\t}
\tchain nat_PRE_trusted {
\t}
\tchain nat_POSTROUTING {
\t\ttype nat hook postrouting priority srcnat + 10; policy accept;
\t\tjump nat_POSTROUTING_ZONES
\t}
\tchain nat_POSTROUTING_ZONES {
\t\toifname "{pods}" goto nat_POST_trusted
\t\toifname "{ext}" goto nat_POST_public
\t\tgoto nat_POST_public
\t}
\tchain nat_POST_public {
\t\tjump nat_POST_public_allow
\t}
\tchain nat_POST_public_allow {
\t}
\tchain nat_POST_trusted {
\t}
\tchain filter_INPUT {
\t\ttype filter hook input priority filter + 10; policy accept;
\t\tct state { established, related } accept
\t\tct status dnat accept
\t\tiifname "lo" accept
\t\tct state invalid drop
\t\tjump filter_INPUT_ZONES
\t\treject with icmpx admin-prohibited
\t}
\tchain filter_FORWARD {
\t\ttype filter hook forward priority filter + 10; policy accept;
\t\tct state { established, related } accept
\t\tct status dnat accept
\t\tiifname "lo" accept
\t\tct state invalid drop
\t\tip6 daddr { ::/96, ::ffff:0.0.0.0/96, 2002::/24, 2002:a00::/24, 2002:7f00::/24, 2002:a9fe::/32, 2002:ac10::/28, 2002:c0a8::/32, 2002:e000::/19 } reject with icmpv6 addr-unreachable
\t\tjump filter_FORWARD_ZONES
\t\treject with icmpx admin-prohibited
\t}
\tchain filter_OUTPUT {
\t\ttype filter hook output priority filter + 10; policy accept;
\t\tct state { established, related } accept
\t\toifname "lo" accept
\t\tip6 daddr { ::/96, ::ffff:0.0.0.0/96, 2002::/24, 2002:a00::/24, 2002:7f00::/24, 2002:a9fe::/32, 2002:ac10::/28, 2002:c0a8::/32, 2002:e000::/19 } reject with icmpv6 addr-unreachable
\t\tjump filter_OUTPUT_POLICIES_pre
\t\tjump filter_OUTPUT_POLICIES_post
\t}
\tchain filter_OUTPUT_POLICIES_pre {
\t}
\tchain filter_OUTPUT_POLICIES_post {
\t}
\tchain filter_INPUT_ZONES {
\t\tiifname "{pods}" goto filter_IN_trusted
\t\tiifname "{ext}" goto filter_IN_public
\t\tgoto filter_IN_public
\t}
\tchain filter_FORWARD_ZONES {
\t\tiifname "{pods}" goto filter_FWD_trusted
\t\tiifname "{ext}" goto filter_FWD_public
\t\tgoto filter_FWD_public
\t}
\tchain filter_IN_public {
\t\tjump filter_IN_public_pre
\t\tjump filter_IN_public_log
\t\tjump filter_IN_public_deny
\t\tjump filter_IN_public_allow
\t\tjump filter_IN_public_post
\t\tmeta l4proto { icmp, ipv6-icmp } accept
\t}
\tchain filter_IN_public_pre {
\t}
\tchain filter_IN_public_log {
\t}
\tchain filter_IN_public_deny {
\t}
\tchain filter_IN_public_allow {
\t\ttcp dport 22 ct state { new, untracked } accept
\t\tip6 daddr fe80::/64 udp dport 546 ct state { new, untracked } accept
\t\ttcp dport 9090 ct state { new, untracked } accept
\t}
\tchain filter_IN_public_post {
\t}
\tchain filter_IN_trusted {
\t\taccept
\t}
\tchain filter_FWD_public {
\t\tjump filter_FWD_public_allow
\t}
\tchain filter_FWD_public_allow {
\t\toifname "{ext}" accept
\t}
\tchain filter_FWD_trusted {
\t\taccept
\t}
}
"""

DOCKER = """
table ip docker-bridges {
\tmap filter-forward-in-jumps {
\t\ttype ifname : verdict
\t\telements = { "docker0" : jump filter-forward-in__docker0 }
\t}
\tmap filter-forward-out-jumps {
\t\ttype ifname : verdict
\t\telements = { "docker0" : jump filter-forward-out__docker0 }
\t}
\tmap nat-postrouting-in-jumps {
\t\ttype ifname : verdict
\t\telements = { "docker0" : jump nat-postrouting-in__docker0 }
\t}
\tmap nat-postrouting-out-jumps {
\t\ttype ifname : verdict
\t\telements = { "docker0" : jump nat-postrouting-out__docker0 }
\t}
\tchain raw-PREROUTING {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tip daddr 172.17.0.2 iifname != "docker0" counter drop comment "DROP DIRECT ACCESS"
\t}
\tchain filter-FORWARD {
\t\ttype filter hook forward priority filter; policy accept;
\t\toifname vmap @filter-forward-in-jumps
\t\tiifname vmap @filter-forward-out-jumps
\t}
\tchain nat-OUTPUT {
\t\ttype nat hook output priority -100; policy accept;
\t\tip daddr != 127.0.0.0/8 fib daddr type local counter jump nat-prerouting-and-output
\t}
\tchain nat-POSTROUTING {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tiifname vmap @nat-postrouting-out-jumps
\t\toifname vmap @nat-postrouting-in-jumps
\t}
\tchain nat-PREROUTING {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local counter jump nat-prerouting-and-output
\t}
\tchain nat-prerouting-and-output {
\t\tiifname != "docker0" tcp dport 8080 counter dnat to 172.17.0.2:80 comment "DNAT"
\t}
\tchain filter-forward-in__docker0 {
\t\tct state established,related counter accept
\t\tiifname "docker0" counter accept comment "ICC"
\t\tip daddr 172.17.0.2 tcp dport 80 counter accept
\t\tcounter drop comment "UNPUBLISHED PORT DROP"
\t}
\tchain filter-forward-out__docker0 {
\t\tct state established,related counter accept
\t\tcounter accept comment "OUTGOING"
\t}
\tchain nat-postrouting-in__docker0 {
\t}
\tchain nat-postrouting-out__docker0 {
\t\toifname != "docker0" ip saddr 172.17.0.0/16 counter masquerade comment "MASQUERADE"
\t}
}
"""

# A tool still on iptables (iptables-nft) beside them: nft lists its table with a warning and xt comments.
# The first is translated to nft's own words, the second only exists as an xtables match (`xt match physdev`).
DOCKER_IPTABLES = (("-I", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"),
                   ("-I", "FORWARD", "-m", "physdev", "--physdev-is-bridged", "-j", "ACCEPT"))

SERVER_FILTER = """
table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state invalid drop comment "early drop of invalid connections"
\t\tct state { established, related } accept comment "allow tracked connections"
\t\tiifname "lo" accept comment "allow from loopback"
\t\tip protocol icmp accept comment "allow icmp"
\t\tmeta l4proto ipv6-icmp accept comment "allow icmp v6"
\t\ttcp dport ssh accept comment "allow sshd"
\t\tpkttype host limit rate 5/second counter reject with icmpx type admin-prohibited
\t\tcounter
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t}
}
"""


@dataclass(frozen=True)
class Variant:
    name: str
    tables: tuple[str, ...]  # nft scripts, loaded after kube-proxy's table
    iptables: tuple[tuple[str, ...], ...] = ()  # iptables(-nft) commands run last
    handles: bool = False  # listed with `nft -a` (every object and rule followed by `# handle N`)

    @property
    def dir(self) -> Path:
        return DUMPS / f"nft-{self.name}"


# A hand-made guard at raw priority that drops one NodePort from the uplink (a rule, not a policy).
GUARD_DROP = """table inet guard {
\tchain prerouting {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tiifname "{ext}" tcp dport 30080 counter drop comment "no web from outside"
\t}
}
"""

# A DNAT in a nat chain that runs before kube-proxy's (dstnat - 5): it takes lab/local's NodePort to one of
# lab/web's pods, and kube-proxy's nat chain is then not consulted for those connections (nf_nat_inet_fn).
NAT_FIRST = """table ip natfirst {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat - 5; policy accept;
\t\tiifname "{ext}" tcp dport 30090 dnat to 10.244.1.21:8080
\t}
}
"""

# A notrack at raw priority for one NodePort from the uplink (a "performance" rule copied from a DNS guide):
# the connection is never tracked, so no nat chain (kube-proxy's included) translates it.
NOTRACK = """table inet raw {
\tchain prerouting {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tiifname "{ext}" tcp dport 30080 notrack
\t}
}
"""

VARIANTS = (
    Variant("firewalld", (FIREWALLD,)),
    Variant("docker", (DOCKER,), DOCKER_IPTABLES),
    Variant("server-filter", (SERVER_FILTER,), handles=True),
    Variant("guard-drop", (GUARD_DROP,)),
    Variant("nat-first", (NAT_FIRST,)),
    Variant("notrack", (NOTRACK,)),
)


LINT_DIR = ROOT / "lint-fixtures"


def _guard(hook: str, prio: str, rule: str, policy: str = "accept", family: str = "inet", name: str = "guard",
           type_: str = "filter") -> str:
    return (f"table {family} {name} {{\n\tchain {hook} {{\n\t\ttype {type_} hook {hook} priority {prio}; "
            f"policy {policy};\n" + (f"\t\t{rule}\n" if rule else "") + "\t}\n}\n")


# lint-fixtures/<name>/node.nft: name → the node it lists (input.yaml there is the cluster without lab/empty)
LINT_FIXTURES: dict[str, Variant] = {
    # a drop at raw priority, before kube-proxy's chains; the good one accepts instead: an accept ends only
    # its own base chain, so it never keeps a packet from kube-proxy's
    "RG911-bad": Variant("RG911-bad", (_guard("prerouting", "raw", 'iifname "{ext}" tcp dport 30080 drop'),)),
    "RG911-good": Variant("RG911-good", (_guard("prerouting", "raw", 'iifname "{ext}" tcp dport 30080 accept'),)),
    # a DNAT of a NodePort in a nat chain before kube-proxy's (dstnat - 5), or after it (dstnat + 5: not consulted)
    "RG912-bad": Variant("RG912-bad", (_guard("prerouting", "dstnat - 5", "tcp dport 30080 dnat to 10.244.1.31:8080",
                                              family="ip", name="natfirst", type_="nat"),)),
    "RG912-good": Variant("RG912-good", (_guard("prerouting", "dstnat + 5", "tcp dport 30080 dnat to 10.244.1.31:8080",
                                                family="ip", name="natfirst", type_="nat"),)),
    # forward policy drop: with nothing accepted, and with what kube-proxy DNATs accepted (firewalld's way)
    "RG913-bad": Variant("RG913-bad", (_guard("forward", "filter", "", policy="drop", name="filter"),)),
    "RG913-good": Variant("RG913-good", (_guard("forward", "filter", "ct status dnat accept", policy="drop",
                                                name="filter"),)),
    # kube-proxy's nat prerouting chain deleted (a firewall script's cleanup), or all in place
    "RG914-bad": Variant("RG914-bad", ("flush chain ip kube-proxy nat-prerouting\n"
                                       "delete chain ip kube-proxy nat-prerouting\n",)),
    "RG914-good": Variant("RG914-good", ()),
    # a notrack at raw priority for the uplink's NodePort traffic (kube-proxy's DNAT never happens), or for a port
    # no Service uses
    "RG916-bad": Variant("RG916-bad", (_guard("prerouting", "raw", 'iifname "{ext}" tcp dport 30080 notrack'),)),
    "RG916-good": Variant("RG916-good", (_guard("prerouting", "raw", 'iifname "{ext}" udp dport 53 notrack'),)),
    # iptables-nft rules beside: one nft can only print as `xt match physdev`, one it spells in its own words
    "RG915-bad": Variant("RG915-bad", (), (("-I", "FORWARD", "-m", "physdev", "--physdev-is-bridged", "-j", "ACCEPT"),)),
    "RG915-good": Variant("RG915-good", (), (("-I", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j",
                                              "DROP"),)),
}


def variant(name: str) -> Variant:
    return next(v for v in VARIANTS if v.name == name)


def script(text: str, ifaces: Ifaces) -> str:
    return text.replace("{pods}", ifaces.pods).replace("{ext}", ifaces.ext)


def run_in(ns: str, *argv: str, input: str | None = None) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, text=True, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns} failed: {r.stderr.strip()}")
    return r.stdout


def compile_cluster(path: Path = CLUSTER):
    from rulegen.flags import SETTING_KEYS
    from rulegen.pipeline import compile_files

    flags = {k: None for k in SETTING_KEYS}
    flags["mode"] = "nftables"
    return compile_files([str(path)], flags)


def install(ns: str, v: Variant, ifaces: Ifaces, compiled=None) -> None:
    """V's other tables (and iptables-nft rules) into NS; with COMPILED, kube-proxy's table first."""
    if compiled is not None:
        run_in(ns, "nft", "-f", "-", input=compiled.text)
    for t in v.tables:
        run_in(ns, "nft", "-f", "-", input=script(t, ifaces))
    for argv in v.iptables:
        run_in(ns, "iptables", *argv)


def listed(ns: str, handles: bool = False) -> str:
    return run_in(ns, "nft", *(("-a",) if handles else ()), "list", "ruleset")


def make(v: Variant, ns: str, ifaces: Ifaces = BRIDGE, cluster: Path = CLUSTER) -> str:
    """V's node built in a fresh namespace NS (created and deleted here): its `nft list ruleset`."""
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
    try:
        install(ns, v, ifaces, compile_cluster(cluster))
        return listed(ns, v.handles)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def main() -> None:  # pragma: no cover - run by hand, as root, to rewrite the committed dumps
    import os

    for v in VARIANTS:
        text = make(v, f"rgt-nodenft-{os.getpid()}")
        v.dir.mkdir(exist_ok=True)
        (v.dir / "ruleset.nft").write_text(text)
        print(f"{v.dir}/ruleset.nft: {len(text.splitlines())} lines", file=sys.stderr)
    for name, v in LINT_FIXTURES.items():
        d = LINT_DIR / name
        d.mkdir(exist_ok=True)
        if not (d / "input.yaml").exists():
            (d / "input.yaml").write_text(lint_input())
        (d / "args").write_text("--mode nftables --nft-version 1.0.6 --kernel-version 6.6.0 --rules {dir}/node.nft\n")
        text = make(v, f"rgt-nodenft-{os.getpid()}", BRIDGE, d / "input.yaml")
        (d / "node.nft").write_text(text)
        print(f"{d}/node.nft: {len(text.splitlines())} lines", file=sys.stderr)


def lint_input() -> str:
    """cluster.yaml without lab/empty (its own lint error, RG201, would ride along in every fixture)."""
    docs = CLUSTER.read_text().split("\n---\n")
    keep = [d for d in docs if "name: empty" not in d]
    keep[0] = "\n".join(ln for ln in keep[0].splitlines() if not ln.startswith("#"))
    head = ("# The cluster of node.nft (tests/nftnode.py builds that ruleset in a namespace): lab/web and lab/local\n"
            "# (NodePorts 30080, 30090) on node lab-node, 192.168.77.10, pods in 10.244.1.0/24.\n")
    return head + "\n---\n".join(keep) + ("" if keep[-1].endswith("\n") else "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
