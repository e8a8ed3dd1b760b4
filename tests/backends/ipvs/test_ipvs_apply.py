"""IPVS mode's applier on the fake kernel: what it sends, what a second run sends, what a failure leaves.

Every client of the fake bundle logs its changes (`FakeIPVS.log`, the
payloads `FakeIPSets` restored, `FakeLinks.log`, `FakeXtables`'
restores, the sysctls `FakeNamespaces` set), so "nothing changed" is
counted, not inferred from the end state. The same checks against a real
kernel with ip_vs run in the IPVS VM (tests/vm/test_ipvs_kernel_apply.py).
"""

from __future__ import annotations

import subprocess

import pytest
from msgspec.structs import replace
from nshelp import namespace_names
from test_ipvs_compile import NODE, compile_objs, config, endpoint, service, slice_

from rulegen.apply import apply
from rulegen.apply.kernel import FAKE_NO_IPVS, Kernel
from rulegen.backends.ipvs import parse
from rulegen.backends.ipvs.apply import SWAP_PREFIX, SYSCTLS, IPVSApplyError
from rulegen.backends.ipvs.compile import JUMP_RULES
from rulegen.backends.ipvs.ir import MASQ, RealServer, normalised
from rulegen.dataplane.ipset.fake import FakeIPSets
from rulegen.dataplane.ipset.model import IPSetError
from rulegen.dataplane.ipvs import FakeIPVS, IPVSUnavailable, VirtualServer, ipvs_missing_reason, sorted_services
from rulegen.diagnostics import UsageError

NS = "rgt-ipvs-a"


def cluster(web_eps=("10.42.2.5", "10.42.1.6"), scheduler: str = "rr", affinity: bool = False,
            extra: bool = True) -> list[dict]:
    """A NodePort `web` (two endpoints, one local), a ClusterIP `dns` (UDP), an LB `shop` with a source range."""
    web = service("web", "10.43.0.10", ports=(("http", "TCP", 80, 30080),),
                  **({"sessionAffinity": "ClientIP"} if affinity else {}))
    objs = [web, slice_("web", [endpoint(ip, NODE if ip.startswith("10.42.2.") else "edge-1") for ip in web_eps]),
            config(scheduler=scheduler)]
    if extra:
        objs += [service("dns", "10.43.0.53", ports=(("dns", "UDP", 53, 0),)),
                 slice_("dns", [endpoint("10.42.1.9")], ports=(("dns", "UDP", 5353),)),
                 service("shop", "10.43.0.20", ports=(("https", "TCP", 443, 30443),), lb=["192.0.2.50"],
                         loadBalancerSourceRanges=["198.51.100.0/24"]),
                 slice_("shop", [endpoint("10.42.2.7", NODE)], ports=(("https", "TCP", 8443),))]
    return objs


class Changes:
    """How many changes each fake client had logged when made; `since()` lists the new ones."""

    def __init__(self, kernel: Kernel, ns: str = NS) -> None:
        self.kernel, self.ns = kernel, ns
        self.mark = self._counts()

    def _logs(self) -> dict[str, list]:
        k, ns = self.kernel, self.ns
        return {"ipvs": k.ipvs(ns).log, "ipset": k.ipsets(ns).log, "links": k.links(ns).log,
                "iptables": [e for e in k.xtables.log if e[0] == "restore" and not e[3]],
                "sysctl": [e for e in k.netns.log if e[0] == "sysctl"]}

    def _counts(self) -> dict[str, int]:
        return {name: len(log) for name, log in self._logs().items()}

    def since(self) -> dict[str, list]:
        return {name: log[self.mark[name]:] for name, log in self._logs().items() if log[self.mark[name]:]}


def live_state(kernel: Kernel, ns: str = NS):
    """The namespace read back as IPVS mode's IR (the dumps a node gives, through the mode's parser)."""
    return parse.parse_parts(kernel.ipvs(ns).dump(), kernel.ipsets(ns).save(), kernel.xtables.save(ns))


