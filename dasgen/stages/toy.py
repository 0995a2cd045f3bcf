"""Stage ``toy``: write the procedural toy source (GTA5 layout) and target (Cityscapes layout)."""

from __future__ import annotations

from pathlib import Path

from dasgen.config import Config
from dasgen.datasets.toy import generate_toy


def run_toy(config: Config, *, root: Path = Path("."), out: Path | None = None, progress: bool = True,
            **overrides: int) -> dict:
    """Generate the toy domains from ``params.yaml: toy``; deterministic for ``toy.seed``.

    ``overrides`` replace the seed or image counts (e.g. the ablation's oracle toy: another seed, labelled target
    images only) while the look and geometry stay the params' own.
    """
    t = config.toy
    knobs = {"seed": t.seed, "n_source": t.n_source, "n_target_train": t.n_target_train,
             "n_target_val": t.n_target_val} | overrides
    return generate_toy(out or root / t.out, height=t.height, width=t.width, progress=progress,
                        rendering_gap=t.rendering_gap, colour_swap=t.colour_swap,
                        thin_object_scale=t.thin_object_scale, **knobs)
