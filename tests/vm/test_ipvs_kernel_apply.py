"""Inside the IPVS VM: `rulegen apply --mode ipvs` against a kernel with ip_vs, read back with the node's own tools.

What the kernel holds afterwards is read with `ipvsadm -Sn`, `ipset save`,
`iptables-save` and `ip addr`, parsed by IPVS mode's parser and compared
with the compile by meaning (`ir.normalised`). A second apply must change
nothing: a spy around the real clients counts every call that could
change something, and the dumps before and after are compared. The
namespaces are made by `RealNamespaces.create` (no forked helper), which
is itself under test here. Few namespaces and few applies: the whole VM
part of the suite runs in one boot under emulation.
"""

from __future__ import annotations

import errno
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from nshelp import namespace_names

from rulegen.apply import apply
from rulegen.apply.kernel import Kernel
from rulegen.apply.lock import LockError, lock_path
from rulegen.backends.ipvs import parse
from rulegen.backends.ipvs.apply import IPVSApplyError
from rulegen.backends.ipvs.compile import JUMP_RULES
from rulegen.backends.ipvs.ir import normalised
from rulegen.dataplane.ipset.client import RealIPSets
from rulegen.dataplane.ipvs import IPVSError, RealIPVS
from rulegen.dataplane.ipvs.model import real_line
from rulegen.dataplane.links import RealLinks
from rulegen.dataplane.xtables.client import RealXtables
from rulegen.diagnostics import Report
from rulegen.golden import case_flags, load_case
from rulegen.kernel.netns import RealNamespaces
from rulegen.pipeline import compile_files

pytestmark = [pytest.mark.ipvs_kernel, pytest.mark.root]

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
# Calls that change the kernel, per client; a second apply must make none.
CHANGING = {"add_virtual_server", "update_virtual_server", "delete_virtual_server", "add_real_server",
            "update_real_server", "delete_real_server", "flush", "ensure_dummy", "delete", "add_address",
            "remove_address", "sync_addresses", "restore", "insert_rule", "set_sysctl", "ensure_nfacct", "create"}


class Spy:
    """A client that records each changing call (name, args) in LOG, then makes it.

    REFUSE (name, n): the n-th call of that name fails as the kernel's refusal would.
    """

    def __init__(self, real: Any, log: list, refuse: tuple[str, int] | None = None) -> None:
        self._real, self._log, self._refuse = real, log, refuse

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if name == "batch":  # the calls inside go through the spy too
            return lambda fn: attr(lambda _c: fn(self))
        if name in CHANGING:
            def call(*args: Any, **kw: Any) -> Any:
                if name == "restore" and kw.get("test"):  # iptables-restore --test changes nothing
                    return attr(*args, **kw)
                self._log.append((name, args))
                if self._refuse and self._refuse == (name, sum(1 for op, _ in self._log if op == name)):
                    raise IPVSError(f"{name}: refused by the test", errno.EPERM)
                return attr(*args, **kw)
            return call
        return attr


def spied_kernel(log: list, refuse: tuple[str, int] | None = None) -> Kernel:
    ns = RealNamespaces()
    k = Kernel.real()
    return replace(k, netns=Spy(ns, log), xtables=Spy(RealXtables(ns), log),
                   ipvs_maker=lambda n: Spy(RealIPVS(n), log, refuse), ipsets_maker=lambda n: Spy(RealIPSets(n, ns), log),
                   links_maker=lambda n: Spy(RealLinks(n), log))


def compile_dir(case_dir: Path, edit: dict[str, str] | None = None, tmp: Path | None = None,
                flags: dict[str, Any] | None = None):
    """The case in CASE_DIR compiled in IPVS mode; EDIT's replacements made in its inputs first (copied to TMP)."""
    case = load_case(case_dir)
    case_flag, config = case_flags(case)
    flags = {**case_flag, **(flags or {}), "mode": "ipvs"}
    paths = [str(p) for p in case.inputs]
    if edit:
        assert tmp is not None
        tmp.mkdir(parents=True, exist_ok=True)
        paths = []
        for p in case.inputs:
            text = p.read_text()
            for old, new in edit.items():
                text = text.replace(old, new)
            (tmp / p.name).write_text(text)
            paths.append(str(tmp / p.name))
    return compile_files(paths, flags, Report(), config)


