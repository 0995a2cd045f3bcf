"""`dasgen calibrate` on the tiny workspace: the guided step per module, its verdict and the suggested lambda."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dasgen.cli import app
import math

import torch

from dasgen.commands.calibrate import EXPLOSIVE_ABOVE, INERT_BELOW, TARGET_CHAIN, StepRecorder, verdict
from dasgen.guidance.sgg import GuidedStep

runner = CliRunner()


def calibrate(root, *args):
    result = runner.invoke(app, ["--params", str(root / "params.yaml"), "--workspace", str(root), *args,
                                 "calibrate", "--images", "3", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_calibrate_reports_both_modules_with_a_verdict(tiny_workspace):
    report = calibrate(tiny_workspace)
    assert report["judge"]["segmenter"] == "g_0" and report["domain"] == 2  # fresh run: g_1 does not exist yet
    for module in ("lcg", "gsg"):
        m = report["modules"][module]
        step = m["step_over_noise"]
        assert 0 <= step["min"] <= step["mean"] <= step["max"]
        assert m["verdict"] == verdict(m["chain_over_noise"]) and m["chain_over_noise"] > 0
        assert 0.0 <= m["clipped_share"] <= 1.0
        # the step is linear in lambda before the cap: the suggestion scales the uncapped chain onto the target
        assert m["suggested_lambda"] * m["raw_chain_over_noise"] / report["lambda"] == pytest.approx(TARGET_CHAIN)
    assert 0.0 <= report["consistency"]["guided"] <= 1.0 and 0.0 <= report["consistency"]["unguided"] <= 1.0


def test_calibrate_verdicts_follow_lambda(tiny_workspace):
    """Uncapped, the measured step scales with lambda: a tiny lambda is inert, a huge one explosive."""
    small = calibrate(tiny_workspace, "--set", "sgg.max_step=null", "--set", "sgg.lambda=1e-6")
    large = calibrate(tiny_workspace, "--set", "sgg.max_step=null", "--set", "sgg.lambda=1e9")
    for module in ("lcg", "gsg"):
        assert small["modules"][module]["verdict"] == "inert", small["modules"][module]
        assert large["modules"][module]["verdict"] == "explosive", large["modules"][module]
        # the trajectories part after the first guided step, so the ratio is not exactly 1e15; its size is
        ratio = large["modules"][module]["raw_chain_over_noise"] / small["modules"][module]["raw_chain_over_noise"]
        assert ratio > 1e12
    assert verdict(INERT_BELOW / 2) == "inert" and verdict(EXPLOSIVE_ABOVE * 2) == "explosive"


def test_calibrate_without_guidance_is_one_line(tiny_workspace):
    result = runner.invoke(app, ["--params", str(tiny_workspace / "params.yaml"), "--workspace", str(tiny_workspace),
                                 "--set", "sgg.arrangement=none", "calibrate"])
    assert result.exit_code == 1 and "sgg.arrangement" in result.output


def _step(module, index, position, beta, raw, cap=None):
    raw = torch.as_tensor(raw, dtype=torch.float32)
    applied = raw if cap is None else raw.clamp(-cap, cap)
    return GuidedStep(index=index, position=position, module=module, beta=torch.tensor(beta), raw=raw,
                      applied=applied)


def test_step_recorder_measures_by_hand():
    """Two LCG steps and one GSG step, the LCG ones seen in two batches of one image each: per-step shares are
    means over images, the chain measure adds each step's share x sqrt(beta_t) and divides by the chain's noise;
    the noiseless last step (position 0) is left out."""
    recorder = StepRecorder(chain_noise=0.2)
    ones = torch.ones(1, 1, 2, 2)
    recorder(_step("lcg", 0, 2, 0.04, 0.1 * ones, cap=0.5))  # image a: RMS 0.1 at sqrt(beta) 0.2 -> share 0.5
    recorder(_step("lcg", 0, 2, 0.04, 0.3 * ones, cap=0.5))  # image b: share 1.5
    recorder(_step("gsg", 1, 1, 0.01, 0.01 * ones, cap=0.5))  # share 0.1
    recorder(_step("lcg", 2, 0, 0.0001, ones, cap=0.5))  # position 0: left out
    recorder(_step("lcg", 3, 1, 0.01, torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]), cap=0.5))  # raw 0.5, applied 0.25
    summary = recorder.summary(lambda_=80.0)
    lcg, gsg = summary["lcg"], summary["gsg"]
    assert lcg["steps"] == 2 and gsg["steps"] == 1
    assert lcg["step_over_noise"]["mean"] == pytest.approx((1.0 + 2.5) / 2)  # step 0: (0.5 + 1.5) / 2; step 3: 2.5
    assert lcg["raw_step_over_noise"]["max"] == pytest.approx(5.0)  # step 3 before the cap: 0.5 / 0.1
    assert lcg["chain_over_noise"] == pytest.approx((1.0 * 0.2 + 2.5 * 0.1) / 0.2)
    assert gsg["chain_over_noise"] == pytest.approx(0.1 * 0.1 / 0.2) and gsg["verdict"] == "inert"
    assert lcg["clipped_share"] == pytest.approx(1 / 12)  # one pixel of 12 recorded (3 steps x 4)
    assert lcg["suggested_lambda"] == pytest.approx(80.0 * TARGET_CHAIN / lcg["raw_chain_over_noise"])
    assert verdict(math.nan) == "explosive"
    silent = StepRecorder(chain_noise=0.2)
    silent(_step("gsg", 0, 1, 0.01, torch.zeros(1, 1, 2, 2)))
    assert silent.summary(80.0)["gsg"]["suggested_lambda"] is None  # no lambda moves a vanished gradient


@pytest.mark.parametrize("args, message", [
    (["--domain", "3"], "between 1 and ptl.N"),
    (["--domain", "1", "--set", "ptl.t_final=2", "--set", "ptl.N=2"], "no reverse step that adds noise"),
])
def test_calibrate_bad_domains_are_one_line(tiny_workspace, args, message):
    sets = [a for a in args if a.startswith("ptl.")]
    options = [a for a in args if not a.startswith("ptl.") and a != "--set"]
    result = runner.invoke(app, ["--params", str(tiny_workspace / "params.yaml"), "--workspace", str(tiny_workspace),
                                 *sum((["--set", v] for v in sets), []), "calibrate", *options])
    assert result.exit_code == 1 and message in result.output, result.output


def test_calibrate_without_a_ddpm_is_one_line(workspace):
    import shutil

    shutil.rmtree(workspace / "data" / "diffusion")
    result = runner.invoke(app, ["--params", str(workspace / "params.yaml"), "--workspace", str(workspace),
                                 "calibrate"])
    assert result.exit_code == 1 and "diffusion" in result.output, result.output
