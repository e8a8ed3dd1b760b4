"""The data-plane backends, one package per kube-proxy mode.

Each backend turns the backend-neutral plan into its own IR (records shaped
like the kernel's objects) and renders that IR to the text its loader eats.
No backend imports another; what they share lives in `rulegen.selection`,
`rulegen.plan` and `rulegen.naming`. One exception until the xtables IR,
renderer and parser move to a neutral package: IPVS mode's iptables glue
uses iptables mode's, imported in `backends/ipvs/xtables.py` only.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..diagnostics import UsageError

# mode → package. Each package has `compile.compile_plan(plan, settings)` → IR
# and `render.render(ir)` → text; a mode whose output is several files also has
# `render.files(ir)` → {file name: text}, which `compile -o DIR` writes.
BACKENDS: dict[str, str] = {
    "iptables": "rulegen.backends.iptables",
    "ipvs": "rulegen.backends.ipvs",
    "nftables": "rulegen.backends.nftables",
}


def get(mode: str) -> tuple[ModuleType, ModuleType]:
    pkg = BACKENDS.get(mode)
    if pkg is None:
        raise UsageError(f"--mode {mode}: not implemented yet in this version of rulegen (available: {', '.join(BACKENDS)})")
    return importlib.import_module(pkg + ".compile"), importlib.import_module(pkg + ".render")