def sh(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True,
                          timeout=60).stdout


_DUMPS = {"ipvsadm": "ipvsadm -Sn", "ipset": "ipset save", "iptables": "{fam}tables-save",
          "addresses": "ip -o addr show dev kube-ipvs0"}
_CUT = "----8<---- rulegen dumps ----8<----"


def dumps(ns: str, fam: int = 4) -> dict[str, str]:
    """The four dumps of NS, from one `ip netns exec` (each exec costs a second or so under emulation)."""
    script = f"; echo '{_CUT}'; ".join(cmd.format(fam="ip6" if fam == 6 else "ip") for cmd in _DUMPS.values())
    parts = sh(ns, "sh", "-ec", script).split(_CUT + "\n")
    assert len(parts) == len(_DUMPS), parts
    return dict(zip(_DUMPS, parts))


def comparable(d: dict[str, str]) -> dict[str, str]:
    """D without iptables-save's comment lines (they carry the time) and packet counters."""
    out = dict(d)
    out["iptables"] = "\n".join(line.split(" [")[0] if line.startswith(":") else line
                                for line in d["iptables"].splitlines() if not line.startswith("#"))
    return out


def assert_matches(compiled: Any, d: dict[str, str]) -> None:
    """What the dumps D of a namespace hold is what COMPILED says."""
    st = compiled.ir
    live = parse.parse_parts(d["ipvsadm"], d["ipset"], d["iptables"], st.family)
    got, want = normalised(live, canonical=True), normalised(st, canonical=True)
    # IPVS keeps one table for both families; the compile is one family's
    assert {k: v for k, v in got["virtual_servers"].items() if (":" in k[1]) == (st.family == 6)} == \
        want["virtual_servers"]
    assert {n: got["ipsets"].get(n) for n in want["ipsets"]} == want["ipsets"]
    for table, chains in want["iptables"].items():
        assert {c: got["iptables"][table].get(c) for c in chains} == chains, f"{table}: glue differs"
    for table, chain, spec in JUMP_RULES:
        target = spec.split(" -j ")[-1]
        assert any(r.endswith(f"-j {target}") for r in got["iptables"][table][chain]), (table, chain, target)
    bound = {line.split()[3].split("/")[0] for line in d["addresses"].splitlines()}
    assert bound == set(st.bound)
    # Every real server the compile has is in the kernel as `ipvsadm -Sn` writes it, masquerading.
    assert {real_line(vs, rs) for vs in st.virtual_servers for rs in vs.reals} <= set(d["ipvsadm"].splitlines())


