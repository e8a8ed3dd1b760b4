"""ipset records, the `ipset save` parser, error kinds, the fake, and the fake against the real ipset.

The host kernel has ip_set, so the parity test runs here (root, in a
namespace of its own); the fake's answers are also checked by hand, so the
two cannot share one wrong idea.
"""

from __future__ import annotations

import shutil
import subprocess

import ipset_script as S
import pytest
from nshelp import namespace_names

from rulegen.dataplane.ipset import FakeIPSets, IPSet, IPSetEntry, IPSetError, RealIPSets, classify, parse_save, render

SAVED = """\
create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 comment bucketsize 12 initval 0x59b0f63e
add KUBE-CLUSTER-IP 10.96.0.10,udp:53
add KUBE-CLUSTER-IP 10.96.0.1,tcp:443 comment "kubernetes api"
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
add KUBE-NODE-PORT-TCP 30080
create KUBE-COUNTED hash:net family inet6 hashsize 64 maxelem 10 counters bucketsize 12 initval 0x1
add KUBE-COUNTED fd00::/64 packets 3 bytes 180
"""


def test_parse_save_gives_canonical_records():
    sets = parse_save(SAVED)
    assert [s.name for s in sets] == ["KUBE-CLUSTER-IP", "KUBE-NODE-PORT-TCP", "KUBE-COUNTED"]
    cluster = sets[0]
    assert cluster.type == "hash:ip,port"
    # initval (a random hash seed) is dropped; the rest sorted by name; a bare flag has "".
    assert cluster.options == (("bucketsize", "12"), ("comment", ""), ("family", "inet"), ("hashsize", "1024"),
                               ("maxelem", "65536"))
    assert cluster.entries == (IPSetEntry("10.96.0.1,tcp:443", (("comment", "kubernetes api"),)),
                               IPSetEntry("10.96.0.10,udp:53"))
    assert sets[1] == IPSet("KUBE-NODE-PORT-TCP", "bitmap:port", (("range", "0-65535"),), (IPSetEntry("30080"),))
    assert sets[2].entries == (IPSetEntry("fd00::/64", (("bytes", "180"), ("packets", "3"))),)
    # The order the kernel lists members in does not matter.
    shuffled = SAVED.replace("add KUBE-CLUSTER-IP 10.96.0.10,udp:53\n", "") + "add KUBE-CLUSTER-IP 10.96.0.10,udp:53\n"
    assert parse_save(shuffled) == sets


def test_render_round_trips():
    sets = parse_save(SAVED)
    text = render(sets)
    assert 'add KUBE-CLUSTER-IP 10.96.0.1,tcp:443 comment "kubernetes api"\n' in text
    assert "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\n" in text
    assert "comment \"\"" not in text  # a set's comment flag stays a bare word
    assert parse_save(text) == sets


def test_parse_save_refuses_what_it_cannot_read():
    with pytest.raises(IPSetError, match="line 1: member of set 'X' before its create line"):
        parse_save("add X 10.0.0.1\n")
    with pytest.raises(IPSetError, match="line 2: not a create or add line"):
        parse_save("create X hash:ip\nflush X\n")
    with pytest.raises(IPSetError, match="needs a value"):
        parse_save("create X hash:ip family\n")


@pytest.mark.parametrize("stderr, kind, line", [
    ("ipset v7.17: Error in line 3: Set cannot be created: set with the same name already exists\n", "set-exists", 3),
    ("ipset v7.17: Error in line 1: The set with the given name does not exist\n", "no-set", 1),
    ("ipset v7.17: The set with the given name does not exist\n", "no-set", None),
    ("ipset v7.17: Error in line 2: Element cannot be added to the set: it's already added\n", "entry-exists", 2),
    ("ipset v7.17: Error in line 1: Element cannot be deleted from the set: it's not added\n", "no-entry", 1),
    ("ipset v7.17: Error in line 9: Element is out of the range of the set\n", "out-of-range", 9),
    ("ipset v7.17: Error in line 1: The sets cannot be swapped: their type does not match\n", "type-mismatch", 1),
    ("ipset v7.17: Error in line 1: Set cannot be destroyed: it is in use by a kernel component\n", "in-use", 1),
    ("ipset v7.17: Error in line 4: Hash is full, cannot add more elements\n", "full", 4),
    ("ipset v7.17: No command specified: unknown argument bogus\nTry `ipset help' for more information.\n",
     "syntax", None),
    ("ipset v7.17: Error in line 1: Kernel error received: Operation not permitted\n", "other", 1),
])
def test_classify_reads_ipsets_words(stderr, kind, line):
    got_kind, got_line, message = classify(stderr)
    assert (got_kind, got_line) == (kind, line)
    assert not message.startswith(("ipset v", "Error in line"))


def _steps(client):
    return {no: (answer, sets) for no, answer, sets in S.run(client)}


