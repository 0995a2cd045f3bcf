"""Experiment: how large is the paper's guidance step at 32x64, 64x128 and 256x512 under each loss reduction?

Eq. 7 shifts the reverse mean by lambda * Sigma * grad_x L with Sigma = beta_t and lambda = 80, but the paper does not
say how the cross-entropy L is reduced over pixels. Under a *mean* (LCG over the class region, GSG over the image)
the per-pixel gradient shrinks as 1 / pixels; under a *sum* (log p(y | x) of a label map of independent pixels, as
classifier guidance reads it) it does not. Which reading makes lambda = 80 a working step at the paper's 256x512 is
a question of measurement, asked here with a segmenter trained at each size (a network applied at a size it was not
trained at is lost there and its gradient says nothing).

For each size: write the toy at that size, train a segmenter on it (with the Supp. C noisy+masked augmentation, as
g_0 is trained), then on K source images and at reverse positions spread over the last paper domain's chain
(t = 1 .. t_N, the paper's gradient at x_k: x_t = q_sample(x_0, t)), take the LCG and GSG gradients under both
reductions and record the step's RMS over each image as a share of the noise std sqrt(beta_t):
lambda * beta_t * RMS(grad) / sqrt(beta_t). No cap (params-paper has none). The clean image x_0 is measured too
(the gradient at x0_hat with a perfect denoiser). From the per-position shares follows the chain measure that
`dasgen calibrate` judges by: for the paper's last domain (600 reverse steps, LCG and GSG alternating), each module's
steps added up over the chain as a share of the noise the chain injects, sum_t RMS(step_t) / sqrt(sum_t beta_t),
with the share at each position interpolated between the measured ones.

    python bench/experiments/guidance_reduction.py NAME --size 32x64 [--arch toy] [--iters 600] [--batch 8]
    python bench/experiments/guidance_reduction.py --render   # rebuild the table from the recorded JSONs

Writes docs/results/experiments/guidance-reduction/NAME.json and rebuilds docs/results/experiments/
guidance-reduction.md from every JSON there. Work files go under data/experiments/guidance-reduction/NAME.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dasgen.commands.calibrate import verdict
from dasgen.config import load_config
from dasgen.diffusion.schedule import NoiseSchedule
from dasgen.datasets.pairs import PairStore
from dasgen.guidance.sgg import LOSS_REDUCTIONS, gsg_gradient, lcg_gradient
from dasgen.pipeline.chains import base_schedule
from dasgen.pipeline.common import load_source_pairs, source_reader
from dasgen.pipeline.segmenters import score_on_target, target_val_store
from dasgen.pipeline.workspace import Workspace
from dasgen.segment.checkpoint import load_segmenter
from dasgen.stages.scan import run_scan
from dasgen.stages.toy import run_toy
from dasgen.stages.train_g0 import run_train_g0

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "results" / "experiments" / "guidance-reduction"
WORK = REPO / "data" / "experiments" / "guidance-reduction"
LAMBDA = 80.0  # Sec. 5.1
T_FINAL = 600  # the paper's last domain (t_N = N = 600)


def rms_per_image(tensor: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B,) root mean square over each image."""
    return tensor.pow(2).mean(dim=(1, 2, 3)).sqrt()


