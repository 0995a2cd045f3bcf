"""Which SGG module runs at each reverse step (paper Sec. 4.2 end, Tab. 5, and the Tab. 2 ablations).

A plan is a list with one entry per reverse step: ``plan[i]`` is ``"lcg"``, ``"gsg"`` or ``None`` (unguided) for
reverse step i, where i = 0 is the first step, from x_n. It depends only on (arrangement, n_steps, seed), never on
the images, so batch composition cannot change it.

The paper applies LCG at k in {n, n-2, ...} and GSG at k in {n-1, n-3, ...} ("alternate"), i.e. ceil(n/2) LCG and
floor(n/2) GSG steps. Every mixed arrangement here keeps those counts, so the Tab. 5 ablations differ only in order.
"""

from __future__ import annotations

import math

import torch

from dasgen.errors import ConfigError

LCG = "lcg"
GSG = "gsg"

ARRANGEMENTS = ("alternate", "lcg-then-gsg", "gsg-then-lcg", "random", "lcg-only", "gsg-only", "alternate-no-gsg",
                "none")


def guidance_plan(arrangement: str, n_steps: int, seed: int = 0) -> list[str | None]:
    """The module applied at each of ``n_steps`` reverse steps for ``arrangement`` (one of :data:`ARRANGEMENTS`).

    - ``alternate`` (paper default, Tab. 5 c): LCG, GSG, LCG, ... starting with LCG at the first reverse step.
    - ``lcg-then-gsg`` / ``gsg-then-lcg`` (Tab. 5 a/b): one block then the other.
    - ``random`` (Tab. 5 d, "RandMix"): the same counts in an order shuffled by ``seed`` (reproducible).
    - ``lcg-only`` / ``gsg-only`` (Tab. 2 e/d: w/o GSG, w/o LCG): that module at every step.
    - ``alternate-no-gsg`` (a diagnosis, not in the paper): ``alternate``'s LCG steps, its GSG steps unguided. Against
      ``alternate`` it measures what GSG itself adds; ``lcg-only`` also doubles the LCG steps.
    - ``none`` (Tab. 2 b, w/o SGG): no guidance.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    n_lcg = math.ceil(n_steps / 2)  # LCG at k = n, n-2, ... (Sec. 4.2)
    n_gsg = n_steps - n_lcg
    if arrangement == "alternate":
        return [LCG if i % 2 == 0 else GSG for i in range(n_steps)]
    if arrangement == "lcg-then-gsg":
        return [LCG] * n_lcg + [GSG] * n_gsg
    if arrangement == "gsg-then-lcg":
        return [GSG] * n_gsg + [LCG] * n_lcg
    if arrangement == "random":
        generator = torch.Generator(device="cpu").manual_seed(seed)
        order = torch.randperm(n_steps, generator=generator).tolist()
        plan: list[str | None] = [GSG] * n_steps
        for step in order[:n_lcg]:
            plan[step] = LCG
        return plan
    if arrangement == "lcg-only":
        return [LCG] * n_steps
    if arrangement == "gsg-only":
        return [GSG] * n_steps
    if arrangement == "alternate-no-gsg":
        return [LCG if i % 2 == 0 else None for i in range(n_steps)]
    if arrangement == "none":
        return [None] * n_steps
    raise ConfigError(f"unknown SGG arrangement {arrangement!r}; expected one of {', '.join(ARRANGEMENTS)}")
