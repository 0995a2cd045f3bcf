"""The code a DVC stage runs, derived from its import closure: the ``deps`` DVC hashes to decide what is stale.

A hand-listed dep list goes stale silently: a domain stage that forgets ``diffusion/schedule.py`` keeps serving images
made with the old reverse-step maths after an edit to it. So the list is derived: start from the module(s) a stage's
command calls, parse each file with :mod:`ast`, follow every ``import`` of a dasgen module -- at module level *and*
inside functions, since the CLI and the stages import lazily -- and list every file reached, plus the package
``__init__.py`` files that importing them executes.

Statically derived on purpose: the walk never imports the code it walks, so it is cheap, cannot run side effects, and
sees imports on branches a given run does not take (a stage's code deps must not depend on which branch ran).
``tests/unit/pipeline/test_code_deps.py`` checks the other direction at run time: every dasgen module that a stage actually loads
is listed.

The CLI (``dasgen/cli.py``) is not a dep: each command only parses its options and calls the stage function named in
:data:`STAGE_ENTRIES`, and ``dvc.yaml`` passes no option whose meaning lives in the CLI.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "dasgen"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../dasgen

# stage name in dvc.yaml (the domain stages share one entry) -> the modules its command calls
STAGE_ENTRIES: dict[str, tuple[str, ...]] = {
    "toy": ("dasgen.stages.toy",),
    "scan": ("dasgen.stages.scan",),
    "train_diffusion": ("dasgen.stages.train_diffusion",),
    "train_g0": ("dasgen.stages.train_g0",),
    "domain": ("dasgen.stages.translate", "dasgen.pipeline.distributed"),
    "summarize": ("dasgen.stages.summarize",),
    "export": ("dasgen.stages.export",),
}


# The code whose *meaning* a stage's resume fingerprint holds (:func:`code_sha256`): what computes its weights or
# images. The DDPM's is narrower than its dvc.yaml deps, which also hold the round trip it measures with the guided
# sampler: an edit to guidance re-runs the command (and the round trip) but keeps the trained DDPM.
RESULT_CODE: dict[str, tuple[str, ...]] = {
    "train_diffusion": ("dasgen.diffusion.train", "dasgen.diffusion.unet", "dasgen.datasets.pairs",
                        "dasgen.datasets.registry", "dasgen.pipeline.chains", "dasgen.seeding"),
    "train_g0": STAGE_ENTRIES["train_g0"],
    "domain": STAGE_ENTRIES["domain"],
    "roundtrip": ("dasgen.pipeline.diffusion_fidelity",),  # the DDPM's round trip, kept with its training state
}
# Modules hashed on their own, without what they import: the DDPM stage's file draws the U-Net's initial weights and
# its batches, but it imports the round trip (and so the guided sampler), which its weights do not depend on.
RESULT_CODE_ALONE: dict[str, tuple[str, ...]] = {"train_diffusion": ("dasgen.stages.train_diffusion",)}
# Left out of every code hash: config.py only parses params, and every param value a stage uses is in its fingerprint
# already (a new params key enters it there). The others only show progress, log metrics or lock directories: no
# edit to them can change a weight or a pixel.
NOT_CODE_HASHED = ("config.py", "progress.py", "pipeline/live.py", "io/lock.py")


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source file of dasgen module ``module`` (``a.b`` -> a/b.py or a/b/__init__.py), or None if none exists."""
    parts = module.split(".")
    if parts[0] != package_dir.name:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _containing_package(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def imported_modules(source: str, module: str, is_package: bool, package: str = PACKAGE) -> set[str]:
    """Every ``package`` module named by an import anywhere in ``source`` (the text of ``module``).

    ``from a.b import c`` names ``a.b`` and also ``a.b.c`` (kept only if that is a module: the caller checks).
    Relative imports are resolved against ``module``.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = _containing_package(module, is_package).split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return {name for name in found if name == package or name.startswith(package + ".")}


def _with_parents(module: str) -> list[str]:
    """``a.b.c`` -> [a, a.b, a.b.c]: importing a module executes every parent package's ``__init__``."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@lru_cache(maxsize=None)
def import_closure(entries: tuple[str, ...], package_dir: Path = PACKAGE_DIR) -> frozenset[Path]:
    """The source files of ``entries`` and of every dasgen module they import, transitively (with parent packages)."""
    files: set[Path] = set()
    pending = [name for entry in entries for name in _with_parents(entry)]
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module, package_dir)
        if path is None:
            continue  # ``from pkg import name`` where name is an attribute, not a module
        files.add(path)
        for name in imported_modules(path.read_text(encoding="utf-8"), module, path.name == "__init__.py",
                                     package_dir.name):
            pending.extend(_with_parents(name))
    return frozenset(files)


def stage_code_deps(stage: str, repo_root: Path | None = None) -> list[str]:
    """``stage``'s code deps as sorted POSIX paths relative to the repository root (the directory above dasgen/)."""
    if stage not in STAGE_ENTRIES:
        raise KeyError(f"no code entry for stage {stage!r}; known: {', '.join(STAGE_ENTRIES)}")
    root = repo_root or PACKAGE_DIR.parent
    return sorted(path.relative_to(root).as_posix() for path in import_closure(STAGE_ENTRIES[stage]))


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """``tree`` without the docstring of its module, classes and functions (in place)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def source_meaning(source: str) -> str:
    """A module's syntax tree as text, without docstrings, comments, line numbers or layout: two sources that differ
    only in those give the same text, any other edit a different one."""
    return ast.dump(_strip_docstrings(ast.parse(source)), include_attributes=False)


@lru_cache(maxsize=None)
def code_sha256(stage: str, package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 of the meaning (:func:`source_meaning`) of every module in ``stage``'s :data:`RESULT_CODE` closure and
    of its :data:`RESULT_CODE_ALONE` modules.

    A comment, docstring or reformatting edit leaves it unchanged, so DVC may re-run the stage's command (it hashes
    file bytes) while the stage finds its finished work valid and redoes nothing; a real code change alters it.
    """
    digest = hashlib.sha256()
    alone = {module_file(module, package_dir) for module in RESULT_CODE_ALONE.get(stage, ())}
    for path in sorted(import_closure(RESULT_CODE[stage], package_dir) | alone):
        rel = path.relative_to(package_dir).as_posix()
        if rel in NOT_CODE_HASHED:
            continue
        digest.update(f"{rel}\0{source_meaning(path.read_text(encoding='utf-8'))}\0".encode())
    return digest.hexdigest()
