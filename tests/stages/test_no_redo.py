"""A stage re-run with nothing changed (DVC re-runs it after a comment edit) redoes no work and writes the same bytes."""

from __future__ import annotations

import json

import pytest

import dasgen.stages.train_diffusion as stage
from dasgen.config import load_config
from dasgen.pipeline.workspace import Workspace
from helpers.files import tree_bytes


def test_train_diffusion_rerun_restores_its_state_and_reuses_its_round_trip(workspace, monkeypatch):
    ws = Workspace(workspace)
    config = load_config(workspace / "params.yaml")
    model, picture = tree_bytes(ws.diffusion_model), ws.roundtrip_png.read_bytes()
    before = json.loads((ws.metrics / "diffusion.json").read_text())
    ws.roundtrip_png.unlink()  # DVC removes a stage's metrics before it runs it again

    def recomputed(*args, **kwargs):
        raise AssertionError("the round trip was computed again")

    monkeypatch.setattr(stage, "round_trip", recomputed)
    after = stage.run_train_diffusion(config, ws, progress=False)
    assert after["resumed_from"] == 6 and after["roundtrip"] == before["roundtrip"]
    assert tree_bytes(ws.diffusion_model) == model and ws.roundtrip_png.read_bytes() == picture

    other = load_config(workspace / "params.yaml", {"diffusion.fidelity_levels": [10]})  # what it measures changed
    with pytest.raises(AssertionError, match="computed again"):
        stage.run_train_diffusion(other, ws, progress=False)


@pytest.mark.parametrize("overrides", [{"diffusion.train.hflip": False}, {"data.target.train_split": "val"}])
def test_a_finished_ddpm_is_not_restored_for_other_images_or_flips(workspace, overrides):
    """The kept training state holds what the DDPM learnt from: other target images (another split) or another
    augmentation (no flips) train afresh instead of restoring the finished DDPM."""
    ws = Workspace(workspace)
    after = stage.run_train_diffusion(load_config(workspace / "params.yaml", overrides), ws, progress=False)
    assert after["resumed_from"] is None and after["steps"] == 6
