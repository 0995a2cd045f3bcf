"""The cost model of ``dasgen plan``: unit costs x work units, scaled by pixel count; the shipped table."""

from __future__ import annotations

import json

import pytest
from conftest import write_tiny_params
from typer.testing import CliRunner

from dasgen.cli import app
from dasgen.config import load_config
from dasgen.planning.costs import estimate_cost, load_unit_costs, model_signature
from dasgen.planning.plan import schedule_costs

from helpers import REPO
SECONDS = {"unet_forward": 0.5, "unet_forward_baseline": 2.0, "seg_guidance": 0.25, "seg_guidance_baseline": 1.0,
           "seg_forward": 0.125, "seg_train": 4.0}
FLOPS = {"unet_forward": 10.0, "seg_guidance": 3.0, "seg_forward": 1.0, "seg_train": 7.0}


def entry_for(config, measured_at=(8, 16)):
    return {"name": "synthetic", "device": "cpu", "measured_at": list(measured_at), **model_signature(config),
            "seconds": dict(SECONDS), "flops": dict(FLOPS)}


@pytest.fixture
def config(tmp_path):
    return load_config(write_tiny_params(tmp_path))  # 16x32, N = 2, 3 steps per domain, finetune 2 x 4 (+ L_src)


def expected_seconds(domain, unit, classes, finetune_images, scale):
    return scale * (domain.images * domain.steps * unit["unet_forward"]
                    + domain.lcg_steps * domain.images * classes * unit["seg_guidance_lcg"]
                    + domain.gsg_steps * domain.images * unit["seg_guidance_gsg"]
                    + domain.images * unit["seg_forward"] + finetune_images * unit["seg_train"])


def test_estimate_is_units_times_unit_costs_scaled_by_pixels(config):
    costs = schedule_costs(config, source_images=12)
    classes, scale, finetune_images = 3.0, (16 * 32) / (8 * 16), 2 * 4 * 2
    estimate = estimate_cost(config, costs, classes, entries=[entry_for(config)])
    assert estimate["available"] and estimate["pixel_scale"] == pytest.approx(4.0)

    fast = {"unet_forward": 0.5, "seg_guidance_lcg": 0.25, "seg_guidance_gsg": 0.25, "seg_forward": 0.125,
            "seg_train": 4.0}
    naive = {**fast, "unet_forward": 2.0, "seg_guidance_lcg": 1.0, "seg_guidance_gsg": 1.0}
    loop_only = {**fast, "seg_guidance_lcg": 1.0}
    per_domain = [expected_seconds(d, fast, classes, finetune_images, scale) / 3600 for d in costs]
    assert estimate["domain_hours"] == pytest.approx(per_domain)
    assert estimate["total_hours"] == pytest.approx(sum(per_domain))
    assert sum(estimate["parts_hours"].values()) == pytest.approx(sum(per_domain))
    assert estimate["baseline_total_hours"] == pytest.approx(
        sum(expected_seconds(d, naive, classes, finetune_images, scale) for d in costs) / 3600)
    assert estimate["lcg_loop_total_hours"] == pytest.approx(
        sum(expected_seconds(d, loop_only, classes, finetune_images, scale) for d in costs) / 3600)
    assert estimate["speedup_vs_baseline"] == pytest.approx(estimate["baseline_total_hours"] / estimate["total_hours"])


def test_cost_grows_with_resolution_classes_and_src_loss(config, tmp_path):
    costs = schedule_costs(config, source_images=12)
    base = estimate_cost(config, costs, 3.0, entries=[entry_for(config)])
    wider = load_config(write_tiny_params(tmp_path, data={"resolution": [16, 64]}, toy={"width": 64}))
    assert estimate_cost(wider, schedule_costs(wider, 12), 3.0, entries=[entry_for(config)])["total_hours"] == \
        pytest.approx(2 * base["total_hours"])
    more_classes = estimate_cost(config, costs, 6.0, entries=[entry_for(config)])
    lcg_images = sum(d.lcg_steps * d.images for d in costs)
    assert more_classes["total_hours"] - base["total_hours"] == pytest.approx(
        lcg_images * 3.0 * SECONDS["seg_guidance"] * 4.0 / 3600)
    (tmp_path / "ada").mkdir()
    ada_only = load_config(write_tiny_params(tmp_path / "ada", ptl={**_tiny_ptl(), "finetune": {
        "iters": 2, "batch_size": 4, "use_src_loss": False}}))
    saved = base["total_hours"] - estimate_cost(ada_only, costs, 3.0, entries=[entry_for(config)])["total_hours"]
    assert saved == pytest.approx(len(costs) * 2 * 4 * SECONDS["seg_train"] * 4.0 / 3600)  # one pass fewer


def _tiny_ptl():
    from conftest import TINY_PARAMS

    return {k: v for k, v in TINY_PARAMS["ptl"].items() if k != "finetune"}


def test_other_models_have_no_estimate(config, tmp_path):
    costs = schedule_costs(config, source_images=12)
    other = load_config(write_tiny_params(tmp_path, segmenter={"width": 16}))
    estimate = estimate_cost(other, costs, 3.0, entries=[entry_for(config)])
    assert not estimate["available"] and "bench_domain.py --write-costs" in estimate["reason"]
    pretrained = load_config(write_tiny_params(tmp_path, diffusion={"pretrained": "some/unet"}))
    assert "diffusion.pretrained" in estimate_cost(pretrained, costs, 3.0, entries=[entry_for(config)])["reason"]


def test_shipped_table_prices_the_toy_and_the_paper_params():
    entries = load_unit_costs()
    for params in ("params.yaml", "params-paper.yaml"):
        config = load_config(REPO / params)
        costs = schedule_costs(config, source_images=24966 if "paper" in params else config.toy.n_source)
        estimate = estimate_cost(config, costs, 12.0, entries=entries)
        assert estimate["available"], (params, estimate)
        assert estimate["baseline_total_hours"] > estimate["total_hours"] > 0
    hours = estimate["domain_hours"]  # the paper: t_n = n reverse steps, so each domain costs more than the last
    assert len(hours) == 600 and all(a < b for a, b in zip(hours[:-2], hours[1:-1])) and hours[-1] > 10 * hours[-2]


def test_plan_cli_prints_the_estimate(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["--params", str(REPO / "params.yaml"), "--workspace", str(tmp_path), "plan"])
    assert result.exit_code == 0, result.output
    assert "estimated time on cpu" in result.output and "per-class loop" in result.output
    result = runner.invoke(app, ["--params", str(REPO / "params.yaml"), "--workspace", str(tmp_path), "plan", "--json"])
    estimate = json.loads(result.output)["estimate"]
    assert estimate["available"] and len(estimate["domain_hours"]) == load_config(REPO / "params.yaml").ptl.N