def kube_chains(st) -> dict:
    """The glue's chains (those the compile declares), each table's rules by chain."""
    return {t: {c: rules for c, rules in chains.items() if c.startswith("KUBE-")}
            for t, chains in normalised(st, canonical=True)["iptables"].items()}


def test_the_first_apply_makes_the_compile_and_the_second_sends_nothing(kernel):
    c = compile_objs(cluster())
    res = apply(c, NS, create=True, kernel=kernel, state_dir=None)
    st = c.ir
    live = live_state(kernel)
    got, want = normalised(live, canonical=True), normalised(st, canonical=True)
    assert got["virtual_servers"] == want["virtual_servers"]
    assert got["ipsets"] == want["ipsets"]
    assert kube_chains(live) == kube_chains(st)
    assert kernel.links(NS).addresses("kube-ipvs0") == [f"{a}/32" for a in sorted(st.bound)]
    assert kernel.ipvs(NS).table() == sorted_services(st.virtual_servers)
    for table, chain, args in JUMP_RULES:
        assert kernel.xtables.check_rule(NS, table, chain, args)
    sysctls = kernel.netns.spaces[NS].sysctls
    assert {k: sysctls.get(k) for k, _ in SYSCTLS} == dict(SYSCTLS)
    assert res.link_created and len(res.vs_added) == len(st.virtual_servers) and res.lines > 0

    before = Changes(kernel)
    again = apply(c, NS, kernel=kernel, state_dir=None)
    assert before.since() == {}  # not one call that changes anything
    assert again.lines == 0 and again.payload == ""
    assert (again.vs_added, again.vs_changed, again.rs_added, again.entries_added, again.addresses_added,
            again.sysctls) == ([], [], [], [], [], [])


def test_a_changed_endpoint_changes_one_real_server_per_virtual_server(kernel):
    apply(compile_objs(cluster(("10.42.2.5", "10.42.1.6"))), NS, create=True, kernel=kernel, state_dir=None)
    ipvs = kernel.ipvs(NS)
    before = {vs.key: vs for vs in ipvs.table()}
    mark = Changes(kernel)
    res = apply(compile_objs(cluster(("10.42.2.5", "10.42.1.8"))), NS, kernel=kernel, state_dir=None)
    web_vs = [k for k in before if k[0] == "tcp" and k[2] in (80, 30080)]  # the ClusterIP and the NodePort address
    assert len(web_vs) == 2
    changes = mark.since()
    new, old = RealServer("10.42.1.8", 8080), RealServer("10.42.1.6", 8080)
    assert sorted(changes["ipvs"], key=str) == sorted(
        [("add_rs", before[k].bare(), new) for k in web_vs] + [("delete_rs", before[k].bare(), old) for k in web_vs],
        key=str)
    after = {vs.key: vs for vs in ipvs.table()}
    for k in before:
        kept = set(before[k].reals) - {old}
        assert kept <= set(after[k].reals), "a real server that stays was touched"
    assert set(changes) == {"ipvs"}  # a remote endpoint: no set entry, address or glue rule names it
    assert len(res.rs_added) == len(res.rs_removed) == 2 and res.vs_changed == []


def test_settings_change_in_place(kernel):
    apply(compile_objs(cluster(scheduler="rr")), NS, create=True, kernel=kernel, state_dir=None)
    mark = Changes(kernel)
    res = apply(compile_objs(cluster(scheduler="wrr", affinity=True)), NS, kernel=kernel, state_dir=None)
    ops = [e[0] for e in mark.since()["ipvs"]]
    assert set(ops) == {"update_vs"} and len(ops) == len(kernel.ipvs(NS).table())
    web = next(vs for vs in kernel.ipvs(NS).table() if vs.key == ("tcp", "10.43.0.10", 80))
    assert (web.scheduler, web.persistent, web.timeout) == ("wrr", True, 10800)
    assert len(res.vs_changed) == len(ops)


