"""What `dasgen plan` says a run needs before it starts: GPU memory, disk, GPU time and wall time on K GPUs.

The memory model's arithmetic (weights + the largest pass; LCG copies counted across the batch, which is how
``lcg_gradient`` fills a pass), the disk count (600 DeepLab-V2 checkpoints are ~106 GB), the FLOP-bound GPU time of
DDPM training, g_0 and the domains with its wall time on K GPUs, the warning when images are priced before a scan,
and params-paper's ``sgg.max_copies_per_pass`` fitting the 40 GB card it is sized for.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import write_tiny_params
from typer.testing import CliRunner

from dasgen.cli import app
from dasgen.config import load_config
from dasgen.guidance.sgg import class_regions, lcg_gradient
from dasgen.planning.costs import ASSUMED_GPU_TFLOPS, model_signature
from dasgen.planning.disk import estimate_disk
from dasgen.planning.gpu import BACKWARD_FACTOR, estimate_gpu
from dasgen.planning.memory import GIB, MIB, USABLE_SHARE, estimate_memory, max_copies_for, parameter_counts
from dasgen.planning.plan import schedule_costs
from dasgen.segment.models import build_segmenter
from helpers import REPO

PER_IMAGE_MIB = {"unet_infer": 3.0, "unet_train": 8.0, "seg_guidance": 2.0, "seg_train": 5.0}
FLOPS = {"unet_forward": 10.0, "seg_guidance": 3.0, "seg_forward": 1.0, "seg_train": 7.0}


@pytest.fixture
def config(tmp_path):
    return load_config(write_tiny_params(tmp_path))  # 16x32, N = 2, translate batch 4 (see conftest)


def memory_entry(config, measured_at=(8, 16)):
    return {"name": "synthetic", "measured_at": list(measured_at), **model_signature(config),
            "mib_per_image": dict(PER_IMAGE_MIB)}


def test_lcg_fills_a_pass_with_copies_from_every_image_of_the_batch():
    """The memory model's premise: a pass holds min(K, copies of the whole batch), not one image's copies."""
    torch.manual_seed(0)
    segmenter = build_segmenter("toy", width=8).eval()
    passes = []

    def spy(x):
        passes.append(x.shape[0])
        return segmenter(x)

    labels = torch.zeros(3, 8, 16, dtype=torch.int64)
    labels[:, :, 8:] = 2  # three images with two classes each: 6 copies
    x = torch.rand(3, 3, 8, 16) * 2 - 1
    assert len(class_regions(labels)) == 6
    lcg_gradient(spy, x, labels, max_copies_per_pass=4)
    assert passes == [4, 2]  # the first pass mixes image 0's and image 1's copies (per image it would be 2, 2, 2)


def test_guided_step_peak_is_the_weights_plus_its_largest_pass(config, tmp_path):
    params = {"unet": 1000, "segmenter": 500}
    scale = (16 * 32) / (8 * 16)
    batch = config.ptl.translate_batch_size
    for i, (classes, k) in enumerate(((3.0, 64), (3.0, 5), (0.2, 64))):
        (tmp_path / str(i)).mkdir()
        c = load_config(write_tiny_params(tmp_path / str(i), sgg={"max_copies_per_pass": k}))
        memory = estimate_memory(c, classes, params, entries=[memory_entry(c)])
        copies = max(1, min(k, math.ceil(batch * classes)))
        parts = {"lcg": copies * 2.0, "gsg": batch * 2.0, "unet": batch * 3.0}  # MiB at the measured size
        g = memory["guided_step"]
        assert g["lcg_copies_per_pass"] == copies and g["largest"] == max(parts, key=parts.get)
        assert g["peak_gib"] * GIB == pytest.approx(4 * 1500 + max(parts.values()) * MIB * scale)
    train = config.diffusion.train
    assert memory["ddpm_train_peak_gib"] * GIB == pytest.approx(
        4 * 1000 * (4 + (train.ema_decay is not None)) + train.batch_size * 8.0 * MIB * scale)


def test_max_copies_for_a_card_leaves_the_unmodelled_share():
    weights, copy = 2 * GIB, 1 * GIB
    k = max_copies_for(40, weights, copy)
    assert weights + k * copy <= 40e9 * USABLE_SHARE < weights + (k + 1) * copy


def test_disk_counts_every_checkpoint_image_and_the_dvc_copy():
    config = load_config(REPO / "params-paper.yaml")
    costs = schedule_costs(config, 24966)
    params = parameter_counts(config)
    disk = estimate_disk(config, costs, params)
    assert params["segmenter"] == sum(t.numel() for t in build_segmenter("deeplabv2_resnet101").state_dict().values())
    assert disk["segmenter_checkpoints"] == 601  # g_0 .. g_600
    assert disk["segmenter_checkpoints_gb"] == pytest.approx(105.8, abs=0.1)  # ~176 MB each
    assert disk["translated_images_gb"] == pytest.approx((599 * 600 + 24966) * 256 * 512 * 3 / 1e9)
    assert disk["dvc_cache_copy_gb"] == pytest.approx(disk["outputs_gb"])
    assert disk["total_gb"] == pytest.approx(2 * disk["outputs_gb"] + disk["ddpm_training_state_gb"])
    fewer = estimate_disk(load_config(REPO / "params-paper.yaml", {"ptl.keep_segmenters": "stage_last"}), costs, params)
    assert fewer["segmenter_checkpoints"] == 32  # g_0, g_599 and the last g_n of each of the 30 stages (g_600 among them)
    assert fewer["segmenter_checkpoints_gb"] == pytest.approx(105.8 * 32 / 601, abs=0.1)


def test_gpu_time_covers_ddpm_g0_and_domains_and_splits_over_k(config):
    costs = schedule_costs(config, source_images=12)
    entry = {"name": "synthetic", "measured_at": [8, 16], **model_signature(config), "flops": dict(FLOPS)}
    one = estimate_gpu(config, costs, 3.0, gpus=1, entries=[entry])
    many = estimate_gpu(config, costs, 3.0, gpus=4, entries=[entry])
    scale, rate = 4.0, ASSUMED_GPU_TFLOPS * 1e12
    train, g0 = config.diffusion.train, config.segmenter.source_train
    assert one["gpu_hours"]["ddpm_training"] * 3600 == pytest.approx(
        train.steps * train.batch_size * BACKWARD_FACTOR * 10.0 * scale / rate)
    assert one["gpu_hours"]["g0"] * 3600 == pytest.approx(g0.iters * g0.batch_size * 7.0 * scale / rate)
    parts = one["gpu_hours"]
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    assert one["wall_hours"]["1"] == pytest.approx(parts["total"])
    assert parts["ddpm_training"] + parts["g0"] < many["wall_hours"]["4"] < one["wall_hours"]["1"]
    assert one["tflops_is_assumption"]
    faster = estimate_gpu(config, costs, 3.0, tflops=2 * ASSUMED_GPU_TFLOPS, entries=[entry])
    assert faster["gpu_hours"]["total"] == pytest.approx(parts["total"] / 2) and not faster["tflops_is_assumption"]


def test_params_paper_guided_step_fits_the_40_gb_card_it_is_sized_for():
    config = load_config(REPO / "params-paper.yaml")
    memory = estimate_memory(config, 12.0)  # GTA5 averages ~12 classes per image
    assert memory["available"] and memory["guided_step"]["largest"] == "lcg"
    assert memory["fits"]["40"] and memory["guided_step"]["lcg_copies_per_pass"] == config.sgg.max_copies_per_pass
    assert config.sgg.max_copies_per_pass <= memory["max_copies_per_pass_for"]["40"]
    old = load_config(REPO / "params-paper.yaml", {"sgg.max_copies_per_pass": 64})  # the former default
    assert not estimate_memory(old, 12.0)["fits"]["40"]


def test_plan_leads_with_gpu_memory_and_disk_and_warns_before_a_scan(tmp_path):
    runner = CliRunner()
    base = ["--params", str(REPO / "params.yaml"), "--workspace", str(tmp_path), "plan"]
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("warning: source not scanned: pricing 300 source images (toy.n_source")
    assert lines[1].startswith("GPU time (FLOP-bound estimate at an ASSUMED 100 TFLOP/s")
    assert any(line.startswith("peak GPU memory (estimate): guided step") for line in lines[:6])
    assert any(line.startswith("disk (estimate):") for line in lines[:8])
    assert result.output.index("GPU time") < result.output.index("PTL schedule") < result.output.index(
        "estimated time on cpu")
    report = json.loads(runner.invoke(app, [*base, "--json", "--gpus", "4", "--gpu-tflops", "50"]).output)
    for key in ("source_images", "source_scanned", "domains", "totals", "estimate", "deviations"):  # kept
        assert key in report
    assert report["gpu"]["wall_hours"].keys() == {"1", "4"} and report["gpu"]["assumed_tflops"] == 50
    assert report["memory"]["available"] and report["disk"]["segmenter_checkpoints"] == report["totals"]["domains"] + 1
    assert report["warnings"] and not report["source_scanned"]
