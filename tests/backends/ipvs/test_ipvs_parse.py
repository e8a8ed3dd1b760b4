"""IPVS mode's parser: rulegen's three texts back into the IR, and what a live node dumps.

Round trips (`parse(render(state)) == state`) run over generated clusters;
the node dumps below are written the way `ipvsadm -Sn` (ipvsadm 1.31) and
`ipset save` (ipset 7) print them: services in hash order, `bucketsize` and
`initval` on hash sets, host networks without `/32`.
"""

from __future__ import annotations

import pytest
from clustergen import cluster, settings_flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ipvs_compile import WEB_EPS, config, service, slice_, state

from rulegen.backends.ipvs import parse, render
from rulegen.backends.ipvs.ir import (
    FLAG_ONEPACKET,
    FLAG_PERSISTENT,
    FLAG_SCHED1,
    FLAG_SCHED2,
    IPVSState,
    RealServer,
    VirtualServer,
    normalised,
)
from rulegen.diagnostics import Place, Report, UsageError
from rulegen.loader import load_objects
from rulegen.pipeline import Timings, compile_inputs


def compile_generated(objs: list, flags: dict, scheduler: str) -> IPVSState:
    report = Report()
    objs = objs + [{**config(scheduler=scheduler), "clusterCIDR": "10.244.0.0/16"}]
    inputs = load_objects([(Place("gen.yaml", i + 1), o) for i, o in enumerate(objs)], report)
    return compile_inputs(inputs, {**flags, "mode": "ipvs"}, report, Timings()).ir


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=cluster(), flags=settings_flags, scheduler=st.sampled_from(["rr", "mh", "sh", "wlc"]))
def test_parse_of_render_is_the_state(objs, flags, scheduler):
    ir = compile_generated(objs, flags, scheduler)
    text = render.render(ir)
    back = parse.parse(text)
    assert back == ir
    assert render.render(back) == text
    files = render.files(ir)
    assert parse.parse_parts(files["ipvsadm.rules"], files["ipset.rules"], files["iptables.rules"]) == ir


def sample_state() -> IPVSState:
    objs = [service("web", ports=(("http", "TCP", 80, 30080),), lb=["192.0.2.40"],
                    loadBalancerSourceRanges=["10.9.0.5/32", "192.0.2.0/24"], sessionAffinity="ClientIP"),
            slice_("web", WEB_EPS), config(scheduler="mh")]
    return state(objs)


def test_combined_form_has_the_three_sections_and_the_files_are_those_sections(tmp_path):
    ir = sample_state()
    text = render.render(ir)
    files = render.files(ir)
    assert list(files) == ["ipvsadm.rules", "ipset.rules", "iptables.rules"]
    assert text == ("# rulegen: ipvsadm\n" + files["ipvsadm.rules"] + "# rulegen: ipset\n" + files["ipset.rules"]
                    + "# rulegen: iptables\n" + files["iptables.rules"])
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    assert parse.read(str(tmp_path)) == ir
    (tmp_path / "all.txt").write_text(text)
    assert parse.read(str(tmp_path / "all.txt")) == ir
    (tmp_path / "ipset.rules").unlink()
    with pytest.raises(UsageError, match="ipset.rules: cannot read"):
        parse.read(str(tmp_path))


# What a node running this state prints (same content, the kernel's order and spelling).
NODE_IPVSADM = """\
-A -t 203.0.113.20:30080 -s mh -p 10800 -b mh-port
-a -t 203.0.113.20:30080 -r 10.42.3.9:8080 -m -w 1
-a -t 203.0.113.20:30080 -r 10.42.1.5:8080 -m -w 1
-a -t 203.0.113.20:30080 -r 10.42.2.7:8080 -m -w 1
-A -t 192.0.2.40:80 -s mh -p 10800 -b mh-port
-a -t 192.0.2.40:80 -r 10.42.2.7:8080 -m -w 1
-a -t 192.0.2.40:80 -r 10.42.1.5:8080 -m -w 1
-a -t 192.0.2.40:80 -r 10.42.3.9:8080 -m -w 1
-A -t 10.43.0.10:80 -s mh -p 10800 -b mh-port
-a -t 10.43.0.10:80 -r 10.42.1.5:8080 -m -w 1
-a -t 10.43.0.10:80 -r 10.42.2.7:8080 -m -w 1
-a -t 10.43.0.10:80 -r 10.42.3.9:8080 -m -w 1
"""


def node_ipset(ir: IPVSState) -> str:
    """`ipset save` of IR's sets: kernel-chosen words on hash sets, entries in reverse (hash) order."""
    out = []
    for s in ir.ipsets:
        if s.type == "bitmap:port":
            out.append(f"create {s.name} bitmap:port range 0-65535")
        else:
            out.append(f"create {s.name} {s.type} family inet hashsize 1024 maxelem 65536 bucketsize 12 "
                       f"initval 0x5c1f2e3d")
        for e in reversed(s.entries):
            if s.name.endswith("SOURCE-CIDR") and e.count("/") == 0:
                e += "/32"  # the restore form; save would print it bare, both must read the same
            out.append(f"add {s.name} {e}")
    return "\n".join(out) + "\n"


