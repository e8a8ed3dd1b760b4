"""The incremental-apply benchmark: one endpoint change on a large namespace, in the kernel.

For each iptables backend asked for (`--backend nft|legacy|both|auto`), it
generates a cluster (`rulegen.bench.gen`, one seed), loads it with `rulegen
apply` into a fresh network namespace (`rgt-inc-*`), changes one endpoint's
address, applies again, and checks that the live tables then equal those of
a second fresh namespace given the changed cluster in one full apply (every
chain of every table, in the kernel's own spelling; counters and chain
order aside). Every apply is the real command in a new process, with its
own state directory, so the figures are what a user waits for: start-up,
reading the files, the compile cache, the kernel. It prints a Markdown
report: full apply seconds and lines, incremental seconds and lines and
their share of the full payload, a repeat with nothing changed, and the
stage timings of each apply. The budget (`rulegen apply` after the change
under 1 s end to end, under 1% of the full payload's lines) is judged per
backend; `--check-budget` makes a miss on the system's own backend exit 1.
A mismatch between the two namespaces always exits 1. Namespaces and the
state directory are removed at the end, also on failure and Ctrl-C. Needs
root. `python -m rulegen.bench.incremental --services 10000 --endpoints 10`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import gen

BUDGET_SECONDS = 1.0
BUDGET_SHARE = 0.01
# Inside the generated cluster CIDR (10.128.0.0/9), used by no pod: the changed endpoint's successive addresses.
CHANGED_IPS = ("10.255.254.7", "10.255.254.8", "10.255.254.9", "10.255.254.10", "10.255.254.11")
STAGE_ORDER = ("load-cache", "read", "parse", "plan", "compile", "assemble", "load", "render", "create",
               "read-cache", "read-live", "diff", "list", "jumps", "prepare", "test", "restore", "cache", "save-cache")


@dataclass
class Run:
    """One `rulegen apply` process: what it sent and how long each part took."""

    label: str
    wall_s: float  # the whole command, as the user waits for it (process start to exit)
    compile_s: float  # its compile stages (cache, read, parse, plan, compile, assemble)
    apply_s: float  # `rulegen.apply` alone
    lines: int
    source: str
    summary: str
    stages: list[tuple[str, float]]
    cache: str = ""  # "parsed P of U input units, compiled C of S Services"


@dataclass
class Result:
    backend: str
    services: int
    endpoints: int
    runs: list[Run] = field(default_factory=list)
    equal: bool | None = None
    differences: list[str] = field(default_factory=list)
    error: str = ""

    def run(self, label: str) -> Run | None:
        return next((r for r in self.runs if r.label == label), None)

    def incremental(self) -> list[Run]:
        return [r for r in self.runs if r.label.startswith("incremental")]

    def budget(self) -> tuple[bool, str] | None:
        """Judged on the median of the incremental runs (each one endpoint change), and the largest share."""
        full, incs = self.run("full"), self.incremental()
        if full is None or not incs or not full.lines:
            return None
        walls = sorted(r.wall_s for r in incs)
        wall = walls[len(walls) // 2]
        lines = max(r.lines for r in incs)
        share = lines / full.lines
        ok = wall < BUDGET_SECONDS and share < BUDGET_SHARE
        runs = ", ".join(f"{r.wall_s:.3f}" for r in incs)
        return ok, (f"`rulegen apply` after one endpoint change took {wall:.3f} s end to end, median of "
                    f"{len(incs)} changes ({runs} s) (< {BUDGET_SECONDS:g} s: {'yes' if wall < BUDGET_SECONDS else 'no'}), "
                    f"at most {lines} of {full.lines} lines = {share * 100:.4f}% "
                    f"(< {BUDGET_SHARE * 100:g}%: {'yes' if share < BUDGET_SHARE else 'no'})")


def endpoint_to_change(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The first endpoint of the first non-empty slice, and the slice's name."""
    for o in objs:
        if o.get("kind") == "EndpointSlice" and o.get("endpoints"):
            meta = o["metadata"]
            return o["endpoints"][0], f"{meta['namespace']}/{meta['name']}"
    raise SystemExit("rulegen.bench.incremental: the generated cluster has no endpoints to change")


COMPILE_STAGES = ("load-cache", "read", "parse", "plan", "compile", "assemble", "load")
_SENT = re.compile(r"(?:would send|sent) (\d+) lines(?: \(dry run\))? in ([\d.]+) s")
_TIMING = re.compile(r"^timing: (\S+)\s+([\d.]+) ms$")
_CACHE = re.compile(r"^compile cache: (.*)$")


