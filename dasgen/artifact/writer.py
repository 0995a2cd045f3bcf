"""Write one domain artifact ``data/domains/<nnn>/`` (layout and index schema: :mod:`dasgen.artifact.schema`); the
reading half (``read_index``, ``iter_domain_images``, ``domain_files``...) lives in :mod:`dasgen.artifact.reader`
and is re-exported here.

Writing is resumable and shardable across ranks. Each rank's :class:`DomainWriter` makes each image durable first
(an atomic PNG file, or a flushed staging shard in parquet mode) and only then appends its record to the rank's
journal (:mod:`dasgen.artifact.journal`), so the journals always list exactly the images that are safely on disk; a
resumed run skips :meth:`DomainWriter.done_ids`. ``finalize`` (rank 0, after every rank finished) merges all journals
sorted by id into ``index.parquet`` -- and in parquet mode rebuilds the image shards in id order -- so the bytes of
the artifact depend only on the records and images, never on the number of ranks or on the resume history.

Typical use, on each rank::

    with DomainWriter(directory, rank=r, world_size=w) as writer:
        for image_id in writer.pending_ids(all_ids):
            writer.add(record, image)
    # after all ranks are done, on rank 0:
    DomainWriter(directory).finalize(metrics=metrics, provenance=provenance)
"""

from __future__ import annotations

import re
import shutil
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dasgen.errors import DasgenError
from dasgen.io.atomic import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    is_temp_name,
    sha256_bytes,
    sha256_file,
)
from dasgen.artifact.reader import (  # noqa: F401  (re-exported: the reading half of the domain API)
    domain_files,
    index_image_format,
    index_shards,
    iter_domain_images,
    iter_domain_pngs,
    read_index,
    read_provenance,
    read_row_image,
)
from dasgen.artifact.journal import JOURNAL_DIR, JournalAppender, journal_files, journal_path, read_journals
from dasgen.io.paths import id_problem, resolve_inside, walk_files
from dasgen.io.png import check_rgb, decode_png, encode_png
from dasgen.artifact.schema import (
    CHECKSUMS_FILE,
    is_image_payload,
    DOMAIN_SHARD_SCHEMA,
    IMAGE_FORMATS,
    IMAGES_DIR,
    INDEX_FILE,
    INDEX_SCHEMA,
    METRICS_FILE,
    PROVENANCE_FILE,
    SHARD_FILE,
    SHARD_PREFIX,
    SHARD_ROW_GROUP,
    STAGING_DIR,
    index_metadata,
    parquet_options,
    shard_name,
)

_STAGING_FILE = re.compile(r"^rank-(\d+)-(\d+)\.parquet$")
_STAGING_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("png", pa.binary())])
_STAGING_CACHE = 8  # open staging files kept while rebuilding shards (ids of a shard span ~1 file per rank)


def domain_dir_name(n: int, width: int = 3) -> str:
    """Directory name of domain n, zero-padded so that directories sort: ``domain_dir_name(7) == "007"``."""
    if n < 0:
        raise DasgenError(f"domain number must be >= 0, got {n}")
    return f"{n:0{width}d}"


@dataclass(frozen=True)
class ImageRecord:
    """One translated image's row of ``index.parquet`` (without ``image`` and ``sha256``, which the writer fills)."""

    id: str  # the source file's stem
    source_image: str  # relative to the source dataset root
    source_label: str  # relative to the source dataset root
    split: str
    domain: int  # n of X^n
    t: int  # noise level t_n in paper steps
    seed: int  # per-image seed (dasgen.seeding.image_seed)
    height: int
    width: int
    consistency: float  # mIoU of g_{n-1}'s prediction against the source label (NaN if not measured)


def check_image_id(image_id: str) -> str:
    """``image_id`` if it can name a file ``images/<id>.png`` (:func:`~dasgen.io.paths.id_problem`)."""
    problem = id_problem(image_id)
    if problem is not None:
        shown = repr(image_id)[:80] + ("..." if len(repr(image_id)) > 80 else "")
        raise DasgenError(f"image id {shown} cannot name a file ({problem})")
    return image_id


def _record_entry(record: ImageRecord, image: np.ndarray) -> dict[str, Any]:
    """The record as a checked, JSON-ready dict with plain Python types."""
    check_image_id(record.id)
    entry = {
        "id": record.id,
        "source_image": str(record.source_image),
        "source_label": str(record.source_label),
        "split": str(record.split),
        "domain": int(record.domain),
        "t": int(record.t),
        "seed": int(record.seed),
        "height": int(record.height),
        "width": int(record.width),
        "consistency": float(record.consistency),
    }
    if not entry["split"]:
        raise DasgenError(f"image {record.id}: empty split name")
    if image.shape[:2] != (entry["height"], entry["width"]):
        raise DasgenError(
            f"image {record.id}: pixels are {image.shape[0]}x{image.shape[1]} but the record says "
            f"{entry['height']}x{entry['width']}"
        )
    return entry


