"""The registry of data-plane backends: mode name → `Backend`, and the one list of modes.

Each mode is one package under `rulegen/backends/` whose `__init__`
defines `BACKEND` (a `base.Backend`). `REGISTRY` is the only place modes
are listed: the CLI's `--mode` choices, the settings' validation and the
configuration loader all read `modes()`. Packages are imported when a
mode is first asked for, so naming the modes costs nothing.

No backend imports another, and nothing outside this package imports a
particular backend (tests/core/test_architecture.py checks both): what
two modes share lives below them, in `rulegen.plan`, `rulegen.naming`,
`rulegen.selection` and `rulegen.dataplane` (the xtables IR, parser,
renderer and applier that IPVS mode's iptables glue uses too).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..diagnostics import UsageError

if TYPE_CHECKING:
    from .base import Backend

DEFAULT_MODE = "iptables"

# mode → the package that defines BACKEND
REGISTRY: dict[str, str] = {
    "iptables": "rulegen.backends.iptables",
    "ipvs": "rulegen.backends.ipvs",
    "nftables": "rulegen.backends.nftables",
}

_LOADED: dict[str, Backend] = {}

# What `require` names each optional hook, in its message.
HOOKS = {"applier": "apply", "tracer": "trace", "diff_view": "diff", "incremental": "the incremental compile"}


def modes() -> tuple[str, ...]:
    """Every mode, in registry order."""
    return tuple(REGISTRY)


def register(mode: str, package: str | Backend) -> None:
    """Add a mode: a package name that defines BACKEND, or a Backend object (tests' toy backend)."""
    if isinstance(package, str):
        REGISTRY[mode] = package
        _LOADED.pop(mode, None)
    else:
        REGISTRY[mode] = f"<{type(package).__name__}>"
        _LOADED[mode] = package


def unregister(mode: str) -> None:
    REGISTRY.pop(mode, None)
    _LOADED.pop(mode, None)


def get(mode: str) -> Backend:
    """The backend of MODE; UsageError (exit 2) for a mode rulegen does not have."""
    b = _LOADED.get(mode)
    if b is not None:
        return b
    pkg = REGISTRY.get(mode)
    if pkg is None:
        raise UsageError(f"--mode {mode}: not implemented yet in this version of rulegen "
                         f"(available: {', '.join(REGISTRY)})")
    b = _LOADED[mode] = importlib.import_module(pkg).BACKEND
    return b


def require(mode: str, hook: str) -> Any:
    """The optional HOOK ("applier", "tracer", "diff_view", "incremental") of MODE.

    The one place a command learns that a mode lacks what it needs: a
    UsageError, "--mode nftables: apply is not implemented yet", naming the
    modes that have it.
    """
    got = getattr(get(mode), hook)()
    if got is None:
        have = [m for m in REGISTRY if getattr(get(m), hook)() is not None]
        raise UsageError(f"--mode {mode}: {HOOKS[hook]} is not implemented yet"
                         + (f" (implemented for: {', '.join(have)})" if have else ""))
    return got


def other_mode_hint(e: UsageError, path: str, mode: str) -> UsageError:
    """E, with a hint when PATH was read as MODE's file but another mode's diff view recognises it (`sniff`)."""
    if path == "-":
        return e
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return e
    for other in modes():
        if other == mode:
            continue
        view = get(other).diff_view()
        sniff = getattr(view, "sniff", None)
        if sniff is not None and sniff(head):
            return UsageError(f"{e} (this is an {other} ruleset or script: add --mode {other})")
    return e
