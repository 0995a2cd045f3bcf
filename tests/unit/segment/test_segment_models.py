"""Segmenter registry (dasgen.segment.models) and checkpoints (dasgen.segment.checkpoint)."""

from __future__ import annotations

import hashlib
import json
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from dasgen.errors import CheckpointError, ConfigError
from dasgen.segment.checkpoint import (
    load_initial_weights,
    load_segmenter,
    read_sidecar,
    save_segmenter,
    sidecar_path,
)
from dasgen.segment.models import IMAGENET_MEAN, IMAGENET_STD, TORCHVISION_ARCHS, build_segmenter



def _images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator) * 2 - 1


# -- registry --------------------------------------------------------------------------------------------------------


def test_toy_shape_gradient_and_size():
    model = build_segmenter("toy")
    params = sum(p.numel() for p in model.parameters())
    assert 50_000 <= params <= 300_000
    x = _images(2, 32, 64).requires_grad_(True)
    logits = model(x)
    assert logits.shape == (2, 19, 32, 64)
    logits[:, 3].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert model.arch == "toy" and model.num_classes == 19 and model.normalisation["kind"] == "none"


def test_toy_width_changes_size():
    small = sum(p.numel() for p in build_segmenter("toy", width=16).parameters())
    large = sum(p.numel() for p in build_segmenter("toy", width=32).parameters())
    assert small < large


@pytest.fixture(scope="module")
def fcn_resnet50():
    """One real torchvision model, shared: building ResNets is the slow part of these tests."""
    return build_segmenter("fcn_resnet50", input_size=(32, 32)).eval()


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_torchvision_archs_build_without_download(arch, monkeypatch):
    """Every torchvision arch builds with no download and maps (B, 3, H, W) -> (B, 19, H, W) with a gradient to x.

    Built on the meta device (shapes only, no memory, no init), so the four ResNets cost about a second."""

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with torch.device("meta"):
        model = build_segmenter(arch, input_size=(32, 32)).eval()
        x = torch.empty(2, 3, 24, 40, requires_grad=True)
        logits = model(x)
        logits.sum().backward()
    assert model.normalisation["kind"] == "imagenet" and model.arch == arch
    assert logits.shape == (2, 19, 24, 40)  # back at the input resolution, not input_size
    assert x.grad is not None and x.grad.shape == x.shape


def test_torchvision_real_gradient_reaches_x(fcn_resnet50):
    x = _images(1, 24, 40).requires_grad_(True)
    logits = fcn_resnet50(x)
    assert logits.shape == (1, 19, 24, 40)
    logits[:, 0].sum().backward()
    assert x.grad.abs().sum() > 0


def test_unknown_arch_names_it():
    with pytest.raises(ConfigError, match="'resnet9000'"):
        build_segmenter("resnet9000")


def test_plugin_factory(tmp_path, monkeypatch):
    (tmp_path / "my_seg_plugin.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Net(nn.Module):  # transformers-style: an object with .logits at 1/2 resolution
            def __init__(self, num_classes):
                super().__init__()
                self.conv = nn.Conv2d(3, num_classes, 3, stride=2, padding=1)
            def forward(self, x):
                return type("Output", (), {"logits": self.conv(x)})()

        class DictNet(Net):  # torchvision-style: {"out": logits}
            def forward(self, x):
                return {"out": self.conv(x)}

        def make(num_classes):
            return Net(num_classes)

        def make_dict(num_classes):
            return DictNet(num_classes)

        def not_a_module(num_classes):
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for factory in ("make", "make_dict"):
        model = build_segmenter(f"my_seg_plugin:{factory}", num_classes=7)
        assert model(_images(2, 16, 24)).shape == (2, 7, 16, 24)
    with pytest.raises(ConfigError, match="no callable 'nope'"):
        build_segmenter("my_seg_plugin:nope")
    with pytest.raises(ConfigError, match="not a torch nn.Module"):
        build_segmenter("my_seg_plugin:not_a_module")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):
        build_segmenter("no_such_module_xyz:make")


