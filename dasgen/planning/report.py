"""Assemble and render ``dasgen plan``: GPU time, peak GPU memory and disk first, then the schedule, its work units
and (when measured) the CPU time estimate."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from dasgen.config import Config
from dasgen.planning.costs import estimate_cost, render_estimate
from dasgen.planning.disk import estimate_disk, render_disk
from dasgen.planning.gpu import estimate_gpu, render_gpu
from dasgen.planning.memory import estimate_memory, parameter_counts, render_memory
from dasgen.planning.plan import ASSUMED_CLASSES_PER_IMAGE, plan_totals, schedule_costs
from dasgen.pipeline.workspace import Workspace
from dasgen.pipeline.common import load_source_pairs
from dasgen.segment.models import PAPER_ARCHS


def plan_report(config: Config, ws: Workspace, *, source_images: int | None = None, gpus: int = 1,
                gpu_tflops: float | None = None) -> dict:
    """The schedule of every domain and the totals; uses the scanned source (if any) for image and class counts.

    ``source_images`` prices a source that is not scanned yet (e.g. 24,966 for GTA5). ``gpus``: the K of the wall
    time on K GPUs; ``gpu_tflops``: sustained throughput per GPU (None: the assumption in planning/costs.py).
    ``warnings`` says what was assumed for want of a scan.
    """
    classes, measured = ASSUMED_CLASSES_PER_IMAGE, False
    warnings = []
    if source_images is not None:
        warnings.append(f"pricing {source_images:,} source images (--source-images) with an assumed {classes:g} "
                        "classes per image; without --source-images a scanned source (`dasgen scan`) gives both")
    elif ws.source_pairs.is_file():
        _, record = load_source_pairs(ws)  # checked: a damaged record is one line
        source_images = len(record["entries"])
        classes = record.get("mean_classes_per_image") or classes
        measured = True
    else:
        source_images = config.toy.n_source
        warnings.append(f"source not scanned: pricing {source_images:,} source images (toy.n_source, the toy's count) "
                        f"with an assumed {classes:g} classes per image; run `dasgen scan` or pass --source-images")
    costs = schedule_costs(config, source_images)
    params = parameter_counts(config)
    return {
        "source_images": source_images,
        "source_scanned": measured,
        "warnings": warnings,
        "gpu": estimate_gpu(config, costs, classes, gpus=gpus, tflops=gpu_tflops),
        "memory": estimate_memory(config, classes, params),
        "disk": estimate_disk(config, costs, params),
        "domains": [c.__dict__ for c in costs],
        "totals": plan_totals(config, costs, classes),
        "estimate": estimate_cost(config, costs, classes),
        "deviations": deviations(config),
    }


# The reading of the guidance loss's reduction adopted as the paper's: Eq. 7 does not say how the cross-entropy is
# reduced over pixels; docs/guidance.md measures the step under each reading and says why this one.
PAPER_LOSS_REDUCTION = "mean"
PAPER_SEGMENTERS = (*PAPER_ARCHS, "segformer_b5")  # Tab. 1; SegFormer-b5 stands in for DAFormer
# Sec. 5.1's training recipes (what they leave out, e.g. weight decay, is not a deviation)
PAPER_G0 = {"iters": 20000, "batch_size": 2, "optimizer": "sgd", "lr": 2.5e-4, "momentum": 0.9}
PAPER_FINETUNE = {"iters": 300, "batch_size": 2, "optimizer": "sgd", "lr": 2.5e-4, "momentum": 0.9}
PAPER_DDPM = {"batch_size": 4, "lr": 2e-5, "adam_betas": [0.9, 0.99]}


def deviations(config: Config) -> list[str]:
    """Where the params differ from the paper's method (named, so nobody mistakes a toy run for the paper's).

    Values the paper does not state (the translation resolution, the DDPM's length, the export format) are choices,
    not deviations; ``params-paper.yaml`` lists none.
    """
    ptl, sgg, seg = config.ptl, config.sgg, config.segmenter
    train, d = config.diffusion.train, config.diffusion
    notes = []
    if ptl.steps_per_domain is not None:
        notes.append(f"timestep respacing: {ptl.steps_per_domain} reverse steps per domain instead of t_n "
                     "(ptl.steps_per_domain; paper: all t_n steps)")
    if ptl.N != ptl.t_final:
        notes.append(f"domain schedule: N = {ptl.N} domains up to t_N = {ptl.t_final}, t_n != n (paper: N = t_N, "
                     "t_n = n)")
    if ptl.unet_bf16:
        notes.append("U-Net forward under bf16 autocast (ptl.unet_bf16; paper: float32)")
    if sgg.lambda_ != 80.0:
        notes.append(f"guidance scale lambda = {sgg.lambda_:g} (sgg.lambda; paper: 80)")
    if sgg.arrangement != "alternate":
        notes.append(f"SGG arrangement {sgg.arrangement} (sgg.arrangement; paper: alternate LCG and GSG, Tab. 5)")
    if sgg.loss_reduction != PAPER_LOSS_REDUCTION:
        notes.append(f"guidance loss reduced by {sgg.loss_reduction} over pixels (sgg.loss_reduction; the paper's "
                     f"reading: {PAPER_LOSS_REDUCTION}, docs/guidance.md)")
    if sgg.gradient_at != "x_t":
        notes.append("guidance gradient taken at the denoised estimate x0_hat (sgg.gradient_at = x0_hat; paper: at x_k)")
    if sgg.max_step is not None:
        notes.append(f"guidance step capped at {sgg.max_step} per pixel (sgg.max_step; paper: uncapped)")
    if not ptl.finetune.use_src_loss:
        notes.append("fine-tuning on L_ada only (ptl.finetune.use_src_loss = false; paper: L_ada + L_src, Eq. 12)")
    elif ptl.finetune.src_loss_schedule != "constant":
        notes.append("L_src weighed 1 - (n - 1) / N in domain n (ptl.finetune.src_loss_schedule = fade; paper: "
                     "L_ada + L_src in every domain, Eq. 12)")
    for key, fraction in (("segmenter.source_train.aug_fraction", seg.source_train.aug_fraction),
                          ("ptl.finetune.aug_fraction", ptl.finetune.aug_fraction)):
        if fraction != 0.1:
            notes.append(f"noisy+masked augmentation of {100 * fraction:g} % of samples ({key}; paper: 10 %, Supp. C)")
    if seg.weights is None:
        notes.append("segmenter randomly initialised (segmenter.weights = null; paper: ImageNet-initialised, e.g. "
                     "segmenter.weights: imagenet)")
    if ptl.N != 600:
        notes.append(f"N = {ptl.N} intermediate domains (ptl.N; paper: 600, Sec. 5.1)")
    if ptl.images_per_domain != 600:
        notes.append(f"{ptl.images_per_domain} images per intermediate domain (ptl.images_per_domain; paper: 300 "
                     "iterations x batch 2 = 600)")
    if seg.arch not in PAPER_SEGMENTERS:
        notes.append(f"segmenter {seg.arch} is not one of the paper's networks (segmenter.arch; paper: "
                     "deeplabv2_resnet101, fcn8s_vgg16, DAFormer)")
    for what, section, paper in (("g_0", seg.source_train, PAPER_G0), ("fine-tune", ptl.finetune, PAPER_FINETUNE),
                                 ("DDPM", train, PAPER_DDPM)):
        if what == "DDPM" and d.pretrained is not None:
            continue  # a pretrained DDPM is not trained here
        differ = [key for key, value in paper.items() if getattr(section, key) != value]
        if differ:
            ours = ", ".join(f"{k} {getattr(section, k)}" for k in differ)
            notes.append(f"{what} training recipe off Sec. 5.1: {ours} (paper: "
                         f"{', '.join(f'{k} {paper[k]}' for k in differ)})")
    if seg.arch.startswith("segformer_"):
        notes.append(f"segmenter {seg.arch}: SegFormer's all-MLP decode head on the MiT encoder stands in "
                     "for DAFormer's context-aware fusion head (paper: DAFormer)")
    if train.max_timestep is not None and d.pretrained is None:
        notes.append(f"DDPM trained on t <= {train.max_timestep} only (diffusion.train.max_timestep; paper: t ~ U(1, T),"
                     " Eq. 5)")
    if train.lr_schedule != "constant" and d.pretrained is None:
        notes.append(f"DDPM learning rate {train.lr_schedule}-annealed (diffusion.train.lr_schedule; paper: constant)")
    if (d.num_train_timesteps, d.beta_start, d.beta_end) != (1000, 1e-4, 0.02):
        notes.append("noise schedule differs from T = 1000, betas 1e-4..0.02")
    return notes


def render_plan(report: dict, max_rows: int = 12) -> str:
    table = Table(title="PTL schedule")
    for column in ("domain n", "t_n", "reverse steps", "images", "LCG steps", "GSG steps"):
        table.add_column(column, justify="right")
    domains = report["domains"]
    shown = domains if len(domains) <= max_rows else domains[: max_rows // 2] + [None] + domains[-max_rows // 2:]
    for d in shown:
        if d is None:
            table.add_row("...", "", "", "", "", "")
            continue
        table.add_row(str(d["n"]), str(d["t"]), str(d["steps"]), str(d["images"]), str(d["lcg_steps"]),
                      str(d["gsg_steps"]))
    totals = Table(title="Cost")
    totals.add_column("quantity")
    totals.add_column("value", justify="right")
    for key, value in report["totals"].items():
        totals.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=False)

    def say(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True, markup=False)

    for warning in report.get("warnings", []):
        say(f"warning: {warning}")
    for part, render in (("gpu", render_gpu), ("memory", render_memory), ("disk", render_disk)):
        if part in report:
            for line in render(report[part]):
                say(line)
    console.print(table)
    console.print(totals)
    if "estimate" in report:
        for line in render_estimate(report["estimate"]):
            say(line)
    for note in report["deviations"]:
        console.print(f"deviation from the paper: {note}")
    console.print("before the long run: `dasgen calibrate` measures the guidance step on your data (docs/guidance.md)",
                  highlight=False, soft_wrap=True)
    return buffer.getvalue()
