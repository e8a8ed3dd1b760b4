"""`rulegen migrate`: what behaves differently for each Service when the node changes kube-proxy mode.

`rulegen migrate FILES... --to MODE [--from MODE] [--settings-to FILE]
[--service NS/NAME] [--json] [settings]` traces every Service port from
every kind of client to every entry point in both modes and prints only
the connections that behave differently, grouped by cause
(`rulegen.migrate`). Exit 1 when anything differs, 0 when nothing does,
2 for unusable input or a mode rulegen cannot trace.
"""

from __future__ import annotations

import sys

import click

from ..cli import emit_report, guarded
from ..diagnostics import Report
from ..flags import ModeChoice, flags_of, settings_options
from ..migrate import migrate
from ..migrate.render import render_json, render_text
from ..trace.scenarios import parse_services


@click.command("migrate")
@click.argument("files", nargs=-1)
@click.option("--to", "to_mode", type=ModeChoice(), required=True, help="The mode the node moves to.")
@click.option("--from", "from_mode", type=ModeChoice(), default=None,
              help="The mode the node runs now (default: the configuration's mode, else iptables).")
@click.option("--settings-to", "settings_to", default=None, type=click.Path(),
              help="A KubeProxyConfiguration (or kube-proxy ConfigMap) for the node in the --to mode, in place "
                   "of --config there: the report is then of these settings, and says which differences of the "
                   "mode's defaults they remove.")
@click.option("--service", "services", multiple=True, help="Only this Service, NS/NAME (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@settings_options
@guarded
def command(files, to_mode, from_mode, settings_to, services, as_json, config_path, **kw):
    """Show what behaves differently for each Service when the node moves from one mode to another.

    Every Service port is traced from every kind of client (an outside
    client, a pod on this node, a pod on another node, the node itself,
    localhost) to every entry point (the ClusterIP, the NodePort on each
    node address and on 127.0.0.1, external and load-balancer IPs, and a
    port of the ClusterIP no Service uses), in both modes. Only the
    connections that differ are printed, grouped by cause, each cause with
    what restores the old behaviour, or why nothing does. Exit 1 when
    anything differs, 0 when nothing does.

    \b
    rulegen migrate cluster.yaml --to nftables
    rulegen migrate cluster.yaml --from ipvs --to nftables --settings-to nft-config.yaml
    rulegen migrate cluster.yaml --to nftables --json
    """
    flags = flags_of(kw)
    if not files:
        raise click.UsageError("no input files given (use - for standard input)")
    report = Report()
    wanted = parse_services(services)
    try:
        result = migrate(list(files), flags, to_mode, from_mode, config_path, settings_to, wanted, report)
    finally:
        emit_report(report, bool(flags.get("strict")))
    sys.stdout.write(render_json(result) if as_json else render_text(result))
    sys.exit(1 if result.differs else 0)
