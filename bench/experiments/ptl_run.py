"""Experiment: the real PTL stages (translate --domains 1-N) on the main toy workspace's data and g_0, with a
given DDPM and params overrides -- the pipeline's own measure (g_N against g_0 on the target val), plus the
oracle-judged consistency of X^N and the share of blown-up images.

    python bench/experiments/ptl_run.py NAME --ddpm DIR [--set ptl.t_final=200 ...]

The workspace is data/experiments/ptl/NAME (links to data/toy, data/source_pairs.json; copies of g_0 and the DDPM);
results go to docs/results/experiments/ptl/NAME.json and docs/results/experiments/ptl.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from dasgen.config import config_from_dict, load_config
from dasgen.datasets.pairs import PairStore
from dasgen.segment.checkpoint import load_segmenter
from dasgen.research.ablate import score_consistency
from dasgen.pipeline.image_quality import BLOWN_UP_FACTOR, roughness
from dasgen.pipeline.common import load_source_pairs, source_reader
from dasgen.stages.translate import run_domain
from dasgen.pipeline.segmenters import target_val_store
from dasgen.pipeline.workspace import Workspace
from dasgen.artifact.reader import iter_domain_images
from dasgen.research.experiments import markdown_table, overrides_text, record_run

REPO = Path(__file__).resolve().parents[2]
ORACLE = REPO / "data" / "experiments" / "oracle" / "segmenter.safetensors"
RESULTS = REPO / "docs" / "results" / "experiments" / "ptl"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--ddpm", required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    root = REPO / "data" / "experiments" / "ptl" / args.name
    ws = Workspace(root)
    ws.data.mkdir(parents=True, exist_ok=True)
    for link, target in ((ws.data / "toy", REPO / "data" / "toy"), (ws.source_pairs, REPO / "data/source_pairs.json")):
        if not link.exists():
            link.symlink_to(os.path.relpath(target, link.parent))
    if not ws.g0_dir.exists():
        shutil.copytree(REPO / "data" / "g0", ws.g0_dir)
    if not ws.diffusion_model.exists():
        shutil.copytree(args.ddpm, ws.diffusion_model)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(config_from_dict(params).to_dict(), sort_keys=False))
    config = load_config(root / "params.yaml", {"run.device": "cpu", **overrides})
    started = time.time()
    domains = []
    for n in range(1, config.ptl.N + 1):
        metrics = run_domain(config, ws, n, progress=False)
        domains.append({k: metrics[k] for k in ("domain", "t", "reverse_steps", "images", "consistency",
                                                 "target_miou", "translate_s", "wall_s")})
        print(json.dumps(domains[-1]), flush=True)
    final = ws.domain_dir(config.ptl.N, config.ptl.N)
    entries, _ = load_source_pairs(ws)
    store = PairStore(source_reader(config, root), entries, config.data.resolution)
    oracle = load_segmenter(ORACLE, expect_arch=config.segmenter.arch, expect_classes=19).eval()
    pairs = [(image, store.get(row["id"]).train_ids) for row, image in iter_domain_images(final)]
    val = target_val_store(config, REPO)
    reference = float(np.mean([roughness(val.get(e.id).image) for e in val.entries]))
    rough = [roughness(image) / reference for image, _ in pairs]
    last = json.loads((final / "metrics.json").read_text())
    result = {"name": args.name, "overrides": overrides, "ddpm": args.ddpm,
              "g0_target_miou": json.loads((REPO / "metrics" / "g0.json").read_text())["target_miou"],
              "domains": domains,
              "final_target_miou": last["target_miou"], "final_per_class": last["target_per_class"],
              "oracle_consistency": score_consistency(oracle, pairs, protocol=19, device=torch.device("cpu")),
              "blown_up": float(np.mean([r > BLOWN_UP_FACTOR for r in rough])),
              "roughness_ratio": float(np.mean(rough)), "wall_s": round(time.time() - started, 1)}
    print(json.dumps(result), flush=True)
    table = markdown_table(
        ["run", "overrides", "g_n target mIoU by domain", "final", "oracle consistency X^N", "blown up", "wall s"],
        [[r["name"], overrides_text(r["overrides"]),
          " / ".join(f"{d['target_miou'] * 100:.1f} (t={d['t']})" for d in r["domains"]),
          f"{r['final_target_miou'] * 100:.1f}", f"{r['oracle_consistency'] * 100:.1f}",
          f"{r['blown_up'] * 100:.0f} %", f"{r['wall_s']:.0f}"] for r in record_run(RESULTS, args.name, result)],
        "lllrrrr")
    (RESULTS.parent / "ptl.md").write_text(
        "# PTL on the main toy workspace (bench/experiments/ptl_run.py)\n\nThe real stages from the shipped g_0 "
        "(57.2 target val mIoU) with the named DDPM and params overrides.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
