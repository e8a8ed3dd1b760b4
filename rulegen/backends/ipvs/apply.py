"""IPVS mode's applier: kube-ipvs0 and its addresses, kube-proxy's sysctls, the ipsets, the IPVS table and the glue.

It reads what is live in the namespace (the link and its addresses, the IPVS
table, `ipset save`), compares it with the compile object by object and
sends only the differences, so a second apply of the same input sends
nothing at all. The glue goes through the shared xtables applier
(`dataplane/xtables/sync.py`) under its own state name, "ipvs", with IPVS
mode's jumps from the built-in chains (`compile.JUMP_RULES`) and no
per-service chains to prune. Every call goes through the `Kernel` bundle,
so it runs on the fakes too.

Nothing is changed before it is known that IPVS can work: `preflight`
(called by `rulegen.apply` before it makes the namespace) and `apply` ask
the kernel for ip_vs and stop with its reason, exit 2, when there is none.
A live set of the right name but another type or family is refused then
too, since it can neither be swapped nor, while the glue uses it, be
destroyed.

The order is kube-proxy's, made safe for a failure midway: everything that
adds or changes comes first (the dummy interface and its new addresses;
the sysctls kube-proxy sets; new sets and new set entries; new and changed
virtual and real servers), then the glue, then everything that removes
(real and virtual servers no longer wanted, stale set entries, addresses
no longer wanted). A Service being changed keeps answering throughout: its
new objects are there before its old ones go.

- Virtual servers and real servers are updated in place (`update`, never
  delete and add) when only their settings or weight changed, as kube-proxy
  does. A real server no longer wanted is deleted at once: kube-proxy's
  graceful termination (weight 0, deleted once its connections are gone)
  is a running proxy's timer, and a stateless apply cannot come back to
  finish it; with `expire_nodest_conn` set, packets of a connection to a
  deleted real server end it. Virtual servers of the other address family
  (the other family's proxier) and firewall-mark services are left alone.
- Set entries are added and deleted one by one, as kube-proxy's ipset sync
  does, so a set never goes empty mid-apply. A set whose settings differ
  (its maxelem, say) is rebuilt under a temporary name and swapped in, so
  the rules that use it see the old contents until the new ones are
  complete.
- No transaction spans IPVS, ipset and links. If anything in the first
  phase or the glue fails, what this apply already changed is undone in
  reverse order: added objects deleted, updated ones put back, a set
  swapped in swapped back, the dummy interface removed if this apply made
  it; the glue is put back by the xtables applier itself. The sysctls are
  not undone (they are kube-proxy's node settings, harmless alone). If an
  undo step itself fails, the error says which. A failure in the last
  phase leaves the new state working with some stale objects, and says so.
  Either way the next apply compares with what is live and converges.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ...apply.result import ApplyResult, Clock
from ...dataplane.ipset.model import IPSet as LiveSet
from ...dataplane.ipset.model import IPSetError
from ...dataplane.ipvs.model import IPVSUnavailable, real_line, service_arg, service_line
from ...dataplane.links.client import KUBE_IPVS0, canonical_address
from ...dataplane.xtables import sync
from ...dataplane.xtables.model import views
from ...diagnostics import UsageError
from .compile import JUMP_RULES
from .ir import BITMAP_PORT, IPSet, IPVSState, RealServer, VirtualServer
from .render import create_line

if TYPE_CHECKING:
    from ...apply.kernel import Kernel
    from ...compiled import Compiled

STATE_NAME = "ipvs"  # the glue's state files: ipvs-ipv4.json, ipvs-ipv4.gen, ...
# What kube-proxy's IPVS proxier sets when it starts (net/ipv4/vs/conn_reuse_mode
# only on kernels older than 5.9, which rulegen does not reach for).
SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.ipv4.vs.conntrack", "1"),  # conntrack entries for IPVS connections: the glue's MASQUERADE needs them
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    ("net.ipv4.vs.expire_quiescent_template", "1"),
    ("net.ipv4.ip_forward", "1"),
)
# A set rebuilt to be swapped in is made under this prefix plus a random part;
# a leftover one (an apply killed midway) is destroyed by the next apply.
SWAP_PREFIX = "RG-SWAP-"
# Create options the kernel chooses or rounds, not part of what a set is.
_KERNEL_OPTIONS = frozenset({"hashsize", "bucketsize", "initval"})


class IPVSApplyError(UsageError):
    """The kernel refused a step; the message says what was undone and what is left."""


@dataclass
class IPVSApplyResult(ApplyResult):
    """`ApplyResult` worded for IPVS mode's four kinds of object, with the glue's xtables result inside."""

    glue: sync.XtablesApplyResult | None = None
    link_created: bool = False
    sysctls: list[tuple[str, str]] = field(default_factory=list)  # set (were different)
    addresses_added: list[str] = field(default_factory=list)
    addresses_removed: list[str] = field(default_factory=list)
    sets_created: list[str] = field(default_factory=list)
    sets_replaced: list[str] = field(default_factory=list)
    entries_added: list[tuple[str, str]] = field(default_factory=list)  # (set, entry)
    entries_removed: list[tuple[str, str]] = field(default_factory=list)
    vs_added: list[str] = field(default_factory=list)
    vs_changed: list[str] = field(default_factory=list)
    vs_removed: list[str] = field(default_factory=list)
    rs_added: list[str] = field(default_factory=list)  # "TCP 10.96.0.1:80 -> 10.244.1.5:8080"
    rs_changed: list[str] = field(default_factory=list)
    rs_removed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        g = self.glue
        made = " (namespace created)" if self.created else ""
        link = "kube-ipvs0 created, " if self.link_created else ""
        sent = f"would send {self.lines} lines (dry run)" if self.dry_run else f"sent {self.lines} lines"
        s = (f"netns {self.netns}{made}: {len(self.vs_added)} virtual servers added, {len(self.vs_changed)} changed, "
             f"{len(self.vs_removed)} removed; {len(self.rs_added)} real servers added, {len(self.rs_changed)} "
             f"changed, {len(self.rs_removed)} removed; {link}{len(self.addresses_added)} addresses bound, "
             f"{len(self.addresses_removed)} unbound; {len(self.entries_added)} set entries added, "
             f"{len(self.entries_removed)} removed")
        if self.sets_created or self.sets_replaced:
            s += f" ({len(self.sets_created)} sets created, {len(self.sets_replaced)} replaced)"
        if g is not None:
            jumps = "to insert" if self.dry_run else "inserted"
            s += (f"; glue: {len(g.added)} chains added, {len(g.changed)} changed, {len(g.removed)} removed, "
                  f"{len(g.jumps)} jump rules {jumps}")
        s += f"; {sent} in {self.seconds:.3f} s"
        if g is not None and g.backend:
            s += f" (iptables-{g.backend})"
        for table, chain, by in self.kept:
            s += f"\nnetns {self.netns}: kept stale {table} chain {chain}: still referenced by {by}"
        return s

    def to_json(self, warnings: list[dict[str, Any]], timings: list[tuple[str, float]]) -> dict[str, Any]:
        g = self.glue
        out: dict[str, Any] = {
            "netns": self.netns, "mode": self.mode, "family": self.family, "backend": g.backend if g else "",
            "created": self.created, "dry_run": self.dry_run, "live_state_from": g.source if g else "",
            "lines": self.lines,
            "virtual_servers": {"added": self.vs_added, "changed": self.vs_changed, "removed": self.vs_removed},
            "real_servers": {"added": self.rs_added, "changed": self.rs_changed, "removed": self.rs_removed},
            "kube_ipvs0": {"created": self.link_created, "added": self.addresses_added,
                           "removed": self.addresses_removed},
            "ipsets": {"created": self.sets_created, "replaced": self.sets_replaced,
                       "entries": {"added": len(self.entries_added), "removed": len(self.entries_removed)}},
            "sysctls": dict(self.sysctls),
            "chains": {"added": len(g.added) if g else 0, "changed": len(g.changed) if g else 0,
                       "removed": len(g.removed) if g else 0,
                       "kept": [{"table": t, "chain": c, "referenced_by": by} for t, c, by in self.kept]},
            "jumps": {"inserted": [{"table": t, "chain": c, "rule": a} for t, c, a in (g.jumps if g else [])],
                      "removed": [{"table": t, "chain": c, "rule": a} for t, c, a in (g.jumps_removed if g else [])]},
            "warnings": warnings,
            "seconds": round(self.seconds, 6),
            "timings": [{"stage": n, "seconds": round(t, 6)} for n, t in timings],
        }
        if self.dry_run:
            out["payload"] = self.payload
        return out


def _rs_name(vs: VirtualServer, rs: RealServer) -> str:
    return f"{vs} -> {rs}"


@dataclass
class _Live:
    """What is live in the namespace, of the compile's family."""

    exists: bool
    link: bool = False
    addresses: set[str] = field(default_factory=set)
    services: dict[tuple[str, str, int], VirtualServer] = field(default_factory=dict)
    sets: dict[str, LiveSet] = field(default_factory=dict)
    sysctls: dict[str, str | None] = field(default_factory=dict)