def test_a_drained_or_direct_routed_real_server_is_put_back_by_update(kernel):
    c = compile_objs(cluster())
    apply(c, NS, create=True, kernel=kernel, state_dir=None)
    ipvs = kernel.ipvs(NS)
    web = next(vs for vs in ipvs.table() if vs.key == ("tcp", "10.43.0.10", 80))
    rs = web.reals[0]
    ipvs.update_real_server(web, replace(rs, weight=0))  # kube-proxy's graceful termination left it so
    ipvs.update_real_server(web, replace(web.reals[1], method="g"))
    mark = Changes(kernel)
    apply(c, NS, kernel=kernel, state_dir=None)
    assert mark.since() == {"ipvs": [("update_rs", web.bare(), rs), ("update_rs", web.bare(), web.reals[1])]}
    assert all(r.weight == 1 and r.method == MASQ for vs in ipvs.table() for r in vs.reals)


def test_a_service_removed_goes_after_the_glue_and_takes_its_addresses_and_entries(kernel):
    apply(compile_objs(cluster()), NS, create=True, kernel=kernel, state_dir=None)
    mark = Changes(kernel)
    res = apply(compile_objs(cluster(extra=False)), NS, kernel=kernel, state_dir=None)
    keys = {vs.key for vs in kernel.ipvs(NS).table()}
    assert ("udp", "10.43.0.53", 53) not in keys and ("tcp", "192.0.2.50", 443) not in keys
    assert kernel.links(NS).addresses("kube-ipvs0") == ["10.43.0.10/32"]
    sets = {s.name: s.members for s in kernel.ipsets(NS).sets()}
    assert sets["KUBE-CLUSTER-IP"] == ("10.43.0.10,tcp:80",) and sets["KUBE-LOAD-BALANCER"] == ()
    assert sorted(res.addresses_removed) == ["10.43.0.20/32", "10.43.0.53/32", "192.0.2.50/32"]
    # The payload says the order: the glue first loses its LB rules, then the objects go.
    sections = [ln for ln in res.payload.splitlines() if ln.startswith("# rulegen: ")]
    assert sections == ["# rulegen: iptables", "# rulegen: ipvsadm", "# rulegen: ipset", "# rulegen: kube-ipvs0"]
    assert "-D -u 10.43.0.53:53" in res.payload.splitlines()
    assert mark.since()["links"] == [("remove", "kube-ipvs0", a) for a in res.addresses_removed]


def test_other_family_and_foreign_objects_are_left_alone(kernel):
    kernel.netns.create(NS)
    ipvs, links, sets = kernel.ipvs(NS), kernel.links(NS), kernel.ipsets(NS)
    other = VirtualServer("tcp", "fd00:43::10", 80, "rr", reals=(RealServer("fd00:42::5", 8080),))
    ipvs.add_virtual_server(other)
    ipvs.add_real_server(other, other.reals[0])
    links.ensure_dummy()
    links.add_address("kube-ipvs0", "fd00:43::10")
    sets.restore("create mine hash:ip family inet\nadd mine 10.9.9.9\n")
    apply(compile_objs(cluster()), NS, kernel=kernel, state_dir=None)
    assert other in ipvs.table()
    assert "fd00:43::10/128" in links.addresses("kube-ipvs0")
    assert ("mine", ("10.9.9.9",)) in [(s.name, s.members) for s in sets.sets()]


