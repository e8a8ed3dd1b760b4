"""The proxy settings for one compile, resolved once from flags, config and objects.

Precedence (the settings table in README.md): a command-line flag, then `--config
FILE`, then a KubeProxyConfiguration document among the inputs, then the
Node object, then kube-proxy's default. `Settings` is frozen; per-family
views (`node_ips_of`, `local_detector`, `nodeport_addresses`) are small
pure functions on it, so every backend reads the same answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import backends
from .diagnostics import Place, Report, UsageError
from .ipaddr import cidr_contains, host_bits, host_bits_note, parse_cidr, parse_ip
from .model import Inputs, Node, ProxyConfig

DETECT_MODES = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix", "None")
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
# ipvs.scheduler values IPVS mode accepts ("" = rr): those kube-proxy's
# configuration validation lists, plus mh, which its IPVS proxier supports.
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh")
UNKNOWN_SCHEDULER_SLUG = "ipvs-unknown-scheduler"  # the lint code that says the same (rulegen.lint.findings)


@dataclass(frozen=True)
class LocalDetector:
    """kube-proxy's local-traffic detector: what "from a pod of this node" is; each backend writes its own match."""

    cidr: str = ""  # the pod CIDR in ClusterCIDR/NodeCIDR mode
    iface: str = ""  # interface (or prefix with '+') in the interface modes

    @property
    def implemented(self) -> bool:
        return bool(self.cidr or self.iface)


