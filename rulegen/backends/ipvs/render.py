"""IPVS IR → text: `ipvsadm.rules`, `ipset.rules` and `iptables.rules`, or the three in one.

- ipvsadm.rules: `ipvsadm -R` input, written as `ipvsadm -Sn` prints a
  service table: `-A -t VIP:PORT -s SCHED [-p TIMEOUT] [-b FLAGS]` per
  virtual server, then `-a -t VIP:PORT -r RIP:PORT -m -w WEIGHT` per real
  server (`-u` UDP, `--sctp-service` SCTP, IPv6 in brackets). No comment
  lines: ipvsadm's restore has no comment syntax to rely on.
- ipset.rules: `ipset restore` input, written as `ipset save` prints the
  sets (`create NAME TYPE family inet hashsize 1024 maxelem 65536`, then
  `add NAME ENTRY` lines), so it diffs cleanly against a live node's save
  (which adds only `bucketsize`/`initval` words; `parse` drops them). Load
  it into a node that already has the sets with `ipset restore -exist`.
- iptables.rules: the glue payload, by the shared xtables renderer.

The addresses of kube-ipvs0 have no file of their own: they are exactly the
entries of the KUBE-IPVS-IPS set (KUBE-6-IPVS-IPS), and `parse` reads them
from there.

Without `-o`, `render` gives the three texts in that order, each after a
`# rulegen: <section>` header line; `files` gives them by file name.
"""

from __future__ import annotations

from ...dataplane.xtables.render import render as render_xtables
from .ir import BITMAP_PORT, IPVSState, VirtualServer, sched_flag_names

SECTIONS = ("ipvsadm", "ipset", "iptables")
FILES = {"ipvsadm": "ipvsadm.rules", "ipset": "ipset.rules", "iptables": "iptables.rules"}
HEADER = "# rulegen: "
_PROTO_OPT = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}


def hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def service_arg(vs: VirtualServer) -> str:
    """`-t VIP:PORT` (or `-u`, `--sctp-service`, `-f MARK` for a firewall-mark service)."""
    if vs.protocol == "fwmark":
        return f"-f {vs.port} -6" if vs.address == "::" else f"-f {vs.port}"
    return f"{_PROTO_OPT[vs.protocol]} {hostport(vs.address, vs.port)}"


def service_line(vs: VirtualServer) -> str:
    line = f"-A {service_arg(vs)} -s {vs.scheduler}"
    if vs.persistent:
        line += f" -p {vs.timeout}"
    names = sched_flag_names(vs.scheduler, vs.flags)
    if names:
        line += " -b " + ",".join(names)
    return line


def ipvsadm(state: IPVSState) -> str:
    out: list[str] = []
    # Many virtual servers share one tuple of real servers (ClusterIP, NodePorts,
    # LB IPs of one port): format each tuple's destinations once, then one
    # C-level join per virtual server puts the `-a ... -r ` head before each.
    done: dict[int, list[str]] = {}
    for vs in state.virtual_servers:
        svc = service_arg(vs)
        out.append(service_line(vs) + "\n")
        reals = vs.reals
        if not reals:
            continue
        parts = done.get(id(reals))
        if parts is None:
            if state.family == 4:  # no brackets to decide: one f-string per destination
                parts = [f"{r.address}:{r.port} -{r.method} -w {r.weight}\n" for r in reals]
            else:
                parts = [f"{hostport(r.address, r.port)} -{r.method} -w {r.weight}\n" for r in reals]
            done[id(reals)] = parts
        head = f"-a {svc} -r "
        out.append(head)
        out.append(head.join(parts))
    return "".join(out)


def ipset(state: IPVSState) -> str:
    out: list[str] = []
    for s in state.ipsets:
        words = [f"create {s.name} {s.type}"]
        if s.type != BITMAP_PORT and s.family:
            words.append(f"family {s.family}")
        words.extend(f"{k} {v}" if v else k for k, v in s.options)
        out.append(" ".join(words) + "\n")
        head = f"add {s.name} "
        out.extend([head + e + "\n" for e in s.entries])
    return "".join(out)


def iptables(state: IPVSState) -> str:
    return render_xtables(state.iptables)


def files(state: IPVSState) -> dict[str, str]:
    """What `compile -o DIR` writes: file name → text."""
    return {FILES["ipvsadm"]: ipvsadm(state), FILES["ipset"]: ipset(state), FILES["iptables"]: iptables(state)}


def render(state: IPVSState) -> str:
    """The three texts on one stream, each after its `# rulegen: <section>` header."""
    return "".join([f"{HEADER}ipvsadm\n", ipvsadm(state), f"{HEADER}ipset\n", ipset(state),
                    f"{HEADER}iptables\n", iptables(state)])
