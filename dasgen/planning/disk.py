"""Disk use of a run, for ``dasgen plan``: translated images, segmenter checkpoints, the DDPM, and DVC's cache copy.

Counted from the schedule and the models' exact sizes (float32 safetensors: 4 bytes per parameter and buffer):

- translated images: every domain's images, at their uncompressed size (H x W x 3 bytes) -- an upper bound: PNG (a
  folder, or the bytes inside Parquet shards) compresses them by an amount that depends on the content;
- segmenter checkpoints: g_0 and the g_n that ``ptl.keep_segmenters`` keeps (all: ``ptl.N + 1`` files), each the
  whole network;
- the DDPM: the model and its training state (weights, EMA, Adam's two moments; kept after training, so that a
  re-run trains nothing);
- DVC's cache holds a second copy of every stage output unless ``cache.type`` links instead of copying (reflink on
  filesystems that support it, or hardlink/symlink): ``dvc_cache_copy`` is that copy.

An export (``dasgen export``) writes the final domain's images once more, in the chosen format.
"""

from __future__ import annotations

from typing import Any

from dasgen.config import Config
from dasgen.pipeline.keep_segmenters import keeps_segmenter
from dasgen.planning.plan import DomainCost

GB = 1e9


def estimate_disk(config: Config, costs: list[DomainCost], params: dict[str, int | None]) -> dict[str, Any]:
    """Bytes (as GB, decimal) of each part of a run's outputs and in all, with and without DVC's cache copy."""
    height, width = config.data.resolution
    image_bytes = height * width * 3
    images = sum(c.images for c in costs) * image_bytes
    checkpoint = 4 * params["segmenter"]
    kept = 1 + sum(keeps_segmenter(config, c.n) for c in costs)  # g_0 and the g_n left on disk
    checkpoints = kept * checkpoint
    unet = 4 * (params["unet"] or 0)
    ddpm_state = unet * (3 + (config.diffusion.train.ema_decay is not None))
    outputs = images + checkpoints + unet
    return {
        "translated_images_gb": images / GB,
        "final_domain_images_gb": (costs[-1].images * image_bytes if costs else 0) / GB,
        "image_bytes": image_bytes,
        "segmenter_checkpoints": kept,
        "segmenter_checkpoint_gb": checkpoint / GB,
        "segmenter_checkpoints_gb": checkpoints / GB,
        "ddpm_gb": unet / GB,
        "ddpm_training_state_gb": ddpm_state / GB,
        "outputs_gb": outputs / GB,
        "dvc_cache_copy_gb": outputs / GB,
        "total_gb": (2 * outputs + ddpm_state) / GB,
    }


def format_gb(gb: float) -> str:
    """A size for people: MB below 1 GB, GB above (decimal, as disks are sold)."""
    return f"{gb * 1000:,.1f} MB" if gb < 1 else f"{gb:,.1f} GB"


def render_disk(disk: dict[str, Any]) -> list[str]:
    """The disk lines ``dasgen plan`` prints."""
    f = format_gb
    return [
        f"disk (estimate): {f(disk['total_gb'])} in all = translated images {f(disk['translated_images_gb'])} "
        f"(uncompressed: an upper bound) + {disk['segmenter_checkpoints']:,} segmenter checkpoints "
        f"{f(disk['segmenter_checkpoints_gb'])} ({f(disk['segmenter_checkpoint_gb'])} each) + DDPM "
        f"{f(disk['ddpm_gb'])} (+{f(disk['ddpm_training_state_gb'])} training state)",
        f"  + DVC cache copy {f(disk['dvc_cache_copy_gb'])} (none with cache.type reflink/hardlink/symlink); an export "
        f"adds {f(disk['final_domain_images_gb'])}",
    ]
