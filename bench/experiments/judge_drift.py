"""Experiment: does the judge drift? g_{n-1}'s confidence in the true class on masked target val regions, per domain.

LCG (Eqs. 6-9) asks g_{n-1} to recognise each class region of a translation on its own, the region cut out by its
mask. If fine-tuning on translations makes g_{n-1} a worse reader of real target regions as n grows, the guidance
of later domains pulls towards what g_{n-1} believes a class looks like, not towards the target's look. This reads
the kept g_0 .. g_{N-1} of finished `dasgen ablate` runs and, for each, feeds every (image, class) region of the
spec's labelled target val split as LCG's input (the clean image times the class mask, Eq. 6) and averages the
softmax probability of the true class over the region's pixels (Eq. 8's y * m_c), then over regions: all classes,
and the toy's colour-swapped classes (sidewalk, terrain) apart.

    python bench/experiments/judge_drift.py experiments/ablation-leads-5.yaml full n-eq-tn [--out NAME]

Writes docs/results/experiments/<NAME>.{json,md} (NAME defaults to judge-drift-<spec stem>).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dasgen.guidance.sgg import class_regions
from dasgen.labels import NUM_TRAIN_CLASSES, TRAIN_ID_NAMES
from dasgen.pipeline.segmenters import store_batches, target_val_store
from dasgen.pipeline.workspace import Workspace
from dasgen.research.ablate import RESULT_FILE, seed_config, variant_config
from dasgen.research.ablate_spec import load_spec
from dasgen.research.experiments import SWAPPED_CLASSES, markdown_table, mean_std
from dasgen.segment.checkpoint import load_segmenter

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "docs" / "results" / "experiments"
COPIES_PER_PASS = 256  # masked copies per forward pass (memory only)
POINTS = 9  # judges read per run: enough for the curve's shape; every one of 100 would take a quarter hour per seed


def sampled_domains(N: int, points: int = POINTS) -> list[int]:
    """Domains 1..N whose judge is read: all of them up to ``points``, else ``points`` spread evenly with both ends."""
    if N <= points:
        return list(range(1, N + 1))
    return sorted({1 + round(i * (N - 1) / (points - 1)) for i in range(points)})


@torch.no_grad()
def region_confidence(model, batches) -> dict[str, float]:
    """Mean over (image, class) regions of the judge's mean probability of the true class inside the region, for
    every class region and for the swapped classes' regions."""
    per_region: list[tuple[int, float]] = []
    for x, y in batches:
        regions = class_regions(y)
        for start in range(0, len(regions), COPIES_PER_PASS):
            image_index = regions.image_index[start:start + COPIES_PER_PASS]
            class_id = regions.class_id[start:start + COPIES_PER_PASS]
            mask = y[image_index] == class_id.view(-1, 1, 1)  # (k, H, W) m_c
            probs = torch.softmax(model(x[image_index] * mask.unsqueeze(1)), dim=1)  # Eq. 6: x * m_c
            true = probs.gather(1, class_id.view(-1, 1, 1, 1).expand(-1, 1, *mask.shape[1:])).squeeze(1)
            mean_in_region = (true * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2))
            per_region += list(zip(class_id.tolist(), mean_in_region.tolist()))
    swapped = {TRAIN_ID_NAMES.index(name) for name in SWAPPED_CLASSES}
    every = [p for _, p in per_region]
    swapped_only = [p for c, p in per_region if c in swapped]
    return {"all": sum(every) / len(every), "swapped": sum(swapped_only) / max(1, len(swapped_only)),
            "regions": len(every)}


def drift(spec_path: Path, variants: list[str]) -> dict:
    spec = load_spec(spec_path)
    device = torch.device("cpu")
    store = target_val_store(seed_config(spec, spec.seeds[0]), spec.out / "shared")  # the same for every seed
    batches = list(store_batches(store, 32, device))
    rows: dict[str, dict[int, list[dict]]] = {}
    for variant in variants:
        row = next((v for v in spec.variants if v.name == variant), None)
        if row is None:
            raise SystemExit(f"{spec_path}: no variant {variant!r} (it has {', '.join(v.name for v in spec.variants)})")
        for seed in spec.seeds:
            run_dir = spec.out / f"seed-{seed}" / variant
            if not (run_dir / RESULT_FILE).is_file():
                raise SystemExit(f"{run_dir / RESULT_FILE}: no finished run (run `dasgen ablate --spec {spec_path}`)")
            config = variant_config(spec, row, seed)
            ws = Workspace(run_dir)
            curve = []
            for n in sampled_domains(config.ptl.N):
                judge = load_segmenter(ws.segmenter_path(n - 1, config.ptl.N), device=device,
                                       expect_arch=config.segmenter.arch, expect_classes=NUM_TRAIN_CLASSES)
                curve.append({"domain": n, "judge": f"g_{n - 1}", **region_confidence(judge.eval(), batches)})
            rows.setdefault(variant, {})[seed] = curve
            print(variant, seed, json.dumps(curve[-1]), flush=True)
    return {"spec": str(spec_path), "seeds": list(spec.seeds), "rows": rows}


def _cell(values: list[float]) -> str:
    mean, sd = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * (sd or 0.0):.1f}"


def render(result: dict) -> str:
    """One table per variant: the judge's confidence at each domain read."""
    seeds = result["seeds"]
    parts = [f"# Judge drift: g_(n-1)'s confidence in the true class on masked target val regions ({len(seeds)} "
             "seeds)", "",
             f"bench/experiments/judge_drift.py on `{result['spec']}`: for the judge of domain n (g_(n-1)), every "
             "(image, class) region of the target val split fed alone (image x mask, LCG's input, Eq. 6), the "
             "softmax probability of the true class averaged over the region, then over regions; in percent, mean "
             f"± sd over seeds. Swapped: the toy's colour-swapped classes ({', '.join(SWAPPED_CLASSES)}). At most {POINTS} "
             "domains per run, spread evenly from the first to the last.", ""]
    for variant, by_seed in result["rows"].items():
        curves = [by_seed[s] for s in seeds]
        N = curves[0][-1]["domain"]
        table = markdown_table(
            ["domain n (judge g_(n-1))", "all classes", "swapped classes"],
            [[f"{point['domain']} (g_{point['domain'] - 1})", _cell([c[i]["all"] for c in curves]),
              _cell([c[i]["swapped"] for c in curves])] for i, point in enumerate(curves[0])], "lrr")
        parts += [f"## {variant} (N = {N})", "", table, ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--out", default=None, help="report name under docs/results/experiments/")
    args = parser.parse_args()
    result = drift(args.spec, args.variants)
    name = args.out or f"judge-drift-{args.spec.stem}"
    (OUT_DIR / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    text = render(result)
    (OUT_DIR / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
