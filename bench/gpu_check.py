"""The prepared GPU measurement: everything a GPU session should measure, in one run of at most ~8 minutes.

    python bench/gpu_check.py --device cuda --out bench/gpu          # on the lent GPU
    python bench/gpu_check.py --tiny --device cpu --out /tmp/check   # the same code at tiny sizes (tests run this)

Parts (each timed and recorded separately; a part that fails or would overrun the budget is recorded as such and the
run goes on):

1. ``guided_step``: one guided reverse step at 256x512 with the paper's DeepLab-V2 / ResNet-101 and 19 classes
   present -- U-Net forward, LCG batched vs the per-class loop, GSG, whole steps, peak memory
   (``bench_guidance.bench_config``); bf16 on/off for the U-Net and its effect on a 10-step guided translation
   (``bench_guidance.speedups_config``).
2. ``unit_costs``: the per-unit seconds ``dasgen plan``'s cost model needs for the paper config
   (``bench_domain.bench_config``), written to ``OUT/unit_costs.json``; ``--write-costs`` also stores them in
   ``dasgen/planning/unit_costs.json``.
3. ``toy_translate``: a whole toy ``translate`` (the real stage) on the device -- images/s -- and the same domain on
   the CPU from the same inputs: are the image bytes equal, and if not, by how much do pixels differ.

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``. ``--tiny`` shrinks every size (32x64, the toy segmenter, a
few images), for the test that keeps this script from rotting.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import bench_domain  # noqa: E402
import bench_guidance  # noqa: E402

BUDGET_S = 8 * 60


def guided_step(args, device: torch.device) -> dict:
    name = "tiny" if args.tiny else "paper"
    bench_guidance.CONFIGS.setdefault("paper", dict(size=(256, 512), segmenter="deeplabv2_resnet101"))
    bench_guidance.CONFIGS.setdefault("tiny", dict(size=(32, 64), segmenter="toy"))
    options = argparse.Namespace(batch=1, large_batch=1, repeats=1, large_repeats=1 if args.tiny else 3,
                                 classes=[19], max_copies=19 if args.tiny else args.max_copies, compile=False)
    rows = bench_guidance.bench_config(name, options, device)
    speedups = bench_guidance.speedups_config(name, options, device)
    return {"steps": rows, "bf16": {k: v for k, v in speedups.items() if k.startswith(("unet_", "bf16_"))}}


def unit_costs(args, device: torch.device, out: Path) -> dict:
    name = "toy" if args.tiny else "paper"
    options = argparse.Namespace(batch=2, large_batch=1, repeats=1, large_repeats=1 if args.tiny else 3, classes=19,
                                 steps=2, finetune_iters=1, finetune_batch=2, large_finetune_batch=2,
                                 paper_size=[32, 64] if args.tiny else [256, 512])
    row = bench_domain.bench_config(name, options, device)
    note = f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else bench_domain.describe_machine()}"
    bench_domain.write_costs([row], out / "unit_costs.json", note)
    if args.write_costs:
        bench_domain.write_costs([row], bench_domain.UNIT_COSTS_FILE, note)
    return row


def _toy_workspace(root: Path, args, device: torch.device) -> dict:
    """Params for a quick toy workspace (shipped params, fewer images and DDPM steps: speed, not quality)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import TINY_PARAMS

    from dasgen.config import config_from_dict

    if args.tiny:
        params = {k: dict(v) for k, v in TINY_PARAMS.items()}
    else:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["toy"] |= {"n_source": 64, "n_target_train": 64, "n_target_val": 32}
        params["diffusion"]["train"] |= {"steps": 50}
        params["segmenter"]["source_train"] |= {"iters": 50}
        params["ptl"] |= {"images_per_domain": 32}
    params["run"] = dict(params.get("run", {}), device=device.type)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(config_from_dict(params).to_dict(), sort_keys=False))
    return params