def _cli_apply(path: str, ns: str, backend: str, state: str, create: bool, label: str) -> Run:
    """`rulegen apply PATH --netns NS` as a user runs it: a new process, timed from start to exit."""
    cmd = [sys.executable, "-m", "rulegen", "apply", path, "--netns", ns, "--iptables-backend", backend,
           "--timings"] + (["--create"] if create else [])
    env = dict(os.environ, RULEGEN_STATE_DIR=state)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"rulegen apply ({label}) exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    summary = p.stdout.strip()
    m = _SENT.search(summary)
    lines, apply_s = (int(m.group(1)), float(m.group(2))) if m else (0, 0.0)
    stages, cache = [], ""
    for ln in p.stderr.splitlines():
        t = _TIMING.match(ln)
        if t and t.group(1) != "total":
            stages.append((t.group(1), float(t.group(2)) / 1000))
        c = _CACHE.match(ln)
        if c:
            cache = c.group(1)
    compile_s = sum(x for n, x in stages if n in COMPILE_STAGES)
    source = "cache" if "live state from the cache" in summary else "dump"
    return Run(label, wall, compile_s, apply_s, lines, source, summary, stages, cache)


def live_chains(xtables, ns: str, family: int = 4) -> dict[tuple[str, str], list[str]]:
    """Every chain's rules as the kernel prints them (empty built-ins dropped)."""
    from ..dataplane.xtables.model import BUILTIN_CHAINS
    from ..dataplane.xtables.parse import parse

    out: dict[tuple[str, str], list[str]] = {}
    for t in parse(xtables.save(ns, family), source=f"netns {ns}", family=family).tables:
        for chain, specs in t.by_chain().items():
            if specs or chain not in BUILTIN_CHAINS.get(t.name, ()):
                out[(t.name, chain)] = specs
    return out


def compare(a: dict[tuple[str, str], list[str]], b: dict[tuple[str, str], list[str]]) -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            table, chain = key
            what = "only after the incremental apply" if key not in b else \
                "only after the fresh apply" if key not in a else "rules differ"
            diffs.append(f"{table} {chain}: {what}")
    return diffs


def bench_backend(backend: str, services: int, endpoints: int, seed: int, workdir: str,
                  names: list[str], repeat: bool = True, changes: int = 3) -> Result:
    from ..dataplane.xtables.client import RealXtables

    xtables = RealXtables(backend=backend)
    res = Result(backend, services, endpoints)
    tag = uuid.uuid4().hex[:6]
    ns, fresh = f"rgt-inc-{backend[:3]}-{tag}-a", f"rgt-inc-{backend[:3]}-{tag}-b"
    names += [ns, fresh]
    state = os.path.join(workdir, f"state-{backend}")
    objs = gen.generate(services, endpoints, seed)
    before_path = os.path.join(workdir, "before.json")
    with open(before_path, "w") as f:
        gen.write(objs, "json", f)
    # Successive versions: the same endpoint moved to another address each time.
    versions = []
    ep, where = endpoint_to_change(objs)
    old = ep["addresses"][0]
    for k in range(changes):
        ip = CHANGED_IPS[k % len(CHANGED_IPS)]
        ep["addresses"] = [ip]
        path = os.path.join(workdir, f"after-{k + 1}.json")
        with open(path, "w") as f:
            gen.write(objs, "json", f)
        versions.append((path, f"{where}: endpoint {old} -> {ip}"))
    del objs, ep

    res.runs.append(_cli_apply(before_path, ns, backend, state, True, "full"))
    if repeat:
        res.runs.append(_cli_apply(before_path, ns, backend, state, False, "repeat (no change)"))
    for k, (path, what) in enumerate(versions, 1):
        inc = _cli_apply(path, ns, backend, state, False, f"incremental {k}" if changes > 1 else "incremental")
        inc.summary += f"\n  change: {what}"
        res.runs.append(inc)
    after_path = versions[-1][0]
    # The reference: the changed cluster loaded whole into a namespace of its own.
    res.runs.append(_cli_apply(after_path, fresh, backend, os.path.join(workdir, f"state-{backend}-ref"), True,
                               "fresh full (reference)"))
    res.differences = compare(live_chains(xtables, ns), live_chains(xtables, fresh))
    res.equal = not res.differences
    return res


