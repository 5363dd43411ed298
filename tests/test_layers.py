"""The package layout is the architecture: every module imports only from its own layer or lower ones,
and no two modules import each other (directly or through others)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kdcicam"

# Lowest first. A module in layer i may import from layers 0..i (its own package included).
LAYERS: tuple[str, ...] = (
    "core", "registry", "data", "model", "store", "training", "evaluation", "execution", "analysis", "report", "cli",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    """The layer of ``kdcicam.<layer>...``; None for the top-level package files (``kdcicam``, ``__main__``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _imports(path: Path) -> set[str]:
    """Every kdcicam module ``path`` imports, at any depth of the file (function-local imports count)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("kdcicam"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("kdcicam"))
    return out


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for each import of a module from a higher layer than the importer's."""
    out = []
    for module, targets in graph.items():
        src = _layer(module)
        if src is None:
            continue
        for target in targets:
            dst = _layer(target)
            if dst is not None and LAYERS.index(dst) > LAYERS.index(src):
                out.append(f"{module} ({src}) -> {target} ({dst})")
    return sorted(out)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a cycle of imports."""
    def resolve(target: str) -> str | None:  # "kdcicam.store" is the package's __init__
        return target if target in graph else None

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for t in graph[v]:
            w = resolve(t)
            if w is None or w == v:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_every_package_is_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYERS)
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == {"__init__.py", "__main__.py"}  # every module lives in a layer


def test_every_package_says_what_lives_there():
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text(encoding="utf-8")))
        assert doc, f"kdcicam/{layer}/__init__.py has no docstring"


def test_imports_go_down_the_layers():
    assert layer_violations(_graph()) == []


def test_no_import_cycles():
    assert import_cycles(_graph()) == []


def test_the_checks_catch_what_they_look_for():
    graph = {
        "kdcicam.core.a": {"kdcicam.analysis.b"},  # core importing analysis: upward
        "kdcicam.analysis.b": {"kdcicam.analysis.c"},
        "kdcicam.analysis.c": {"kdcicam.analysis.b", "kdcicam.core.a"},  # b <-> c
    }
    assert layer_violations(graph) == ["kdcicam.core.a (core) -> kdcicam.analysis.b (analysis)"]
    assert import_cycles(graph) == [["kdcicam.analysis.b", "kdcicam.analysis.c", "kdcicam.core.a"]]


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_modules_import(layer):
    """Each package imports on its own (no hidden dependency on import order)."""
    import importlib

    importlib.import_module(f"kdcicam.{layer}")
