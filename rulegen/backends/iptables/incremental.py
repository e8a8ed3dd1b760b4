"""The incremental compile: re-use the last compile's work for every Service that did not change.

`rulegen apply` on a 10k-Service cluster after one endpoint change should
not re-parse 20,000 objects and re-compile 558,000 rules to find the 17 that
differ. The rules of one Service (its capture rules in the shared chains and
its own EXT/FW/SVC/SVL/SEP chains) depend only on that Service's objects, the
settings, and whether the cluster is in large-cluster mode; so the cache
keeps, per Service (a *group*: the Service and the EndpointSlices naming it):

- a fingerprint: the hashes of the input units holding its objects, with
  the settings and this code's version;
- what the group compiled to: its rules in the shared chains
  (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-EXTERNAL-SERVICES, ...) and, for each
  chain of its own, the chain name and the hash of its rules.

Input files are cut into units (`rulegen.units`) and every unit is hashed; a
unit the cache has seen is not parsed (the cache knows which groups it feeds).
Groups whose fingerprint matches keep their cached output; the others are
parsed, planned and compiled with the same code as a full compile
(`compile.compile_ports`), then everything is put together in kube-proxy's
order. Apply sees the result as table views (`xtables.model.TableView`): every chain
with its hash, the rules of the shared chains and of the recompiled groups.
When apply needs the rules of a chain the cache knows only by hash (a live
table that differs from what the cache of the last apply says), the whole
cluster is compiled from the units in memory, as a full compile would, and
checked against the incremental result.

Units with problems (reported each run, in place) or with cluster-wide
objects (Node, KubeProxyConfiguration, ServiceCIDR) are parsed every run.
A change of settings, of large-cluster mode, or of this code's version makes
every group dirty.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import TYPE_CHECKING, Any

import msgspec

from ... import __version__
from ... import plan as planmod
from ...compiled import Compiled, Timings
from ...dataplane.xtables.model import Rule, Ruleset, Table, TableView, chain_digest, views
from ...allocate import census, notice_for
from ...diagnostics import Report
from ...files import StateFileError, read_state, write_state
from ...model import Inputs
from ...settings import resolve_settings
from ...units import Unit, read_units
from .compile import NAT_CHAINS, Context, compile_plan, compile_ports, finish, head, is_large

if TYPE_CHECKING:
    from ..base import Backend

# 3: units record how many Services they hold (the empty-input check).
# 4: the loader refuses names the API server refuses; a cache written before holds
# the rules of such objects, so it must not be trusted.
# 5: units record what the not-yet-applied notice counts (`allocate.census`).
FORMAT = 5
NAT_BASE = frozenset(NAT_CHAINS)


class UnitInfo(msgspec.Struct, array_like=True, gc=False):
    docs: int  # documents in the unit (to number the documents after it)
    groups: list[tuple[str, str]]  # (namespace, service) of every group it feeds
    services: int  # Services it holds (an input with none is refused by apply)
    census: tuple[int, int, int, int, int]  # allocate.census of the unit, for the not-yet-applied notice


class Segment(msgspec.Struct, array_like=True, gc=False):
    """One group's compiled output."""

    fp: str
    endpoints: int  # its share of the endpoint total (large-cluster mode)
    nat: list[tuple[str, str]]  # its rules in the nat base chains, in write order
    filter: list[tuple[str, str]]  # its rules in filter (all base chains), in write order
    own: str  # its own nat chains in declaration order, each followed by the hash of its rules,
    # space-separated: one string per group decodes ~10x faster than 2 per chain


class CompileCache(msgspec.Struct):
    format: int
    version: str
    context: str  # settings and large-cluster mode the segments were compiled for
    units: dict[str, UnitInfo]
    groups: list[tuple[str, str, Segment]]  # (namespace, service, its output)


def load_cache(path: str | None, warn: list[str] | None = None) -> CompileCache | None:
    """The compile cache at PATH, or None; a path that is not a usable state file is said in WARN."""
    if not path:
        return None
    try:
        raw = read_state(path)
        if raw is None:
            return None
        c = msgspec.msgpack.decode(raw, type=CompileCache)
    except StateFileError as e:
        if warn is not None:
            warn.append(f"{e}; ignored, everything is compiled")
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if c.format != FORMAT or c.version != __version__:
        return None
    return c


def _fingerprint(*parts: str) -> str:
    return blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()


def _group_fp(digests: list[str]) -> str:
    # Unit names are fixed-length hashes: joined, they name the group's inputs
    # (the settings are checked once for the whole cache, as its context).
    return "".join(digests)


class _Decoded:
    """One parsed unit: its model objects (per-unit Inputs) and whether it can be cached."""

    __slots__ = ("inputs", "docs", "cacheable", "groups")

    def __init__(self, inputs: Inputs, docs: int, cacheable: bool, groups: list[tuple[str, str]]):
        self.inputs, self.docs, self.cacheable, self.groups = inputs, docs, cacheable, groups


def _groups_of(inputs: Inputs) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for s in inputs.services:
        seen[(s.namespace, s.name)] = None
    for sl in inputs.slices:
        if sl.service_name:
            seen[(sl.namespace, sl.service_name)] = None
    return list(seen)


