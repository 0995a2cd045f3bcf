"""Experiment (#12): which part of the toy's source->target gap can a translation close, and is it worth closing?

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
from dasgen.datasets.toy import SOURCE_LOOK, TARGET_LOOK, _sample, appearance
from dasgen.labels import id_to_train_id
from dasgen.seeding import image_seed
from dasgen.segment.train import train_source
from dasgen.pipeline.augment import augment_settings
from dasgen.pipeline.segmenters import new_segmenter, score_on_target, target_val_store

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
    val = target_val_store(config, REPO)
    path = OUT / "gap-anatomy.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    wanted = sys.argv[1:] or list(looks())
    for name, look in looks().items():
        if name not in wanted:
            continue
        started = time.time()
        pairs = [_sample(look, "source", "train", i, t.seed, t.height, t.width, t.thin_object_scale)
                 for i in range(t.n_source)]
        x = torch.stack([to_model_tensor(image) for image, _ in pairs])  # (N, 3, H, W)
        y = torch.stack([torch.from_numpy(id_to_train_id(label).astype(np.int64)) for _, label in pairs])
        st = config.segmenter.source_train
        model = new_segmenter(config, REPO)

        def sample_batch(generator):
            picks = torch.randint(len(x), (st.batch_size,), generator=generator)
            flip = torch.rand(st.batch_size, generator=generator) < 0.5
            xb, yb = x[picks], y[picks]
            return torch.where(flip[:, None, None, None], xb.flip(-1), xb), torch.where(flip[:, None, None],
                                                                                       yb.flip(-1), yb)

        generator = torch.Generator().manual_seed(image_seed(config.run.seed, 0, "train-g0"))
        train_source(model, sample_batch, iters=st.iters, lr=st.lr, momentum=st.momentum,
                     weight_decay=st.weight_decay, optimizer=st.optimizer,
                     augment=augment_settings(config, st.aug_fraction), generator=generator, progress=False)
        score = score_on_target(model.eval(), config, torch.device("cpu"), val)
        results[name] = {"target_miou": round(score["miou"] * 100, 1),
                         "per_class": {k: round(v * 100, 1) for k, v in score["per_class"].items()
                                       if v == v},
                         "seconds": round(time.time() - started, 1)}
        print(name, json.dumps(results[name]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gap-anatomy.json").write_text(json.dumps(results, indent=1) + "\n")
    rows = ["| training images (source layouts, 300) | target val mIoU |", "| --- | ---: |"]
    rows += [f"| {name} look | {results[name]['target_miou']} |" for name in looks() if name in results]
    (OUT / "gap-anatomy.md").write_text(
        "# Which part of the gap can a translation close? (bench/experiments/gap_anatomy.py)\n\n"
        "g_0's recipe trained on the source layouts rendered with each look, scored on the real target val:\n\n"
        + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
