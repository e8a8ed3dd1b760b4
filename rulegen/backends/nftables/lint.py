"""Lint's nftables-only checks: the pitfalls of running (or moving to) kube-proxy's nftables mode.

`rulegen lint` runs these after the shared checks when the settings say
`--mode nftables` (`Backend.lint_checks`); their codes are RG811-RG819 in
`lint.findings`. They follow kubernetes.io's "Migrating from iptables mode
to nftables" and kube-proxy's start-up checks:

* RG811 / RG817: the mode needs Linux 5.13+ and nft 1.0.1+. The versions
  come from `--kernel-version` / `--nft-version`, or the kernel's from the
  Node object (`status.nodeInfo.kernelVersion`); unknown ones are said as
  an info, never guessed;
* RG812: an unset nodePortAddresses means the primary node IP in this mode,
  so a node's other addresses stop answering NodePorts;
* RG813: NodePorts on loopback asked for, never served in this mode;
* RG814: `iptables.*` settings the mode does not read;
* RG815: no rules opening a host firewall for NodePorts;
* RG816: a kernel before 6.1 without `--conntrack-tcp-be-liberal`: no
  INVALID-drop workaround in this mode.
"""

from __future__ import annotations

from typing import Iterator

from ...ipaddr import cidr_contains, is_loopback, parse_cidr
from ...lint.context import Context
from ...lint.findings import Finding
from ...lint.versions import shown
from ...plan import skipped

KERNEL_MIN = (5, 13, 0)
NFT_MIN = (1, 0, 1)
CONNTRACK_FIXED = (6, 1, 0)


def _node_finding(cx: Context, code: str, message: str, hint: str) -> Finding:
    name = cx.settings.hostname
    return Finding(code, "Node" if name else "input", name or "", message, hint)


def _nodeports(cx: Context):
    """(Service, port) for every NodePort kube-proxy opens (a Service without rules opens none)."""
    for svc in cx.services:
        if skipped(svc):
            continue
        for port in svc.ports:
            if port.node_port:
                yield svc, port


def check_versions(cx: Context) -> Iterator[Finding]:
    v = cx.versions
    old = []
    if v.kernel is not None and v.kernel < KERNEL_MIN:
        old.append(f"Linux {shown(v.kernel)} ({v.kernel_from})")
    if v.nft is not None and v.nft < NFT_MIN:
        old.append(f"nft {shown(v.nft)} ({v.nft_from})")
    if old:
        yield _node_finding(
            cx, "RG811",
            f"nftables mode needs Linux 5.13 or later and nft 1.0.1 or later; the node has {' and '.join(old)}: "
            "kube-proxy refuses to start in this mode",
            "upgrade the node's kernel or nftables package, or keep this node in iptables mode",
        )
        return
    unknown = [what for what, x in (("the kernel's", v.kernel), ("nft's", v.nft)) if x is None]
    if unknown:
        yield _node_finding(
            cx, "RG817",
            f"nftables mode needs Linux 5.13 or later and nft 1.0.1 or later; {' and '.join(unknown)} version "
            f"{'is' if len(unknown) == 1 else 'are'} not known here, so this is not checked",
            "pass --kernel-version (uname -r) and --nft-version (nft --version), or include the Node object "
            "(its status.nodeInfo.kernelVersion)",
        )


def check_conntrack_workaround(cx: Context) -> Iterator[Finding]:
    v = cx.versions
    if v.kernel is None or not KERNEL_MIN <= v.kernel < CONNTRACK_FIXED or cx.settings.tcp_be_liberal:
        return
    yield _node_finding(
        cx, "RG816",
        f"Linux {shown(v.kernel)} ({v.kernel_from}) is older than 6.1: its conntrack can mark packets of long-lived "
        "TCP connections to Services INVALID and reset them; iptables mode drops those packets, nftables mode "
        "installs no such workaround",
        "run kube-proxy with --conntrack-tcp-be-liberal (check with rulegen --tcp-be-liberal), or move the node to "
        "Linux 6.1 or later",
    )


