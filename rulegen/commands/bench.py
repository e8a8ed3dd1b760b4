"""`rulegen bench`: generate realistic clusters and run the scale benchmark against its budgets.

`rulegen bench gen` writes a seeded cluster of N Services × E endpoints as
YAML or JSON; `rulegen bench run` times the pipeline on such clusters
against the floors and checks the budgets (exit 1 when one fails). The
work lives in `rulegen.bench`; this module only parses options.
"""

from __future__ import annotations

import sys

import click

from ..bench import gen, nftload
from ..bench import run as runmod
from ..cli import guarded
from ..diagnostics import UsageError
from ..flags import ModeChoice


@click.group("bench")
def command() -> None:
    """Benchmark rulegen at cluster scale."""


@command.command("gen")
@click.option("--services", "-n", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Number of Services.")
@click.option("--endpoints", "-e", type=click.IntRange(min=0), default=10, show_default=True,
              help="Endpoints per Service.")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default=None,
              help="Output format (default: from the -o suffix, else yaml).")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same cluster.")
@click.option("-o", "--output", default=None, help="Write here instead of standard output.")
@guarded
def gen_cmd(services, endpoints, fmt, seed, output):
    """Write a deterministic cluster: Services, EndpointSlices, the Node and a KubeProxyConfiguration."""
    if fmt is None:
        fmt = "json" if output and output.endswith(".json") else "yaml"
    objs = gen.generate(services, endpoints, seed)
    if output and output != "-":
        try:
            with open(output, "w") as f:
                gen.write(objs, fmt, f)
        except OSError as e:
            raise UsageError(f"{output}: cannot write: {e.strerror}") from None
    else:
        gen.write(objs, fmt, sys.stdout)
        sys.stdout.flush()


def _sizes(ctx, param, value: str) -> list[int]:
    try:
        sizes = [int(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise click.BadParameter("give one or more positive numbers, e.g. 100,1000")
    return sizes


@command.command("run")
@click.option("--sizes", default=",".join(map(str, runmod.DEFAULT_SIZES)), show_default=True, callback=_sizes,
              help="Service counts, comma-separated.")
@click.option("--endpoints", "-e", type=click.IntRange(min=1), default=10, show_default=True,
              help="Endpoints per Service.")
@click.option("--mode", "modes", multiple=True, type=ModeChoice(),
              help=f"Mode(s) to measure (default: {', '.join(runmod.MODES)}).")
@click.option("--repeat", "-r", type=click.IntRange(min=1), default=runmod.DEFAULT_REPEAT, show_default=True,
              help="Runs per measurement; the median time is reported (the floors: the fastest).")
@click.option("--quick", is_flag=True, help="Sizes 100,1000 and one run each (budgets needing 10k are skipped).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("-o", "--output", default="bench-results.md", show_default=True,
              help="Also write the Markdown report here ('' for nowhere).")
@click.option("--workdir", default=None, help="Keep the generated inputs and payloads in this directory.")
@click.option("--clock", type=click.Choice(list(runmod.CLOCKS)), default="cpu", show_default=True,
              help="Process CPU time (steady on a shared machine) or wall-clock time.")
@guarded
def run_cmd(sizes, endpoints, modes, repeat, quick, seed, output, workdir, clock):
    """Time load / plan+compile / render against the floors and check the budgets (README.md, Performance)."""
    if quick:
        sizes, repeat = [100, 1000], 1
    try:
        text, ok = runmod.run(sizes, endpoints, list(modes) or None, repeat, seed, output or None, workdir,
                              clock=clock)
    except RuntimeError as e:
        raise UsageError(str(e)) from None
    click.echo(text)
    if output:
        click.echo(f"(written to {output})", err=True)
    sys.exit(0 if ok else 1)


@command.command("nftables", context_settings={"ignore_unknown_options": True, "help_option_names": []},
                 add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def nftables_cmd(args):
    """nftables load: the naive `nft -f` against rulegen's first apply and endpoint changes (root; --help)."""
    sys.exit(nftload.main(list(args), prog="rulegen bench nftables"))