@dataclass
class _Plan:
    """Every change, in the order it is made, with how to undo the first phase's."""

    link: bool = False
    sysctls: list[tuple[str, str]] = field(default_factory=list)
    addr_add: list[str] = field(default_factory=list)
    set_lines: list[tuple[str, list[str]]] = field(default_factory=list)  # (line, its undo lines)
    ipvs_ops: list[tuple[str, VirtualServer, RealServer | None, str]] = field(default_factory=list)  # (op, vs, rs, text)
    ipvs_undo: dict[int, tuple[str, VirtualServer, RealServer | None]] = field(default_factory=dict)  # op index -> undo
    ipvs_remove: list[tuple[str, VirtualServer, RealServer | None, str]] = field(default_factory=list)
    set_remove: list[str] = field(default_factory=list)
    addr_remove: list[str] = field(default_factory=list)


class IPVSApplier:
    state_files = sync.state_files(STATE_NAME)
    # What `rulegen lab` checks for and says it loads before it builds a node in this mode.
    tools = ("ipset", "iptables-restore", "iptables-save", "iptables")
    payload = "IPVS virtual servers, ipsets and iptables rules"

    def preflight(self, compiled: Compiled, kernel: Kernel) -> None:
        """Stop before anything is made when this kernel has no IPVS (asked where we are: ip_vs is kernel-wide)."""
        _require_ipvs(kernel, None)

    def apply(self, compiled: Compiled, netns: str, kernel: Kernel, *, dry_run: bool,
              state_dir: str | None) -> IPVSApplyResult:
        state: IPVSState = compiled.ir
        fam = state.family
        clock = Clock()
        res = IPVSApplyResult(netns, compiled.settings.mode, fam, dry_run=dry_run)
        if kernel.netns.exists(netns):
            _require_ipvs(kernel, netns)
        live = _read(kernel, netns, fam)
        clock.lap("read-live")
        plan = _compare(state, live, res, netns)
        clock.lap("diff")
        if dry_run:
            glue = sync.sync(_target(state), netns, kernel, mode=res.mode, family=fam, dry_run=True,
                             state_dir=state_dir)
            clock.lap("glue")
        else:
            glue = _Run(kernel, netns, plan, res, clock).run(
                lambda: sync.sync(_target(state), netns, kernel, mode=res.mode, family=fam, state_dir=state_dir))
        _finish(res, plan, glue)
        # The glue's own stages in place of its one lap.
        res.timings = [st for name, t in clock.stages
                       for st in ([(f"glue-{n}", gt) for n, gt in glue.timings] if name == "glue" else [(name, t)])]
        return res