def test_plugin_checkpoint_needs_expect_arch(tmp_path, monkeypatch):
    (tmp_path / "my_seg_plugin2.py").write_text(
        "from torch import nn\n"
        "def make(num_classes):\n"
        "    return nn.Conv2d(3, num_classes, 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_segmenter("my_seg_plugin2:make")
    path = tmp_path / "g.safetensors"
    save_segmenter(model, path, meta={})
    with pytest.raises(CheckpointError, match="plug-in architecture 'my_seg_plugin2:make'"):
        load_segmenter(path)
    loaded = load_segmenter(path, expect_arch="my_seg_plugin2:make")
    x = _images(1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_imagenet_normalisation_is_applied():
    model = build_segmenter("toy", normalisation="imagenet")
    seen = []
    model.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    x = _images(1, 8, 8)
    model(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], ((x + 1) / 2 - mean) / std)
    # "none" passes x through unchanged
    plain = build_segmenter("toy")
    plain.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    plain(x)
    torch.testing.assert_close(seen[1], x)


def test_input_size_resizes_inside_and_back():
    model = build_segmenter("toy", input_size=(16, 32))
    seen = []
    model.net.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    x = _images(2, 40, 72).requires_grad_(True)
    out = model(x)
    assert seen == [(16, 32)]
    assert out.shape == (2, 19, 40, 72)
    out.sum().backward()
    assert x.grad.abs().sum() > 0


def test_bad_normalisation_is_config_error():
    with pytest.raises(ConfigError, match="normalisation"):
        build_segmenter("toy", normalisation="zscore")
    with pytest.raises(ConfigError, match="normalisation"):
        build_segmenter("toy", normalisation={"mean": [0.5, 0.5], "std": [1, 1, 1]})


# -- checkpoints -----------------------------------------------------------------------------------------------------


def _trained_toy(seed: int = 0):
    torch.manual_seed(seed)
    model = build_segmenter("toy", width=16, input_size=(32, 64), normalisation="imagenet")
    with torch.no_grad():  # move GroupNorm affine params off their init so the round trip is not trivially equal
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def test_round_trip_equal_outputs(tmp_path):
    model = _trained_toy()
    path = tmp_path / "g_3.safetensors"
    sha = save_segmenter(model, path, meta={"domain": 3, "trained_on": "X^3"})
    assert len(sha) == 64
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["arch"] == "toy" and sidecar["domain"] == 3 and sidecar["width"] == 16
    assert sidecar["input_size"] == [32, 64] and sidecar["normalisation"]["kind"] == "imagenet"
    assert sidecar["weights_sha256"] == sha and sidecar["format_version"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp files

    loaded = load_segmenter(path, expect_arch="toy", expect_classes=19)
    assert not loaded.training
    assert loaded.input_size == (32, 64) and loaded.normalisation == model.normalisation
    x = _images(2, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_save_refuses_reserved_meta_and_wrong_suffix(tmp_path):
    model = build_segmenter("toy", width=8)
    with pytest.raises(ValueError, match="arch"):
        save_segmenter(model, tmp_path / "g.safetensors", meta={"arch": "other"})
    with pytest.raises(CheckpointError, match="g.pt"):
        save_segmenter(model, tmp_path / "g.pt", meta={})


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="g_9.safetensors: checkpoint not found"):
        load_segmenter(tmp_path / "g_9.safetensors")


def test_missing_sidecar(tmp_path):
    path = tmp_path / "g.safetensors"
    save_segmenter(build_segmenter("toy", width=8), path, meta={})
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="sidecar g.json not found"):
        load_segmenter(path)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".ckpt"])
def test_pickle_formats_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match=r"refusing pickle-based checkpoint.*convert it to safetensors"):
        load_segmenter(path)
    with pytest.raises(CheckpointError, match="refusing pickle-based"):
        load_initial_weights(build_segmenter("toy", width=8), path)


def test_arch_and_class_mismatch(tmp_path):
    path = tmp_path / "g.safetensors"
    save_segmenter(build_segmenter("toy", width=8), path, meta={})
    with pytest.raises(CheckpointError, match="architecture 'toy', expected 'fcn_resnet50'"):
        load_segmenter(path, expect_arch="fcn_resnet50")
    with pytest.raises(CheckpointError, match="19 classes, expected 16"):
        load_segmenter(path, expect_classes=16)


