"""IPVS node dumps made the way real ones are: kube-proxy's IPVS glue among a CNI's, Docker's and a firewall's.

An IPVS node's dump is three texts: `iptables-save`, `ipset save` and
`ipvsadm -Sn`. This helper makes the first two as tests/nodedump.py makes an
iptables node's: in a fresh network namespace it runs `ipset restore` on
the IPVS compile's ipset.rules and the shape's own sets, `iptables-restore
--noflush` on the compile's iptables.rules, inserts kube-proxy's IPVS-mode
jumps (`compile.JUMP_RULES`, each prepended as kube-proxy's EnsureRule does)
and adds the shape's chains (the same Calico, Docker, firewalld and ufw
shapes as the iptables dumps), then saves `iptables-save` and `ipset save`.
The third, ipvsadm.rules, is the compile's: this host's kernel has no
ip_vs, so no `ipvsadm -Sn` can be taken here (tests/node_dumps/README.md
says so; the VM tests load the same ipvsadm text into a kernel that has it).

Each dump is a folder tests/node_dumps/ipvs-<variant>/ holding
ipvsadm.rules, ipset.rules and iptables.rules, which is what `rulegen trace
--mode ipvs --rules DIR` reads. `python tests/nodedump_ipvs.py` (root)
rewrites them and the IPVS lint fixtures' folders;
tests/kernel/test_node_dumps_kernel.py checks they are current.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
import nodedump as N  # noqa: E402

DUMPS = N.DUMPS
CLUSTER = N.CLUSTER


@dataclass(frozen=True)
class IPVSVariant:
    """One IPVS node: an iptables-dump variant's shape and order (`base`), under a folder name of its own."""

    name: str
    base: N.Variant
    about: str = ""


def _from(name: str, about: str) -> IPVSVariant:
    return IPVSVariant(f"ipvs-{name}", N.variant(name), about)


VARIANTS = (
    _from("calico", "Calico's jumps first, its ipsets beside kube-proxy's KUBE-* sets"),
    _from("docker", "dockerd after kube-proxy: FORWARD policy DROP, which IPVS traffic to the node never meets"),
    _from("docker-user-drop", "Docker's documented DOCKER-USER DROP: in FORWARD, so IPVS's INPUT path passes it"),
    _from("firewalld", "firewalld's INPUT ends in REJECT: IPVS traffic (INPUT, not FORWARD) is refused"),
    _from("ufw", "ufw's INPUT policy DROP: IPVS traffic no rule of ufw's accepts is dropped"),
    IPVSVariant("ipvs-input-drop", N._one("filter", "-I", "INPUT", f"-i {{ext}} -p tcp -m tcp --dport "
                                                                      f"{N.NODEPORT_WEB} -j DROP"),
                "a host's own DROP of the web NodePort, first in filter INPUT"),
)

# lint-fixtures/<code>-<bad|good>/ for the IPVS-only codes: the variant, the cluster file in that folder
LINT_FIXTURES: dict[str, N.Variant] = {
    # a foreign REJECT in INPUT refuses what IPVS would take; its twin accepts the Service ports first
    "RG909-bad": N._one("filter", "-A", "INPUT", "-i {ext} -j REJECT --reject-with icmp-host-prohibited"),
    "RG909-good": N.Variant("", "custom", False, options=(("builtin", (
        ("filter", "-A", "INPUT", "-m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"),
        ("filter", "-A", "INPUT", "-p tcp -m set --match-set KUBE-NODE-PORT-TCP dst -j ACCEPT"),
        ("filter", "-A", "INPUT", "-i {ext} -j REJECT --reject-with icmp-host-prohibited"))),)),
    # a foreign DROP in filter OUTPUT of what the node sends to the pods: IPVS's forwarded packets
    "RG910-bad": N._one("filter", "-I", "OUTPUT", f"-d {N.CLUSTER_CIDR} -p tcp -j DROP"),
    "RG910-good": N._one("filter", "-I", "OUTPUT", f"-d {N.CLUSTER_CIDR} -p udp -j DROP"),
}


def compile_ipvs(cluster: Path = CLUSTER):
    from rulegen.flags import SETTING_KEYS
    from rulegen.pipeline import compile_files

    flags = {k: None for k in SETTING_KEYS}
    flags["nfacct"] = False
    flags["mode"] = "ipvs"
    return compile_files([str(cluster)], flags)


def install(ns: str, compiled, v: N.Variant, ifaces: N.Ifaces) -> None:
    """V's IPVS node into NS: kube-proxy's sets and glue with its jumps, and V's shape, in V's order."""
    from rulegen.backends.ipvs.compile import JUMP_RULES

    files = _files(compiled)
    f = N.expand(v.foreign(ifaces), ifaces)
    N.run_in(ns, "ipset", "restore", "-exist", input=files["ipset.rules"])
    if f.ipsets:
        N.run_in(ns, "ipset", "restore", "-exist", input=f.ipsets)
    N.run_in(ns, "iptables-restore", "--noflush", input=files["iptables.rules"])
    jumps = [j for j in JUMP_RULES if j[0] not in v.without_kube_jumps]

    def kube() -> None:
        for table, chain, spec in jumps:
            N.run_in(ns, "iptables", "-t", table, "-I", chain, *shlex.split(spec))

    if v.kube_first:
        N.foreign_rules(ns, f)
        kube()
    else:
        kube()
        N.foreign_rules(ns, f)


def _files(compiled) -> dict[str, str]:
    from rulegen.backends.ipvs.render import files

    return files(compiled.ir)


def make(v: N.Variant, ns: str, ifaces: N.Ifaces = N.BRIDGE_IFACES, cluster: Path = CLUSTER) -> dict[str, str]:
    """V's IPVS node built in a fresh namespace NS (created and deleted here): {file name: text} of its dump."""
    c = compile_ipvs(cluster)
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
    try:
        install(ns, c, v, ifaces)
        ipt, sets = N.saved(ns)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    return {"ipvsadm.rules": _files(c)["ipvsadm.rules"], "ipset.rules": sets, "iptables.rules": ipt}


def ifaces_of(v: IPVSVariant) -> N.Ifaces:
    return N.ifaces_of(v.base)


def main() -> None:  # pragma: no cover - run by hand, as root, to rewrite the committed dumps
    import os

    for v in VARIANTS:
        d = DUMPS / v.name
        d.mkdir(exist_ok=True)
        for name, text in make(v.base, f"rgt-ipvsdump-{os.getpid()}", ifaces_of(v)).items():
            (d / name).write_text(text)
        print(f"{d}: written", file=sys.stderr)
    for name, v in LINT_FIXTURES.items():
        d = N.LINT_DIR / name
        for fname, text in make(v, f"rgt-ipvsdump-{os.getpid()}", N.BRIDGE_IFACES, d / "input.yaml").items():
            (d / "node" / fname).parent.mkdir(exist_ok=True)
            (d / "node" / fname).write_text(text)
        print(f"{d}/node: written", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
