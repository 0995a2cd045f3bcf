"""Throughput of a whole PTL domain: images/s for translate (guided) and for the Eq. 12 fine-tune, plus unit costs.

Not a test. Per configuration (random weights; timings do not depend on them):

- ``toy``:   params.yaml's U-Net and toy segmenter at 32x64;
- ``large``: the same U-Net family with torchvision DeepLabV3-ResNet50 at 128x256;
- ``paper``: params-paper.yaml's U-Net (DDPM-256 widths) and DeepLabV3-ResNet101, measured at a reduced
  resolution (``--paper-size``, default 64x128) so that a CPU finishes; the cost model scales it by pixel count.

It reports

- ``translate_images_per_s``: a batch through ``translate`` on a chain of ``steps`` reverse steps with the paper's
  alternate LCG/GSG plan and ``classes`` classes per image, and ``translate_image_steps_per_s`` (images x steps / s:
  divide by a domain's t_n for its images/s);
- ``finetune_images_per_s``: :func:`dasgen.segment.train.finetune` with L_ada + L_src and the Supp. C augmentation
  (images = iterations x batch x 2);
- the unit costs of :mod:`dasgen.planning.costs` (seconds per U-Net forward per image, per segmenter guidance pass per
  LCG copy, per scoring forward, per training image), each with dasgen's speed-ups and, where one exists, without
  them (``*_baseline``: one image per U-Net call with autograd recording, LCG as a per-class loop, default layout),
  timed interleaved; and FLOPs per unit (``torch.utils.flop_counter`` on the meta device).

``--write-costs`` stores the toy and paper unit costs in ``dasgen/planning/unit_costs.json`` (what ``dasgen plan``
reads). ``--workspace W`` also times the real stage ``run_domain`` on a copy of a prepared workspace.

    python bench/bench_domain.py --threads 1                      # toy + large, a few minutes on a CPU
    python bench/bench_domain.py --threads 1 --configs toy paper --write-costs
    python bench/bench_domain.py --configs --workspace /path/to/prepared/workspace --domain 1
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
UNIT_COSTS_FILE = REPO / "dasgen" / "planning" / "unit_costs.json"

from dasgen.config import load_config  # noqa: E402
from dasgen.diffusion.schedule import NoiseSchedule, evenly_spaced_steps  # noqa: E402
from dasgen.diffusion.unet import build_unet, make_eps_fn  # noqa: E402
from dasgen.guidance.arrangement import guidance_plan  # noqa: E402
from dasgen.guidance.sampler import translate  # noqa: E402
from dasgen.guidance.sgg import Guidance, class_regions, lcg_gradient  # noqa: E402
from dasgen.segment.models import build_segmenter  # noqa: E402
from dasgen.segment.train import cross_entropy, finetune, make_optimizer  # noqa: E402

CONFIGS = {
    "toy": dict(params="params.yaml", size=None, segmenter=None, steps=25),
    "large": dict(params="params.yaml", size=(128, 256), segmenter="deeplabv3_resnet50", steps=4),
    "paper": dict(params="params-paper.yaml", size=None, segmenter=None, steps=2),
}


def build_models(config, size, segmenter_arch, device):
    u = config.diffusion.unet
    kwargs = dict(block_out_channels=u.block_out_channels, layers_per_block=u.layers_per_block,
                  attention_levels=u.attention_levels, norm_num_groups=u.norm_num_groups)
    unet = build_unet(sample_size=size, **kwargs).to(device).eval().requires_grad_(False)
    segmenter = build_segmenter(segmenter_arch, num_classes=19, width=config.segmenter.width).to(device)
    return unet, segmenter, kwargs


def unit_flops(unet_kwargs: dict, segmenter_arch: str, width: int, size) -> dict[str, float]:
    """FLOPs per unit at ``size``, counted on the meta device (no memory, no compute)."""
    flops = {}
    with torch.device("meta"):
        unet = build_unet(sample_size=size, **unet_kwargs).eval().requires_grad_(False)
        with FlopCounterMode(display=False) as counter:
            unet(torch.empty(1, 3, *size), torch.zeros(1, dtype=torch.int64))
        flops["unet_forward"] = counter.get_total_flops()
        segmenter = build_segmenter(segmenter_arch, num_classes=19, width=width).eval()
        segmenter.requires_grad_(False)
        with FlopCounterMode(display=False) as counter:
            segmenter(torch.empty(1, 3, *size))
        flops["seg_forward"] = counter.get_total_flops()
        x = torch.empty(1, 3, *size, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            segmenter(x).sum().backward()
        flops["seg_guidance"] = counter.get_total_flops()  # forward + backward to the input only (frozen g)
        segmenter.requires_grad_(True).train()
        with FlopCounterMode(display=False) as counter:  # batch 2: BatchNorm cannot train on one image
            segmenter(torch.empty(2, 3, *size)).sum().backward()
        flops["seg_train"] = counter.get_total_flops() / 2  # forward + backward to the weights, per image
    return flops


def bench_config(name: str, args, device: torch.device) -> dict:
    from bench_guidance import interleaved, lcg_per_class_loop, make_labels  # the current code only

    spec = CONFIGS[name]
    config = load_config(REPO / spec["params"])
    size = tuple(spec["size"] or (args.paper_size if name == "paper" else config.data.resolution))
    arch = spec["segmenter"] or config.segmenter.arch
    toy = name == "toy"
    batch = args.batch if toy else args.large_batch
    repeats = args.repeats if toy else args.large_repeats
    unet, segmenter, unet_kwargs = build_models(config, size, arch, device)
    eps_fn = make_eps_fn(unet)
    segmenter.eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand((batch, 3, *size), generator=generator) * 2 - 1).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    labels = make_labels(batch, args.classes, size, seed=args.classes).to(device)
    regions = class_regions(labels)
    timesteps = torch.full((batch,), 100, dtype=torch.int64, device=device)

    def unet_optimised():
        with torch.inference_mode():
            return eps_fn(x_cl, timesteps)

    def unet_baseline():
        with torch.enable_grad():
            return [eps_fn(x[b : b + 1], timesteps[b : b + 1]) for b in range(batch)]

    def seg_forward():
        with torch.inference_mode():
            return segmenter(x_cl)

    train_net = build_segmenter(arch, num_classes=19, width=config.segmenter.width).to(device).train()
    optimizer = make_optimizer(train_net, config.ptl.finetune.optimizer, lr=1e-6, momentum=0.9, weight_decay=0.0)
    train_batch = max(2, batch)  # BatchNorm cannot train on one image
    train_x = (torch.rand((train_batch, 3, *size), generator=generator) * 2 - 1).to(device)
    train_labels = make_labels(train_batch, args.classes, size, seed=2).to(device)

    def seg_train():
        optimizer.zero_grad(set_to_none=True)
        cross_entropy(train_net(train_x), train_labels).backward()
        optimizer.step()

    times = interleaved({
        "unet_forward": unet_optimised,
        "unet_forward_baseline": unet_baseline,
        "seg_guidance": lambda: lcg_gradient(segmenter, x, labels, regions=regions, max_copies_per_pass=64),
        "seg_guidance_baseline": lambda: lcg_per_class_loop(segmenter, x, labels, regions),
        "seg_forward": seg_forward,
        "seg_train": seg_train,
    }, device, repeats)
    per_unit = {"unet_forward": batch, "unet_forward_baseline": batch, "seg_guidance": len(regions),
                "seg_guidance_baseline": len(regions), "seg_forward": batch, "seg_train": train_batch}
    seconds = {key: times[key] / per_unit[key] for key in times}

    # translate: a chain of `steps` reverse steps with the alternate plan
    steps = args.steps or spec["steps"]
    t_n = max(steps, 100)
    schedule = NoiseSchedule.linear(config.diffusion.num_train_timesteps).truncated(t_n)
    schedule = schedule.respaced(evenly_spaced_steps(t_n, steps))
    guidance = Guidance(segmenter=segmenter, plan=guidance_plan("alternate", len(schedule)),
                        lambda_=config.sgg.lambda_, max_copies_per_pass=config.sgg.max_copies_per_pass)
    generators = [torch.Generator().manual_seed(b) for b in range(batch)]
    translate(x, denoiser=eps_fn, schedule=schedule.truncated(1), generators=generators,
              guide=Guidance(segmenter=segmenter, plan=["lcg"]).for_labels(labels))  # warm-up
    start = time.perf_counter()
    translate(x, denoiser=eps_fn, schedule=schedule, generators=generators, guide=guidance.for_labels(labels))
    translate_s = time.perf_counter() - start

    # fine-tune: L_ada + L_src, Supp. C augmentation, the params' optimiser
    ft = config.ptl.finetune
    ft_net = build_segmenter(arch, num_classes=19, width=config.segmenter.width).to(device)
    ft_batch = min(ft.batch_size, args.finetune_batch if toy else args.large_finetune_batch)
    ft_x = (torch.rand((ft_batch, 3, *size), generator=generator) * 2 - 1)
    ft_y = make_labels(ft_batch, args.classes, size, seed=1)

    def sample(_generator):
        return ft_x.to(device), ft_y.to(device)

    augment = {"schedule": NoiseSchedule.linear(config.diffusion.num_train_timesteps), "max_t": config.ptl.t_final,
               "fraction": ft.aug_fraction}
    finetune(ft_net, sample, sample, iters=1, lr=1e-6, optimizer=ft.optimizer, augment=augment,
             generator=torch.Generator().manual_seed(0), progress=False)  # warm-up
    start = time.perf_counter()
    finetune(ft_net, sample, sample, iters=args.finetune_iters, lr=1e-6, optimizer=ft.optimizer, augment=augment,
             generator=torch.Generator().manual_seed(0), progress=False)
    finetune_s = time.perf_counter() - start

    return {
        "config": name, "device": str(device), "threads": torch.get_num_threads(), "height": size[0],
        "width": size[1], "unet": unet_kwargs | {"block_out_channels": list(unet_kwargs["block_out_channels"]),
                                                 "attention_levels": list(unet_kwargs["attention_levels"])},
        "segmenter": arch, "params": spec["params"], "batch": batch, "classes_present": args.classes,
        "lcg_copies": len(regions), "repeats": repeats,
        "unit_seconds": seconds,
        "unit_flops": unit_flops(unet_kwargs, arch, config.segmenter.width, size),
        "lcg_loop_over_batched": seconds["seg_guidance_baseline"] / seconds["seg_guidance"],
        "unet_baseline_over_optimised": seconds["unet_forward_baseline"] / seconds["unet_forward"],
        "translate_steps": len(schedule), "translate_s": translate_s,
        "translate_image_steps_per_s": batch * len(schedule) / translate_s,
        "translate_images_per_s": batch / translate_s,
        "finetune_batch": ft_batch, "finetune_iters": args.finetune_iters, "finetune_s": finetune_s,
        "finetune_images_per_s": args.finetune_iters * ft_batch * 2 / finetune_s,
    }


def bench_workspace(workspace: Path, domain: int) -> dict:
    """The real stage on a copy of a prepared workspace: translate images/s and the rest of the domain's time."""
    from rich.console import Console

    from dasgen.stages.translate import run_domain
    from dasgen.pipeline.workspace import Workspace

    with tempfile.TemporaryDirectory(prefix="dasgen-bench-domain-") as tmp:
        root = Path(tmp) / "ws"
        shutil.copytree(workspace, root, ignore=shutil.ignore_patterns("domains", "export"))
        config = load_config(root / "params.yaml")
        for n in range(1, domain):  # earlier domains provide g_{n-1}
            run_domain(config, Workspace(root), n, progress=False, console=Console(stderr=True, quiet=True))
        metrics = run_domain(config, Workspace(root), domain, progress=False, console=Console(stderr=True, quiet=True))
    return {"config": "workspace", "domain": domain, "images": metrics["images"], "t": metrics["t"],
            "reverse_steps": metrics["reverse_steps"], "translate_s": metrics["translate_s"],
            "translate_images_per_s": metrics["images"] / metrics["translate_s"],
            "finetune_score_finalise_s": round(metrics["wall_s"] - metrics["translate_s"], 1),
            "threads": torch.get_num_threads()}


