"""``dasgen calibrate``: how large is the guidance step, before a long run commits to it?

Eq. 7 shifts each guided reverse mean by ``lambda * beta_t * grad``; whether lambda = 80 moves an image a little, a
lot or not at all depends on the loss reduction, the resolution, the segmenter and how far it already agrees
(docs/guidance.md). This command runs the guided chain of one domain on K source images with the workspace's DDPM and
judge (g_{n-1}, or the newest g_m before it that exists, g_0 on a fresh run), records every guided step through the
guidance's observer, and reports per module (LCG, GSG):

- the step's RMS over an image as a share of the noise std sqrt(beta_t), mean / min / max over the guided reverse
  steps that add noise (the last, noiseless step is left out), as applied (``step_over_noise``) and before the cap;
- the module's steps added up over the chain, as a share of the noise the whole chain injects,
  ``sum_t RMS(step_t) / sqrt(sum_t beta_t)`` (``chain_over_noise``): how far the guidance can move an image against
  how far the sampling noise does. Unlike the per-step share it does not depend on the chain's length (a chain of
  n steps of share r adds up to about r * sqrt(n)), so one threshold serves the toy's 25-step chains and the paper's
  600-step ones;
- the share of pixels the cap ``sgg.max_step`` clips;
- a verdict on ``chain_over_noise`` (thresholds below), and the lambda that would put it at :data:`TARGET_CHAIN`
  (the step is linear in lambda before the cap, so the suggestion scales the uncapped measure);
- the judge's label consistency of the guided and of the unguided translation of the same images and noise.

Thresholds, read off the toy's measured steps (docs/guidance.md): below :data:`INERT_BELOW` a module changes nothing
measurable (the toy's GSG, 0.03: its arrangements and its removal moved mIoU by 0.1); above :data:`EXPLOSIVE_ABOVE`
it paints adversarial patterns (the toy's uncapped LCG, 4.3: 8 % of the images blown up); :data:`TARGET_CHAIN` is
the toy's capped LCG, the guidance that pays there.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

from dasgen.config import Config
from dasgen.datasets.io import to_model_tensor, to_uint8
from dasgen.datasets.pairs import PairStore
from dasgen.errors import DasgenError
from dasgen.guidance.sampler import translate
from dasgen.guidance.sgg import GuidedStep
from dasgen.labels import NUM_TRAIN_CLASSES
from dasgen.pipeline.chains import domain_chain, domain_noise_levels
from dasgen.pipeline.common import load_source_pairs, resolve_device, source_reader
from dasgen.pipeline.guided import domain_denoiser, domain_guidance
from dasgen.pipeline.workspace import Workspace
from dasgen.seeding import image_generator
from dasgen.segment.checkpoint import load_segmenter
from dasgen.segment.metrics import label_agreement

INERT_BELOW = 0.1  # chain_over_noise under which a module is inert
EXPLOSIVE_ABOVE = 3.0  # ... over which it paints adversarial patterns
TARGET_CHAIN = 0.36  # where a working module sits: the toy's capped LCG


def verdict(chain_over_noise: float) -> str:
    """``inert`` / ``ok`` / ``explosive`` for a module's applied ``chain_over_noise`` (thresholds above); a
    non-finite step (a blown-up chain) is explosive."""
    if not math.isfinite(chain_over_noise):
        return "explosive"
    if chain_over_noise < INERT_BELOW:
        return "inert"
    if chain_over_noise > EXPLOSIVE_ABOVE:
        return "explosive"
    return "ok"


def judge_for(ws: Workspace, config: Config, n: int) -> tuple[int, Path]:
    """The judge of domain n: g_{n-1} when it exists, else the newest g_m (m < n-1) that does, g_0 at the latest."""
    for m in range(n - 1, -1, -1):
        path = ws.segmenter_path(m, config.ptl.N)
        if path.is_file():
            return m, path
    raise DasgenError(f"{ws.segmenter_path(0)}: no segmenter to guide with (run `dasgen train-g0` first)")


class StepRecorder:
    """The guidance observer. Per module and guided reverse step that adds noise, it adds up over the images (and
    over the batches the images are translated in) the step's RMS before and after the cap, in units of that step's
    noise std, and the pixels the cap clipped. ``chain_noise`` is the std of the noise the whole chain injects,
    sqrt(sum of beta_t over its steps that add noise)."""

    def __init__(self, chain_noise: float) -> None:
        self.chain_noise = chain_noise
        self.steps: dict[tuple[str, int], dict] = {}  # (module, reverse step) -> sums over images

    def __call__(self, step: GuidedStep) -> None:
        if step.position == 0:  # the last step adds no noise: no sqrt(beta_t) to compare with
            return
        noise_std = float(step.beta.flatten()[0]) ** 0.5
        sums = self.steps.setdefault((step.module, step.index), {"noise_std": noise_std, "images": 0, "raw": 0.0,
                                                                 "applied": 0.0, "clipped": 0.0, "pixels": 0})
        sums["images"] += step.raw.shape[0]
        sums["raw"] += float(step.raw.pow(2).mean(dim=(1, 2, 3)).sqrt().sum()) / noise_std
        sums["applied"] += float(step.applied.pow(2).mean(dim=(1, 2, 3)).sqrt().sum()) / noise_std
        sums["clipped"] += float((step.raw != step.applied).sum())  # the pixels the cap changed
        sums["pixels"] += step.raw.numel()

    def summary(self, lambda_: float) -> dict:
        """Per module: per-step shares (mean over images; mean / min / max over steps), the chain measure, the share
        clipped, the verdict and the suggested lambda."""
        modules = {}
        for module in ("lcg", "gsg"):
            steps = [v for (m, _), v in sorted(self.steps.items()) if m == module]
            if not steps:
                continue
            applied = [v["applied"] / v["images"] for v in steps]  # per step, mean over the images
            raw = [v["raw"] / v["images"] for v in steps]
            chain = sum(a * v["noise_std"] for a, v in zip(applied, steps)) / self.chain_noise
            raw_chain = sum(r * v["noise_std"] for r, v in zip(raw, steps)) / self.chain_noise
            modules[module] = {
                "steps": len(steps),
                "step_over_noise": {"mean": statistics.mean(applied), "min": min(applied), "max": max(applied)},
                "raw_step_over_noise": {"mean": statistics.mean(raw), "min": min(raw), "max": max(raw)},
                "chain_over_noise": chain,
                "raw_chain_over_noise": raw_chain,
                "clipped_share": sum(v["clipped"] for v in steps) / sum(v["pixels"] for v in steps),
                "verdict": verdict(chain),
                # None (JSON null) when the module's gradient vanished: no lambda reaches the target
                "suggested_lambda": lambda_ * TARGET_CHAIN / raw_chain if 0 < raw_chain < math.inf else None,
            }
        return modules


def run_calibrate(config: Config, ws: Workspace, *, images: int = 8, domain: int | None = None) -> dict:
    """Run domain ``domain``'s guided chain (default the last, N) on ``images`` source images and measure the step."""
    n = config.ptl.N if domain is None else domain
    if not 1 <= n <= config.ptl.N:
        raise DasgenError(f"--domain {n}: must be between 1 and ptl.N = {config.ptl.N}")
    if images < 1:
        raise DasgenError(f"--images {images}: must be >= 1")
    if config.sgg.arrangement == "none":
        raise DasgenError("sgg.arrangement: none -- there is no guidance to calibrate")
    started = time.time()
    device = resolve_device(config.run.device)
    entries, _ = load_source_pairs(ws, config)
    ids = sorted(e.id for e in entries)[:images]
    store = PairStore(source_reader(config, ws.root), entries, config.data.resolution)
    judge_n, judge_path = judge_for(ws, config, n)
    judge = load_segmenter(judge_path, device=device, expect_arch=config.segmenter.arch,
                           expect_classes=NUM_TRAIN_CLASSES)
    judge.eval().requires_grad_(False)
    eps_fn = domain_denoiser(config, ws.diffusion_model, device)
    chain = domain_chain(config, n)
    if len(chain) < 2:
        raise DasgenError(f"--domain {n}: its chain has no reverse step that adds noise (t_n = "
                          f"{domain_noise_levels(config.ptl)[n - 1]}); calibrate a later domain")
    recorder = StepRecorder(chain_noise=float(chain.betas[1:].sum()) ** 0.5)
    guidance = domain_guidance(config, judge, n, len(chain), observer=recorder)
    x0, labels = store.batch(ids)
    x0, labels = x0.to(device), labels.to(device)
    consistency = {}
    size = config.ptl.translate_batch_size  # the domain stage's batches: what fits its memory fits here
    for name in ("guided", "unguided"):
        preds = []
        for start in range(0, len(ids), size):
            batch = slice(start, start + size)
            generators = [image_generator(config.run.seed, n, i) for i in ids[batch]]  # the domain stage's noise
            guide = guidance.for_labels(labels[batch]) if name == "guided" else None
            out = translate(x0[batch], denoiser=eps_fn, schedule=chain, generators=generators, guide=guide)
            if not torch.isfinite(out).all():
                raise DasgenError(f"domain {n}: the {name} chain produced non-finite pixels (a damaged DDPM or "
                                  "segmenter, or a guidance scale far too large)")
            with torch.inference_mode():
                quantised = torch.stack([to_model_tensor(to_uint8(img)) for img in out]).to(device)
                preds.append(judge(quantised).argmax(1).cpu())
        consistency[name] = label_agreement(torch.cat(preds), labels.cpu())
    return {
        "domain": n,
        "t": domain_noise_levels(config.ptl)[n - 1],
        "reverse_steps": len(chain),
        "images": len(ids),
        "judge": {"segmenter": f"g_{judge_n}", "path": str(judge_path)},
        "lambda": config.sgg.lambda_,
        "loss_reduction": config.sgg.loss_reduction,
        "gradient_at": config.sgg.gradient_at,
        "max_step": config.sgg.max_step,
        "resolution": list(config.data.resolution),
        "thresholds": {"measure": "chain_over_noise", "inert_below": INERT_BELOW,
                       "explosive_above": EXPLOSIVE_ABOVE, "target": TARGET_CHAIN},
        "modules": recorder.summary(config.sgg.lambda_),
        "consistency": {"guided": consistency["guided"], "unguided": consistency["unguided"],
                        "gain": consistency["guided"] - consistency["unguided"]},
        "wall_s": round(time.time() - started, 1),
    }