def toy_translate(args, device: torch.device) -> dict:
    from dasgen.config import load_config
    from dasgen.stages.train_diffusion import run_train_diffusion
    from dasgen.stages.translate import run_domain
    from dasgen.stages.train_g0 import run_train_g0
    from dasgen.stages.scan import run_scan
    from dasgen.stages.toy import run_toy
    from dasgen.pipeline.workspace import Workspace
    from dasgen.artifact.reader import iter_domain_images

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp) / "device"
        root.mkdir()
        _toy_workspace(root, args, device)
        config, ws = load_config(root / "params.yaml"), Workspace(root)
        run_toy(config, root=root, progress=False)
        run_scan(config, ws)
        run_train_diffusion(config, ws, progress=False)
        run_train_g0(config, ws, progress=False)
        cpu_root = Path(tmp) / "cpu"
        shutil.copytree(root, cpu_root)
        n = config.ptl.N
        for previous in range(1, n):  # the earlier domains, on the device, to reach the last one's inputs
            run_domain(config, ws, previous, progress=False)
            shutil.copytree(ws.domain_dir(previous, n), Workspace(cpu_root).domain_dir(previous, n))
        started = time.perf_counter()
        metrics = run_domain(config, ws, n, progress=False)
        device_s = time.perf_counter() - started
        cpu_config = load_config(cpu_root / "params.yaml", {"run.device": "cpu"})
        started = time.perf_counter()
        run_domain(cpu_config, Workspace(cpu_root), n, progress=False)
        cpu_s = time.perf_counter() - started
        on_device = dict((row["id"], image) for row, image in iter_domain_images(ws.domain_dir(n, n)))
        on_cpu = dict((row["id"], image) for row, image in iter_domain_images(Workspace(cpu_root).domain_dir(n, n)))
        diffs = [np.abs(on_device[i].astype(int) - on_cpu[i].astype(int)) for i in sorted(on_device)]
        return {
            "device": str(device), "images": metrics["images"], "reverse_steps": metrics["reverse_steps"],
            "translate_s": metrics["translate_s"], "images_per_s": metrics["images"] / metrics["translate_s"],
            "domain_wall_s": round(device_s, 1), "cpu_domain_wall_s": round(cpu_s, 1),
            "images_byte_identical": sum(int(not d.any()) for d in diffs),
            "max_abs_pixel_diff": int(max(d.max() for d in diffs)),
            "mean_abs_pixel_diff": float(np.mean([d.mean() for d in diffs])),
        }


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['device']}{', tiny sizes' if report['tiny'] else ''})", "",
             f"Run at {report['started']} on {report['machine']}; {report['wall_s']} s in all.", ""]
    step = report["parts"].get("guided_step", {})
    for row in step.get("result", {}).get("steps", []):
        lines += ["## One guided reverse step", "", "| quantity | value |", "| --- | ---: |"]
        for key in ("height", "width", "classes_present", "lcg_copies", "unet_forward_s", "lcg_batched_s",
                    "lcg_loop_s", "lcg_loop_over_batched", "gsg_s", "step_unguided_s", "step_lcg_s", "step_gsg_s",
                    "peak_mib_step_lcg", "peak_mib_step_gsg"):
            value = row.get(key)
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
        lines.append("")
    bf16 = step.get("result", {}).get("bf16")
    if bf16:
        lines += ["## bf16 autocast of the U-Net (a named deviation)", "", "| quantity | value |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in bf16.items()]
        lines.append("")
    costs = report["parts"].get("unit_costs", {}).get("result")
    if costs:
        lines += ["## Unit costs for `dasgen plan` (seconds per unit)", "", "| unit | seconds |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in costs["unit_seconds"].items()]
        lines.append("")
    toy = report["parts"].get("toy_translate", {}).get("result")
    if toy:
        lines += ["## A whole toy translate", "", "| quantity | value |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in toy.items()]
        lines.append("")
    failed = {k: v["error"] for k, v in report["parts"].items() if "error" in v}
    if failed:
        lines += ["## Parts that did not finish", ""] + [f"- {k}: {v}" for k, v in failed.items()] + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "gpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU test of this script")
    parser.add_argument("--max-copies", type=int, default=64, help="sgg.max_copies_per_pass for the LCG pass")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds; parts that would start later skip")
    parser.add_argument("--write-costs", action="store_true", help="also update dasgen/planning/unit_costs.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report = {"device": str(device), "tiny": args.tiny, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else bench_domain.describe_machine(),
              "torch": torch.__version__, "parts": {}}
    parts = [("guided_step", lambda: guided_step(args, device)),
             ("unit_costs", lambda: unit_costs(args, device, args.out)),
             ("toy_translate", lambda: toy_translate(args, device))]
    for name, run in parts:
        if time.time() - started > args.budget:
            report["parts"][name] = {"error": f"skipped: the {args.budget:.0f} s budget was spent"}
            continue
        part_start = time.time()
        try:
            report["parts"][name] = {"result": run()}
        except Exception as error:  # noqa: BLE001 - record and go on: one failed part must not lose the others
            report["parts"][name] = {"error": f"{type(error).__name__}: {error}",
                                     "traceback": traceback.format_exc(limit=5)}
        report["parts"][name]["seconds"] = round(time.time() - part_start, 1)
        print(f"{name}: {report['parts'][name].get('error', 'done')} ({report['parts'][name]['seconds']} s)",
              flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    report["wall_s"] = round(time.time() - started, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"written {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    sys.exit(1 if any("error" in part for part in report["parts"].values()) else 0)


if __name__ == "__main__":
    main()
