"""`rulegen apply --mode nftables`: the table of a fresh compile, sending only what changed, never losing it.

On the fake nft (what was sent is in `FakeNft.log`) and, marked root, in
real namespaces (prefix `rgt-nfa-`, always deleted):

- a first apply leaves the table a compile replays to; a second sends
  nothing; one changed endpoint sends only its chain's rules and its
  elements, over netlink on the real kernel;
- `nft list table` after an apply parses to the IR of a fresh compile;
- a refused transaction leaves the previous table; a table changed by hand
  is found by the nf_tables generation and repaired;
- the generic half (the namespace lock, the empty-input refusal,
  `--allow-empty`, `--json`) works as in iptables mode.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from nshelp import namespace_names
from rgtest import compile_objects

from rulegen.apply import Kernel, apply
from rulegen.apply import lock as nslock
from rulegen.cli import main
from rulegen.dataplane.nft import netlink as nl
from rulegen.dataplane.nft import script as sc
from rulegen.dataplane.nft.client import run_error
from rulegen.dataplane.nft.parse import parse_listing
from rulegen.dataplane.nft.state import normalise, replay
from rulegen.diagnostics import Report, UsageError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "web-frontend" / "cluster.yaml"
NS = "rgt-nfa-a"
HEAD = "ip kube-proxy"


def _svc(name, cip, port, node_port=None):
    p = {"name": "http", "protocol": "TCP", "port": port}
    if node_port:
        p["nodePort"] = node_port
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"type": "NodePort" if node_port else "ClusterIP", "clusterIP": cip, "clusterIPs": [cip],
                     "ipFamilies": ["IPv4"], "ports": [p]}}


def _slice(svc, ips, port):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc}-x1", "namespace": "shop", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": "http", "protocol": "TCP", "port": port}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node-a"} for ip in ips]}


NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}, "spec": {"podCIDR": "10.60.1.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.10"}]}}


def cluster(cart=("10.60.1.11", "10.60.2.21"), with_search=True):
    objs = [NODE, _svc("cart", "10.112.0.80", 80, node_port=30180), _slice("cart", cart, 8080)]
    if with_search:
        objs += [_svc("search", "10.112.0.43", 443), _slice("search", ("10.60.1.20", "10.60.1.21"), 9443)]
    return objs


def compiled(objs):
    report = Report()
    c = compile_objects(objs, {"mode": "nftables", "cluster_cidr": ["10.60.0.0/16"]}, report=report)
    assert not report.errors, report.lines()
    return c


def want(c):
    """The normal form of the table a fresh compile leaves."""
    return normalise(replay(c.ir))


def live(kernel, ns):
    text = kernel.nft.list_table(ns, "ip", "kube-proxy")
    assert text is not None
    return normalise(parse_listing(text)[0])


def runs(kernel, since=0):
    """The scripts the fake nft ran since log entry SINCE."""
    return [e[3] for e in kernel.nft.log[since:] if e[0] == "run"]


def touched(script: str) -> tuple[set[str], set[str]]:
    """(chains whose rules a script changes, sets or maps whose elements it changes)."""
    chains, sets = set(), set()
    for ln in script.splitlines():
        words = ln.split()
        if words[1] in ("chain", "rule"):
            chains.add(words[4])
        elif words[1] == "element":
            sets.add(words[4])
        else:
            raise AssertionError(f"unexpected command in a change: {ln}")
    return chains, sets


def differing(a, b) -> tuple[set[str], set[str]]:
    """What differs between two compiles' tables: (chains, sets)."""
    x, y = replay(a.ir), replay(b.ir)
    chains = {n for n in set(x.chains) | set(y.chains)
              if n not in x.chains or n not in y.chains or x.chains[n].rules != y.chains[n].rules}
    sets = {n for n in set(x.sets) | set(y.sets)
            if n not in x.sets or n not in y.sets or x.sets[n].elements != y.sets[n].elements}
    return chains, sets


# ---------------------------------------------------------------------- on the fake nft


def test_first_apply_leaves_the_compiled_table_and_a_second_sends_nothing(kernel, tmp_path):
    c = compiled(cluster())
    res = apply(c, NS, create=True, kernel=kernel, state_dir=str(tmp_path))
    assert res.created and res.path == "first" and res.transactions > 1 and res.lines > 0
    assert live(kernel, NS) == want(c)
    n = len(kernel.nft.log)
    again = apply(c, NS, kernel=kernel, state_dir=str(tmp_path))
    assert again.path == "unchanged" and again.source == "cache" and again.lines == 0
    assert kernel.nft.log[n:] == []  # not even a listing: the generation proved the cache
    assert "nothing to change; nothing sent" in again.summary()


