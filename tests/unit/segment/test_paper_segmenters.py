"""The paper's segmenters (Sec. 5.1): DeepLab-V2/ResNet-101, FCN-8s/VGG16 and SegFormer (DAFormer's stand-in).

Each like the built-in ones: forward shape at the input size, one LCG step (the guidance gradient reaches x and is
zero on ignore pixels), a checkpoint round trip with its sidecar, and ImageNet backbone weights loading under the
documented prefix. SegFormer needs the ``segformer`` extra; its tests are skipped with the reason without it.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dasgen.guidance.sgg import IGNORE_INDEX, lcg_gradient
from dasgen.segment.checkpoint import load_initial_weights, load_segmenter, read_sidecar, save_segmenter
from dasgen.segment.models import HEAD_PREFIXES, PAPER_ARCHS, SEGFORMER_ARCHS, build_segmenter


def _needs(arch: str) -> None:
    if arch in SEGFORMER_ARCHS:
        pytest.importorskip("transformers", reason="segformer extra not installed (pip install 'dasgen[segformer]')")


@pytest.fixture(scope="module", params=[*PAPER_ARCHS, "segformer_b0"])
def model(request):
    _needs(request.param)
    torch.manual_seed(0)  # test-local init only
    return build_segmenter(request.param, num_classes=19).eval()


def test_forward_gives_logits_at_the_input_size(model):
    x = torch.rand(2, 3, 32, 64) * 2 - 1
    with torch.no_grad():
        assert model(x).shape == (2, 19, 32, 64)


def test_one_lcg_step_reaches_x_and_spares_ignore_pixels(model):
    x = torch.rand(1, 3, 32, 64) * 2 - 1
    labels = torch.zeros(1, 32, 64, dtype=torch.int64)
    labels[:, 16:, :] = 13  # car
    labels[:, :4, :8] = IGNORE_INDEX
    grad = lcg_gradient(model, x, labels, max_copies_per_pass=2)
    assert grad.shape == x.shape and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0 and grad[..., :4, :8].abs().max() == 0


def test_checkpoint_round_trip_with_sidecar(model, tmp_path):
    path = tmp_path / "g.safetensors"
    save_segmenter(model, path, meta={"domain": 3})
    sidecar = read_sidecar(path)
    assert sidecar["arch"] == model.arch and sidecar["num_classes"] == 19 and sidecar["domain"] == 3
    loaded = load_segmenter(path, expect_arch=model.arch, expect_classes=19)
    x = torch.rand(1, 3, 32, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_parameter_counts_match_the_published_networks():
    """DeepLab-V2 R101 ~43.9M and FCN-8s VGG16 ~134M (paper_nets.py explains the small differences)."""
    counts = {arch: sum(p.numel() for p in build_segmenter(arch).parameters()) for arch in PAPER_ARCHS}
    assert 43.5e6 < counts["deeplabv2_resnet101"] < 44.5e6
    assert 133e6 < counts["fcn8s_vgg16"] < 135.5e6


def test_imagenet_backbone_weights_load_under_torchvision_names(tmp_path):
    """torchvision's ImageNet state dicts fill the whole encoder: ResNet-101 without its fc into DeepLab-V2, VGG16
    with fc6/fc7 reshaped into FCN-8s's convolutions (the 1000-way fc8 unused); only the task head keeps its init."""
    from torchvision.models import resnet101, vgg16

    for arch, net, prefix, unused in (("deeplabv2_resnet101", resnet101(weights=None), "net.backbone.", ("fc.",)),
                                      ("fcn8s_vgg16", vgg16(weights=None), "net.", ("classifier.6.",))):
        state = net.state_dict()
        path = tmp_path / f"{arch}-imagenet.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        target = build_segmenter(arch)
        report = load_initial_weights(target, path)
        assert report.prefix == prefix and report.complete and report.filled == report.expected
        assert report.loaded == len(state) - 2 and report.file_tensors == len(state)
        assert not [k for k in report.missing if not k.startswith(HEAD_PREFIXES[arch])]
        key = next(iter(state))
        assert torch.equal(target.state_dict()[prefix + key], state[key])
        assert len(report.unexpected) == 2 and all(k.removeprefix(prefix).startswith(unused) for k in report.unexpected)
    fc6 = target.net.fc[0].weight  # FCN-8s: VGG's classifier.0 (4096 x 25088) as a 7x7 convolution over pool5
    assert fc6.shape == (4096, 512, 7, 7) and torch.equal(fc6.flatten(1), state["classifier.0.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["fcn8s_vgg16", "segformer_b0"])
def test_each_paper_segmenter_runs_the_toy_pipeline_end_to_end(arch, tmp_path, monkeypatch):
    """`--set segmenter.arch=<arch>`: toy -> scan -> DDPM -> g_0 -> a PTL domain guided by g_0 (loaded from its
    checkpoint) and fine-tuned to g_1 -> export -> verify, tiny. DeepLab-V2 takes the same path at 256x512 in
    tests/e2e/test_real_scale_smoke.py."""
    assert set(PAPER_ARCHS) == {"deeplabv2_resnet101", "fcn8s_vgg16"}  # a new paper arch needs a row here
    _needs(arch)
    monkeypatch.setattr("os.fsync", lambda fd: None)  # FCN-8s checkpoints are 512 MiB; durability is not tested here
    from typer.testing import CliRunner

    from conftest import write_tiny_params
    from dasgen.cli import app

    write_tiny_params(tmp_path, data={"resolution": [32, 64]}, toy={"height": 32, "width": 64, "n_source": 2,
                                                                      "n_target_train": 2, "n_target_val": 1},
                      segmenter={"arch": arch, "source_train": {"iters": 1, "batch_size": 2}},
                      diffusion={"fidelity_levels": [2]},
                      ptl={"N": 1, "t_final": 4, "steps_per_domain": 2, "images_per_domain": 2,
                           "translate_batch_size": 2, "finetune": {"iters": 1, "batch_size": 2}})
    runner = CliRunner()
    base = ["--params", str(tmp_path / "params.yaml"), "--workspace", str(tmp_path)]
    for command in (["toy"], ["scan"], ["train-diffusion"], ["train-g0"], ["translate", "--domain", "1"],
                    ["export", "--out", str(tmp_path / "export")], ["verify", str(tmp_path / "export")],
                    ["verify", str(tmp_path / "data/domains/001")]):
        result = runner.invoke(app, [*base, *command])
        assert result.exit_code == 0, (command, result.output)
    assert read_sidecar(tmp_path / "data/domains/001/segmenter.safetensors")["arch"] == arch


def test_plan_names_the_segformer_head_difference():
    from dasgen.config import config_from_dict
    from dasgen.planning.report import deviations

    def head_notes(arch: str) -> list[str]:
        return [n for n in deviations(config_from_dict({"segmenter": {"arch": arch}})) if "DAFormer" in n]

    assert head_notes("segformer_b5") and "segformer_b5" in head_notes("segformer_b5")[0]
    assert head_notes("deeplabv2_resnet101") == []