def test_fake_stores_members_in_the_kernels_spelling():
    steps = _steps(FakeIPSets())
    answer, sets = steps[1]
    assert answer == ("ok",)
    by = {s.name: s for s in sets}
    assert by["RG-CLUSTER-IP"].members == ("10.96.0.1,tcp:443", "10.96.0.10,udp:53", "10.96.0.2,tcp:80",
                                           "10.96.0.3,tcp:80")
    assert by["RG-CLUSTER-IP"].entries[2].options == (("comment", "web frontend"),)
    assert by["RG-LB-SRC-CIDR"].members == ("192.0.2.10,tcp:80,198.51.100.9", "192.0.2.10,tcp:80,203.0.113.0/24")
    assert by["RG-IPVS-IPS"].members == ("10.96.0.10", "10.96.0.11")
    assert by["RG-IPVS-IPS"].option("hashsize") == "128"  # 100 rounded up to a power of two
    assert by["RG-6-IPS"].members == ("fd00:96::10",)
    assert by["RG-6-IPS"].options == (("bucketsize", "12"), ("family", "inet6"), ("hashsize", "1024"),
                                      ("maxelem", "65536"))
    assert by["RG-NETS"].entries == (IPSetEntry("10.0.0.0/8", (("bytes", "0"), ("packets", "0"))),)


def test_fake_restore_errors_and_exist():
    steps = _steps(FakeIPSets())
    answers = {no: a for no, (a, _) in steps.items()}
    assert answers[2] == ("error", "entry-exists", 1)
    assert answers[3] == ("ok",)  # -exist
    assert answers[4] == ("error", "set-exists", 1)
    assert answers[5] == ("ok",)  # -exist: hashsize does not count
    assert answers[6] == answers[7] == ("error", "set-exists", 1)
    assert answers[9] == ("error", "no-entry", 1) and answers[10] == ("ok",)
    assert answers[11] == ("error", "no-set", 1)
    assert answers[12] == ("error", "out-of-range", 2)
    assert answers[13] == answers[14] == ("error", "syntax", 1)
    assert answers[16] == ("error", "type-mismatch", 1)
    assert answers[17] == ("error", "full", 4)
    assert answers[20] == ("error", "no-set", 1)
    assert steps[21][1] == []  # destroy without a name: every set


def test_fake_restore_is_not_atomic_like_ipset():
    steps = _steps(FakeIPSets())
    node_ports = {s.name: s for s in steps[8][1]}["RG-NODE-PORT-TCP"]
    assert node_ports.members == ("30080", "30081")  # line 1 stayed, line 3 never ran
    small = {s.name: s for s in steps[12][1]}["RG-SMALL"]  # created on line 1, before line 2 failed
    assert small.members == ()
    swapped = {s.name: s for s in steps[15][1]}
    assert swapped["RG-IPVS-IPS"].members == ("10.96.0.20",) and "RG-IPVS-IPS-NEW" not in swapped


def test_fake_refuses_what_it_does_not_model():
    f = FakeIPSets()
    f.restore("create A hash:ip\ncreate P hash:ip,port\n")
    for payload in ("add A 10.0.0.0/30\n", "add A 10.0.0.1-10.0.0.3\n", "add A 010.0.0.1\n",
                    "add P 10.0.0.1,tcp:80-82\n", "create L list:set\n"):
        with pytest.raises(IPSetError) as e:
            f.restore(payload)
        assert e.value.kind == "unsupported", payload
    assert f.sets() == [IPSet("A", "hash:ip", (("bucketsize", "12"), ("family", "inet"), ("hashsize", "1024"),
                                               ("maxelem", "65536"))),
                        IPSet("P", "hash:ip,port", (("bucketsize", "12"), ("family", "inet"), ("hashsize", "1024"),
                                                    ("maxelem", "65536")))]
    with pytest.raises(IPSetError) as e:
        f.save("NOPE")
    assert e.value.kind == "no-set"


@pytest.mark.root
def test_the_real_ipset_answers_the_script_as_the_fake_does():
    if not shutil.which("ipset"):
        pytest.skip("needs the ipset tool (make test installs it)")
    with namespace_names("rgips") as name:
        ns = name()
        subprocess.run(["ip", "netns", "add", ns], check=True)
        probe = subprocess.run(["ip", "netns", "exec", ns, "ipset", "list", "-n"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"this kernel has no ip_set: {probe.stderr.strip()}")
        real = S.run(RealIPSets(ns))
        want = S.run(FakeIPSets())
        assert len(real) == len(want)
        for got, exp in zip(real, want):
            assert got == exp, f"step {exp[0]}: {S.SCRIPT[exp[0]][0]!r}"
        with pytest.raises(IPSetError) as e:
            RealIPSets(ns).save("NOPE")
        assert e.value.kind == "no-set"