@dataclass(frozen=True)
class Settings:
    mode: str = "iptables"
    family: int = 4
    hostname: str | None = None
    node_ips: tuple[str, ...] = ()  # every node address, both families, canonical
    cluster_cidrs: tuple[str, ...] = ()
    service_cidrs: tuple[str, ...] = ()
    nodeport_addresses: tuple[str, ...] | None = None  # raw, may include "primary"
    masquerade_all: bool = False
    masquerade_bit: int = 14
    random_fully: bool = True
    nfacct: bool = True
    tcp_be_liberal: bool = False
    localhost_nodeports: bool = True
    strict: bool = False
    detect_local_mode: str = "ClusterCIDR"
    bridge_interface: str | None = None
    interface_name_prefix: str | None = None
    scheduler: str = "rr"
    strict_arp: bool = False
    node_zone: str | None = None
    node_labels: dict[str, str] = field(default_factory=dict)
    node_pod_cidrs: tuple[str, ...] = ()  # the Node's spec.podCIDRs, both families
    prefer_same_node: bool = True  # PreferSameTrafficDistribution (beta, on since 1.34)

    # ------------------------------------------------------------ per-family views

    def node_ips_of(self, fam: int | None = None) -> tuple[str, ...]:
        fam = fam or self.family
        return tuple(ip for ip in self.node_ips if (":" in ip) == (fam == 6))

    def primary_ip(self, fam: int | None = None) -> str | None:
        ips = self.node_ips_of(fam)
        return ips[0] if ips else None

    def cidrs_of(self, cidrs: tuple[str, ...], fam: int | None = None) -> tuple[str, ...]:
        fam = fam or self.family
        return tuple(c for c in cidrs if (":" in c) == (fam == 6))

    @property
    def mark(self) -> str:
        """The masquerade mark as kube-proxy's iptables mode writes it (Go `%#08x`)."""
        return "0x" + format(1 << self.masquerade_bit, "08x")

    @property
    def mark_short(self) -> str:
        return hex(1 << self.masquerade_bit)

    def local_detector(self, fam: int | None = None) -> LocalDetector:
        fam = fam or self.family
        mode = self.detect_local_mode
        if mode in ("ClusterCIDR", "NodeCIDR"):
            cidrs = self.cidrs_of(self.cluster_cidrs, fam)
            if not cidrs:
                return LocalDetector()
            c = cidrs[0]
            return LocalDetector(cidr=c)
        if mode == "BridgeInterface" and self.bridge_interface:
            i = self.bridge_interface
            return LocalDetector(iface=i)
        if mode == "InterfaceNamePrefix" and self.interface_name_prefix:
            i = self.interface_name_prefix + "+"
            return LocalDetector(iface=i)
        return LocalDetector()

    def nodeport_cidrs(self, fam: int | None = None) -> tuple[bool, tuple[str, ...]]:
        """(matches all, CIDRs of the family) for nodePortAddresses, `primary` expanded."""
        fam = fam or self.family
        raw = self.nodeport_addresses or ()
        cidrs: list[str] = []
        for c in raw:
            if c == "primary":
                ip = self.primary_ip(fam)
                if ip:
                    cidrs.append(f"{ip}/{128 if fam == 6 else 32}")
                continue
            canon = parse_cidr(c)
            if canon and (":" in canon) == (fam == 6):
                cidrs.append(canon)
        if not cidrs:
            return True, ()
        if any(c in ("0.0.0.0/0", "::/0") for c in cidrs):
            return True, tuple(cidrs)
        return False, tuple(cidrs)

    def localhost_nodeports_effective(self, fam: int | None = None) -> bool:
        """kube-proxy turns localhost NodePorts off unless the CIDRs contain 127.x (IPv4 only)."""
        fam = fam or self.family
        if fam == 6 or not self.localhost_nodeports:
            return False
        _, cidrs = self.nodeport_cidrs(4)
        if not cidrs:
            return True
        # kube-proxy: a CIDR whose network is loopback, or that contains 127.0.0.0.
        return any(c.startswith("127.") or cidr_contains(c, "127.0.0.0") for c in cidrs)

    def nodeport_ips(self, fam: int | None = None) -> tuple[bool, tuple[str, ...]]:
        """(matches all, node addresses inside the CIDRs): kube-proxy's GetNodeIPs.

        The node's interface addresses are its node IPs plus loopback.
        """
        fam = fam or self.family
        match_all, cidrs = self.nodeport_cidrs(fam)
        if match_all:
            return True, ()
        out: list[str] = []
        for ip in (*self.node_ips_of(fam), LOOPBACK[fam]):
            if ip not in out and any(cidr_contains(c, ip) for c in cidrs):
                out.append(ip)
        return False, tuple(out)


    def nft_nodeport_ips(self, fam: int | None = None) -> tuple[bool, tuple[str, ...]]:
        """nftables mode's view of nodePortAddresses: (matches all, addresses for @nodeport-ips).

        Two differences from `nodeport_ips`, both kube-proxy's: an unset
        nodePortAddresses means `primary` in this mode (cmd/kube-proxy sets it
        for nftables only), and loopback addresses are left out (the nftables
        proxier does not support localhost NodePorts). A node with no address
        of the family has kube-proxy's fallback node IP, loopback, so
        `primary` then selects nothing rather than everything.
        """
        fam = fam or self.family
        raw = self.nodeport_addresses or ("primary",)
        cidrs: list[str] = []
        for c in raw:
            if c == "primary":
                ip = self.primary_ip(fam) or LOOPBACK[fam]
                cidrs.append(f"{ip}/{128 if fam == 6 else 32}")
                continue
            canon = parse_cidr(c)
            if canon and (":" in canon) == (fam == 6):
                cidrs.append(canon)
        if not cidrs or any(c in ("0.0.0.0/0", "::/0") for c in cidrs):
            return True, ()
        out: list[str] = []
        for ip in (*self.node_ips_of(fam), LOOPBACK[fam]):
            if ip not in out and any(cidr_contains(c, ip) for c in cidrs):
                out.append(ip)
        return False, tuple(ip for ip in out if not _loopback(ip))


def _loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


# ---------------------------------------------------------------------- resolving


