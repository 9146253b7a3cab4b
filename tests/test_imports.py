"""The project's modules import each other without circles.

The graph is read with `ast` from pipelines/**/*.py (nothing is imported, so it takes milliseconds) and
counts every import of a project module, at module top or inside a function: an import moved into a
function hides a circle from Python but not from the reader. Importing a submodule is an edge to that
module only (its package's __init__ runs too, but a package importing its own submodules is no circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "pipelines"
PACKAGE = PACKAGE_DIR.name


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py under `root` (the conf link holds configs, not code)."""
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))
            if "conf" not in path.relative_to(root).parts}


def imported_modules(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The project modules an import statement anywhere in `tree` names, relative ones resolved.

    `from a import b` names module a.b when that is a module, else module a (b is defined in it)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            names.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
    return {name for name in names if name in modules and name != module}


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(parts + ([node.module] if node.module else []))


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = project_modules(root)
    return {module: imported_modules(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py",
                                     set(modules))
            for module, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle as [a, b, ..., a], or None: depth-first search keeping the path being walked."""
    done: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        cycle = _walk(start, graph, path, done)
        if cycle:
            return cycle
    return None


def _walk(module: str, graph: dict[str, set[str]], path: list[str], done: set[str]) -> list[str] | None:
    if module in path:
        return path[path.index(module):] + [module]
    if module in done:
        return None
    path.append(module)
    for target in sorted(graph[module]):
        cycle = _walk(target, graph, path, done)
        if cycle:
            return cycle
    path.pop()
    done.add(module)
    return None


def test_the_project_has_no_import_cycles():
    cycle = find_cycle(import_graph(PACKAGE_DIR))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_graph_sees_the_project_modules_and_their_imports():
    graph = import_graph(PACKAGE_DIR)
    assert f"{PACKAGE}.run" in graph and f"{PACKAGE}.quantize.compat" in graph
    assert f"{PACKAGE}.config" in graph[f"{PACKAGE}.run"]


@pytest.fixture
def package(tmp_path):
    """A throwaway package `pkg` to write modules into: name -> source."""
    root = tmp_path / "pkg"

    def write(**sources: str) -> Path:
        for name, source in sources.items():
            path = root / (name.replace(".", "/") + ".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        return root

    return write


def test_a_circle_hidden_inside_a_function_is_found_and_named(package):
    root = package(__init__="", a="from pkg import b\n", b="def f():\n    from pkg.a import g\n")
    assert find_cycle(import_graph(root)) == ["pkg.a", "pkg.b", "pkg.a"]


def test_a_relative_import_in_a_subpackage_counts(package):
    root = package(**{"__init__": "", "sub.__init__": "from .x import y\n", "sub.x": "from .. import top\n",
                      "top": "import pkg.sub\n"})
    assert find_cycle(import_graph(root)) == ["pkg.sub", "pkg.sub.x", "pkg.top", "pkg.sub"]


def test_imports_that_go_one_way_are_no_circle(package):
    root = package(__init__="from pkg.a import f\n", a="import os\nfrom pkg import b\n", b="import json\n")
    assert find_cycle(import_graph(root)) is None
