"""`rulegen apply FILES... --netns NAME`: compile, then load into a network namespace.

Parses options, compiles, calls `rulegen.apply.apply` and prints its
summary (or, with `--dry-run`, the payload it would send on stdout and the
summary on stderr). Errors (no root, no such namespace, a refused payload)
are one line and exit 2.
"""

from __future__ import annotations

import os
import sys
import time

import click

from ..apply import COMPILE_CACHE, apply, default_state_dir
from ..cli import flags_of, guarded, run_compile, settings_options
from ..netns import BACKENDS, check_name
from ..pipeline import timing_line

BACKEND_HELP = (
    "Which iptables to load with: 'nft' (iptables-nft, what current distributions install as "
    "`iptables`), 'legacy' (iptables-legacy), or 'auto': the one that already has tables in the "
    "namespace, else the system's `iptables` (as kube-proxy's iptables-wrapper picks). The nft "
    "backend is much slower to load large rulesets (tens of seconds at 10k Services, where legacy "
    "takes seconds; kube-proxy pays the same cost), but sends a small change in milliseconds, "
    "where legacy rewrites the whole table.")


@click.command("apply")
@click.argument("files", nargs=-1)
@click.option("--netns", required=True, help="The network namespace to load the rules into.")
@click.option("--create", is_flag=True, help="Create the namespace when it does not exist.")
@click.option("--dry-run", is_flag=True, help="Print the payload that would be sent; send nothing.")
@click.option("--iptables-backend", "backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help=BACKEND_HELP)
@click.option("--timings", is_flag=True, help="Per-stage times on stderr.")
@settings_options
@guarded
def command(files, netns, create, dry_run, backend, timings, config_path, **kw):
    """Load the compiled rules into namespace NETNS, sending only what changed.

    A cache of the last apply (under /run/rulegen, or $RULEGEN_STATE_DIR)
    spares re-reading unchanged rules when the kernel proves nothing changed
    since (iptables-nft); otherwise the live tables are read and compared.
    """
    flags = flags_of(kw)
    state = default_state_dir()
    cache_file = os.path.join(state, check_name(netns), COMPILE_CACHE) if state else None
    c = run_compile(files, flags, config_path, cache_file)
    res = apply(c, netns, create=create, dry_run=dry_run, backend=backend, state_dir=state)
    if cache_file and not dry_run and hasattr(c, "save"):
        t0 = time.perf_counter()
        c.save(cache_file)
        res.timings.append(("save-cache", time.perf_counter() - t0))
    if dry_run:
        sys.stdout.write(res.payload)
        sys.stdout.flush()
        click.echo(res.summary(), err=True)
    else:
        click.echo(res.summary())
    if timings:
        stats = getattr(c, "stats", None)
        if stats:
            click.echo(f"compile cache: parsed {stats['parsed']} of {stats['units']} input units, "
                       f"compiled {stats['compiled']} of {stats['groups']} Services", err=True)
        total = sum(t for _, t in c.timings.stages) + res.seconds  # apply counts as its whole run
        for name, t in (*c.timings.stages, *res.timings, ("total", total)):
            click.echo(f"timing: {timing_line(name, t)}", err=True)