APPLIER = IPVSApplier()


def _require_ipvs(kernel: Kernel, netns: str | None) -> None:
    reason = kernel.ipvs_missing(netns)
    if reason is not None:
        raise IPVSUnavailable(f"{reason}; IPVS mode needs it, nothing was changed")


def _target(state: IPVSState) -> sync.Target:
    # No per-service chains: every glue chain is fixed, so none is ever stale.
    return sync.Target(STATE_NAME, views(state.iptables), JUMP_RULES, ())


# ---------------------------------------------------------------------- reading and comparing


def _read(kernel: Kernel, netns: str, fam: int) -> _Live:
    if not kernel.netns.exists(netns):
        return _Live(False)  # a dry run of --create: nothing is live yet
    live = _Live(True)
    links = kernel.links(netns)

    def read_links(lk: Any) -> None:
        live.link = lk.exists(KUBE_IPVS0)
        if live.link:
            live.addresses = {a for a in lk.addresses(KUBE_IPVS0) if (":" in a) == (fam == 6)}

    links.batch(read_links)
    live.services = {vs.key: vs for vs in kernel.ipvs(netns).table() if vs.family == fam}
    live.sets = {s.name: s for s in kernel.ipsets(netns).sets()}
    live.sysctls = {k: kernel.netns.sysctl(netns, k) for k, _ in SYSCTLS}
    return live


