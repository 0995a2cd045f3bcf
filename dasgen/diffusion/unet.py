"""The denoiser eps_theta (paper Sec. 3, Eq. 4): a diffusers ``UNet2DModel``, its factory and its checkpoint I/O.

The model is saved in the diffusers ``save_pretrained`` layout (``config.json`` +
``diffusion_pytorch_model.safetensors``), so a user can bring any pretrained unconditional diffusers DDPM UNet instead
of training one (``diffusion.pretrained``: a directory, or a Hub id through diffusers' own loader,
:func:`load_pretrained_denoiser`), checked against the params first: the noise schedule its ``scheduler_config.json``
records (beta schedule and range, T), its prediction type and its sample size. Loading never uses pickle; only a Hub id
reaches the Hugging Face Hub (or its cache).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import UNet2DModel

from dasgen.errors import CheckpointError
from dasgen.io.atomic import fsync_dir, sha256_file

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
CHECKSUM_NAME = "dasgen_checksum.json"  # {"weights_sha256": ...}: written beside the weights by save_denoiser
SCHEDULER_CONFIG_NAME = "scheduler_config.json"  # a diffusers scheduler's config: the schedule the UNet was trained on
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the Hugging Face Hub spells a repository


def build_unet(
    *,
    sample_size: tuple[int, int],
    block_out_channels: Sequence[int] = (32, 64, 64),  # small enough for ~0.1 s per batch-8 train step at 32x64 on CPU
    layers_per_block: int = 1,  # one ResNet block per level: the toy needs width more than depth
    attention_levels: Sequence[bool] = (False, False, True),  # attention only at the coarsest level, as DDPM (16x16)
    norm_num_groups: int = 8,  # 32 groups (DDPM) would not divide 32 channels into useful groups
    dropout: float = 0.0,  # DDPM used 0.1 on CIFAR-10; off so toy runs converge fast and stay deterministic
    seed: int | None = None,
) -> UNet2DModel:
    """A DDPM-style UNet (ResNet blocks, sinusoidal time embedding, attention at chosen levels) predicting eps.

    ``sample_size`` is (H, W); rectangles are fine. Each level but the last halves the resolution, so H and W must be
    divisible by ``2 ** (len(block_out_channels) - 1)``. With ``seed`` the initial weights are drawn from it (the global
    RNG is forked and left as it was), so two trainings from scratch start from, and end with, the same weights.
    """
    if len(attention_levels) != len(block_out_channels):
        raise ValueError(
            f"attention_levels has {len(attention_levels)} entries, block_out_channels {len(block_out_channels)}"
        )
    height, width = (int(s) for s in sample_size)
    factor = 2 ** (len(block_out_channels) - 1)
    if height % factor or width % factor:
        levels = len(block_out_channels)
        raise ValueError(f"sample_size {height}x{width} must be divisible by {factor} for {levels} levels")
    down = tuple("AttnDownBlock2D" if attn else "DownBlock2D" for attn in attention_levels)
    up = tuple("AttnUpBlock2D" if attn else "UpBlock2D" for attn in reversed(attention_levels))
    with torch.random.fork_rng(devices=[]):  # layer init draws from the global RNG: seed a private copy of it
        if seed is not None:
            torch.manual_seed(seed)
        return UNet2DModel(
            sample_size=(height, width),
            in_channels=3,
            out_channels=3,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=tuple(int(c) for c in block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            dropout=dropout,
        )


def save_denoiser(unet: UNet2DModel, directory: Path) -> str:
    """Write ``unet`` to ``directory`` in the diffusers layout, atomically; return the weights file's sha256.

    The model is written into a temporary sibling directory, fsynced, then renamed over ``directory`` (an existing
    one is moved aside first and deleted afterwards), so readers see either the old or the new model, never half.
    The weights' sha256 goes into :data:`CHECKSUM_NAME` beside them, which :func:`load_denoiser` checks.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        unet.save_pretrained(staging, safe_serialization=True)
        digest = sha256_file(staging / WEIGHTS_NAME)
        (staging / CHECKSUM_NAME).write_text(json.dumps({"weights_sha256": digest}) + "\n")
        for name in os.listdir(staging):
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())
        old = None
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old / "model")
        os.replace(staging, directory)
        fsync_dir(directory.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return digest


def _model_dir(directory: Path) -> Path:
    """The folder holding the UNet: ``directory`` itself, or its ``unet/`` subfolder for a whole diffusers pipeline."""
    if (directory / CONFIG_NAME).is_file():
        return directory
    if (directory / "unet" / CONFIG_NAME).is_file():
        return directory / "unet"
    raise CheckpointError(f"{directory}: no diffusers {CONFIG_NAME} (expected a UNet2DModel from save_pretrained)")


def verify_denoiser_checksum(model_dir: Path, *, required: bool) -> str | None:
    """Compare the weights with the sha256 recorded by :func:`save_denoiser`; CheckpointError if they differ (a
    flipped bit would otherwise translate every image to black), or if ``required`` and none was recorded. Returns
    the verified sha256 (None when none was recorded and none is required)."""
    record = model_dir / CHECKSUM_NAME
    if not record.is_file():
        if required:
            raise CheckpointError(f"{model_dir}: no {CHECKSUM_NAME} (recorded sha256 of the weights); rerun "
                                  "`dasgen train-diffusion` to write the DDPM with its checksum")
        return None
    try:
        expected = json.loads(record.read_text())["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{record}: unreadable checksum record") from None
    if sha256_file(model_dir / WEIGHTS_NAME) != expected:
        raise CheckpointError(f"{model_dir / WEIGHTS_NAME}: sha256 differs from the one recorded when it was saved "
                              "(the file was altered or damaged); rerun `dasgen train-diffusion`")
    return expected


def load_denoiser(directory: Path, *, device: str | torch.device = "cpu",
                  require_checksum: bool = False) -> UNet2DModel:
    """Load an unconditional diffusers ``UNet2DModel`` from disk (safetensors only, no Hub access), in eval mode.

    Accepts a model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) or a pipeline folder with a
    ``unet/`` subfolder. Raises ``CheckpointError`` naming the path for a missing folder or file, a pickle-only
    checkpoint, a config of another class, a class-conditional UNet, a config diffusers cannot build, or weights
    whose sha256 differs from the one recorded beside them (required to exist with ``require_checksum``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: denoiser directory does not exist")
    model_dir = _model_dir(directory)
    config_path = model_dir / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{config_path}: unreadable diffusers config ({error})") from error
    _check_unet_config(config, str(config_path))
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file():
        pickled = model_dir / "diffusion_pytorch_model.bin"
        hint = " (only a pickle .bin exists; convert it to safetensors, dasgen never loads pickle)"
        hint = hint if pickled.exists() else ""
        raise CheckpointError(f"{weights}: weights file missing{hint}")
    verify_denoiser_checksum(model_dir, required=require_checksum)
    try:
        # low_cpu_mem_usage=False: the default needs `accelerate` and warns on every load without it
        unet = UNet2DModel.from_pretrained(model_dir, use_safetensors=True, local_files_only=True,
                                           low_cpu_mem_usage=False)
    except Exception as error:  # noqa: BLE001 - diffusers raises anything (ZeroDivisionError for 0 norm groups)
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise CheckpointError(f"{model_dir}: cannot load UNet2DModel ({reason})") from None
    return unet.to(device).eval()


def _check_unet_config(config: Any, where: str) -> None:
    """One-line CheckpointError unless ``config`` (a ``config.json``) is an unconditional 3-channel UNet2DModel."""
    if not isinstance(config, dict) or config.get("_class_name") != "UNet2DModel":
        found = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{where}: _class_name is {found!r}, expected 'UNet2DModel'")
    if config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None:
        raise CheckpointError(f"{where}: class-conditional UNet2DModel; dasgen needs an unconditional denoiser")
    if config.get("in_channels", 3) != 3 or config.get("out_channels", 3) not in (3, 6):
        raise CheckpointError(f"{where}: in_channels/out_channels must be 3 / 3 (or 6 with learned variance)")


@dataclass(frozen=True)
class DenoiserExpectation:
    """What the params say a denoiser was trained for: the noise schedule (T, linear betas from ``beta_start`` to
    ``beta_end``, Sec. 5.1) and the translation resolution (H, W)."""

    num_train_timesteps: int
    beta_start: float
    beta_end: float
    resolution: tuple[int, int]


# diffusers' DDPMScheduler defaults: what a scheduler_config.json that leaves a field out means
_SCHEDULER_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                       "prediction_type": "epsilon", "trained_betas": None}


def check_pretrained_config(unet_config: dict, scheduler_config: dict | None, expect: DenoiserExpectation,
                            *, unet_where: str, scheduler_where: str = "") -> None:
    """Refuse, with one CheckpointError line naming the field and the params key to change, a pretrained denoiser
    trained for something other than the params: another sample size than ``data.resolution``, or -- when its
    scheduler config is known -- another beta schedule or range, another T, or a prediction other than eps (Eq. 4).
    Without a scheduler config only the UNet is checked: the params then define the schedule. ``unet_where`` /
    ``scheduler_where``: the two configs' paths (or Hub names), for the messages."""
    _check_unet_config(unet_config, unet_where)
    size = unet_config.get("sample_size")
    if size is not None:
        size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(v) for v in size)
        if size != tuple(expect.resolution):
            raise CheckpointError(f"{unet_where}: trained at {size[0]}x{size[1]} (sample_size), but "
                                  f"data.resolution is {list(expect.resolution)}; set data.resolution: "
                                  f"[{size[0]}, {size[1]}] or bring a model of that size")
    if scheduler_config is None:
        return
    sched = {**_SCHEDULER_DEFAULTS, **scheduler_config}
    at = scheduler_where
    if sched["trained_betas"] is not None or sched["beta_schedule"] != "linear":
        kind = "trained_betas" if sched["trained_betas"] is not None else f"beta_schedule {sched['beta_schedule']!r}"
        raise CheckpointError(f"{at}: {kind}, but dasgen's noise schedule is linear (diffusion.beta_start/beta_end, "
                              "Sec. 5.1); a model trained on another schedule predicts the wrong noise")
    if int(sched["num_train_timesteps"]) != expect.num_train_timesteps:
        raise CheckpointError(f"{at}: num_train_timesteps {sched['num_train_timesteps']}, but "
                              f"diffusion.num_train_timesteps is {expect.num_train_timesteps}; make them equal")
    for key in ("beta_start", "beta_end"):
        if not math.isclose(float(sched[key]), getattr(expect, key), rel_tol=1e-6):
            raise CheckpointError(f"{at}: {key} {sched[key]}, but diffusion.{key} is {getattr(expect, key)}; "
                                  "make them equal")
    if sched["prediction_type"] != "epsilon":
        raise CheckpointError(f"{at}: prediction_type {sched['prediction_type']!r}, but dasgen's sampler takes a "
                              "noise (epsilon) prediction, Eq. 4; bring an epsilon-prediction model")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable JSON ({error})") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _local_scheduler_config(directory: Path, model_dir: Path) -> Path | None:
    """The scheduler config of a local model: beside the UNet, or in the pipeline's ``scheduler/`` folder."""
    for candidate in (model_dir / SCHEDULER_CONFIG_NAME, directory / "scheduler" / SCHEDULER_CONFIG_NAME,
                      model_dir.parent / "scheduler" / SCHEDULER_CONFIG_NAME):
        if candidate.is_file():
            return candidate
    return None


