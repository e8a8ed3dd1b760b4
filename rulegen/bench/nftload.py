"""How fast can kube-proxy's nftables table be loaded? Naive `nft -f` against rulegen's loader.

For each cluster size (N Services × E endpoints; the script is rulegen's own
nftables compile of the `rulegen bench gen` cluster with `--source compile`,
what `make bench` runs at 100 / 1k / 5k / 10k, or the kube-proxy-shaped
stand-in of `nftshape` with `--source shape`), each run, in fresh network
namespaces of its own:

1. **naive**: the whole script as one `nft -f` (one transaction), what a
   kube-proxy full sync sends; bounded by `--naive-timeout`;
2. **rulegen first apply** (`dataplane.nft.sync`, the applier's own path): phased, bounded
   transactions, raw netlink for kube-proxy's anonymous-map rules; and,
   with `--nft-only`, the same phasing through `nft -f` alone;
3. the two namespaces' tables are compared (`nft list table`, normalised):
   the loader must leave exactly the naive state;
4. **one endpoint change** (a Service's pod replaced), end to end from the
   new script: rulegen's difference over netlink, the same through
   `nft -f`, and the bare `nft -f` of that difference without rulegen's
   own work (what a partial sync costs through nft today).

Times are wall-clock and CPU (this process and its children, which is
where nft's and the kernel's work is counted); figures are the median of
`--repeat` runs, with the load average before and after, since other work
on the machine stretches wall-clock times. Needs root.

`python -m rulegen.bench.nftload --services N --endpoints E` (or `rulegen
bench nftables ...`; `--sizes N,M,...` for several sizes and a summary
table) prints the table; `run()` returns it with the raw figures for tests
and other tools. Budgets are judged at 10k Services only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from ..apply.kernel import Kernel
from ..dataplane.nft import loader as L
from ..dataplane.nft import script as sc
from ..dataplane.nft import sync
from ..dataplane.nft.parse import parse_listing
from ..dataplane.nft.state import normalise
from ..diagnostics import UsageError
from . import gen, nftshape
from .incremental import CHANGED_IPS, endpoint_to_change

DEFAULT_SERVICES = 1000
DEFAULT_ENDPOINTS = 10
DEFAULT_REPEAT = 3
DEFAULT_CHANGES = 5
DEFAULT_NAIVE_TIMEOUT = 900.0
SOURCES = ("compile", "shape")  # rulegen's compile of a `bench gen` cluster, or nftshape's stand-in script


def compiled_scripts(services: int, endpoints: int, seed: int, changes: int) -> tuple[str, list[str]]:
    """rulegen's nftables compile of the `rulegen bench gen` cluster (the compile benchmark's input), and of
    CHANGES versions of it with one endpoint moved to another address each (the same endpoint each time)."""
    from ..pipeline import compile_files

    objs = gen.generate(services, endpoints, seed)
    with tempfile.TemporaryDirectory(prefix="rgbench-nft-src-") as wd:
        path = os.path.join(wd, "cluster.json")

        def compiled() -> str:
            with open(path, "w") as f:
                gen.write(objs, "json", f)
            c = compile_files([path], {"mode": "nftables"})
            if c.report.errors:
                raise RuntimeError(f"the generated cluster does not compile: {c.report.errors[0]}")
            return c.text

        text = compiled()
        moved = []
        if changes:
            ep, _ = endpoint_to_change(objs)
            for k in range(changes):
                ep["addresses"] = [CHANGED_IPS[k % len(CHANGED_IPS)]]
                moved.append(compiled())
    return text, moved


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    @property
    def med(self) -> tuple[float, float] | None:
        if not self.wall:
            return None
        return statistics.median(self.wall), statistics.median(self.cpu)


@dataclass
class Result:
    services: int
    endpoints: int
    commands: int
    runs: int = 0
    naive: Timing = field(default_factory=Timing)
    naive_timeouts: int = 0
    first: Timing = field(default_factory=Timing)
    first_nft: Timing = field(default_factory=Timing)
    change_netlink: Timing = field(default_factory=Timing)
    change_nft: Timing = field(default_factory=Timing)
    change_bare: Timing = field(default_factory=Timing)
    chunks: int = 0
    phases: dict[str, float] = field(default_factory=dict)  # phase → seconds, last run
    state_equal: list[bool] = field(default_factory=list)
    change_equal: list[bool] = field(default_factory=list)
    load: list[tuple[float, float, float]] = field(default_factory=list)
    naive_timeout: float = DEFAULT_NAIVE_TIMEOUT
    source: str = "shape"


class _Namespaces:
    """Network namespaces this benchmark made; all deleted on exit, whatever happens."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def new(self) -> str:
        name = f"rgbench-nft-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.names.append(name)
        return name

    def drop(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        if name in self.names:
            self.names.remove(name)

    def __enter__(self) -> "_Namespaces":
        return self

    def __exit__(self, *exc) -> None:
        for n in list(self.names):
            self.drop(n)


def _listing(ns: str, ref: str):
    """Our table of NS in the normal form (objects sorted, rule order kept), for comparing two loads."""
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", *ref.split()],
                         capture_output=True, text=True, timeout=1800).stdout
    return normalise(parse_listing(out)[0]) if out else None


