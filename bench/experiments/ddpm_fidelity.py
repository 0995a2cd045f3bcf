"""Experiment: how much of a REAL target image does a DDPM keep? Train a DDPM variant, then measure its round
trip phi^t on target val images (noise to t with Eq. 2, denoise unguided with ALL t reverse steps), judged by a
target-trained oracle (the ablation's protocol: the oracle trains on a second toy's labelled target images).

    python bench/experiments/ddpm_fidelity.py NAME [--set diffusion.train.steps=1600 ...] [--levels 25,50,100,200]

Writes data/experiments/ddpm/NAME/ (the model) and docs/results/experiments/ddpm-fidelity/NAME.json; the summary
table is docs/results/experiments/ddpm-fidelity.md (`--table` rebuilds it from the JSON files).
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
from dasgen.datasets.io import to_uint8
from dasgen.datasets.pairs import PairStore
from dasgen.stages.toy import run_toy
from dasgen.diffusion.schedule import evenly_spaced_steps
from dasgen.diffusion.train import train_ddpm
from dasgen.diffusion.unet import build_unet, load_denoiser, make_eps_fn, save_denoiser
from dasgen.guidance.sampler import translate
from dasgen.seeding import image_generator, image_seed
from dasgen.segment.checkpoint import load_segmenter
from dasgen.segment.metrics import ConfusionMatrix
from dasgen.research.ablate import train_oracle
from dasgen.pipeline.image_quality import roughness
from dasgen.pipeline.chains import base_schedule
from dasgen.pipeline.common import target_reader
from dasgen.pipeline.segmenters import target_val_store
from dasgen.datasets.io import to_model_tensor

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "data" / "experiments"
RESULTS = REPO / "docs" / "results" / "experiments" / "ddpm-fidelity"
CLASSES = {0: "road", 1: "sidewalk", 2: "building", 5: "pole", 7: "sign", 8: "vegetation", 9: "terrain", 10: "sky",
           11: "person", 13: "car"}


def oracle(config, device):
    path = WORK / "oracle" / "segmenter.safetensors"
    if not path.is_file():
        toy = WORK / "oracle-toy"
        run_toy(config, out=toy, progress=False, seed=1000, n_source=1, n_target_train=1,
                n_target_val=config.toy.n_source)
        train_oracle(config, toy, path, device=device)
    return load_segmenter(path, device=device, expect_arch=config.segmenter.arch, expect_classes=19).eval()


def judge(model, images, labels):
    confusion = ConfusionMatrix(num_classes=19)
    with torch.inference_mode():
        x = torch.stack([to_model_tensor(i) for i in images])
        confusion.update(model(x).argmax(1), torch.stack([torch.from_numpy(l.astype(np.int64)) for l in labels]))
    per_class = confusion.iou_per_class().tolist()
    return confusion.miou(19), {CLASSES[c]: round(per_class[c] * 100, 1) for c in CLASSES}


def train(config, out: Path, device) -> float:
    d = config.diffusion
    reader = target_reader(config, config.data.target.train_split, labelled=False, root=REPO)
    store = PairStore(reader, reader.entries(), config.data.resolution)
    sampler = store.sampler(d.train.batch_size, hflip=d.train.hflip)
    unet = build_unet(sample_size=tuple(config.data.resolution), block_out_channels=d.unet.block_out_channels,
                      layers_per_block=d.unet.layers_per_block, attention_levels=d.unet.attention_levels,
                      norm_num_groups=d.unet.norm_num_groups, dropout=d.unet.dropout,
                      seed=image_seed(config.run.seed, 0, "unet-init")).to(device)
    schedule = base_schedule(config)
    if d.train.max_timestep is not None:
        schedule = schedule.truncated(d.train.max_timestep)
    started = time.time()
    result = train_ddpm(unet, lambda g, b: sampler(g)[0][:b].to(device), schedule, steps=d.train.steps,
                        batch_size=d.train.batch_size, lr=d.train.lr, adam_betas=tuple(d.train.adam_betas),
                        ema_decay=d.train.ema_decay, lr_schedule=d.train.lr_schedule, seed=config.run.seed,
                        work_dir=out / "state", checkpoint_every=d.train.checkpoint_every, log_path=None,
                        progress=False)
    save_denoiser(result.model, out / "model")
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--levels", default="25,50,100,200")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--model", help="an existing diffusers model dir to measure instead of training")
    parser.add_argument("--steps", type=int, default=None, help="respaced reverse steps (default: all t)")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = load_config(REPO / "params.yaml", {"run.device": "cpu", **overrides})
    device = torch.device("cpu")
    out = WORK / "ddpm" / args.name
    train_s = None
    if args.model:
        model_dir = Path(args.model)
    else:
        model_dir = out / "model"
        if not (model_dir / "config.json").is_file():
            train_s = train(config, out, device)
    eps_fn = make_eps_fn(load_denoiser(model_dir, device=device))
    store = target_val_store(config, REPO)
    ids = [e.id for e in store.entries][: args.images]
    x0, _ = store.batch(ids)
    clean = [store.get(i).image for i in ids]
    labels = [store.get(i).train_ids for i in ids]
    judge_model = oracle(config, device)
    reference_rough = float(np.mean([roughness(i) for i in clean]))
    miou, per_class = judge(judge_model, clean, labels)
    result = {"name": args.name, "overrides": overrides, "train_s": train_s, "images": len(ids),
              "model": str(model_dir), "steps": args.steps,
              "clean": {"oracle_miou": round(miou * 100, 1), "per_class": per_class}, "levels": []}
    for t in [int(v) for v in args.levels.split(",")]:
        started = time.time()
        chain = base_schedule(config).truncated(t)
        if args.steps and args.steps < t:
            chain = chain.respaced(evenly_spaced_steps(t, args.steps))
        out_images = translate(x0, denoiser=eps_fn, schedule=chain,
                               generators=[image_generator(0, t, i) for i in ids])
        images = [to_uint8(x) for x in out_images]
        miou, per_class = judge(judge_model, images, labels)
        psnr = float(np.mean([10 * np.log10(255.0 ** 2 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-9))
                              for a, b in zip(images, clean)]))
        rough = float(np.mean([roughness(i) for i in images])) / reference_rough
        result["levels"].append({"t": t, "oracle_miou": round(miou * 100, 1), "psnr": round(psnr, 2),
                                 "roughness_ratio": round(rough, 2), "per_class": per_class,
                                 "seconds": round(time.time() - started, 1)})
        print(json.dumps(result["levels"][-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    table()


def table() -> None:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    levels = sorted({lv["t"] for r in rows for lv in r["levels"]})
    lines = ["| variant | overrides | train s | chain | clean | " + " | ".join(f"t={t}" for t in levels) + " |",
             "| --- | --- | ---: | --- | ---: | " + " | ".join("---:" for _ in levels) + " |"]
    for r in rows:
        by_t = {lv["t"]: lv for lv in r["levels"]}
        cells = [f"{by_t[t]['oracle_miou']} ({by_t[t]['roughness_ratio']}x)" if t in by_t else "" for t in levels]
        overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "shipped params"
        chain = (f"{r['steps']} steps" if r.get("steps") else "all steps") + (
            f", {r['variance']}" if r.get("variance", "beta") != "beta" else "")
        lines.append(f"| {r['name']} | {overrides} | {r['train_s'] and round(r['train_s'])} | {chain} | "
                     f"{r['clean']['oracle_miou']} | " + " | ".join(cells) + " |")
    (RESULTS.parent / "ddpm-fidelity.md").write_text(
        "# DDPM fidelity: oracle mIoU of phi^t(target val), all reverse steps (roughness vs real photos)\n\n"
        "Generated by bench/experiments/ddpm_fidelity.py from the JSON files in ddpm-fidelity/.\n\n"
        + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
