"""Memory per unit of work, for the memory model of ``dasgen plan`` (``dasgen/planning/memory.py``).

For a params file's (U-Net, segmenter) pair, at a given size, measures what one more image adds to the peak of each
unit of a run, as the slope of the process's peak resident memory (``VmHWM``) between two batch sizes, each in a fresh
process (the models' weights and the allocator's start-up cost cancel in the slope):

- ``unet_infer``: a U-Net forward under ``inference_mode`` (Eq. 4; what translation runs);
- ``unet_train``: a U-Net forward + backward of the Eq. 5 loss (DDPM training);
- ``seg_guidance``: a segmenter forward + backward to the input, weights frozen (one LCG copy, Eqs. 6-9, or one GSG
  image, Eq. 10);
- ``seg_train``: a segmenter forward + backward to its weights (g_0 training, the Eq. 12 fine-tune).

Activations grow with the pixel count, so the plan scales these figures by pixels to ``data.resolution``. They are
CPU float32 figures: a GPU holds the same tensors (plus the CUDA context and cuDNN workspaces, not counted), so they
stand in for GPU memory until measured there. ``--write`` stores them in ``dasgen/planning/memory_units.json``.

    python bench/bench_memory_units.py --configs toy paper --write
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "dasgen" / "planning" / "memory_units.json"
UNITS = ("unet_infer", "unet_train", "seg_guidance", "seg_train")
CONFIGS = {"toy": ("params.yaml", None), "paper": ("params-paper.yaml", (64, 128))}  # paper: a 1/16 of 256x512
BATCHES = (1, 3)


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not in /proc/self/status (Linux only)")


def worker(params: str, unit: str, batch: int, size: tuple[int, int]) -> float:
    """Peak MiB of one ``unit`` at ``batch`` images of ``size`` (models built first, then the step)."""
    import torch

    from dasgen.config import load_config
    from dasgen.diffusion.unet import build_unet
    from dasgen.labels import NUM_TRAIN_CLASSES
    from dasgen.segment.models import build_segmenter

    torch.set_num_threads(1)
    config = load_config(REPO / params)
    x = torch.rand((batch, 3, *size), generator=torch.Generator().manual_seed(0)) * 2 - 1
    if unit.startswith("unet"):
        u = config.diffusion.unet
        net = build_unet(sample_size=size, block_out_channels=u.block_out_channels, layers_per_block=u.layers_per_block,
                         attention_levels=u.attention_levels, norm_num_groups=u.norm_num_groups, seed=0)
        t = torch.full((batch,), 500, dtype=torch.int64)
        if unit == "unet_infer":
            with torch.inference_mode():
                net.eval()(x, t)
        else:
            ((net.train()(x, t).sample - x) ** 2).mean().backward()
    else:
        net = build_segmenter(config.segmenter.arch, num_classes=NUM_TRAIN_CLASSES, width=config.segmenter.width)
        labels = torch.randint(0, NUM_TRAIN_CLASSES, (batch, *size), generator=torch.Generator().manual_seed(0))
        if unit == "seg_guidance":
            net.eval().requires_grad_(False)
            x.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net.train(unit == "seg_train")(x), labels)
        torch.autograd.grad(loss, x) if unit == "seg_guidance" else loss.backward()
    return peak_mib()


def measure(name: str) -> dict:
    from dasgen.config import load_config
    from dasgen.planning.costs import model_signature

    params, size = CONFIGS[name]
    config = load_config(REPO / params)
    size = tuple(size or config.data.resolution)
    per_image = {}
    for unit in UNITS:
        peaks = []
        for batch in BATCHES:
            done = subprocess.run([sys.executable, __file__, "--worker", params, unit, str(batch), *map(str, size)],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode:
                sys.exit(f"{name} {unit} batch {batch} failed:\n{done.stderr[-2000:]}")
            peaks.append(float(done.stdout.strip().splitlines()[-1]))
        per_image[unit] = round((peaks[1] - peaks[0]) / (BATCHES[1] - BATCHES[0]), 2)
        print(f"{name} {unit}: peaks {peaks} MiB at batch {BATCHES} -> {per_image[unit]} MiB per image", flush=True)
    return {"name": f"{name}-cpu-rss", "measured_at": list(size), **model_signature(config),
            "mib_per_image": per_image, "batches": list(BATCHES),
            "method": "slope of peak RSS (VmHWM) between the two batch sizes, float32 on the CPU, one process each"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--write", action="store_true", help=f"write the figures to {OUT.relative_to(REPO)}")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        params, unit, batch, height, width = args.worker
        print(worker(params, unit, int(batch), (int(height), int(width))))
        return
    entries = [measure(name) for name in args.configs]
    print(json.dumps(entries, indent=1))
    if args.write:
        OUT.write_text(json.dumps({"format_version": 1, "note": "MiB per image of each unit at measured_at, written "
                                   "by bench/bench_memory_units.py; see dasgen/planning/memory.py",
                                   "entries": entries}, indent=1) + "\n")


if __name__ == "__main__":
    main()
