"""The layout holds: backends reached only through the registry, none importing another, no import cycle.

Read from the source with `ast` (every import, those inside functions too;
those under `if TYPE_CHECKING:` are annotations only and left out), so the
rules stay true as the code grows:

- no module outside `rulegen/backends/` imports a particular backend
  (`rulegen.backends.<mode>...`); the registry and `backends.base` are
  what the rest may use;
- no backend imports another;
- no import cycle among rulegen's modules;
- outside the backends, no code compares a mode with a mode's name
  (`mode != "iptables"`): what differs between modes is asked of the
  registry.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rulegen import backends

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "rulegen"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        out[name] = p
    return out


MODULES = _modules()


def _tree(path: Path) -> ast.Module:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):  # annotations only: not an import at run time
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            node.body = []
    return tree


def _imports(name: str) -> set[str]:
    """The rulegen modules NAME imports (a package import counts as its __init__)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t.startswith("rulegen") and t != name:
                out.add(t)
    return out


GRAPH = {name: _imports(name) for name in MODULES}
MODES = [m for m in backends.modes() if f"rulegen.backends.{m}" in MODULES]


def _backend_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["rulegen", "backends"] and parts[2] in MODES:
        return parts[2]
    return None


def test_the_graph_is_read():
    assert len(MODULES) > 60 and "rulegen.backends.iptables.compile" in MODULES
    assert "rulegen.dataplane.xtables.model" in GRAPH["rulegen.backends.iptables.compile"]
    assert set(MODES) >= {"iptables", "ipvs", "nftables"}


def outside_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, ts in graph.items() if not m.startswith("rulegen.backends")
                  for t in ts if _backend_of(t))


def cross_backend_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, ts in graph.items() if _backend_of(m)
                  for t in ts if _backend_of(t) and _backend_of(t) != _backend_of(m))


def test_nothing_outside_the_backends_imports_a_backend():
    assert outside_imports(GRAPH) == []


def test_no_backend_imports_another():
    assert cross_backend_imports(GRAPH) == []


def test_the_import_rules_would_catch_a_breach():
    graph = {"rulegen.apply": {"rulegen.backends.iptables.apply", "rulegen.backends.base"},
             "rulegen.backends.ipvs.compile": {"rulegen.backends.iptables.compile", "rulegen.dataplane.xtables.model"},
             "rulegen.backends.iptables.apply": {"rulegen.backends.iptables.compile"}}
    assert outside_imports(graph) == [("rulegen.apply", "rulegen.backends.iptables.apply")]
    assert cross_backend_imports(graph) == [("rulegen.backends.ipvs.compile", "rulegen.backends.iptables.compile")]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _mode_comparisons(path: Path) -> list[int]:
    """Lines of `x.mode == "iptables"`-like comparisons of a mode with a mode's name."""
    names = set(backends.modes())
    out = []
    for node in ast.walk(_tree(path)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        mode_side = any((isinstance(s, ast.Name) and s.id == "mode") or
                        (isinstance(s, ast.Attribute) and s.attr == "mode") for s in sides)
        literal = any(isinstance(s, ast.Constant) and s.value in names for s in sides) or any(
            isinstance(s, (ast.Tuple, ast.List, ast.Set)) and any(
                isinstance(e, ast.Constant) and e.value in names for e in s.elts) for s in sides)
        if mode_side and literal:
            out.append(node.lineno)
    return out


@pytest.mark.parametrize("name", [m for m in MODULES if not m.startswith("rulegen.backends")])
def test_no_mode_is_named_outside_the_backends(name):
    assert _mode_comparisons(MODULES[name]) == []


def test_the_mode_check_would_catch_one(tmp_path):
    src = tmp_path / "x.py"
    src.write_text('def f(c, mode):\n    if c.settings.mode != "iptables":\n        pass\n'
                   '    return mode in ("ipvs", "nftables") or c.kind == "iptables"\n')
    assert _mode_comparisons(src) == [2, 4]