def _pick(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


def _cidr_flag(values: list[str], flag: str, report: Report) -> tuple[str, ...]:
    """A repeatable CIDR flag whose values may also be comma-separated lists.

    A value with host bits (10.244.1.5/16) is read as its network, as
    kube-proxy reads it, with a notice: the API server calls such values
    ambiguous, and a typo here moves the local-traffic detector silently.
    """
    out = []
    for raw in values:
        for part in raw.split(","):
            canon = parse_cidr(part.strip())
            if canon is None:
                raise UsageError(f"{flag}: {part!r} is not a valid CIDR")
            if host_bits(part, canon):
                report.add(Place(flag, 0), "", host_bits_note(part, canon), notice=True)
            out.append(canon)
    return tuple(out)


class _ConfigPlace(Place):
    """Where a configuration value came from when only the source is known (not its document)."""

    def __str__(self) -> str:
        return self.file


def _scheduler(flags: dict[str, Any], cfg: ProxyConfig, mode: str, report: Report, config_file: str | None,
               from_file: bool) -> str:
    """ipvs.scheduler, checked in IPVS mode as kube-proxy checks its configuration.

    kube-proxy refuses to start with a scheduler it does not know; rulegen
    reports it (fatal under --strict) and compiles with the default, rr.
    """
    value = _pick(flags.get("scheduler"), cfg.scheduler, "rr")
    if not backends.get(mode).reads_scheduler or value in IPVS_SCHEDULERS:
        return value
    where = (Place(config_file, 1, "KubeProxyConfiguration", "config") if from_file and config_file
             else _ConfigPlace("KubeProxyConfiguration among the inputs", 0, "KubeProxyConfiguration"))
    report.add(where, "ipvs.scheduler", f"{value!r} is not an IPVS scheduler kube-proxy accepts "
               f"({', '.join(IPVS_SCHEDULERS)}); kube-proxy refuses to start with it (rr used)",
               lint=UNKNOWN_SCHEDULER_SLUG)
    return "rr"


NODES_SHOWN = 20  # Node names listed in a message; the rest are counted


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def _shown(name: str) -> str:
    """A node name for a one-line message: as it is when it looks like one, else quoted and cut."""
    return name if _PLAIN_NAME.fullmatch(name) else repr(name if len(name) <= 60 else name[:60] + "...")


def _node_names(nodes: list[Node]) -> str:
    names = sorted({n.name for n in nodes})
    shown = ", ".join(_shown(n) for n in names[:NODES_SHOWN])
    if len(names) > NODES_SHOWN:
        shown += f" and {len(names) - NODES_SHOWN} more"
    return shown


def choose_node(nodes: list[Node], hostname: str | None, source: str) -> Node | None:
    """The Node the rules are for: the one HOSTNAME names, else the only one.

    With no Node in the input there is nothing to choose: the node is what
    --node-ip says (HOSTNAME then only decides which endpoints are local).
    A HOSTNAME that names none of the input's Nodes, or several Nodes and no
    HOSTNAME, would otherwise compile for no node at all without a word:
    both are UsageError, listing the Nodes. SOURCE names where HOSTNAME came
    from, for the message.
    """
    if not nodes:
        return None
    if hostname:
        for n in nodes:
            if n.name == hostname:
                return n
        raise UsageError(f"{source} {_shown(hostname)}: no Node of that name in the input (Nodes: {_node_names(nodes)})")
    if len({n.name for n in nodes}) > 1:
        raise UsageError(f"{len({n.name for n in nodes})} Nodes in the input and no --hostname to pick one "
                         f"(Nodes: {_node_names(nodes)})")
    return nodes[0]


def resolve(flags: dict[str, Any], inputs: Inputs, report: Report, file_config: ProxyConfig | None = None,
            config_file: str | None = None) -> Settings:
    """Build Settings from CLI flags (None = not given), configs and objects.

    `config_file` is the path `file_config` was read from (for messages).
    """
    configs = ([file_config] if file_config else []) + list(inputs.configs)
    cfg = configs[0] if configs else ProxyConfig()

    mode = _pick(flags.get("mode"), cfg.mode, "iptables")
    if mode not in backends.modes():
        raise UsageError(f"--mode: {mode!r} is not one of {', '.join(backends.modes())}")
    fam_flag = flags.get("ip_family") or "ipv4"
    if fam_flag not in ("ipv4", "ipv6"):
        raise UsageError(f"--ip-family: {fam_flag!r} is not ipv4 or ipv6")
    family = 6 if fam_flag == "ipv6" else 4

    hostname = _pick(flags.get("hostname"), cfg.hostname_override)
    source = "--hostname" if flags.get("hostname") else "hostnameOverride"
    node = choose_node(inputs.nodes, hostname, source)
    if node is not None:
        hostname = node.name

    node_ips: tuple[str, ...]
    if flags.get("node_ip"):
        ips = []
        for raw in flags["node_ip"]:
            ip = parse_ip(raw)
            if ip is None:
                raise UsageError(f"--node-ip: {raw!r} is not a valid IP address")
            if ip not in ips:
                ips.append(ip)
        node_ips = tuple(ips)
    else:
        node_ips = node.addresses if node else ()

    detect = _pick(flags.get("detect_local_mode"), cfg.detect_local_mode, "ClusterCIDR")
    if detect not in DETECT_MODES:
        raise UsageError(f"detectLocalMode: {detect!r} is not one of {', '.join(DETECT_MODES)}")

    if flags.get("cluster_cidr"):
        cluster_cidrs = _cidr_flag(flags["cluster_cidr"], "--cluster-cidr", report)
    elif detect == "NodeCIDR":
        cluster_cidrs = node.pod_cidrs if node else ()
    else:
        cluster_cidrs = cfg.cluster_cidr or ()

    if flags.get("service_cidr"):
        service_cidrs = _cidr_flag(flags["service_cidr"], "--service-cidr", report)
    else:
        service_cidrs = tuple(c for s in inputs.service_cidrs for c in s.cidrs)

    npa = flags.get("nodeport_addresses")
    if npa is not None:
        npa = tuple(x.strip() for x in npa.split(",") if x.strip())
    else:
        npa = cfg.nodeport_addresses
    for c in npa or ():
        if c != "primary" and parse_cidr(c) is None:
            raise UsageError(f"nodePortAddresses: {c!r} is not a valid CIDR or 'primary'")
    if npa and "primary" in npa and not node_ips:
        raise UsageError("nodePortAddresses 'primary' needs the node's IP (--node-ip or a Node object)")

    # Each proxier reads its own section of the configuration: nftables mode
    # takes nftables.masqueradeAll / masqueradeBit, the others iptables.*.
    if backends.get(mode).masquerade_section == "nftables":
        cfg_masq_all, cfg_bit, bit_field = cfg.nft_masquerade_all, cfg.nft_masquerade_bit, "nftables.masqueradeBit"
    else:
        cfg_masq_all, cfg_bit, bit_field = cfg.masquerade_all, cfg.masquerade_bit, "iptables.masqueradeBit"
    bit = _pick(flags.get("masquerade_bit"), cfg_bit, 14)
    if not 0 <= bit <= 31:
        src = "--masquerade-bit" if flags.get("masquerade_bit") is not None else bit_field
        raise UsageError(f"{src}: {bit} is not between 0 and 31")

    return Settings(
        mode=mode,
        family=family,
        hostname=hostname,
        node_ips=node_ips,
        cluster_cidrs=cluster_cidrs,
        service_cidrs=service_cidrs,
        nodeport_addresses=npa,
        masquerade_all=bool(_pick(flags.get("masquerade_all") or None, cfg_masq_all, False)),
        masquerade_bit=bit,
        random_fully=_pick(flags.get("random_fully"), True),
        nfacct=_pick(flags.get("nfacct"), True),
        tcp_be_liberal=bool(flags.get("tcp_be_liberal")),
        localhost_nodeports=_pick(flags.get("localhost_nodeports"), cfg.localhost_nodeports, True),
        strict=bool(flags.get("strict")),
        detect_local_mode=detect,
        bridge_interface=cfg.bridge_interface,
        interface_name_prefix=cfg.interface_name_prefix,
        scheduler=_scheduler(flags, cfg, mode, report, config_file, file_config is not None),
        strict_arp=bool(cfg.strict_arp),
        node_zone=node.zone if node else None,
        node_labels=dict(node.labels) if node else {},
        node_pod_cidrs=node.pod_cidrs if node else (),
    )


def resolve_settings(inputs: Inputs, flags: dict[str, Any], report: Report,
                     config_path: str | None = None) -> Settings:
    """The settings: flags over the --config file over the inputs' own objects."""
    from .loader import load_config_file

    file_cfg = load_config_file(config_path, report) if config_path else None
    return resolve(flags, inputs, report, file_cfg, config_path)
