"""What the experiment scripts in ``bench/experiments/`` share: g_0's recipe on tensors in memory, and the record of
their runs (one JSON per run, one Markdown table over all runs) under ``docs/results/experiments/``.

The scripts are research, not pipeline stages: each asks one question of the toy and writes its answer for the lab
log. They call this module and the package's other public functions, never a private name, so that a refactor of
the package shows up here, in one place, instead of breaking a script no test runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from dasgen.config import Config
from dasgen.io.atomic import atomic_write_text
from dasgen.pipeline.augment import augment_settings
from dasgen.pipeline.segmenters import new_segmenter, score_on_target, target_val_store
from dasgen.research.ablate_report import mean_std  # noqa: F401 (part of this API: the scripts average over seeds)
from dasgen.seeding import image_seed
from dasgen.segment.train import train_source

__all__ = ["SWAPPED_CLASSES", "flip_sampler", "markdown_table", "mean_std", "overrides_text", "record_run",
           "train_g0_recipe"]

# The default toy's colour-swapped classes (toy.colour_swap: their target colours are other classes' source colours,
# dasgen/datasets/toy/look.py), which the per-class tables report apart.
SWAPPED_CLASSES = ("sidewalk", "terrain")


def flip_sampler(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """A seeded batch sampler over in-memory images ``x`` (N, 3, H, W) and labels ``y`` (N, H, W): ``batch_size``
    draws with replacement, each flipped left-right with probability 1/2 (what g_0's sampler does on files)."""
    def sample(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        picks = torch.randint(len(x), (batch_size,), generator=generator)
        flip = torch.rand(batch_size, generator=generator) < 0.5
        xb, yb = x[picks], y[picks]
        return torch.where(flip[:, None, None, None], xb.flip(-1), xb), torch.where(flip[:, None, None], yb.flip(-1), yb)
    return sample


def train_g0_recipe(config: Config, x: torch.Tensor, y: torch.Tensor, root: Path) -> tuple[float, dict[str, float]]:
    """Train a fresh segmenter with g_0's recipe (``segmenter.source_train``, its seed and augmentation) on ``x``,
    ``y`` and score it on the target val set: (mIoU in percent, per-class IoU in percent; absent classes left out).
    What an image set is worth as training data, judged the way g_0 is."""
    st = config.segmenter.source_train
    model = new_segmenter(config, root)
    generator = torch.Generator().manual_seed(image_seed(config.run.seed, 0, "train-g0"))
    train_source(model, flip_sampler(x, y, st.batch_size), iters=st.iters, lr=st.lr, momentum=st.momentum,
                 weight_decay=st.weight_decay, optimizer=st.optimizer,
                 augment=augment_settings(config, st.aug_fraction), generator=generator, progress=False,
                 batchnorm=config.segmenter.batchnorm)
    score = score_on_target(model.eval(), config, torch.device("cpu"), target_val_store(config, root))
    per_class = {name: round(value * 100, 1) for name, value in score["per_class"].items() if value == value}
    return round(score["miou"] * 100, 1), per_class


def record_run(results: Path, name: str, result: dict) -> list[dict]:
    """Write one run's ``result`` to ``results/<name>.json`` and return every run recorded there, in name order."""
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / f"{name}.json", json.dumps(result, indent=1) + "\n")
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(results.glob("*.json"))]


def overrides_text(overrides: dict) -> str:
    """``{"sgg.lambda": 40}`` -> ``sgg.lambda=40``; ``-`` for none."""
    return ", ".join(f"{key}={value}" for key, value in overrides.items()) or "-"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]], align: str) -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` (text) or ``r`` (numbers)."""
    if len(align) != len(columns) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} must give l or r for each of the {len(columns)} columns")
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
