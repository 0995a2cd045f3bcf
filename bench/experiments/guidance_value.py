"""Experiment: what does guidance change in the content of a translation? Translate source images with one
DDPM at noise level t, unguided and with SGG variants, guided by g (default: the main pipeline's g_0), and judge the
results with the target-trained oracle of ddpm_fidelity.py (independent of g), with g itself, and by roughness.

    python bench/experiments/guidance_value.py NAME --ddpm DIR --t 100 [--steps 100] [--set sgg.lambda=200 ...]

Writes docs/results/experiments/guidance-value/NAME.json and rebuilds docs/results/experiments/guidance-value.md.
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
from dasgen.segment.checkpoint import load_segmenter
from dasgen.segment.metrics import ConfusionMatrix
from dasgen.seeding import image_generator
from dasgen.pipeline.image_quality import roughness
from dasgen.pipeline.chains import base_schedule
from dasgen.pipeline.common import load_source_pairs, source_reader
from dasgen.pipeline.guided import domain_guidance
from dasgen.pipeline.segmenters import target_val_store
from dasgen.pipeline.workspace import Workspace
from dasgen.research.experiments import markdown_table, overrides_text, record_run

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "results" / "experiments" / "guidance-value"
ORACLE = REPO / "data" / "experiments" / "oracle" / "segmenter.safetensors"  # made by ddpm_fidelity.py


def miou(model, images, labels) -> float:
    confusion = ConfusionMatrix(num_classes=19)
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            x = torch.stack([to_model_tensor(i) for i in images[start:start + 64]])
            y = torch.stack([torch.from_numpy(l.astype(np.int64)) for l in labels[start:start + 64]])
            confusion.update(model(x).argmax(1), y)
    return round(confusion.miou(19) * 100, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--ddpm", required=True)
    parser.add_argument("--segmenter", default=str(REPO / "data" / "g0" / "segmenter.safetensors"))
    parser.add_argument("--t", type=int, required=True)
    parser.add_argument("--steps", type=int, default=None, help="respaced reverse steps (default: all t)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = load_config(REPO / "params.yaml", {"run.device": "cpu", **overrides})
    ws = Workspace(REPO)
    entries, _ = load_source_pairs(ws)
    store = PairStore(source_reader(config, REPO), entries, config.data.resolution)
    ids = sorted(e.id for e in entries)[: args.images]
    x0, labels = store.batch(ids)
    label_arrays = [store.get(i).train_ids for i in ids]
    g = load_segmenter(Path(args.segmenter), expect_arch=config.segmenter.arch, expect_classes=19).eval()
    g.requires_grad_(False)
    oracle = load_segmenter(ORACLE, expect_arch=config.segmenter.arch, expect_classes=19).eval()
    eps_fn = make_eps_fn(load_denoiser(Path(args.ddpm)))
    chain = base_schedule(config).truncated(args.t)
    if args.steps and args.steps < args.t:
        chain = chain.respaced(evenly_spaced_steps(args.t, args.steps))
    guidance = domain_guidance(config, g, 1, len(chain))
    started = time.time()
    out = translate(x0, denoiser=eps_fn, schedule=chain, guide=None if guidance is None else guidance.for_labels(labels),
                    generators=[image_generator(0, args.t, i) for i in ids])
    images = [to_uint8(x) for x in out]
    reference = float(np.mean([roughness(store_image) for store_image in
                               (target_val_store(config, REPO).get(e.id).image
                                for e in target_val_store(config, REPO).entries)]))
    rough = [roughness(i) / reference for i in images]
    result = {"name": args.name, "t": args.t, "steps": len(chain), "overrides": overrides,
              "guided": guidance is not None, "images": len(ids),
              "oracle_miou": miou(oracle, images, label_arrays), "g_miou": miou(g, images, label_arrays),
              "oracle_miou_source": miou(oracle, [store.get(i).image for i in ids], label_arrays),
              "roughness_ratio": round(float(np.mean(rough)), 2),
              "blown_up": round(float(np.mean([r > 2.5 for r in rough])), 3),
              "mean_abs_change": round(float((out.clamp(-1, 1) - x0).abs().mean()), 3),
              "seconds": round(time.time() - started, 1), "ddpm": args.ddpm, "segmenter": args.segmenter}
    print(json.dumps(result), flush=True)
    rows = record_run(RESULTS, args.name, result)
    table = markdown_table(
        ["run", "t", "steps", "guided", "overrides", "oracle mIoU", "g mIoU", "roughness", "blown up",
         "mean abs change"],
        [[r["name"], r["t"], r["steps"], r["guided"], overrides_text(r["overrides"]), r["oracle_miou"], r["g_miou"],
          f"{r['roughness_ratio']}x", r["blown_up"], r["mean_abs_change"]] for r in rows], "lrrllrrrrr")
    (RESULTS.parent / "guidance-value.md").write_text(
        "# What guidance changes: source images translated at t, judged by the target-trained oracle\n\n"
        "Generated by bench/experiments/guidance_value.py. Oracle mIoU of the untranslated source images: "
        f"{rows[-1]['oracle_miou_source']} (first {rows[-1]['images']} source images).\n\n" + table + "\n")


if __name__ == "__main__":
    main()
