"""Params and sidecars whose values each pass alone but cannot work together, or that the model cannot be built
from: one line naming the key, before anything runs. The table in docs/bad-inputs.md names these tests."""

from __future__ import annotations

import json

import pytest

from dasgen.pipeline.workspace import Workspace
from dasgen.segment.checkpoint import sidecar_path
from test_bad_inputs import error_line, invoke


@pytest.mark.parametrize("setting, fragment", [
    ("diffusion.train.adam_betas=[1.5, 2]", "diffusion.train.adam_betas: each must lie in [0, 1), got [1.5, 2.0]"),
    ("diffusion.train.adam_betas=[0.9, 1.0]", "diffusion.train.adam_betas: each must lie in [0, 1)"),
    ("segmenter.input_size=[0, 0]", "segmenter.input_size: [0, 0]: each side must be >= 8 pixels"),
    ("segmenter.input_size=[-32, 64]", "segmenter.input_size: [-32, 64]: each side must be >= 8 pixels"),
    ("diffusion.fidelity_levels=[5000]", "diffusion.fidelity_levels: 5000 exceeds diffusion.num_train_timesteps "
                                         "(T = 1000)"),
], ids=["adam-betas-above-1", "adam-beta-of-1", "input-size-zero", "input-size-negative", "fidelity-above-T"])
def test_params_that_cannot_work_are_one_line_naming_the_key(workspace, setting, fragment):
    for command in ("plan", "train-diffusion", "train-g0"):
        error_line(invoke(workspace, "--set", setting, command), f"params.yaml: {fragment}")


def test_a_params_file_that_is_a_yaml_list_with_set_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("- ptl\n- sgg\n")
    error_line(invoke(tmp_path, "--set", "sgg.lambda=40", "plan"), "params.yaml: top level: expected a mapping")


@pytest.mark.parametrize("edit, fragment", [
    ({"width": -5}, "width must be a positive integer, got -5"),
    ({"width": "wide"}, "width must be a positive integer, got 'wide'"),
    ({"input_size": [0, 0]}, "input_size must be [height, width] with sides >= 8"),
    ({"normalisation": "imagenet-ish"}, "normalisation: unknown value 'imagenet-ish'"),
], ids=["negative-width", "width-not-a-number", "input-size-zero", "unknown-normalisation"])
def test_evaluate_with_an_edited_sidecar_is_one_line(workspace, edit, fragment):
    g0 = Workspace(workspace).segmenter_path(0)
    sidecar = json.loads(sidecar_path(g0).read_text())
    sidecar_path(g0).write_text(json.dumps(sidecar | edit))
    error_line(invoke(workspace, "evaluate", str(g0)), str(g0.with_suffix("")), fragment)  # the sidecar or weights
