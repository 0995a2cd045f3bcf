"""Experiment: what is a translated dataset worth to a segmenter? Translate every toy source image with one
DDPM at noise level t (unguided, or SGG-guided by the pipeline's g_0), then train g_0's recipe from scratch on
(a) the translated images alone and (b) the translated images plus the source images (Eq. 12's two terms), and score
both on the real target val. Compare with gap_anatomy.py (the same recipe on ideal renderings).

    python bench/experiments/translation_value.py NAME --ddpm DIR --t 100 [--steps 100] [--guided] [--set k=v]

Translations are cached in data/experiments/xlate/NAME.npz; results go to
docs/results/experiments/translation-value/NAME.json and translation-value.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from dasgen.config import load_config
from dasgen.datasets.io import to_model_tensor, to_uint8
from dasgen.datasets.pairs import PairStore
from dasgen.diffusion.schedule import evenly_spaced_steps
from dasgen.diffusion.unet import load_denoiser, make_eps_fn
from dasgen.guidance.sampler import translate
from dasgen.seeding import image_generator
from dasgen.segment.checkpoint import load_segmenter
from dasgen.segment.metrics import ConfusionMatrix
from dasgen.pipeline.image_quality import roughness
from dasgen.pipeline.chains import base_schedule
from dasgen.pipeline.common import load_source_pairs, source_reader
from dasgen.pipeline.guided import domain_guidance
from dasgen.pipeline.segmenters import target_val_store
from dasgen.pipeline.workspace import Workspace
from dasgen.research.experiments import markdown_table, overrides_text, record_run, train_g0_recipe

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "data" / "experiments" / "xlate"
RESULTS = REPO / "docs" / "results" / "experiments" / "translation-value"
ORACLE = REPO / "data" / "experiments" / "oracle" / "segmenter.safetensors"


def translated(args, config, store, ids) -> np.ndarray:
    path = CACHE / f"{args.name}.npz"
    if path.is_file():
        return np.load(path)["images"]
    eps_fn = make_eps_fn(load_denoiser(Path(args.ddpm)))
    chain = base_schedule(config).truncated(args.t)
    if args.steps and args.steps < args.t:
        chain = chain.respaced(evenly_spaced_steps(args.t, args.steps))
    guidance = None
    if args.guided:
        g = load_segmenter(REPO / "data" / "g0" / "segmenter.safetensors", expect_arch=config.segmenter.arch,
                           expect_classes=19).eval().requires_grad_(False)
        guidance = domain_guidance(config, g, 1, len(chain))
    out = []
    for start in range(0, len(ids), 32):
        batch = ids[start:start + 32]
        x0, labels = store.batch(batch)
        result = translate(x0, denoiser=eps_fn, schedule=chain,
                           guide=None if guidance is None else guidance.for_labels(labels),
                           generators=[image_generator(0, args.t, i) for i in batch])
        out.extend(to_uint8(x) for x in result)
        print(f"translated {start + len(batch)}/{len(ids)}", flush=True)
    images = np.stack(out)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=images)
    return images


def train_and_score(config, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, float]]:
    miou, per_class = train_g0_recipe(config, x, y, REPO)
    print(json.dumps(per_class), flush=True)
    return miou, per_class


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--ddpm", required=True)
    parser.add_argument("--t", type=int, required=True)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guided", action="store_true")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = load_config(REPO / "params.yaml", {"run.device": "cpu", **overrides})
    entries, _ = load_source_pairs(Workspace(REPO))
    store = PairStore(source_reader(config, REPO), entries, config.data.resolution)
    ids = sorted(e.id for e in entries)
    started = time.time()
    images = translated(args, config, store, ids)
    translate_s = time.time() - started
    labels = torch.stack([torch.from_numpy(store.get(i).train_ids.astype(np.int64)) for i in ids])
    x_t = torch.stack([to_model_tensor(i) for i in images])
    x_s, _ = store.batch(ids)
    oracle = load_segmenter(ORACLE, expect_arch=config.segmenter.arch, expect_classes=19).eval()
    confusion = ConfusionMatrix(num_classes=19)
    with torch.inference_mode():
        confusion.update(oracle(x_t).argmax(1), labels)
    val = target_val_store(config, REPO)
    reference = float(np.mean([roughness(val.get(e.id).image) for e in val.entries]))
    result = {"name": args.name, "t": args.t, "steps": args.steps or args.t, "guided": args.guided,
              "overrides": overrides, "ddpm": args.ddpm, "translate_s": round(translate_s, 1),
              "oracle_consistency": round(confusion.miou(19) * 100, 1),
              "roughness_ratio": round(float(np.mean([roughness(i) for i in images])) / reference, 2),
              }
    result["translated_only"], result["per_class_translated_only"] = train_and_score(config, x_t, labels)
    result["translated_plus_source"], result["per_class_plus_source"] = train_and_score(
        config, torch.cat([x_t, x_s]), torch.cat([labels, labels]))
    print(json.dumps(result), flush=True)
    table = markdown_table(
        ["run", "t", "steps", "guided", "overrides", "oracle consistency", "roughness", "g on translated",
         "g on translated + source"],
        [[r["name"], r["t"], r["steps"], r["guided"], overrides_text(r["overrides"]), r["oracle_consistency"],
          f"{r['roughness_ratio']}x", r["translated_only"], r["translated_plus_source"]]
         for r in record_run(RESULTS, args.name, result)], "lrrllrrrr")
    (RESULTS.parent / "translation-value.md").write_text(
        "# What a translated dataset is worth (bench/experiments/translation_value.py)\n\n"
        "g_0's recipe trained from scratch on phi^t of all 300 toy source images, scored on the target val (g_0 "
        "itself, trained on the source: 57.2; see gap-anatomy.md for ideal renderings).\n\n" + table + "\n")


if __name__ == "__main__":
    main()
