"""Memory under load: does ``translate`` keep its resident memory flat as the number of images grows?

Builds a toy workspace with a few thousand tiny source images (16x32, tiny U-Net and segmenter, the shapes of
``tests/conftest.py``), then runs ``translate`` on the last (and only) domain -- which translates every source image
-- in a fresh subprocess, so the numbers belong to that stage alone. The worker samples its RSS (``VmRSS``) after the
first image, after 10 %, 50 % and 100 % of the images, and after the stage returned (fine-tune g_N, finalize the
index), plus the peak (``VmHWM``). ``growth_10_to_100_mib`` is what 90 % of the images added; flat means a few MiB at
most, whatever the number of images.

The source pairs are cached decoded up to a byte budget (``PairStore``, 2 GiB by default): on the toy every pair fits,
so the cache grows by ~2 KiB per image until the budget is spent. ``--cache-bytes 0`` turns the cache off to show the
rest of the stage alone.

    python bench/bench_memory.py                       # 3,000 images, table
    python bench/bench_memory.py --images 500 --json   # quick, machine-readable
    python bench/bench_memory.py --cache-bytes 0

Measured (2-core CPU VM shared with other jobs, load ~6; 3,000 images, 2 reverse steps, batch 8, 1 thread), MiB:

    cache        before  1st image  10 %    50 %    100 %   after stage  peak    growth 10->100 %
    default      795.6   843.7      854.7   857.2   860.8   924.0        926.7   +6.1 (2.3 KiB/image: the cache)
    0            795.7   848.2      853.7   855.5   853.2   916.6        919.5   -0.4 (flat)

Translation itself holds no per-image state. After it, fine-tuning g_N and finalizing the index add ~40 MiB plus
~8 KiB per image (the journal entries merged into the sorted index), about 60 MiB here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PARAMS = {  # tests/conftest.py's tiny params, one domain over every source image, 2 reverse steps per image
    "run": {"seed": 0, "device": "cpu"},
    "data": {"resolution": [16, 32], "target": {"val_split": None}},
    "toy": {"height": 16, "width": 32, "n_target_train": 12, "n_target_val": 6},
    "diffusion": {"unet": {"block_out_channels": [16, 32], "attention_levels": [False, False], "norm_num_groups": 8},
                  "train": {"steps": 6, "batch_size": 4, "checkpoint_every": 3}},
    "segmenter": {"width": 8, "source_train": {"iters": 6, "batch_size": 4}},
    "ptl": {"N": 1, "t_final": 20, "steps_per_domain": 2, "translate_batch_size": 8,
            "finetune": {"iters": 2, "batch_size": 4}},
}


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident set (``VmRSS``) or its peak (``VmHWM``) in MiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def prepare(root: Path, images: int) -> None:
    """Toy data, scan, a 6-step DDPM and g_0, through the stage functions."""
    from dasgen.config import load_config
    from dasgen.stages.train_diffusion import run_train_diffusion
    from dasgen.stages.train_g0 import run_train_g0
    from dasgen.stages.scan import run_scan
    from dasgen.stages.toy import run_toy
    from dasgen.pipeline.workspace import Workspace
    from rich.console import Console

    params = json.loads(json.dumps(PARAMS))
    params["toy"]["n_source"] = images
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    config = load_config(root / "params.yaml")
    quiet = Console(file=open("/dev/null", "w"))  # noqa: SIM115 - lives as long as the process
    run_toy(config, root=root, progress=False)
    run_scan(config, Workspace(root), console=quiet)
    run_train_diffusion(config, Workspace(root), progress=False, console=quiet)
    run_train_g0(config, Workspace(root), progress=False, console=quiet)


def worker(root: Path, cache_bytes: int | None) -> dict:
    """Run ``translate --domain 1`` in this process and sample RSS as images are written."""
    import torch
    from rich.console import Console

    import dasgen.stages.translate as domain_stage
    from dasgen.config import load_config
    from dasgen.datasets.pairs import PairStore
    from dasgen.pipeline.workspace import Workspace
    from dasgen.artifact.writer import DomainWriter

    torch.set_num_threads(1)
    config = load_config(root / "params.yaml")
    total = json.loads((root / "data/source_pairs.json").read_text())["entries"]
    total = len(total)
    marks = {1: "first_image", max(1, total // 10): "at_10pct", max(1, total // 2): "at_50pct", total: "at_100pct"}
    samples = {"before_stage": rss_mib()}
    original_add = DomainWriter.add
    count = {"n": 0, "t0": None}

    def add(self, record, image):
        original_add(self, record, image)
        count["n"] += 1
        if count["n"] == 1:
            count["t0"] = time.perf_counter()
        if count["n"] in marks:
            samples[marks[count["n"]]] = rss_mib()

    DomainWriter.add = add
    if cache_bytes is not None:
        original_init = PairStore.__init__

        def init(self, reader, entries, resolution, *, cache_bytes_=cache_bytes, **kwargs):
            original_init(self, reader, entries, resolution, cache_bytes=cache_bytes_)

        PairStore.__init__ = init
    started = time.perf_counter()
    domain_stage.run_domain(config, Workspace(root), 1, progress=False, console=Console(file=open("/dev/null", "w")))
    samples["after_stage"] = rss_mib()
    elapsed = time.perf_counter() - started
    return {
        "images": total,
        "rss_mib": {k: round(v, 1) for k, v in samples.items()},
        "peak_rss_mib": round(rss_mib("VmHWM"), 1),
        "growth_10_to_100_mib": round(samples["at_100pct"] - samples["at_10pct"], 1),
        "growth_per_1000_images_kib": round(1024 * (samples["at_100pct"] - samples["at_10pct"])
                                            / max(1, 0.9 * total) * 1000, 1),
        "translate_images_per_s": round((count["n"] - 1) / max(1e-9, time.perf_counter() - count["t0"]), 1)
        if count["t0"] else None,
        "stage_s": round(elapsed, 1),
        "cache_bytes": cache_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="toy source images (all translated)")
    parser.add_argument("--cache-bytes", type=int, default=None, help="PairStore cache budget (default: dasgen's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.cache_bytes)))
        return
    with tempfile.TemporaryDirectory(prefix="dasgen-bench-memory-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        prepare(root, args.images)
        setup_s = time.perf_counter() - started
        command = [sys.executable, __file__, "--worker", str(root)]
        if args.cache_bytes is not None:
            command += ["--cache-bytes", str(args.cache_bytes)]
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            sys.exit(f"worker failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1]) | {"setup_s": round(setup_s, 1)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"translate, one domain of {result['images']} toy images (16x32), cache_bytes={result['cache_bytes']}")
    for name, value in result["rss_mib"].items():
        print(f"  RSS {name:<13} {value:8.1f} MiB")
    print(f"  peak RSS          {result['peak_rss_mib']:8.1f} MiB")
    print(f"  growth 10->100 %  {result['growth_10_to_100_mib']:8.1f} MiB "
          f"({result['growth_per_1000_images_kib']} KiB per 1000 images)")
    print(f"  {result['translate_images_per_s']} images/s; stage {result['stage_s']} s, setup {result['setup_s']} s")


if __name__ == "__main__":
    main()
