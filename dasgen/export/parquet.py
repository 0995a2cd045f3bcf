"""Sharded Parquet export that Hugging Face ``datasets`` loads with ``image`` and ``label`` as Image features.

Layout: ``data/<split>/<split>-<k:05d>-of-<n:05d>.parquet`` (``shard_size`` rows each, row groups of 32 rows, id
order). Columns: ``id`` string; ``image``, ``label`` and ``train_ids`` struct<bytes: binary, path: string> (RGB PNG,
mode-L PNG of Cityscapes label ids 0-33, mode-L PNG of trainIds 0-18 with 255 = ignore); ``split`` string;
``consistency`` float32. The schema metadata key ``huggingface`` declares the three images as ``{"_type": "Image"}``;
the dataset card's ``configs`` map each split to its folder; ``id2label.json`` (written for every format) names the
trainIds, as Hugging Face's semantic-segmentation datasets do.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dasgen.errors import DasgenError
from dasgen.io.atomic import temp_name
from dasgen.export.parts import ExportItem, ExportPlan, FileRecord
from dasgen.io.paths import relpath_posix
from dasgen.io.png import encode_png
from dasgen.labels import id_to_train_id
from dasgen.artifact.schema import (
    HF_IMAGE,
    IMAGE_STRUCT,
    SHARD_ROW_GROUP,
    hf_metadata,
    hf_value,
    parquet_options,
    shard_name,
)

EXPORT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("image", IMAGE_STRUCT),
        pa.field("label", IMAGE_STRUCT),
        pa.field("train_ids", IMAGE_STRUCT),
        pa.field("split", pa.string()),
        pa.field("consistency", pa.float32()),
    ],
    metadata=hf_metadata(
        {
            "id": hf_value("string"),
            "image": HF_IMAGE,
            "label": HF_IMAGE,
            "train_ids": HF_IMAGE,
            "split": hf_value("string"),
            "consistency": hf_value("float32"),
        }
    ),
)


class _SplitShards:
    """The open shard of one split: rotates every ``shard_size`` rows, writes a row group every 32 rows."""

    def __init__(self, files: FileRecord, split: str, total: int, shard_size: int) -> None:
        self.files, self.split, self.shard_size = files, split, shard_size
        self.shards = math.ceil(total / shard_size)
        self.number = 0
        self.rows_in_shard = 0
        self.buffer: list[dict[str, Any]] = []
        self.writer: pq.ParquetWriter | None = None
        self.path: Path | None = None
        self.tmp: Path | None = None

    def add(self, record: dict[str, Any]) -> None:
        with self._naming_write_errors():
            self._add(record)

    def _add(self, record: dict[str, Any]) -> None:
        self.buffer.append(record)
        self.rows_in_shard += 1
        if len(self.buffer) >= SHARD_ROW_GROUP or self.rows_in_shard == self.shard_size:
            self._write_group()
        if self.rows_in_shard == self.shard_size:
            self._close_shard()

    def _write_group(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            name = shard_name(self.split, self.number, self.shards)
            self.path = self.files.root / "data" / self.split / name
            self.files.reserve(relpath_posix(self.path, self.files.root))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = temp_name(self.path)  # renamed into place when complete: no half shard under a real name
            self.writer = pq.ParquetWriter(self.tmp, EXPORT_SCHEMA, **parquet_options(("split",)))
        self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=EXPORT_SCHEMA))
        self.buffer.clear()

    def _close_shard(self) -> None:
        self._write_group()
        if self.writer is not None:
            self.writer.close()
            self.tmp.replace(self.path)
            self.files.add_existing(self.path)
            self.writer = None
            self.number += 1
            self.rows_in_shard = 0

    def close(self) -> None:
        with self._naming_write_errors():
            self._close_shard()

    @contextmanager
    def _naming_write_errors(self) -> Iterator[None]:
        """An OSError of pyarrow's writes (disk full) or of the final rename -> one DasgenError naming the shard."""
        try:
            yield
        except OSError as error:
            raise DasgenError(f"cannot write {self.path}: {error.strerror or error}") from None

    def abort(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except OSError:  # the disk that failed the write may fail the close too: the temp file goes anyway
                pass
            self.tmp.unlink(missing_ok=True)


class ParquetExporter:
    """Writes items into per-split Parquet shards (one open shard per split)."""

    name = "parquet"

    def __init__(self, files: FileRecord, plan: ExportPlan, *, shard_size: int, **_: Any) -> None:
        self.files = files
        self.splits = {
            split: _SplitShards(files, split, count, shard_size) for split, count in plan.per_split.items()
        }

    def add(self, item: ExportItem) -> None:
        """Append one row (image and label as PNG bytes) to its split's shard."""
        row = item.row
        self.splits[row["split"]].add(
            {
                "id": row["id"],
                "image": {"bytes": item.image_png, "path": f"{row['id']}.png"},
                "label": {"bytes": encode_png(item.label_ids), "path": f"{row['id']}_labelIds.png"},
                "train_ids": {"bytes": encode_png(id_to_train_id(item.label_ids)),
                              "path": f"{row['id']}_labelTrainIds.png"},
                "split": row["split"],
                "consistency": row["consistency"],
            }
        )

    def close(self) -> dict[str, Any]:
        """Close every split's last shard."""
        for shards in self.splits.values():
            shards.close()
        return {"shards": {split: shards.shards for split, shards in self.splits.items()}}

    def abort(self) -> None:
        """Remove the unfinished shards' temp files."""
        for shards in self.splits.values():
            shards.abort()

    def yaml_configs(self) -> list[dict[str, Any]]:
        """The dataset card's ``configs`` entry: one data_files glob per split."""
        data_files = [{"split": split, "path": f"data/{split}/*.parquet"} for split in self.splits]
        return [{"config_name": "default", "data_files": data_files}]

    def card(self, splits: list[str]) -> tuple[str, str]:
        """(layout, how to load) sections of the dataset card."""
        layout = (
            "```\n"
            "data/<split>/<split>-<k:05d>-of-<n:05d>.parquet\n"
            "```\n\n"
            "Columns: `id` (source id), `image` (RGB PNG), `label` (mode-L PNG of Cityscapes label ids 0-33), "
            "`train_ids` (mode-L PNG of trainIds 0-18, 255 = ignore; `id2label.json` names them), `split`, "
            "`consistency` (float32). `image`, `label` and `train_ids` are Hugging Face `Image` features "
            "(struct<bytes, path>), rows in id order, 32 rows per row group for streaming."
        )
        files = f"path/to/this/dir/data/{splits[0]}/*.parquet"
        load = (
            "```python\n"
            "from datasets import load_dataset\n"
            "ds = load_dataset(\"path/to/this/dir\")          # splits from the card's configs\n"
            f"ds = load_dataset(\"parquet\", data_files={{\"{splits[0]}\": \"{files}\"}})\n"
            "import json, numpy as np\n"
            f"label_ids = np.array(ds[\"{splits[0]}\"][0][\"label\"])      # uint8 Cityscapes label ids 0-33\n"
            f"train_ids = np.array(ds[\"{splits[0]}\"][0][\"train_ids\"])  # uint8 trainIds, 255 = ignore\n"
            "id2label = json.load(open(\"path/to/this/dir/id2label.json\"))  # {\"0\": \"road\", ...}\n"
            "```\n\n"
            "Plain pyarrow works too: `pyarrow.parquet.ParquetFile(f).iter_batches(...)` and decode the PNG bytes."
        )
        return layout, load
