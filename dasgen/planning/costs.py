"""The cost model behind ``dasgen plan``: measured unit costs x the work units of the PTL schedule.

A run's work is a handful of unit operations, counted per domain by :mod:`dasgen.planning.plan`:

- one U-Net forward per image per reverse step (Eq. 4);
- one segmenter forward+backward (to the input) per LCG copy -- (image, class present) pair -- at an LCG step
  (Eqs. 6-9) and per image at a GSG step (Eq. 10);
- one segmenter forward per translated image (its label-consistency score);
- one segmenter training step per fine-tune image (Eq. 12: the adapted and, with L_src, the source batch).

``unit_costs.json`` beside this module holds measured seconds per unit for a (U-Net, segmenter) pair at the
resolution they were measured at, on the device named in the entry (``bench/bench_domain.py --write-costs`` writes
it), both with dasgen's speed-ups and without them ("baseline": one image per U-Net call with autograd recording,
LCG as a per-class loop, default memory layout). Costs scale with the pixel count to the params' resolution (exact
for convolutions; the attention levels, a small share, grow faster). The table also holds FLOPs per unit (counted
with ``torch.utils.flop_counter``), from which :mod:`dasgen.planning.gpu` estimates GPU time at an *assumed*
sustained throughput (:data:`ASSUMED_GPU_TFLOPS`) -- an assumption to replace with measured GPU unit costs.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from dasgen.config import Config
from dasgen.planning.plan import DomainCost, finetune_images_per_domain

UNIT_COSTS_FILE = Path(__file__).with_name("unit_costs.json")
UNITS = ("unet_forward", "seg_guidance", "seg_forward", "seg_train")

# Sustained float32/TF32 convolution throughput assumed for one H100-class GPU when converting FLOPs to GPU-hours:
# about a fifth of the H100's dense TF32 tensor-core peak (~495 TFLOP/s), typical for conv nets at batch <= 16.
ASSUMED_GPU_TFLOPS = 100.0


def model_signature(config: Config) -> dict[str, Any] | None:
    """What the unit costs depend on besides resolution: the U-Net architecture and the segmenter architecture.

    None when the U-Net comes from ``diffusion.pretrained`` (its architecture is not in the params).
    """
    if config.diffusion.pretrained:
        return None
    unet = config.diffusion.unet
    segmenter = config.segmenter.arch if config.segmenter.arch != "toy" else f"toy-w{config.segmenter.width}"
    return {
        "unet": {"block_out_channels": list(unet.block_out_channels), "layers_per_block": unet.layers_per_block,
                 "attention_levels": list(unet.attention_levels), "norm_num_groups": unet.norm_num_groups},
        "segmenter": segmenter,
    }


def load_unit_costs(path: Path = UNIT_COSTS_FILE) -> list[dict[str, Any]]:
    """The measured entries of a unit-cost table ([] when the file does not exist)."""
    if not path.is_file():
        return []
    return json.loads(path.read_text())["entries"]


def find_entry(entries: list[dict[str, Any]], signature: dict[str, Any] | None) -> dict[str, Any] | None:
    """The entry measured for exactly this (U-Net, segmenter) pair, or None."""
    if signature is None:
        return None
    for entry in entries:
        if entry["unet"] == signature["unet"] and entry["segmenter"] == signature["segmenter"]:
            return entry
    return None


def entry_for(config: Config, entries: list[dict[str, Any]], *, what: str, command: str
              ) -> tuple[dict[str, Any] | None, str | None]:
    """The measured entry for the params' (U-Net, segmenter) pair, else None and the reason (what to run)."""
    entry = find_entry(entries, model_signature(config))
    if entry is not None:
        return entry, None
    if config.diffusion.pretrained:
        return None, "diffusion.pretrained: the U-Net's architecture is not in the params"
    return None, f"no measured {what} for this U-Net and segmenter; run `{command}` to add them"


def domain_units(domain: DomainCost, *, classes_per_image: float, finetune_images: int) -> dict[str, float]:
    """Work units of one domain: U-Net forwards, segmenter guidance passes (LCG copies + GSG images), scoring
    forwards and fine-tune training images."""
    return {
        "unet_forward": domain.images * domain.steps,
        "seg_guidance_lcg": domain.lcg_steps * domain.images * classes_per_image,
        "seg_guidance_gsg": domain.gsg_steps * domain.images,
        "seg_forward": domain.images,
        "seg_train": finetune_images,
    }


