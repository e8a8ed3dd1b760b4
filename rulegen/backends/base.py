"""The contract every data-plane backend meets: what a mode supplies, hook by hook.

A backend is one kube-proxy mode (iptables, ipvs, nftables, ...). It owns
the step from the backend-neutral plan to its own IR (records shaped like
the kernel's objects) and back from text to that IR; everything above it
(the pipeline, golden, and the generic halves of apply, diff and trace)
reaches it only through this class and the registry in
`rulegen.backends`, never by importing a mode's package. A new mode is a
new package whose `__init__` defines `BACKEND`, plus one line in
`backends.REGISTRY`.

Required of every mode: `compile`, `render` and `parse` (its saved or
listed form back to the IR, so golden, diff and trace read what a node
dumps). Optional, each returning None until the mode has it: `incremental`,
`applier`, `tracer`, `diff_view`. Lint asks each mode where it takes
NodePorts (`nodeport_ips`) and for the checks only it needs
(`lint_checks`). A command that needs a missing hook gets it through `backends.require`, which is the one place that says
"--mode M: apply is not implemented yet" (exit 2).

The hooks are called once per command, never per rule: a hot loop stays
inside the backend. Each backend's `__init__` imports nothing heavy, so
asking the registry about a mode (the CLI's choices, lint's capability
flags) does not load its compiler; the hooks import their modules when
called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from ..apply.kernel import Kernel
    from ..apply.result import ApplyResult
    from ..compiled import Compiled, Timings
    from ..diagnostics import Report
    from ..diff.model import Side
    from ..plan import Plan
    from ..settings import Settings
    from ..trace.model import TraceResult

IR = TypeVar("IR")


class Backend(Generic[IR]):
    """One mode. Subclasses set the class attributes and override the hooks they have."""

    mode: str = ""  # the --mode value (and the `mode` of a KubeProxyConfiguration)
    output: str = ""  # what `compile` prints, for help texts: "iptables-restore payload"
    writes_files: bool = False  # `compile -o DIR` writes several files (`render_files`)
    # Does this mode answer NodePorts on 127.0.0.1 (route_localnet)? Only iptables
    # mode does; lint's exposure check asks.
    localhost_nodeports: bool = False
    # The KubeProxyConfiguration section whose masqueradeAll / masqueradeBit the
    # mode's proxier reads, and whether it reads ipvs.scheduler (settings asks).
    masquerade_section: str = "iptables"
    reads_scheduler: bool = False
    # Is a NodePort without (external) endpoints rejected or dropped on every
    # local address, whatever nodePortAddresses says? iptables mode's filter
    # rule matches `--dst-type LOCAL`; nftables mode looks only at
    # @nodeport-ips, so elsewhere nothing listens. The lab's plan asks.
    no_endpoint_nodeports_on_every_address: bool = True

    def traits(self) -> dict[str, Any]:
        """What this mode does where kube-proxy's modes differ: cause id → `rulegen.traits.Trait`.

        `rulegen migrate` names and explains differences with them. Read from
        the `TRAITS` dict of the mode package's `traits` module, found by
        name as `BACKEND` is, so a mode adds them without touching its
        `__init__`; a mode without that module describes nothing (migrate
        then explains with the other mode's words, or not at all).
        """
        import importlib

        name = f"{type(self).__module__}.traits"
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            return {}
        return dict(mod.TRAITS)

    # ------------------------------------------------------------ required

    def compile(self, plan: Plan, settings: Settings) -> IR:
        """Plan → IR for the plan's family, without changing the plan (every record frozen)."""
        raise NotImplementedError

    def render(self, ir: IR) -> str:
        """IR → the one text `rulegen compile` prints (what the mode's loader eats, or its sections)."""
        raise NotImplementedError

    def render_files(self, ir: IR) -> dict[str, str]:
        """IR → {file name: text}, for a mode with `writes_files` (IPVS: ipvsadm, ipset, iptables)."""
        raise NotImplementedError

    def parse(self, text: str, source: str = "<input>", family: int | None = None) -> IR:
        """`render`'s text, or the mode's dump of a live node, → IR; a UsageError names SOURCE and line.

        FAMILY is a hint for texts that do not say theirs. `parse(render(ir))`
        must give IR back exactly (each mode has a round-trip test).
        """
        raise NotImplementedError

    def counts(self, ir: IR) -> dict[str, dict[str, int]]:
        """`compile --json`'s per-table counts ({table: {"chains": n, "rules": n}}); {} when not tables."""
        return {}

    # ------------------------------------------------------------ what lint, migrate and the lab ask of a mode

    def nodeport_ips(self, settings: Settings, fam: int) -> tuple[bool, tuple[str, ...]]:
        """(every local address, else these addresses): where this mode takes NodePorts on the node of SETTINGS.

        Lint, migrate and the lab's plan ask it.

        kube-proxy's GetNodeIPs over nodePortAddresses, as this mode's
        proxier reads it (an unset nodePortAddresses is "every address" for
        iptables and IPVS mode, the primary node IP for nftables mode).
        """
        return settings.nodeport_ips(fam)

    # ------------------------------------------------------------ optional: None until the mode has it

    def incremental(self) -> Incremental | None:
        """The compile that re-uses the last one for unchanged Services (`rulegen apply`'s cache)."""
        return None

    def applier(self) -> Applier | None:
        """What loads a compile into a network namespace (`rulegen apply`, the lab)."""
        return None

    def tracer(self) -> Tracer | None:
        """What follows one connection through the mode's objects (`rulegen trace`, the lab)."""
        return None

    def diff_view(self) -> DiffView | None:
        """What lays the mode's IR out for `rulegen diff`'s neutral comparison."""
        return None

    def node_linter(self) -> Any:
        """What finds the rules of a node's dump that get in this mode's way (`rulegen lint --rules`), or None.

        `lint(dump_path, ipsets_path, settings, plan, from_files)` returns
        lint `Finding`s (codes RG901-RG919); FROM_FILES says the expected
        rules come from a compile of the plan rather than the dump itself.
        """
        return None

    def lab_probes(self, compiled: Any, probes: list[Any], requests: int, notes: list[str]) -> list[Any]:
        """The lab's probes (`lab.probes.Probe`) with this mode's expectations.

        The lab plans each access path's outcome by kube-proxy's iptables
        logic; a mode whose kernel objects behave otherwise returns the
        probes corrected (`dataclasses.replace`; REQUESTS is what a path
        that answers gets), and may add a line to NOTES.
        """
        return probes

    def lint_checks(self) -> tuple[Any, ...]:
        """Lint checks only this mode needs (functions of `lint.context.Context` yielding `Finding`s).

        They run after the shared checks, in `rulegen lint` with this mode;
        their codes are in the one table (`lint/findings.py`), so `--ignore`
        and the docs know them whatever the mode.
        """
        return ()


class Incremental(Protocol):
    """A compile that re-uses the cached compile of every Service whose inputs did not change.

    The iptables mode caches per Service its rules in the shared chains and
    the hash of each chain of its own (backends/iptables/incremental.py).
    A mode that adds one keeps the same promise: its result renders to
    exactly the text a full compile gives (tests compare the two), and a
    cache it cannot trust is ignored, never half-used.
    """

    def compile_cached(self, paths: list[str], flags: dict[str, Any], report: Report, timings: Timings,
                       config_path: str | None, cache_file: str | None,
                       warn: list[str] | None) -> Compiled | None:
        """Compile PATHS re-using CACHE_FILE; None when the settings resolve to another mode.

        The result's `save_cache(path, warn)` writes the new cache; the caller
        calls it once the result is used (after a successful apply). A cache
        file that cannot be used is said in WARN.
        """
        ...


class Applier(Protocol):
    """Brings one network namespace to a compile's objects, sending only what changed.

    `rulegen.apply.apply` owns what every mode shares and calls `apply`
    inside it: the namespace name check, root, the namespace's lock, making
    the namespace (`--create`), the state directory and its pruning, and
    the total time. The applier owns the rest, under these rules:

    - Never lose what the user had: a refused load leaves the previous
      objects in place (roll back what was sent), and an input with no
      Service is refused before any applier runs.
    - Kernel access goes only through the clients in KERNEL
      (`rulegen.apply.kernel.Kernel`: `netns` for namespaces, identity,
      sysctl and the nf_tables generation; `xtables`, `nft`, and for IPVS
      mode the ipvs, ipset and link clients), so every applier runs on the
      fakes without root.
    - A cache of what it left (its `state_files`, in
      `state_dir/NETNS/`) may spare reading the live state only when the
      kernel proves it fresh: same namespace identity and, where the data
      plane has one, the nf_tables generation the cache was written at
      (`dataplane/xtables/sync.py` shows the pattern). Otherwise read the
      live state and compare.
    - `dry_run`: compute and report what would be sent (`result.payload`),
      send nothing.

    What comes next, concretely: the nftables applier sends `nft -f`
    scripts through `kernel.nft` (a phased first load that adds the base
    chains last, then small diff-based updates), with its state cache
    proven fresh by the generation; the IPVS applier programs the
    kube-ipvs0 link and its addresses, the IPVS virtual and real servers,
    `ipset restore`s the sets, and loads its iptables glue with
    `dataplane.xtables.sync` (the shared xtables applier iptables mode
    uses, with IPVS mode's jumps and stale-chain rules).
    """

    state_files: tuple[str, ...]  # file names it keeps in a namespace's state folder (pruning deletes these)

    # Optional: `preflight(compiled, kernel)`, called before the namespace is
    # made (`--create`) or anything else changes, raises a UsageError when the
    # mode cannot work in this kernel at all (IPVS mode without ip_vs).
    # Optional: `tools` (programs the mode's apply runs, which `rulegen lab`
    # checks for) and `payload` (what it loads, in the lab's words).

    def apply(self, compiled: Compiled, netns: str, kernel: Kernel, *, dry_run: bool,
              state_dir: str | None) -> ApplyResult:
        ...


class Tracer(Protocol):
    """Follows one new connection through a mode's objects as the kernel would.

    The neutral half lives in `rulegen.trace`: the records (`TraceResult`,
    `Path`, `Hop`), where the packet enters and what its destination is
    (`trace.entry`), folding paths into destinations, and the rendering.
    A tracer walks its own objects (xtables chains, nft chains and maps,
    IPVS virtual servers then the glue) and must fail loudly (`TraceError`
    naming the rule) on anything it does not understand on the packet's
    way, never guess.
    """

    def trace_compiled(self, compiled: Compiled, src: str | None, dst_ip: str, dst_port: int,
                       proto: str = "tcp", **kw: Any) -> TraceResult:
        """Trace a full compile, plus what kube-proxy installs outside its payload (jumps, hooks)."""
        ...

    def read(self, path: str, ip_family: str | None) -> tuple[Any, str]:
        """A saved file of the mode (`trace --rules`) → (IR, name to show)."""
        ...

    def trace_saved(self, ir: Any, settings: Settings, src: str | None, dst_ip: str, dst_port: int,
                    proto: str = "tcp", **kw: Any) -> TraceResult:
        """Trace IR read from a saved file (kw: plan, source, in_iface, out_iface, pod_cidrs)."""
        ...


class DiffView(Protocol):
    """Lays a mode's IR out as neutral containers for `rulegen.diff`.

    Ordered containers (xtables and nft chains: their rules, in order) are
    compared with moves found by a longest increasing subsequence;
    unordered ones (set and map elements, IPVS virtual servers and their
    real servers) by membership. Items are compared by the view's canonical
    form, so spelling the kernel changes on the way back never shows.
    """

    def read(self, path: str, ip_family: str | None) -> tuple[Any, str]:
        """A saved file (`diff --against SAVED`, `diff OLD NEW`) → (IR, name to show)."""
        ...

    def live(self, kernel: Kernel, netns: str, family: int) -> tuple[Any, str]:
        """The namespace's live state (`diff --netns`) → (IR, name to show)."""
        ...

    def side(self, ir: Any, name: str, kube_only: bool) -> Side:
        """IR → one side of the comparison; KUBE_ONLY keeps kube-proxy's part of a node."""
        ...

    def has_outside(self, ir: Any) -> bool:
        """Does IR (a node's dump) hold what kube-proxy installs outside its payload (jumps)?"""
        ...

    def with_outside(self, ir: Any, settings: Settings) -> Any:
        """IR plus what kube-proxy installs outside its payload, placed as kube-proxy places it."""
        ...

    # Optional (asked with getattr; a view without them is used as it is):
    #
    # sniff(text) -> bool: does TEXT (a file's first 4 KiB) look like this mode's saved file?
    #     `rulegen diff OLD NEW` without --mode reads the files as the first mode whose view says yes.
    # for_family(ir, family) -> IR: a saved file's IR narrowed to a compile's address family, for a
    #     mode whose saved state may hold both (an `nft list ruleset` of a dual-stack node; IPVS and
    #     ipset keep one table for both): `diff --against` narrows the saved side to the compiled family.
