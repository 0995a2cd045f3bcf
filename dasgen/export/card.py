"""The dataset card (``README.md`` with a Hugging Face YAML header) and ``manifest.json`` of an export.

The manifest is written last, with fsync: its presence marks a complete export. It holds no timestamps, so the same
domain exported twice with the same options gives the same bytes (DVC then stores it once). Schema
(``manifest_version`` 1)::

    manifest_version   1
    format             "cityscapes" | "parquet" | "hdf5"
    dasgen_version     version of the exporting dasgen
    domain             {"name", "n", "t", "image_format", "index_sha256"} of the exported domain
    provenance         the domain's provenance.json (dasgen version, params and params hash, diffusion model and
                       g_N checksums, source dataset kind/root, pairs used/skipped and why), local absolute paths
                       redacted (:mod:`dasgen.export.redact`: relative to the workspace, else ``<local>/<name>``)
    export             the export options (size, min_consistency, shard_size, license)
    counts             {"total", "exported", "dropped_low_consistency", "min_consistency", "per_split"}
    files              {relative POSIX path: sha256} of every file of the export except manifest.json
"""

from __future__ import annotations

import json
from typing import Any

import yaml

import dasgen
from dasgen.export.citations import PAPER, dataset_reference
from dasgen.labels import CITYSCAPES_LABELS, IGNORE_INDEX, TRAIN_ID_NAMES
from dasgen.export.parts import CARD_FILE, MANIFEST_FILE, ExportPlan  # noqa: F401 (CARD_FILE, MANIFEST_FILE: API)
MANIFEST_VERSION = 1
ID2LABEL_FILE = "id2label.json"  # trainId -> class name, the file Hugging Face's segmentation datasets ship


def id2label() -> dict[str, str]:
    """``{"0": "road", ..., "18": "bicycle"}``: the 19 Cityscapes trainIds (JSON keys are strings, as on the Hub)."""
    return {str(train_id): name for train_id, name in enumerate(TRAIN_ID_NAMES)}


