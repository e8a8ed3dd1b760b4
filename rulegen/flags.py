"""The flag tables: the settings flags every compiling command takes, and a golden case's `args` line.

Owns the options of the settings table in README.md (`--mode`, `--hostname`,
`--node-ip`, ...), their translation into the `flags` dict that
`settings.resolve` reads, and `parse_args_line`, which reads a golden case's
`args` file with exactly the options `rulegen compile` accepts, so an
`args` line means what it would mean on the command line. Both the CLI and
`rulegen.golden` import it; it imports neither. `--mode`'s choices are the
registry's modes, read when the command line is parsed.
"""

from __future__ import annotations

import shlex
from typing import Any, Callable

import click

from . import backends
from .diagnostics import UsageError

SETTING_KEYS = (
    "mode", "hostname", "node_ip", "cluster_cidr", "service_cidr", "nodeport_addresses",
    "masquerade_all", "masquerade_bit", "ip_family", "random_fully", "nfacct",
    "tcp_be_liberal", "localhost_nodeports", "strict", "allocate",
)


class ModeChoice(click.Choice):
    """`--mode`: one of the registry's modes, as they are when the command line is read."""

    def __init__(self) -> None:
        super().__init__(backends.modes())

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return backends.modes()

    @choices.setter
    def choices(self, value: Any) -> None:
        pass  # always the registry's


def settings_options(f: Callable) -> Callable:
    """The settings table of README.md, shared by every command that compiles."""
    opts = [
        click.option("--mode", type=ModeChoice(), default=None,
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
        click.option("--allocate", is_flag=True, default=None,
                     help="Manifests not yet applied: cluster IPs, node ports and EndpointSlices from the "
                          "workloads, as the API server and controllers would make them (docs/allocate.md)."),
        click.option("--config", "config_path", default=None, type=click.Path(),
                     help="A KubeProxyConfiguration file."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def compile_options(f: Callable) -> Callable:
    """`rulegen compile`'s own options (after the settings)."""
    opts = [
        click.option("-o", "--output", default=None, help="Write here instead of standard output."),
        click.option("--timings", is_flag=True, help="Per-stage times on stderr."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON object on stdout: the payload (or, with -o, its path and size), "
                          "counts and warnings."),
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


@click.command("args")
@click.argument("files", nargs=-1)
@settings_options
@compile_options
def _args_command(**kw: Any) -> None:
    """The compile command's options, to read an `args` line with (never run)."""


def parse_args_line(line: str) -> tuple[dict[str, Any], str | None]:
    """A golden case's `args` file: one line of settings flags → (flags, config path)."""
    argv = shlex.split(line)
    try:
        ctx = _args_command.make_context("args", ["-"] + argv, resilient_parsing=False)
    except click.UsageError as e:
        raise UsageError(f"args: {e.format_message()}") from None
    params = dict(ctx.params)
    config = params.pop("config_path", None)
    return flags_of(params), config