def test_a_node_dump_compares_equal_by_meaning():
    ir = sample_state()
    live = parse.parse_parts(NODE_IPVSADM, node_ipset(ir), render.iptables(ir))
    assert live != ir  # other order
    assert normalised(live) == normalised(ir)
    assert live.bound == tuple(reversed(ir.bound))
    # A missing real server, a lost flag or a missing entry is a difference.
    for broken in (NODE_IPVSADM.replace("-a -t 192.0.2.40:80 -r 10.42.1.5:8080 -m -w 1\n", ""),
                   NODE_IPVSADM.replace("-A -t 10.43.0.10:80 -s mh -p 10800 -b mh-port", "-A -t 10.43.0.10:80 -s mh -p 10800"),
                   NODE_IPVSADM.replace("-r 10.42.3.9:8080 -m -w 1", "-r 10.42.3.9:8080 -m -w 0", 1)):
        assert normalised(parse.parse_parts(broken, node_ipset(ir), render.iptables(ir))) != normalised(ir)
    fewer = node_ipset(ir).replace("add KUBE-CLUSTER-IP 10.43.0.10,tcp:80\n", "")
    assert normalised(parse.parse_parts(NODE_IPVSADM, fewer, render.iptables(ir))) != normalised(ir)


def test_iptables_save_spelling_compares_equal_canonically():
    ir = sample_state()
    save = render.iptables(ir).replace("-j MARK --or-mark 0x00004000", "-j MARK --set-xmark 0x4000/0x4000")
    live = parse.parse_parts(render.ipvsadm(ir), render.ipset(ir), "# Generated by iptables-save v1.8.9\n" + save)
    assert normalised(live) != normalised(ir)
    assert normalised(live, canonical=True) == normalised(ir, canonical=True)


def test_ipvsadm_forms_rulegen_never_writes_but_a_node_may_hold():
    text = """\
-A -u [fd00:43::a]:53 -s sh -b sh-fallback,sh-port
-a -u [fd00:43::a]:53 -r [fd00:42::5]:5353 -g -w 3
-a -u [fd00:43::a]:53 -r [fd00:42::6] -i -w 0
--add-service --tcp-service 10.0.0.1:80 --scheduler wrr --persistent
--add-server --tcp-service 10.0.0.1:80 --real-server 10.1.0.1:8080 --masquerading --weight 2
-A -f 7 -s rr
-A -f 8 -6 -s rr
-A -t 10.0.0.2:80 -s lc -b flag-1
-A -t 010.0.0.3:80
-A -t 10.0.0.4:80 -s rr -p 60 -M 255.255.255.0 -o
-A -t [fd00::4]:80 -s rr -p 60 -M 64
-A -t 10.0.0.5:80 -s rr -p 60 -M 255.255.255.255
"""
    got = parse.parse_ipvsadm(text)
    assert got == (
        VirtualServer("udp", "fd00:43::a", 53, "sh", FLAG_SCHED1 | FLAG_SCHED2, 0,
                      (RealServer("fd00:42::5", 5353, 3, "g"), RealServer("fd00:42::6", 53, 0, "i"))),
        VirtualServer("tcp", "10.0.0.1", 80, "wrr", FLAG_PERSISTENT, 300, (RealServer("10.1.0.1", 8080, 2, "m"),)),
        VirtualServer("fwmark", "", 7, "rr"),
        VirtualServer("fwmark", "::", 8, "rr"),
        VirtualServer("tcp", "10.0.0.2", 80, "lc", FLAG_SCHED1),
        VirtualServer("tcp", "10.0.0.3", 80, "wlc"),  # ipvsadm's default scheduler; sloppy IPv4 read as kube-proxy does
        VirtualServer("tcp", "10.0.0.4", 80, "rr", FLAG_PERSISTENT | FLAG_ONEPACKET, 60, netmask=24),
        VirtualServer("tcp", "fd00::4", 80, "rr", FLAG_PERSISTENT, 60, netmask=64),
        VirtualServer("tcp", "10.0.0.5", 80, "rr", FLAG_PERSISTENT, 60),  # the full mask is the default: 0
    )
    st_ = IPVSState(6, got, (), (), parse.parse_xtables("", "x", 6))
    assert parse.parse_ipvsadm(render.ipvsadm(st_)) == got
    assert got[1].reals[0].masquerade and not got[0].reals[0].masquerade


