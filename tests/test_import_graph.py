"""The first-party import graph has no loop (issue 8): each module can be read, tested and moved on its own.

Every import counts, also one inside a function: a loop hidden in a function body is still a loop (it is how
checks/ had one, platform_check -> access -> platform_check). Only imports under ``if TYPE_CHECKING:`` are left
out, since they never run. An edge goes to the module named (``from checks.core import X`` -> checks.core,
``from checks import access`` -> checks.access when that is a module); importing a submodule does not count as
an edge to its package's ``__init__``.
"""

from __future__ import annotations

import ast
import graphlib
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "checks", "kit", "provision")

Edges = dict[str, dict[str, str]]  # module -> {imported module: "file:line" of the first such import}


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """{dotted module name: file} for every .py file under the packages."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes anywhere in the tree (function bodies included), except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children = node.orelse
        stack.extend(children)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    def first_party(dotted: str) -> str | None:
        """The module itself, or the nearest enclosing first-party module (``import a.b`` where a.b is a name)."""
        parts = dotted.split(".")
        while parts:
            if ".".join(parts) in known:
                return ".".join(parts)
            parts.pop()
        return None

    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            anchor = package[: len(package) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    return {target for name in names if (target := first_party(name)) and target != module}


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> Edges:
    files = module_files(root, packages)
    known = set(files)
    graph: Edges = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = graph.setdefault(module, {})
        for node in _imports(tree):
            for target in _targets(node, module, path.name == "__init__.py", known):
                where = f"{path.relative_to(root)}:{node.lineno}"
                edges[target] = min(edges.get(target, where), where, key=lambda w: int(w.rsplit(":", 1)[1]))
    return graph


def find_cycle(graph: Edges) -> list[str]:
    """One import loop as [a, b, ..., a], or [] when the graph has none."""
    try:
        graphlib.TopologicalSorter({m: set(deps) for m, deps in graph.items()}).prepare()
    except graphlib.CycleError as exc:
        # graphlib lists the loop against the edge direction (each node is a dependency of the one before it).
        return list(reversed(exc.args[1]))
    return []


def describe(graph: Edges, cycle: list[str]) -> str:
    return "\n".join(f"  {a} imports {b} ({graph[a][b]})" for a, b in itertools.pairwise(cycle))


def test_first_party_packages_have_no_import_loop():
    graph = import_graph(ROOT)
    assert {m.split(".")[0] for m in graph} == set(PACKAGES), "a package folder is missing or empty"
    cycle = find_cycle(graph)
    assert not cycle, "import loop (move the shared piece into a module both can import):\n" + describe(graph, cycle)


# --- the detector itself must find what it is meant to find -----------------------------------------------------

def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_loop_hidden_in_a_function_body_is_found(tmp_path):
    write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import helper\n",
        "pkg/b.py": "def helper():\n    from pkg import a\n    return a\n",
        "pkg/c.py": "import json\nfrom . import a\n",
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.c"] == {"pkg.a": "pkg/c.py:2"}  # relative import resolved, stdlib left out
    cycle = find_cycle(graph)
    assert set(cycle) == {"pkg.a", "pkg.b"} and cycle[0] == cycle[-1]
    assert "pkg.b imports pkg.a (pkg/b.py:2)" in describe(graph, cycle)


@pytest.mark.parametrize("guard", ["TYPE_CHECKING", "typing.TYPE_CHECKING"])
def test_type_checking_imports_are_not_edges(tmp_path, guard):
    write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": f"import typing\nfrom typing import TYPE_CHECKING\nif {guard}:\n    from pkg.a import X\n"
                    "else:\n    import pkg.c\n",
        "pkg/c.py": "",
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.b"] == {"pkg.c": "pkg/b.py:6"}
    assert find_cycle(graph) == []
