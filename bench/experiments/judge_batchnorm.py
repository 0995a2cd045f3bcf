"""Experiment: how far does one Eq. 12 fine-tune at the paper's batch size move a BatchNorm judge?

The paper's segmenters keep BatchNorm and fine-tune at batch 2 (Sec. 5.1), where one noisy+masked sample (Supp. C) is
half a batch; in train mode its statistics move the running mean / variance that the judge g_n then uses in eval
mode for guidance and scoring. ``segmenter.batchnorm: frozen`` keeps them (and the affine parameters) fixed.

On the 32x64 toy with a BatchNorm segmenter (the toy net with BatchNorm in place of GroupNorm, trained with BatchNorm
in train mode at batch 16 as g_0), one domain's fine-tune is run twice from the same g_0, same batches -- BatchNorm in
train mode and frozen -- at batch 2 for the paper's 300 iterations with 10 % noisy+masked samples, on L_ada + L_src.
The adapted images stand for an ideal X^n: labelled target-look images of a second toy (another seed, as the
ablation's oracle is trained on), so no DDPM is needed and the toy's own target val stays unseen. Recorded per run:
how far the running statistics moved (mean |delta mu| / sigma_before and mean |log(var_after / var_before)| over the
BatchNorm layers), and the judge's label consistency (mIoU of its prediction against the labels) on the adapted
images and on clean source images, and its target val mIoU -- before (g_0) and after (g_1).

    python bench/experiments/judge_batchnorm.py NAME [--seed 0]

Writes docs/results/experiments/judge-batchnorm/NAME.json and rebuilds docs/results/experiments/judge-batchnorm.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
from torch import nn

from dasgen.config import load_config
from dasgen.datasets.pairs import PairStore
from dasgen.datasets.registry import open_dataset
from dasgen.segment.metrics import label_agreement
from dasgen.pipeline.augment import augment_settings
from dasgen.pipeline.common import load_source_pairs, source_reader
from dasgen.pipeline.segmenters import on_device, score_on_target, target_val_store
from dasgen.pipeline.workspace import Workspace
from dasgen.segment.models import ToySegNet, build_segmenter
from dasgen.segment.train import finetune, train_source
from dasgen.stages.scan import run_scan
from dasgen.stages.toy import run_toy

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "results" / "experiments" / "judge-batchnorm"
WORK = REPO / "data" / "experiments" / "judge-batchnorm"


def toy_batchnorm_segmenter(num_classes: int, width: int = 32) -> nn.Module:
    """The toy net with every GroupNorm replaced by a BatchNorm of the same width (a small BatchNorm judge)."""
    net = ToySegNet(num_classes=num_classes, width=width)
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.GroupNorm):
                setattr(module, name, nn.BatchNorm2d(child.num_channels))
    return net


def batchnorm_state(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(m.running_mean.clone(), m.running_var.clone()) for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def drift(before: list, after: list) -> dict[str, float]:
    """How far the running statistics moved, averaged over channels and layers."""
    shifts = [float(((ma - mb).abs() / vb.sqrt().clamp_min(1e-5)).mean()) for (mb, vb), (ma, _) in zip(before, after)]
    scales = [float((va.clamp_min(1e-8) / vb.clamp_min(1e-8)).log().abs().mean()) for (_, vb), (_, va) in
              zip(before, after)]
    return {"mean_shift_in_sigmas": statistics.mean(shifts), "abs_log_var_ratio": statistics.mean(scales)}


def consistency(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        preds = torch.cat([model(images[i:i + 32]).argmax(1) for i in range(0, len(images), 32)])
    return label_agreement(preds, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--g0-iters", type=int, default=800)
    parser.add_argument("--iters", type=int, default=300, help="fine-tune iterations (paper: 300)")
    parser.add_argument("--batch", type=int, default=2, help="fine-tune batch (paper: 2)")
    args = parser.parse_args()
    root = WORK / args.name
    config = load_config(REPO / "params.yaml", {"run.device": "cpu", "toy.n_source": 128, "toy.n_target_train": 1})
    ws = Workspace(root)
    if not ws.source_pairs.is_file():
        run_toy(config, root=root, progress=False)
        run_toy(config, out=root / "adapted-toy", progress=False, seed=1000, n_source=0, n_target_train=0,
                n_target_val=128)
        run_scan(config, ws)
    entries, _ = load_source_pairs(ws)
    store = PairStore(source_reader(config, root), entries, config.data.resolution)
    reader = open_dataset(config.data.target.kind, root / "adapted-toy" / "target", split="val", labelled=True)
    adapted = PairStore(reader, reader.entries(), config.data.resolution)
    adapted_images, adapted_labels = adapted.batch([e.id for e in reader.entries()])
    source_images, source_labels = store.batch([e.id for e in entries])
    torch.manual_seed(args.seed)  # the BatchNorm judge's initial weights
    g0 = build_segmenter("toy", width=config.segmenter.width)
    g0.net = toy_batchnorm_segmenter(g0.num_classes, config.segmenter.width)
    generator = torch.Generator().manual_seed(args.seed)
    augment = augment_settings(config, 0.1)
    train_source(g0, on_device(store.sampler(16), torch.device("cpu")), iters=args.g0_iters, lr=2e-3,
                 optimizer="adam", augment=augment, generator=generator, progress=False)
    val = target_val_store(config, root)

    def judge(model: nn.Module) -> dict:
        return {"consistency_adapted": consistency(model, adapted_images, adapted_labels),
                "consistency_source": consistency(model, source_images, source_labels),
                "target_val_miou": score_on_target(model, config, torch.device("cpu"), val)["miou"]}

    result = {"name": args.name, "seed": args.seed, "fine_tune": {"iters": args.iters,
              "batch": args.batch, "aug_fraction": 0.1}, "g0": judge(g0), "runs": {}}
    before = batchnorm_state(g0)
    for mode in ("train", "frozen"):
        model = copy.deepcopy(g0)
        batches = torch.Generator().manual_seed(1000 + args.seed)

        def sample_adapted(gen, batch=args.batch):
            picks = torch.randint(len(adapted_images), (batch,), generator=gen)
            return adapted_images[picks], adapted_labels[picks]

        finetune(model, sample_adapted, store.sampler(args.batch), iters=args.iters, lr=5e-4, optimizer="adam",
                 augment=augment, generator=batches, progress=False, batchnorm=mode)
        result["runs"][mode] = {"drift": drift(before, batchnorm_state(model)), **judge(model)}
        print(mode, json.dumps(result["runs"][mode]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    render()


def render() -> None:
    lines = ["| run | judge | BatchNorm | running mean shift (sigmas) | abs log var ratio | consistency on adapted | "
             "on source | target val mIoU |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in (json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))):
        g0 = r["g0"]
        lines.append(f"| {r['name']} | g_0 | - | - | - | {g0['consistency_adapted']:.3f} | "
                     f"{g0['consistency_source']:.3f} | {g0['target_val_miou']:.3f} |")
        for mode, run in r["runs"].items():
            lines.append(f"| {r['name']} | g_1 | {mode} | {run['drift']['mean_shift_in_sigmas']:.3f} | "
                         f"{run['drift']['abs_log_var_ratio']:.3f} | {run['consistency_adapted']:.3f} | "
                         f"{run['consistency_source']:.3f} | {run['target_val_miou']:.3f} |")
    (RESULTS.parent / "judge-batchnorm.md").write_text(
        "# The judge's BatchNorm under one fine-tune at batch 2\n\n"
        "Generated by bench/experiments/judge_batchnorm.py: a BatchNorm toy judge g_0, fine-tuned once (Eq. 12, batch "
        "2, 300 iterations, 10 % noisy+masked samples) with BatchNorm in train mode and frozen, from the same g_0 and "
        "batches. Drift: mean over layers of |delta running mean| / running std before, and |log(var after / var "
        "before)|. Consistency: the judge's mIoU against the images' labels (adapted: a second toy's labelled target "
        "images; source: the source pairs); target val mIoU on the toy's own target val.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
