"""GPU time of a whole run and its wall time on K GPUs, for ``dasgen plan``: FLOPs at an assumed throughput.

The work of each part, in FLOPs, from the measured FLOPs per unit of ``unit_costs.json`` (counted with
``torch.utils.flop_counter``, exact for the models) scaled by pixel count:

- DDPM training (Eq. 5): ``steps x batch`` U-Net forward+backward passes, priced at 3 forwards (a backward costs about
  twice its forward -- the usual rule, not a count);
- g_0 (Sec. 4.4): ``iters x batch`` segmenter training images;
- each domain n: its translation (U-Net forwards, LCG copies, GSG images, the consistency score) and its Eq. 12
  fine-tune.

FLOPs become seconds at ``tflops`` sustained (default :data:`~dasgen.planning.costs.ASSUMED_GPU_TFLOPS`, an
assumption until unit costs are measured on a GPU; ``dasgen plan --gpu-tflops`` replaces it). Wall time on K GPUs
follows ``dasgen translate`` under torchrun (docs/scale-out.md): domains form a chain, so they run one after the
other; inside a domain the ranks share the image batches (at most ``ceil(images / translate_batch_size)`` ranks are
busy) and the fine-tune's batch rows (at most ``finetune.batch_size``); DDPM training and g_0 run on one GPU.
"""

from __future__ import annotations

import math
from typing import Any

from dasgen.config import Config
from dasgen.planning.costs import ASSUMED_GPU_TFLOPS, UNITS, domain_units, entry_for, format_hours, load_unit_costs
from dasgen.planning.plan import DomainCost, finetune_images_per_domain

BACKWARD_FACTOR = 3.0  # forward + backward ~ 3 forwards (see the module docstring)


def estimate_gpu(config: Config, costs: list[DomainCost], classes_per_image: float, *, gpus: int = 1,
                 tflops: float | None = None, entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """GPU-hours of DDPM training, g_0 and the domains at ``tflops`` (None: :data:`ASSUMED_GPU_TFLOPS`), and the wall
    time on 1 and ``gpus`` GPUs."""
    entries = load_unit_costs() if entries is None else entries
    command = "python bench/bench_domain.py --write-costs"
    entry, why = entry_for(config, entries, what="FLOPs", command=command)
    if entry is not None and not all(name in entry.get("flops", {}) for name in UNITS):
        entry, why = None, f"no measured FLOPs for this U-Net and segmenter; run `{command}` to add them"
    if entry is None:
        return {"available": False, "reason": why}
    assumed, tflops = tflops is None, ASSUMED_GPU_TFLOPS if tflops is None else tflops
    flops = entry["flops"]
    scale = config.data.resolution[0] * config.data.resolution[1] / (entry["measured_at"][0] * entry["measured_at"][1])
    rate = tflops * 1e12  # FLOP/s
    train, g0, ft = config.diffusion.train, config.segmenter.source_train, config.ptl.finetune
    ddpm_s = train.steps * train.batch_size * BACKWARD_FACTOR * flops["unet_forward"] * scale / rate
    g0_s = g0.iters * g0.batch_size * flops["seg_train"] * scale / rate
    finetune_images = finetune_images_per_domain(config)
    translate_s, finetune_s, wall_domains = [], [], 0.0
    for domain in costs:
        units = domain_units(domain, classes_per_image=classes_per_image, finetune_images=finetune_images)
        translate = scale * (units["unet_forward"] * flops["unet_forward"]
                             + (units["seg_guidance_lcg"] + units["seg_guidance_gsg"]) * flops["seg_guidance"]
                             + units["seg_forward"] * flops["seg_forward"]) / rate
        fine = scale * units["seg_train"] * flops["seg_train"] / rate
        translate_s.append(translate)
        finetune_s.append(fine)
        batches = max(1, math.ceil(domain.images / config.ptl.translate_batch_size))
        wall_domains += translate / min(gpus, batches) + fine / min(gpus, ft.batch_size)
    domains_s = sum(translate_s) + sum(finetune_s)
    total_s = ddpm_s + g0_s + domains_s
    return {
        "available": True,
        "assumed_tflops": tflops,
        "tflops_is_assumption": assumed,
        "gpu_hours": {"ddpm_training": ddpm_s / 3600, "g0": g0_s / 3600, "translation": sum(translate_s) / 3600,
                      "finetune": sum(finetune_s) / 3600, "total": total_s / 3600},
        "gpus": gpus,
        "wall_hours": {"1": total_s / 3600, str(gpus): (ddpm_s + g0_s + wall_domains) / 3600},
        "domain_translate_hours": [s / 3600 for s in translate_s],
    }


def render_gpu(gpu: dict[str, Any]) -> list[str]:
    """The GPU-time lines ``dasgen plan`` prints first."""
    if not gpu.get("available"):
        return [f"GPU time: not available ({gpu.get('reason')})"]
    hours, wall = gpu["gpu_hours"], gpu["wall_hours"]
    rate = (f"an ASSUMED {gpu['assumed_tflops']:g} TFLOP/s sustained per GPU (not measured; set yours with "
            "--gpu-tflops)" if gpu["tflops_is_assumption"] else f"{gpu['assumed_tflops']:g} TFLOP/s per GPU (given)")
    lines = [
        f"GPU time (FLOP-bound estimate at {rate}): {format_hours(hours['total'])} in all --",
        f"  DDPM training {format_hours(hours['ddpm_training'])}, g_0 {format_hours(hours['g0'])}, translation "
        f"{format_hours(hours['translation'])}, fine-tunes {format_hours(hours['finetune'])}",
        f"  wall time: 1 GPU {format_hours(wall['1'])}",
    ]
    if gpu["gpus"] != 1:
        lines[-1] += (f"; {gpu['gpus']} GPUs {format_hours(wall[str(gpu['gpus'])])} (domains run in sequence, each "
                      "split over its image batches; DDPM and g_0 on one GPU)")
    return lines