def render_calibration(result: dict) -> list[str]:
    """The report as lines for a terminal."""
    lines = [f"domain {result['domain']} (t = {result['t']}, {result['reverse_steps']} reverse steps) on "
             f"{result['images']} source images, judged by {result['judge']['segmenter']}; lambda = "
             f"{result['lambda']:g}, loss reduction {result['loss_reduction']}, gradient at {result['gradient_at']}, "
             f"cap {result['max_step']}"]
    for module, m in result["modules"].items():
        s = m["step_over_noise"]
        lines.append(f"  {module.upper()}: per step / sqrt(beta_t) mean {s['mean']:.3g} (min {s['min']:.3g}, max "
                     f"{s['max']:.3g}); over the chain / its noise {m['chain_over_noise']:.3g} (uncapped "
                     f"{m['raw_chain_over_noise']:.3g}); {100 * m['clipped_share']:.2f} % of pixels capped -> "
                     f"{m['verdict'].upper()}; lambda for {result['thresholds']['target']:g}: "
                     f"{'-' if m['suggested_lambda'] is None else format(m['suggested_lambda'], '.3g')}")
    c = result["consistency"]
    lines.append(f"  label consistency (judge mIoU vs source labels): guided {c['guided']:.3f}, unguided "
                 f"{c['unguided']:.3f} ({c['gain']:+.3f})")
    t = result["thresholds"]
    lines.append(f"  verdicts on the chain measure: inert below {t['inert_below']:g}, explosive above "
                 f"{t['explosive_above']:g} (docs/guidance.md)")
    return lines