def load_pretrained_denoiser(spec: str, *, root: Path, expect: DenoiserExpectation,
                             device: str | torch.device = "cpu") -> UNet2DModel:
    """``diffusion.pretrained``: a local diffusers folder (relative to ``root``) or a Hugging Face Hub id
    (``owner/name``, a UNet2DModel or a DDPM pipeline with ``unet/`` and ``scheduler/``) loaded with diffusers' own
    ``from_pretrained`` (the Hub, or its cache offline), checked by :func:`check_pretrained_config` before its
    weights are read. Safetensors weights only; one-line CheckpointError for anything else."""
    directory = Path(root) / spec
    if directory.is_dir():
        model_dir = _model_dir(directory)
        scheduler = _local_scheduler_config(directory, model_dir)
        check_pretrained_config(_read_json(model_dir / CONFIG_NAME),
                                None if scheduler is None else _read_json(scheduler), expect,
                                unet_where=str(model_dir / CONFIG_NAME), scheduler_where=str(scheduler))
        return load_denoiser(directory, device=device)
    if not HUB_ID.match(spec) or Path(spec).is_absolute():
        raise CheckpointError(f"diffusion.pretrained: {directory}: no such directory (nor a Hub id 'owner/name')")
    from diffusers import DDPMScheduler

    def hub_config(cls: Any, subfolder: str | None) -> dict | None:
        try:
            return dict(cls.load_config(spec, subfolder=subfolder))
        except (OSError, ValueError):  # EnvironmentError: not in that folder, not on the Hub, not cached offline
            return None

    subfolder = "unet" if hub_config(UNet2DModel, "unet") is not None else None
    unet_config = hub_config(UNet2DModel, subfolder)
    if unet_config is None:
        raise CheckpointError(f"diffusion.pretrained: {spec}: neither a folder under {Path(root).resolve()} nor a "
                              "UNet2DModel on the Hugging Face Hub or in its cache (offline: fill the cache first)")
    scheduler = hub_config(DDPMScheduler, "scheduler" if subfolder else None)
    check_pretrained_config(unet_config, scheduler, expect, unet_where=f"{spec}/{subfolder or '.'}/{CONFIG_NAME}",
                            scheduler_where=f"{spec}/{'scheduler/' if subfolder else ''}{SCHEDULER_CONFIG_NAME}")
    try:
        unet = UNet2DModel.from_pretrained(spec, subfolder=subfolder, use_safetensors=True, low_cpu_mem_usage=False)
    except Exception as error:  # noqa: BLE001 - diffusers raises OSError, EnvironmentError, ValueError ...
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise CheckpointError(f"diffusion.pretrained: {spec}: cannot load its UNet2DModel with safetensors weights "
                              f"({reason})") from None
    return unet.to(device).eval()


def make_eps_fn(unet: UNet2DModel) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """eps_theta(x_t, t) as a plain function: x (B, 3, H, W) in [-1, 1], t (B,) int64 original timesteps -> eps.

    A learned-variance UNet (6 output channels, as in improved DDPM) returns eps in its first 3 channels; the
    variance half is dropped because the paper fixes Sigma = beta_t.
    """

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = unet(x, t).sample  # (B, 3 or 6, H, W)
        return out[:, :3]

    return eps_fn
