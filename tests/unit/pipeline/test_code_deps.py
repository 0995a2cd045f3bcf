"""Stage code deps are the import closure: derived statically, checked against what each stage loads at run time."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from dasgen.config import Config, load_config
from dasgen.pipeline.code_deps import (PACKAGE_DIR, STAGE_ENTRIES, code_sha256, import_closure, imported_modules,
                                      stage_code_deps)
from dasgen.pipeline.dvc_yaml import build_pipeline, render_pipeline

from helpers import REPO
from helpers.forkserver import shared_server


def test_imports_inside_functions_relative_and_submodules_are_found():
    source = textwrap.dedent("""
        import os
        from dasgen.config import Config
        import dasgen.labels as labels
        from . import sibling
        from ..diffusion import schedule

        def run():
            from dasgen.guidance.sampler import translate
            import numpy
    """)
    found = imported_modules(source, "dasgen.stages.example", is_package=False)
    assert {"dasgen.config", "dasgen.labels", "dasgen.stages.sibling", "dasgen.diffusion.schedule",
            "dasgen.guidance.sampler"} <= found
    assert not any(name.startswith(("os", "numpy")) for name in found)


def test_closure_is_transitive_and_includes_parent_packages(tmp_path):
    pkg = tmp_path / "dasgen"
    (pkg / "maths").mkdir(parents=True)
    (pkg / "stages").mkdir()
    for init in (pkg / "__init__.py", pkg / "maths" / "__init__.py", pkg / "stages" / "__init__.py"):
        init.write_text("")
    (pkg / "stages" / "one.py").write_text("def run():\n    from dasgen.maths.step import mean\n")
    (pkg / "maths" / "step.py").write_text("from .table import BETAS\nmean = 1\n")
    (pkg / "maths" / "table.py").write_text("BETAS = []\n")
    (pkg / "maths" / "unused.py").write_text("")
    files = {p.relative_to(tmp_path).as_posix() for p in import_closure(("dasgen.stages.one",), pkg)}
    assert files == {"dasgen/__init__.py", "dasgen/stages/__init__.py", "dasgen/stages/one.py",
                     "dasgen/maths/__init__.py", "dasgen/maths/step.py", "dasgen/maths/table.py"}


def test_domain_stages_depend_on_the_reverse_step_maths_and_everything_they_import():
    stages = build_pipeline(Config())["stages"]
    for name in [s for s in stages if s.startswith("domain")]:
        deps = set(stages[name]["deps"])
        for needed in ("dasgen/diffusion/schedule.py", "dasgen/diffusion/unet.py", "dasgen/seeding.py",
                       "dasgen/datasets/io.py", "dasgen/datasets/pairs.py", "dasgen/labels.py", "dasgen/config.py",
                       "dasgen/guidance/sampler.py", "dasgen/pipeline/common.py"):
            assert needed in deps, (name, needed)
        assert "dasgen/diffusion/train.py" not in deps  # only what the stage imports: DDPM training is not
    assert "dasgen/labels.py" in stages["toy"]["deps"]
    assert "dasgen/diffusion/schedule.py" in stages["train_g0"]["deps"]


def test_shipped_dvc_yaml_has_no_anchors():
    text = (REPO / "dvc.yaml").read_text()
    assert "&id" not in text and "*id" not in text
    assert yaml.safe_load(text) == yaml.safe_load(render_pipeline(load_config(REPO / "params.yaml")))


STAGE_RUNNER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    root, out, stage = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    from dasgen.config import load_config
    config = load_config(root / "params.yaml")
    if stage != "toy":  # the toy stage takes a root, not a Workspace
        from dasgen.pipeline.workspace import Workspace
        ws = Workspace(root)
    if stage == "toy":
        from dasgen.stages.toy import run_toy; run_toy(config, root=root, out=root / "toy-again", progress=False)
    elif stage == "scan":
        from dasgen.stages.scan import run_scan; run_scan(config, ws)
    elif stage == "train_diffusion":
        from dasgen.stages.train_diffusion import run_train_diffusion; run_train_diffusion(config, ws, progress=False)
    elif stage == "train_g0":
        from dasgen.stages.train_g0 import run_train_g0; run_train_g0(config, ws, progress=False)
    elif stage == "domain":  # as `dasgen translate --domains 1-2` does
        from dasgen.pipeline.common import parse_domain_range
        from dasgen.stages.translate import run_domain
        for n in parse_domain_range("1-2", config.ptl.N):
            run_domain(config, ws, n, progress=False)
    elif stage == "summarize":
        from dasgen.stages.summarize import run_summary; run_summary(config, ws)
    elif stage == "export":
        from dasgen.stages.export import run_export; run_export(config, ws, force=True, progress=False)
    loaded = sorted(m.__file__ for name, m in list(sys.modules.items())
                    if (name == "dasgen" or name.startswith("dasgen.")) and getattr(m, "__file__", None))
    (out / f"{stage}.json").write_text(json.dumps(loaded))
""")