def _timed(fn) -> tuple[float, float]:
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, _cpu() - c0


class _Applier:
    """rulegen's nftables apply (`dataplane.nft.sync`) on the real kernel, its cache in a folder of its own."""

    def __init__(self) -> None:
        self.kernel = Kernel.real()
        self.dir = tempfile.mkdtemp(prefix="rgbench-nft-state-")

    def apply(self, ns: str, text: str, opts: L.Options) -> sync.NftApplyResult:
        """End to end from script TEXT: played into the table state, compared, sent."""
        st = sc.play(text)
        return sync.sync(st, ns, self.kernel, mode="nftables", family=6 if st.family == "ip6" else 4,
                         state_dir=self.dir, opts=opts)

    def nft(self, ns: str, text: str) -> None:
        self.kernel.nft.run(ns, text)

    def close(self) -> None:
        self.kernel.nft.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _naive(ns: str, text: str, timeout: float) -> None:
    cp = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, capture_output=True, text=True,
                        timeout=timeout)
    if cp.returncode != 0:
        raise UsageError(f"the naive nft -f failed: {cp.stderr.strip()}")


def run(services: int, endpoints: int, repeat: int = DEFAULT_REPEAT, *, seed: int = 1, layout: str = "v1.36",
        naive_timeout: float = DEFAULT_NAIVE_TIMEOUT, changes: int = DEFAULT_CHANGES, nft_only: bool = False,
        compare: str = "first", opts: L.Options | None = None, progress=None, source: str = "shape") -> Result:
    """Measure one size; COMPARE is "first" (compare states on the first run), "all" or "none".

    SOURCE "compile" loads rulegen's own compile of the `bench gen` cluster of that size (LAYOUT and the
    nftshape mix do not apply), "shape" nftshape's kube-proxy-shaped stand-in."""
    if os.geteuid() != 0:
        raise UsageError("the nftables load benchmark needs root (network namespaces and nft)")
    say = progress or (lambda msg: None)
    opts = opts or L.Options()
    if source == "compile":
        say(f"compiling the {services} x {endpoints} cluster and {changes} changed versions")
        text, moved = compiled_scripts(services, endpoints, seed, changes)
    elif source == "shape":
        text = nftshape.script(services, endpoints, seed=seed, layout=layout)
        moved = [nftshape.script(services, endpoints, seed=seed, layout=layout, moved=k)
                 for k in range(changes)] if changes else []
    else:
        raise UsageError(f"unknown source {source!r}: one of {', '.join(SOURCES)}")
    res = Result(services, endpoints, text.count("\n"), naive_timeout=naive_timeout, source=source)
    ref = "ip kube-proxy"
    ap = _Applier()
    try:
        with _Namespaces() as spaces:
            for i in range(repeat):
                load0 = os.getloadavg()
                check = compare == "all" or (compare == "first" and i == 0)
                ns_naive = spaces.new()
                say(f"run {i + 1}: naive nft -f of {res.commands} commands")
                try:
                    w, c = _timed(lambda: _naive(ns_naive, text, naive_timeout))
                    res.naive.add(w, c)
                except subprocess.TimeoutExpired:
                    res.naive_timeouts += 1
                    check = False
                if not check:
                    spaces.drop(ns_naive)
                ns = spaces.new()
                say(f"run {i + 1}: rulegen first apply")
                got: list[sync.NftApplyResult] = []
                w, c = _timed(lambda: got.append(ap.apply(ns, text, opts)))
                if got[0].path != "first":
                    raise RuntimeError(f"a first apply took the {got[0].path!r} path")
                res.first.add(w, c)
                res.chunks = got[0].transactions
                res.phases = {}
                for name, secs in got[0].phases:
                    key = name.split(" (")[0] + " / " + name.split("(")[1].split(",")[0]
                    res.phases[key] = res.phases.get(key, 0.0) + secs
                if check:
                    res.state_equal.append(_listing(ns_naive, ref) == _listing(ns, ref))
                    spaces.drop(ns_naive)
                if nft_only:
                    ns2 = spaces.new()
                    say(f"run {i + 1}: rulegen first apply, nft only")
                    w, c = _timed(lambda: ap.apply(ns2, text, L.Options(netlink=False)))
                    res.first_nft.add(w, c)
                    spaces.drop(ns2)
                if changes:
                    say(f"run {i + 1}: {changes} endpoint changes each way")
                    _changes(res, ap, ns, text, moved, opts, check)
                spaces.drop(ns)
                res.runs += 1
                res.load.append(load0 + os.getloadavg())  # type: ignore[arg-type]
    finally:
        ap.close()
    return res


