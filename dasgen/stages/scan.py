"""Stage ``scan``: decode every source pair once, keep the usable ones and record the skipped ones with reasons.

Real GTA5 copies hold broken pairs (size mismatches, blank frames, missing ids). Scanning once up front means no later
stage crashes on the 20,000th file after an hour, and the export's manifest can say what was left out and why. The
scan also hashes every usable pair: the digest goes into g_0's and each domain's fingerprint, so a changed source is
never paired with translations of the old one.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from rich.console import Console
from rich.markup import escape

from dasgen.config import Config
from dasgen.datasets.pairs import scan_pairs
from dasgen.errors import DatasetError
from dasgen.labels import IGNORE_INDEX, id_to_train_id
from dasgen.pipeline.common import canonical_root, source_reader, write_json
from dasgen.pipeline.source_content import content_record, pair_content
from dasgen.pipeline.workspace import Workspace


def run_scan(config: Config, ws: Workspace, *, console: Console | None = None) -> dict:
    reader = source_reader(config, ws.root)
    console = console or Console(stderr=True)

    def report(bad) -> None:
        where = f" ({bad.file})" if bad.file else ""
        console.print(f"[yellow]skipped[/] {escape(bad.id)}{escape(where)}: {escape(bad.reason)}", highlight=False,
                      soft_wrap=True)

    class_counts: list[int] = []
    hashes: dict[str, tuple[str, int]] = {}

    def count_classes(sample) -> None:
        ids = np.unique(id_to_train_id(sample.label))
        class_counts.append(int((ids != IGNORE_INDEX).sum()))
        hashes[sample.entry.id] = pair_content(reader.root, sample.entry)  # the files just decoded, from the cache

    entries, bad = scan_pairs(reader, policy=config.data.bad_pairs, on_bad=report, on_sample=count_classes)
    if not entries:  # every later stage would fail on an empty source; say so here, naming the first reason
        raise DatasetError(f"{reader.root}: no usable source pairs, all {len(bad)} skipped "
                           f"(first: {bad[0].id}: {bad[0].reason})" if bad else f"{reader.root}: no source pairs")
    record = {
        "kind": config.data.source.kind,
        "root": canonical_root(config.data.source.root, ws.root),
        "split": config.data.source.split,
        "entries": [asdict(e) for e in entries],
        "mean_classes_per_image": round(float(np.mean(class_counts)), 2) if class_counts else None,
        "skipped": [{"id": b.id, "reason": b.reason} for b in bad],
        **content_record(hashes),  # what g_0 and every domain were made from (pipeline/source_content.py)
    }
    write_json(ws.source_pairs, record)
    console.print(f"source: {len(entries)} usable pairs, {len(bad)} skipped")
    return {"pairs": len(entries), "skipped": len(bad)}