@pytest.mark.slow
def test_every_module_a_stage_loads_at_run_time_is_a_listed_dep(workspace, tmp_path):
    """Run each stage in a process of its own that has loaded no dasgen module (forked from a server that imported
    only torch and diffusers), on the tiny workspace; every dasgen file it loaded must be a dep."""
    stages = build_pipeline(load_config(workspace / "params.yaml"))["stages"]
    deps_of = {"domain": set(stages["domain_001"]["deps"])}
    deps_of |= {name: set(stages[name]["deps"]) for name in STAGE_ENTRIES if name != "domain"}
    for stage in ("toy", "scan", "train_diffusion", "train_g0", "domain", "summarize", "export"):
        code, output = shared_server().run(["stage-runner", str(workspace), str(tmp_path), stage],
                                           log=tmp_path / f"{stage}.log", source=STAGE_RUNNER, cwd=REPO)
        assert code == 0, output[-2000:]
        loaded = {Path(f).resolve().relative_to(REPO).as_posix()
                  for f in json.loads((tmp_path / f"{stage}.json").read_text())}
        missing = loaded - deps_of[stage]
        assert not missing, f"stage {stage} loads modules its dvc.yaml deps do not list: {sorted(missing)}"
        assert set(stage_code_deps(stage)) <= deps_of[stage]


@pytest.mark.parametrize("edit, same", [
    (lambda text: text + "\n# a comment at the end\n", True),
    (lambda text: text.replace('"""Training the segmenter', '"""Training (reworded) the segmenter', 1), True),
    (lambda text: text.replace("def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:",
                               "def cross_entropy(\n    logits: torch.Tensor,\n    labels: torch.Tensor,\n)"
                               " -> torch.Tensor:  # reformatted", 1), True),
    (lambda text: text.replace('reduction="sum")', 'reduction="sum") * 1.0', 1), False),
])
def test_code_hash_ignores_comments_docstrings_and_layout_but_not_code(tmp_path, edit, same):
    """The resume fingerprints hold the code by its meaning: DVC re-runs a stage after any byte changes, and the
    stage then finds its finished work valid unless what it computes changed."""
    package = tmp_path / "dasgen"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_sha256("train_g0", package)
    target = package / "segment" / "train.py"
    edited = edit(target.read_text())
    assert edited != target.read_text()  # the edit applied
    target.write_text(edited)
    code_sha256.cache_clear()
    import_closure.cache_clear()
    assert (code_sha256("train_g0", package) == before) is same
    assert code_sha256("train_g0", package) != code_sha256("train_diffusion", package)  # each stage its own code


@pytest.mark.parametrize("module", ["config.py", "progress.py", "pipeline/live.py", "io/lock.py"])
def test_params_parsing_progress_metrics_and_locks_are_not_code_hashed(tmp_path, module):
    """Params values enter every fingerprint themselves (a new option in config.py keeps finished work), and how
    progress is shown, metrics logged or directories locked changes no result."""
    package = tmp_path / "dasgen"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_sha256("train_g0", package)
    assert (package / module) in import_closure(STAGE_ENTRIES["train_g0"], package)  # it is in the closure ...
    (package / module).write_text((package / module).read_text() + "\nNEW_NAME = 1\n")
    code_sha256.cache_clear()
    assert code_sha256("train_g0", package) == before  # ... and yet not hashed
