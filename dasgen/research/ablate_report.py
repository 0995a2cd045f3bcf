"""Reports of an ablation: ``ablation.csv`` (one row per seed x row), ``ablation.json`` and ``ablation.md``.

Rows: g_0 alone (source only), every variant, the target-trained oracle. Per row: mean and sample std over seeds of
the final segmenter's target mIoU and of the oracle-judged label consistency of the final images, and the paired
difference to the first variant (``full``) over the seeds both have -- paired seeds make that difference far less
noisy than the difference of the means.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from pathlib import Path

from dasgen.errors import DasgenError
from dasgen.research.ablate_spec import (AblationSpec, Variant, params, reference_fingerprint, seed_config,
                                         variant_config)
from dasgen.pipeline.common import write_json
from dasgen.pipeline.workspace import Workspace
from dasgen.io.atomic import atomic_write_text, sha256_file
from dasgen.diffusion.unet import WEIGHTS_NAME

RESULT_FILE = "result.json"
CSV_COLUMNS = ("seed", "variant", "label", "table", "paper_miou", "target_miou", "consistency",
               "pipeline_consistency", "blown_up", "roughness", "domains", "finetune_iters", "wall_s",
               "params_sha256")


def roundtrip_path(shared: Workspace, seed: int) -> Path:
    """Where the DDPM round trip judged by seed ``seed``'s oracle is cached. One file per judging seed: calls on
    different ``--seeds`` run side by side, and a single shared file would be rewritten by each with its own oracle."""
    return shared.root / f"ddpm-roundtrip-seed-{seed}.json"


def load_roundtrip(spec: AblationSpec, shared: Workspace) -> dict | None:
    """The DDPM round trip judged by the first of the spec's seeds that has one (without its cache fingerprint), so
    a report does not depend on which ``--seeds`` call computed a round trip last; None when no call has."""
    first = next((path for path in (roundtrip_path(shared, s) for s in spec.seeds) if path.is_file()), None)
    if first is None:
        return None
    roundtrip = json.loads(first.read_text())
    roundtrip.pop("fingerprint", None)
    return roundtrip


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}"


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) of the values that are not None or NaN; None where undefined."""
    values = [v for v in values if v is not None and v == v]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _rows(spec: AblationSpec) -> list[Variant]:
    return [spec.reference["source-only"], *spec.variants, spec.reference["oracle"]]


def _paired_difference(mine: list[dict], by: dict, against: str) -> tuple[float | None, float | None]:
    """Mean and std over seeds of (this row's target mIoU - row ``against``'s, same seed); None for ``against``."""
    return mean_std([r["target_miou"] - by[(against, r["seed"])]["target_miou"] for r in mine
                      if r["variant"] != against and (against, r["seed"]) in by])


def build_report(spec: AblationSpec, *, command: str, wall_s: float) -> dict:
    """Every finished run's row, and per row: mean and sample std over seeds, and the paired difference to ``full``
    (the first variant) over the seeds both have."""
    runs, stale = [], []
    for row in _rows(spec):
        for seed in spec.seeds:
            path = spec.out / f"seed-{seed}" / row.name / RESULT_FILE
            if path.is_file():
                result = json.loads(path.read_text())
                if row.name in spec.reference:  # the rule prepare_seed reuses g_0 and the oracle by
                    current = result.get("fingerprint") == reference_fingerprint(spec, seed_config(spec, seed))
                else:
                    current = result.get("result_sha256") == variant_config(spec, row, seed).result_sha256()
                if not current:  # written under other params: not this spec's result
                    stale.append(f"seed-{seed}/{row.name}")
                    continue
                runs.append({k: result.get(k) for k in CSV_COLUMNS} | {"label": row.label, "table": row.table,
                                                                          "paper_miou": row.paper,
                                                                          "curve": result.get("curve")})
    reference_name = spec.variants[0].name
    by = {(r["variant"], r["seed"]): r for r in runs}
    summary = []
    for row in _rows(spec):
        mine = [r for r in runs if r["variant"] == row.name]
        miou, miou_sd = mean_std([r["target_miou"] for r in mine])
        cons, cons_sd = mean_std([r["consistency"] for r in mine])
        delta, delta_sd = _paired_difference(mine, by, reference_name)
        gain, gain_sd = _paired_difference(mine, by, "source-only")
        blown, blown_sd = mean_std([r["blown_up"] for r in mine])
        summary.append({"variant": row.name, "label": row.label, "table": row.table, "paper_miou": row.paper,
                        "seeds": sorted(r["seed"] for r in mine), "target_miou": miou, "target_miou_std": miou_sd,
                        "delta_vs_full": delta, "delta_vs_full_std": delta_sd, "delta_vs_g0": gain,
                        "delta_vs_g0_std": gain_sd, "consistency": cons,
                        "consistency_std": cons_sd, "blown_up": blown, "blown_up_std": blown_sd,
                        "wall_s": round(sum(r["wall_s"] or 0 for r in mine), 1)})
    shared = Workspace(spec.out / "shared")
    model = shared.diffusion_model / WEIGHTS_NAME
    base = params(spec, spec.common)
    roundtrip = load_roundtrip(spec, shared)
    return {"spec": os.path.relpath(spec.path), "spec_sha256": spec.sha256, "base_params": os.path.relpath(spec.base),
            "base_params_sha256": base.sha256(), "command": command, "seeds": spec.seeds, "ddpm_roundtrip": roundtrip,
            "diffusion_sha256": sha256_file(model) if model.is_file() else None, "reference_variant": reference_name,
            "this_call_wall_s": round(wall_s, 1), "runs_wall_s": round(sum(r["wall_s"] or 0 for r in runs), 1),
            "summary": summary, "runs": runs, "stale_runs": stale}


