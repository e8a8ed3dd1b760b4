"""`rulegen lab FILES... [settings]`: prove the compiled rules with real connections in throw-away namespaces.

Parses options, compiles, lets `rulegen.lab` plan, build, probe, judge and
tear down, then prints the report (templates/lab.j2) or `--json`. Exit 1
when what was observed contradicts the plan, 2 for unusable input, no root
or a lab that could not be built, 130 (SIGINT) / 143 (SIGTERM) when
interrupted — after everything it made has been removed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import click

from .. import lab
from ..cli import guarded, run_compile
from ..diagnostics import UsageError
from ..flags import flags_of, settings_options


@click.command("lab")
@click.argument("files", nargs=-1)
@settings_options
@click.option("--requests", type=click.IntRange(1, 5000), default=200, show_default=True,
              help="Connections per service port and access path.")
@click.option("--service", "services", multiple=True, metavar="NS/NAME",
              help="Only this Service (repeatable).")
@click.option("--max-pods", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Refuse to build more endpoint namespaces than this.")
@click.option("--timeout", type=click.FloatRange(10, 3600), default=120, show_default=True,
              help="Seconds the whole run may take, building and cleaning up included.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results on stdout.")
@guarded
def command(files, requests, services, max_pods, timeout, as_json, config_path, **kw):
    """Build a throw-away node in network namespaces, apply the rules and send real traffic."""
    flags = flags_of(kw)
    if os.geteuid() != 0:
        raise UsageError("lab needs root: it creates network namespaces and loads iptables rules "
                         "(run it as root or with sudo)")
    for tool in ("ip", "iptables-restore", "iptables-save", "iptables"):
        if not shutil.which(tool):
            raise UsageError(f"lab needs {tool}, which is not installed")
    c = run_compile(files, flags, config_path)
    plan = lab.build_plan(c, requests=requests, services=services, max_pods=max_pods)
    if not plan.probes:
        click.echo("rulegen lab: no service port to test (nothing with an IPv4 cluster IP and TCP/UDP ports)")
        return

    def recompile(override: dict):
        return run_compile(files, {**flags, **override}, config_path)

    try:
        rep = lab.run(c, recompile, plan, timeout)
    except lab.LabInterrupted as e:
        click.echo(f"rulegen: lab interrupted by {e}; everything it created was removed", err=True)
        sys.exit(128 + e.signum)
    if as_json:
        sys.stdout.write(json.dumps(rep.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(lab.report_text(rep))
    sys.stdout.flush()
    if not rep.ok:
        sys.exit(1)
