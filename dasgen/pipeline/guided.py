"""Params -> the guided translation's settings: one place that turns ``sgg`` into the SGG guidance of a domain, so
the domain stage, the pictures and the calibration translate exactly alike."""

from __future__ import annotations

from typing import Callable

from dasgen.config import Config
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
