"""The pipeline's shape (issue 8): short functions, no import loop, one home for each shim and decision.

These read the source with ``ast`` (and one fresh interpreter per import order), so they run in seconds and fail
with the file, line and name to fix.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipeline"
MAX_LINES = 60
LONG_MARK = "# long:"


def _modules() -> dict[str, Path]:
    """{dotted name: file} for every module of pipeline/ and its stage packages (a package by its name)."""
    found = {}
    for path in sorted(PIPELINE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _has_long_reason(node: ast.FunctionDef, lines: list[str]) -> bool:
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    above = lines[first - 2].strip() if first >= 2 else ""
    if above.startswith(LONG_MARK) and above[len(LONG_MARK):].strip():
        return True
    doc = ast.get_docstring(node, clean=False)
    head = doc.strip().splitlines()[0] if doc and doc.strip() else ""
    return LONG_MARK in head and bool(head.split(LONG_MARK, 1)[1].strip())


def test_no_function_is_longer_than_60_lines_without_a_written_reason() -> None:
    too_long = []
    for path in _modules().values():
        source = path.read_text()
        lines = source.splitlines()
        for node in _functions(ast.parse(source)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            length = node.end_lineno - first + 1
            if length > MAX_LINES and not _has_long_reason(node, lines):
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}() is {length} lines")
    assert not too_long, (
        f"functions over {MAX_LINES} lines: split them, or put '{LONG_MARK} <reason>' on the line above the def: "
        + "; ".join(too_long)
    )


def test_the_length_check_sees_a_long_function_and_accepts_a_reason() -> None:
    # The check itself must be able to fail: a 70-line body without and with a reason.
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    plain = ast.parse(f"def f():\n{body}\n")
    node = next(_functions(plain))
    assert node.end_lineno - node.lineno + 1 > MAX_LINES
    assert not _has_long_reason(node, f"def f():\n{body}\n".splitlines())
    marked = f"# long: one table, splitting it hides the mapping\ndef f():\n{body}\n"
    node = next(_functions(ast.parse(marked)))
    assert _has_long_reason(node, marked.splitlines())
    empty_reason = f"# long:\ndef f():\n{body}\n"
    node = next(_functions(ast.parse(empty_reason)))
    assert not _has_long_reason(node, empty_reason.splitlines())


def _module_level_imports(path: Path, known: set[str]) -> set[str]:
    """pipeline modules imported when ``path`` is imported (its top-level statements, including if/try blocks;
    imports inside functions run later and cannot form a loop at import time)."""
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for stmt in statements:
            if isinstance(stmt, ast.Import):
                found.update(a.name for a in stmt.names if a.name in known)
            elif isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                if stmt.module in known:
                    found.add(stmt.module)
                for alias in stmt.names:  # from pipeline import report
                    if f"{stmt.module}.{alias.name}" in known:
                        found.add(f"{stmt.module}.{alias.name}")
            elif isinstance(stmt, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(stmt, block, []) or [])
                for handler in getattr(stmt, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def dfs(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return []


def test_module_level_imports_of_pipeline_form_no_loop() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _module_level_imports(path, known) - {name} for name, path in modules.items()}
    # A package is imported before any of its submodules; an edge to a package is not a loop among modules.
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    graph = {name: deps - packages for name, deps in graph.items()}
    loop = _cycle(graph)
    assert not loop, "import loop among pipeline modules: " + " -> ".join(loop)
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]  # the detector itself sees a loop


@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_every_pipeline_module_imports_in_a_fresh_interpreter(order: str) -> None:
    names = [n for n in _modules() if n != "pipeline.__main__"] + ["pipeline.__main__"]
    names = sorted(names) if order == "sorted" else sorted(names, reverse=True)
    code = "import importlib\nfor name in %r:\n    importlib.import_module(name)\n" % (names,)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _assignments(name: str) -> list[str]:
    found = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found.append(path.name)
    return found


def _files_mentioning(text: str) -> set[str]:
    return {p.name for p in _modules().values() if text in p.read_text()}


def test_each_shim_and_decision_has_one_home() -> None:
    assert _assignments("IGNORE_INDEX") == ["prompts.py"]
    # The tokenizer-class patch (transformers 4.57 cannot load 5.x's "TokenizersBackend") is written in compat.py only.
    assert _files_mentioning('["tokenizer_class"]') == {"compat.py"}
    assert _files_mentioning("is_activation_checkpointing") == {"compat.py"}
    # The bf16 support decision: precision.py alone asks torch.
    assert _files_mentioning("is_bf16_supported") == {"precision.py"}
    # Atomic writes go through kit/atomic.py: no module renames temporary files or folders itself.
    for text in ("os.replace(", "tempfile.mk"):
        assert _files_mentioning(text) == set(), f"{text} outside kit/atomic.py"
    # Synthetic (random-weight) models are built beside each other in tiny.py, never in model.py.
    assert _assignments("RANDOM_PRESETS") == ["tiny.py"]
    assert "LlamaForCausalLM(" not in (PIPELINE / "model" / "load.py").read_text()


def test_every_compat_shim_names_the_version_it_exists_for() -> None:
    tree = ast.parse((PIPELINE / "core" / "compat.py").read_text())
    shims = [n for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
    assert shims, "pipeline/core/compat.py defines no shims"
    for shim in shims:
        doc = ast.get_docstring(shim) or ""
        assert ("4.57" in doc or "torch 2.3" in doc) and "Delete" in doc, (
            f"pipeline/core/compat.py:{shim.lineno} {shim.name}: its docstring must name the version it exists for and "
            "when to delete it"
        )


def test_finetune_and_evaluate_share_one_report_builder() -> None:
    # __main__'s evaluate and finetune.py's FineTuneRun both call report.build_report; neither spells the schema.
    for name in ("__main__.py", "finetune.py"):
        source = (PIPELINE / name).read_text()
        assert "rep.build_report(" in source, f"pipeline/{name} does not use report.build_report"
        assert '"environment":' not in source, f"pipeline/{name} builds the report's environment by hand"
