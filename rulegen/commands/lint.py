"""`rulegen lint FILES... [settings] [--json]`: what will break Service traffic, with codes and fixes.

Parses options, runs `rulegen.lint.lint_files`, prints the findings (text
via templates/lint.j2, or a JSON list) and sets the exit status: 1 when any
finding is an error, 0 otherwise, 2 for unusable input or arguments.
"""

from __future__ import annotations

import json
import shutil
import sys

import click

from ..cli import emit_report, guarded
from ..diagnostics import Report
from ..flags import flags_of, settings_options
from ..lint import check_codes, lint_files, parse_nodeport_range
from ..lint.report import render_text, to_json
from ..lint.versions import from_flags


def _scope(linted) -> dict[str, str]:
    s = linted.settings
    inp = linted.inputs
    node = f"node {s.hostname}" if s.hostname else "no node given: node-local checks skipped"
    counts = f"{len(inp.services)} Services, {len(inp.slices)} EndpointSlices"
    if inp.pods:
        counts += f", {len(inp.pods)} Pods"
    if inp.workloads:
        counts += f", {len(inp.workloads)} workloads"
    return {"node": node, "counts": counts, "family": f"IPv{s.family}"}


@click.command("lint")
@click.argument("files", nargs=-1)
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {code, severity, object, message, hint}.")
@click.option("--service-node-port-range", "nodeport_range", default="30000-32767", show_default=True,
              help="The apiserver's node-port range (FROM-TO or FROM+SIZE).")
@click.option("--ignore", multiple=True, metavar="CODE",
              help="Leave out findings with this code (repeatable, or comma-separated).")
@click.option("--kernel-version", default=None, metavar="VERSION",
              help="The node's kernel (uname -r), for mode requirements (default: the Node's "
                   "status.nodeInfo.kernelVersion).")
@click.option("--nft-version", default=None, metavar="VERSION",
              help="The node's nft (nft --version), for nftables mode's requirement.")
@click.option("--rules", "rules_path", default=None, metavar="DUMP",
              help="A node's iptables-save (with --mode nftables its `nft list ruleset`; with --mode ipvs a folder "
                   "of the node's ipvsadm -Sn, ipset save and iptables-save as ipvsadm.rules, ipset.rules, "
                   "iptables.rules): report the rules outside kube-proxy's chains or table that shadow Service "
                   "traffic (RG901-RG916); FILES then optional (the expected rules come from their compile, else "
                   "from the dump's own kube-proxy rules).")
@click.option("--ipsets", "ipsets_path", default=None, metavar="SAVED_SETS",
              help="The node's `ipset save`, to decide the dump's `-m set` matches (with --mode ipvs, in place of "
                   "the folder's ipset.rules).")
@guarded
def command(files, as_json, nodeport_range, ignore, kernel_version, nft_version, rules_path, ipsets_path,
            config_path, **kw):
    """Check FILES for what will break Service traffic; exit 1 when any finding is an error.

    \b
    rulegen lint cluster.yaml
    rulegen lint --rules node.save --ipsets node.ipsets --node-ip 192.168.56.10
    rulegen lint cluster.yaml --rules node.save
    rulegen lint --mode ipvs cluster.yaml --rules node-dump/
    rulegen lint --mode nftables cluster.yaml --rules ruleset.nft
    """
    flags = flags_of(kw)
    rng = parse_nodeport_range(nodeport_range)
    skip = check_codes(ignore)
    versions = from_flags(kernel_version, nft_version)
    report = Report()
    linted = lint_files(list(files), flags, report, config_path, rng, skip, versions, rules_path, ipsets_path)
    emit_report(report, bool(flags.get("strict")))
    if as_json:
        click.echo(json.dumps(to_json(linted.findings), indent=2))
    else:
        width = shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty() else None
        click.echo(render_text(linted.findings, _scope(linted), width), nl=False)
    sys.exit(1 if linted.has_errors else 0)
