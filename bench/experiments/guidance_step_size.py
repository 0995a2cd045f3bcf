"""Experiment (#12): how large is the guidance step, per reverse step and per module (LCG / GSG)?

Translates the first source images of one ablation run's workspace over its last domain's chain (t_N, the respaced
steps, the pipeline's per-image noise), guided by a segmenter of that run (default g_{N-1}, as the last domain is),
and records every guidance gradient. For each reverse step: the RMS of the step over each image (mean over images)
before and after the per-pixel cap, the share of pixels the cap clips, and the largest uncapped step; and per module the capped RMS as a
share of the noise std sqrt(beta_t) -- the scale `sgg.step_rms` sets directly. Asked because the step that Eq. 7
gives depends on how the loss is reduced (region / image mean), on the resolution and on how far g already agrees.

    python bench/experiments/guidance_step_size.py NAME --run data/ablation-lcg-view/seed-0/full \\
        --ddpm data/ablation/shared/data/diffusion/model [--images 16] [--set sgg.step_rms=0.2 ...]

The run's params are params.yaml with `--set` overrides (pass the ablation's `set`, e.g. toy.n_source=64). Writes
docs/results/experiments/guidance-step-size/NAME.json and rebuilds docs/results/experiments/guidance-step-size.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from dasgen.config import load_config
from dasgen.datasets.pairs import PairStore
from dasgen.diffusion.unet import load_denoiser, make_eps_fn
from dasgen.guidance import sampler
from dasgen.pipeline.chains import domain_chain, domain_noise_levels
from dasgen.pipeline.common import load_source_pairs, source_reader
from dasgen.pipeline.guided import domain_guidance, sampler_options
from dasgen.pipeline.workspace import Workspace
from dasgen.segment.checkpoint import load_segmenter
from dasgen.seeding import image_generator

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "results" / "experiments" / "guidance-step-size"


def recorded_gradients(record: list[tuple[str, torch.Tensor]]) -> None:
    """Wrap the sampler's LCG / GSG gradient functions so that every gradient they return is appended to ``record``."""
    for module, name in (("lcg", "lcg_gradient"), ("gsg", "gsg_gradient")):
        original = getattr(sampler, name)

        def wrapped(*args, _original=original, _module=module, **kwargs):
            grad = _original(*args, **kwargs)
            record.append((_module, grad.detach().clone()))
            return grad

        setattr(sampler, name, wrapped)


def rms(step: torch.Tensor) -> float:
    """The RMS of a step over each image, averaged over the images."""
    return float(step.pow(2).mean(dim=(1, 2, 3)).sqrt().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--run", required=True, help="an ablation run's workspace (seed-<s>/<variant>)")
    parser.add_argument("--ddpm", required=True)
    parser.add_argument("--segmenter", default=None, help="default: the run's g_{N-1}")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = load_config(REPO / "params.yaml", {"run.device": "cpu", **overrides})
    run = Path(args.run).resolve()
    ws = Workspace(run)
    entries, _ = load_source_pairs(ws)
    store = PairStore(source_reader(config, run), entries, config.data.resolution)
    ids = sorted(e.id for e in entries)[: args.images]
    x0, labels = store.batch(ids)
    n = config.ptl.N
    segmenter_path = Path(args.segmenter) if args.segmenter else ws.segmenter_path(n - 1)
    g = load_segmenter(segmenter_path, expect_arch=config.segmenter.arch, expect_classes=19).eval()
    g.requires_grad_(False)
    chain = domain_chain(config, n)
    guidance = domain_guidance(config, g, n, len(chain))
    if guidance is None:
        parser.error("sgg.arrangement is none: there is no guidance step to measure")
    record: list[tuple[str, torch.Tensor]] = []
    recorded_gradients(record)
    t = domain_noise_levels(config.ptl)[n - 1]
    sampler.translate(x0, labels, denoiser=make_eps_fn(load_denoiser(Path(args.ddpm))), schedule=chain,
                      guidance=guidance, generators=[image_generator(config.run.seed, n, i) for i in ids],
                      **sampler_options(config))
    cap = config.sgg.max_step
    steps, share = [], {"lcg": [], "gsg": []}
    guided = [(step, position) for step, position in enumerate(range(len(chain) - 1, -1, -1))
              if guidance.plan[step] is not None]  # reverse steps that took a gradient, in order
    uncapped = replace(guidance, max_step=None)
    for (module, grad), (step, position) in zip(record, guided, strict=True):
        beta = float(chain.betas[position])
        sigma = chain.sigma(position, grad)  # the Sigma the sampler passes
        raw, capped = sampler.guidance_step(uncapped, sigma, grad), sampler.guidance_step(guidance, sigma, grad)
        row = {"step": step, "position": position, "module": module, "beta": round(beta, 5),
               "rms_raw": round(rms(raw), 4), "rms_capped": round(rms(capped), 4),
               "share_capped": round(float((raw.abs() > cap).float().mean()) if cap else 0.0, 4),
               "max_raw": round(float(raw.abs().max()), 3)}
        steps.append(row)
        if position > 0:
            share[module].append(row["rms_capped"] / beta ** 0.5)
    result = {"name": args.name, "run": str(run.relative_to(REPO)), "segmenter": str(segmenter_path.relative_to(REPO)),
              "t": t, "images": len(ids), "overrides": overrides, "steps": steps,
              "capped_rms_over_sqrt_beta": {m: {"mean": round(statistics.mean(v), 3), "min": round(min(v), 3),
                                                "max": round(max(v), 3)} for m, v in share.items() if v}}
    print(json.dumps(result["capped_rms_over_sqrt_beta"]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| run | overrides | t | module | capped step RMS / sqrt(beta_t): mean | min | max |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in (json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))):
        ov = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
        for module, s in r["capped_rms_over_sqrt_beta"].items():
            lines.append(f"| {r['name']} | {ov} | {r['t']} | {module} | {s['mean']} | {s['min']} | {s['max']} |")
    (RESULTS.parent / "guidance-step-size.md").write_text(
        "# How large the guidance step is\n\n"
        "Generated by bench/experiments/guidance_step_size.py: the last domain's chain of an ablation run, guided by "
        "its g_{N-1}, on its first source images; the RMS over each image of the guidance step after the per-pixel "
        "cap, as a share of the noise std sqrt(beta_t), over the reverse steps (the last, noiseless step left out). "
        "Per-step rows (before / after the cap, share of pixels capped, largest step) are in "
        "guidance-step-size/NAME.json.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
