"""Cityscapes-layout export: loads unmodified in ``torchvision.datasets.Cityscapes`` and mmsegmentation.

Layout (``<base> = <city>_<seq:06d>_<frame:06d>``)::

    leftImg8bit/<split>/<city>/<base>_leftImg8bit.png          RGB image
    gtFine/<split>/<city>/<base>_gtFine_labelIds.png           mode L, Cityscapes label ids 0-33
    gtFine/<split>/<city>/<base>_gtFine_labelTrainIds.png      mode L, trainIds 0-18, 255 = ignore (mmseg)
    gtFine/<split>/<city>/<base>_gtFine_color.png              RGB, the Cityscapes colour of each label id
    id_map.csv                  id, split, city, seq, frame, consistency, source paths, image, source_split
    sample_class_stats.json, sample_class_stats_dict.json, samples_with_class.json
                                DAFormer's rare-class-sampling statistics of the train split (its format)

Id mapping (stable, documented in the card): ``city`` is the source dataset kind, lower-cased with everything but
letters and digits removed (``gta5``, ``synthia``; Cityscapes city names contain no ``_``). ``seq`` is the numeric
id itself when every id of the domain is a decimal number below 10^6 with no two equal values (GTA5 ``00001`` ->
1), else the id's rank in the sorted ids of the whole domain (computed before the quality gate, so a threshold never
renames files). ``frame`` is 19, the annotated frame of every Cityscapes snippet.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

import numpy as np

from dasgen.labels import NUM_TRAIN_CLASSES, id_to_color, id_to_train_id
from dasgen.export.parts import ExportItem, ExportPlan, FileRecord
from dasgen.io.png import encode_png

FRAME = 19  # Cityscapes annotates frame 19 of each 30-frame snippet
_MAX_SEQ = 1_000_000


def city_name(kind: str | None) -> str:
    """A Cityscapes-style city name from a source kind: lower case, letters and digits only (``gta_5`` -> ``gta5``)."""
    name = re.sub(r"[^a-z0-9]", "", (kind or "").lower())
    return name or "dasgen"


def sequence_numbers(ids: list[str]) -> dict[str, int]:
    """id -> seq: the numeric id when all ids are distinct decimal numbers < 10^6, else the rank in sorted ids."""
    if all(i.isdecimal() and i.isascii() for i in ids):
        numbers = {i: int(i) for i in ids}
        if len(set(numbers.values())) == len(ids) and all(n < _MAX_SEQ for n in numbers.values()):
            return numbers
    return {image_id: rank for rank, image_id in enumerate(sorted(ids))}


def class_stats(train_ids: np.ndarray, label_file: str) -> dict[Any, Any]:
    """One entry of DAFormer's ``sample_class_stats.json``: ``{trainId: pixels, ..., "file": label_file}`` for the
    trainIds present, in trainId order, ``file`` last -- as ``convert_json_to_label`` in DAFormer's
    ``tools/convert_datasets/cityscapes.py`` builds it (its GTA converter builds the same)."""
    counts = np.bincount(train_ids.ravel(), minlength=256)
    stats: dict[Any, Any] = {c: int(counts[c]) for c in range(NUM_TRAIN_CLASSES) if counts[c] > 0}
    stats["file"] = label_file
    return stats


def rare_class_sampling_files(entries: list[dict[Any, Any]]) -> dict[str, str]:
    """DAFormer's rare-class-sampling files from :func:`class_stats` entries, byte for byte as its converters'
    ``save_class_stats`` writes them (``json.dump(..., indent=2)``; int keys become strings): the list
    ``sample_class_stats.json``, the same keyed by file ``sample_class_stats_dict.json``, and
    ``samples_with_class.json`` = ``{trainId: [[file, pixels], ...]}`` (classes in order of first appearance).
    ``mmseg/datasets/uda_dataset.py`` reads the first and the last from the source dataset's ``data_root`` and matches
    each file by its base name."""
    ordered = sorted(entries, key=lambda stats: stats["file"])
    by_file = {stats["file"]: {k: v for k, v in stats.items() if k != "file"} for stats in ordered}
    with_class: dict[int, list[tuple[str, int]]] = {}
    for file, stats in by_file.items():
        for c, n in stats.items():
            with_class.setdefault(c, []).append((file, n))
    return {
        "sample_class_stats.json": json.dumps(ordered, indent=2),
        "sample_class_stats_dict.json": json.dumps(by_file, indent=2),
        "samples_with_class.json": json.dumps(with_class, indent=2),
    }


def base_name(city: str, seq: int) -> str:
    """``<city>_<seq:06d>_000019``: the Cityscapes file stem shared by an image and its labels."""
    return f"{city}_{seq:06d}_{FRAME:06d}"


class CityscapesExporter:
    """Writes one item at a time into the Cityscapes layout; :meth:`close` writes ``id_map.csv``."""

    name = "cityscapes"

    def __init__(self, files: FileRecord, plan: ExportPlan, *, city: str, **_: Any) -> None:
        self.files = files
        self.city = city
        self.seq = sequence_numbers([row["id"] for row in plan.rows])
        self._map_rows: list[list[Any]] = []
        self._class_stats: list[dict[Any, Any]] = []

    def add(self, item: ExportItem) -> None:
        """Write the image and its three label files."""
        row = item.row
        base = base_name(self.city, self.seq[row["id"]])
        image_dir = f"leftImg8bit/{row['split']}/{self.city}"
        label_dir = f"gtFine/{row['split']}/{self.city}"
        self.files.write_bytes(f"{image_dir}/{base}_leftImg8bit.png", item.image_png)
        self.files.write_bytes(f"{label_dir}/{base}_gtFine_labelIds.png", encode_png(item.label_ids))
        train_ids = id_to_train_id(item.label_ids)
        train_ids_path = f"{label_dir}/{base}_gtFine_labelTrainIds.png"
        self.files.write_bytes(train_ids_path, encode_png(train_ids))
        if row["split"] == "train":  # DAFormer's converter counts the train split only: the one a UDA source reads
            self._class_stats.append(class_stats(train_ids, train_ids_path))
        self.files.write_bytes(f"{label_dir}/{base}_gtFine_color.png", encode_png(id_to_color(item.label_ids)))
        self._map_rows.append(
            [
                row["id"],
                row["split"],
                self.city,
                self.seq[row["id"]],
                FRAME,
                f"{row['consistency']:.6g}",
                row["source_image"],
                row["source_label"],
                f"{image_dir}/{base}_leftImg8bit.png",
                row["source_split"],
            ]
        )

    def abort(self) -> None:
        """Nothing to clean: every file was written atomically (the missing manifest marks the export unfinished)."""

    def close(self) -> dict[str, Any]:
        """Write ``id_map.csv`` (rows in id order)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            ["id", "split", "city", "seq", "frame", "consistency", "source_image", "source_label", "image",
             "source_split"]
        )
        writer.writerows(sorted(self._map_rows, key=lambda r: r[0]))
        self.files.write_text("id_map.csv", buffer.getvalue())
        for name, text in rare_class_sampling_files(self._class_stats).items():
            self.files.write_text(name, text)
        return {"city": self.city}

    def card(self, splits: list[str]) -> tuple[str, str]:
        """(layout, how to load) sections of the dataset card."""
        layout = (
            "```\n"
            f"leftImg8bit/<split>/{self.city}/{self.city}_<seq:06d>_000019_leftImg8bit.png      RGB image\n"
            f"gtFine/<split>/{self.city}/..._gtFine_labelIds.png       label ids 0-33 (mode L)\n"
            f"gtFine/<split>/{self.city}/..._gtFine_labelTrainIds.png  trainIds 0-18, 255 = ignore (mode L)\n"
            f"gtFine/<split>/{self.city}/..._gtFine_color.png          Cityscapes colours (RGB)\n"
            "id_map.csv       source id -> (split, city, seq, frame), consistency, source paths\n"
            "sample_class_stats.json, samples_with_class.json   DAFormer's rare-class sampling (train split)\n"
            "```\n\n"
            f"`seq` is the source id when all ids are numbers below 10^6, else the id's rank in sorted ids; "
            f"`frame` is always 19. The city `{self.city}` is the source dataset kind."
        )
        split = splits[0]
        load = (
            "torchvision (reads `_gtFine_labelIds.png`; splits must be train/val/test):\n\n"
            "```python\n"
            "from torchvision.datasets import Cityscapes\n"
            f"ds = Cityscapes(\"path/to/this/dir\", split=\"{split}\", mode=\"fine\", target_type=\"semantic\")\n"
            "image, label_ids = ds[0]\n"
            "```\n\n"
            "mmsegmentation: use `CityscapesDataset` with `data_root` set to this directory, "
            "`img_suffix='_leftImg8bit.png'`, `seg_map_suffix='_gtFine_labelTrainIds.png'` (its defaults), "
            f"`data_prefix=dict(img_path='leftImg8bit/{split}', seg_map_path='gtFine/{split}')`.\n\n"
            "DAFormer / HRDA / MIC (mmseg 0.x): the UDA source dataset is `data.train.source`; rare-class sampling "
            "reads `sample_class_stats.json` and `samples_with_class.json` from its `data_root` (this directory):\n\n"
            "```python\n"
            "data = dict(train=dict(source=dict(type='CityscapesDataset', data_root='path/to/this/dir/',\n"
            "                                   img_dir='leftImg8bit/train', ann_dir='gtFine/train',\n"
            "                                   pipeline=gta_train_pipeline)))\n"
            "```"
        )
        return layout, load
