"""Params -> the guided translation's parts: one place that turns ``sgg`` into the SGG guidance of a domain and loads
the denoiser as ``ptl`` asks, so the domain stage, the pictures and the calibration translate exactly alike."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from dasgen.config import Config
from dasgen.diffusion.unet import load_denoiser, make_eps_fn
from dasgen.guidance.sampler import Denoiser, autocast_denoiser
from dasgen.guidance.arrangement import guidance_plan
from dasgen.guidance.sgg import Guidance, GuidedStep, Segmenter
from dasgen.seeding import image_seed


def domain_guidance(config: Config, segmenter: Segmenter, n: int, n_steps: int, arrangement: str | None = None,
                    observer: Callable[[GuidedStep], None] | None = None) -> Guidance | None:
    """SGG for domain n's chain of ``n_steps`` reverse steps, guided by ``segmenter`` (g_{n-1}, Eq. 11); None when
    unguided (arrangement ``none``). ``arrangement`` overrides ``sgg.arrangement`` (pictures); ``observer`` sees every
    guided step (calibration)."""
    arrangement = arrangement or config.sgg.arrangement
    if arrangement == "none":
        return None
    plan = guidance_plan(arrangement, n_steps, image_seed(config.run.seed, n, "plan"))
    sgg = config.sgg
    return Guidance(segmenter=segmenter, plan=plan, lambda_=sgg.lambda_, reduction=sgg.loss_reduction,
                    gradient_at=sgg.gradient_at, max_step=sgg.max_step, max_copies_per_pass=sgg.max_copies_per_pass,
                    observer=observer)


def domain_denoiser(config: Config, model_dir: Path, device: torch.device) -> Denoiser:
    """The target DDPM's eps_theta (its checksum checked), under bf16 autocast when ``ptl.unet_bf16`` (deviation)."""
    eps_fn = make_eps_fn(load_denoiser(model_dir, device=device, require_checksum=True))
    return autocast_denoiser(eps_fn, torch.bfloat16) if config.ptl.unet_bf16 else eps_fn