def write_costs(rows: list[dict], path: Path, device_note: str) -> None:
    """Store the unit costs of the toy and paper rows in the table ``dasgen plan`` reads (other entries kept)."""
    from dasgen.planning.costs import model_signature

    table = json.loads(path.read_text()) if path.is_file() else {"format_version": 1, "entries": []}
    table["note"] = ("Seconds per unit measured by bench/bench_domain.py (see dasgen/planning/costs.py); "
                     "'_baseline' = without dasgen's non-maths speed-ups. CPU numbers unless 'device' says otherwise.")
    for row in rows:
        if row["config"] not in ("toy", "paper"):
            continue
        config = load_config(REPO / row["params"])
        entry = {"name": f"{row['config']}-{row['device']}", "device": row["device"],
                 "device_note": f"{device_note}, {row['threads']} thread(s)",
                 "measured_at": [row["height"], row["width"]], **model_signature(config),
                 "seconds": row["unit_seconds"], "flops": row["unit_flops"]}
        table["entries"] = [e for e in table["entries"] if e["name"] != entry["name"]] + [entry]
    path.write_text(json.dumps(table, indent=1) + "\n")


def describe_machine() -> str:
    """CPU model and core count (from /proc/cpuinfo where available), and the torch version."""
    name = platform.processor() or platform.machine()
    try:
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
        if models:
            name = f"{models[0]}, {len(models)} cores"
    except OSError:
        pass
    return f"{name}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="*", default=["toy", "large"], choices=list(CONFIGS),
                        help="none with --workspace: time only the real stage (works with older dasgen code too)")
    parser.add_argument("--classes", type=int, default=8, help="classes present per image (LCG copies per image)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch at the toy size")
    parser.add_argument("--large-batch", type=int, default=1, help="images per batch for large / paper")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed calls per unit (toy)")
    parser.add_argument("--large-repeats", type=int, default=3, help="interleaved timed calls per unit (large/paper)")
    parser.add_argument("--steps", type=int, default=None, help="reverse steps of the timed translation")
    parser.add_argument("--finetune-iters", type=int, default=3)
    parser.add_argument("--finetune-batch", type=int, default=16, help="toy; at most the params' batch_size")
    parser.add_argument("--large-finetune-batch", type=int, default=2, help="large / paper (the paper's 2)")
    parser.add_argument("--paper-size", type=int, nargs=2, default=[64, 128], help="resolution for 'paper'")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workspace", type=Path, default=None, help="also time run_domain on a copy of it")
    parser.add_argument("--domain", type=int, default=1, help="with --workspace: the domain to time")
    parser.add_argument("--write-costs", nargs="?", const=UNIT_COSTS_FILE, type=Path, default=None,
                        help="store unit costs (default dasgen/planning/unit_costs.json)")
    parser.add_argument("--device-note", default=describe_machine(), help="the machine, for the cost table")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.configs:
        rows.append(bench_config(name, args, device))
        if not args.json:
            r = rows[-1]
            print(f"{name} {r['height']}x{r['width']} ({r['segmenter']}), batch {r['batch']}, {r['threads']} threads: "
                  f"translate {r['translate_images_per_s']:.3f} images/s over {r['translate_steps']} steps "
                  f"({r['translate_image_steps_per_s']:.2f} image-steps/s); fine-tune "
                  f"{r['finetune_images_per_s']:.2f} images/s; LCG loop/batched x{r['lcg_loop_over_batched']:.2f}; "
                  f"U-Net naive/optimised x{r['unet_baseline_over_optimised']:.2f}", flush=True)
            print("  unit seconds: " + ", ".join(f"{k} {v:.4g}" for k, v in r["unit_seconds"].items()))
    if args.workspace is not None:
        rows.append(bench_workspace(args.workspace, args.domain))
        if not args.json:
            r = rows[-1]
            print(f"workspace domain {r['domain']} (t={r['t']}, {r['reverse_steps']} steps, {r['images']} images): "
                  f"translate {r['translate_images_per_s']:.2f} images/s; fine-tune + score + finalise "
                  f"{r['finetune_score_finalise_s']} s")
    if args.write_costs is not None:
        write_costs(rows, args.write_costs, args.device_note)
        if not args.json:
            print(f"unit costs written to {args.write_costs}")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
