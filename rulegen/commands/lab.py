"""`rulegen lab FILES... [settings]`: prove the compiled rules with real connections in throw-away namespaces.

Parses options, compiles, lets `rulegen.lab` plan, build, probe, judge and
tear down, then prints the report (templates/lab.j2) or `--json`. Exit 1
when what was observed contradicts the plan, 2 for unusable input, no root
or a lab that could not be built, 130 (SIGINT) / 143 (SIGTERM) when
interrupted — after everything it made has been removed.

`--mode-compare FROM:TO [--settings-to FILE]` runs `rulegen migrate`'s
comparison, then the lab once in each mode on the same plan, and checks
every path's two observations against migrate's traces
(`rulegen.lab.compare`, templates/lab-compare.j2). Exit 0 when every path
agrees with migrate (whatever differs between the modes), 1 when one does
not, 2 as above (also for a mode this kernel cannot run).
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
@click.option("--mode-compare", "mode_compare", default=None, metavar="FROM:TO",
              help="Run the lab in both modes (iptables, nftables, ipvs) on the same topology and check every "
                   "path's change against `rulegen migrate --from FROM --to TO`. Exit 1 when the traffic "
                   "disagrees with migrate's report, 0 when it agrees.")
@click.option("--settings-to", "settings_to", default=None, type=click.Path(),
              help="With --mode-compare: a KubeProxyConfiguration (or kube-proxy ConfigMap) for the TO mode's "
                   "run, in place of --config there (as `rulegen migrate --settings-to`).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results on stdout.")
@guarded
def command(files, requests, services, max_pods, timeout, mode_compare, settings_to, as_json, config_path, **kw):
    """Build a throw-away node in network namespaces, apply the rules and send real traffic.

    \b
    rulegen lab cluster.yaml
    rulegen lab cluster.yaml --mode nftables --requests 50
    rulegen lab cluster.yaml --mode-compare iptables:nftables
    rulegen lab cluster.yaml --mode-compare ipvs:nftables --settings-to nft-config.yaml
    """
    flags = flags_of(kw)
    if mode_compare is not None:
        _compare(files, flags, config_path, mode_compare, settings_to, requests, services, max_pods, timeout,
                 as_json)
        return
    if settings_to is not None:
        raise UsageError("--settings-to: only with --mode-compare FROM:TO (it is the TO mode's configuration)")
    if not files:
        raise UsageError("no input files given (use - for standard input)")
    if os.geteuid() != 0:  # before the compile: the configuration may say the mode, but root comes first
        _need_root_and_tools([flags["mode"]] if flags.get("mode") else [])
    c = run_compile(files, flags, config_path)
    _need_root_and_tools([c.settings.mode])
    plan = lab.build_plan(c, requests=requests, services=services, max_pods=max_pods)
    if not plan.probes:
        click.echo("rulegen lab: no service port to test (nothing with an IPv4 cluster IP and TCP/UDP ports)")
        return

    def recompile(override: dict):
        return run_compile(files, {**flags, **override}, config_path)

    _finish(lambda: lab.run(c, recompile, plan, timeout), lab.report_text, as_json)


def _finish(run, text, as_json: bool) -> None:
    """Run the lab (RUN), print its report (TEXT of it, or JSON), exit 1 when it failed, 128+N on signal N."""
    try:
        rep = run()
    except lab.LabInterrupted as e:
        click.echo(f"rulegen: lab interrupted by {e}; everything it created was removed", err=True)
        sys.exit(128 + e.signum)
    if as_json:
        sys.stdout.write(json.dumps(rep.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(text(rep))
    sys.stdout.flush()
    if not rep.ok:
        sys.exit(1)


def _need_root_and_tools(modes: list[str]) -> None:
    """Root, `ip`, and each mode's own tools, named with what the mode loads (its applier's `tools`/`payload`)."""
    from .. import backends

    payloads = []
    tools = ["ip"]
    for m in modes:
        a = backends.require(m, "applier")
        payloads.append(getattr(a, "payload", f"{m} rules"))
        tools += [t for t in getattr(a, "tools", ()) if t not in tools]
    if os.geteuid() != 0:
        what = " and ".join(payloads) or "the mode's rules"
        raise UsageError(f"lab needs root: it creates network namespaces and loads {what} "
                         "(run it as root or with sudo)")
    for tool in tools:
        if not shutil.which(tool):
            raise UsageError(f"lab needs {tool}, which is not installed ({'/'.join(modes)} mode)")


def parse_mode_pair(text: str) -> tuple[str, str]:
    """`FROM:TO` → (FROM, TO), each a mode the lab can load and migrate can trace; UsageError otherwise."""
    from .. import backends

    a, sep, b = text.partition(":")
    if not sep or not a or not b or ":" in b:
        raise UsageError(f"--mode-compare {text!r}: expected FROM:TO, e.g. iptables:nftables")
    for m in (a, b):
        if m not in backends.modes():
            raise UsageError(f"--mode-compare {text!r}: unknown mode {m!r} (modes: {', '.join(backends.modes())})")
        got = backends.get(m)
        if got.applier() is None or got.tracer() is None:
            raise UsageError(f"--mode-compare {text!r}: the lab cannot compare {m} mode "
                             f"(it needs the mode's applier and tracer)")
    return a, b


def _compare(files, flags, config_path, pair, settings_to, requests, services, max_pods, timeout, as_json):
    from ..cli import emit_report
    from ..diagnostics import Report
    from ..lab import compare
    from ..migrate import migrate

    a, b = parse_mode_pair(pair)
    if flags.get("mode"):
        raise UsageError("--mode and --mode-compare: give the two modes in --mode-compare only")
    if not files:
        raise UsageError("no input files given (use - for standard input)")
    _need_root_and_tools([a, b])
    report = Report()
    wanted = {f"{ns}/{name}" for ns, name in lab.parse_service_filters(services)}
    try:
        result = migrate(list(files), flags, b, a, config_path, settings_to, wanted, report)
    finally:
        emit_report(report, bool(flags.get("strict")))
    base = lab.build_plan(result.compiled_from, requests=requests, services=services, max_pods=max_pods)
    cp = compare.plan_compare(result, base, requests)
    if not cp.paths:
        click.echo("rulegen lab: no path to compare (nothing with an IPv4 cluster IP and TCP/UDP ports)")
        return
    from ..apply.kernel import Kernel

    compare.preflight(result, Kernel.real())

    def recompile(mode: str, cfg: str | None):
        return lambda override: run_compile(files, {**flags, "mode": mode, **override}, cfg)

    tos = settings_to if settings_to is not None else config_path
    _finish(lambda: compare.run_compare(result, cp, (recompile(a, config_path), recompile(b, tos)), timeout),
            compare.report_text, as_json)
