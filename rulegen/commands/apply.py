"""`rulegen apply FILES... --netns NAME`: compile, then load into a network namespace.

Parses options, takes the namespace's apply lock, compiles, calls
`rulegen.apply.apply` and prints its summary (or, with `--dry-run`, the
payload it would send on stdout and the summary on stderr; with `--json`,
one JSON object on stdout instead). An input with no Service is refused
unless `--allow-empty`: an empty pipe from a failed `kubectl` must not wipe
a node. Errors (no root, no such namespace, a refused payload, the lock
still held after `--lock-timeout`) are one line and exit 2.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from ..apply import COMPILE_CACHE, apply, default_state_dir
from ..apply.lock import LOCK_DIR, namespace_lock
from ..cli import EMPTY_INPUT, guarded, message_json, problem_json, run_compile, service_count
from ..diagnostics import UsageError
from ..flags import flags_of, settings_options
from ..compiled import timing_line
from ..dataplane.xtables.restore import BACKENDS
from ..kernel.netns import check_name

BACKEND_HELP = (
    "Which iptables to load with: 'nft' (iptables-nft, what current distributions install as "
    "`iptables`), 'legacy' (iptables-legacy), or 'auto': the one that already has tables in the "
    "namespace, else the system's `iptables` (as kube-proxy's iptables-wrapper picks). The nft "
    "backend is much slower to load large rulesets (tens of seconds at 10k Services, where legacy "
    "takes seconds; kube-proxy pays the same cost), but sends a small change in milliseconds, "
    "where legacy rewrites the whole table.")


def _refusal(netns: str, dry_run: bool) -> str:
    outcome = "apply would refuse it" if dry_run else "nothing was changed"
    return (f"{EMPTY_INPUT}; applying it would remove every Service rule from netns {netns}, "
            f"so {outcome} (use --allow-empty to do that)")


@click.command("apply")
@click.argument("files", nargs=-1)
@click.option("--netns", required=True, help="The network namespace to load the rules into.")
@click.option("--create", is_flag=True, help="Create the namespace when it does not exist.")
@click.option("--dry-run", is_flag=True, help="Print the payload that would be sent; send nothing.")
@click.option("--iptables-backend", "backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help=BACKEND_HELP)
@click.option("--allow-empty", is_flag=True,
              help="Apply an input with no Service (which removes every Service rule); refused without it.")
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="While another apply into the same namespace runs, wait at most this long, then exit 2 "
                   "(default: wait until it is done).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object on stdout: what was sent, counts, warnings, timings.")
@click.option("--timings", is_flag=True, help="Per-stage times on stderr.")
@settings_options
@guarded
def command(files, netns, create, dry_run, backend, allow_empty, lock_timeout, as_json, timings, config_path,
            **kw):
    """Load the compiled rules into namespace NETNS, sending only what changed.

    A cache of the last apply (under /run/rulegen, or $RULEGEN_STATE_DIR)
    spares re-reading unchanged rules when the kernel proves nothing changed
    since (iptables-nft); otherwise the live tables are read and compared.
    One apply at a time per namespace: a second one waits for the lock in
    /run/rulegen/.locks (or gives up after --lock-timeout).
    """
    flags = flags_of(kw)
    check_name(netns)
    state = default_state_dir()
    cache_file = os.path.join(state, netns, COMPILE_CACHE) if state else None
    # Without root apply stops at its root check; the lock folder is root's.
    lock_dir = LOCK_DIR if os.geteuid() == 0 else None
    warn: list[str] = []
    t0 = time.perf_counter()
    # The lock covers the compile too: its cache is the namespace's.
    with namespace_lock(netns, lock_dir, lock_timeout, lambda m: click.echo(m, err=True)):
        waited = time.perf_counter() - t0
        c = run_compile(files, flags, config_path, cache_file, warn)
        empty = service_count(c) == 0
        if empty and not allow_empty and not dry_run:
            raise UsageError(_refusal(netns, False))
        res = apply(c, netns, create=create, dry_run=dry_run, backend=backend, state_dir=state,
                    lock_dir=lock_dir, lock_timeout=lock_timeout)
        if cache_file and not dry_run and c.incremental is not None:
            t1 = time.perf_counter()
            c.save_cache(cache_file, warn)
            res.timings.append(("save-cache", time.perf_counter() - t1))
    stages = [("lock", waited), *c.timings.stages, *res.timings]  # in the order they ran
    warn += [w for w in res.warnings if w not in warn]
    if empty and allow_empty:
        warn.insert(0, f"{EMPTY_INPUT}; every Service rule is removed (--allow-empty)")
    for w in warn:
        click.echo(f"rulegen: warning: {w}", err=True)
    if as_json:
        warnings = [problem_json(p) for p in c.report.problems] + [message_json(w) for w in warn]
        click.echo(json.dumps(res.to_json(warnings, stages), indent=2))
    elif dry_run:
        sys.stdout.write(res.payload)
        sys.stdout.flush()
        click.echo(res.summary(), err=True)
    else:
        click.echo(res.summary())
    if timings:
        stats = c.stats
        if stats:
            click.echo(f"compile cache: parsed {stats['parsed']} of {stats['units']} input units, "
                       f"compiled {stats['compiled']} of {stats['groups']} Services", err=True)
        total = waited + sum(t for _, t in c.timings.stages) + res.seconds  # apply counts as its whole run
        for name, t in (*stages, ("total", total)):
            click.echo(f"timing: {timing_line(name, t)}", err=True)
    if empty and not allow_empty:  # a dry run: it showed what would be sent; the real run would refuse
        raise UsageError(_refusal(netns, True))
