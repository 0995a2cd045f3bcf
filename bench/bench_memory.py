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

``--guided-step`` measures the other memory question, the real-scale one: the peak of ONE guided reverse step at
256x512 with the paper's DeepLab-V2 / ResNet-101 and all 19 classes present, for each ``sgg.max_copies_per_pass``
given (``--copies 1 2 4``). Each setting runs in a fresh subprocess: U-Net (dasgen's default, sized for 256x512) and
segmenter built, weights resident (``weights_rss_mib``), then one LCG step (19 masked copies, Eqs. 6-9, in passes of
at most K copies) and one GSG step (Eq. 10); ``peak_rss_mib`` is the process's VmHWM, ``*_above_weights_mib`` what
the step added on top of the models. The per-copy slope says what a larger K costs; K = 19 (one pass) is
extrapolated, not run, when it would not fit this machine.

    python bench/bench_memory.py --guided-step --copies 1 2 4
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


def guided_step_worker(copies: int, size: tuple[int, int]) -> dict:
    """One LCG and one GSG reverse step at ``size`` (R101, 19 classes) with LCG passes of ``copies``; RSS in MiB."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_guidance import make_labels

    from dasgen.diffusion.schedule import NoiseSchedule
    from dasgen.diffusion.unet import build_unet, make_eps_fn
    from dasgen.guidance.arrangement import guidance_plan
    from dasgen.guidance.sampler import translate
    from dasgen.guidance.sgg import Guidance
    from dasgen.labels import NUM_TRAIN_CLASSES
    from dasgen.segment.models import build_segmenter

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start = rss_mib()
    unet = build_unet(sample_size=size).eval().requires_grad_(False)
    segmenter = build_segmenter("deeplabv2_resnet101", num_classes=NUM_TRAIN_CLASSES).eval().requires_grad_(False)
    eps_fn = make_eps_fn(unet)
    x = torch.rand((1, 3, *size), generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = make_labels(1, NUM_TRAIN_CLASSES, size, seed=0)
    weights = rss_mib()
    result = {"height": size[0], "width": size[1], "max_copies_per_pass": copies, "classes_present": NUM_TRAIN_CLASSES,
              "threads": torch.get_num_threads(), "start_rss_mib": round(start, 1), "weights_rss_mib": round(weights, 1)}
    schedule = NoiseSchedule.linear(1000).truncated(1)  # one reverse step (t = 1)
    for arrangement in ("gsg-only", "lcg-only"):  # GSG first: its peak is below LCG's, so VmHWM after it is its own
        guidance = Guidance(segmenter=segmenter, plan=guidance_plan(arrangement, 1), max_copies_per_pass=copies)
        started = time.perf_counter()
        translate(x, denoiser=eps_fn, schedule=schedule, generators=[torch.Generator().manual_seed(0)],
                  guide=guidance.for_labels(labels))
        name = arrangement.split("-")[0]
        result[f"{name}_step_s"] = round(time.perf_counter() - started, 1)
        result[f"{name}_peak_rss_mib"] = round(rss_mib("VmHWM"), 1)
        result[f"{name}_above_weights_mib"] = round(rss_mib("VmHWM") - weights, 1)
    return result


def guided_step(copies: list[int], size: tuple[int, int], as_json: bool) -> None:
    """Run :func:`guided_step_worker` in a fresh process per K; print the table and the per-copy slope."""
    rows = []
    for k in copies:
        done = subprocess.run([sys.executable, __file__, "--guided-step-worker", str(k), "--size", *map(str, size)],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
        if done.returncode != 0:
            sys.exit(f"guided-step worker (K={k}) failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if not as_json:
            r = rows[-1]
            print(f"K={k:>2}: models {r['weights_rss_mib'] - r['start_rss_mib']:7.0f} MiB; LCG step +"
                  f"{r['lcg_above_weights_mib']:7.0f} MiB ({r['lcg_step_s']} s); GSG step +"
                  f"{r['gsg_above_weights_mib']:6.0f} MiB ({r['gsg_step_s']} s); peak RSS {r['lcg_peak_rss_mib']:.0f} MiB",
                  flush=True)
    summary = {"rows": rows}
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        slope = (last["lcg_above_weights_mib"] - first["lcg_above_weights_mib"]) / (
            last["max_copies_per_pass"] - first["max_copies_per_pass"])
        one_pass = first["lcg_above_weights_mib"] + slope * (first["classes_present"] - first["max_copies_per_pass"])
        summary |= {"lcg_mib_per_copy": round(slope, 1), "lcg_one_pass_extrapolated_mib": round(one_pass)}
        if not as_json:
            print(f"LCG: {slope:.0f} MiB per masked copy in a pass; all 19 copies in one pass (K >= 19) would add "
                  f"about {one_pass / 1024:.1f} GiB above the models (extrapolated)")
    if as_json:
        print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="toy source images (all translated)")
    parser.add_argument("--cache-bytes", type=int, default=None, help="PairStore cache budget (default: dasgen's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--guided-step", action="store_true",
                        help="peak memory of one guided step at --size with R101 and 19 classes, per --copies")
    parser.add_argument("--copies", nargs="+", type=int, default=[1, 2, 4], help="sgg.max_copies_per_pass values")
    parser.add_argument("--size", nargs=2, type=int, default=[256, 512], metavar=("H", "W"))
    parser.add_argument("--guided-step-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.guided_step_worker is not None:
        print(json.dumps(guided_step_worker(args.guided_step_worker, tuple(args.size))))
        return
    if args.guided_step:
        guided_step(args.copies, tuple(args.size), args.json)
        return
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