def _changes(res: Result, ap: _Applier, ns: str, text: str, moved: list[str], opts: L.Options, check: bool) -> None:
    """Endpoint changes one at a time (there and back): over netlink, through nft, then bare nft -f."""

    def step(o: L.Options, new: str, timing: Timing | None, via: str) -> None:
        got: list[sync.NftApplyResult] = []
        w, c = _timed(lambda: got.append(ap.apply(ns, new, o)))
        r = got[0]
        if r.path != "change" or r.source != "cache" or r.via != via:
            raise RuntimeError(f"an endpoint change took the {r.path!r} path from {r.source!r} via {r.via!r}, "
                               f"not a difference against the cache via {via}")
        if timing is not None:
            timing.add(w, c)

    over_netlink = dataclasses.replace(opts, netlink=True)
    through_nft = dataclasses.replace(opts, netlink=False)
    for o, timing, via in ((over_netlink, res.change_netlink, "netlink"), (through_nft, res.change_nft, "nft")):
        for m in moved:
            step(o, m, timing, via)
            step(o, text, timing, via)
    if check:
        # After a change the table must be what a fresh load of the changed script leaves.
        step(over_netlink, moved[0], None, "netlink")
        with _Namespaces() as spaces:
            ref_ns = spaces.new()
            ap.nft(ref_ns, moved[0])
            res.change_equal.append(_listing(ref_ns, "ip kube-proxy") == _listing(ns, "ip kube-proxy"))
        step(over_netlink, text, None, "netlink")
    # The same differences through a bare nft -f: no parsing or diffing of ours.
    base = sc.play(text)
    for m in moved:
        st = sc.play(m)
        for a, b in ((base, st), (st, base)):
            cmds = sc.commands(sc.ref(b), sc.diff(sc.view(a), sc.view(b), b))
            w, c = _timed(lambda: ap.nft(ns, "\n".join(cmds) + "\n"))
            res.change_bare.add(w, c)


def _fmt(t: tuple[float, float] | None) -> tuple[str, str]:
    if t is None:
        return "–", "–"
    return f"{t[0]:.3f}" if t[0] < 10 else f"{t[0]:.1f}", f"{t[1]:.3f}" if t[1] < 10 else f"{t[1]:.1f}"


def _pct(a: tuple[float, float] | None, b: tuple[float, float] | None) -> str:
    if a is None or b is None or not b[0] or not b[1]:
        return "–"
    return f"{100 * a[0] / b[0]:.1f}% / {100 * a[1] / b[1]:.1f}%"


# The budgets at 10k × 10, each against the naive load of the same runs.
BUDGET_SERVICES = 10000  # smaller sizes are reported beside their naive figures, not judged
FIRST_OF_NAIVE = 0.15  # first apply into an empty namespace, as a share of the naive single `nft -f`
CHANGE_SECONDS = 1.0  # one endpoint change end to end, over netlink and through `nft -f`


