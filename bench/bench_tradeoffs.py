"""What the speed-ups that change the maths cost on the toy: reverse steps per domain, fewer domains, bf16 U-Net.

Not a test. Needs a prepared toy workspace (``dasgen toy && dasgen scan && dasgen train-diffusion && dasgen
train-g0`` with the shipped params.yaml). Each variant runs the PTL chain (``run_domain`` for n = 1..N) on a copy of
the workspace whose source list is cut to the first ``--images`` ids (so the last domain stays small), and reports
its wall time and

- ``consistency_final``: the stage's own score of X^N (mIoU of g_{N-1} on X^N against the source labels);
- ``consistency_g0``: X^N scored by the fixed g_0 instead, comparable across variants;
- ``target_miou``: g_N's mIoU on the toy target val set (what PTL is for);
- ``changed_vs_reference``: mean |uint8 difference| of X^N against the images of the variant it deviates from
  (steps-full for the respaced chains, steps-25 for more domains and for bf16).

Variants (``--variants``): ``steps-full`` (N = 1, all 400 reverse steps: the paper's phi^400), ``steps-100``,
``steps-25`` (N = 1, respaced), ``domains-4`` / ``domains-2`` (N = 4 / 2 domains at 25 steps each: the toy
default), ``bf16`` (N = 1, 25 steps, U-Net under bf16 autocast).

    python bench/bench_tradeoffs.py --workspace W --images 32 --threads 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console

from dasgen.config import load_config
from dasgen.datasets.io import to_model_tensor
from dasgen.segment.checkpoint import load_segmenter
from dasgen.pipeline.workspace import Workspace
from dasgen.artifact.writer import iter_domain_images, read_index

VARIANTS = {
    "steps-full": {"ptl": {"N": 1, "steps_per_domain": None}},
    "steps-100": {"ptl": {"N": 1, "steps_per_domain": 100}},
    "steps-25": {"ptl": {"N": 1, "steps_per_domain": 25}},
    "domains-2": {"ptl": {"N": 2, "steps_per_domain": 25}},
    "domains-4": {"ptl": {"N": 4, "steps_per_domain": 25}},
    "bf16": {"ptl": {"N": 1, "steps_per_domain": 25, "unet_bf16": True}},
}
COMPARED_TO = {"steps-100": "steps-full", "steps-25": "steps-full", "domains-2": "steps-25", "domains-4": "steps-25",
               "bf16": "steps-25"}  # whose X^N each variant's images are compared with, when that one ran too


def prepare(workspace: Path, root: Path, images: int, images_per_domain: int, overrides: dict) -> Path:
    """A copy of ``workspace`` (no domains) with the first ``images`` source ids and the variant's params."""
    shutil.copytree(workspace, root, ignore=shutil.ignore_patterns("domains", "export", "domain-*.json"))
    pairs = json.loads((root / "data" / "source_pairs.json").read_text())
    pairs["entries"] = pairs["entries"][:images]
    (root / "data" / "source_pairs.json").write_text(json.dumps(pairs))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ptl"].update(overrides["ptl"], images_per_domain=images_per_domain)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def final_images(directory: Path) -> dict[str, np.ndarray]:
    return {row["id"]: image for row, image in iter_domain_images(directory)}


def score_with(segmenter, images: dict[str, np.ndarray], store) -> float:
    from dasgen.stages.translate import image_consistency

    scores = []
    with torch.inference_mode():
        for image_id, image in images.items():
            _, label = store.batch([image_id])
            pred = segmenter(to_model_tensor(image)[None]).argmax(1)[0]
            scores.append(image_consistency(pred, label[0]))
    return float(np.mean(scores))


def run_variant(name: str, workspace: Path, args) -> tuple[dict, dict[str, np.ndarray]]:
    from dasgen.datasets.pairs import PairStore
    from dasgen.stages import translate as domain_stage
    from dasgen.pipeline.common import load_source_pairs, source_reader

    overrides = VARIANTS[name]
    with tempfile.TemporaryDirectory(prefix=f"dasgen-tradeoff-{name}-") as tmp:
        root = prepare(workspace, Path(tmp) / "ws", args.images, args.images_per_domain, overrides)
        config, ws = load_config(root / "params.yaml"), Workspace(root)
        started = time.perf_counter()
        metrics = {}
        for n in range(1, config.ptl.N + 1):
            metrics = domain_stage.run_domain(config, ws, n, progress=False, console=Console(stderr=True, quiet=True))
        wall = time.perf_counter() - started
        final = ws.domain_dir(config.ptl.N, config.ptl.N)
        images = final_images(final)
        entries, _ = load_source_pairs(ws)
        store = PairStore(source_reader(config, ws.root), entries, config.data.resolution)
        g0 = load_segmenter(ws.segmenter_path(0), expect_classes=19).eval()
        row = {"variant": name, "N": config.ptl.N, "t_final": config.ptl.t_final,
               "steps_per_domain": config.ptl.steps_per_domain, "final_images": len(read_index(final)),
               "images_per_domain": config.ptl.images_per_domain, "bf16": config.ptl.unet_bf16,
               "wall_s": round(wall, 1), "consistency_final": metrics["consistency"],
               "consistency_g0": score_with(g0, images, store), "target_miou": metrics["target_miou"],
               "threads": torch.get_num_threads()}
    return row, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a prepared toy workspace (not modified)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--images", type=int, default=32, help="source images kept (the last domain's size)")
    parser.add_argument("--images-per-domain", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows, outputs = [], {}
    for name in args.variants:
        row, outputs[name] = run_variant(name, args.workspace, args)
        reference = COMPARED_TO.get(name)
        if reference in outputs:
            ours, theirs = outputs[name], outputs[reference]
            row["reference"] = reference
            row["changed_vs_reference"] = float(np.mean([np.abs(ours[i].astype(int) - theirs[i].astype(int)).mean()
                                                         for i in ours]))
        rows.append(row)
        if not args.json:
            change = (f"  mean |dX^N| vs {row['reference']} {row['changed_vs_reference']:.2f}"
                      if "reference" in row else "")
            print(f"{name:11s} N={row['N']} steps={row['steps_per_domain']} wall {row['wall_s']:7.1f} s  "
                  f"consistency (g_N-1) {row['consistency_final']:.3f}  (g_0) {row['consistency_g0']:.3f}  "
                  f"g_N target mIoU {row['target_miou']:.3f}{change}", flush=True)
    for row in rows:
        print(json.dumps(row))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
