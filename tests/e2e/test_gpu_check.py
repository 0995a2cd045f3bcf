"""bench/gpu_check.py, the prepared GPU measurement, runs on the CPU at tiny sizes, so it cannot rot unnoticed."""

from __future__ import annotations

import json

import pytest

from helpers import REPO
from helpers.forkserver import shared_server


@pytest.mark.slow
def test_gpu_check_runs_every_part_at_tiny_sizes_on_the_cpu(tmp_path):
    script = REPO / "bench" / "gpu_check.py"  # run as a script, in a process of its own (forked: no start-up cost)
    code, output = shared_server().run([str(script), "--tiny", "--device", "cpu", "--out", str(tmp_path)],
                                       source=script.read_text(), cwd=tmp_path, log=tmp_path / "gpu_check.log",
                                       timeout=600)
    assert code == 0, output[-6000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert set(parts) == {"guided_step", "unit_costs", "toy_translate"}
    assert all("result" in part for part in parts.values()), {k: v.get("error") for k, v in parts.items()}
    step = parts["guided_step"]["result"]["steps"][0]
    assert step["classes_present"] == 19 and step["lcg_batched_s"] > 0 and step["lcg_loop_s"] > 0
    assert "bf16_translate_uint8_max_abs_diff" in parts["guided_step"]["result"]["bf16"]
    assert parts["unit_costs"]["result"]["unit_seconds"]["unet_forward"] > 0
    assert json.loads((tmp_path / "unit_costs.json").read_text())["entries"]
    toy = parts["toy_translate"]["result"]
    assert toy["images"] == 12 and toy["images_byte_identical"] == 12  # cpu vs cpu: the same bytes
    text = (tmp_path / "gpu_check.md").read_text()
    assert "One guided reverse step" in text and "A whole toy translate" in text
