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

# The ipvsadm writer is the kernel clients' (their `dump`); its line helpers are re-exported for this mode.
from ...dataplane.ipvs.model import hostport, render as render_ipvsadm, service_arg, service_line  # noqa: F401
from ...dataplane.xtables.render import render as render_xtables
from .ir import BITMAP_PORT, IPSet, IPVSState

SECTIONS = ("ipvsadm", "ipset", "iptables")
FILES = {"ipvsadm": "ipvsadm.rules", "ipset": "ipset.rules", "iptables": "iptables.rules"}
HEADER = "# rulegen: "


def ipvsadm(state: IPVSState) -> str:
    """The virtual servers in compile order, by the one ipvsadm writer (`dataplane.ipvs.model.render`)."""
    return render_ipvsadm(state.virtual_servers)


def create_line(s: IPSet, name: str | None = None) -> str:
    """The `create` line of set S (under NAME instead of its own, for a set made to be swapped in)."""
    words = [f"create {name or s.name} {s.type}"]
    if s.type != BITMAP_PORT and s.family:
        words.append(f"family {s.family}")
    words.extend(f"{k} {v}" if v else k for k, v in s.options)
    return " ".join(words)


def ipset(state: IPVSState) -> str:
    out: list[str] = []
    for s in state.ipsets:
        out.append(create_line(s) + "\n")
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
