"""`rulegen explain FILES... [-o page.html] [--service NS/NAME] [--compare MODE] [settings]`: the flows as a page.

Parses options, lets `rulegen.explain.page` trace every scenario and lay
the page out, and writes it: to `-o PATH` in one step (a failed write
leaves the old page whole), or to standard output. Exit 0 once the page is
written, 2 for unusable input or arguments, including a mode without a
tracer and a page too large without `--service`.
"""

from __future__ import annotations

import sys

import click

from ..cli import emit_report, guarded
from ..diagnostics import Report, UsageError
from ..explain import page
from ..files import write_atomic
from ..flags import ModeChoice, flags_of, settings_options


@click.command("explain")
@click.argument("files", nargs=-1)
@click.option("-o", "--output", default=None, help="Write the page here instead of standard output.")
@click.option("--service", "services", multiple=True, metavar="NS/NAME",
              help="Draw only this Service's ports (repeatable); the rest of the input is still compiled.")
@click.option("--compare", default=None, type=ModeChoice(), metavar="MODE",
              help="Draw each Service port in this mode too, side by side, and mark what behaves differently.")
@click.option("--max-ports", type=click.IntRange(1), default=page.MAX_PORTS, show_default=True,
              help="Refuse to draw more Service ports than this without --service.")
@settings_options
@guarded
def command(files, output, services, compare, max_ports, config_path, **kw):
    """Draw every Service port's flows as one self-contained HTML page (inline SVG, no network).

    For each Service port: who can connect (an outside client, a pod on this
    node or another, the node itself, localhost), where (ClusterIP, NodePort
    on each node address, external and load-balancer IPs), the chains the
    connection passes with the share of each branch, where it is
    masqueraded, which endpoints are on another node, and where it stops.
    Beside it: the settings that shaped it and the lint findings.

    \b
    rulegen explain cluster.yaml -o page.html
    rulegen explain cluster.yaml --service default/web -o web.html
    rulegen explain cluster.yaml --compare nftables -o migrate.html
    """
    flags = flags_of(kw)
    report = Report()
    r = page.run(list(files), flags, config_path, tuple(services), compare, max_ports, report,
                 after_compile=lambda: emit_report(report, bool(flags.get("strict"))))
    html = page.render(r)
    if output:
        try:
            write_atomic(output, html)
        except OSError as e:
            raise UsageError(f"{output}: cannot write: {e.strerror}") from None
        traced = sum(len(o) for o in r.outcomes[:1])
        ports = len(r.ports)
        click.echo(f"rulegen: explain: wrote {output}: {ports} Service port{'s' if ports != 1 else ''}, "
                   f"{traced} connection{'s' if traced != 1 else ''} traced"
                   + (f" in each of {r.modes[0]} and {r.modes[1]} mode, {len(r.differences)} behaving differently"
                      if len(r.modes) == 2 else f" ({r.modes[0]} mode)"), err=True)
    else:
        sys.stdout.write(html)
        sys.stdout.flush()