def test_dry_run_prints_the_payload_and_changes_nothing(kernel):
    res = apply(compile_objs(cluster()), NS, create=True, dry_run=True, kernel=kernel, state_dir=None)
    assert not kernel.netns.exists(NS)  # --create with --dry-run makes nothing
    assert res.dry_run and res.lines > 0
    lines = res.payload.splitlines()
    assert lines[:3] == ["# rulegen: kube-ipvs0", "link add kube-ipvs0 type dummy", "address add 10.43.0.10/32 dev kube-ipvs0"]
    assert "-A -t 10.43.0.10:80 -s rr" in lines and "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536" in lines
    assert "*nat" in lines and "net.ipv4.vs.conntrack=1" in lines
    assert "virtual servers added" in res.summary() and "(dry run)" in res.summary()
    out = res.to_json([], [])
    assert out["payload"] == res.payload and out["mode"] == "ipvs"
    assert "TCP 10.43.0.10:80" in out["virtual_servers"]["added"]
    assert out["kube_ipvs0"] == {"created": True, "added": res.addresses_added, "removed": []}
    assert out["ipsets"]["created"][0] == "KUBE-LOOP-BACK" and out["chains"]["added"] == 11


def test_no_ip_vs_stops_before_the_namespace_is_made_or_anything_changes():
    kernel = Kernel.fake(ipvs=False)
    c = compile_objs(cluster())
    with pytest.raises(IPVSUnavailable, match="ip_vs module is not loaded.*nothing was changed"):
        apply(c, NS, create=True, kernel=kernel, state_dir=None)
    assert not kernel.netns.exists(NS) and kernel.netns.log == []
    kernel.netns.create(NS)
    with pytest.raises(IPVSUnavailable) as e:
        apply(c, NS, kernel=kernel, state_dir=None)
    assert str(e.value).startswith(FAKE_NO_IPVS) and isinstance(e.value, UsageError)
    assert Changes(kernel).mark == {"ipvs": 0, "ipset": 0, "links": 0, "iptables": 0, "sysctl": 0}


def test_a_refused_virtual_server_undoes_what_the_apply_had_done(kernel):
    apply(compile_objs(cluster(scheduler="rr")), NS, create=True, kernel=kernel, state_dir=None)
    kernel.ipvs(NS).schedulers = frozenset({"rr"})  # this "kernel" has no ip_vs_wrr
    before = (kernel.ipvs(NS).dump(), kernel.ipsets(NS).save(), kernel.links(NS).addresses(), kernel.xtables.save(NS))
    # A changed endpoint and a new Service first (added), then the scheduler the kernel refuses.
    objs = cluster(("10.42.2.5", "10.42.1.8"), scheduler="wrr")
    objs += [service("api", "10.43.0.30"), slice_("api", [endpoint("10.42.1.30")])]
    with pytest.raises(IPVSApplyError) as e:
        apply(compile_objs(objs), NS, kernel=kernel, state_dir=None)
    msg = str(e.value)
    assert "ip_vs_wrr is missing" in msg and "were undone, the previous state is back" in msg
    after = (kernel.ipvs(NS).dump(), kernel.ipsets(NS).save(), kernel.links(NS).addresses(), kernel.xtables.save(NS))
    assert after == before
    kernel.ipvs(NS).schedulers = FakeIPVS().schedulers
    apply(compile_objs(objs), NS, kernel=kernel, state_dir=None)  # converges once the kernel can
    assert ("tcp", "10.43.0.30", 80) in {vs.key for vs in kernel.ipvs(NS).table()}


def test_a_refused_glue_undoes_the_ipvs_ipset_and_link_changes():
    kernel = Kernel.fake(refuse=lambda line: "no such target" if "KUBE-LOAD-BALANCER-FW" in line else None)
    apply(compile_objs(cluster(extra=False)), NS, create=True, kernel=kernel, state_dir=None)
    before = (kernel.ipvs(NS).dump(), kernel.ipsets(NS).save(), kernel.links(NS).addresses(), kernel.xtables.save(NS))
    with pytest.raises(IPVSApplyError) as e:
        apply(compile_objs(cluster()), NS, kernel=kernel, state_dir=None)  # the LB's firewall rule is refused
    assert "no such target" in str(e.value) and "the previous state is back" in str(e.value)
    assert (kernel.ipvs(NS).dump(), kernel.ipsets(NS).save(), kernel.links(NS).addresses(),
            kernel.xtables.save(NS)) == before