def _decode(unit: Unit, before: int, report: Report) -> _Decoded:
    from ...loader import load_objects

    objects, docs = unit.decode(before)
    n, skipped = len(report.problems), sum(report.skipped.values())
    inputs = load_objects(objects, report)
    # A unit that reports (a problem, or a kind it skips) is read again each run to report again.
    cacheable = (len(report.problems) == n and sum(report.skipped.values()) == skipped
                 and not (inputs.nodes or inputs.configs or inputs.service_cidrs))
    return _Decoded(inputs, docs, cacheable, _groups_of(inputs))


class IncrementalViews:
    """The incremental compile's own form (`Compiled.incremental`): what apply reads of it.

    `views()` are the table views apply compares, most chains known by hash
    only; `full_views()` compiles everything (through `Compiled.ir`) when
    apply needs rules the cache knows only by hash, and checks the two
    agree; `cache` is what to save for the next run (None when the saved
    one still holds).
    """

    def __init__(self, cache: CompileCache | None):
        self._tables: list[TableView] = []
        self.compiled: Compiled | None = None
        self.cache = cache
        self.disagreed = False  # the full compile differed from the incremental one (a bug)

    def views(self) -> list[TableView]:
        return self._tables

    def full_views(self) -> list[TableView]:
        """The whole compile's views, checked against the incremental ones."""
        assert self.compiled is not None
        full = views(self.compiled.ir)
        for mine, theirs in zip(self._tables, full):
            if mine.name != theirs.name or mine.chains != theirs.chains or mine.digests() != theirs.digests():
                self.disagreed = True
        return full

    def save(self, path: str, warn: list[str] | None = None) -> None:
        """Keep this compile for the next run (atomically; a failure only costs time)."""
        if self.cache is None:
            return
        data = msgspec.msgpack.encode(self.cache)
        try:
            write_state(path, data)
        except StateFileError as e:
            if warn is not None:
                warn.append(f"{e}; the compile cache is not kept")
        except OSError:
            pass


class _NatView(TableView):
    """The nat table: base chains from their rules, a group's own chains by cached hash."""

    def __init__(self, base: Table, digests: dict[str, str], specs: dict[str, list[str]],
                 owner: IncrementalViews):
        super().__init__(base)
        by: dict[str, list[str]] = {c: [] for c in NAT_CHAINS}
        for r in base.rules:  # the base chains' rules only; the groups' own are in SPECS or hashed
            by[r.chain].append(r.spec)
        self._by = by
        d = {c: chain_digest(by[c]) for c in NAT_CHAINS}
        d.update(digests)  # every declared chain (order does not matter to apply)
        self._digests = d
        self._own = specs
        self._owner = owner
        self._full: TableView | None = None

    def specs(self, chain: str) -> list[str]:
        if chain in NAT_BASE:
            return self._by.get(chain, [])
        got = self._own.get(chain)
        if got is not None:
            return got
        if chain not in self._digests:
            return []
        if self._full is None:
            self._full = next(v for v in self._owner.full_views() if v.name == self.name)
        return self._full.specs(chain)

    def rules_of(self, chains: list[str]) -> list[Rule]:
        return [Rule(c, s) for c in chains for s in self.specs(c)]