def test_without_a_cache_the_table_is_listed_and_still_nothing_is_sent(kernel):
    c = compiled(cluster())
    apply(c, NS, create=True, kernel=kernel, state_dir=None)
    n = len(kernel.nft.log)
    again = apply(c, NS, kernel=kernel, state_dir=None)
    assert again.source == "dump" and again.lines == 0
    assert [e[0] for e in kernel.nft.log[n:]] == ["list"]


def test_one_changed_endpoint_sends_only_its_chain_and_elements(kernel, tmp_path):
    old, new = compiled(cluster()), compiled(cluster(cart=("10.60.1.11", "10.60.2.22")))
    apply(old, NS, create=True, kernel=kernel, state_dir=str(tmp_path))
    n = len(kernel.nft.log)
    res = apply(new, NS, kernel=kernel, state_dir=str(tmp_path))
    sent = runs(kernel, n)
    assert len(sent) == 1 and res.transactions == 1 and res.source == "cache"
    chains, sets = touched(sent[0])
    assert (chains, sets) == differing(old, new)
    assert len(chains) == 1 and next(iter(chains)).startswith("service-") and "-shop/cart/" in next(iter(chains))
    assert res.elements_added == res.elements_removed == 1  # the hairpin pair of the replaced pod
    assert "10.60.2.21" not in sent[0].split("delete element")[0]  # the old pod only in the deletion
    assert live(kernel, NS) == want(new)


def test_a_removed_service_deletes_its_chains_after_what_pointed_at_them(kernel, tmp_path):
    old, new = compiled(cluster()), compiled(cluster(with_search=False))
    apply(old, NS, create=True, kernel=kernel, state_dir=str(tmp_path))
    res = apply(new, NS, kernel=kernel, state_dir=str(tmp_path))
    assert res.removed and all(kind == "chain" for kind, _ in res.removed)
    assert live(kernel, NS) == want(new)


def test_a_refused_transaction_leaves_the_previous_table(kernel, tmp_path, monkeypatch):
    old, new = compiled(cluster()), compiled(cluster(cart=("10.60.1.11", "10.60.2.22")))
    apply(old, NS, create=True, kernel=kernel, state_dir=str(tmp_path))
    before = live(kernel, NS)
    real_run = kernel.nft.run

    def refusing(name, script, check=False):
        if "delete element" in script:  # the kernel refuses the change's transaction, say for want of memory
            raise run_error(script, "/dev/stdin:1:1-9: Error: Could not process rule: Cannot allocate memory\n")
        return real_run(name, script, check)

    monkeypatch.setattr(kernel.nft, "run", refusing)
    with pytest.raises(UsageError) as e:
        apply(new, NS, kernel=kernel, state_dir=str(tmp_path))
    assert "previous state is left in place" in str(e.value) and "Cannot allocate memory" in str(e.value)
    assert live(kernel, NS) == before
    monkeypatch.setattr(kernel.nft, "run", real_run)
    res = apply(new, NS, kernel=kernel, state_dir=str(tmp_path))
    assert res.source == "cache" and res.path == "change"  # nothing had moved: the cache still held
    assert live(kernel, NS) == want(new)


def test_a_table_changed_by_hand_is_found_by_the_generation_and_repaired(kernel, tmp_path):
    c = compiled(cluster())
    apply(c, NS, create=True, kernel=kernel, state_dir=str(tmp_path))
    kernel.nft.run(NS, f"add element {HEAD} cluster-ips {{ 10.112.9.9 }}\n")
    res = apply(c, NS, kernel=kernel, state_dir=str(tmp_path))
    assert res.source == "dump" and res.path == "change" and res.elements_removed == 1 and res.lines == 1
    assert live(kernel, NS) == want(c)
    again = apply(c, NS, kernel=kernel, state_dir=str(tmp_path))
    assert again.source == "cache" and again.lines == 0


def test_a_state_file_of_another_namespace_identity_is_not_trusted(kernel, tmp_path):
    c = compiled(cluster())
    apply(c, NS, create=True, kernel=kernel, state_dir=str(tmp_path))
    kernel.netns.delete(NS)
    kernel.netns.create(NS)  # same name, a new namespace: no table, whatever the cache says
    res = apply(c, NS, kernel=kernel, state_dir=str(tmp_path))
    assert res.path == "first" and live(kernel, NS) == want(c)


# ---------------------------------------------------------------------- the command, on the fakes


@pytest.fixture
def cli_fake(monkeypatch, tmp_path):
    kernel = Kernel.fake()
    monkeypatch.setattr(Kernel, "real", staticmethod(lambda backend="auto": kernel))
    monkeypatch.setenv("RULEGEN_STATE_DIR", str(tmp_path / "state"))
    return kernel


