"""`rulegen trace`: follow one new connection through the rules, hop by hop.

`rulegen trace FILES... --dst IP:PORT [--src IP] [--proto P] [--json]`
compiles FILES and traces the result with the mode's tracer (iptables
mode: the payload plus kube-proxy's jumps from the built-in chains; a mode
without a tracer is refused by the registry, exit 2); a rule there the
tracer does not understand is an error naming it (exit 2). `rulegen trace
--rules SAVED [--ipsets SAVED_SETS] --dst ...` traces a saved rule file:
a node's whole iptables-save (every table, the CNI's, Docker's and the
firewall's chains among kube-proxy's), a node's whole `nft list ruleset`
(--mode nftables: every table's base chains by hook and priority), or
rulegen's own output; what the
tracer cannot decide there splits the path into assumed branches, each
naming its reason. FILES may be given too, then they only name the
destination and the endpoints' nodes, and supply the settings. Exit 0 for
any finished trace whatever its verdict, 2 for unusable input.
"""

from __future__ import annotations

import sys

import click

from .. import backends
from ..cli import emit_report, guarded, run_compile
from ..diagnostics import Report, UsageError
from ..flags import flags_of, settings_options
from ..ipaddr import parse_cidr, parse_ip
from ..model import Inputs
from ..settings import resolve_settings
from ..trace import TraceError, trace_compiled
from ..trace.render import render_json, render_text


