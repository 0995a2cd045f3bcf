"""Params -> the guided translation's settings (dasgen/pipeline/guided.py)."""

from __future__ import annotations

import pytest

from dasgen.config import config_from_dict
from dasgen.pipeline.guided import domain_guidance


def segmenter(x):  # never called: the settings are what is checked
    raise AssertionError


@pytest.mark.parametrize("sgg", [
    {"lambda": 1280.0, "max_step": 0.05, "gradient_at": "x_t", "loss_reduction": "sum", "max_copies_per_pass": 3},
    {"max_step": None, "gradient_at": "x0_hat", "loss_reduction": "mean"},
])
def test_domain_guidance_carries_every_sgg_setting(sgg):
    config = config_from_dict({"sgg": sgg})
    guidance = domain_guidance(config, segmenter, 1, 10)
    assert guidance.lambda_ == config.sgg.lambda_ and guidance.max_step == config.sgg.max_step
    assert guidance.gradient_at == config.sgg.gradient_at and guidance.reduction == config.sgg.loss_reduction
    assert guidance.max_copies_per_pass == config.sgg.max_copies_per_pass
    assert len(guidance.plan) == 10