def budgets(res: Result) -> list[tuple[str, str, str, bool]]:
    """(budget, measured, limit, met) for each budget the result has figures for (none below 10k Services)."""
    out: list[tuple[str, str, str, bool]] = []
    if res.services < BUDGET_SERVICES:
        return out
    naive, first = res.naive.med, res.first.med
    if first is not None:
        if naive is None:  # every naive run overran its timeout: the share is below first / timeout
            share = first[0] / res.naive_timeout
            out.append(("first apply, of the naive load (wall)", f"< {100 * share:.1f}%",
                        f"≤ {100 * FIRST_OF_NAIVE:.0f}%", share <= FIRST_OF_NAIVE))
        else:
            share = first[0] / naive[0]
            per_run = ", ".join(f"{100 * f / n:.1f}%" for f, n in zip(res.first.wall, res.naive.wall))
            out.append((f"first apply, of the naive load (wall; per run {per_run})", f"{100 * share:.1f}%",
                        f"≤ {100 * FIRST_OF_NAIVE:.0f}%", share <= FIRST_OF_NAIVE))
    for label, t in (("one endpoint change over netlink", res.change_netlink),
                     ("one endpoint change through nft -f", res.change_nft)):
        if t.med is not None:
            out.append((f"{label} (wall, median; max {max(t.wall):.3f} s)", f"{t.med[0]:.3f} s",
                        f"≤ {CHANGE_SECONDS:g} s", t.med[0] <= CHANGE_SECONDS))
    return out


_SOURCE_NAMES = {"compile": "rulegen's nftables compile of the `rulegen bench gen` cluster",
                 "shape": "nftshape's kube-proxy-shaped stand-in script"}


