"""One measurement in a fresh interpreter, so every peak RSS and every cache starts cold.

`python -m rulegen.bench.worker pipeline MODE FILE PAYLOAD_OUT` loads FILE
(YAML or JSON by suffix), plans, compiles and renders it for MODE, writes the
payload to PAYLOAD_OUT and prints the stage times, the payload's size and
hash and the process's peak RSS as one JSON object.
`python -m rulegen.bench.worker floors JSON_FILE YAML_FILE PAYLOAD...` times
what no implementation can beat: `json.loads` of the JSON input (as called
by default, and with the cyclic GC paused as the pipeline runs), PyYAML's C
loader on the YAML input and one `"".join` of each payload's lines.
The harness (`rulegen.bench.run`) starts one process per measurement.
"""

from __future__ import annotations

import gc
import hashlib
import json
import resource
import sys
import time
from typing import Any


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _spans(**spans: tuple[tuple[float, float], tuple[float, float]]) -> dict[str, float]:
    """name → wall seconds, and name_cpu → this process's CPU seconds."""
    out = {}
    for name, (a, b) in spans.items():
        out[name] = b[0] - a[0]
        out[name + "_cpu"] = b[1] - a[1]
    return out


def _peak_mib() -> float:
    """This process's peak RSS so far (the high-water mark of its own memory map).

    Not `getrusage().ru_maxrss`: Linux carries that over from the parent
    across fork and exec, so every worker would report at least the
    harness's size (which holds the generated 10k cluster).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pipeline(mode: str, path: str, payload_out: str) -> dict[str, Any]:
    """The CLI's own stages (`load_inputs`, `compile_inputs`, `Compiled.text`), timed from outside."""
    from rulegen import backends
    from rulegen.diagnostics import Report
    from rulegen.pipeline import Timings, compile_inputs, load_inputs

    backends.get(mode)  # imports are not what is measured
    report = Report()
    timings = Timings()
    rss0 = _peak_mib()
    t0 = _now()
    inputs = load_inputs([path], report, timings)
    t1 = _now()
    compiled = compile_inputs(inputs, {"mode": mode}, report, timings)
    t2 = _now()
    text = compiled.text
    t3 = _now()
    peak = _peak_mib()
    with open(payload_out, "w") as f:
        f.write(text)
    return {
        **_spans(load=(t0, t1), compile=(t1, t2), render=(t2, t3), total=(t0, t3)),
        "stages": dict(timings.stages),
        "lines": text.count("\n"), "bytes": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "ports": len(compiled.plan.ports), "endpoints": compiled.plan.endpoint_total,
        "problems": len(report.errors), "peak_mib": peak, "base_mib": rss0,
    }


def floors(json_path: str, yaml_path: str, payloads: list[str]) -> dict[str, Any]:
    import yaml

    with open(json_path) as f:
        jtext = f.read()
    t0 = _now()
    doc = json.loads(jtext)
    t1 = _now()
    del doc
    gc.collect()
    gc.disable()  # the pipeline pauses the cyclic GC while it allocates; this is the floor under that
    t5 = _now()
    doc = json.loads(jtext)
    t6 = _now()
    gc.enable()
    del doc, jtext
    out = _spans(json_loads=(t0, t1), json_loads_nogc=(t5, t6))
    if yaml_path != "-":  # "-": no YAML input measured
        with open(yaml_path) as f:
            ytext = f.read()
        t2 = _now()
        docs = list(yaml.load_all(ytext, Loader=yaml.CSafeLoader))
        t3 = _now()
        del docs, ytext
        out.update(_spans(yaml_cload=(t2, t3)))
    for i, p in enumerate(payloads):
        with open(p) as f:
            lines = f.read().splitlines(keepends=True)
        t4 = _now()
        "".join(lines)
        out.update(_spans(**{f"join{i}": (t4, _now())}))
    return out


def main(argv: list[str]) -> int:
    task, *args = argv
    if task == "pipeline":
        out = pipeline(*args)
    elif task == "floors":
        out = floors(args[0], args[1], args[2:])
    else:
        print(f"unknown task {task!r}", file=sys.stderr)
        return 2
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
