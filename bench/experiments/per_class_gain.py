"""Experiment: where does an ablation's gain come from, class by class?

For every seed of a finished `dasgen ablate` run, the final segmenter of each named variant (g_N; g_0 for
``source-only``; the target-trained oracle for ``oracle``) is scored on the spec's target val split, and each class's
IoU is paired against source-only of the same seed. Reported: mean +- sd over seeds of the paired per-class IoU
difference. The question it answers: does the translation help on the classes where the toy's gap is (the two
colour-swapped classes, sidewalk and terrain; docs/toy.md), or elsewhere?

    python bench/experiments/per_class_gain.py experiments/ablation.yaml full wo-sgg x0-t200   # variants of the spec
    python bench/experiments/per_class_gain.py experiments/ablation.yaml full --out NAME      # docs/results/experiments/NAME.md
    python bench/experiments/per_class_gain.py experiments/ablation-leads-5.yaml fade-src --against full  # vs a variant

The runs are read from the spec's `out` work tree; the report says whether each is the run the spec's committed
report scored (same params sha256). Writes docs/results/experiments/<NAME>.md and .json (NAME defaults to
per-class-<spec stem>).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from dasgen.labels import NUM_TRAIN_CLASSES
from dasgen.pipeline.segmenters import score_on_target, target_val_store
from dasgen.pipeline.workspace import Workspace
from dasgen.research.ablate import RESULT_FILE, seed_config, variant_config
from dasgen.research.ablate_spec import load_spec
from dasgen.research.experiments import SWAPPED_CLASSES, mean_std
from dasgen.segment.checkpoint import load_segmenter

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "docs" / "results" / "experiments"


def final_segmenter(spec, run_dir: Path, variant: str, seed: int) -> Path:
    """The segmenter a row of the ablation is judged by: g_0, the oracle (as `dasgen ablate` writes them), or g_N."""
    if variant == "source-only":
        return Workspace(run_dir).segmenter_path(0)
    if variant == "oracle":
        return run_dir / "segmenter.safetensors"
    row = next(v for v in spec.variants if v.name == variant)
    return Workspace(run_dir).segmenter_path(variant_config(spec, row, seed).ptl.N)


def committed_runs(spec) -> dict[tuple[int, str], str]:
    """(seed, variant) -> params sha256 of the runs in the spec's committed report (``results/ablation.json``)."""
    path = spec.results / "ablation.json"
    if not path.is_file():
        return {}
    return {(r["seed"], r["variant"]): r["params_sha256"] for r in json.loads(path.read_text())["runs"]}


def per_class(spec_path: Path, variants: list[str]) -> dict:
    spec = load_spec(spec_path)
    device = torch.device("cpu")
    committed = committed_runs(spec)
    rows: dict[str, dict[int, dict[str, float]]] = {}
    not_in_report: list[str] = []
    store = target_val_store(seed_config(spec, spec.seeds[0]), spec.out / "shared")  # the same for every seed
    for seed in spec.seeds:
        config = seed_config(spec, seed)
        for variant in ["source-only", *variants]:
            run_dir = spec.out / f"seed-{seed}" / variant
            if not (run_dir / RESULT_FILE).is_file():
                raise SystemExit(f"{run_dir / RESULT_FILE}: no finished run (run `dasgen ablate --spec {spec_path}`)")
            recorded = json.loads((run_dir / RESULT_FILE).read_text())["params_sha256"]
            if committed.get((seed, variant)) != recorded:
                not_in_report.append(f"seed {seed} {variant}")
            model = load_segmenter(final_segmenter(spec, run_dir, variant, seed), device=device,
                                   expect_arch=config.segmenter.arch, expect_classes=NUM_TRAIN_CLASSES)
            scored = score_on_target(model, config, device, store)
            rows.setdefault(variant, {})[seed] = {"miou": scored["miou"], **scored["per_class"]}
    # Which runs are the ones the committed report scores (same params sha256): the rest were run locally since.
    return {"spec": str(spec_path), "seeds": list(spec.seeds), "rows": rows, "not_in_report": not_in_report}


def _mean_sd(values: list[float]) -> str:
    mean, sd = mean_std(values)
    return f"{100 * mean:+.1f} ± {100 * (sd or 0.0):.1f}"


def render(result: dict, against: str = "source-only") -> str:
    rows, seeds = result["rows"], result["seeds"]
    classes = [c for c in rows["source-only"][seeds[0]] if c != "miou"]
    head = "| variant | " + " | ".join(["mIoU", *classes]) + " |"
    about = (f"bench/experiments/per_class_gain.py on `{result['spec']}`: final segmenter of each row on the spec's "
             f"target val, IoU minus {against}'s of the same seed, mean ± sd over seeds (IoU points). The first row "
             f"is {against}'s own IoU. Colour-swapped classes of the default toy (toy.colour_swap): {', '.join(SWAPPED_CLASSES)}.")
    runs = ("Runs: every one is a run of the spec's committed report (same params sha256)." if not result["not_in_report"]
            else "Runs not in the spec's committed report (other params sha256): " + ", ".join(result["not_in_report"]))
    title = "source only" if against == "source-only" else against
    lines = [f"# Per-class IoU gain over {title} (paired, {len(seeds)} seeds)", "", about, "", runs, "",
             head, "|" + " --- |" + " ---: |" * (len(classes) + 1)]
    base = rows[against]
    means = [f"{100 * statistics.mean(base[s][c] for s in seeds):.1f}" for c in ["miou", *classes]]
    lines.append(f"| {title} (IoU) | " + " | ".join(means) + " |")
    for variant, by_seed in rows.items():
        if variant in ("source-only", against):
            continue
        cells = [_mean_sd([by_seed[s][c] - base[s][c] for s in seeds]) for c in ["miou", *classes]]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--out", default=None, help="report name under docs/results/experiments/")
    parser.add_argument("--against", default="source-only",
                        help="the row each variant is paired against: source-only (default) or a variant of the spec")
    args = parser.parse_args()
    variants = args.variants if args.against in ("source-only", *args.variants) else [args.against, *args.variants]
    result = per_class(args.spec, variants)
    name = args.out or f"per-class-{args.spec.stem}"
    (OUT_DIR / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    text = render(result, args.against)
    (OUT_DIR / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