class DomainWriter:
    """Writes the images and records of one domain; resumable, and shardable over ``world_size`` ranks.

    ``image_format="png"`` writes ``images/<id>.png``; ``"parquet"`` buffers ``flush_every`` PNGs and writes them as
    one staging shard (a kill loses at most that buffer), and ``finalize`` rebuilds ``images-NNNNN.parquet`` shards of
    ``shard_size`` images in id order. Use it as a context manager (or call :meth:`close`) so the last buffer lands.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        image_format: str = "png",
        rank: int = 0,
        world_size: int = 1,
        shard_size: int = 500,
        flush_every: int = 32,
    ) -> None:
        if image_format not in IMAGE_FORMATS:
            raise DasgenError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DasgenError(f"rank {rank} is not in a world of size {world_size}")
        if shard_size < 1 or flush_every < 1:
            raise DasgenError("shard_size and flush_every must be >= 1")
        self.directory = Path(directory)
        self.image_format = image_format
        self.rank = rank
        self.world_size = world_size
        self.shard_size = shard_size
        self.flush_every = flush_every
        self._journal: JournalAppender | None = None
        self._buffer: list[tuple[dict[str, Any], bytes]] = []
        self._added: set[str] = set()
        self._next_staging: int | None = None
        self._done: dict[str, dict[str, Any]] | None = None  # id -> entry cache for read_image / consistencies
        self._reader: _StagingReader | None = None

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def finalized(self) -> bool:
        """Whether the domain is complete: ``index.parquet`` exists and no journal is left."""
        return (self.directory / INDEX_FILE).is_file() and not journal_files(self.directory)

    def done_ids(self) -> set[str]:
        """Ids already finished by any rank of this or an earlier run (skip them on resume)."""
        self._done = None  # other ranks may have progressed since the last look
        return set(self._done_entries())

    def pending_ids(self, ids: Iterable[str]) -> list[str]:
        """This rank's share of ``ids`` that is not done yet, sorted.

        The share is every ``world_size``-th id of the full sorted list (taken before removing done ids), so ranks
        that start at different times still split the work without overlap or gaps.
        """
        share = sorted(set(ids))[self.rank :: self.world_size]
        done = self.done_ids()
        return [image_id for image_id in share if image_id not in done]

    def _done_entries(self) -> dict[str, dict[str, Any]]:
        """id -> latest entry of every finished image: index rows, then journal entries, then this writer's buffer."""
        if self._done is None:
            done: dict[str, dict[str, Any]] = {}
            if (self.directory / INDEX_FILE).is_file():
                done.update((row["id"], row) for row in read_index(self.directory).to_pylist())
            done.update((entry["id"], entry) for entry in self._journal_entries())
            self._done = done
        if not self._buffer:
            return self._done
        return {**self._done, **{entry["id"]: entry for entry, _ in self._buffer}}

    def consistencies(self) -> list[float]:
        """The consistency scores of every finished image (any rank, any run), in id order."""
        entries = self._done_entries()
        return [float(entries[image_id]["consistency"]) for image_id in sorted(entries)]

    def read_image(self, image_id: str) -> np.ndarray:
        """uint8 (H, W, 3) pixels of a finished image, before or after ``finalize`` (e.g. to fine-tune g_n)."""
        entry = self._done_entries().get(image_id)
        if entry is None:
            raise DasgenError(f"image {image_id!r} is not (yet) in {self.directory}")
        what = f"image {image_id} of {self.directory}"
        buffered = [png for e, png in self._buffer if e["id"] == image_id]
        if buffered:
            return decode_png(buffered[-1], mode="RGB", what=what)
        if "staged" in entry:  # parquet mode, not finalized: read the staging shard's row
            if self._reader is None:
                self._reader = _StagingReader(self.directory / STAGING_DIR)
            return decode_png(self._reader.png(entry), mode="RGB", what=what)
        return read_row_image(self.directory, entry)

    def _journal_entries(self) -> list[dict[str, Any]]:
        entries = read_journals(self.directory)
        for entry in entries:
            if entry.get("format") != self.image_format:
                raise DasgenError(
                    f"{self.directory} was started with image_format={entry.get('format')!r}, "
                    f"not {self.image_format!r}; use the same format to resume, or delete it"
                )
        return entries

    # -- writing -----------------------------------------------------------------------------------------------

    def add(self, record: ImageRecord, image: np.ndarray) -> None:
        """Store one translated uint8 (H, W, 3) image and, once its bytes are durable, journal its record."""
        image = check_rgb(image, f"image {record.id}")
        entry = _record_entry(record, image)
        if record.id in self._added:
            raise DasgenError(f"image {record.id} was added twice to {self.directory}")
        if not self._added and self.finalized:  # checked once per writer: finalize runs after every add
            raise DasgenError(f"{self.directory} is already finalized; delete it to rebuild the domain")
        self._added.add(record.id)
        png = encode_png(image)
        entry["sha256"] = sha256_bytes(png)
        entry["format"] = self.image_format
        if self.image_format == "png":
            entry["image"] = f"{IMAGES_DIR}/{record.id}.png"
            atomic_write_bytes(self.directory / entry["image"], png)
            self._append([entry])
            self._done = None
        else:
            self._buffer.append((entry, png))
            if len(self._buffer) >= self.flush_every:
                self.flush()

    def flush(self) -> None:
        """Parquet mode: write the buffered PNGs as one staging shard, then journal them. No-op in png mode."""
        if not self._buffer:
            return
        staging = self.directory / STAGING_DIR
        if self._next_staging is None:
            numbers = [
                int(m.group(2))
                for p in (staging.iterdir() if staging.is_dir() else [])
                if (m := _STAGING_FILE.match(p.name)) and int(m.group(1)) == self.rank
            ]
            self._next_staging = max(numbers, default=-1) + 1
        name = f"rank-{self.rank}-{self._next_staging:05d}.parquet"
        table = pa.table(
            {"id": [e["id"] for e, _ in self._buffer], "png": [png for _, png in self._buffer]},
            schema=_STAGING_SCHEMA,
        )
        with atomic_open(staging / name) as handle:
            # One row per row group: finalize reads back exactly the image it needs. PNG is already compressed.
            pq.write_table(table, handle, row_group_size=1, compression="none")
        self._next_staging += 1
        entries = []
        for row, (entry, _) in enumerate(self._buffer):
            entries.append({**entry, "staged": name, "row": row})
        self._append(entries)
        self._buffer.clear()
        self._done = None

    def _append(self, entries: list[dict[str, Any]]) -> None:
        if self._journal is None:
            self._journal = JournalAppender(journal_path(self.directory, self.rank))
        self._journal.append(entries)

    def close(self) -> None:
        """Flush the parquet buffer and close the journal and any open staging file (idempotent)."""
        self.flush()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def __enter__(self) -> DomainWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # images added before an error are valid: keep them for the resume

    # -- finalize ----------------------------------------------------------------------------------------------

    def finalize(self, *, metrics: dict, provenance: dict) -> Path:
        """Merge every rank's journal into ``index.parquet`` (sorted by id) and write the metrics and provenance.

        Rank 0 calls it after all ranks have finished. It is idempotent: killed half-way, it can simply be called
        again (journals are removed last). On an already finalized domain it only rewrites metrics and provenance.
        """
        if self.rank != 0:
            raise DasgenError(f"finalize runs on rank 0 only (this writer is rank {self.rank})")
        self.close()
        self._done = None
        if self.finalized:
            self._write_json(metrics, provenance)
            self._clean_up(set(read_index(self.directory).column("image").to_pylist()))
            self._write_checksums()
            return self.directory
        rows = _merge_entries(self._journal_entries(), self.directory, self.image_format)
        shards: dict[str, str] = {}
        if self.image_format == "parquet":
            shards = self._build_shards(rows)
        table = pa.Table.from_pylist(
            [{name: row[name] for name in INDEX_SCHEMA.names} for row in rows],
            schema=INDEX_SCHEMA.with_metadata(index_metadata(self.image_format, shards)),
        )
        with atomic_open(self.directory / INDEX_FILE) as handle:
            pq.write_table(table, handle, row_group_size=100_000, **parquet_options(("split", "image")))
        self._write_json(metrics, provenance)
        self._clean_up({row["image"] for row in rows})
        self._write_checksums()
        return self.directory

    def _write_checksums(self) -> None:
        """Record the sha256 of every file the index does not cover (the index itself, metrics, provenance, the
        segmenter g_n and anything else the stage put there), so ``verify`` covers the whole artifact. Last: a domain
        without it is not finished."""
        files = {rel: sha256_file(self.directory / rel) for rel in walk_files(self.directory)
                 if rel != CHECKSUMS_FILE and not is_image_payload(rel)}
        atomic_write_json(self.directory / CHECKSUMS_FILE, {"checksums_version": 1, "files": files})

    def _write_json(self, metrics: dict, provenance: dict) -> None:
        atomic_write_json(self.directory / METRICS_FILE, metrics)
        atomic_write_json(self.directory / PROVENANCE_FILE, provenance)

    def _build_shards(self, rows: list[dict[str, Any]]) -> dict[str, str]:
        """Rewrite all images into ``images-NNNNN.parquet`` in id order; set each row's ``image``; shard -> sha."""
        shards: dict[str, str] = {}
        reader = _StagingReader(self.directory / STAGING_DIR)
        try:
            for number, start in enumerate(range(0, len(rows), self.shard_size)):
                name = shard_name(SHARD_PREFIX, number)
                shard_rows = rows[start : start + self.shard_size]
                with atomic_open(self.directory / name) as handle:
                    with pq.ParquetWriter(handle, DOMAIN_SHARD_SCHEMA, **parquet_options()) as writer:
                        for group in range(0, len(shard_rows), SHARD_ROW_GROUP):
                            chunk = shard_rows[group : group + SHARD_ROW_GROUP]
                            writer.write_table(_shard_table(chunk, reader))
                for row in shard_rows:
                    row["image"] = name
                shards[name] = sha256_file(self.directory / name)
        finally:
            reader.close()
        return shards

    def _clean_up(self, kept: set[str]) -> None:
        """Remove what the finished artifact does not reference: journals (first, atomically, by renaming: from then
        on the domain counts as finalized), staging, and orphan images or temp files of killed runs."""
        trash = self.directory / ".trash"
        if (self.directory / JOURNAL_DIR).is_dir():
            trash.mkdir(exist_ok=True)
            (self.directory / JOURNAL_DIR).rename(trash / f"journal-{len(list(trash.iterdir()))}")
        shutil.rmtree(self.directory / STAGING_DIR, ignore_errors=True)
        images = self.directory / IMAGES_DIR
        if images.is_dir():
            for path in images.iterdir():
                if f"{IMAGES_DIR}/{path.name}" not in kept and (path.suffix == ".png" or is_temp_name(path.name)):
                    path.unlink()
        for path in self.directory.iterdir():
            stale_shard = SHARD_FILE.match(path.name) and path.name not in kept
            if path.is_file() and (stale_shard or is_temp_name(path.name)):
                path.unlink()
        shutil.rmtree(trash, ignore_errors=True)