def summary(results: list[Result]) -> str:
    """One row per size: each figure (wall / CPU seconds, medians) beside the naive load of the same runs."""
    lines = [
        "| Services × endpoints | commands | runs | naive `nft -f` | rulegen first apply | of naive (wall / CPU) "
        "| change over netlink | change through `nft -f` | bare `nft -f` of the change | same state | load average |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        def pair(t: Timing) -> str:
            w, c = _fmt(t.med)
            return "–" if t.med is None else f"{w} / {c}"
        naive = pair(r.naive) if r.naive.med or not r.naive_timeouts else f"> {r.naive_timeout:g}"
        same = ("yes" if all(r.state_equal + r.change_equal) else "NO") if r.state_equal else "not compared"
        loads = [x for row in r.load for x in (row[0], row[3])]
        load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else "–"
        lines.append(f"| {r.services:,} × {r.endpoints} | {r.commands:,} | {r.runs} | {naive} | {pair(r.first)} "
                     f"| {_pct(r.first.med, r.naive.med)} | {pair(r.change_netlink)} | {pair(r.change_nft)} "
                     f"| {pair(r.change_bare)} | {same} | {load} |")
    return "\n".join(lines) + "\n"


def markdown(res: Result) -> str:
    """The result as a Markdown table with its context (machine, versions, load)."""
    nft_v = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    loads = ", ".join(f"{a:.1f}→{d:.1f}" for a, _, _, d, _, _ in res.load) if res.load else "–"
    naive = res.naive.med
    lines = [
        f"nftables load of a kube-proxy-shaped table: {res.services} Services × {res.endpoints} endpoints "
        f"({res.commands} commands, {_SOURCE_NAMES[res.source]}), median of {res.runs} run(s)",
        f"kernel {platform.release()}, {nft_v}, {os.cpu_count()} CPUs, load average (1 min) per run {loads}",
        "",
        "| measure | wall s | CPU s | of naive (wall / CPU) |",
        "|---|---:|---:|---:|",
    ]
    if res.naive_timeouts and naive is None:
        lines.append(f"| naive: the whole script as one `nft -f` | > {res.naive_timeout:g} | – | 100% |")
    else:
        w, c = _fmt(naive)
        extra = f" ({res.naive_timeouts} run(s) over {res.naive_timeout:g} s)" if res.naive_timeouts else ""
        lines.append(f"| naive: the whole script as one `nft -f`{extra} | {w} | {c} | 100% |")
    w, c = _fmt(res.first.med)
    lines.append(f"| rulegen first apply ({res.chunks} transactions, netlink for anonymous maps) | {w} | {c} | "
                 f"{_pct(res.first.med, naive)} |")
    if res.first_nft.wall:
        w, c = _fmt(res.first_nft.med)
        lines.append(f"| rulegen first apply, nft -f only | {w} | {c} | {_pct(res.first_nft.med, naive)} |")
    for label, t in (("one endpoint change, rulegen over netlink (end to end)", res.change_netlink),
                     ("one endpoint change, rulegen through nft -f (end to end)", res.change_nft),
                     ("the same change as a bare nft -f of the difference", res.change_bare)):
        if t.wall:
            w, c = _fmt(t.med)
            lines.append(f"| {label} | {w} | {c} | |")
    eq = "yes" if res.state_equal and all(res.state_equal) else "NO" if res.state_equal else "not compared"
    lines.append(f"| state after rulegen's first apply = state after the naive load | {eq} | | |")
    if res.change_equal:
        lines.append(f"| state after the changes = a fresh load of the last script | "
                     f"{'yes' if all(res.change_equal) else 'NO'} | | |")
    b = budgets(res)
    if b:
        lines += ["", "| budget | measured | limit | met |", "|---|---:|---:|---|"]
        lines += [f"| {name} | {got} | {limit} | {'yes' if ok else 'NO'} |" for name, got, limit, ok in b]
    if res.phases:
        lines += ["", "Last first apply, seconds per phase: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in res.phases.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "python -m rulegen.bench.nftload") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--services", "-n", type=int, default=DEFAULT_SERVICES)
    p.add_argument("--sizes", default="", help="several Service counts, comma-separated (instead of --services); "
                   "a summary table across them comes first")
    p.add_argument("--source", choices=SOURCES, default="shape",
                   help="compile: rulegen's nftables compile of the `rulegen bench gen` cluster (what `make bench` "
                   "loads); shape: nftshape's stand-in script")
    p.add_argument("--endpoints", "-e", type=int, default=DEFAULT_ENDPOINTS)
    p.add_argument("--repeat", "-r", type=int, default=DEFAULT_REPEAT, help="runs; figures are medians")
    p.add_argument("--changes", type=int, default=DEFAULT_CHANGES, help="endpoint changes per run and variant")
    p.add_argument("--naive-timeout", type=float, default=DEFAULT_NAIVE_TIMEOUT,
                   help="give up on the naive load after this many seconds")
    p.add_argument("--nft-only", action="store_true", help="also time the phased load through nft -f alone")
    p.add_argument("--layout", choices=("v1.36", "endpoint-chains"), default="v1.36")
    p.add_argument("--chunk-maps", type=int, default=L.Options().chunk_maps,
                   help="anonymous maps per transaction")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("-o", "--output", default="", help="also write the Markdown table here")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--check-budget", action="store_true",
                   help="exit 1 when a budget is missed (first apply share of the naive load, endpoint changes)")
    a = p.parse_args(argv)
    try:
        sizes = [int(x) for x in a.sizes.split(",") if x.strip()] if a.sizes else [a.services]
    except ValueError:
        p.error(f"--sizes {a.sizes!r} is not a comma-separated list of numbers")
    if min(sizes) < 1 or a.endpoints < 1 or a.repeat < 1 or a.changes < 0:
        p.error("--services, --sizes, --endpoints and --repeat must be positive, --changes not negative")
    say = None if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    results = []
    try:
        for n in sizes:
            if say:
                say(f"{n} Services x {a.endpoints} endpoints ({a.source})")
            results.append(run(n, a.endpoints, a.repeat, seed=a.seed, layout=a.layout,
                               naive_timeout=a.naive_timeout, changes=a.changes, nft_only=a.nft_only,
                               opts=L.Options(chunk_maps=a.chunk_maps), progress=say, source=a.source))
    except UsageError as e:
        print(f"rulegen: {e}", file=sys.stderr)
        return 2
    parts = [markdown(r) for r in results]
    if len(results) > 1:
        parts.insert(0, f"nftables apply, {_SOURCE_NAMES[a.source]}: medians of {a.repeat} fresh runs per size, "
                        "seconds wall / CPU (this process and its children); budgets are judged at "
                        f"{BUDGET_SERVICES:,} Services only\n\n" + summary(results))
    out = "\n".join(parts)
    sys.stdout.write(out)
    if a.output:
        with open(a.output, "w") as f:
            f.write(out)
    ok = all(all(r.state_equal) and all(r.change_equal) for r in results)
    if a.check_budget:
        ok = ok and all(met for r in results for *_, met in budgets(r))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
