"""The memory model behind ``dasgen plan``: peak GPU memory of a guided step and of the training steps, estimated.

Memory of a step = the models' weights (and, when training, their gradients and optimiser state) + the activations of
the largest batch that goes through a network at once. Weights are counted exactly (the models are built on PyTorch's
``meta`` device: no memory, no compute). Activations come from measured MiB per image of each unit
(``memory_units.json``, written by ``bench/bench_memory_units.py``), scaled by pixel count to ``data.resolution``:

- a guided step (Eqs. 6-10) runs, one after the other, the U-Net on the batch of ``ptl.translate_batch_size`` images
  (inference), LCG's masked copies in passes of ``sgg.max_copies_per_pass`` -- copies of every image of the batch,
  so a pass holds min(K, batch x classes per image) copies -- and GSG on the whole batch; its peak is the largest;
- DDPM training (Eq. 5): weights, gradients, EMA and Adam's two moments, plus ``diffusion.train.batch_size`` images;
- segmenter training (g_0, and the Eq. 12 fine-tune, which puts its adapted and source batches through one at a time):
  weights, gradients and the optimiser's state (SGD momentum: 1, Adam: 2), plus one batch.

The figures are CPU float32 peaks: a GPU holds the same tensors, plus the CUDA context, cuDNN workspaces and allocator
fragmentation, which are not counted -- hence :data:`USABLE_SHARE` when saying what fits a GPU. Estimates, not
measurements of a GPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dasgen.config import Config
from dasgen.planning.costs import entry_for

MEMORY_UNITS_FILE = Path(__file__).with_name("memory_units.json")
MIB, GIB = 2**20, 2**30
# Share of a GPU's memory the tensors above may take: the rest is left for the CUDA context, cuDNN workspaces and the
# caching allocator's fragmentation, which this model does not count (an assumption, not a measurement).
USABLE_SHARE = 0.9
GPU_SIZES_GB = (24, 40, 80)  # common data-centre / workstation cards (decimal GB, as vendors state them)


def load_memory_units(path: Path = MEMORY_UNITS_FILE) -> list[dict[str, Any]]:
    """The measured entries of the memory table ([] when the file does not exist)."""
    return json.loads(path.read_text())["entries"] if path.is_file() else []


def parameter_counts(config: Config) -> dict[str, int | None]:
    """Exact state-dict sizes (parameters and persistent buffers) of the params' U-Net (None for
    ``diffusion.pretrained``) and segmenter, from models built on the ``meta`` device (shapes only)."""
    import torch

    from dasgen.diffusion.unet import build_unet
    from dasgen.labels import NUM_TRAIN_CLASSES
    from dasgen.segment.models import build_segmenter

    def count(module: torch.nn.Module) -> int:  # what a checkpoint holds: the state dict (persistent buffers too)
        return sum(t.numel() for t in module.state_dict().values())

    u = config.diffusion.unet
    with torch.device("meta"):
        segmenter = count(build_segmenter(config.segmenter.arch, num_classes=NUM_TRAIN_CLASSES,
                                          width=config.segmenter.width))
        unet = None if config.diffusion.pretrained else count(build_unet(
            sample_size=tuple(config.data.resolution), block_out_channels=u.block_out_channels,
            layers_per_block=u.layers_per_block, attention_levels=u.attention_levels,
            norm_num_groups=u.norm_num_groups))
    return {"unet": unet, "segmenter": segmenter}


def max_copies_for(gpu_gb: float, weights_bytes: float, copy_bytes: float) -> int:
    """The largest ``sgg.max_copies_per_pass`` whose LCG pass fits :data:`USABLE_SHARE` of a ``gpu_gb`` GB card."""
    return max(0, math.floor((gpu_gb * 1e9 * USABLE_SHARE - weights_bytes) / copy_bytes))


def estimate_memory(config: Config, classes_per_image: float, params: dict[str, int | None] | None = None,
                    entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Peak memory (GiB) of a guided step, a DDPM training step and a segmenter training step for ``config``.

    ``{"available": False, "reason": ...}`` when no measured entry matches the params' models. Otherwise
    ``guided_step`` (``peak_gib`` and its parts, the LCG copies per pass), ``ddpm_train_peak_gib``,
    ``segmenter_train_peak_gib`` (g_0 and fine-tune, the larger batch), ``fits`` (GPU size in GB -> whether the
    guided step fits) and ``max_copies_per_pass_for`` (GPU size -> the largest pass that fits).
    """
    entries = load_memory_units() if entries is None else entries
    entry, why = entry_for(config, entries, what="memory figures", command="python bench/bench_memory_units.py --write")
    if entry is None:
        return {"available": False, "reason": why}
    params = parameter_counts(config) if params is None else params
    height, width = config.data.resolution
    scale = height * width / (entry["measured_at"][0] * entry["measured_at"][1])
    per = {unit: mib * MIB * scale for unit, mib in entry["mib_per_image"].items()}  # bytes per image at our size
    unet_w, seg_w = 4 * (params["unet"] or 0), 4 * params["segmenter"]  # float32 weights
    batch = config.ptl.translate_batch_size
    copies = max(1, min(config.sgg.max_copies_per_pass, math.ceil(batch * classes_per_image)))
    parts = {"unet": batch * per["unet_infer"], "lcg": copies * per["seg_guidance"], "gsg": batch * per["seg_guidance"]}
    weights = unet_w + seg_w
    guided = weights + max(parts.values())
    train = config.diffusion.train
    ddpm = unet_w * (4 + (train.ema_decay is not None)) + train.batch_size * per["unet_train"]  # w, grad, m, v, EMA
    seg_batch = max(config.segmenter.source_train.batch_size, config.ptl.finetune.batch_size)
    states = max(2 if opt == "adam" else 1 for opt in (config.segmenter.source_train.optimizer,
                                                        config.ptl.finetune.optimizer))
    seg_train = seg_w * (2 + states) + seg_batch * per["seg_train"]
    return {
        "available": True,
        "entry": entry["name"],
        "measured_at": list(entry["measured_at"]),
        "pixel_scale": scale,
        "parameters": params,
        "guided_step": {
            "peak_gib": guided / GIB, "weights_gib": weights / GIB, "lcg_copies_per_pass": copies,
            "largest": max(parts, key=parts.get), **{f"{part}_gib": value / GIB for part, value in parts.items()},
            "per_copy_gib": per["seg_guidance"] / GIB,
        },
        "ddpm_train_peak_gib": ddpm / GIB,
        "segmenter_train_peak_gib": seg_train / GIB,
        "usable_share": USABLE_SHARE,
        "fits": {str(gb): guided <= gb * 1e9 * USABLE_SHARE for gb in GPU_SIZES_GB},
        "max_copies_per_pass_for": {str(gb): max_copies_for(gb, weights, per["seg_guidance"]) for gb in GPU_SIZES_GB},
    }


