"""Building blocks every export format shares: the plan (quality gate, counts per split), the streamed items (image
and label at the output size), the output directory policy, the written files with their sha256, the progress bar.

Images are resized with Lanczos and labels with nearest neighbour only (a label is a class id, never interpolated).
Items are produced one at a time from the domain's index order, so an export never holds the dataset in memory.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from dasgen.errors import DasgenError
from dasgen.io.lock import directory_lock
from dasgen.export.journal import IN_PROGRESS_FILE, JournalWriter, is_temp_of, read_journal, start_journal
from dasgen.io.atomic import atomic_write_bytes, atomic_write_text, fsync_dir, sha256_bytes, sha256_file
from dasgen.artifact.reader import iter_domain_pngs
from dasgen.artifact.schema import MANIFEST_FILE  # noqa: F401 (re-exported: the export API names it here)
from dasgen.io.paths import id_problem, is_safe_relpath, refuse_location, relpath_posix, resolve_inside
from dasgen.io.png import check_label, decode_png, encode_png

LabelLoader = Callable[[dict[str, Any]], np.ndarray]
"""``label_loader(index_row) -> uint8 (H, W) Cityscapes label ids`` of the row's source label (any resolution)."""
SizeLoader = Callable[[dict[str, Any]], tuple[int, int]]
"""``source_size_loader(index_row) -> (height, width)`` of the row's source image."""

SIZES = ("translation", "source")


@dataclass
class ExportPlan:
    """Which index rows are exported (the quality gate) and how many per split, decided before any file is written."""

    rows: list[dict[str, Any]]  # every index row, id order
    kept: list[dict[str, Any]]  # rows passing the gate, id order
    min_consistency: float | None
    splits: str = "all-train"  # the split policy (:data:`SPLITS`)

    @property
    def dropped(self) -> int:
        """Rows left out by the quality gate."""
        return len(self.rows) - len(self.kept)

    @cached_property
    def per_split(self) -> dict[str, int]:
        """Exported images per split, splits sorted by name."""
        counts: dict[str, int] = {}
        for row in self.kept:
            counts[row["split"]] = counts.get(row["split"], 0) + 1
        return dict(sorted(counts.items()))

    def counts(self) -> dict[str, Any]:
        """The quality-gate counts recorded in the manifest and the summary."""
        return {
            "total": len(self.rows),
            "exported": len(self.kept),
            "dropped_low_consistency": self.dropped,
            "min_consistency": self.min_consistency,
            "splits": self.splits,
            "per_split": self.per_split,
        }


def passes_gate(consistency: float | None, min_consistency: float | None) -> bool:
    """Quality gate: keep a row when no threshold is set, or when its score is >= the threshold (NaN fails)."""
    if min_consistency is None:
        return True
    return consistency is not None and not math.isnan(consistency) and consistency >= min_consistency


SPLITS = ("all-train", "source")
"""Split policies: every image in ``train`` (where downstream training reads), or the source dataset's own splits."""


def make_plan(rows: list[dict[str, Any]], min_consistency: float | None, splits: str = "all-train") -> ExportPlan:
    """Apply the split policy and the quality gate to the index rows; DasgenError when nothing is left to export.

    ``splits="all-train"`` puts every row in ``train`` (the row keeps its source split as ``source_split``);
    ``"source"`` keeps the index's splits.

    Each row's split becomes a folder name in the export, so a split that is not one plain path component (``..``,
    ``a/b``, an absolute path: an index from a stranger) is refused before anything is written.
    """
    for row in rows:
        problem = id_problem(row["id"])
        if problem is not None:  # ids name files in every format (images, Parquet image.path, HDF5 keys)
            raise DasgenError(f"domain index: image id {str(row['id'])[:60]!r} cannot name a file ({problem}); "
                              "nothing exported")
        if "/" in str(row["split"]) or not is_safe_relpath(str(row["split"])):
            raise DasgenError(f"domain index: image {row['id']!r} has split {row['split']!r}, which cannot name a "
                              "folder inside the export (one plain name expected)")
    if splits not in SPLITS:
        raise DasgenError(f"splits must be one of {SPLITS}, got {splits!r}")
    rows = [{**row, "source_split": row["split"], "split": "train" if splits == "all-train" else row["split"]}
            for row in rows]
    kept = [row for row in rows if passes_gate(row["consistency"], min_consistency)]
    if not kept:
        raise DasgenError(
            f"nothing to export: 0 of {len(rows)} images pass min_consistency={min_consistency}"
            if rows
            else "nothing to export: the domain index has no rows"
        )
    return ExportPlan(rows=rows, kept=kept, min_consistency=min_consistency, splits=splits)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> (height, width, 3) with Lanczos (no-op at the same size)."""
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image, "RGB").resize((size[1], size[0]), Image.Resampling.LANCZOS))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) -> (height, width) with nearest neighbour only (no new class values)."""
    if label.shape == size:
        return label
    return np.asarray(Image.fromarray(label, "L").resize((size[1], size[0]), Image.Resampling.NEAREST))


