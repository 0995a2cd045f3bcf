"""Stage ``export``: the final domain X^N (or any domain) as a dataset any segmentation code can load."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dasgen.config import Config
from dasgen.datasets.pairs import resize_label
from dasgen.errors import DasgenError
from dasgen.pipeline.common import load_source_pairs, source_reader
from dasgen.pipeline.protected import protected_paths
from dasgen.pipeline.workspace import Workspace
from dasgen.export.run import export_domain


def source_label_loader(config: Config, ws: Workspace, size: str):
    """``row -> uint8 label ids`` for an index row: the source label, resized (nearest) to the exported size."""
    entries, _ = load_source_pairs(ws, config)
    by_id = {e.id: e for e in entries}
    reader = source_reader(config, ws.root)

    def load(row: dict) -> np.ndarray:
        entry = by_id.get(row["id"])
        if entry is None:
            raise DasgenError(f"{ws.source_pairs}: no source pair for id {row['id']!r}")
        label = reader.load(entry).label
        if size == "translation":
            label = resize_label(label, (row["height"], row["width"]))
        return label

    return load


def run_export(config: Config, ws: Workspace, *, fmt: str | None = None, out: Path | None = None,
               domain: int | None = None, size: str | None = None, min_consistency: float | None = None,
               force: bool = False, progress: bool = True, splits: str | None = None) -> dict:
    """Export domain ``domain`` (default: the last, N) in ``fmt`` to ``out`` (defaults from ``params.yaml: export``)."""
    e = config.export
    n = config.ptl.N if domain is None else domain
    if not 1 <= n <= config.ptl.N:
        raise DasgenError(f"--domain {n}: must be between 1 and ptl.N = {config.ptl.N} (domain 0 is the source "
                          "dataset itself, which has nothing translated to export)")
    domain_dir = ws.domain_dir(n, config.ptl.N)
    if not (domain_dir / "index.parquet").is_file():
        raise DasgenError(f"{domain_dir}: no finished domain artifact (run `dasgen translate --domain {n}` first)")
    size = size or e.size
    return export_domain(domain_dir, out or ws.root / e.out, fmt=fmt or e.format,
                         label_loader=source_label_loader(config, ws, size), size=size,
                         min_consistency=min_consistency if min_consistency is not None else e.min_consistency,
                         force=force, shard_size=e.shard_size, progress=progress, license=config.data.license,
                         license_note=config.data.license_note, protect=protected_paths(config, ws),
                         splits=splits or e.splits, workspace=ws.root, toy=source_is_toy(config, ws))


def source_is_toy(config: Config, ws: Workspace) -> bool:
    """Whether the source dataset is the toy generator's (``data.source.root`` inside ``toy.out``)."""
    source, toy = (ws.root / config.data.source.root).resolve(), (ws.root / config.toy.out).resolve()
    return source == toy or toy in source.parents

