"""A real-scale smoke run on the CPU: the stage code path at 256x512 with the paper's DeepLab-V2 / ResNet-101.

Two source images, one PTL domain with t_1 = 1 (one LCG step: every class region of both images through the segmenter
in chunks of ``sgg.max_copies_per_pass``), a U-Net
with four levels sized for 256x512, one iteration of each training: toy -> scan -> DDPM -> g_0 -> translate (SGG,
fine-tune g_1, the artifact) -> export -> verify. What it proves is that nothing in the path assumes toy sizes
(resizes, level counts, memory chunking by ``sgg.max_copies_per_pass``, a segmenter whose input size differs from the
translation's), not any accuracy.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import write_tiny_params
from dasgen.cli import app


@pytest.mark.slow
def test_real_scale_stage_path_at_256x512_with_deeplabv2_resnet101(tmp_path):
    write_tiny_params(
        tmp_path,
        data={"resolution": [256, 512]},
        toy={"height": 256, "width": 512, "n_source": 2, "n_target_train": 2, "n_target_val": 1},
        diffusion={"unet": {"block_out_channels": [16, 32, 32, 64], "attention_levels": [False] * 4,
                            "norm_num_groups": 8},
                   "train": {"steps": 1, "batch_size": 1, "checkpoint_every": 1},
                   "fidelity_levels": [1]},  # the round trip at 256x512 too, on one reverse step
        # the segmenter sees its input resized to 64x128 inside (segmenter.input_size, the option real runs use to
        # decouple the two sizes): DeepLab-V2 at 256x512 costs seconds per image on a CPU, and LCG runs it on every
        # class region of every image; the translation, the U-Net and the artifact stay at 256x512
        segmenter={"arch": "deeplabv2_resnet101", "input_size": [64, 128],
                   "source_train": {"iters": 1, "batch_size": 2}},
        sgg={"max_copies_per_pass": 4},
        ptl={"N": 1, "t_final": 1, "steps_per_domain": None, "translate_batch_size": 2,
             "finetune": {"iters": 1, "batch_size": 2}},
    )
    runner = CliRunner()
    base = ["--params", str(tmp_path / "params.yaml"), "--workspace", str(tmp_path)]
    for command in (["toy"], ["scan"], ["train-diffusion"], ["train-g0"], ["translate", "--domain", "1"],
                    ["export", "--format", "cityscapes", "--out", str(tmp_path / "export")],
                    ["verify", str(tmp_path / "export")], ["verify", str(tmp_path / "data/domains/001")]):
        result = runner.invoke(app, [*base, *command])
        assert result.exit_code == 0, (command, result.output)
    metrics = json.loads((tmp_path / "data/domains/001/metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["reverse_steps"] == 1 and metrics["t"] == 1
    exported = sorted((tmp_path / "export" / "leftImg8bit").rglob("*.png"))
    assert len(exported) == 2
    from PIL import Image

    assert Image.open(exported[0]).size == (512, 256)
