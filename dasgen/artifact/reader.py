"""Read a finished domain artifact: its index (schema checked), its image bytes or pixels, its file checksums.

Readers stream: one image (png mode) or one 32-row group (parquet mode) in memory at a time. Paths from the index
are checked to stay inside the domain directory before anything is opened.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dasgen.errors import DasgenError
from dasgen.io.atomic import sha256_bytes
from dasgen.io.paths import resolve_inside
from dasgen.io.png import decode_png
from dasgen.artifact.schema import INDEX_FILE, INDEX_SCHEMA, PROVENANCE_FILE, SCHEMA_VERSION, SHARD_ROW_GROUP


def read_index(directory: str | Path) -> pa.Table:
    """The domain's ``index.parquet`` as a pyarrow Table, after checking its schema version and columns."""
    path = Path(directory) / INDEX_FILE
    if not path.is_file():
        raise DasgenError(f"{path} not found: not a finalized domain directory")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise DasgenError(f"{path} is not a readable Parquet file: {error}") from error
    metadata = table.schema.metadata or {}
    version = metadata.get(b"schema_version")
    if version is None or not version.isdigit():
        raise DasgenError(f"{path} has no schema_version metadata: not a dasgen domain index")
    if int(version) > SCHEMA_VERSION:
        raise DasgenError(f"{path} has schema_version {int(version)}; this dasgen reads up to {SCHEMA_VERSION}")
    missing = [name for name in INDEX_SCHEMA.names if name not in table.column_names]
    if missing:
        raise DasgenError(f"{path} lacks columns {missing}")
    return table


def index_image_format(table: pa.Table) -> str:
    """``"png"`` or ``"parquet"``: how the images of an index's domain are stored."""
    return (table.schema.metadata or {}).get(b"image_format", b"png").decode()


def index_shards(table: pa.Table) -> dict[str, str]:
    """Shard file -> sha256 recorded in an index (empty in png mode)."""
    return json.loads((table.schema.metadata or {}).get(b"image_shards", b"{}"))


def read_provenance(directory: str | Path) -> dict:
    """The domain's ``provenance.json`` ({} when absent)."""
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise DasgenError(f"{path} is not valid JSON: {error}") from error


def iter_domain_pngs(directory: str | Path, *, check: bool = True) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Stream (index row, PNG bytes) in index order (sorted by id), one image in memory at a time (a row group in
    parquet mode). With ``check`` each PNG's sha256 is compared with the index (DasgenError on mismatch)."""
    directory = Path(directory)
    table = read_index(directory)
    if index_image_format(table) == "png":
        for row in table.to_pylist():
            path = resolve_inside(directory, row["image"])
            try:
                data = path.read_bytes()
            except OSError as error:
                raise DasgenError(f"cannot read {path}: {error.strerror or error}") from error
            _check_sha(check, data, row, path)
            yield row, data
        return
    by_shard: dict[str, dict[str, dict[str, Any]]] = {}
    for row in table.to_pylist():
        by_shard.setdefault(row["image"], {})[row["id"]] = row
    for shard, rows in by_shard.items():
        path = resolve_inside(directory, shard)
        try:
            shard_file = pq.ParquetFile(path)
            for batch in shard_file.iter_batches(batch_size=SHARD_ROW_GROUP, columns=["id", "image"]):
                for image_id, image in zip(batch.column("id").to_pylist(), batch.column("image").to_pylist()):
                    row = rows.pop(image_id, None)
                    if row is None:
                        continue
                    _check_sha(check, image["bytes"], row, path)
                    yield row, image["bytes"]
        except (OSError, pa.ArrowException) as error:
            raise DasgenError(f"cannot read shard {path}: {error}") from error
        if rows:
            raise DasgenError(f"shard {path} lacks images {sorted(rows)[:5]}")


def _check_sha(check: bool, data: bytes, row: dict[str, Any], path: Path) -> None:
    if check and sha256_bytes(data) != row["sha256"]:
        raise DasgenError(f"{path}: image {row['id']} does not match its sha256 in the index")


def iter_domain_images(directory: str | Path, *, check: bool = True) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Stream (index row, uint8 (H, W, 3) image) in id order; see :func:`iter_domain_pngs`."""
    for row, data in iter_domain_pngs(directory, check=check):
        yield row, decode_png(data, mode="RGB", what=f"image {row['id']} of {directory}")


def read_row_image(directory: str | Path, row: dict[str, Any]) -> np.ndarray:
    """uint8 (H, W, 3) pixels of the image an index row (or a journal entry) names: its PNG file, or its row of a
    parquet shard (no sha256 check: :func:`iter_domain_images` is the checked stream)."""
    what = f"image {row['id']} of {directory}"
    path = resolve_inside(directory, row["image"])
    if path.suffix == ".png":
        return decode_png(path.read_bytes(), mode="RGB", what=what)
    shard = pq.read_table(path, columns=["id", "image"], filters=[("id", "==", row["id"])])
    if shard.num_rows != 1:
        raise DasgenError(f"shard {path} lacks image {row['id']}")
    return decode_png(shard.column("image")[0].as_py()["bytes"], mode="RGB", what=what)


class DomainReader:
    """Random access by id to the images of a finalized domain (png or parquet mode), e.g. for a contact sheet.

    The index is read (and its schema checked) once; each :meth:`read_image` opens one PNG or one shard row.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.table = read_index(self.directory)
        self.image_format = index_image_format(self.table)
        self._rows = {row["id"]: row for row in self.table.to_pylist()}

    def ids(self) -> set[str]:
        """The ids of every image in the domain."""
        return set(self._rows)

    def read_image(self, image_id: str) -> np.ndarray:
        """uint8 (H, W, 3) pixels of image ``image_id``."""
        row = self._rows.get(image_id)
        if row is None:
            raise DasgenError(f"image {image_id!r} is not in {self.directory}")
        return read_row_image(self.directory, row)


def domain_files(directory: str | Path) -> dict[str, str]:
    """Relative path -> sha256 of every image file the index references (what :func:`dasgen.artifact.verify` checks):
    the PNGs in png mode, the shard files (sha256 from the index metadata) in parquet mode."""
    table = read_index(directory)
    if index_image_format(table) == "png":
        return dict(zip(table.column("image").to_pylist(), table.column("sha256").to_pylist()))
    return index_shards(table)