def _cli(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def test_apply_json_counts(cli_fake):
    r = _cli("apply", str(EXAMPLE), "--netns", NS, "--create", "--mode", "nftables", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    st = cli_fake.nft.tables(NS)[("ip", "kube-proxy")]
    assert out["mode"] == "nftables" and out["created"] and out["nftables"]["path"] == "first"
    assert out["objects"]["added"] == len(st.chains) + len(st.sets)
    assert out["nftables"]["elements"]["added"] == sum(len(s.elements) for s in st.sets.values()) > 0
    assert out["nftables"]["transactions"] == sum(1 for e in cli_fake.nft.log if e[0] == "run")
    assert out["lines"] == sum(len(e[3].splitlines()) for e in cli_fake.nft.log if e[0] == "run")
    r = _cli("apply", str(EXAMPLE), "--netns", NS, "--mode", "nftables", "--json")
    out = json.loads(r.stdout)
    assert out["lines"] == 0 and out["nftables"]["path"] == "unchanged" and out["live_state_from"] == "cache"


def test_apply_refuses_an_empty_input_and_keeps_the_table(cli_fake):
    assert _cli("apply", str(EXAMPLE), "--netns", NS, "--create", "--mode", "nftables").exit_code == 0
    before, sent = live(cli_fake, NS), len(cli_fake.nft.log)
    r = _cli("apply", "-", "--netns", NS, "--mode", "nftables", input="")
    assert r.exit_code == 2 and "(use --allow-empty" in r.stderr and "Traceback" not in r.output
    assert live(cli_fake, NS) == before and not runs(cli_fake, sent)
    r = _cli("apply", "-", "--netns", NS, "--mode", "nftables", "--allow-empty", input="")
    assert r.exit_code == 0, r.output
    assert "every Service rule is removed (--allow-empty)" in r.stderr
    chains = cli_fake.nft.tables(NS)[("ip", "kube-proxy")].chains
    assert "services" in chains and not any("/" in n for n in chains)  # per-Service chains are named ns/name/...


_HOLDER = textwrap.dedent("""
    import sys
    from rulegen.apply import lock as nslock
    with nslock.namespace_lock(sys.argv[2], sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()
""")


def test_a_second_apply_at_once_gives_up_and_changes_nothing(kernel, tmp_path):
    locks = str(tmp_path / "locks")
    c = compiled(cluster())
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, locks, NS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline() == "held\n"
        with pytest.raises(nslock.LockError) as e:
            apply(c, NS, create=True, kernel=kernel, state_dir=None, lock_dir=locks, lock_timeout=0.2)
        assert f"pid {p.pid}" in str(e.value) and "nothing was changed" in str(e.value)
        assert not kernel.netns.exists(NS) and not kernel.nft.log
    finally:
        p.stdin.close()
        assert p.wait(timeout=30) == 0
    assert apply(c, NS, create=True, kernel=kernel, state_dir=None, lock_dir=locks, lock_timeout=0.2).lines > 0


# ---------------------------------------------------------------------- real namespaces


@pytest.fixture
def real():
    if not shutil.which("nft"):
        pytest.skip("needs nft (make test installs nftables)")
    k = Kernel.real()
    with namespace_names("rgt-nfa") as make:
        yield k, make
    k.nft.close()


@pytest.mark.root
def test_real_apply_twice_sends_nothing_and_lists_as_the_compile(real, tmp_path):
    kernel, make = real
    ns = make()
    c = compiled(cluster())
    res = apply(c, ns, create=True, kernel=kernel, state_dir=str(tmp_path), lock_dir=None)
    assert res.path == "first" and res.via == "both"
    assert live(kernel, ns) == want(c)
    gen = kernel.nft.generation(ns)
    again = apply(c, ns, kernel=kernel, state_dir=str(tmp_path), lock_dir=None)
    assert again.source == "cache" and again.lines == 0 and kernel.nft.generation(ns) == gen


@pytest.mark.root
def test_real_one_changed_endpoint_sends_its_objects_over_netlink(real, tmp_path, monkeypatch):
    kernel, make = real
    ns = make()
    old, new = compiled(cluster()), compiled(cluster(cart=("10.60.1.11", "10.60.2.22")))
    apply(old, ns, create=True, kernel=kernel, state_dir=str(tmp_path), lock_dir=None)
    sent: list[list] = []
    real_send = kernel.nft.send
    monkeypatch.setattr(kernel.nft, "send", lambda name, msgs, gen=None: (sent.append(msgs),
                                                                            real_send(name, msgs, gen))[1])
    monkeypatch.setattr(kernel.nft, "run", lambda *a, **k: pytest.fail("a change went through nft -f"))
    gen = kernel.nft.generation(ns)
    res = apply(new, ns, kernel=kernel, state_dir=str(tmp_path), lock_dir=None)
    assert res.via == "netlink" and res.source == "cache" and len(sent) == 1
    assert kernel.nft.generation(ns) == gen + 1  # one commit
    kinds = {m.mtype for m in sent[0]}
    assert kinds <= {nl.NFT_MSG_DELRULE, nl.NFT_MSG_NEWRULE, nl.NFT_MSG_NEWSET, nl.NFT_MSG_NEWSETELEM,
                     nl.NFT_MSG_DELSETELEM}
    chains, sets = differing(old, new)
    assert touched("\n".join(sc.commands(HEAD, sc.diff(sc.view(replay(old.ir)), sc.view(replay(new.ir)),
                                                        replay(new.ir))))) == (chains, sets)
    assert live(kernel, ns) == want(new)


@pytest.mark.root
def test_real_refused_transaction_leaves_the_previous_table(real, tmp_path, monkeypatch):
    kernel, make = real
    ns = make()
    old, new = compiled(cluster()), compiled(cluster(cart=("10.60.1.11", "10.60.2.22")))
    apply(old, ns, create=True, kernel=kernel, state_dir=str(tmp_path), lock_dir=None)
    before = kernel.nft.list_table(ns, "ip", "kube-proxy")
    enc = nl.Encoder("ip", "kube-proxy")
    enc.learn_sets(replay(old.ir).sets.values())
    bad = enc.command(f"add element {HEAD} service-ips {{ 10.112.9.9 . tcp . 80 : goto no-such-chain }}")
    assert bad is not None
    real_send = kernel.nft.send
    # the change's batch ends in an element the kernel refuses: nothing of the batch may land
    monkeypatch.setattr(kernel.nft, "send", lambda name, msgs, gen=None: real_send(name, msgs + bad, gen))
    with pytest.raises(UsageError) as e:
        apply(new, ns, kernel=kernel, state_dir=str(tmp_path), lock_dir=None)
    assert "previous state is left in place" in str(e.value)
    assert kernel.nft.list_table(ns, "ip", "kube-proxy") == before
    monkeypatch.setattr(kernel.nft, "send", real_send)
    res = apply(new, ns, kernel=kernel, state_dir=str(tmp_path), lock_dir=None)
    assert res.source == "cache" and live(kernel, ns) == want(new)


@pytest.mark.root
def test_real_table_changed_by_hand_is_repaired(real, tmp_path):
    kernel, make = real
    ns = make()
    c = compiled(cluster())
    apply(c, ns, create=True, kernel=kernel, state_dir=str(tmp_path), lock_dir=None)
    svc = next(n for n in replay(c.ir).chains if n.startswith("service-") and "-shop/cart/" in n)
    subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "chain", "ip", "kube-proxy", svc], check=True)
    res = apply(c, ns, kernel=kernel, state_dir=str(tmp_path), lock_dir=None)
    assert res.source == "dump" and ("chain", svc) in res.changed
    assert live(kernel, ns) == want(c)
    again = apply(c, ns, kernel=kernel, state_dir=str(tmp_path), lock_dir=None)
    assert again.source == "cache" and again.lines == 0


