"""Benchmark one guided reverse step of phi^n (Sec. 4.2): U-Net forward, LCG (batched vs per-class loop), GSG, memory.

Not a test. Three configurations:

- ``toy``:    32x64, the tiny UNet of ``dasgen.diffusion.unet.build_unet`` and the toy segmenter;
- ``large``:  128x256, the same UNet family and torchvision ``deeplabv3_resnet50`` (random weights, 19 classes),
  wrapped by ``dasgen.segment.models`` to take [-1, 1] input;
- ``xlarge``: the same at 256x512 (opt-in: minutes per measurement on a CPU).

For each, with 8 and 19 classes present per image (plus an ignore band): the denoiser forward, LCG batched (all
(image, class) copies in passes of ``--max-copies``) and LCG as a per-class loop (one segmenter call per image and
class, the paper's Eqs. 6-9 read literally), GSG, and one whole guided reverse step inside ``translate`` (the
second step of a 2-step LCG-only / GSG-only / unguided chain, timed with ``on_step``) against the sum of its parts.
Peak memory is the RSS high-water mark above the phase's start on CPU (sampled by a thread; glibc is told to return
freed blocks so RSS follows live memory), ``torch.cuda.max_memory_allocated`` above the start on CUDA.

CPU timings are only meaningful on an otherwise idle machine: with other processes on the cores, OpenMP threads
oversubscribe and small-op loops (the per-class reference) slow down by an order of magnitude; ``--threads 1`` helps.

    python bench/bench_guidance.py                 # table + JSON lines; about 1-3 minutes on 2 idle CPU cores
    python bench/bench_guidance.py --json          # JSON lines only
    python bench/bench_guidance.py --device cuda --batch 8 --large-batch 8 --repeats 5 --large-repeats 3

``--speedups`` adds one row per configuration comparing, with the variants' repeats interleaved (so a noisy machine
slows them alike), the speed-ups that keep the maths: autograd off (``inference_mode``) for the U-Net, channels-last
inputs, batching images through the U-Net, LCG batched vs per-class loop and chunk sizes; and the one that does not:
bf16 autocast of the U-Net forward, with its effect on eps and on a whole 10-step guided translation (``--compile``
adds ``torch.compile`` of the U-Net).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import threading
import time
from contextlib import contextmanager
from typing import Callable

import psutil
import torch
import torch.nn.functional as F

from dasgen.diffusion.schedule import NoiseSchedule
from dasgen.diffusion.unet import build_unet, make_eps_fn
from dasgen.guidance.arrangement import guidance_plan
from dasgen.datasets.io import to_uint8
from dasgen.guidance.sampler import autocast_denoiser, translate
from dasgen.guidance.sgg import IGNORE_INDEX, Guidance, class_regions, gsg_gradient, lcg_gradient
from dasgen.segment.models import build_segmenter

CONFIGS = {
    "toy": dict(size=(32, 64), segmenter="toy"),
    "large": dict(size=(128, 256), segmenter="deeplabv3_resnet50"),
    "xlarge": dict(size=(256, 512), segmenter="deeplabv3_resnet50"),
}


def _release_freed_memory_to_os() -> Callable[[], None]:
    """Make glibc mmap every block >= 128 KiB (so frees return to the OS) and return a malloc_trim; no-op elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, which also stops glibc raising it after frees
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return lambda: None


TRIM = _release_freed_memory_to_os()


