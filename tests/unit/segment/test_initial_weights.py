"""Initial weights of g_0 (``segmenter.weights``): checked, recorded, and ``imagenet`` through the libraries' own APIs.

- a file that fills only part of the network stops with one line naming the counts (loaded / expected), and nothing
  is trained or written, unless ``segmenter.allow_partial_weights``; the counts go into the checkpoint sidecar and
  stay there down the chain g_0 -> g_n;
- ``imagenet`` reads torchvision's file from ``$TORCH_HOME`` (a cache this test fills; no network) and NVIDIA's MiT
  encoder through transformers from a Hugging Face cache this test fills (offline);
- SegFormer files in the Hub's tensor names load (transformers 5 renamed the modules).
"""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import write_tiny_params
from dasgen.cli import app
from dasgen.config import config_from_dict, load_config
from dasgen.errors import CheckpointError, ConfigError
from dasgen.pipeline.segmenters import new_segmenter
from dasgen.pipeline.workspace import Workspace
from dasgen.segment.checkpoint import initial_weights_scope, load_segmenter, read_sidecar, save_segmenter
from dasgen.segment.models import build_segmenter

runner = CliRunner()


def _one_error_line(result) -> str:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def _toy_params(tmp_path: Path, **segmenter) -> Path:
    return write_tiny_params(tmp_path, segmenter={"width": 8, **segmenter})


# -- partial loads ----------------------------------------------------------------------------------------------------


def test_a_file_matching_one_tensor_stops_train_g0_with_the_counts(workspace):
    """The reported case: a file for another network, one of whose names fits, used to train from random init with
    exit 0 and an unseen log line."""
    g0 = Workspace(workspace).segmenter_path(0)
    before = g0.read_bytes()
    model = build_segmenter("toy", width=8)
    expected = len(initial_weights_scope(model))
    other = {f"resnet.layer{i}.weight": torch.zeros(4) for i in range(40)}
    other["net.stem.0.weight"] = torch.ones_like(model.state_dict()["net.stem.0.weight"])  # the one that fits
    save_file(other, str(workspace / "other.safetensors"))
    result = runner.invoke(app, ["--params", str(workspace / "params.yaml"), "--workspace", str(workspace),
                                 "--set", "segmenter.weights=other.safetensors", "train-g0"])
    line = _one_error_line(result)
    assert f"other.safetensors: partial load, 1 of the {expected} tensors 'toy' expects" in line
    assert "40 of the file's 41 tensors unused" in line and "segmenter.allow_partial_weights: true" in line
    assert g0.read_bytes() == before  # nothing trained, nothing written


def test_allowed_partial_load_is_recorded_in_the_sidecar_down_the_chain(tmp_path):
    source = build_segmenter("toy", width=8)
    layer = {k.removeprefix("net."): v + 1.0 for k, v in source.state_dict().items() if k.startswith("net.stem.")}
    save_file(layer, str(tmp_path / "stem.safetensors"))
    config = load_config(_toy_params(tmp_path, weights="stem.safetensors"))
    with pytest.raises(CheckpointError, match=r"stem.safetensors: partial load, 3 of the \d+ tensors 'toy' expects"):
        new_segmenter(config, tmp_path)
    config = load_config(_toy_params(tmp_path, weights="stem.safetensors", allow_partial_weights=True))
    model = new_segmenter(config, tmp_path)
    torch.testing.assert_close(model.net.stem[0].weight, layer["stem.0.weight"])
    save_segmenter(model, tmp_path / "g0.safetensors", meta={"domain": 0})
    record = read_sidecar(tmp_path / "g0.safetensors")["initial_weights"]
    scope = len(initial_weights_scope(model))
    assert record["source"] == str(tmp_path / "stem.safetensors") and record["complete"] is False
    assert (record["loaded"], record["expected"], record["file_tensors"]) == (3, scope, 3)
    assert len(record["sha256"]) == 64
    g1 = load_segmenter(tmp_path / "g0.safetensors")  # g_n is g_{n-1} fine-tuned: it keeps the record
    save_segmenter(g1, tmp_path / "g1.safetensors", meta={"domain": 1})
    assert read_sidecar(tmp_path / "g1.safetensors")["initial_weights"] == record


def test_a_randomly_initialised_g_has_no_record(tmp_path):
    model = new_segmenter(load_config(_toy_params(tmp_path)), tmp_path)
    save_segmenter(model, tmp_path / "g.safetensors", meta={})
    assert "initial_weights" not in read_sidecar(tmp_path / "g.safetensors")  # sidecars as before the option


def test_imagenet_for_an_arch_without_published_weights_is_a_config_error():
    with pytest.raises(ConfigError, match="segmenter.weights: imagenet: arch 'toy' has no published ImageNet"):
        config_from_dict({"segmenter": {"weights": "imagenet"}})
    with pytest.raises(ConfigError, match="arch 'my.nets:build' has no published ImageNet"):
        config_from_dict({"segmenter": {"arch": "my.nets:build", "weights": "imagenet"}})


# -- imagenet through torchvision's cache -----------------------------------------------------------------------------


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME, and torch.hub's downloader replaced by one that fails as without network."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home, calls