@pytest.mark.root
@pytest.mark.parametrize("case", ["ipv6-basic", "lb-source-ranges", "session-affinity"])
def test_real_fixture_tables_load_and_list_as_the_compile(real, tmp_path, case):
    from rulegen.pipeline import compile_files
    from rulegen.flags import SETTING_KEYS

    folder = ROOT / "fixtures" / case
    if not folder.is_dir():
        pytest.skip(f"no fixture {case}")
    flags = {k: None for k in SETTING_KEYS}
    args = (folder / "args").read_text().split() if (folder / "args").exists() else []
    if args[:2] == ["--ip-family", "ipv6"]:
        flags["ip_family"] = "ipv6"
    flags["mode"] = "nftables"
    c = compile_files(sorted(str(p) for p in folder.glob("*.yaml") if p.name != "trace.yaml"), flags)
    kernel, make = real
    ns = make()
    res = apply(c, ns, create=True, kernel=kernel, state_dir=str(tmp_path), lock_dir=None)
    assert res.path == "first"
    text = kernel.nft.list_table(ns, c.ir.family, c.ir.table)
    assert text is not None and normalise(parse_listing(text)[0]) == want(c)
    assert apply(c, ns, kernel=kernel, state_dir=str(tmp_path), lock_dir=None).lines == 0