def parse_dst(value: str) -> tuple[str, int]:
    """`IP:PORT` or `[IPv6]:PORT`."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        port = rest[1:] if sep and rest.startswith(":") else ""
    else:
        host, _, port = value.rpartition(":")
        if ":" in host and not host.startswith("["):
            raise UsageError(f"--dst: {value!r}: write an IPv6 destination as [ADDRESS]:PORT")
    ip = parse_ip(host) if host else None
    if ip is None:
        raise UsageError(f"--dst: {value!r} is not IP:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--dst: {value!r}: the port must be a number between 1 and 65535")
    return ip, int(port)


def family_of_dst(dst: str, ip: str, flag: str | None) -> str:
    """The rules to trace are of --dst's family: `--dst [fd00::1]:80` alone means --ip-family ipv6.

    A one-family kube-proxy never sees the other family's packets, so a
    --ip-family that contradicts --dst is a mistake, not a question.
    """
    fam = "ipv6" if ":" in ip else "ipv4"
    if flag is not None and flag != fam:
        raise UsageError(f"--dst {dst} is an {fam[:2].upper()}{fam[2:]} address but --ip-family {flag} was given "
                         f"(leave --ip-family out, or give --ip-family {fam})")
    return fam


def parse_routes(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """`--route CIDR=IFACE` values → (CIDR, IFACE) pairs."""
    out = []
    for v in values:
        cidr, sep, iface = v.partition("=")
        c = parse_cidr(cidr.strip())
        name = iface.strip()
        if not sep or c is None or not name or " " in name:
            raise UsageError(f"--route: {v!r} is not CIDR=INTERFACE (e.g. 172.17.0.0/16=docker0)")
        out.append((c, name))
    return tuple(out)


@click.command("trace")
@click.argument("files", nargs=-1)
@click.option("--dst", required=True, help="Destination IP:PORT ([IPv6]:PORT).")
@click.option("--src", default=None,
              help="Source address (default: 203.0.113.10, a client outside the cluster). A node address "
                   "or 127.0.0.1 means the node itself.")
@click.option("--proto", type=click.Choice(["tcp", "udp", "sctp"], case_sensitive=False), default="tcp",
              show_default=True)
@click.option("--rules", "rules_path", default=None,
              help="Trace this saved rule file (a node's whole iptables-save, or rulegen's output) instead of "
                   "compiling; with --mode nftables a node's whole `nft list ruleset` (every table's base chains, "
                   "firewalld's and Docker's among kube-proxy's) or rulegen's script; with --mode ipvs, IPVS mode's combined output or a folder of ipvsadm.rules, "
                   "ipset.rules and iptables.rules (a node's ipvsadm -Sn, ipset save and iptables-save).")
@click.option("--ipsets", "ipsets_path", default=None, metavar="SAVED_SETS",
              help="The node's ipsets (`ipset save` output), to decide `-m set` matches in --rules; without "
                   "it they split the trace into assumed branches. With --mode ipvs it replaces the folder's "
                   "ipset.rules (sets missing from either are assumed, named).")
@click.option("--in-iface", default=None,
              help="Interface the packet arrives on (default eth0 from outside, cni0 or the detector's "
                   "interface from a pod).")
@click.option("--out-iface", default="eth0", show_default=True,
              help="Interface packets leave on toward other nodes and the outside (a packet for a pod on this "
                   "node leaves on that pod's interface: cni0, or the detector's interface).")
@click.option("--pod-iface", default=None,
              help="Interface the node's own pods are reached on, and send from (default: cni0, or the "
                   "detector's interface).")
@click.option("--route", "routes", multiple=True, metavar="CIDR=IFACE",
              help="A route of the node: destinations in CIDR leave by IFACE (repeatable; the most specific "
                   "wins, before the pod interface and --out-iface), e.g. 172.17.0.0/16=docker0.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@settings_options
@guarded
def command(files, dst, src, proto, rules_path, ipsets_path, in_iface, out_iface, pod_iface, routes, as_json,
            config_path, **kw):
    """Follow one new connection to --dst through the rules, as the kernel would.

    Prints every hop (table, chain, rule, what it did), then every possible
    destination with its exact chance, the node it runs on and whether the
    client address is kept or masqueraded. Exit 0 whatever the verdict.

    \b
    rulegen trace cluster.yaml --dst 192.168.56.10:30080
    rulegen trace cluster.yaml --dst 10.96.120.15:80 --src 10.244.1.11 --json
    rulegen trace --rules node.save --node-ip 192.168.56.10 --dst 192.168.56.10:30080
    rulegen trace --rules node.save --ipsets node.ipsets --node-ip 192.168.56.10 --dst 10.96.0.10:80
    rulegen trace cluster.yaml --rules node.save --dst 127.0.0.1:30080 --src 127.0.0.1
    rulegen trace --mode ipvs --rules node-dump/ --node-ip 192.168.56.10 --dst 192.168.56.10:30080
    rulegen trace --mode nftables --rules ruleset.nft --node-ip 192.168.56.10 --dst 192.168.56.10:30080
    """
    flags = flags_of(kw)
    if ipsets_path is not None and rules_path is None:
        raise UsageError("--ipsets goes with --rules (the node's dump whose rules match those sets)")
    where = {"in_iface": in_iface, "out_iface": out_iface}
    # The iptables and IPVS tracers model the node's routes and pod interfaces; others get them only when given.
    if pod_iface:
        where["pod_iface"] = pod_iface
    if routes:
        where["routes"] = parse_routes(routes)
    dst_ip, dst_port = parse_dst(dst)
    given_family = flags.get("ip_family")
    flags["ip_family"] = family_of_dst(dst, dst_ip, given_family)
    try:
        if rules_path is None:
            c = run_compile(files, flags, config_path)
            result = trace_compiled(c, src, dst_ip, dst_port, proto.lower(), pod_cidrs=c.settings.node_pod_cidrs,
                                    source="compiled from " + " ".join(files), **where)
        else:
            # The dump says its own family unless the user forced one: a dump of the other
            # family than --dst is then named as such, not read as the wrong one.
            first = flags.get("mode") or backends.DEFAULT_MODE
            tracer = backends.require(first, "tracer")
            read_error = None
            try:
                rs, name = tracer.read(rules_path, given_family)  # a bad file is a UsageError
            except UsageError as e:
                if not files:
                    raise backends.other_mode_hint(e, rules_path, first) from None
                read_error = e  # the files' configuration may choose the mode the file is of
            if files:
                c = run_compile(files, flags, config_path)
                settings, plan = c.settings, c.plan
            else:
                report = Report()
                settings = resolve_settings(Inputs([], [], [], [], [], []), flags, report, config_path)
                emit_report(report, bool(flags.get("strict")))
                plan = None
            if settings.mode != first:  # the configuration chose another mode: read the file as its
                tracer = backends.require(settings.mode, "tracer")
                rs, name = tracer.read(rules_path, given_family)
            elif read_error is not None:
                raise read_error
            if ipsets_path is not None:
                where["ipsets"] = ipsets_path
            result = tracer.trace_saved(rs, settings, src, dst_ip, dst_port, proto.lower(), plan=plan, source=name,
                                        pod_cidrs=settings.node_pod_cidrs, **where)
    except TraceError as e:
        raise UsageError(f"cannot trace: {e}") from None
    sys.stdout.write(render_json(result) if as_json else render_text(result))