def test_the_first_apply_undone_leaves_an_empty_namespace():
    kernel = Kernel.fake(refuse=lambda line: "refused" if line.startswith("-A KUBE-MARK-MASQ") else None)
    kernel.netns.create(NS)
    with pytest.raises(IPVSApplyError):
        apply(compile_objs(cluster()), NS, kernel=kernel, state_dir=None)
    assert kernel.ipvs(NS).table() == () and kernel.ipsets(NS).save() == ""
    assert not kernel.links(NS).exists("kube-ipvs0")


class StopsAt(FakeIPSets):
    """ipsets that refuse line N of the next restore (the lines before it done), as `ipset restore` does."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line

    def restore(self, payload: str, exist: bool = True) -> None:
        lines = payload.splitlines()
        if self.line and len(lines) >= self.line:
            n, self.line = self.line, 0
            super().restore("".join(ln + "\n" for ln in lines[:n - 1]), exist)
            raise IPSetError(f"ipset restore refused the payload (line {n}): Hash is full", "full", n)
        super().restore(payload, exist)


def test_a_refused_ipset_line_undoes_the_lines_before_it(kernel):
    apply(compile_objs(cluster(extra=False)), NS, create=True, kernel=kernel, state_dir=None)
    before = (kernel.ipsets(NS).save(), kernel.ipvs(NS).dump(), kernel.links(NS).addresses())
    failing = StopsAt(4)
    failing._sets = kernel.ipsets(NS)._sets  # the same sets, refusing the 4th line of the next payload
    kernel.netns.spaces[NS].objects["ipsets"] = failing
    with pytest.raises(IPVSApplyError, match=r"\(line 4\): Hash is full.*undone"):
        apply(compile_objs(cluster()), NS, kernel=kernel, state_dir=None)
    assert (kernel.ipsets(NS).save(), kernel.ipvs(NS).dump(), kernel.links(NS).addresses()) == before


def test_a_set_with_other_settings_is_rebuilt_and_swapped_in(kernel):
    kernel.netns.create(NS)
    sets = kernel.ipsets(NS)
    sets.restore("create KUBE-CLUSTER-IP hash:ip,port family inet maxelem 10\nadd KUBE-CLUSTER-IP 10.43.0.99,tcp:80\n"
                 f"create {SWAP_PREFIX}deadbeef hash:ip family inet\n")  # a leftover of an apply killed midway
    res = apply(compile_objs(cluster()), NS, kernel=kernel, state_dir=None)
    got = {s.name: s for s in sets.sets()}
    assert got["KUBE-CLUSTER-IP"].option("maxelem") == "65536"
    assert set(got["KUBE-CLUSTER-IP"].members) == {"10.43.0.10,tcp:80", "10.43.0.53,udp:53", "10.43.0.20,tcp:443"}
    assert not any(n.startswith(SWAP_PREFIX) for n in got)  # the old contents and the leftover destroyed
    assert res.sets_replaced == ["KUBE-CLUSTER-IP"] and ("KUBE-CLUSTER-IP", "10.43.0.99,tcp:80") in res.entries_removed
    mark = Changes(kernel)
    apply(compile_objs(cluster()), NS, kernel=kernel, state_dir=None)
    assert mark.since() == {}


def test_a_set_of_another_type_is_refused_before_anything_changes(kernel):
    kernel.netns.create(NS)
    kernel.ipsets(NS).restore("create KUBE-NODE-PORT-TCP hash:ip family inet\n")
    mark = Changes(kernel)
    with pytest.raises(UsageError, match="ipset KUBE-NODE-PORT-TCP exists as hash:ip inet, where kube-proxy's is "
                                         "bitmap:port.*nothing was changed"):
        apply(compile_objs(cluster()), NS, kernel=kernel, state_dir=None)
    assert mark.since() == {}


def test_a_sysctl_changed_behind_its_back_is_set_again(kernel):
    c = compile_objs(cluster())
    apply(c, NS, create=True, kernel=kernel, state_dir=None)
    kernel.netns.set_sysctl(NS, "net.ipv4.vs.conntrack", "0")
    mark = Changes(kernel)
    res = apply(c, NS, kernel=kernel, state_dir=None)
    assert mark.since() == {"sysctl": [("sysctl", NS, "net.ipv4.vs.conntrack", "1")]}
    assert res.payload == "# rulegen: sysctl\nnet.ipv4.vs.conntrack=1\n" and res.lines == 1


def test_the_glue_keeps_its_own_cache_beside_iptables_modes(kernel, tmp_path):
    c = compile_objs(cluster())
    apply(c, NS, create=True, kernel=kernel, state_dir=str(tmp_path))
    assert sorted(p.name for p in (tmp_path / NS).iterdir() if p.name.startswith(("ipvs-", "iptables-"))) == [
        "ipvs-ipv4.gen", "ipvs-ipv4.json"]
    again = apply(c, NS, kernel=kernel, state_dir=str(tmp_path))
    assert again.glue.source == "cache" and again.lines == 0


def test_fake_clients_live_and_die_with_their_namespace():
    kernel = Kernel.fake()
    kernel.netns.create(NS)
    ipvs = kernel.ipvs(NS)
    assert kernel.ipvs(NS) is ipvs and kernel.ipvs(None) is not ipvs
    ipvs.add_virtual_server(VirtualServer("tcp", "10.0.0.1", 80))
    kernel.netns.delete(NS)
    with pytest.raises(UsageError, match="does not exist"):
        kernel.ipvs(NS)
    kernel.netns.create(NS)
    assert kernel.ipvs(NS).table() == ()


# ---------------------------------------------------------------------- the host kernel (root)


@pytest.mark.root
def test_on_a_kernel_without_ip_vs_apply_exits_2_naming_it_and_changes_nothing(cli, tmp_path, monkeypatch):
    if ipvs_missing_reason(None) is None:
        pytest.skip("this kernel has IPVS: the IPVS VM tests cover applying; this one is for kernels without it")
    monkeypatch.setenv("RULEGEN_STATE_DIR", str(tmp_path))
    with namespace_names("rgt-novs") as name:
        gone, there = name(), name()
        r = cli("apply", "--mode", "ipvs", "fixtures/ipvs-scheduler-wrr", "--netns", gone, "--create")
        assert r.exit_code == 2
        assert "the ip_vs module is not loaded" in r.output and "nothing was changed" in r.output
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
        assert not subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(gone)

        subprocess.run(["ip", "netns", "add", there], check=True)

        def state() -> tuple[str, str, str, str]:
            def run(*argv: str) -> str:
                return subprocess.run(["ip", "netns", "exec", there, *argv], capture_output=True, text=True).stdout
            return (run("ip", "-o", "link"), run("ip", "-o", "addr"), run("ipset", "save"), run("iptables-save"))

        before = state()
        r = cli("apply", "--mode", "ipvs", "fixtures/ipvs-scheduler-wrr", "--netns", there)
        assert r.exit_code == 2 and "ip_vs" in r.output
        after = state()
        assert after == before
        assert "kube-ipvs0" not in after[0] and after[2] == "" and "KUBE-" not in after[3]


@pytest.mark.root
def test_on_a_kernel_without_ip_vs_lab_exits_2_naming_it_before_building_anything(cli):
    if ipvs_missing_reason(None) is None:
        pytest.skip("this kernel has IPVS: the IPVS VM runs the lab in IPVS mode; this one is for kernels without it")
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    r = cli("lab", "fixtures/ipvs-scheduler-wrr", "--mode", "ipvs", "--requests", "5")
    assert r.exit_code == 2
    assert "rulegen: error: " in r.output and "the ip_vs module is not loaded" in r.output
    assert "nothing was changed" in r.output and "Traceback" not in r.output
    assert "building" not in r.output  # the lab logs its namespaces before it makes the first one
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("rglab-") <= \
        before.count("rglab-")
