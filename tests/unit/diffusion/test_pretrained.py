"""A pretrained DDPM (``diffusion.pretrained``) is checked against the params before it is used.

A model trained on another beta schedule or range, another T, v- or x0-prediction, or another sample size would
translate with the wrong noise model and no error; each is refused with one line naming the field and the params key.
The folder may be a UNet or a whole pipeline (``unet/`` + ``scheduler/``); a Hub id goes through diffusers' own
``from_pretrained`` (tested on a Hugging Face cache the test fills, offline).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dasgen.cli import app
from dasgen.diffusion.unet import (CONFIG_NAME, SCHEDULER_CONFIG_NAME, DenoiserExpectation, build_unet,
                                   load_pretrained_denoiser, save_denoiser)
from dasgen.errors import CheckpointError
from dasgen.pipeline.workspace import Workspace

PAPER = DenoiserExpectation(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, resolution=(16, 32))
SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
             "beta_schedule": "linear", "prediction_type": "epsilon", "variance_type": "fixed_small"}


def _unet(seed: int = 0):
    return build_unet(sample_size=(16, 32), block_out_channels=(8, 16), attention_levels=(False, False),
                      norm_num_groups=4, seed=seed)


def _pipeline_folder(folder: Path, scheduler: dict | None, seed: int = 0) -> Path:
    """A diffusers DDPM pipeline layout: unet/ (dasgen's tiny UNet) and scheduler/scheduler_config.json."""
    save_denoiser(_unet(seed), folder / "unet")
    if scheduler is not None:
        (folder / "scheduler").mkdir(parents=True)
        (folder / "scheduler" / SCHEDULER_CONFIG_NAME).write_text(json.dumps(scheduler))
    return folder


@pytest.mark.parametrize("change, message", [
    ({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule 'squaredcos_cap_v2', but dasgen's noise schedule is "
                                             "linear"),
    ({"trained_betas": [0.1] * 1000}, "trained_betas, but dasgen's noise schedule is linear"),
    ({"beta_end": 0.012}, "beta_end 0.012, but diffusion.beta_end is 0.02; make them equal"),
    ({"beta_start": 0.00085}, "beta_start 0.00085, but diffusion.beta_start is 0.0001"),
    ({"num_train_timesteps": 4000}, "num_train_timesteps 4000, but diffusion.num_train_timesteps is 1000"),
    ({"prediction_type": "v_prediction"}, "prediction_type 'v_prediction', but dasgen's sampler takes a noise"),
    ({"prediction_type": "sample"}, "prediction_type 'sample'"),
])
def test_a_scheduler_config_other_than_the_params_is_refused(tmp_path, change, message):
    folder = _pipeline_folder(tmp_path / "ddpm", {**SCHEDULER, **change})
    with pytest.raises(CheckpointError) as caught:
        load_pretrained_denoiser("ddpm", root=tmp_path, expect=PAPER)
    assert str(caught.value).startswith(f"{folder / 'scheduler' / SCHEDULER_CONFIG_NAME}: {message}")
    assert "\n" not in str(caught.value)


def test_another_sample_size_is_refused_and_a_matching_model_loads(tmp_path):
    _pipeline_folder(tmp_path / "ddpm", SCHEDULER, seed=4)
    with pytest.raises(CheckpointError, match=r"unet/config.json: trained at 16x32 \(sample_size\), but "
                                              r"data.resolution is \[32, 64\]; set data.resolution: \[16, 32\]"):
        load_pretrained_denoiser("ddpm", root=tmp_path, expect=DenoiserExpectation(1000, 1e-4, 0.02, (32, 64)))
    unet = load_pretrained_denoiser("ddpm", root=tmp_path, expect=PAPER)
    torch.testing.assert_close(unet.conv_in.weight, _unet(seed=4).conv_in.weight)
    # a bare UNet folder without a scheduler config: only the UNet can be checked, the params define the schedule
    save_denoiser(_unet(seed=4), tmp_path / "bare")
    assert not (tmp_path / "bare" / SCHEDULER_CONFIG_NAME).exists()
    load_pretrained_denoiser("bare", root=tmp_path, expect=PAPER)
    v_prediction = {**SCHEDULER, "prediction_type": "v_prediction"}
    (tmp_path / "bare" / SCHEDULER_CONFIG_NAME).write_text(json.dumps(v_prediction))
    with pytest.raises(CheckpointError, match="bare/scheduler_config.json: prediction_type 'v_prediction'"):
        load_pretrained_denoiser("bare", root=tmp_path, expect=PAPER)


def test_neither_a_folder_nor_a_hub_id_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"diffusion.pretrained: .*/no/such/dir: no such directory \(nor a "
                                              r"Hub id 'owner/name'\)"):
        load_pretrained_denoiser("no/such/dir", root=tmp_path, expect=PAPER)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache in tmp_path; returns a function that stores a pipeline folder as ``repo``."""
    import huggingface_hub.constants as hf

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # the cache only: a test never reaches the network

    def store(repo: str, scheduler: dict, seed: int = 0) -> Path:
        folder = cache / f"models--{repo.replace('/', '--')}"
        _pipeline_folder(folder / "snapshots" / ("1" * 40), scheduler, seed=seed)
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text("1" * 40)
        return folder

    return store


def test_a_hub_id_loads_through_diffusers_and_is_checked(tmp_path, hub_cache):
    hub_cache("someone/ddpm-ok", SCHEDULER, seed=7)
    hub_cache("someone/ddpm-v", {**SCHEDULER, "prediction_type": "v_prediction"})
    unet = load_pretrained_denoiser("someone/ddpm-ok", root=tmp_path, expect=PAPER)
    torch.testing.assert_close(unet.conv_in.weight, _unet(seed=7).conv_in.weight)
    with pytest.raises(CheckpointError, match="someone/ddpm-v/scheduler/scheduler_config.json: prediction_type 'v_prediction'"):
        load_pretrained_denoiser("someone/ddpm-v", root=tmp_path, expect=PAPER)
    with pytest.raises(CheckpointError, match="someone/absent: neither a folder under .* nor a UNet2DModel on the "
                                              "Hugging Face Hub or in its cache"):
        load_pretrained_denoiser("someone/absent", root=tmp_path, expect=PAPER)


def test_train_diffusion_refuses_a_v_prediction_model_with_one_line(workspace):
    model = Workspace(workspace).diffusion_model / CONFIG_NAME
    before = model.read_bytes()
    _pipeline_folder(workspace / "vpred", {**SCHEDULER, "prediction_type": "v_prediction"})
    result = CliRunner().invoke(app, ["--params", str(workspace / "params.yaml"), "--workspace", str(workspace),
                                      "--set", "diffusion.pretrained=vpred", "train-diffusion"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "vpred/scheduler/scheduler_config.json: prediction_type 'v_prediction'" in errors[0]
    assert model.read_bytes() == before  # the workspace's DDPM is untouched