def test_imagenet_weights_come_from_torchvisions_cache(tmp_path, torch_home):
    """A ResNet-50 state dict (torchvision's names, random values) saved where torch.hub caches
    ResNet50_Weights.IMAGENET1K_V1 is what `weights: imagenet` loads, without touching the network."""
    from torchvision.models import ResNet50_Weights, resnet50

    home, calls = torch_home
    torch.manual_seed(3)  # test-local values, unlike any init
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in resnet50().state_dict().items()}
    cached = home / "hub" / "checkpoints" / Path(ResNet50_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    config = load_config(write_tiny_params(tmp_path, segmenter={"arch": "fcn_resnet50", "weights": "imagenet"}))
    model = new_segmenter(config, tmp_path)
    assert calls == []
    torch.testing.assert_close(model.net.backbone.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    record = model.initial_weights
    assert record["source"] == "imagenet: torchvision ResNet50_Weights.IMAGENET1K_V1" and record["complete"]
    assert record["loaded"] == record["expected"] == len(initial_weights_scope(model))
    assert record["file_tensors"] - record["loaded_in_all"] == 2  # ImageNet's 1000-way fc has no slot


def test_imagenet_without_network_or_cache_names_the_file_to_fetch(tmp_path, torch_home):
    home, calls = torch_home
    config = load_config(write_tiny_params(tmp_path, segmenter={"arch": "fcn_resnet50", "weights": "imagenet"}))
    with pytest.raises(CheckpointError) as caught:
        new_segmenter(config, tmp_path)
    message = str(caught.value)
    assert calls == ["https://download.pytorch.org/models/resnet50-0676ba61.pth"] and "\n" not in message
    assert message.startswith("segmenter.weights: imagenet: cannot get torchvision ResNet50_Weights.IMAGENET1K_V1")
    assert str(home / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in message


def test_a_pickle_payload_in_the_torch_cache_never_runs(tmp_path, torch_home):
    home, _ = torch_home
    sentinel = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    cached = home / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    torch.save({"conv1.weight": Payload()}, cached, pickle_module=pickle)
    config = load_config(write_tiny_params(tmp_path, segmenter={"arch": "fcn_resnet50", "weights": "imagenet"}))
    with pytest.raises(CheckpointError, match=r"resnet50-0676ba61.pth: not a readable torchvision .* delete it"):
        new_segmenter(config, tmp_path)
    assert not sentinel.exists()


# -- SegFormer: the Hub's names, and imagenet through transformers ----------------------------------------------------


def _mit_b0(num_labels: int, seed: int):
    """transformers' own model of the given head, MiT-b0 sized, with seeded random weights."""
    transformers = pytest.importorskip("transformers", reason="segformer extra not installed")
    from dasgen.segment.paper_nets import SEGFORMER_VARIANTS

    config = transformers.SegformerConfig(num_labels=num_labels, **SEGFORMER_VARIANTS["segformer_b0"])
    torch.manual_seed(seed)
    head = transformers.SegformerForImageClassification if num_labels == 1000 else \
        transformers.SegformerForSemanticSegmentation
    return head(config)


def test_segformer_file_in_the_hubs_names_loads(tmp_path):
    hub = _mit_b0(19, seed=5)
    hub.save_pretrained(tmp_path / "hub")  # transformers writes the Hub's names: segformer.encoder.block.0.0...
    path = tmp_path / "hub" / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        names = list(handle.keys())
    assert any(k.startswith("segformer.encoder.block.") for k in names)
    assert any(k.startswith("decode_head.linear_c.") for k in names)
    model = build_segmenter("segformer_b0")
    from dasgen.segment.checkpoint import load_initial_weights

    report = load_initial_weights(model, path)
    assert report.complete and report.loaded == len(model.state_dict()) and report.file_tensors == len(names)
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():  # the same network: logits equal transformers' own model on the same input
        hub.eval(), model.eval()
        expected = hub(pixel_values=(x - model._mean) / model._std).logits
        torch.testing.assert_close(model.net(pixel_values=(x - model._mean) / model._std).logits, expected)


def test_segformer_imagenet_comes_from_the_hugging_face_cache(tmp_path, monkeypatch):
    encoder = _mit_b0(1000, seed=6)  # the shape of nvidia/mit-b0: an ImageNet classifier on the MiT encoder
    import huggingface_hub.constants as hf

    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--nvidia--mit-b0" / "snapshots" / ("0" * 40)
    encoder.save_pretrained(snapshot)
    (cache / "models--nvidia--mit-b0" / "refs").mkdir()
    (cache / "models--nvidia--mit-b0" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # the cache, never the network
    config = load_config(write_tiny_params(tmp_path, segmenter={"arch": "segformer_b0", "weights": "imagenet"}))
    model = new_segmenter(config, tmp_path)
    torch.testing.assert_close(model.net.segformer.stages[3].blocks[1].mlp.fc2.weight,
                               encoder.segformer.stages[3].blocks[1].mlp.fc2.weight)
    record = model.initial_weights
    assert record["source"] == "imagenet: transformers nvidia/mit-b0" and record["complete"]
    assert record["loaded"] == record["expected"]
