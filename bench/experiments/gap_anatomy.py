"""Experiment: which part of the toy's source->target gap can a translation close, and is it worth closing?

A translation phi^t at moderate t keeps each region's low-frequency colour (a denoiser sees a region's mean through
the noise) and redraws the high-frequency look (texture, grain, blur). This trains the pipeline's segmenter recipe
(g_0's: same iterations, optimiser, noisy+masked augmentation, seed) on the SOURCE LAYOUTS rendered with hybrid looks
built from the toy's own renderer -- an ideal translation of each kind -- and scores each on the real target val:

  source        the source look (= g_0's training data)
  high-freq     source colours and light, the target's texture, blur and sensor noise (what low t can transfer)
  grading       the target's light, grading, haze and surface (everything but colours) on the source palette
  palette       the target's class colours (no swaps) under the source's light and grading
  no-swap       the full target look except the confusing colour swaps
  target        the full target look (an ideal translation: the upper bound for any X^N)

    python bench/experiments/gap_anatomy.py [LOOK ...]   # writes docs/results/experiments/gap-anatomy.{json,md}
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dasgen.config import load_config
from dasgen.datasets.io import to_model_tensor
from dasgen.datasets.toy import SOURCE_LOOK, TARGET_LOOK, appearance, render_sample
from dasgen.labels import id_to_train_id
from dasgen.research.experiments import markdown_table, train_g0_recipe

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "results" / "experiments"


def looks() -> dict:
    _, target = appearance(1.0, True)
    _, no_swap = appearance(1.0, False)
    high_freq = replace(SOURCE_LOOK, texture=TARGET_LOOK.texture, blur=TARGET_LOOK.blur, noise=TARGET_LOOK.noise)
    grading = replace(no_swap, palette=SOURCE_LOOK.palette, jitter=SOURCE_LOOK.jitter)
    palette = replace(SOURCE_LOOK, palette=no_swap.palette, jitter=no_swap.jitter)
    return {"source": SOURCE_LOOK, "high-freq": high_freq, "grading": grading, "palette": palette,
            "no-swap": no_swap, "target": target}


def main() -> None:
    config = load_config(REPO / "params.yaml", {"run.device": "cpu"})
    t = config.toy
    path = OUT / "gap-anatomy.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    wanted = sys.argv[1:] or list(looks())
    for name, look in looks().items():
        if name not in wanted:
            continue
        started = time.time()
        pairs = [render_sample(look, "source", "train", i, t.seed, t.height, t.width, t.thin_object_scale)
                 for i in range(t.n_source)]
        x = torch.stack([to_model_tensor(image) for image, _ in pairs])  # (N, 3, H, W)
        y = torch.stack([torch.from_numpy(id_to_train_id(label).astype(np.int64)) for _, label in pairs])
        miou, per_class = train_g0_recipe(config, x, y, REPO)
        results[name] = {"target_miou": miou, "per_class": per_class, "seconds": round(time.time() - started, 1)}
        print(name, json.dumps(results[name]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gap-anatomy.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown_table(["training images (source layouts, 300)", "target val mIoU"],
                           [[f"{name} look", results[name]["target_miou"]] for name in looks() if name in results],
                           "lr")
    (OUT / "gap-anatomy.md").write_text(
        "# Which part of the gap can a translation close? (bench/experiments/gap_anatomy.py)\n\n"
        "g_0's recipe trained on the source layouts rendered with each look, scored on the real target val:\n\n"
        + table + "\n")


if __name__ == "__main__":
    main()
