#!/usr/bin/env python3
"""Profile the compile pipeline on a generated cluster: where do the seconds of a 10k-Service compile go?

Runs the CLI's own stages (`compile_files`, then `Compiled.text`)
under cProfile on a `rulegen bench gen` cluster (or the files given) and
prints the wall time of each stage without the profiler, then the functions
with the most own time. cProfile charges every Python call ~0.1 us, so
call-heavy functions look dearer than they are; compare stage times, not
profile seconds, when judging a change.

    .venv/bin/python scripts/profile_pipeline.py --services 10000 --format json
    .venv/bin/python scripts/profile_pipeline.py cluster.yaml --top 40
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="inputs (default: a generated cluster)")
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--format", choices=("json", "yaml"), default="json")
    ap.add_argument("--mode", default="iptables")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumtime, ncalls)")
    args = ap.parse_args()

    from rulegen import backends
    from rulegen.bench import gen
    from rulegen.pipeline import Timings, compile_files

    backends.get(args.mode)
    tmp = None
    files = args.files
    if not files:
        tmp = tempfile.mkdtemp(prefix="rulegen-profile-")
        path = os.path.join(tmp, f"cluster.{args.format}")
        with open(path, "w") as f:
            gen.write(gen.generate(args.services, args.endpoints, args.seed), args.format, f)
        files = [path]

    def once() -> Timings:
        c = compile_files(files, {"mode": args.mode})
        c.text
        return c.timings

    try:
        t0 = time.perf_counter()
        plain = once()
        total = time.perf_counter() - t0
        print("stages without the profiler:")
        for name, t in plain.stages:
            print(f"  {name:<8} {t * 1000:9.1f} ms")
        print(f"  {'total':<8} {total * 1000:9.1f} ms (including work between stages)\n")
        prof = cProfile.Profile()
        prof.runcall(once)
        stats = pstats.Stats(prof, stream=sys.stdout)
        stats.strip_dirs().sort_stats(args.sort).print_stats(args.top)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
