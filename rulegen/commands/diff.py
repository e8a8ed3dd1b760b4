"""`rulegen diff`: compare two rule files, or compiled FILES with a saved dump or a live namespace.

`rulegen diff OLD NEW` parses two saved files of one mode (`-` for
standard input, once): iptables-save / iptables-restore files, nftables
scripts and `nft list` output, or IPVS mode's output (the combined file, or
a folder holding ipvsadm.rules, ipset.rules and iptables.rules, as
`compile -o DIR` writes them and as a node's `ipvsadm -Sn`, `ipset save`
and `iptables-save` are saved). Without `--mode`, OLD's text picks the mode
whose view recognises it (a view's `sniff`), else the default; files that
mode cannot read are tried with every other mode's view, and the one mode
that reads both is used. `rulegen diff FILES... --against SAVED` and
`rulegen diff FILES... --netns NAME` compile FILES with the settings and
compare the payload with SAVED or with the namespace's `iptables-save`. The
old side is OLD, SAVED or the live namespace; the new side is NEW or the
compiled payload. Against a dump, the comparison keeps to kube-proxy's part
(KUBE-* chains and the built-in chains' jumps into them) and the compiled
side gets kube-proxy's jump rules when the dump has such jumps (always for
`--netns`), so what a live node shows and what kube-proxy would write line
up; one line then counts what was left out (`outside_line`: the built-in
chains' other rules, the chains and, on an IPVS node, the ipsets that are
not kube-proxy's; nftables mode words its own), and `--all` compares it
too. The files are read, and laid out for the neutral comparison
(`rulegen.diff`), by the mode's diff view (`backends.require(mode,
"diff_view")`; OLD NEW as the mode --mode names or OLD's text shows). Text output via
templates/diff.j2 (coloured on a terminal), `--json` for tools. Exit 1
when they differ, 0 when equal, 2 for unusable input.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Any

import click

from .. import backends
from ..cli import guarded, run_compile
from ..diagnostics import UsageError
from ..diff import DiffResult, compare, render_text
from ..flags import flags_of, settings_options


def _read(view: Any, path: str, ip_family: str | None) -> tuple[Any, str]:
    try:
        return view.read(path, ip_family)
    except UsageError as e:
        if path.endswith((".yaml", ".yml", ".json")):
            raise UsageError(f"{e} (a Kubernetes file? compile and compare with "
                             f"`rulegen diff FILES... --against SAVED` or `--netns NAME`)") from None
        raise


def _mode_of(path: str) -> str:
    """The mode whose diff view recognises PATH's text (a view's optional `sniff`), else the default mode.

    Standard input is not peeked at: it is read once, as --mode (or the default) says.
    """
    if path == "-":
        return backends.DEFAULT_MODE
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return backends.DEFAULT_MODE  # the view's read names the problem (a folder, for IPVS mode, too)
    for mode in backends.modes():
        view = backends.get(mode).diff_view()
        sniff = getattr(view, "sniff", None)
        if sniff is not None and sniff(head):
            return mode
    return backends.DEFAULT_MODE


def _read_pair(args: tuple[str, ...], mode: str | None, ip_family: str | None) -> tuple[Any, tuple, tuple]:
    """OLD and NEW read by MODE's view; with no MODE, by the view OLD's text names (else the default's),
    else by the one other view that reads both."""
    first = mode or _mode_of(args[0])
    view = backends.require(first, "diff_view")
    try:
        return view, _read(view, args[0], ip_family), _read(view, args[1], ip_family)
    except UsageError:
        if mode is not None or "-" in args:  # standard input can be read once only
            raise
        readers = []
        for other in backends.modes():
            v = backends.get(other).diff_view()
            if other == first or v is None:
                continue
            try:
                readers.append((v, _read(v, args[0], ip_family), _read(v, args[1], ip_family)))
            except UsageError:
                continue
        if len(readers) == 1:
            return readers[0]
        raise


def _compare_files(args: tuple[str, ...], flags: dict, kube_only: bool | None) -> DiffResult:
    if len(args) != 2:
        raise UsageError("give two rule files OLD NEW, or Kubernetes FILES with --against SAVED or --netns NAME")
    if args.count("-") > 1:
        raise UsageError("only one of OLD and NEW can be - (standard input)")
    extra = [k for k, v in flags.items() if v is not None and k not in ("ip_family", "mode")]
    if extra:
        opt = "--" + extra[0].replace("_", "-")
        raise UsageError(f"{opt} applies only when compiling (with --against or --netns)")
    view, (old, old_name), (new, new_name) = _read_pair(args, flags.get("mode"), flags.get("ip_family"))
    kube = bool(kube_only)
    res = compare(view.side(old, old_name, kube), view.side(new, new_name, kube))
    return _with_outside_note(res, view, ((old, old_name), (new, new_name)) if kube else ())


def _with_outside_note(res: DiffResult, view: Any, sides) -> DiffResult:
    """One line per side that holds rules outside the mode's own chains that the comparison left out."""
    count = getattr(view, "outside_rules", None)
    note = getattr(view, "outside_note", None)
    notes = []
    for ir, name in sides if note is not None else ():
        line = note(ir, name)
        if line:
            notes.append(line)
    for ir, name in sides if count is not None else ():
        line = outside_line(name, *count(ir))
        if line:
            notes.append(line)
    return replace(res, notes=tuple(notes)) if notes else res


def outside_line(name: str, builtin: int, chains: int, sets: int = 0) -> str | None:
    """The one line for what a kube-only comparison left out of NAME: rules in the built-in chains that are
    not kube-proxy's jumps, chains (and, on an IPVS node, ipsets) that are not kube-proxy's; None for nothing."""
    if not (builtin or chains or sets):
        return None
    others = f"{chains} chain(s)" + (f" and {sets} ipset(s)" if sets else "")
    return (f"{name}: {builtin} rule(s) outside kube-proxy's in the built-in chains, and {others} "
            "not kube-proxy's, are not compared (--all shows them)")


def _compare_compiled(files: tuple[str, ...], netns: str | None, against: str | None, flags: dict,
                      config_path: str | None, kube_only: bool | None, jumps: bool | None) -> DiffResult:
    if against == "-" and "-" in files:
        raise UsageError("only one of FILES and --against can be - (standard input)")
    first = flags.get("mode") or backends.DEFAULT_MODE
    view = backends.require(first, "diff_view")  # a mode without a view fails before the compile work
    unread: UsageError | None = None
    if against is not None:  # a bad SAVED file fails before the compile work, when --mode names the mode
        try:
            old, old_name = _read(view, against, None)
        except UsageError as e:
            if flags.get("mode"):
                raise
            unread = e  # the configuration among FILES may choose a mode that reads it
    c = run_compile(files, flags, config_path)
    if c.settings.mode != first:  # the configuration chose another mode
        view = backends.require(c.settings.mode, "diff_view")
        if against is not None:
            old, old_name = _read(view, against, None)
    elif unread is not None:
        raise unread
    fam = c.settings.family
    narrow = getattr(view, "for_family", None)  # a saved state of both families, narrowed to the compiled one
    if against is not None and narrow is not None:
        old = narrow(old, fam)
    if netns is not None:
        from ..apply.kernel import Kernel

        old, old_name = view.live(Kernel.real(), netns, fam)
        add_jumps = True if jumps is None else jumps
    else:
        add_jumps = view.has_outside(old) if jumps is None else jumps
    new = view.with_outside(c.ir, c.settings) if add_jumps else c.ir
    new_name = "compiled from " + " ".join(files) + (" + kube-proxy's jump rules" if add_jumps else "")
    kube = True if kube_only is None else kube_only
    res = compare(view.side(old, old_name, kube), view.side(new, new_name, kube))
    return _with_outside_note(res, view, ((old, old_name),) if kube else ())


@click.command("diff")
@click.argument("args", nargs=-1, metavar="OLD NEW | FILES...")
@click.option("--netns", default=None, metavar="NAME",
              help="Compare compiled FILES with this network namespace's live rules: iptables-save, nft list "
                   "table with --mode nftables, the IPVS state with --mode ipvs (needs root).")
@click.option("--against", default=None, metavar="SAVED",
              help="Compare compiled FILES with this saved file: iptables-save / iptables-restore text; with "
                   "--mode nftables an nft script or nft list output; with --mode ipvs a combined file or a "
                   "folder of ipvsadm.rules, ipset.rules, iptables.rules.")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@click.option("--color/--no-color", default=None, help="Colour the output (default: when stdout is a terminal).")
@click.option("--kube-only/--all-chains", " /--all", default=None,
              help="Compare only KUBE-* chains and the built-in chains' jumps into them "
                   "(default: on with --netns/--against, off for OLD NEW), and count the rest in one line; --all "
                   "(or --all-chains) compares the CNI's, Docker's and the firewall's rules (and, in IPVS mode, "
                   "ipsets) too.")
@click.option("--jumps/--no-jumps", default=None,
              help="Add kube-proxy's jump rules from the built-in chains to the compiled side "
                   "(default: with --netns, and with --against when SAVED has such jumps).")
@click.option("--summary", is_flag=True, help="Only the chain headings and counts, no rule lines.")
@guarded
def command(args, netns, against, as_json, color, kube_only, jumps, summary, config_path, **kw):
    """Semantic diff per table and chain: rules added (+), removed (-) and moved (~).

    \b
    rulegen diff OLD NEW                      two rule files (- for stdin)
    rulegen diff FILES... --against SAVED     compiled FILES vs a saved dump
    rulegen diff FILES... --netns NAME        compiled FILES vs a live namespace

    In nftables mode, chains are compared rule by rule, sets and maps as
    sets of elements. In IPVS mode, virtual servers, their real servers and
    set entries are compared as sets, the glue's chains rule by rule; SAVED
    (and OLD, NEW) may be a folder of ipvsadm.rules, ipset.rules and
    iptables.rules.

    Exit 1 when they differ, 0 when they are equal, 2 for unusable input.
    """
    flags = flags_of(kw)
    if netns is not None and against is not None:
        raise UsageError("give either --netns or --against, not both")
    if netns is None and against is None:
        if config_path:
            raise UsageError("--config applies only when compiling (with --against or --netns)")
        if jumps is not None:
            raise UsageError("--jumps/--no-jumps applies only when compiling (with --against or --netns)")
        res = _compare_files(args, flags, kube_only)
    else:
        res = _compare_compiled(args, netns, against, flags, config_path, kube_only, jumps)
    if res.old_family != res.new_family:
        click.echo(f"rulegen: warning: {res.old_name} holds IPv{res.old_family} rules, {res.new_name} "
                   f"IPv{res.new_family} (see --ip-family)", err=True)
    if as_json:
        click.echo(json.dumps(res.to_json(), indent=2))
    else:
        use_color = sys.stdout.isatty() if color is None else color
        click.echo(render_text(res, color=use_color, rules=not summary), nl=False, color=use_color)
    sys.exit(0 if res.empty else 1)