def check_nodeport_addresses(cx: Context) -> Iterator[Finding]:
    s = cx.settings
    if s.nodeport_addresses is not None:
        return  # set on purpose: the mode takes exactly those
    ips = [ip for ip in s.node_ips_of(s.family) if not is_loopback(ip)]
    if len(ips) < 2:
        return
    primary, lost = ips[0], ips[1:]
    for svc, port in _nodeports(cx):
        yield cx.finding(
            "RG812", svc,
            f"NodePort {port.node_port}/{port.protocol} answers only on {primary}, the node's primary address: "
            f"nodePortAddresses is unset, which nftables mode reads as `primary`; {', '.join(lost)} "
            f"{'stops' if len(lost) == 1 else 'stop'} answering (iptables mode served every node address)",
            f"set nodePortAddresses to the CIDRs clients use ({'0.0.0.0/0' if s.family == 4 else '::/0'} for every "
            "address), or send clients to the primary address",
            port,
        )


def check_localhost_nodeports(cx: Context) -> Iterator[Finding]:
    s = cx.settings
    loop = "127.0.0.1" if s.family == 4 else "::1"
    held = [c for c in s.nodeport_addresses or () if c != "primary" and (canon := parse_cidr(c))
            and (":" in canon) == (s.family == 6) and cidr_contains(canon, loop)]
    if not held:
        return
    for svc, port in _nodeports(cx):
        yield cx.finding(
            "RG813", svc,
            f"nodePortAddresses holds {', '.join(held)}, but nftables mode never answers NodePorts on loopback: "
            f"{loop}:{port.node_port}/{port.protocol} is refused",
            f"connect to a node address instead of {loop} (in iptables mode, "
            "iptables_localhost_nodeports_accepted_packets_total shows whether anything relies on it)",
            port,
        )


def check_iptables_settings(cx: Context) -> Iterator[Finding]:
    cfg, s = cx.config, cx.settings
    if cfg is None:
        return
    said = []
    if cfg.masquerade_all is not None and cfg.nft_masquerade_all is None and cfg.masquerade_all != s.masquerade_all:
        said.append(f"iptables.masqueradeAll: {str(cfg.masquerade_all).lower()} (in effect: masqueradeAll "
                    f"{str(s.masquerade_all).lower()})")
    if cfg.masquerade_bit is not None and cfg.nft_masquerade_bit is None and cfg.masquerade_bit != s.masquerade_bit:
        said.append(f"iptables.masqueradeBit: {cfg.masquerade_bit} (in effect: {s.masquerade_bit}, mark {s.mark})")
    if cfg.localhost_nodeports:
        said.append("iptables.localhostNodePorts: true (nftables mode has no localhost NodePorts)")
    if said:
        yield Finding(
            "RG814", "KubeProxyConfiguration", "",
            f"nftables mode reads the nftables section of the configuration, not these: {'; '.join(said)}",
            "set nftables.masqueradeAll / nftables.masqueradeBit to what the iptables ones said "
            "(or drop the iptables section)",
        )


def check_nodeport_firewall(cx: Context) -> Iterator[Finding]:
    ports = sorted({port.node_port for _, port in _nodeports(cx)})
    hc = sorted({svc.health_check_node_port for svc in cx.services
                 if svc.health_check_node_port and not skipped(svc)})
    if not ports and not hc:
        return
    what = f"{len(ports)} NodePort{'s' if len(ports) != 1 else ''}" + (
        f" and {len(hc)} health-check port{'s' if len(hc) != 1 else ''}" if hc else "")
    lo, hi = cx.nodeport_range
    yield Finding(
        "RG815", "input", "",
        f"{what} ({', '.join(str(p) for p in [*ports, *hc][:6])}{', ...' if len(ports) + len(hc) > 6 else ''}): "
        "nftables mode writes no rules that let them through a host firewall (iptables mode accepts them in its "
        "filter rules), so an nftables-based firewall on the node must allow them itself",
        f"allow TCP/UDP/SCTP {lo}-{hi} (and the health-check ports) in the node's firewall (firewalld, "
        "nftables.service), or check that it has none",
    )


CHECKS = (
    check_versions,
    check_conntrack_workaround,
    check_nodeport_addresses,
    check_localhost_nodeports,
    check_iptables_settings,
    check_nodeport_firewall,
)