def size_category(count: int) -> str:
    """The Hugging Face ``size_categories`` bucket of a dataset of ``count`` rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < limit:
            return name
    return "1M<n<10M"


def card_yaml(*, plan: ExportPlan, license: str, source_kind: str, configs: list | None) -> str:
    """The YAML front matter the Hugging Face Hub reads (license, task, size, and data_files for Parquet)."""
    header: dict[str, Any] = {"license": license}
    if license == "other":
        header["license_name"] = f"{source_kind}-derived" if source_kind else "source-dataset-terms"
    header.update(
        {
            "pretty_name": f"dasgen translation of {source_kind or 'a synthetic dataset'}",
            "task_categories": ["image-segmentation"],
            "task_ids": ["semantic-segmentation"],
            "tags": ["dasgen", "synthetic", "domain-adaptation", "semantic-segmentation", "cityscapes-labels"],
            "size_categories": [size_category(len(plan.kept))],
        }
    )
    if configs:
        header["configs"] = configs
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n"


def _label_table() -> str:
    lines = ["| trainId | id | name | colour |", "| --- | --- | --- | --- |"]
    for label in CITYSCAPES_LABELS:
        if label.train_id != IGNORE_INDEX:
            lines.append(f"| {label.train_id} | {label.id} | {label.name} | {label.color} |")
    return "\n".join(lines)


def card_markdown(
    *,
    fmt: str,
    plan: ExportPlan,
    domain: dict[str, Any],
    provenance: dict[str, Any],
    size: str,
    image_sizes: str,
    license: str,
    license_note: str | None,
    layout: str,
    how_to_load: str,
    toy: bool = False,
) -> str:
    """The human part of the card: what it is, how it was made, counts, labels, resolution, loading, citation and
    license. ``provenance`` must already be redacted (:func:`dasgen.export.redact.redact_paths`); ``toy``: the source
    and target are dasgen's procedural toy domains (nothing third-party to cite or license)."""
    source = provenance.get("source", {}) if isinstance(provenance.get("source"), dict) else {}
    kind = source.get("kind", "the source dataset")
    params = provenance.get("params") if isinstance(provenance.get("params"), dict) else {}
    data = params.get("data") if isinstance(params.get("data"), dict) else {}
    target = data.get("target") if isinstance(data.get("target"), dict) else {}
    references = [] if toy else [r for r in (dataset_reference(kind), dataset_reference(target.get("kind"))) if r]
    translation = sorted({(row["height"], row["width"]) for row in plan.kept})
    translated_at = ", ".join(f"{w}x{h}" for h, w in translation)
    counts = plan.counts()
    split_rows = "\n".join(f"| {split} | {n} |" for split, n in counts["per_split"].items())
    source_splits: dict[str, int] = {}
    for row in plan.kept:
        source_splits[row["source_split"]] = source_splits.get(row["source_split"], 0) + 1
    shown = ", ".join(f"{split} {n}" for split, n in sorted(source_splits.items()))
    split_policy = (
        f"Every image is in `train` (`--splits all-train`), the folder downstream training reads; the source "
        f"dataset's own splits ({shown}) are not used. `--splits source` keeps them."
        if plan.splits == "all-train"
        else f"The source dataset's own splits are kept (`--splits source`: {shown}); `--splits all-train` puts "
        "every image in `train`."
    )
    gate = (
        f"Quality gate: images whose label-consistency score is below {plan.min_consistency} were left out "
        f"({plan.dropped} of {len(plan.rows)})."
        if plan.min_consistency is not None
        else "No quality gate: every translated image is included."
    )
    made = [
        f"- source dataset: {kind}" + (f" (root `{source['root']}`)" if "root" in source else "")
        + (" -- dasgen's procedural toy source domain" if toy else ""),
        f"- translated at {translated_at} (width x height, `data.resolution`)"
        + (f" by dasgen {provenance['dasgen_version']}" if "dasgen_version" in provenance else "")
        + (f" with params sha256 `{provenance['params_sha256']}`" if "params_sha256" in provenance else "")
        + f"; exported by dasgen {dasgen.__version__}",
        f"- intermediate domain X^{domain.get('n')} of Progressive Translation Learning, noise level "
        f"t = {domain.get('t')} (of T = 1000)",
    ]
    for key, value in sorted(source.items()):  # pairs used / skipped and why, split, ...
        if key not in ("kind", "root"):
            made.append(f"- source {key.replace('_', ' ')}: {json.dumps(value, sort_keys=True)}")
    for key, value in sorted(provenance.items()):  # model checksums, ...
        if isinstance(value, (str, int, float, bool)) and key not in ("dasgen_version", "params_sha256"):
            made.append(f"- {key.replace('_', ' ')}: `{value}`")
    made.append(f"- domain index sha256: `{domain.get('index_sha256')}`")
    made.append("- full provenance (params, model checksums): `manifest.json` -> `provenance`")
    note = license_note or f"Inherits the terms of {kind}; check them before redistributing."
    terms = "".join(
        f"\n- {ref.name}: {ref.terms_url}" for ref in references if ref.terms_url
    )
    if terms:
        terms = ("\n\nThe images derive from the source dataset and from a model trained on the target dataset, so "
                 "their authors' terms apply; they are stated at:" + terms)
    if toy:
        terms = "\n\nSource and target are procedural toy domains that dasgen generates: no third-party data."
    citation = "\n\n".join(ref.bibtex for ref in (PAPER, *references))
    if size == "source":
        resolution = (
            f"Translated at {translated_at}; exported at the source resolution ({image_sizes}): images resized from "
            f"the translation resolution with Lanczos (they hold no more detail than {translated_at}), labels are "
            "the source labels at their own resolution, never resized."
        )
    else:
        resolution = (
            f"Translated and exported at {translated_at} (the translation resolution): images as translated; "
            "labels resized from the source resolution with nearest neighbour only (never interpolated). "
            "`--size source` exports at the source resolution instead."
        )
    return f"""
# {kind} translated to the target domain by dasgen ({fmt})

## What it is

A semantic-segmentation dataset whose images are {kind} images translated towards the target domain (Cityscapes
style) by diffusion-based image translation with label guidance (Peng et al., ICCV 2023), made with dasgen
{dasgen.__version__}. The labels are the source labels, unchanged: the translation is guided to keep every pixel's
class true.

## How it was made

{chr(10).join(made)}

{gate}

## Contents

| split | images |
| --- | --- |
{split_rows}

Total: {counts['exported']} images. {split_policy}

## Label convention

Labels are Cityscapes label ids (0-33); trainIds are the usual 19 training classes with 255 = ignore
(`dasgen.labels.id_to_train_id`). Pixels whose source class has no Cityscapes counterpart are 0 (unlabeled).
`{ID2LABEL_FILE}` maps each trainId to its class name (`{{"0": "road", ...}}`), as Hugging Face's
semantic-segmentation datasets do.

{_label_table()}

## Resolution

{resolution}

## Layout

{layout}

## How to load

{how_to_load}

## Citation

If you use this dataset, cite the method and the datasets it derives from:

```bibtex
{citation}
```

## License

{note} (`license: {license}`){terms}

## Integrity

`manifest.json` lists the sha256 of every file; `dasgen verify <this dir>` checks them (missing, extra, altered).
"""


def build_manifest(
    *,
    fmt: str,
    plan: ExportPlan,
    domain: dict[str, Any],
    provenance: dict[str, Any],
    options: dict[str, Any],
    files: dict[str, str],
) -> dict[str, Any]:
    """The manifest dict (schema in the module docstring)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "format": fmt,
        "dasgen_version": dasgen.__version__,
        "domain": domain,
        "provenance": provenance,
        "export": options,
        "counts": plan.counts(),
        "files": dict(sorted(files.items())),
    }
