"""`rulegen apply`'s shared half: what every mode's apply does around its own work.

Owns the lifecycle of one apply into a network namespace: the name check,
root, the namespace's apply lock (`lock`: a second apply waits instead of
reading what the first is changing), making the namespace (`--create`),
calling the mode's applier (`backends.require(mode, "applier")`, the one
place a mode without one is refused), pruning the state of namespaces that
are gone (`state`), and the total time. The appliers own what they send
and how they prove their caches fresh (`backends.base.Applier`); the
kernel is reached only through the `Kernel` bundle's clients, so every
applier runs on the fakes without root.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from .. import backends
from ..compiled import Compiled
from ..diagnostics import UsageError
from ..kernel.netns import check_name
from .kernel import Kernel
from .lock import LOCK_DIR, namespace_lock
from .result import ApplyResult
from .state import COMPILE_CACHE, default_state_dir, prune_state

__all__ = ["apply", "ApplyResult", "Kernel", "COMPILE_CACHE", "default_state_dir", "state_files"]

DEFAULT = object()  # "pick the usual state directory"


def state_files() -> tuple[str, ...]:
    """Every file rulegen keeps in a namespace's state folder: the compile cache and each applier's."""
    out = [COMPILE_CACHE]
    for mode in backends.modes():
        a = backends.get(mode).applier()
        if a is not None:
            out += [f for f in a.state_files if f not in out]
    return tuple(out)


def apply(compiled: Compiled, netns: str, create: bool = False, dry_run: bool = False,
          kernel: Kernel | None = None, state_dir: Any = DEFAULT, backend: str = "auto",
          lock_dir: Any = DEFAULT, lock_timeout: float | None = None,
          notify: Callable[[str], None] | None = None) -> ApplyResult:
    """Bring namespace NETNS to the objects of COMPILED, with the applier of its mode.

    `state_dir` holds the per-namespace caches; None turns them off.
    `backend` ("auto", "nft", "legacy") picks the iptables tools when
    KERNEL is not given. The whole run holds the namespace's apply lock in
    `lock_dir`: by default `lock.LOCK_DIR` when apply reaches the kernel
    itself, none when the caller passes KERNEL (fakes, or the lab's own
    namespaces); `lock_timeout` seconds (None: no limit) before giving up,
    and `notify` hears that it waits.
    """
    t0 = time.perf_counter()
    check_name(netns)
    applier = backends.require(compiled.settings.mode, "applier")
    if lock_dir is DEFAULT:
        lock_dir = LOCK_DIR if kernel is None else None
    kernel = kernel if kernel is not None else Kernel.real(backend)
    kernel.netns.require_root("rulegen apply")
    if state_dir is DEFAULT:
        state_dir = default_state_dir()
    with namespace_lock(netns, lock_dir, lock_timeout, notify):
        preflight = getattr(applier, "preflight", None)
        if preflight is not None:  # a mode that cannot work in this kernel stops before anything is made
            preflight(compiled, kernel)
        created = False
        if not kernel.netns.exists(netns):
            if not create:
                raise UsageError(f"network namespace {netns!r} does not exist (use --create to make it)")
            if not dry_run:
                kernel.netns.create(netns)
                created = True
        t_ready = time.perf_counter()
        res = applier.apply(compiled, netns, kernel, dry_run=dry_run, state_dir=state_dir)
        if not dry_run:
            prune_state(state_dir, kernel.netns, lock_dir, state_files())
    res.created = created
    if created:
        res.timings.insert(0, ("create", t_ready - t0))
    res.seconds = time.perf_counter() - t0
    return res
