"""Counting work instead of timing it: lines executed per function, and the check for a superlinear step.

Shared by tests/core/test_scaling.py (the whole pipeline) and the modes'
own scaling tests (tests/backends/ipvs/test_ipvs_compile.py).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Callable

from rulegen.bench import gen

SIZES = (100, 1000, 2000)
ENDPOINTS = 10


# --------------------------------------------------------------------------- counting


def _clear_caches() -> None:
    """lru caches kept from a previous size would make a later size look cheaper than it is."""
    for name, mod in list(sys.modules.items()):
        if name == "rulegen" or name.startswith("rulegen."):
            for v in list(vars(mod).values()):
                clear = getattr(v, "cache_clear", None)
                if callable(clear):
                    clear()


def line_counts(run: Callable[[], object]) -> Counter:
    """Lines executed per function ("file:function") while `run` runs."""
    counts: Counter = Counter()

    def local(frame, event, arg):
        if event == "line":
            counts[frame.f_code] += 1
        return local

    def on_call(frame, event, arg):
        return local

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        run()
    finally:
        sys.settrace(previous)
    out: Counter = Counter()
    for code, n in counts.items():
        out[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += n
    return out


def superlinear(by_size: dict[int, Counter], rel: float = 0.25, slack: float = 2.0) -> list[str]:
    """Functions whose cost per added Service grows between the first and the second step.

    With sizes a < b < c, the marginal cost is (count(b) - count(a)) / (b - a)
    and (count(c) - count(b)) / (c - b); linear code keeps it constant, a
    quadratic step makes it grow with size. `slack` (lines per Service)
    keeps a rarely used function's sampling noise from counting.
    """
    a, b, c = sorted(by_size)
    out = []
    for fn in by_size[c]:
        na, nb, nc = (by_size[s].get(fn, 0) for s in (a, b, c))
        m1 = max((nb - na) / (b - a), 0.0)
        m2 = (nc - nb) / (c - b)
        if m2 > m1 * (1 + rel) + slack:
            out.append(f"{fn}: {m1:.1f} → {m2:.1f} lines per added Service ({na}, {nb}, {nc})")
    return out


def _write(tmp_path, n: int, fmt: str, endpoints: int = ENDPOINTS, seed: int = 1) -> str:
    path = tmp_path / f"cluster-{n}.{fmt}"
    with open(path, "w") as f:
        gen.write(gen.generate(n, endpoints, seed), fmt, f)
    return str(path)