def _cell(mean: float | None, std: float | None, *, signed: bool = False) -> str:
    if mean is None:
        return "--"
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return text + (f" ± {100 * std:.1f}" if std is not None else "")


def render_markdown(report: dict) -> str:
    """The ablation table (percent, mean ± sample std over seeds) beside the paper's GTA5 -> Cityscapes numbers."""
    ref = report["reference_variant"]
    lines = [
        "| row | paper | paper mIoU (G→C) | toy target mIoU | Δ vs full (paired) | Δ vs g_0 (paired) "
        "| consistency (oracle) | X^N blown up | seeds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in report["summary"]:
        paper = "--" if s["paper_miou"] is None else f"{s['paper_miou']:.1f}"
        delta = "--" if s["variant"] == ref else _cell(s["delta_vs_full"], s["delta_vs_full_std"], signed=True)
        gain = "--" if s["variant"] == "source-only" else _cell(s["delta_vs_g0"], s["delta_vs_g0_std"], signed=True)
        lines.append(f"| {s['label']} | {s['table'] or '--'} | {paper} "
                     f"| {_cell(s['target_miou'], s['target_miou_std'])} | {delta} | {gain} "
                     f"| {_cell(s['consistency'], s['consistency_std'])} "
                     f"| {_cell(s['blown_up'], s['blown_up_std'])} | {len(s['seeds'])} |")
    minutes = report["runs_wall_s"] / 60
    roundtrip = report.get("ddpm_roundtrip")
    if roundtrip:
        lines += ["", f"DDPM round trip (what any translation can keep at best): seed {roundtrip['judge_seed']}'s "
                  f"oracle's mIoU on "
                  f"{roundtrip['images']} real target val images is {_pct(roundtrip['clean'])} clean, "
                  + ", ".join(f"{_pct(r['oracle_miou'])} after phi^{r['t']}" for r in roundtrip["levels"])
                  + " (noised to t and denoised unguided on that domain's chain)."]
    if report.get("stale_runs"):
        lines += ["", f"Left out: {len(report['stale_runs'])} finished runs whose params no longer match the spec "
                  f"({', '.join(report['stale_runs'][:4])}{', ...' if len(report['stale_runs']) > 4 else ''}); "
                  "`dasgen ablate` reruns them."]
    lines += [
        "",
        f"mIoU and consistency in percent, mean ± sample std over seeds {report['seeds']} (paired: every variant of "
        "a seed shares g_0, per-image noise and domain samples). Δ vs full, Δ vs g_0: mean of the per-seed "
        f"differences to `{ref}` and to the seed's own g_0 (source only). Consistency: the target-trained oracle's "
        "mIoU on the final translated images X^N against the source labels (source only: on the untranslated "
        "source images). X^N blown up: share of final images rougher than 2.5x the real target photos (mean |horizontal pixel difference|): adversarial noise that fools "
        "g_{N-1}, not a picture.",
        "",
        f"Produced by `{report['command']}` (spec `{report['spec']}` sha256 `{report['spec_sha256'][:12]}`, base "
        f"params `{report['base_params']}` with the spec's overrides sha256 `{report['base_params_sha256'][:12]}`, "
        f"shared DDPM sha256 `{(report['diffusion_sha256'] or 'n/a')[:12]}`); runs took {minutes:.0f} min of "
        "wall time in all.",
    ]
    return "\n".join(lines) + "\n"


def _runs_reported(path: Path) -> int:
    """How many runs the report at ``path`` (``ablation.json``) holds; 0 when there is none or it is unreadable."""
    try:
        runs = json.loads(path.read_text(encoding="utf-8")).get("runs")
    except (OSError, ValueError, AttributeError):
        return 0
    return len(runs) if isinstance(runs, list) else 0


def write_reports(spec: AblationSpec, report: dict) -> dict[str, Path]:
    """``ablation.csv`` (one row per seed x row), ``ablation.json`` (everything) and ``ablation.md`` in results.

    A report of no finished run never replaces one with rows (a fresh clone holds the committed reports but not the
    work tree they were made from): DasgenError, nothing written.
    """
    earlier = _runs_reported(spec.results / "ablation.json")
    if not report["runs"] and earlier:
        stale = f" ({len(report['stale_runs'])} made with other params)" if report.get("stale_runs") else ""
        raise DasgenError(f"{spec.results / 'ablation.json'}: holds {earlier} finished run{'s' * (earlier != 1)}; "
                          f"refusing to replace it by a report of no finished run ({spec.out} holds none of this "
                          f"spec's{stale}); run `dasgen ablate --spec {spec.path}` to make them")
    spec.results.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for run in report["runs"]:
        writer.writerow({k: ("" if run.get(k) is None else (round(run[k], 4) if isinstance(run[k], float) else run[k]))
                         for k in CSV_COLUMNS})
    paths = {"csv": spec.results / "ablation.csv", "json": spec.results / "ablation.json",
             "md": spec.results / "ablation.md"}
    atomic_write_text(paths["csv"], buffer.getvalue())
    write_json(paths["json"], report)
    atomic_write_text(paths["md"], render_markdown(report))
    return paths
