"""Assemble and render ``dasgen plan``: schedule, work units and (when measured) an estimated wall time."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from dasgen.config import Config
from dasgen.planning.costs import estimate_cost, render_estimate
from dasgen.planning.plan import ASSUMED_CLASSES_PER_IMAGE, plan_totals, schedule_costs
from dasgen.pipeline.workspace import Workspace
from dasgen.pipeline.common import load_source_pairs


def plan_report(config: Config, ws: Workspace, *, source_images: int | None = None) -> dict:
    """The schedule of every domain and the totals; uses the scanned source (if any) for image and class counts.

    ``source_images`` prices a source that is not scanned yet (e.g. 24,966 for GTA5).
    """
    classes, measured = ASSUMED_CLASSES_PER_IMAGE, False
    if source_images is not None:
        pass
    elif ws.source_pairs.is_file():
        _, record = load_source_pairs(ws)  # checked: a damaged record is one line
        source_images = len(record["entries"])
        classes = record.get("mean_classes_per_image") or classes
        measured = True
    else:
        source_images = config.toy.n_source
    costs = schedule_costs(config, source_images)
    return {
        "source_images": source_images,
        "source_scanned": measured,
        "domains": [c.__dict__ for c in costs],
        "totals": plan_totals(config, costs, classes),
        "estimate": estimate_cost(config, costs, classes),
        "deviations": deviations(config),
    }


def deviations(config: Config) -> list[str]:
    """Where the params differ from the paper's maths (named, so nobody mistakes a toy run for the paper's)."""
    notes = []
    if config.ptl.steps_per_domain is not None:
        notes.append(f"timestep respacing: {config.ptl.steps_per_domain} reverse steps per domain instead of t_n")
    if config.ptl.N != config.ptl.t_final:
        notes.append(f"domain schedule: N = {config.ptl.N} domains up to t_N = {config.ptl.t_final} "
                     f"(paper: N = t_N = 600, t_n = n)")
    if config.ptl.unet_bf16:
        notes.append("U-Net forward under bf16 autocast (ptl.unet_bf16; paper: float32)")
    if config.sgg.lambda_ != 80.0:
        notes.append(f"guidance scale lambda = {config.sgg.lambda_} (paper: 80)")
    if config.ptl.reverse_variance == "posterior":
        notes.append("sampling noise with the posterior variance beta-tilde_t (ptl.reverse_variance = posterior; "
                     "paper: Sigma = beta_t)")
    if config.ptl.reverse_variance == "ddim":
        notes.append("deterministic DDIM reverse steps, no sampling noise (ptl.reverse_variance = ddim; paper: "
                     "Eqs. 3-4 with Sigma = beta_t)")
    if config.sgg.gradient_at != "x_t":
        notes.append("guidance gradient taken at the denoised estimate x0_hat (sgg.gradient_at = x0_hat; paper: at x_k)")
    if config.sgg.lambda_resolution is not None:
        h, w = config.sgg.lambda_resolution
        notes.append(f"guidance steps scaled to lambda's resolution {h}x{w} (sgg.lambda_resolution; paper: none)")
    if config.sgg.step_rms is not None:
        notes.append(f"guidance step RMS-normalised to {config.sgg.step_rms} x sqrt(beta_t) per image, lambda unused "
                     "(sgg.step_rms; paper: lambda * beta_t * grad)")
    if config.sgg.max_step is not None:
        notes.append(f"guidance step capped at {config.sgg.max_step} per pixel (sgg.max_step; paper: uncapped)")
    if config.sgg.lcg_normalise != "region":
        notes.append("LCG loss averaged over the image, not the class region (sgg.lcg_normalise = image)")
    if config.sgg.lcg_view != "masked":
        notes.append("LCG's segmenter sees the whole image, not the masked region x * m_c (sgg.lcg_view = context)")
    if config.segmenter.arch.startswith("segformer_"):
        notes.append(f"segmenter {config.segmenter.arch}: SegFormer's all-MLP decode head on the MiT encoder stands in "
                     "for DAFormer's context-aware fusion head (paper: DAFormer)")
    train = config.diffusion.train
    if train.max_timestep is not None and config.diffusion.pretrained is None:
        notes.append(f"DDPM trained on t <= {train.max_timestep} only (diffusion.train.max_timestep; paper: t ~ U(1, T),"
                     " Eq. 5)")
    if train.lr_schedule != "constant" and config.diffusion.pretrained is None:
        notes.append(f"DDPM learning rate {train.lr_schedule}-annealed (diffusion.train.lr_schedule; paper: constant)")
    if (config.diffusion.num_train_timesteps, config.diffusion.beta_start, config.diffusion.beta_end) != (1000, 1e-4, 0.02):
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
    console.print(table)
    console.print(totals)
    if not report["source_scanned"]:
        console.print(f"(source not scanned: {report['source_images']:,} source images priced (--source-images, else "
                      f"toy.n_source), {ASSUMED_CLASSES_PER_IMAGE} classes per image assumed)")
    if "estimate" in report:
        for line in render_estimate(report["estimate"]):
            console.print(line, highlight=False, soft_wrap=True)
    for note in report["deviations"]:
        console.print(f"deviation from the paper: {note}")
    return buffer.getvalue()