def _seconds(units: dict[str, float], unit_s: dict[str, float], scale: float, *, baseline: bool,
             lcg_baseline: bool | None = None) -> dict[str, float]:
    """Seconds per part of a domain. ``baseline`` picks the no-speed-up unit costs; ``lcg_baseline`` overrides
    that choice for LCG alone (to price the per-class loop with everything else optimised)."""
    lcg_baseline = baseline if lcg_baseline is None else lcg_baseline

    def cost(name: str, base: bool) -> float:
        key = f"{name}_baseline" if base and f"{name}_baseline" in unit_s else name
        return unit_s[key] * scale

    return {
        "unet": units["unet_forward"] * cost("unet_forward", baseline),
        "lcg": units["seg_guidance_lcg"] * cost("seg_guidance", lcg_baseline),
        "gsg": units["seg_guidance_gsg"] * cost("seg_guidance", baseline),
        "score": units["seg_forward"] * cost("seg_forward", baseline),
        "finetune": units["seg_train"] * cost("seg_train", baseline),
    }


def estimate_cost(config: Config, costs: list[DomainCost], classes_per_image: float,
                  entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Estimated time of the whole PTL run for ``config``: per domain and in total, with and without the speed-ups.

    Returns ``{"available": False, "reason": ...}`` when no measured entry matches the params' models; otherwise
    hours on the entry's device (``domain_hours``: per domain; ``total_hours``; ``baseline_total_hours`` without the
    non-maths speed-ups; ``lcg_loop_total_hours``: everything optimised but LCG as a per-class loop) and the split
    by part. GPU time from the entry's FLOPs is :func:`dasgen.planning.gpu.estimate_gpu`'s.
    """
    entries = load_unit_costs() if entries is None else entries
    entry, why = entry_for(config, entries, what="unit costs", command="python bench/bench_domain.py --write-costs")
    if entry is None:
        return {"available": False, "reason": why}
    height, width = config.data.resolution
    measured_h, measured_w = entry["measured_at"]
    scale = (height * width) / (measured_h * measured_w)
    finetune_images = finetune_images_per_domain(config)
    per_domain, baseline, lcg_loop, parts = [], 0.0, 0.0, dict.fromkeys(("unet", "lcg", "gsg", "score", "finetune"), 0.0)
    for domain in costs:
        units = domain_units(domain, classes_per_image=classes_per_image, finetune_images=finetune_images)
        seconds = _seconds(units, entry["seconds"], scale, baseline=False)
        per_domain.append(sum(seconds.values()))
        for part, value in seconds.items():
            parts[part] += value
        baseline += sum(_seconds(units, entry["seconds"], scale, baseline=True).values())
        lcg_loop += sum(_seconds(units, entry["seconds"], scale, baseline=False, lcg_baseline=True).values())
    total = sum(per_domain)
    hours = [s / 3600 for s in per_domain]
    return {
        "available": True,
        "entry": entry["name"],
        "device": entry["device"],
        "device_note": entry.get("device_note", ""),
        "measured_at": [measured_h, measured_w],
        "pixel_scale": scale,
        "classes_per_image": classes_per_image,
        "domain_hours": hours,
        "domain_hours_summary": {"first": hours[0], "median": statistics.median(hours), "last": hours[-1]}
        if hours else {},
        "total_hours": total / 3600,
        "parts_hours": {part: value / 3600 for part, value in parts.items()},
        "baseline_total_hours": baseline / 3600,
        "lcg_loop_total_hours": lcg_loop / 3600,
        "speedup_vs_baseline": baseline / total if total else None,
    }


def format_hours(hours: float) -> str:
    """Hours for people: seconds, minutes, hours or days, whichever reads best."""
    seconds = hours * 3600
    if seconds < 120:
        return f"{seconds:.1f} s"
    if hours < 2:
        return f"{seconds / 60:.1f} min"
    if hours < 72:
        return f"{hours:.1f} h"
    return f"{hours:,.0f} h ({hours / 24:,.0f} days)"


def render_estimate(estimate: dict[str, Any]) -> list[str]:
    """The estimate as the lines ``dasgen plan`` prints (each short enough for an 80-column terminal)."""
    if not estimate.get("available"):
        return [f"time estimate: not available ({estimate.get('reason')})"]
    summary, parts = estimate["domain_hours_summary"], estimate["parts_hours"]
    h, w = estimate["measured_at"]
    lines = [
        f"estimated time on {estimate['device']} ({estimate['device_note']})",
        f"  unit costs measured at {h}x{w}, scaled x{estimate['pixel_scale']:.3g} by pixel count; "
        f"{estimate['classes_per_image']:.3g} classes/image",
        f"  per domain: first {format_hours(summary['first'])}, median {format_hours(summary['median'])}, "
        f"last {format_hours(summary['last'])}",
        f"  total: {format_hours(estimate['total_hours'])}",
        "  split: " + ", ".join(f"{part} {format_hours(parts[part])}" for part in ("unet", "lcg", "gsg")),
        "         " + ", ".join(f"{part} {format_hours(parts[part])}" for part in ("score", "finetune")),
        f"  without the non-maths speed-ups: {format_hours(estimate['baseline_total_hours'])} "
        f"(x{estimate['speedup_vs_baseline']:.2f})",
        f"  per-class loop for LCG alone: {format_hours(estimate['lcg_loop_total_hours'])}",
    ]
    return lines
