"""Params -> the guided translation's settings (dasgen/pipeline/guided.py) and domain n's resume fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest

from dasgen.config import config_from_dict
from dasgen.diffusion.unet import WEIGHTS_NAME
from dasgen.pipeline.guided import domain_guidance
from dasgen.pipeline.workspace import Workspace
from dasgen.stages.translate import domain_fingerprint


def segmenter(x):  # never called: the settings are what is checked
    raise AssertionError


@pytest.mark.parametrize("sgg", [
    {"step_rms": 0.2, "max_step": None},
    {"lambda": 1280.0, "max_step": 0.05, "gradient_at": "x_t", "lcg_view": "context", "lcg_normalise": "image"},
    {"lambda_resolution": [64, 128]},
])
def test_domain_guidance_carries_every_sgg_setting(sgg):
    config = config_from_dict({"sgg": sgg})
    guidance = domain_guidance(config, segmenter, 1, 10)
    assert guidance.step_rms == config.sgg.step_rms
    assert guidance.lambda_ == config.sgg.lambda_ and guidance.max_step == config.sgg.max_step
    assert guidance.gradient_at == config.sgg.gradient_at and guidance.lcg_view == config.sgg.lcg_view
    assert guidance.lcg_normalise == config.sgg.lcg_normalise
    assert guidance.reference_pixels == (64 * 128 if "lambda_resolution" in sgg else None)
    assert len(guidance.plan) == 10


def _workspace(root: Path) -> Workspace:
    ws = Workspace(root)
    for path in (ws.diffusion_model / WEIGHTS_NAME, ws.segmenter_path(0)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
    return ws


def test_an_option_added_off_keeps_finished_domains_fingerprint(tmp_path):
    """A domain finished before sgg.step_rms existed recorded a fingerprint without it; while it is off the
    fingerprint is the same (the resume keeps the domain), and set it differs (the domain is made afresh)."""
    ws = _workspace(tmp_path)
    off = domain_fingerprint(config_from_dict({}), 1, ws)
    assert "step_rms" not in off["params"]["sgg"]
    assert "max_step" in off["params"]["sgg"]  # options without the flag stay in
    assert domain_fingerprint(config_from_dict({"sgg": {"step_rms": 0.2}}), 1, ws) != off