def _set_settings(type_: str, family: str, options: Any) -> tuple:
    """What makes two sets of one name the same set to the kernel: type, family and the options it keeps."""
    opts = {k: v for k, v in options if k not in _KERNEL_OPTIONS and k != "family"}
    if type_ != BITMAP_PORT:
        opts.setdefault("maxelem", "65536")
    return (type_, family, tuple(sorted(opts.items())))


def _compare(state: IPVSState, live: _Live, res: IPVSApplyResult, netns: str) -> _Plan:
    plan = _Plan()
    # kube-ipvs0 and its addresses.
    plan.link = not live.link
    res.link_created = plan.link
    want_addrs = [canonical_address(a) for a in state.bound]
    want_set = set(want_addrs)
    plan.addr_add = [a for a in dict.fromkeys(want_addrs) if a not in live.addresses]
    plan.addr_remove = sorted(live.addresses - want_set)
    res.addresses_added, res.addresses_removed = list(plan.addr_add), list(plan.addr_remove)
    # kube-proxy's sysctls, only where they differ.
    plan.sysctls = [(k, v) for k, v in SYSCTLS if live.sysctls.get(k) != v]
    res.sysctls = list(plan.sysctls)
    _compare_sets(state.ipsets, live, plan, res, netns)
    _compare_services(state.virtual_servers, live, plan, res)
    return plan


def _compare_sets(ipsets: tuple[IPSet, ...], live: _Live, plan: _Plan, res: IPVSApplyResult, netns: str) -> None:
    lines = plan.set_lines
    for s in ipsets:
        have = live.sets.get(s.name)
        if have is None:
            lines.append((create_line(s), [f"destroy {s.name}"]))
            lines += [(f"add {s.name} {e}", []) for e in s.entries]  # the destroy takes them along
            res.sets_created.append(s.name)
            res.entries_added += [(s.name, e) for e in s.entries]
            continue
        have_family = have.option("family", "inet") if have.type != BITMAP_PORT else ""
        if (have.type, have_family) != (s.type, s.family):
            what = f"{have.type} {have_family}".strip()
            raise UsageError(
                f"netns {netns}: ipset {s.name} exists as {what}, where kube-proxy's is {f'{s.type} {s.family}'.strip()}; "
                f"it can neither be swapped nor, while rules use it, destroyed: remove it (and the rules that use it) "
                f"first; nothing was changed")
        members = set(have.members)
        if _set_settings(have.type, have_family, have.options) != _set_settings(s.type, s.family, s.options):
            tmp = SWAP_PREFIX + secrets.token_hex(4)
            lines.append((create_line(s, tmp), [f"destroy {tmp}"]))
            lines += [(f"add {tmp} {e}", []) for e in s.entries]
            lines.append((f"swap {tmp} {s.name}", [f"swap {tmp} {s.name}"]))
            plan.set_remove.append(f"destroy {tmp}")  # the old contents, once the glue is loaded
            res.sets_replaced.append(s.name)
            res.entries_added += [(s.name, e) for e in s.entries if e not in members]
            res.entries_removed += [(s.name, m) for m in sorted(members - set(s.entries))]
            continue
        want = set(s.entries)
        for e in s.entries:
            if e not in members:
                lines.append((f"add {s.name} {e}", [f"del {s.name} {e}"]))
                res.entries_added.append((s.name, e))
        for m in have.members:
            if m not in want:
                plan.set_remove.append(f"del {s.name} {m}")
                res.entries_removed.append((s.name, m))
    # A set left by an apply that was killed between its swap and the destroy.
    plan.set_remove += [f"destroy {n}" for n in sorted(live.sets) if n.startswith(SWAP_PREFIX)]


