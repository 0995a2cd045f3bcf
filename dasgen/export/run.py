"""The export entry point shared by every format: ``export_domain`` writes a finished domain X^n as a standalone
dataset (Cityscapes layout, Parquet or HDF5). The formats' shared building blocks are in :mod:`.parts`.

An export never reads source datasets itself: the caller passes ``label_loader(row) -> uint8 label ids`` (and
optionally ``source_size_loader``), so the exporters work with any dataset reader. Every export streams one image
at a time, applies the ``min_consistency`` quality gate, writes a dataset card and, last, ``manifest.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dasgen.errors import DasgenError
from dasgen.io.atomic import dumps_json, sha256_file
from dasgen.export.card import (
    CARD_FILE,
    ID2LABEL_FILE,
    MANIFEST_FILE,
    build_manifest,
    card_markdown,
    card_yaml,
    id2label,
)
from dasgen.artifact.reader import index_image_format, read_index, read_provenance
from dasgen.export.cityscapes import CityscapesExporter, city_name
from dasgen.export.parts import (
    SIZES,
    FileRecord,
    LabelLoader,
    SizeLoader,
    drop_marker_if_alone,
    finish_out_dir,
    iter_items,
    locked_out_dir,
    make_plan,
    prepare_out_dir,
    progress_bar,
)
from dasgen.export.hdf5 import Hdf5Exporter
from dasgen.export.redact import redact_paths
from dasgen.export.parquet import ParquetExporter
from dasgen.artifact.schema import CHECKSUMS_FILE, INDEX_FILE, PROVENANCE_FILE

EXPORTERS = {"cityscapes": CityscapesExporter, "parquet": ParquetExporter, "hdf5": Hdf5Exporter}
FORMATS = tuple(EXPORTERS)


def check_finished(domain_dir: Path) -> None:
    """Refuse a domain whose finalize did not run to its end (no ``checksums.json``, which it writes last: a domain
    killed between ``index.parquet`` and ``provenance.json`` has an index but no provenance), or whose index or
    provenance differ from what finalize recorded."""
    record_path = domain_dir / CHECKSUMS_FILE
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DasgenError(f"{domain_dir} is not finished (no {CHECKSUMS_FILE}, which translate writes last); rerun "
                          "`dasgen translate` for this domain, then export") from None
    except (OSError, ValueError) as error:
        raise DasgenError(f"{record_path}: unreadable ({error}); run `dasgen verify {domain_dir}`") from None
    recorded = record.get("files") if isinstance(record, dict) else None
    if not isinstance(recorded, dict):
        raise DasgenError(f"{record_path}: not a dasgen checksum record; run `dasgen verify {domain_dir}`")
    for name in (INDEX_FILE, PROVENANCE_FILE):
        path = domain_dir / name
        if name not in recorded or not path.is_file():
            raise DasgenError(f"{domain_dir} is not finished ({name} missing or not recorded); rerun "
                              "`dasgen translate` for this domain, then export")
        if sha256_file(path) != recorded[name]:
            raise DasgenError(f"{domain_dir}: {name} was altered after it was finished; run `dasgen verify "
                              f"{domain_dir}`")


def export_domain(
    domain_dir: str | Path,
    out_dir: str | Path,
    *,
    fmt: str,
    label_loader: LabelLoader,
    size: str = "translation",
    min_consistency: float | None = None,
    force: bool = False,
    shard_size: int = 500,
    progress: bool = True,
    source_size_loader: SizeLoader | None = None,
    license: str = "other",
    license_note: str | None = None,
    city: str | None = None,
    protect: Mapping[Path, str] | None = None,
    splits: str = "all-train",
    workspace: Path | None = None,
    toy: bool = False,
) -> dict[str, Any]:
    """Export the domain at ``domain_dir`` into ``out_dir`` as ``fmt``; returns a summary dict.

    ``size``: ``"translation"`` (the domain's resolution) or ``"source"`` (each source image's resolution, from
    ``source_size_loader`` or else the label's shape). ``min_consistency`` leaves out rows scoring below it (NaN
    fails). ``force`` replaces an earlier dasgen export in ``out_dir`` (anything else there is refused, and an
    unfinished export of this tool is redone without it: see ``prepare_out_dir``). ``protect``: ``{path: what it
    is}`` that ``out_dir`` may not be, lie inside or contain (the domain itself always is). The export holds an OS
    lock on ``out_dir`` throughout (``locked_out_dir``). ``shard_size``: rows per Parquet shard.
    ``license``/``license_note``: the source dataset's terms for the card. ``city``: Cityscapes city name
    (default: the source kind from the provenance). ``splits``: ``"all-train"`` puts every image in ``train``, where
    downstream training reads; ``"source"`` keeps the source dataset's splits (see ``make_plan``). The provenance
    goes into card and manifest with local paths redacted (relative to ``workspace`` inside it, else
    ``<local>/<name>``). ``toy``: the source is dasgen's toy domain (the card then cites no third-party dataset).
    """
    if fmt not in EXPORTERS:
        raise DasgenError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if size not in SIZES:
        raise DasgenError(f"size must be one of {SIZES}, got {size!r}")
    if shard_size < 1:
        raise DasgenError(f"shard_size must be >= 1, got {shard_size}")
    domain_dir, out_dir = Path(domain_dir), Path(out_dir)
    guarded = {domain_dir: "the domain being exported", **(protect or {})}
    started = time.perf_counter()
    check_finished(domain_dir)
    table = read_index(domain_dir)
    provenance = redact_paths(read_provenance(domain_dir), workspace)
    plan = make_plan(table.to_pylist(), min_consistency, splits)
    source = provenance.get("source") if isinstance(provenance.get("source"), dict) else {}
    kind = str(source.get("kind", ""))
    with locked_out_dir(out_dir, guarded):
        prepare_out_dir(out_dir, force=force, protect=guarded)

        files = FileRecord(out_dir)
        exporter = None
        sizes: set[tuple[int, int]] = set()
        try:
            exporter = EXPORTERS[fmt](
                files, plan, shard_size=shard_size, size=size, city=city_name(city if city is not None else kind)
            )
            items = iter_items(domain_dir, plan, label_loader=label_loader, size=size,
                               source_size_loader=source_size_loader)
            with progress_bar(len(plan.kept), f"export {fmt}", enabled=progress) as advance:
                for item in items:
                    exporter.add(item)
                    sizes.add(item.size)
                    advance()
            extra = exporter.close()
        except BaseException:
            if exporter is not None:
                exporter.abort()  # no half-written shard or HDF5 file is left under a temp name; no manifest
            files.close()
            drop_marker_if_alone(out_dir)  # else the journal stays: rerunning the command redoes the export
            raise

        first = plan.kept[0]
        domain = {
            "name": domain_dir.name,
            "n": first["domain"],
            "t": first["t"],
            "image_format": index_image_format(table),
            "index_sha256": sha256_file(domain_dir / INDEX_FILE),
        }
        image_sizes = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:3]) + (" ..." if len(sizes) > 3 else "")
        split_names = list(plan.per_split)
        layout, how_to_load = exporter.card(split_names)
        configs = exporter.yaml_configs() if hasattr(exporter, "yaml_configs") else None
        card = card_yaml(plan=plan, license=license, source_kind=kind, configs=configs)
        card += card_markdown(
            fmt=fmt,
            plan=plan,
            domain=domain,
            provenance=provenance,
            size=size,
            image_sizes=image_sizes,
            license=license,
            license_note=license_note,
            layout=layout,
            how_to_load=how_to_load,
            toy=toy,
        )
        files.write_text(ID2LABEL_FILE, json.dumps(id2label(), indent=2) + "\n")
        files.write_text(CARD_FILE, card)
        options = {"size": size, "min_consistency": min_consistency, "shard_size": shard_size, "license": license,
                   "splits": splits}
        manifest = build_manifest(
            fmt=fmt, plan=plan, domain=domain, provenance=provenance, options=options, files=files.files
        )
        files.close()
        finish_out_dir(out_dir, MANIFEST_FILE, dumps_json(manifest))  # last, fsync, replaces the in-progress marker
    seconds = time.perf_counter() - started
    return {
        "format": fmt,
        "out_dir": str(out_dir),
        **plan.counts(),
        "files": len(files.files) + 1,
        "seconds": round(seconds, 3),
        "images_per_s": round(len(plan.kept) / seconds, 2) if seconds > 0 else None,
        **extra,
    }