class Incremental:
    """iptables mode's `base.Incremental`: the compile cache in one msgpack file."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def compile_cached(self, paths: list[str], flags: dict[str, Any], report: Report, timings: Timings,
                       config_path: str | None, cache_file: str | None,
                       warn: list[str] | None = None) -> Compiled | None:
        with timings.stage("load-cache"):
            cache = load_cache(cache_file, warn)
        return compile_incremental(paths, flags, report, timings, config_path, cache, self.backend)


def compile_incremental(paths: list[str], flags: dict[str, Any], report: Report, timings: Timings,
                        config_path: str | None, cache: CompileCache | None, backend: Backend) -> Compiled | None:
    """The compile of PATHS re-using CACHE; None when the mode is not iptables (compile in full)."""
    with timings.stage("read"):
        units = read_units(paths)
    known = cache.units if cache is not None else {}

    # Parse what the cache does not know, in input order (so problems come out
    # in order); keep what it knows as hashes.
    decoded: dict[int, _Decoded] = {}
    infos: list[UnitInfo] = []
    befores: list[int] = []  # documents of the same file ahead of each unit
    with timings.stage("parse"):
        before = 0
        last_file = -1
        for i, u in enumerate(units):
            if u.seq != last_file:
                before, last_file = 0, u.seq
            info = known.get(u.digest)
            if info is None:
                d = decoded[i] = _decode(u, before, report)
                info = UnitInfo(d.docs, d.groups, len(d.inputs.services), census(d.inputs))
            infos.append(info)
            befores.append(before)
            before += info.docs
        glob = Inputs([], [], [], [], [], [])
        for d in decoded.values():
            glob.nodes += d.inputs.nodes
            glob.configs += d.inputs.configs
            glob.service_cidrs += d.inputs.service_cidrs
    settings = resolve_settings(glob, flags, report, config_path)
    if settings.mode != backend.mode:
        return None
    note = notice_for(tuple(sum(c) for c in zip(*(info.census for info in infos))) if infos else (0,) * 5)
    if note:
        report.note(note)
    fam = settings.family
    # load_cache has already dropped a cache of another FORMAT or __version__.
    context = _fingerprint(repr(settings))

    members: dict[tuple[str, str], list[int]] = {}
    for i, info in enumerate(infos):
        for g in info.groups:
            members.setdefault(g, []).append(i)
    fps = {g: _group_fp([units[i].digest for i in idx]) for g, idx in members.items()}
    old = ({(ns, name): seg for ns, name, seg in cache.groups}
           if cache is not None and cache.context.startswith(context + ":") else {})
    old_large = cache is not None and cache.context == context + ":large"

    def objects_of(idx: list[int]) -> list[_Decoded]:
        out = []
        for i in idx:
            d = decoded.get(i)
            if d is None:
                # Known to the cache, so it parsed cleanly before: parse it again quietly.
                d = decoded[i] = _decode(units[i], befores[i], Report())
            out.append(d)
        return out

    def plan_group(g: tuple[str, str]) -> planmod.Plan:
        ns, name = g
        mini = Inputs([], [], [], [], [], [])
        for d in objects_of(members[g]):
            mini.services += [s for s in d.inputs.services if s.namespace == ns and s.name == name]
            mini.slices += [s for s in d.inputs.slices if s.namespace == ns and s.service_name == name]
        return planmod.build(mini, settings)

    # Plan the changed groups, then see whether large-cluster mode still holds.
    with timings.stage("plan"):
        order = sorted(fps)  # the plan's order: namespace, then name
        dirty = [g for g in order if g not in old or old[g].fp != fps[g]]
        plans = {g: plan_group(g) for g in dirty}
        total = sum(p.endpoint_total for p in plans.values()) + sum(
            old[g].endpoints for g in fps if g not in plans)
        large = is_large(total)
        if old and large != old_large:
            dirty = order
            plans.update({g: plan_group(g) for g in dirty if g not in plans})
            old = {}

    cx = Context(settings, fam)
    own_specs: dict[str, list[str]] = {}
    groups: dict[tuple[str, str], Segment] = {}
    with timings.stage("compile"):
        for g in dirty:
            p = plans[g]
            nrules: list[Rule] = []
            frules: list[Rule] = []
            nchains: list[str] = []
            compile_ports(p.ports, cx, large, nrules, frules, nchains)
            mine: dict[str, list[str]] = {c: [] for c in nchains}
            shared: list[tuple[str, str]] = []
            for r in nrules:
                if r.chain in NAT_BASE:
                    shared.append(r)
                else:
                    mine.setdefault(r.chain, []).append(r.spec)
            own_specs.update(mine)
            groups[g] = Segment(fps[g], p.endpoint_total, shared, list(frules),
                                " ".join(f"{c} {chain_digest(mine[c])}" for c in nchains))

    with timings.stage("assemble"):
        fchains, frules, nchains, nrules = head(cx, settings)
        own: list[str] = []
        for g in order:
            seg = groups.get(g)
            if seg is None:
                seg = groups[g] = old[g]
            if seg.own:
                own += seg.own.split(" ")
            nrules += [Rule(c, s) for c, s in seg.nat]
            frules += [Rule(c, s) for c, s in seg.filter]
        nchains += own[0::2]
        digests = dict(zip(own[0::2], own[1::2]))
        base = finish(cx, settings, fchains, frules, nchains, nrules)
        unit_infos = {units[i].digest: infos[i] for i in range(len(units))
                      if i not in decoded or decoded[i].cacheable}
        new_cache = CompileCache(FORMAT, __version__, context + (":large" if large else ":small"),
                                 unit_infos, [(ns, name, seg) for (ns, name), seg in groups.items()])
        unchanged = (cache is not None and new_cache.context == cache.context and not dirty
                     and len(unit_infos) == len(cache.units) and len(groups) == len(cache.groups))

    def materialize() -> Ruleset:
        everything = Inputs([], [], [], [], [], [])
        for d in objects_of(list(range(len(units)))):
            for name in ("services", "slices", "nodes", "service_cidrs", "configs", "pods"):
                getattr(everything, name).extend(getattr(d.inputs, name))
        return compile_plan(planmod.build(everything, settings), settings)

    stats = {"units": len(units), "parsed": len(decoded), "groups": len(fps), "compiled": len(dirty)}
    services = sum(len(decoded[i].inputs.services) if i in decoded else infos[i].services
                   for i in range(len(units)))
    form = IncrementalViews(None if unchanged else new_cache)
    out = Compiled(settings, report, timings, backend, services, materialize=materialize, incremental=form,
                   stats=stats, saver=form.save)
    form.compiled = out
    tables: list[TableView] = []
    for t in base.tables:
        tables.append(_NatView(t, digests, own_specs, form) if t.name == "nat" else TableView(t))
    form._tables = tables
    return out