def _compare_services(services: tuple[VirtualServer, ...], live: _Live, plan: _Plan, res: IPVSApplyResult) -> None:
    ops, undo, remove = plan.ipvs_ops, plan.ipvs_undo, plan.ipvs_remove
    wanted: set[tuple[str, str, int]] = set()
    for vs in services:
        wanted.add(vs.key)
        old = live.services.get(vs.key)
        if old is None:
            undo[len(ops)] = ("delete_vs", vs, None)  # takes its real servers along
            ops.append(("add_vs", vs, None, service_line(vs)))
            res.vs_added.append(str(vs))
            for rs in vs.reals:
                ops.append(("add_rs", vs, rs, real_line(vs, rs)))
                res.rs_added.append(_rs_name(vs, rs))
            continue
        if old.settings != vs.settings:
            undo[len(ops)] = ("update_vs", old, None)
            ops.append(("update_vs", vs, None, service_line(vs, "-E")))
            res.vs_changed.append(str(vs))
        have = {rs.key: rs for rs in old.reals}
        want_keys = set()
        for rs in vs.reals:
            want_keys.add(rs.key)
            prev = have.get(rs.key)
            if prev is None:
                undo[len(ops)] = ("delete_rs", vs, rs)
                ops.append(("add_rs", vs, rs, real_line(vs, rs)))
                res.rs_added.append(_rs_name(vs, rs))
            elif prev != rs:
                undo[len(ops)] = ("update_rs", vs, prev)
                ops.append(("update_rs", vs, rs, real_line(vs, rs, "-e")))
                res.rs_changed.append(_rs_name(vs, rs))
        for rs in old.reals:
            if rs.key not in want_keys:
                remove.append(("delete_rs", vs, rs, real_line(vs, rs, "-d")))
                res.rs_removed.append(_rs_name(vs, rs))
    for key, old in live.services.items():
        if key not in wanted:
            remove.append(("delete_vs", old, None, f"-D {service_arg(old)}"))
            res.vs_removed.append(str(old))


# ---------------------------------------------------------------------- sending


_SECTION = "# rulegen: "


def _payload(plan: _Plan, glue: sync.XtablesApplyResult) -> tuple[str, int]:
    """What this apply sends, section by section in the order sent, and its number of lines."""
    parts: list[tuple[str, list[str]]] = [
        ("kube-ipvs0", (["link add kube-ipvs0 type dummy"] if plan.link else [])
         + [f"address add {a} dev kube-ipvs0" for a in plan.addr_add]),
        ("sysctl", [f"{k}={v}" for k, v in plan.sysctls]),
        ("ipset", [line for line, _ in plan.set_lines]),
        ("ipvsadm", [text for _, _, _, text in plan.ipvs_ops]),
        ("iptables", glue.payload.splitlines()),
        ("ipvsadm", [text for _, _, _, text in plan.ipvs_remove]),
        ("ipset", list(plan.set_remove)),
        ("kube-ipvs0", [f"address del {a} dev kube-ipvs0" for a in plan.addr_remove]),
    ]
    out: list[str] = []
    n = 0
    for name, lines in parts:
        if not lines:
            continue
        out.append(_SECTION + name)
        out += lines
        n += glue.lines if name == "iptables" else len(lines)
    return "".join(line + "\n" for line in out), n


def _finish(res: IPVSApplyResult, plan: _Plan, glue: sync.XtablesApplyResult) -> None:
    res.glue = glue
    res.added += glue.added
    res.changed += glue.changed
    res.removed += glue.removed
    res.kept += glue.kept
    res.warnings += [w for w in glue.warnings if w not in res.warnings]
    res.payload, res.lines = _payload(plan, glue)
    res.added += ([("virtual server", n) for n in res.vs_added] + [("real server", n) for n in res.rs_added]
                  + [("kube-ipvs0", a) for a in res.addresses_added] + [(f"ipset {s}", e) for s, e in res.entries_added])
    res.changed += [("virtual server", n) for n in res.vs_changed] + [("real server", n) for n in res.rs_changed]
    res.removed += ([("virtual server", n) for n in res.vs_removed] + [("real server", n) for n in res.rs_removed]
                    + [("kube-ipvs0", a) for a in res.addresses_removed]
                    + [(f"ipset {s}", e) for s, e in res.entries_removed])
    res.source = "dump"