def _merge_entries(entries: list[dict[str, Any]], directory: Path, image_format: str) -> list[dict[str, Any]]:
    """One entry per id (sorted by id) from all journal entries.

    An id journaled twice (e.g. two runs with overlapping shares) keeps its latest entry -- in png mode the one whose
    sha256 matches the file on disk, since the last writer of the file may not be the last journal read.
    """
    by_id: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_id.setdefault(entry["id"], []).append(entry)
    rows = []
    for image_id in sorted(by_id):
        candidates = by_id[image_id]
        chosen = candidates[-1]
        if image_format == "png":
            path = directory / IMAGES_DIR / f"{image_id}.png"
            if not path.is_file():
                raise DasgenError(f"{path} is journaled as done but missing; delete the domain and rerun")
            if len({c["sha256"] for c in candidates}) > 1:
                on_disk = sha256_file(path)
                matching = [c for c in candidates if c["sha256"] == on_disk]
                if not matching:
                    raise DasgenError(f"{path} matches none of its journal entries; delete the domain and rerun")
                chosen = matching[-1]
        rows.append(dict(chosen))
    return rows


class _StagingReader:
    """Reads single PNGs back from staging shards (one row per row group), keeping a few files open."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._open: OrderedDict[str, tuple[Any, pq.ParquetFile]] = OrderedDict()

    def png(self, entry: dict[str, Any]) -> bytes:
        name, row = entry["staged"], int(entry["row"])
        if name not in self._open:
            path = resolve_inside(self.folder, name)
            try:
                handle = open(path, "rb")
            except OSError as error:
                raise DasgenError(f"staging file {path} is missing: delete the domain and rerun") from error
            self._open[name] = (handle, pq.ParquetFile(handle))
            if len(self._open) > _STAGING_CACHE:
                old_handle, _ = self._open.popitem(last=False)[1]
                old_handle.close()
        self._open.move_to_end(name)
        table = self._open[name][1].read_row_group(row)
        if table.column("id")[0].as_py() != entry["id"]:
            raise DasgenError(f"staging file {self.folder / name} row {row} is not image {entry['id']}")
        data = table.column("png")[0].as_py()
        if sha256_bytes(data) != entry["sha256"]:
            raise DasgenError(f"staging file {self.folder / name} row {row} is corrupt (sha256 mismatch)")
        return data

    def close(self) -> None:
        for handle, _ in self._open.values():
            handle.close()
        self._open.clear()


def _shard_table(rows: list[dict[str, Any]], reader: _StagingReader) -> pa.Table:
    images = [{"bytes": reader.png(row), "path": f"{row['id']}.png"} for row in rows]
    return pa.table({"id": [row["id"] for row in rows], "image": images}, schema=DOMAIN_SHARD_SCHEMA)


__all__ = [
    "DomainWriter",
    "ImageRecord",
    "domain_dir_name",
    "domain_files",
    "index_image_format",
    "index_shards",
    "iter_domain_images",
    "iter_domain_pngs",
    "read_index",
    "read_provenance",
]
