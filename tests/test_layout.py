"""The layout a newcomer reads (issue 19): pipeline/ as stage packages in the order data flows, short functions,
and no unfilled placeholder in README.md or docs/.

Stages, earliest first: core -> data -> model -> train -> evaluate -> report, with the recipe (finetune.py) and the
command line (__main__.py) on top. A module may import its own stage and earlier ones, never a later one: not at
module level and not inside a function either (a lazy import is still an arrow the reader has to know about).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.test_import_graph import import_graph

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("core", "data", "model", "train", "evaluate", "report")
MAX_MODULES = 12
MAX_FUNCTION_LINES = 80


def stage_of(module: str) -> int:
    """0..5 for a stage package's modules, 6 for the top (pipeline/__main__.py, finetune.py)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in STAGES:
        return STAGES.index(parts[1])
    return len(STAGES)


def upward_imports(graph: dict[str, dict[str, str]]) -> list[str]:
    found = []
    for module, edges in sorted(graph.items()):
        if not module.startswith("pipeline"):
            continue
        for target, where in sorted(edges.items()):
            if target.startswith("pipeline.") and stage_of(target) > stage_of(module):
                found.append(f"{where}: {module} ({STAGES[stage_of(module)] if stage_of(module) < 6 else 'top'}) "
                             f"imports {target}, a later stage")
    return found


def test_no_stage_imports_a_later_stage():
    assert not upward_imports(import_graph(ROOT)), "\n".join(upward_imports(import_graph(ROOT)))


def test_the_stage_check_sees_an_upward_import():
    graph = {"pipeline.data.x": {"pipeline.train.loop": "pipeline/data/x.py:3", "pipeline.core.errors": "y:1"}}
    assert upward_imports(graph) == ["pipeline/data/x.py:3: pipeline.data.x (data) imports pipeline.train.loop, "
                                     "a later stage"]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_package_says_its_job_and_what_it_may_import(stage):
    init = ROOT / "pipeline" / stage / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert doc.startswith(f"{stage}: "), f"{init}: the docstring's first words name the stage and its job"
    assert "May import:" in doc, f"{init}: the docstring must say what the package may import"
    modules = [p for p in init.parent.glob("*.py") if p.name != "__init__.py"]
    assert 0 < len(modules) <= MAX_MODULES, f"{init.parent}: {len(modules)} modules (at most {MAX_MODULES})"


def test_the_pipeline_top_holds_only_the_recipe_and_the_command_line():
    top = sorted(p.name for p in (ROOT / "pipeline").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "finetune.py"], top


def long_functions(folder: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - first + 1 > limit:
                    found.append(f"{path.relative_to(folder.parent)}:{node.lineno} {node.name}() is "
                                 f"{node.end_lineno - first + 1} lines")
    return found


@pytest.mark.parametrize("folder", ["pipeline", "checks", "provision"])
def test_no_function_is_longer_than_80_lines(folder):
    assert not long_functions(ROOT / folder), "split these: " + "; ".join(long_functions(ROOT / folder))


def test_the_length_check_sees_a_long_function(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n" + "".join(f"    x{i} = {i}\n" for i in range(85)))
    assert long_functions(tmp_path, 80) and not long_functions(tmp_path, 90)


# --- placeholders ---------------------------------------------------------------------------------------------

# A table cell that is nothing but an unquoted ALL_CAPS_NAME (a template slot such as DIST_ROW), a marker word
# (TODO, TBD, FIXME, XXX) outside code, or a {{ template }} outside code blocks.
_CELL_SLOT = re.compile(r"\|\s*([A-Z][A-Z0-9]*_[A-Z0-9_]+)\s*(?=\|)")
_MARKER = re.compile(r"\b(TODO|TBD|FIXME|XXX)\b|\{\{[^}]*\}\}")
_INLINE_CODE = re.compile(r"`[^`]*`")


def placeholders(text: str, name: str) -> list[str]:
    found, in_code = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        prose = _INLINE_CODE.sub("``", line)
        for match in [*_CELL_SLOT.finditer(prose), *_MARKER.finditer(prose)]:
            found.append(f"{name}:{number}: {match.group(0).strip(' |')}")
    return found


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_readme_and_docs_have_no_unfilled_placeholder():
    found = [hit for path in _docs() for hit in placeholders(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "unfilled placeholders:\n" + "\n".join(found)


def test_the_placeholder_check_sees_what_it_is_for():
    text = ("| several GPUs | DIST_ROW | x |\n| a | `KIT_VENDOR` | b |\nsee TODO here\n```\nTODO in code\n```\n"
            "{{ version }}\n")
    assert placeholders(text, "f") == ["f:1: DIST_ROW", "f:3: TODO", "f:7: {{ version }}"]
