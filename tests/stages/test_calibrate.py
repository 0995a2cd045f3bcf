"""`dasgen calibrate` on the tiny workspace: the guided step per module, its verdict and the suggested lambda."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dasgen.cli import app
from dasgen.commands.calibrate import EXPLOSIVE_ABOVE, INERT_BELOW, TARGET_CHAIN, verdict

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
