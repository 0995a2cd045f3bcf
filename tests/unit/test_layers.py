"""Imports run downward only: cli -> (research, planning, commands) -> stages -> pipeline -> (the library packages)
-> (io, seeding, progress) -> (labels, config) -> errors, as docs/CONVENTIONS.md draws it.

Read from the source with ``ast`` (module-level and function-level imports alike), so a lazy import inside a
function cannot hide an arrow that runs back up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dasgen

PACKAGE = Path(dasgen.__file__).parent

# a unit (a subpackage, or a top-level module) may import a unit of a lower layer
LAYERS = [
    {"errors"},
    {"labels", "config"},
    {"io", "seeding", "progress"},
    {"diffusion", "guidance", "segment", "artifact", "export", "datasets"},
    {"pipeline"},
    {"stages"},
    {"research", "planning", "commands"},
    {"cli"},
    {"__main__"},
]
# the only imports allowed inside one layer: the maths of the reverse step is shared, an export reads an artifact
SIDEWAYS = {("guidance", "diffusion"), ("segment", "diffusion"), ("export", "artifact")}
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str | None:
    """``dasgen.export.card`` -> ``export``; ``dasgen`` itself (the version) -> None; other packages -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "dasgen" and len(parts) > 1 else None


def imported_units(source: str) -> set[str]:
    """The dasgen units a module's source imports (absolute imports; dasgen uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "dasgen" else [f"dasgen.{a.name}" for a in node.names]
            found |= {unit for unit in map(unit_of, names) if unit}
        elif isinstance(node, ast.Import):
            found |= {unit for unit in (unit_of(a.name) for a in node.names) if unit}
    return found


def wrong_way(source_unit: str, source: str) -> list[str]:
    """The imports of one module that run sideways (not listed) or back up."""
    bad = []
    for target in sorted(imported_units(source) - {source_unit}):
        if RANK[target] > RANK[source_unit] or (RANK[target] == RANK[source_unit]
                                                 and (source_unit, target) not in SIDEWAYS):
            bad.append(f"{source_unit} -> {target}")
    return bad


def package_modules() -> list[tuple[str, Path]]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel == Path("__init__.py"):
            continue
        modules.append((rel.parts[0].removesuffix(".py"), path))
    return modules


def test_every_unit_has_a_layer():
    """A new subpackage must be placed in the drawing before it can be checked."""
    assert {unit for unit, _ in package_modules()} <= set(RANK)


def test_imports_run_downward():
    bad = [f"{path.relative_to(PACKAGE.parent)}: {arrow}"
           for unit, path in package_modules() for arrow in wrong_way(unit, path.read_text(encoding="utf-8"))]
    assert not bad, "imports that run against the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("source_unit, line, arrow", [
    ("artifact", "from dasgen.export.card import MANIFEST_FILE", "artifact -> export"),
    ("io", "def f():\n    from dasgen.pipeline import workspace", "io -> pipeline"),
    ("diffusion", "import dasgen.guidance.sgg", "diffusion -> guidance"),
    ("stages", "from dasgen import cli", "stages -> cli"),
])
def test_a_wrong_way_import_is_caught(source_unit, line, arrow):
    assert wrong_way(source_unit, line) == [arrow]


def test_downward_and_listed_sideways_imports_pass():
    assert wrong_way("export", "from dasgen.artifact.schema import MANIFEST_FILE\nimport dasgen.io.png") == []
