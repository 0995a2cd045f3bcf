"""Experiment: does a translation move each class's colour from the source palette towards the target's?

For each class, the mean RGB of its pixels in the source images, in a translated set (a translation_value.py cache),
and in the same layouts rendered with the toy's target look (the ideal translation). Reported per class: the share
of the source->ideal colour distance the translation covered (projection on that direction; 1 = the target palette,
0 = unchanged, negative = away from it).

    python bench/experiments/colour_shift.py NAME [NAME ...]   # data/experiments/xlate/NAME.npz, or a last domain dir
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dasgen.datasets.toy import appearance, render_sample
from dasgen.labels import TRAIN_ID_NAMES, id_to_train_id
from dasgen.research.experiments import markdown_table

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "data" / "experiments" / "xlate"
OUT = REPO / "docs" / "results" / "experiments" / "colour-shift.md"


def class_means(images: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    return {c: images[labels == c].reshape(-1, 3).mean(0) for c in np.unique(labels) if c != 255
            and (labels == c).sum() > 50}


def main() -> None:
    ids = sorted(p.stem for p in (REPO / "data/toy/source/images").glob("*.png"))
    source = np.stack([np.array(Image.open(REPO / f"data/toy/source/images/{i}.png").convert("RGB")) for i in ids])
    labels = np.stack([id_to_train_id(np.array(Image.open(REPO / f"data/toy/source/labels/{i}.png"))) for i in ids])
    _, look = appearance(1.0, True)
    ideal = np.stack([render_sample(look, "source", "train", int(i) - 1, 0, *source.shape[1:3])[0] for i in ids])
    s_means, i_means = class_means(source.astype(float), labels), class_means(ideal.astype(float), labels)
    rows = {}
    for name in sys.argv[1:]:
        if (REPO / name / "index.parquet").is_file():  # a domain directory: its images, in id order
            from dasgen.artifact.reader import iter_domain_images

            by_id = {row["id"]: image for row, image in iter_domain_images(REPO / name)}
            translated = np.stack([by_id[i] for i in ids]).astype(float)
        else:
            translated = np.load(CACHE / f"{name}.npz")["images"].astype(float)
        t_means = class_means(translated, labels)
        shares = {}
        for c in s_means:
            direction = i_means[c] - s_means[c]
            shares[TRAIN_ID_NAMES[c]] = round(float((t_means[c] - s_means[c]) @ direction / (direction @ direction)), 2)
        rows[name] = shares
        print(name, json.dumps(shares), flush=True)
    classes = list(next(iter(rows.values())))
    table = markdown_table(["translation", *classes], [[name, *(r[c] for c in classes)] for name, r in rows.items()],
                           "l" + "r" * len(classes))
    OUT.write_text("# How far a translation moves each class's colour towards the target palette\n\n"
                   "bench/experiments/colour_shift.py: share of the source -> ideal-target class-mean colour distance "
                   "covered (1 = target palette, 0 = unchanged).\n\n" + table + "\n")


if __name__ == "__main__":
    main()