def report(results: list[Result], system: str, elapsed: float) -> str:
    out = ["# rulegen apply: incremental update in the kernel", ""]
    out.append(f"One endpoint change on a generated cluster, applied with `rulegen apply` into a network "
               f"namespace; the system's `iptables` is iptables-{system}. Each row is one `rulegen apply` "
               f"process, as a user runs it. Wall-clock seconds: *end to end* from process start to exit, "
               f"*compile* its compile stages (reading the files and the compile cache, parsing and "
               f"compiling what changed), *apply step* `rulegen.apply` alone (reading what is live, "
               f"comparing, iptables-restore, its cache). Total run: {elapsed:.1f} s.")
    out.append("")
    out.append("| backend | Services × endpoints | apply | end to end s | compile s | apply step s | lines sent "
               "| % of full | live state from | compile cache |")
    out.append("|---|---|---|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        full = r.run("full")
        for run in r.runs:
            share = f"{run.lines / full.lines * 100:.4f}" if full and full.lines else "-"
            out.append(f"| {r.backend} | {r.services} × {r.endpoints} | {run.label} | {run.wall_s:.3f} | "
                       f"{run.compile_s:.3f} | {run.apply_s:.3f} | {run.lines} | {share} | "
                       f"{'cache (nothing read)' if run.source == 'cache' else 'iptables-save'} | "
                       f"{run.cache or '-'} |")
    out.append("")
    for r in results:
        out.append(f"## {r.backend}, {r.services} Services × {r.endpoints} endpoints")
        out.append("")
        if r.error:
            out.append(f"**error**: {r.error}")
            out.append("")
            continue
        b = r.budget()
        if b is not None:
            out.append(f"- budget: **{'met' if b[0] else 'missed'}**: {b[1]}")
        if r.equal is not None:
            out.append(f"- live state after the incremental applies equals a fresh full apply: "
                       f"**{'yes' if r.equal else 'NO'}**")
            for d in r.differences[:20]:
                out.append(f"  - {d}")
        incs = r.incremental()
        if incs:
            out.append(f"- {incs[-1].summary.splitlines()[-1].strip()}")
        out.append("")
        seen = {s for run in r.runs for s, _ in run.stages}
        stages = [s for s in STAGE_ORDER if s in seen] + sorted(seen - set(STAGE_ORDER))
        out.append("| stage (ms) | " + " | ".join(run.label for run in r.runs) + " |")
        out.append("|---|" + "---:|" * len(r.runs))
        for s in stages:
            cells = []
            for run in r.runs:
                t = sum(x for n, x in run.stages if n == s)
                cells.append(f"{t * 1000:.1f}" if any(n == s for n, _ in run.stages) else "")
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def _delete_namespaces(names: list[str]) -> list[str]:
    """Delete the namespaces this run made (only those); return any that would not go."""
    left = []
    for n in names:
        if os.path.exists(f"/run/netns/{n}"):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
            if os.path.exists(f"/run/netns/{n}"):
                left.append(n)
    return left


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rulegen.bench.incremental", description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10000, help="Services (default 10000)")
    ap.add_argument("--endpoints", type=int, default=10, help="endpoints per Service (default 10)")
    ap.add_argument("--backend", choices=("both", "auto", "nft", "legacy"), default="both",
                    help="iptables backend(s) to measure (default both; auto = the system's)")
    ap.add_argument("--nft-services", type=int, default=None,
                    help="Services for the nft run when it should be smaller (default: --services)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-repeat", action="store_true", help="skip the no-change repeat")
    ap.add_argument("--changes", type=int, default=3,
                    help="incremental applies, each one endpoint change; the budget takes their median (default 3)")
    ap.add_argument("--check-budget", action="store_true",
                    help="exit 1 when the system backend misses the budget")
    ap.add_argument("-o", "--output", default="", help="also write the Markdown report here")
    args = ap.parse_args(argv)
    if args.services < 1 or args.endpoints < 1:
        print("rulegen.bench.incremental: --services and --endpoints must be at least 1", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("rulegen.bench.incremental needs root (network namespaces and iptables-restore)", file=sys.stderr)
        return 2
    from ..diagnostics import UsageError
    from ..dataplane.xtables.restore import backend_tool, system_backend

    system = system_backend()
    backends = {"both": ["nft", "legacy"], "auto": [system]}.get(args.backend, [args.backend])
    for b in list(backends):
        try:
            backend_tool("restore", 4, b)
        except UsageError as e:
            print(f"rulegen.bench.incremental: skipping {b}: {e}", file=sys.stderr)
            backends.remove(b)
    if not backends:
        return 2

    workdir = tempfile.mkdtemp(prefix="rulegen-inc-")
    names: list[str] = []
    results: list[Result] = []
    t0 = time.perf_counter()
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for b in backends:
            n = args.nft_services if (b == "nft" and args.nft_services) else args.services
            print(f"rulegen.bench.incremental: {b}: {n} Services × {args.endpoints} endpoints ...",
                  file=sys.stderr, flush=True)
            try:
                results.append(bench_backend(b, n, args.endpoints, args.seed, workdir, names,
                                             repeat=not args.no_repeat, changes=max(1, args.changes)))
            except (UsageError, RuntimeError, subprocess.TimeoutExpired) as e:
                r = Result(b, n, args.endpoints, error=str(e))
                results.append(r)
            _delete_namespaces(names)  # each backend's namespaces go as soon as it is done
    except KeyboardInterrupt:
        print("rulegen.bench.incremental: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
        left = _delete_namespaces(names)
        shutil.rmtree(workdir, ignore_errors=True)
        if left:
            print(f"rulegen.bench.incremental: could not delete namespaces {left}", file=sys.stderr)
    text = report(results, system, time.perf_counter() - t0)
    sys.stdout.write(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    status = 0
    if any(r.equal is False or r.error for r in results):
        status = 1
    if args.check_budget:
        for r in results:
            b = r.budget()
            if r.backend == system and (b is None or not b[0]):
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