def test_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "g.safetensors"
    model = build_segmenter("toy", width=8)
    save_segmenter(model, path, meta={})
    sidecar = read_sidecar(path)

    def rewrite(state):  # replace the weights and keep the sidecar's sha in step, so only the fit is wrong
        save_file(state, str(path))


        sidecar["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        sidecar_path(path).write_text(json.dumps(sidecar))

    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = "net.classifier.weight"
    rewrite({k: v for k, v in state.items() if k != key})
    with pytest.raises(CheckpointError, match=f"g.safetensors: weights do not fit 'toy': missing keys {key}"):
        load_segmenter(path)
    rewrite({**state, "net.extra": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected keys net.extra"):
        load_segmenter(path)
    rewrite({**state, key: torch.zeros(5, 8, 1, 1)})
    with pytest.raises(CheckpointError, match=f"shape mismatch at {key}"):
        load_segmenter(path)


def test_tampered_weights_and_corrupt_file(tmp_path):
    path = tmp_path / "g.safetensors"
    save_segmenter(build_segmenter("toy", width=8), path, meta={})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        load_segmenter(path)
    path.write_bytes(b"garbage")
    sidecar = read_sidecar(path)
    sidecar_path(path).write_text(json.dumps({**sidecar, "weights_sha256": hashlib.sha256(b"garbage").hexdigest()}))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_segmenter(path)


def test_sidecars_without_a_checksum_or_with_a_wrong_class_count_type_are_refused(tmp_path):
    path = tmp_path / "g.safetensors"
    save_segmenter(build_segmenter("toy", width=8), path, meta={})
    sidecar = read_sidecar(path)
    sidecar_path(path).write_text(json.dumps({k: v for k, v in sidecar.items() if k != "weights_sha256"}))
    with pytest.raises(CheckpointError, match="no weights_sha256 recorded, so the weights cannot be checked"):
        load_segmenter(path)
    sidecar_path(path).write_text(json.dumps({**sidecar, "num_classes": "19"}))
    with pytest.raises(CheckpointError, match="num_classes must be a positive integer, got '19'"):
        load_segmenter(path, expect_classes=19)


def test_load_initial_weights_reports_and_loads(tmp_path):
    source = _trained_toy(seed=1)
    target = build_segmenter("toy", width=16, num_classes=7)  # another head: classifier must be skipped
    bare = {k.removeprefix("net."): v for k, v in source.state_dict().items()}  # a bare-network state dict
    bare["fc.weight"] = torch.zeros(3, 3)  # e.g. an ImageNet classifier the segmenter has no slot for
    path = tmp_path / "init.safetensors"
    save_file(bare, str(path))
    head_before = target.net.classifier.weight.detach().clone()
    report = load_initial_weights(target, path)
    assert report.prefix == "net."
    assert report.shape_mismatch == ["net.classifier.bias", "net.classifier.weight"]
    assert report.unexpected == ["net.fc.weight"]
    assert report.loaded == len(bare) - 3
    torch.testing.assert_close(target.net.stem[0].weight, source.net.stem[0].weight)
    torch.testing.assert_close(target.net.classifier.weight, head_before)  # the 7-class head keeps its init


def test_load_initial_weights_into_torchvision_backbone(tmp_path, fcn_resnet50):
    # what a user's converted ImageNet ResNet file holds: bare ResNet keys (conv1.weight, layer1.0..., fc.*)
    # (the stem and layer1 only, to keep the file small)
    imagenet_like = {k.removeprefix("net.backbone."): v + 1.0 for k, v in fcn_resnet50.state_dict().items()
                     if k.startswith(("net.backbone.conv1.", "net.backbone.bn1.", "net.backbone.layer1."))
                     and v.is_floating_point()}
    imagenet_like["fc.weight"], imagenet_like["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    path = tmp_path / "resnet50.safetensors"
    save_file(imagenet_like, str(path))
    before = {k: v.clone() for k, v in fcn_resnet50.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"resnet50.safetensors: partial load, 55 of the 265 tensors "
                       r"'fcn_resnet50' expects from initial weights \(210 not filled, e\.g\. net\.backbone\.layer2"):
        load_initial_weights(fcn_resnet50, path)  # the stem and layer1 only: refused unless asked for
    assert all(torch.equal(v, before[k]) for k, v in fcn_resnet50.state_dict().items())  # and nothing loaded
    report = load_initial_weights(fcn_resnet50, path, allow_partial=True)
    assert (report.filled, report.expected, report.file_tensors) == (55, 265, 57) and not report.complete
    assert report.prefix == "net.backbone."
    assert report.unexpected == ["net.backbone.fc.bias", "net.backbone.fc.weight"]
    assert report.loaded == len(imagenet_like) - 2
    assert "net.backbone.layer4.0.conv1.weight" in report.missing and "net.classifier.4.weight" in report.missing
    torch.testing.assert_close(fcn_resnet50.net.backbone.conv1.weight, imagenet_like["conv1.weight"])


def test_load_initial_weights_nothing_matches(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"totally.different": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="other.safetensors: no tensor matches"):
        load_initial_weights(build_segmenter("toy", width=8), path)