def format_gib(gib: float) -> str:
    """A size for people: MiB below 1 GiB, GiB above."""
    return f"{gib * 1024:.0f} MiB" if gib < 1 else f"{gib:.1f} GiB"


def render_memory(memory: dict[str, Any]) -> list[str]:
    """The memory lines ``dasgen plan`` prints."""
    if not memory.get("available"):
        return [f"peak GPU memory: not available ({memory.get('reason')})"]
    g, f = memory["guided_step"], format_gib
    fits = [f"{gb} GB {'yes' if ok else 'no'}" for gb, ok in memory["fits"].items()]
    best = ", ".join(f"{gb} GB: {k:,}" for gb, k in memory["max_copies_per_pass_for"].items())
    h, w = memory["measured_at"]
    return [
        f"peak GPU memory (estimate): guided step {f(g['peak_gib'])} = weights {f(g['weights_gib'])} + its largest "
        f"pass, {g['largest']} (LCG {g['lcg_copies_per_pass']} copies x {f(g['per_copy_gib'])} = {f(g['lcg_gib'])}, "
        f"GSG {f(g['gsg_gib'])}, U-Net {f(g['unet_gib'])}); DDPM training {f(memory['ddpm_train_peak_gib'])}, "
        f"segmenter training {f(memory['segmenter_train_peak_gib'])}",
        f"  guided step fits {memory['usable_share']:.0%} of a card: {', '.join(fits)}; largest "
        f"sgg.max_copies_per_pass that fits: {best} (per-image figures measured at {h}x{w} on a CPU, scaled by "
        "pixels; CUDA context not counted)",
    ]