@pytest.mark.parametrize("text, message", [
    ("-A -t 10.0.0.1:80 -s rr --pe sip\n", "line 1: option --pe is not one rulegen models"),
    ("-A -t 10.0.0.1:80 -s rr -p 60 -M 255.0.255.0\n", "line 1: '255.0.255.0' is not a persistence netmask"),
    ("-A -t [fd00::1]:80 -s rr -p 60 -M 129\n", "line 1: '129' is not a persistence netmask"),
    ("-A -t web.example:80 -s rr\n", "not a numeric IP address (dump with ipvsadm -Sn)"),
    ("-A -t 10.0.0.1:http -s rr\n", "not a numeric port"),
    ("-A -t 10.0.0.1 -s rr\n", "has no port"),
    ("\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 1\n", "line 2: real server for a virtual server not defined before it"),
    ("-A -t 10.0.0.1:80 -s rr\n-A -t 10.0.0.1:80 -s rr\n", "line 2: virtual server defined twice"),
    ("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 1\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 1\n",
     "line 3: real server defined twice"),
    ("-A -t 10.0.0.1:80 -s mh -b sh-port\n", "unknown scheduler flag 'sh-port'"),
    ("-C\n", "unknown command -C"),
])
def test_ipvsadm_errors_name_the_line(text, message):
    with pytest.raises(parse.ParseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse.parse_ipvsadm(text, "dump.txt")


def test_ipset_save_form():
    text = """\
create KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x9acec53a
add KUBE-LOAD-BALANCER-SOURCE-CIDR 192.0.2.40,tcp:80,10.9.0.5
add KUBE-LOAD-BALANCER-SOURCE-CIDR 192.0.2.40,tcp:80,10.9.0.6/32
create KUBE-6-X hash:ip,port,net family inet6 hashsize 1024 maxelem 65536
add KUBE-6-X fd00::1,sctp:80,fd00::/32
add KUBE-6-X fd00::1,sctp:80,fd00::7/128
create OTHER hash:ip counters comment -exist
add OTHER 10.0.0.1 packets 0 bytes 0 comment "a b"
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
"""
    sets = parse.parse_ipset(text)
    assert [s.name for s in sets] == ["KUBE-LOAD-BALANCER-SOURCE-CIDR", "KUBE-6-X", "OTHER", "KUBE-NODE-PORT-TCP"]
    cidr, six, other, bitmap = sets
    assert cidr.entries == ("192.0.2.40,tcp:80,10.9.0.5", "192.0.2.40,tcp:80,10.9.0.6")
    assert cidr.options == (("hashsize", "1024"), ("maxelem", "65536")) and cidr.family == "inet"
    assert cidr.comment.startswith("Kubernetes service load balancer ip + port + source cidr")
    assert six.entries == ("fd00::1,sctp:80,fd00::/32", "fd00::1,sctp:80,fd00::7")
    assert other.options == (("counters", ""), ("comment", "")) and other.entries == ("10.0.0.1",)
    assert other.comment == "" and bitmap.family == "" and bitmap.options == (("range", "0-65535"),)


@pytest.mark.parametrize("text, message", [
    ("add KUBE-X 1.2.3.4\n", "line 1: entry for set KUBE-X, which is not created before it"),
    ("create A hash:ip\ncreate A hash:ip\n", "line 2: set A created twice"),
    ("create A hash:ip hashsize\n", "hashsize without a value"),
    ("flush A\n", "unknown command"),
])
def test_ipset_errors_name_the_line(text, message):
    with pytest.raises(parse.ParseError, match=message):
        parse.parse_ipset(text, "sets.txt")


def test_combined_form_errors():
    with pytest.raises(parse.ParseError, match="line 1: text before the first"):
        parse.parse("-A -t 10.0.0.1:80 -s rr\n# rulegen: ipvsadm\n")
    with pytest.raises(parse.ParseError, match="line 2: unknown section"):
        parse.parse("# rulegen: ipvsadm\n# rulegen: nft\n")
    with pytest.raises(parse.ParseError, match="line 2: section given twice"):
        parse.parse("# rulegen: ipset\n# rulegen: ipset\n")
    # Errors inside a section keep the combined file's line numbers.
    text = render.render(sample_state())
    lines = text.split("\n")
    bad = lines.index("# rulegen: iptables") + 3
    lines[bad - 1] = "-Z BOGUS"
    with pytest.raises(parse.ParseError, match=f"all.txt: line {bad}: unknown directive"):
        parse.parse("\n".join(lines), "all.txt")
    lines = text.split("\n")
    bad = lines.index("# rulegen: ipset") + 2
    lines[bad - 1] = "add NOPE 1.2.3.4"
    with pytest.raises(parse.ParseError, match=f"all.txt: line {bad}: entry for set NOPE"):
        parse.parse("\n".join(lines), "all.txt")


def test_family_comes_from_the_sets_then_the_addresses():
    six = state([service("web6", ip="fd00:43::a"), slice_("web6", [{"addresses": ["fd00:42::5"]}], fam=6)],
                ip_family="ipv6")
    assert parse.parse(render.render(six)).family == 6
    assert parse.parse_parts(render.ipvsadm(six), "", "").family == 6
    assert parse.parse_parts("", "", "").family == 4
    assert parse.parse_parts("", "", "", family=6).family == 6