class _Run:
    """One apply's sending: the three phases, and the undo log of the first."""

    def __init__(self, kernel: Kernel, netns: str, plan: _Plan, res: IPVSApplyResult, clock: Clock) -> None:
        self.kernel, self.netns, self.plan, self.res, self.clock = kernel, netns, plan, res, clock
        self.undo: list[tuple[str, Callable[[], None]]] = []  # (what it undoes, how), oldest first

    def run(self, load_glue: Callable[[], sync.XtablesApplyResult]) -> sync.XtablesApplyResult:
        """The three phases; the glue's result."""
        try:
            self.add_links()
            self.set_sysctls()
            self.add_sets()
            self.add_services()
            glue = load_glue()
            self.clock.lap("glue")
        except UsageError as e:
            raise IPVSApplyError(f"{e}{self.roll_back()}") from None
        try:
            self.remove_services()
            self.remove_set_entries()
            self.remove_addresses()
        except UsageError as e:
            raise IPVSApplyError(f"{e}; the new state is in place, but some objects it no longer wants are "
                                 f"left over; the next apply removes them") from None
        return glue

    # -- phase 1: add and change
    def add_links(self) -> None:
        p = self.plan
        if not (p.link or p.addr_add):
            return

        def work(lk: Any) -> None:
            if p.link:
                lk.ensure_dummy(KUBE_IPVS0)
                self.undo.append(("the kube-ipvs0 interface", lambda: lk.delete(KUBE_IPVS0)))
            for a in p.addr_add:
                lk.add_address(KUBE_IPVS0, a)
                self.undo.append((f"address {a}", lambda a=a: self.kernel.links(self.netns).remove_address(
                    KUBE_IPVS0, a)))

        self.kernel.links(self.netns).batch(work)
        self.clock.lap("kube-ipvs0")

    def set_sysctls(self) -> None:
        for k, v in self.plan.sysctls:
            self.kernel.netns.set_sysctl(self.netns, k, v)
        if self.plan.sysctls:
            self.clock.lap("sysctl")

    def add_sets(self) -> None:
        lines = self.plan.set_lines
        if not lines:
            return
        sets = self.kernel.ipsets(self.netns)
        done = len(lines)
        failure: IPSetError | None = None
        try:
            sets.restore("".join(line + "\n" for line, _ in lines))
        except IPSetError as e:
            failure, done = e, (e.line - 1 if e.line else 0)
        undo_lines = [u for _, undo in reversed(lines[:done]) for u in undo]
        if undo_lines:
            self.undo.append((f"{done} ipset lines", lambda: sets.restore("".join(u + "\n" for u in undo_lines))))
        if failure is not None:
            raise failure
        self.clock.lap("ipset")

    def add_services(self) -> None:
        ops = self.plan.ipvs_ops
        if not ops:
            return
        ipvs = self.kernel.ipvs(self.netns)
        undo = self.plan.ipvs_undo

        def work(c: Any) -> None:
            for i, (op, vs, rs, _) in enumerate(ops):
                _call(c, op, vs, rs)
                if i in undo:
                    uop, uvs, urs = undo[i]
                    self.undo.append((f"{op} {vs}" + (f" {rs}" if rs else ""),
                                      lambda uop=uop, uvs=uvs, urs=urs: ipvs.batch(lambda c2: _call(c2, uop, uvs, urs))))

        ipvs.batch(work)
        self.clock.lap("ipvs")

    def roll_back(self) -> str:
        """Undo the first phase, newest first; the words that end the error message."""
        if not self.undo:
            return "; nothing had been changed"
        failed = []
        for what, fn in reversed(self.undo):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - reported, and the other steps still undone
                failed.append(f"{what} ({e})")
        n = len(self.undo)
        if failed:
            return (f"; undone: {n - len(failed)} of the {n} steps already made; could not undo: "
                    + "; ".join(failed) + "; the next apply converges from what is live")
        return f"; the {n} steps already made were undone, the previous state is back"

    # -- phase 3: remove
    def remove_services(self) -> None:
        ops = self.plan.ipvs_remove
        if ops:
            self.kernel.ipvs(self.netns).batch(lambda c: [_call(c, op, vs, rs) for op, vs, rs, _ in ops])
            self.clock.lap("ipvs-remove")

    def remove_set_entries(self) -> None:
        if self.plan.set_remove:
            self.kernel.ipsets(self.netns).restore("".join(line + "\n" for line in self.plan.set_remove))
            self.clock.lap("ipset-remove")

    def remove_addresses(self) -> None:
        gone = self.plan.addr_remove
        if gone:
            self.kernel.links(self.netns).batch(lambda lk: [lk.remove_address(KUBE_IPVS0, a) for a in gone])
            self.clock.lap("kube-ipvs0-remove")


def _call(c: Any, op: str, vs: VirtualServer, rs: RealServer | None) -> None:
    name = {"add_vs": "add_virtual_server", "update_vs": "update_virtual_server",
            "delete_vs": "delete_virtual_server", "add_rs": "add_real_server",
            "update_rs": "update_real_server", "delete_rs": "delete_real_server"}[op]
    if rs is None:
        getattr(c, name)(vs)
    else:
        getattr(c, name)(vs, rs)