class ExportItem:
    """One exported image and its label at the output size; decodes and resizes lazily, once."""

    def __init__(self, row: dict[str, Any], png: bytes, label_ids: np.ndarray, size: tuple[int, int]) -> None:
        self.row = row
        self.size = size  # (height, width) of the output
        self._png = png
        self.label_ids = resize_label(label_ids, size)  # uint8 (height, width), Cityscapes label ids

    @cached_property
    def image(self) -> np.ndarray:
        """uint8 (height, width, 3) pixels at the output size (a PNG claiming more pixels than Pillow's guard allows,
        e.g. in a domain from a stranger, is a DasgenError)."""
        try:
            pixels = decode_png(self._png, mode="RGB", what=f"image {self.row['id']}")
        except Image.DecompressionBombError as error:
            raise DasgenError(f"image {self.row['id']} ({self.row['image']}): refused by the decompression-bomb "
                              f"guard ({error})") from error
        return resize_image(pixels, self.size)

    @cached_property
    def image_png(self) -> bytes:
        """PNG bytes at the output size: the domain's own bytes when no resize is needed (no re-encoding)."""
        if (self.row["height"], self.row["width"]) == self.size:
            return self._png
        return encode_png(self.image)


def iter_items(
    domain_dir: Path,
    plan: ExportPlan,
    *,
    label_loader: LabelLoader,
    size: str,
    source_size_loader: SizeLoader | None,
) -> Iterator[ExportItem]:
    """Stream the kept rows as :class:`ExportItem` in id order (image sha256 checked against the index)."""
    if size not in SIZES:
        raise DasgenError(f"size must be one of {SIZES}, got {size!r}")
    kept = {row["id"]: row for row in plan.kept}  # the plan's rows: their split follows the split policy
    for index_row, png in iter_domain_pngs(domain_dir, check=True):
        row = kept.get(index_row["id"])
        if row is None:
            continue
        label = check_label(label_loader(row), f"label of image {row['id']} ({row['source_label']})")
        if size == "translation":
            target = (row["height"], row["width"])
        elif source_size_loader is not None:
            height, width = source_size_loader(row)
            target = (int(height), int(width))
        else:
            target = label.shape  # the source label is at the source image's resolution
        yield ExportItem(row, png, label, target)


