"""Params -> the guided translation's settings: one place that turns ``sgg`` and ``ptl`` into a ``Guidance`` and the
sampler's options, so the domain stage and the pictures translate exactly alike."""

from __future__ import annotations

from typing import Any

from dasgen.config import Config
from dasgen.guidance.arrangement import guidance_plan
from dasgen.guidance.sampler import Guidance
from dasgen.guidance.sgg import Segmenter
from dasgen.seeding import image_seed


def domain_guidance(config: Config, segmenter: Segmenter, n: int, n_steps: int,
                    arrangement: str | None = None) -> Guidance | None:
    """SGG for domain n's chain of ``n_steps`` reverse steps, guided by ``segmenter`` (g_{n-1}); None when unguided
    (arrangement ``none``). ``arrangement`` overrides ``sgg.arrangement`` (pictures)."""
    arrangement = arrangement or config.sgg.arrangement
    if arrangement == "none":
        return None
    plan = guidance_plan(arrangement, n_steps, image_seed(config.run.seed, n, "plan"))
    return Guidance(segmenter=segmenter, lambda_=config.sgg.lambda_, plan=plan,
                    max_copies_per_pass=config.sgg.max_copies_per_pass, lcg_normalise=config.sgg.lcg_normalise,
                    lcg_view=config.sgg.lcg_view,
                    gradient_at=config.sgg.gradient_at, max_step=config.sgg.max_step, step_rms=config.sgg.step_rms,
                    reference_pixels=(config.sgg.lambda_resolution[0] * config.sgg.lambda_resolution[1]
                                      if config.sgg.lambda_resolution else None))


def sampler_options(config: Config) -> dict[str, Any]:
    """Keyword arguments of :func:`dasgen.guidance.sampler.translate` that come from params."""
    return {"variance": config.ptl.reverse_variance}