def chain_over_noise(rows: list[dict], key: str) -> float:
    """A module's steps over the paper's last chain (positions 1..t_N - 1; it guides every other step) as a share of
    the chain's noise, the per-position share linearly interpolated between the measured positions."""
    measured = sorted((r["position"], r[key]) for r in rows if r["position"] is not None and r["position"] > 0)
    positions = torch.tensor([p for p, _ in measured], dtype=torch.float64)
    shares = torch.tensor([v for _, v in measured], dtype=torch.float64)
    betas = NoiseSchedule.linear().betas[1:T_FINAL]  # positions 1 .. t_N - 1 add noise
    grid = torch.arange(1, T_FINAL, dtype=torch.float64)
    index = torch.searchsorted(positions, grid).clamp(1, len(positions) - 1)
    left, right = positions[index - 1], positions[index]
    weight = ((grid - left) / (right - left)).clamp(0, 1)
    share = shares[index - 1] + weight * (shares[index] - shares[index - 1])
    return float(0.5 * (share * betas.sqrt()).sum() / betas.sum().sqrt())  # alternate: half the steps each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?")
    parser.add_argument("--render", action="store_true", help="only rebuild the table from the recorded runs")
    parser.add_argument("--size", help="HxW, e.g. 256x512")
    parser.add_argument("--arch", default="toy")
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--sources", type=int, default=96, help="toy source images to train on")
    parser.add_argument("--images", type=int, default=8, help="K images the gradient is measured on")
    parser.add_argument("--positions", type=int, default=13, help="reverse positions spread over 0..t_N")
    args = parser.parse_args()
    if args.render:
        render()
        return
    if not args.name or not args.size:
        parser.error("NAME and --size are needed to measure")
    height, width = (int(v) for v in args.size.lower().split("x"))
    work = WORK / args.name
    overrides = {
        "run.device": "cpu", "data.resolution": [height, width], "toy.height": height, "toy.width": width,
        "toy.n_source": args.sources, "toy.n_target_train": 4, "toy.n_target_val": 32,
        "segmenter.arch": args.arch, "segmenter.source_train.iters": args.iters,
        "segmenter.source_train.batch_size": args.batch, "segmenter.source_train.lr": args.lr,
        "ptl.N": 8, "ptl.t_final": T_FINAL,  # the augmentation noises up to the paper's t_N
        "diffusion.unet.block_out_channels": [32, 64, 64],  # only the resolution check reads the U-Net here
    }
    config = load_config(REPO / "params.yaml", overrides)
    ws = Workspace(work)
    started = time.time()
    if not ws.segmenter_path(0).is_file():
        run_toy(config, root=work, progress=False)
        run_scan(config, ws)
        run_train_g0(config, ws, progress=False)
    train_s = round(time.time() - started, 1)
    g = load_segmenter(ws.segmenter_path(0), expect_arch=args.arch, expect_classes=19).eval()
    g.requires_grad_(False)
    target = score_on_target(g, config, torch.device("cpu"), target_val_store(config, work))
    entries, _ = load_source_pairs(ws)
    store = PairStore(source_reader(config, work), entries, config.data.resolution)
    ids = sorted(e.id for e in entries)[: args.images]
    x0, labels = store.batch(ids)
    schedule = base_schedule(config)
    positions = sorted({round(i * (T_FINAL - 1) / (args.positions - 1)) for i in range(args.positions)})
    generator = torch.Generator().manual_seed(0)
    rows = []
    for position in [None, *positions]:  # None: the clean x_0
        if position is None:
            seen, beta = x0, float(schedule.betas[0])
        else:
            seen = schedule.q_sample(x0, position, torch.randn(x0.shape, generator=generator))  # Eq. 2
            beta = float(schedule.betas[position])
        row = {"position": position, "beta": beta}
        for reduction in LOSS_REDUCTIONS:
            grads = {"lcg": lcg_gradient(g, seen, labels, max_copies_per_pass=32, reduction=reduction),
                     "gsg": gsg_gradient(g, seen, labels, reduction=reduction)}
            for module, grad in grads.items():
                # lambda * beta_t * grad over the noise std sqrt(beta_t) (Eq. 7, Sigma = beta_t)
                ratio = LAMBDA * beta * rms_per_image(grad) / beta ** 0.5
                row[f"{module}_{reduction}"] = float(ratio.mean())
                row[f"{module}_{reduction}_grad_rms"] = float(rms_per_image(grad).mean())
        rows.append(row)
        print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()
                          if not k.endswith("grad_rms")}), flush=True)
    chain = [r for r in rows if r["position"] is not None and r["position"] > 0]
    summary = {f"{m}_{r}": {"mean": statistics.mean(x[f"{m}_{r}"] for x in chain),
                            "min": min(x[f"{m}_{r}"] for x in chain), "max": max(x[f"{m}_{r}"] for x in chain),
                            "clean": rows[0][f"{m}_{r}"]}
               for m in ("lcg", "gsg") for r in LOSS_REDUCTIONS}
    result = {"name": args.name, "size": [height, width], "arch": args.arch, "iters": args.iters,
              "batch": args.batch, "lr": args.lr, "source_images": args.sources, "images": len(ids),
              "train_s": train_s, "target_val_miou": None if target is None else round(target["miou"], 4),
              "lambda": LAMBDA, "t_final": T_FINAL, "positions": positions, "summary": summary, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    render()


def render() -> None:
    """docs/results/experiments/guidance-reduction.md from every recorded size."""
    lines = ["| network | size | val mIoU | module | reduction | per step / sqrt(beta_t): mean | min | max | at x_0 | "
             "over the chain / its noise | verdict |",
             "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    results = [json.loads(p.read_text()) for p in RESULTS.glob("*.json")]
    for r in sorted(results, key=lambda r: (r["arch"], r["size"][0] * r["size"][1], r["name"])):
        for module in ("lcg", "gsg"):
            for reduction in LOSS_REDUCTIONS:
                key = f"{module}_{reduction}"
                s, chain = r["summary"][key], chain_over_noise(r["rows"], key)
                lines.append(f"| {r['arch']} ({r['iters']} it. x {r['batch']}) | {r['size'][0]}x{r['size'][1]} | "
                             f"{r['target_val_miou']} | {module} | {reduction} | {s['mean']:.3g} | {s['min']:.3g} | "
                             f"{s['max']:.3g} | {s['clean']:.3g} | {chain:.3g} | {verdict(chain)} |")
    (RESULTS.parent / "guidance-reduction.md").write_text(
        "# The guidance step under each loss reduction, at three resolutions\n\n"
        "Generated by bench/experiments/guidance_reduction.py: a segmenter trained at each size on the toy (with "
        "the noisy+masked augmentation), K = 8 source images, the paper's gradient at x_t = q_sample(x_0, t) at "
        "13 positions spread over t = 1..600 (the paper's last domain), lambda = 80, Sigma = beta_t, no cap. Per "
        "step: the RMS over an image of lambda * beta_t * grad divided by the noise std sqrt(beta_t), averaged over "
        "the images; mean / min / max over the positions; `at x_0` is the clean image. Over the chain: the module's "
        "steps over the paper's 600-step chain (every other step) added up, over sqrt(sum beta_t), the measure "
        "`dasgen calibrate` judges by (inert below 0.1, explosive above 3).\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