@dataclass
class FileRecord:
    """The files an export wrote (relative POSIX path -> sha256), for the manifest; each is journalled in the
    directory's in-progress marker before and after it is written (:mod:`dasgen.export.journal`), so a rerun after a
    kill removes exactly these files."""

    root: Path
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.journal = JournalWriter(self.root)

    def reserve(self, relpath: str) -> None:
        """Journal that ``relpath`` is about to be written (by a library, under a temporary name first)."""
        self.journal.reserve(relpath)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Write a file atomically (no fsync: the manifest, written last with fsync, marks completion)."""
        path = resolve_inside(self.root, relpath)
        self.journal.reserve(relpath)
        atomic_write_bytes(path, data, fsync=False)
        self._record(relpath, sha256_bytes(data))

    def write_text(self, relpath: str, text: str) -> None:
        """Write a UTF-8 text file atomically and record it."""
        self.write_bytes(relpath, text.encode("utf-8"))

    def add_existing(self, path: Path) -> None:
        """Record a file written by a library (Parquet, HDF5) after :meth:`reserve`, hashing it from disk."""
        self._record(relpath_posix(path, self.root), sha256_file(path))

    def _record(self, relpath: str, digest: str) -> None:
        self.files[relpath] = digest
        self.journal.written(relpath, digest)

    def close(self) -> None:
        """Stop journalling (before the marker becomes the manifest, or after a failure)."""
        self.journal.close()


CARD_FILE = "README.md"  # the dataset card

def check_out_dir_location(out_dir: Path, protect: Mapping[Path, str]) -> None:
    """Refuse an output directory that is, lies inside or contains a protected path (the domain being exported, the
    source and target roots, the workspace's artifacts: ``{path: what it is}``), or the filesystem root / home."""
    refuse_location(out_dir, protect, doing="export into")


def _earlier_export_files(out_dir: Path) -> set[str] | None:
    """The files an earlier, finished dasgen export wrote into ``out_dir`` (from its manifest), or None if
    ``out_dir/manifest.json`` is missing or is not a dasgen export manifest."""
    try:
        manifest = json.loads((out_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(manifest, dict) and "manifest_version" in manifest and isinstance(manifest.get("files"), dict)
            and "format" in manifest):
        return None
    return {str(name) for name in manifest["files"]} | {MANIFEST_FILE}


def _foreign_entry(out_dir: Path, owned: set[str], temps_of: set[str] = frozenset()) -> str | None:
    """The first file or link under ``out_dir`` that is not in ``owned`` (POSIX relative paths) nor a temporary
    sibling of one in ``temps_of``, else the first folder that holds none of ``owned``, else None."""
    entries = sorted(out_dir.rglob("*"))
    for path in entries:
        rel = path.relative_to(out_dir).as_posix()
        if (path.is_symlink() or not path.is_dir()) and rel not in owned and not _is_owned_temp(rel, temps_of):
            return rel
    for path in entries:
        rel = path.relative_to(out_dir).as_posix()
        if path.is_dir() and not path.is_symlink() and not any(name.startswith(rel + "/") for name in owned):
            return rel + "/"
    return None


def _is_owned_temp(rel: str, temps_of: set[str]) -> bool:
    folder, _, name = rel.rpartition("/")
    return name.endswith(".tmp") and any(
        is_temp_of(name, other.rpartition("/")[2]) and other.rpartition("/")[0] == folder for other in temps_of)


def _changed_entry(out_dir: Path, journal: dict[str, str | None]) -> str | None:
    """The first journalled file that is no longer what the export wrote (another content, or now a link)."""
    for rel, digest in sorted(journal.items()):
        path = out_dir / rel
        if digest is None or not os.path.lexists(path):
            continue
        if path.is_symlink() or not path.is_file() or sha256_file(path) != digest:
            return rel
    return None


def _remove_owned(out_dir: Path, owned: set[str], *, last: str | None = None) -> None:
    """Delete the ``owned`` files (and temporary siblings of them), then the folders they leave empty; ``last`` (the
    earlier manifest) goes after everything else, so an interrupted emptying stays an export of ours."""
    try:
        for path in sorted(out_dir.rglob("*"), reverse=True):
            rel = path.relative_to(out_dir).as_posix()
            if rel in (last, IN_PROGRESS_FILE) or (path.is_dir() and not path.is_symlink()):
                continue
            if rel in owned or _is_owned_temp(rel, owned):
                path.unlink()
        folders = {str(PurePosixPath(rel).parent) for rel in owned}
        parents = {str(parent) for rel in folders for parent in [PurePosixPath(rel), *PurePosixPath(rel).parents]}
        for rel in sorted(parents - {"."}, key=lambda r: r.count("/"), reverse=True):
            folder = out_dir / rel
            if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                folder.rmdir()
        if last is not None and os.path.lexists(out_dir / last):
            (out_dir / last).unlink()
    except OSError as error:
        raise DasgenError(f"cannot empty output directory {out_dir}: {error.strerror or error} "
                          f"({error.filename or out_dir})") from None


def prepare_out_dir(out_dir: Path, *, force: bool, protect: Mapping[Path, str]) -> None:
    """Make ``out_dir`` an empty directory holding a fresh journal (:data:`IN_PROGRESS_FILE`), or refuse with one line.

    Call it holding :func:`locked_out_dir`. Never touched: a directory that is, lies inside or contains a ``protect``
    path (:func:`check_out_dir_location`). An empty directory is used as it is. A non-empty one is emptied only if
    every entry in it belongs to an unfinished export of ours (the files its journal lists, unchanged since it wrote
    them, and their temporary siblings: rerunning the command redoes it, no ``--force`` needed), or, with ``force``,
    to an earlier finished dasgen export (the files its ``manifest.json`` lists); anything else in it -- a dataset, a
    user's file, a file put there after the interruption -- is refused by name, before anything is deleted.
    """
    check_out_dir_location(out_dir, protect)
    if out_dir.exists() and not out_dir.is_dir():
        raise DasgenError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        marker = out_dir / IN_PROGRESS_FILE
        if marker.is_file() and not marker.is_symlink():
            journal, why = read_journal(out_dir)
            if journal is None:
                raise DasgenError(f"refusing to reuse {out_dir}: its {IN_PROGRESS_FILE} was not written by a dasgen "
                                  f"export ({why}), so the directory may hold data of yours; choose an empty or "
                                  "new --out")
            owned = set(journal) | {IN_PROGRESS_FILE}
            foreign = _foreign_entry(out_dir, owned, temps_of=owned)
            if foreign is not None:
                raise DasgenError(f"refusing to redo the unfinished export in {out_dir}: it holds {foreign}, which "
                                  "the interrupted export did not write; move it away, then rerun")
            changed = _changed_entry(out_dir, journal)
            if changed is not None:
                raise DasgenError(f"refusing to redo the unfinished export in {out_dir}: {changed} was changed after "
                                  "the interrupted export wrote it; move it away, then rerun")
            _remove_owned(out_dir, owned)  # the journal itself stays until the fresh one replaces it
        elif not force:
            raise DasgenError(f"output directory {out_dir} is not empty; use force (--force) to overwrite an "
                              "earlier export there")
        else:
            owned = _earlier_export_files(out_dir)
            if owned is None:
                raise DasgenError(f"refusing --force on {out_dir}: it is not a dasgen export (no dasgen "
                                  f"{MANIFEST_FILE}), so it may hold data of yours; choose an empty or new --out")
            owned |= {CARD_FILE}
            foreign = _foreign_entry(out_dir, owned)
            if foreign is not None:
                raise DasgenError(f"refusing --force on {out_dir}: it holds {foreign}, which the earlier export's "
                                  f"{MANIFEST_FILE} does not list; move it away first")
            _remove_owned(out_dir, owned, last=MANIFEST_FILE)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        start_journal(out_dir)
    except OSError as error:
        raise DasgenError(f"cannot write output directory {out_dir}: {error.strerror or error}") from None


@contextmanager
def locked_out_dir(out_dir: Path, protect: Mapping[Path, str]) -> Iterator[None]:
    """Hold an exclusive OS lock on ``out_dir`` (created if missing) for the whole export.

    A second export into the same directory fails at once with one line instead of emptying the first one's work.
    The lock is :func:`dasgen.io.lock.directory_lock` (``flock`` on the directory: no stale lock file).
    """
    check_out_dir_location(out_dir, protect)  # before creating anything
    if out_dir.exists() and not out_dir.is_dir():
        raise DasgenError(f"output {out_dir} exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DasgenError(f"cannot create output directory {out_dir}: {error.strerror or error}") from None
    with directory_lock(out_dir, busy=f"{out_dir}: another dasgen export is writing into it right now; wait for it "
                        "to finish (or stop it), then rerun"):
        yield


def finish_out_dir(out_dir: Path, manifest_name: str, text: str) -> None:
    """Write the manifest and drop the in-progress marker in one step: the marker's file receives the manifest's
    text (fsync) and is renamed to ``manifest_name``, so the directory is always either marked or complete."""
    marker = out_dir / IN_PROGRESS_FILE
    atomic_write_text(marker, text)
    try:
        os.replace(marker, out_dir / manifest_name)
    except OSError as error:
        raise DasgenError(f"cannot write {out_dir / manifest_name}: {error.strerror or error}") from error
    fsync_dir(out_dir)


def drop_marker_if_alone(out_dir: Path) -> None:
    """After a failed export that left nothing but its marker, remove the marker (an empty directory is fresh)."""
    try:
        if [child.name for child in out_dir.iterdir()] == [IN_PROGRESS_FILE]:
            (out_dir / IN_PROGRESS_FILE).unlink()
    except OSError:
        pass


class _RateColumn(ProgressColumn):
    """Images per second."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} img/s" if speed else "    -- img/s", style="progress.data.speed")


@contextmanager
def progress_bar(total: int, description: str, *, enabled: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar (count, images/s, elapsed, ETA); yields ``advance()``. Disabled: a no-op."""
    if not enabled:
        yield lambda: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)
