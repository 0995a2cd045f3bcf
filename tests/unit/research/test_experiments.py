"""The research wing's public API (dasgen.research.experiments) and the experiment scripts that stand on it: the
scripts import no private name of the package, and each still imports."""

from __future__ import annotations

import ast
import importlib.util
import json

import pytest
import torch

from dasgen.config import load_config
from dasgen.research.experiments import flip_sampler, markdown_table, overrides_text, record_run, train_g0_recipe
from helpers import REPO

SCRIPTS = sorted((REPO / "bench").rglob("*.py"))


def private_imports(source: str) -> list[str]:
    """``from dasgen... import _name`` and ``dasgen..._name`` attribute uses of an imported dasgen module."""
    found, modules = [], set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dasgen":
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            modules |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name.startswith("dasgen")}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                and isinstance(node.value, ast.Name) and node.value.id in modules:
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_the_checker_finds_private_names():
    source = "from dasgen.datasets.toy import _sample, appearance\nfrom dasgen.guidance import sampler\nsampler._step()\n"
    assert private_imports(source) == ["dasgen.datasets.toy._sample", "sampler._step"]
    assert private_imports("from dasgen.research.experiments import record_run\nimport os\nos._exit(0)\n") == []


def test_experiment_scripts_use_only_public_names():
    assert any(p.parent.name == "experiments" for p in SCRIPTS)
    bad = {p.relative_to(REPO).as_posix(): private_imports(p.read_text()) for p in SCRIPTS}
    assert not {k: v for k, v in bad.items() if v}


@pytest.mark.parametrize("path", [p for p in SCRIPTS if p.parent.name == "experiments"], ids=lambda p: p.name)
def test_experiment_script_imports(path):
    spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a renamed or removed package function fails here, not in a long run
    assert callable(module.main)


def test_markdown_table_and_overrides_text():
    table = markdown_table(["run", "mIoU"], [["a", 55.2], ["b", 54.0]], "lr")
    assert table.splitlines() == ["| run | mIoU |", "| --- | ---: |", "| a | 55.2 |", "| b | 54.0 |"]
    with pytest.raises(ValueError, match="align"):
        markdown_table(["run", "mIoU"], [], "l")
    assert overrides_text({"sgg.lambda": 40, "ptl.N": 8}) == "sgg.lambda=40, ptl.N=8"
    assert overrides_text({}) == "-"


def test_record_run_keeps_every_run_in_name_order(tmp_path):
    assert [r["name"] for r in record_run(tmp_path / "runs", "b", {"name": "b", "x": 1})] == ["b"]
    rows = record_run(tmp_path / "runs", "a", {"name": "a", "x": 2})
    assert [r["name"] for r in rows] == ["a", "b"]
    rows = record_run(tmp_path / "runs", "b", {"name": "b", "x": 3})  # a rerun replaces its own record
    assert [(r["name"], r["x"]) for r in rows] == [("a", 2), ("b", 3)]
    assert json.loads((tmp_path / "runs" / "b.json").read_text())["x"] == 3


def test_flip_sampler_is_seeded_and_flips_images_with_their_labels():
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    y = torch.arange(2 * 2 * 4).reshape(2, 2, 4)
    sample = flip_sampler(x, y, batch_size=16)
    xb, yb = sample(torch.Generator().manual_seed(0))
    again, _ = sample(torch.Generator().manual_seed(0))
    assert torch.equal(xb, again) and xb.shape == (16, 3, 2, 4) and yb.shape == (16, 2, 4)
    for image, label in zip(xb, yb):
        index = 0 if torch.equal(label, y[0]) or torch.equal(label, y[0].flip(-1)) else 1
        assert torch.equal(image, x[index] if torch.equal(label, y[index]) else x[index].flip(-1))
    flipped = [not torch.equal(label, y[0]) and not torch.equal(label, y[1]) for label in yb]
    assert any(flipped) and not all(flipped)


def test_train_g0_recipe_trains_and_scores_on_target_val(tiny_workspace):
    config = load_config(tiny_workspace / "params.yaml", {"segmenter.source_train.iters": 2})
    x = torch.rand(4, 3, 16, 32) * 2 - 1
    y = torch.randint(0, 19, (4, 16, 32))
    miou, per_class = train_g0_recipe(config, x, y, tiny_workspace)
    assert 0.0 <= miou <= 100.0 and per_class and all(0.0 <= v <= 100.0 for v in per_class.values())
    assert train_g0_recipe(config, x, y, tiny_workspace) == (miou, per_class)  # seeded: the same scores again