class PeakMemory:
    """Peak memory (MiB) of a phase above its start: CUDA allocator peak, or RSS sampled every 5 ms on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = 0.0

    @contextmanager
    def measure(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
            yield self
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - start) / 2**20
            return
        TRIM()
        process = psutil.Process()
        start = process.memory_info().rss
        peak = [start]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                done.wait(0.005)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()
            peak[0] = max(peak[0], process.memory_info().rss)
            self.peak_mib = (peak[0] - start) / 2**20


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: bool) -> tuple[float, float]:
    """(median seconds per call, peak MiB) over ``repeats`` calls, after one untimed warm-up call if ``warmup``."""
    if warmup:
        fn()
    memory = PeakMemory(device)
    with memory.measure():
        times = [call_seconds(fn, device) for _ in range(repeats)]
    return sorted(times)[len(times) // 2], memory.peak_mib


def call_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of ``fn``, the GPU's queue drained before and after (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def make_labels(batch: int, n_classes: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """(B, H, W) labels with exactly ``n_classes`` classes in vertical bands (shuffled per image) and an ignore band."""
    height, width = size
    generator = torch.Generator().manual_seed(seed)
    band = torch.arange(width) * n_classes // width  # (W,) band index per column
    labels = []
    for _ in range(batch):
        classes = torch.randperm(19, generator=generator)[:n_classes]
        labels.append(classes[band].expand(height, width).clone())  # (H, W)
    labels = torch.stack(labels)  # (B, H, W)
    labels[:, : height // 8] = IGNORE_INDEX  # the ego-vehicle / sky-border kind of ignore region
    return labels


def lcg_per_class_loop(segmenter, x: torch.Tensor, labels: torch.Tensor, regions) -> torch.Tensor:
    """Eqs. 6-9 read literally: one segmenter forward/backward per (image, class)."""
    grad = torch.zeros_like(x)
    for b, c in zip(regions.image_index.tolist(), regions.class_id.tolist()):
        x_b = x[b : b + 1].clone().requires_grad_(True)  # (1, 3, H, W)
        m_c = labels[b : b + 1] == c  # (1, H, W)
        target = torch.where(m_c, labels[b : b + 1], IGNORE_INDEX)
        loss = F.cross_entropy(segmenter(x_b * m_c.unsqueeze(1)), target, ignore_index=IGNORE_INDEX)  # Eq. 6
        grad[b : b + 1] += torch.autograd.grad(loss, x_b)[0]
    return grad


def guided_step_time(segmenter, eps_fn, x, labels, arrangement: str, max_copies: int, device) -> tuple[float, float]:
    """(seconds, peak MiB) of the second reverse step of a 2-step ``translate`` chain, timed with ``on_step``."""
    schedule = NoiseSchedule.linear(1000).truncated(2)
    guidance = Guidance(segmenter=segmenter, plan=guidance_plan(arrangement, 2), max_copies_per_pass=max_copies)
    generators = [torch.Generator().manual_seed(b) for b in range(x.shape[0])]
    stamps = []

    def on_step(step: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    memory = PeakMemory(device)
    with memory.measure():
        translate(x, denoiser=eps_fn, schedule=schedule, generators=generators, guide=guidance.for_labels(labels),
                  on_step=on_step)
    return stamps[1] - stamps[0], memory.peak_mib


def bench_config(name: str, args, device: torch.device) -> list[dict]:
    size = CONFIGS[name]["size"]
    toy = name == "toy"
    batch = args.batch if toy else args.large_batch
    repeats = args.repeats if toy else args.large_repeats
    warmup = toy  # at 128x256 one shared warm-up below; a warm-up per measurement would double the run
    unet = build_unet(sample_size=size).to(device).eval().requires_grad_(False)
    eps_fn = make_eps_fn(unet)
    segmenter = build_segmenter(CONFIGS[name]["segmenter"], num_classes=19).to(device).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand((batch, 3, *size), generator=generator) * 2 - 1).to(device)
    timesteps = torch.full((batch,), 100, dtype=torch.int64, device=device)

    def unet_forward():
        with torch.inference_mode():
            return eps_fn(x, timesteps)

    if not warmup:
        unet_forward()
        gsg_gradient(segmenter, x, make_labels(batch, 8, size, seed=0).to(device))
    unet_s, unet_mib = timed(unet_forward, device, repeats, warmup)
    rows = []
    for n_classes in args.classes:
        labels = make_labels(batch, n_classes, size, seed=n_classes).to(device)
        regions = class_regions(labels)
        lcg_s, lcg_mib = timed(lambda: lcg_gradient(segmenter, x, labels, regions=regions,
                                                    max_copies_per_pass=args.max_copies), device, repeats, warmup)
        loop_s, loop_mib = timed(lambda: lcg_per_class_loop(segmenter, x, labels, regions), device, repeats, warmup)
        gsg_s, gsg_mib = timed(lambda: gsg_gradient(segmenter, x, labels), device, repeats, warmup)
        step_lcg_s, step_lcg_mib = guided_step_time(segmenter, eps_fn, x, labels, "lcg-only", args.max_copies, device)
        step_gsg_s, step_gsg_mib = guided_step_time(segmenter, eps_fn, x, labels, "gsg-only", args.max_copies, device)
        step_none_s, _ = guided_step_time(segmenter, eps_fn, x, labels, "none", args.max_copies, device)
        rows.append({
            "config": name, "device": str(device), "height": size[0], "width": size[1], "batch": batch,
            "classes_present": n_classes, "lcg_copies": len(regions), "max_copies_per_pass": args.max_copies,
            "threads": torch.get_num_threads(),
            "unet_forward_s": unet_s,
            "lcg_batched_s": lcg_s, "lcg_loop_s": loop_s, "lcg_loop_over_batched": loop_s / lcg_s,
            "gsg_s": gsg_s,
            "step_unguided_s": step_none_s,
            "step_lcg_s": step_lcg_s, "step_lcg_parts_s": unet_s + lcg_s,
            "step_gsg_s": step_gsg_s, "step_gsg_parts_s": unet_s + gsg_s,
            "peak_mib_unet": unet_mib, "peak_mib_lcg_batched": lcg_mib, "peak_mib_lcg_loop": loop_mib,
            "peak_mib_gsg": gsg_mib, "peak_mib_step_lcg": step_lcg_mib, "peak_mib_step_gsg": step_gsg_mib,
        })
    return rows


def interleaved(variants: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds per call of each variant, after one warm-up each, the variants' calls interleaved."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(call_seconds(fn, device))
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def speedups_config(name: str, args, device: torch.device) -> dict:
    """One row: each speed-up's variants timed interleaved (seconds per call for the whole batch)."""
    size = CONFIGS[name]["size"]
    toy = name == "toy"
    batch = args.batch if toy else args.large_batch
    repeats = args.repeats if toy else args.large_repeats
    unet = build_unet(sample_size=size).to(device).eval().requires_grad_(False)
    eps_fn = make_eps_fn(unet)
    segmenter = build_segmenter(CONFIGS[name]["segmenter"], num_classes=19).to(device).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand((batch, 3, *size), generator=generator) * 2 - 1).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    timesteps = torch.full((batch,), 100, dtype=torch.int64, device=device)
    labels = make_labels(batch, args.classes[0], size, seed=args.classes[0]).to(device)
    regions = class_regions(labels)
    contiguous, channels_last = torch.contiguous_format, torch.channels_last
    bf16_fn = autocast_denoiser(eps_fn, torch.bfloat16)

    def unet_call(fn, inputs, mode):
        def call():
            with mode():
                return fn(inputs, timesteps)
        return call

    def unet_per_image():
        with torch.inference_mode():
            return [eps_fn(x_cl[b : b + 1], timesteps[b : b + 1]) for b in range(batch)]

    unet_variants = {
        "unet_autograd_on": unet_call(eps_fn, x, torch.enable_grad),
        "unet_inference_mode": unet_call(eps_fn, x, torch.inference_mode),
        "unet_inference_channels_last": unet_call(eps_fn, x_cl, torch.inference_mode),
        "unet_per_image_loop": unet_per_image,
        "unet_bf16_autocast": unet_call(bf16_fn, x_cl, torch.inference_mode),
    }
    if args.compile:
        compiled = make_eps_fn(torch.compile(unet))
        start = time.perf_counter()
        unet_call(compiled, x_cl, torch.inference_mode)()
        compile_s = time.perf_counter() - start
        unet_variants["unet_compiled"] = unet_call(compiled, x_cl, torch.inference_mode)
    row = {"config": name, "kind": "speedups", "device": str(device), "height": size[0], "width": size[1],
           "batch": batch, "classes_present": args.classes[0], "lcg_copies": len(regions),
           "threads": torch.get_num_threads(), "repeats": repeats}
    row.update({f"{k}_s": v for k, v in interleaved(unet_variants, device, repeats).items()})
    if args.compile:
        row["unet_compile_first_call_s"] = compile_s
    seg_variants = {
        "lcg_loop_contiguous": lambda: lcg_per_class_loop(segmenter, x, labels, regions),
        "lcg_loop_channels_last": lambda: lcg_per_class_loop(segmenter, x_cl, labels, regions),
        "lcg_batched_contiguous": lambda: lcg_gradient(segmenter, x, labels, regions=regions,
                                                       max_copies_per_pass=64, memory_format=contiguous),
        "lcg_batched_channels_last": lambda: lcg_gradient(segmenter, x, labels, regions=regions,
                                                          max_copies_per_pass=64, memory_format=channels_last),
        "lcg_chunk8_channels_last": lambda: lcg_gradient(segmenter, x, labels, regions=regions,
                                                         max_copies_per_pass=8, memory_format=channels_last),
        "gsg_contiguous": lambda: gsg_gradient(segmenter, x, labels, memory_format=contiguous),
        "gsg_channels_last": lambda: gsg_gradient(segmenter, x, labels, memory_format=channels_last),
    }
    row.update({f"{k}_s": v for k, v in interleaved(seg_variants, device, repeats).items()})
    row["lcg_batching_gain_contiguous"] = row["lcg_loop_contiguous_s"] / row["lcg_batched_contiguous_s"]
    row["lcg_batching_gain_channels_last"] = row["lcg_loop_channels_last_s"] / row["lcg_batched_channels_last_s"]
    row["lcg_loop_over_batched_best"] = row["lcg_loop_contiguous_s"] / min(
        row["lcg_batched_channels_last_s"], row["lcg_chunk8_channels_last_s"], row["lcg_batched_contiguous_s"])
    # bf16 (a deviation): error of eps, and of a whole guided translation, against float32
    with torch.inference_mode():
        eps32, eps16 = eps_fn(x, timesteps), bf16_fn(x, timesteps)
    row["bf16_eps_max_abs_err"] = float((eps16 - eps32).abs().max())
    row["bf16_eps_rel_rms_err"] = float((eps16 - eps32).pow(2).mean().sqrt() / eps32.pow(2).mean().sqrt())
    steps = 10
    schedule = NoiseSchedule.linear(1000).truncated(100).respaced(range(0, 100, 100 // steps))
    guidance = Guidance(segmenter=segmenter, plan=guidance_plan("alternate", len(schedule)))
    outputs = []
    for fn in (eps_fn, bf16_fn):
        generators = [torch.Generator().manual_seed(b) for b in range(batch)]
        out = translate(x, denoiser=fn, schedule=schedule, generators=generators, guide=guidance.for_labels(labels))
        outputs.append(torch.stack([torch.from_numpy(to_uint8(img.cpu())) for img in out]).int())
    differ = (outputs[0] - outputs[1]).abs()
    row["bf16_translate_steps"] = len(schedule)
    row["bf16_translate_uint8_max_abs_diff"] = int(differ.max())
    row["bf16_translate_uint8_mean_abs_diff"] = float(differ.float().mean())
    return row


def lcg_sweep(args, device: torch.device) -> list[dict]:
    """Batched LCG vs the per-class loop for the toy segmenter at shrinking image sizes (same batch and classes).

    Both do the same arithmetic; the loop adds a fixed cost per segmenter call (Python, dispatch, autograd set-up, on
    a GPU kernel launches). The ratio shows how much of a call that overhead is at each size.
    """
    segmenter = build_segmenter("toy", num_classes=19).to(device).eval().requires_grad_(False)
    rows = []
    for size in ((8, 16), (16, 32), (32, 64)):
        generator = torch.Generator().manual_seed(0)
        x = (torch.rand((args.batch, 3, *size), generator=generator) * 2 - 1).to(device)
        labels = make_labels(args.batch, args.classes[0], size, seed=args.classes[0]).to(device)
        regions = class_regions(labels)
        times = interleaved({
            "loop": lambda: lcg_per_class_loop(segmenter, x, labels, regions),
            "batched": lambda: lcg_gradient(segmenter, x, labels, regions=regions, max_copies_per_pass=64),
        }, device, args.repeats)
        copies = len(regions)
        rows.append({"config": "toy-sweep", "kind": "lcg_sweep", "device": str(device), "height": size[0],
                     "width": size[1], "batch": args.batch, "lcg_copies": copies, "threads": torch.get_num_threads(),
                     "lcg_loop_s": times["loop"], "lcg_batched_s": times["batched"],
                     "lcg_loop_over_batched": times["loop"] / times["batched"],
                     "loop_overhead_ms_per_call": 1e3 * (times["loop"] - times["batched"]) / copies})
    return rows


def print_speedups(row: dict) -> None:
    base = row["unet_inference_mode_s"]
    print(f"\n{row['config']} {row['height']}x{row['width']}, batch {row['batch']}, {row['classes_present']} classes "
          f"({row['lcg_copies']} LCG copies), {row['threads']} threads, medians of {row['repeats']} interleaved calls")
    for key in [k for k in row if k.startswith("unet_") and k.endswith("_s")]:
        print(f"  {key[:-2]:32s} {row[key]:8.3f} s   x{base / row[key]:.2f} vs inference_mode")
    loop = row["lcg_loop_contiguous_s"]
    for key in [k for k in row if k.startswith("lcg_") and k.endswith("_s")]:
        print(f"  {key[:-2]:32s} {row[key]:8.3f} s   x{loop / row[key]:.2f} vs per-class loop")
    print(f"  {'gsg_contiguous':32s} {row['gsg_contiguous_s']:8.3f} s")
    print(f"  {'gsg_channels_last':32s} {row['gsg_channels_last_s']:8.3f} s   "
          f"x{row['gsg_contiguous_s'] / row['gsg_channels_last_s']:.2f}")
    print(f"  bf16 U-Net: eps max abs err {row['bf16_eps_max_abs_err']:.4f}, rel RMS {row['bf16_eps_rel_rms_err']:.4f}; "
          f"{row['bf16_translate_steps']}-step guided translation: uint8 max |diff| "
          f"{row['bf16_translate_uint8_max_abs_diff']}, mean {row['bf16_translate_uint8_mean_abs_diff']:.3f}")


def print_table(rows: list[dict]) -> None:
    columns = [
        ("config", "{}"), ("batch", "{}"), ("classes_present", "{}"), ("lcg_copies", "{}"), ("unet_forward_s", "{:.3f}"),
        ("lcg_batched_s", "{:.3f}"), ("lcg_loop_s", "{:.3f}"), ("lcg_loop_over_batched", "{:.2f}x"),
        ("gsg_s", "{:.3f}"), ("step_lcg_s", "{:.3f}"), ("step_lcg_parts_s", "{:.3f}"), ("step_gsg_s", "{:.3f}"),
        ("step_gsg_parts_s", "{:.3f}"), ("peak_mib_lcg_batched", "{:.0f}"), ("peak_mib_lcg_loop", "{:.0f}"),
        ("peak_mib_gsg", "{:.0f}"), ("peak_mib_step_lcg", "{:.0f}"),
    ]
    cells = [[fmt.format(row[key]) for key, fmt in columns] for row in rows]
    widths = [max(len(key), *(len(c[i]) for c in cells)) for i, (key, _) in enumerate(columns)]
    print("  ".join(key.rjust(w) for (key, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))
    first = rows[0]
    print(f"(device {first['device']}, {first['threads']} threads; seconds are medians per call; step_* = one whole "
          "reverse step inside translate, *_parts = unet + gradient; peak MiB above the phase start)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--classes", nargs="+", type=int, default=[8, 19])
    parser.add_argument("--batch", type=int, default=2, help="images per batch at the toy size")
    parser.add_argument("--large-batch", type=int, default=1, help="images per batch at 128x256")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement at the toy size")
    parser.add_argument("--large-repeats", type=int, default=1, help="timed calls per measurement at 128x256")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--max-copies", type=int, default=64, help="LCG max_copies_per_pass")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    parser.add_argument("--speedups", action="store_true", help="also compare the speed-up variants (see above)")
    parser.add_argument("--only-speedups", action="store_true", help="only the speed-up comparison")
    parser.add_argument("--compile", action="store_true", help="with --speedups: also time torch.compile(unet)")
    parser.add_argument("--lcg-sweep", action="store_true", help="only: batched vs loop LCG at 8x16..32x64")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.lcg_sweep:
        for row in lcg_sweep(args, device):
            if not args.json:
                print(f"{row['height']}x{row['width']}: {row['lcg_copies']} copies, loop {row['lcg_loop_s']:.3f} s, "
                      f"batched {row['lcg_batched_s']:.3f} s, x{row['lcg_loop_over_batched']:.2f}, loop overhead "
                      f"{row['loop_overhead_ms_per_call']:.2f} ms per call")
            print(json.dumps(row))
        return
    rows, speedup_rows = [], []
    for name in args.configs:
        if not args.only_speedups:
            rows.extend(bench_config(name, args, device))
        if args.speedups or args.only_speedups:
            speedup_rows.append(speedups_config(name, args, device))
        if not args.json:
            print(f"... {name} done", flush=True)
    if not args.json:
        if rows:
            print_table(rows)
        for row in speedup_rows:
            print_speedups(row)
    rows += speedup_rows
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
