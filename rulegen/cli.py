"""The `rulegen` command line: parse options, call one function, print.

Exit status (CONTRACT.md): 2 for unusable input or arguments, 1 when a
command compares or checks and finds a difference or a problem, 0 otherwise.
No command lets a Python traceback reach the user: `UsageError` and input
problems become one-line messages.
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
from typing import Any, Callable

import click

from .diagnostics import Report, UsageError
from .files import write_atomic
from .pipeline import Compiled, compile_files, compile_files_cached

SETTING_KEYS = (
    "mode", "hostname", "node_ip", "cluster_cidr", "service_cidr", "nodeport_addresses",
    "masquerade_all", "masquerade_bit", "ip_family", "random_fully", "nfacct",
    "tcp_be_liberal", "localhost_nodeports", "strict",
)


def settings_options(f: Callable) -> Callable:
    """The settings table of CONTRACT.md, shared by every command that compiles."""
    opts = [
        click.option("--mode", type=click.Choice(["iptables", "ipvs", "nftables"]), default=None,
                     help="Data plane (default iptables, or the config's mode)."),
        click.option("--hostname", default=None, help="The node: picks the Node object and the local endpoints."),
        click.option("--node-ip", multiple=True, help="A node address (repeatable); the first of each family is primary."),
        click.option("--cluster-cidr", multiple=True, help="Pod CIDR for the local-traffic detector (repeatable)."),
        click.option("--service-cidr", multiple=True, help="Service IP range (repeatable)."),
        click.option("--nodeport-addresses", default=None, help="kube-proxy nodePortAddresses: CIDR,... or 'primary'."),
        click.option("--masquerade-all", is_flag=True, default=None, help="kube-proxy masqueradeAll."),
        click.option("--masquerade-bit", type=int, default=None, help="Mark bit for masquerading (default 14)."),
        click.option("--ip-family", type=click.Choice(["ipv4", "ipv6"]), default=None, help="Which family's rules."),
        click.option("--random-fully/--no-random-fully", default=None, help="MASQUERADE --random-fully support."),
        click.option("--nfacct/--no-nfacct", default=None, help="The kernel has nfacct counters."),
        click.option("--tcp-be-liberal", is_flag=True, default=None, help="The node sets nf_conntrack_tcp_be_liberal."),
        click.option("--localhost-nodeports/--no-localhost-nodeports", default=None, help="iptables.localhostNodePorts."),
        click.option("--strict", is_flag=True, default=None, help="Any reported input problem is fatal (exit 2)."),
        click.option("--config", "config_path", default=None, type=click.Path(),
                     help="A KubeProxyConfiguration file."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def flags_of(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k in SETTING_KEYS:
        v = kwargs.pop(k, None)
        if isinstance(v, tuple):
            v = list(v) or None
        out[k] = v
    return out


def guarded(f: Callable) -> Callable:
    """Turn UsageError (and stray exceptions) into a one-line message and exit 2."""

    @functools.wraps(f)
    def wrapper(*a, **kw):
        try:
            return f(*a, **kw)
        except UsageError as e:
            click.echo(f"rulegen: error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("rulegen: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(0)

    return wrapper


def emit_report(report: Report, strict: bool) -> None:
    for line in report.lines():
        click.echo(line, err=True)
    if strict and report.errors:
        click.echo(f"rulegen: {len(report.errors)} input problem(s) and --strict given", err=True)
        sys.exit(2)


def run_compile(files: tuple[str, ...], flags: dict[str, Any], config_path: str | None,
                cache_file: str | None = None) -> Compiled:
    """Compile FILES and print the report; with CACHE_FILE, re-use the compile cached there."""
    if not files:
        raise UsageError("no input files given (use - for standard input)")
    report = Report()
    if cache_file:
        c = compile_files_cached(list(files), flags, report, config_path, cache_file)
    else:
        c = compile_files(list(files), flags, report, config_path)
    emit_report(report, bool(flags.get("strict")))
    return c


class _LazyGroup(click.Group):
    """Commands beyond `compile` are imported when named, so `rulegen apply` does not load the lab or lint."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from .commands import COMMANDS

        return sorted(set(super().list_commands(ctx)) | {n for n in COMMANDS if _command(n) is not None})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        got = super().get_command(ctx, name)
        if got is None:
            from .commands import COMMANDS

            if name in COMMANDS:
                got = _command(name)
                if got is not None:
                    self.add_command(got)
        return got


def _command(name: str) -> click.Command | None:
    import importlib

    try:
        mod = importlib.import_module(f"rulegen.commands.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"rulegen.commands.{name}":
            return None
        raise
    return mod.command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rulegen")
def main() -> None:
    """Compile Kubernetes Services and EndpointSlices into the rules kube-proxy installs."""


@main.command("compile")
@click.argument("files", nargs=-1)
@settings_options
@click.option("-o", "--output", default=None, help="Write here instead of standard output.")
@click.option("--timings", is_flag=True, help="Per-stage times on stderr.")
@guarded
def compile_cmd(files, output, timings, config_path, **kw):
    """Compile FILES into the payload kube-proxy would write on a full sync."""
    flags = flags_of(kw)
    c = run_compile(files, flags, config_path)
    texts = c.render_files() if output else None
    if texts is not None:
        write_files(output, texts, c)
    elif output:
        text = c.text
        with c.timings.stage("write"):
            try:
                write_atomic(output, text)  # a failed write leaves the previous payload whole
            except OSError as e:
                raise UsageError(f"{output}: cannot write: {e.strerror}") from None
    else:
        text = c.text
        with c.timings.stage("write"):
            sys.stdout.write(text)
            sys.stdout.flush()
    if timings:
        for line in c.timings.lines():
            click.echo(f"timing: {line}", err=True)


def write_files(folder: str, texts: dict[str, str], c: Compiled) -> None:
    """`-o DIR` for a mode whose output is several files (IPVS): DIR is made if missing.

    Each file replaces its old copy in one step; all are rendered before the first is written.
    """
    with c.timings.stage("write"):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"{folder}: not a directory (--mode {c.settings.mode} writes "
                             f"{', '.join(texts)} into a folder)")
        try:
            os.makedirs(folder, exist_ok=True)
            for name, text in texts.items():
                write_atomic(os.path.join(folder, name), text)
        except OSError as e:
            raise UsageError(f"{e.filename or folder}: cannot write: {e.strerror}") from None


def parse_args_line(line: str) -> tuple[dict[str, Any], str | None]:
    """A golden case's `args` file: one line of settings flags → (flags, config path)."""
    argv = shlex.split(line)
    try:
        ctx = compile_cmd.make_context("args", ["-"] + argv, resilient_parsing=False)
    except click.UsageError as e:
        raise UsageError(f"args: {e.format_message()}") from None
    params = dict(ctx.params)
    config = params.pop("config_path", None)
    return flags_of(params), config


if __name__ == "__main__":  # pragma: no cover
    main()
