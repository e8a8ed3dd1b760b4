"""Where the time of loading kube-proxy's nftables table goes: one thing varied at a time.

`python -m rulegen.bench.nftcost --services N` runs, each in a fresh
network namespace and bounded by `--timeout`, on the `nftshape` script:

- `naive`: the whole script, one `nft -f` (one transaction);
- `check-only`: the same with `nft -c` (the kernel does all the per-message
  work of the batch, then aborts instead of committing);
- `naive phasing`: four transactions, as first tried on kube-proxy:
  declarations, rules, elements, base chains;
- `no anonymous maps`: one transaction, every `numgen … map { … }` rule
  replaced by a `dnat to` its first endpoint (the same chains, rules and
  elements otherwise);
- `maps via nft, chunked` / `maps via netlink, chunked`: the anonymous-map
  rules alone, after the declarations, in transactions of `--chunk` maps,
  through nft and over raw netlink (the first and last chunk times show the
  growth with the number of sets already in the table);
- on the loaded table, one command of each kind through `nft -f` (what nft's
  own cache load costs per invocation), and `nft list table`.

It prints one Markdown table (wall and CPU seconds: this process and its
children). docs/nftables-load.md explains the numbers. Needs root.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
import uuid

from ..dataplane.nft import loader as L
from ..dataplane.nft import netlink as nl
from ..dataplane.nft import script as sc
from ..dataplane.nft.client import RealNft
from . import nftshape

_MAP_RULE = re.compile(r"dnat ip addr \. port to numgen random mod \d+ map \{ 0 : ([0-9.]+) \. (\d+)[^}]*\}")


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class _Space:
    def __init__(self) -> None:
        self.name = f"rgbench-cost-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> str:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        return self.name

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def _nft(ns: str, text: str, timeout: float, check_only: bool = False) -> None:
    argv = ["ip", "netns", "exec", ns, "nft"] + (["-c"] if check_only else []) + ["-f", "-"]
    cp = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=timeout)
    if cp.returncode:
        raise RuntimeError(cp.stderr.strip()[:300])


def _time(fn) -> tuple[float, float]:
    c, t = _cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t, _cpu() - c


def experiments(services: int, endpoints: int, chunk: int = 1000, timeout: float = 600.0,
                skip: frozenset[str] = frozenset()) -> list[tuple[str, str, str, str]]:
    """Rows (experiment, wall, CPU, note); a row whose experiment overran says so."""
    text = nftshape.script(services, endpoints)
    t = sc.play(text)
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, fn, note: str = "") -> None:
        if name in skip:
            return
        try:
            w, c = _time(fn)
            rows.append((name, f"{w:.2f}", f"{c:.2f}", note))
        except subprocess.TimeoutExpired:
            rows.append((name, f"> {timeout:g}", "–", "gave up"))
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)

    def in_ns(fn):
        def run():
            with _Space() as ns:
                fn(ns)
        return run

    row("naive", in_ns(lambda ns: _nft(ns, text, timeout)), f"{text.count(chr(10))} commands, one transaction")
    row("check-only", in_ns(lambda ns: _nft(ns, text, timeout, check_only=True)), "nft -c: no commit")
    decl = [ln for ln in text.splitlines() if ln.startswith(("add table", "add chain", "flush chain", "add set",
                                                              "add map", "flush set", "flush map"))]
    base = {name for name, c in t.chains.items() if sc.is_base(c)}
    decl_nobase = [ln for ln in decl if ln.split()[4] not in base or not ln.startswith(("add chain", "flush chain"))]
    rules = [ln for ln in text.splitlines() if ln.startswith("add rule") and ln.split()[4] not in base]
    elements = [ln for ln in text.splitlines() if ln.startswith("add element")]
    last = [ln for ln in decl if ln.split()[4] in base] + \
        [ln for ln in text.splitlines() if ln.startswith("add rule") and ln.split()[4] in base]

    def phased(ns: str) -> None:
        for part in (decl_nobase, rules, elements, last):
            _nft(ns, "\n".join(part) + "\n", timeout)
    row("naive phasing", in_ns(phased), "4 transactions: declarations, rules, elements, base chains")
    no_maps = _MAP_RULE.sub(lambda m: f"dnat to {m.group(1)}:{m.group(2)}", text)
    row("no anonymous maps", in_ns(lambda ns: _nft(ns, no_maps, timeout)),
        f"{len(_MAP_RULE.findall(text))} map rules become dnat to")
    map_rules = [ln for ln in rules if " map { " in ln or " vmap { " in ln]
    affinity = [ln for ln in decl_nobase if ln.startswith("add set") and "timeout" in ln]
    decl_plain = [ln for ln in decl_nobase if ln not in set(affinity)]

    def maps(via: str):
        def run(ns: str) -> None:
            _nft(ns, "\n".join(decl_plain) + "\n", timeout)
            enc = nl.Encoder(t.family, t.name)
            sock = nl.open_socket(ns)
            times = []
            try:
                for i in range(0, len(map_rules), chunk):
                    part = map_rules[i:i + chunk]
                    t0 = time.perf_counter()
                    if via == "nft":
                        _nft(ns, "\n".join(part) + "\n", timeout)
                    else:
                        msgs = []
                        for ln in part:
                            m = enc.command(ln)
                            if m is None:
                                raise RuntimeError(f"no encoding for {ln[:80]}")
                            msgs += m
                        nl.send(sock, msgs)
                    times.append(time.perf_counter() - t0)
            finally:
                sock.close()
            notes.append(f"{len(times)} chunks, first {times[0]:.2f} s, last {times[-1]:.2f} s")
        return run

    for via in ("nft", "netlink"):
        notes: list[str] = []
        row(f"maps via {via}, chunked", in_ns(maps(via)))
        if notes and rows and rows[-1][0] == f"maps via {via}, chunked":
            rows[-1] = rows[-1][:3] + (f"{len(map_rules)} map rules after the declarations; {notes[0]}",)

    # One command of each kind through nft -f on the loaded table: nft's cache load.
    with _Space() as ns:
        nft = RealNft()
        try:
            L.load_first(L.Link(nft, ns), t, L.Options(), None)
        finally:
            nft.close()
        svc = next(c for name, c in t.chains.items() if name.startswith("service-") and c.rules)
        ref = sc.ref(t)
        one = {
            "add chain": f"add chain {ref} zz-probe",
            "flush chain": f"flush chain {ref} zz-probe",
            "add rule": f"add rule {ref} {svc.decl.name} {svc.rules[0].rule}",
            "add element": f"add element {ref} cluster-ips {{ 10.111.0.1 }}",
            "delete element": f"delete element {ref} cluster-ips {{ 10.111.0.1 }}",
        }
        for kind, cmd in one.items():
            row(f"on the loaded table: {kind}", lambda c=cmd: _nft(ns, c + "\n", timeout), "one command, nft -f")
        row("on the loaded table: nft list table",
            lambda: subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", *ref.split()],
                                   capture_output=True, timeout=timeout, check=True))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rulegen.bench.nftcost", description=__doc__.split("\n\n")[0])
    p.add_argument("--services", "-n", type=int, default=1000)
    p.add_argument("--endpoints", "-e", type=int, default=10)
    p.add_argument("--chunk", type=int, default=1000, help="anonymous maps per transaction in the chunked runs")
    p.add_argument("--timeout", type=float, default=600.0, help="give up on one experiment after this long")
    p.add_argument("--skip", default="", help="comma-separated experiment names to leave out")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("rulegen: this benchmark needs root (network namespaces and nft)", file=sys.stderr)
        return 2
    load = os.getloadavg()
    rows = experiments(a.services, a.endpoints, a.chunk, a.timeout, frozenset(filter(None, a.skip.split(","))))
    print(f"{a.services} Services × {a.endpoints} endpoints; load average {load[0]:.1f} → {os.getloadavg()[0]:.1f}")
    print("\n| experiment | wall s | CPU s | note |\n|---|---:|---:|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