def test_apply_is_the_compile_idempotent_in_place_and_leaves_the_previous_state_when_refused(tmp_path):
    """wrr case (UDP and TCP, ClusterIP and NodePorts on two node addresses): applied twice (the second
    sends nothing); an endpoint's address changes (its real servers only), then the scheduler (virtual
    servers updated, real servers kept); then a step the kernel refuses, and an apply while the lock is
    held: both leave the namespace as it was."""
    log: list = []
    kernel = spied_kernel(log)
    case = FIXTURES / "ipvs-scheduler-wrr"
    c1 = compile_dir(case)
    old = "10.60.1.66"
    c2 = compile_dir(case, {f"[{old}]": "[10.60.1.99]"}, tmp_path / "moved")
    c3 = compile_dir(case, {f"[{old}]": "[10.60.1.99]", "scheduler: wrr": "scheduler: rr"}, tmp_path / "rr")
    with namespace_names("rgvm-ep") as name:
        ns = name()
        try:
            res = apply(c1, ns, create=True, kernel=kernel, state_dir=None)
            assert res.created and res.link_created and len(res.vs_added) == len(c1.ir.virtual_servers)
            first = dumps(ns)
            assert_matches(c1, first)
            # pyroute2's IPVSDest would have made them direct routing: the kernel itself says Masq
            listing = [line.split() for line in sh(ns, "ipvsadm", "-Ln").splitlines() if line.strip().startswith("->")]
            reals = [w for w in listing if w[1] != "RemoteAddress:Port"]
            assert reals and {w[2] for w in reals} == {"Masq"}
            assert len(reals) == sum(len(vs.reals) for vs in c1.ir.virtual_servers)
            assert sh(ns, "sysctl", "-n", "net.ipv4.vs.conntrack").strip() == "1"
            log.clear()
            again = apply(c1, ns, kernel=kernel, state_dir=None)
            assert log == [] and again.lines == 0
            assert comparable(dumps(ns)) == comparable(first)
            vs_lines = {line for line in first["ipvsadm"].splitlines() if line.startswith("-A")}

            log.clear()
            res = apply(c2, ns, kernel=kernel, state_dir=None)
            moved = [vs for vs in c1.ir.virtual_servers if any(r.address == old for r in vs.reals)]
            assert moved and len(res.rs_added) == len(res.rs_removed) == len(moved)
            assert not (res.vs_added or res.vs_changed or res.vs_removed)
            ops = sorted(op for op, _ in log)
            assert ops == ["add_real_server"] * len(moved) + ["delete_real_server"] * len(moved), ops
            d2 = {**first, "ipvsadm": sh(ns, "ipvsadm", "-Sn")}  # only IPVS was sent to
            assert_matches(c2, d2)
            assert {line for line in d2["ipvsadm"].splitlines() if line.startswith("-A")} == vs_lines

            log.clear()
            res = apply(c3, ns, kernel=kernel, state_dir=None)
            n = len(c3.ir.virtual_servers)
            assert [op for op, _ in log] == ["update_virtual_server"] * n and len(res.vs_changed) == n
            d3 = dumps(ns)
            assert_matches(c3, d3)
            assert [line for line in d3["ipvsadm"].splitlines() if line.startswith("-a")] == \
                   [line for line in d2["ipvsadm"].splitlines() if line.startswith("-a")]

            # Back to c1, but the kernel refuses the second real server: by then two virtual servers were
            # changed (rr -> wrr) and one real server added; those are undone, the kernel holds c3 as before.
            before = comparable(d3)
            sent: list = []
            with pytest.raises(IPVSApplyError, match="refused by the test"):
                apply(c1, ns, kernel=spied_kernel(sent, ("add_real_server", 2)), state_dir=None)
            assert [op for op, _ in sent][:3] == ["update_virtual_server", "add_real_server", "update_virtual_server"]

            # Another apply holds the namespace's lock: this one gives up and sends nothing.
            locks = tempfile.mkdtemp(prefix="rgvm-locks-")
            holder = subprocess.Popen(["flock", "-x", lock_path(locks, ns), "-c", "echo held; sleep 60"],
                                      stdout=subprocess.PIPE, text=True)
            try:
                assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
                log.clear()
                with pytest.raises(LockError):
                    apply(c1, ns, kernel=kernel, state_dir=None, lock_dir=locks, lock_timeout=0.5)
                assert log == []
            finally:
                holder.kill()
                holder.wait(timeout=10)
            assert comparable(dumps(ns)) == before  # after the refused apply and the locked-out one
        finally:
            RealNamespaces().delete(ns)


def test_ipv6_sctp_and_affinity_load_and_read_back_as_compiled(tmp_path):
    """What the wrr case has not: IPv6 (its persistence netmask), SCTP, ClientIP affinity (-p), in one namespace."""
    c = compile_dir(FIXTURES / "ipvs-ipv6-sctp", {"  type: LoadBalancer\n": "  type: LoadBalancer\n  sessionAffinity: ClientIP\n"},
                    tmp_path, flags={"ip_family": "ipv6"})
    assert c.ir.family == 6 and any(vs.protocol == "sctp" for vs in c.ir.virtual_servers)
    assert any(vs.persistent for vs in c.ir.virtual_servers)
    with namespace_names("rgvm-v6") as name:
        ns = name()
        try:
            apply(c, ns, create=True, kernel=Kernel.real(), state_dir=None)
            assert_matches(c, dumps(ns, 6))
        finally:
            RealNamespaces().delete(ns)
