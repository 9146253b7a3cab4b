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


# Third-party modules a project module imports inside the function that needs them, never at its top:
# each costs 0.5 s or more to import on the 2-core CI machine (statsmodels 1.0 s, scipy.stats 0.7 s,
# torch and lm-eval several seconds) or is an extra that may not be installed. `--cfg job`,
# `plan=true` and a bad-input error must answer without paying for them.
DEFERRED_LIBRARIES = {
    "torch", "transformers", "accelerate", "datasets", "lm_eval", "llmcompressor", "compressed_tensors",
    "mlflow", "plotly", "matplotlib", "scipy", "statsmodels", "pandas",
    # extras and libraries' own dependencies, not quantgate's: absent unless their extra is installed
    "gptqmodel", "optimum", "guidellm", "vllm", "psycopg", "loguru",
    # reads HF_HUB_OFFLINE and HF_HOME once, when first imported: models.offline_environment sets them first
    "huggingface_hub",
    "safetensors.torch",  # imports torch
}


def is_deferred(library: str) -> bool:
    """`library` (a dotted module name) is one of DEFERRED_LIBRARIES or inside one."""
    return any(library == name or library.startswith(name + ".") for name in DEFERRED_LIBRARIES)


def top_level_imports(tree: ast.Module, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """What the module's own body imports (TYPE_CHECKING blocks excluded): project modules and library roots."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for statement in node.body if isinstance(node, ast.Try) else [node]:
            names |= _targets(statement, module, is_package, modules)
    return names


def _targets(node: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom):
        base = _absolute(node, module, is_package)
        if base not in modules and not base.startswith(PACKAGE):
            return {base}
        return {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return set()


def deferred_reach(root: Path) -> dict[str, set[str]]:
    """Module -> the deferred libraries importing it loads (its top-level imports, its packages', transitively)."""
    modules = project_modules(root)
    top = {name: top_level_imports(ast.parse(path.read_text()), name, path.name == "__init__.py", set(modules))
           for name, path in modules.items()}
    for name in modules:  # importing pkg.sub runs pkg/__init__ first
        top[name] |= {parent for parent in _parents(name) if parent in modules}
    reach: dict[str, set[str]] = {}

    def visit(name: str, seen: frozenset[str]) -> set[str]:
        if name not in reach:
            found = {lib for lib in top[name] if lib not in modules and is_deferred(lib)}
            for target in top[name] & set(modules) - seen:
                found |= visit(target, seen | {name})
            reach[name] = found
        return reach[name]

    for name in modules:
        visit(name, frozenset())
    return reach


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def misplaced_imports(root: Path) -> list[str]:
    """Imports inside functions that belong at the module's top: of a light library, or of a project
    module that loads no deferred library, or of one that does but without a comment saying which."""
    modules, reach, found = project_modules(root), deferred_reach(root), []
    for name, path in modules.items():
        source = path.read_text()
        lines, tree = source.splitlines(), ast.parse(source)
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in (n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))):
                for target in _targets(node, name, path.name == "__init__.py", set(modules)):
                    problem = _misplaced(target, reach, reach[name], _says_why(lines, node))
                    if problem:
                        found.append(f"{path.relative_to(root.parent)}:{node.lineno} {target}: {problem}")
    return sorted(set(found))


def _misplaced(target: str, reach: dict[str, set[str]], loaded: set[str], says_why: bool) -> str | None:
    """Why an import of `target` inside a function of a module whose top already loads `loaded` is misplaced."""
    if target not in reach:
        return None if is_deferred(target) else "a light library: import it at the module's top"
    if not reach[target]:
        return "loads no heavy library: import it at the module's top"
    if reach[target] <= loaded:
        return "loads nothing the module's own imports do not: import it at the module's top"
    return None if says_why else f"loads {', '.join(sorted(reach[target]))}: say so in a comment beside it"


def _says_why(lines: list[str], node: ast.stmt) -> bool:
    """A comment on the import's own lines or on the line above it (one comment may head a group)."""
    own = lines[node.lineno - 1:node.end_lineno]
    above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
    return any("#" in line for line in own) or above.startswith("#") or _group_head_says_why(lines, node.lineno - 2)


def _group_head_says_why(lines: list[str], index: int) -> bool:
    """The import is in a run of imports whose first line has the comment above it."""
    while index >= 0 and lines[index].strip().startswith(("import ", "from ")):
        index -= 1
    return index >= 0 and lines[index].strip().startswith("#")


def test_imports_inside_functions_are_deferred_for_a_reason_and_say_which():
    misplaced = misplaced_imports(PACKAGE_DIR)
    assert not misplaced, "\n".join(misplaced)


def test_a_light_import_inside_a_function_is_misplaced_and_a_heavy_one_needs_a_comment(package):
    root = package(__init__="", light="import json\n", heavy="import torch\n",
                   user="def f():\n    import json\n    from pkg import light\n    from pkg import heavy\n"
                        "    # torch: seconds to import\n    from pkg.heavy import g\n    import scipy\n",
                   loaded="import torch\n\ndef f():\n    from pkg import heavy  # torch\n")
    assert misplaced_imports(root) == [
        "pkg/loaded.py:4 pkg.heavy: loads nothing the module's own imports do not: import it at the module's top",
        "pkg/user.py:2 json: a light library: import it at the module's top",
        "pkg/user.py:3 pkg.light: loads no heavy library: import it at the module's top",
        "pkg/user.py:4 pkg.heavy: loads torch: say so in a comment beside it",
    ]


def test_what_a_module_loads_includes_its_package_and_what_its_imports_load(package):
    root = package(**{"__init__": "", "sub.__init__": "import mlflow\n", "sub.x": "import json\n",
                      "y": "from pkg.sub import x\n", "z": "import os\n"})
    reach = deferred_reach(root)
    assert reach["pkg.y"] == {"mlflow"} and reach["pkg.z"] == set()
