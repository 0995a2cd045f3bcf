"""HDF5 export (h5py): one file ``dataset.h5`` of chunked arrays, streamed row by row.

Layout (N exported images; H x W the largest image size; rows ordered by (split, id), so each split is one contiguous
slice)::

    images        (N, H, W, 3) uint8   RGB, chunk = one image, gzip
    labels        (N, H, W)    uint8   Cityscapes label ids 0-33, chunk = one label, gzip
    train_ids     (N, H, W)    uint8   trainIds 0-18, 255 = ignore, chunk = one label, gzip
    sizes         (N, 2)       int32   (height, width) of each image
    ids           (N,)         utf-8 string   source ids
    splits        (N,)         utf-8 string   split of each row
    consistency   (N,)         float32        label-consistency score
    attrs: format "dasgen-hdf5", layout_version 2, split_offsets (JSON {split: [start, stop]}), label_convention,
           padded (whether images of several sizes share the arrays)

Images of several sizes (GTA5 at its source resolution: 1914x1052 and 1914x1046) share the arrays: each sits in the
top-left corner, ``sizes[i]`` gives its own size and the rest reads as padding (0; 255 = ignore in ``train_ids``, so
a loss on trainIds ignores it as is). Read one sample -- it only touches its own chunks -- as
``h, w = f["sizes"][i]; image = f["images"][i, :h, :w]``. Layout version 1 had no ``sizes`` and one size only.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dasgen.errors import DasgenError
from dasgen.labels import IGNORE_INDEX, id_to_train_id
from dasgen.io.atomic import temp_name
from dasgen.export.parts import ExportItem, ExportPlan, FileRecord

FILE_NAME = "dataset.h5"
LAYOUT_VERSION = 2  # 2: sizes dataset, arrays stretched to the largest image when sizes differ
GZIP_LEVEL = 4  # gzip is readable by every HDF5 build (lzf is h5py-only); level 4: near-best size, 2x faster than 9


class _GuardedFile(io.RawIOBase):
    """The file h5py writes through (its ``fileobj`` driver), so that the OS refusing a write (disk full) reaches
    Python as an OSError we keep, instead of an error inside the HDF5 library, which then fails again on every flush
    and crashes the process at exit. After the first failure writes are dropped, so the file can still be closed
    cleanly; the exporter checks :attr:`error` after each image and on close, and deletes the file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._raw = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._raw.readinto(buffer)

    def write(self, data) -> int:
        if self.error is None:
            try:
                view = memoryview(data)
                while view:  # a raw write may be short: HDF5 expects the whole buffer written
                    view = view[self._raw.write(view):]
            except OSError as error:
                self.error = error
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is not None:
            return self._raw.tell() if size is None else size
        try:
            return self._raw.truncate(size)
        except OSError as error:
            self.error = error
            return self._raw.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class Hdf5Exporter:
    """Writes items into preallocated chunked datasets; the file appears under its real name only when complete."""

    name = "hdf5"

    def __init__(self, files: FileRecord, plan: ExportPlan, *, size: str, **_: Any) -> None:
        self.files = files
        ordered = sorted(plan.kept, key=lambda row: (row["split"], row["id"]))
        self.position = {row["id"]: i for i, row in enumerate(ordered)}
        self.count = len(ordered)
        self.path = files.root / FILE_NAME
        self.tmp = temp_name(self.path)
        self.shape: tuple[int, int] | None = None
        offsets: dict[str, list[int]] = {}
        for i, row in enumerate(ordered):
            offsets.setdefault(row["split"], [i, i])[1] = i + 1
        files.reserve(FILE_NAME)
        try:
            self.sink = _GuardedFile(self.tmp)
        except OSError as error:
            raise DasgenError(f"cannot write {self.path}: {error.strerror or error}") from None
        self.file = h5py.File(self.sink, "w")
        strings = h5py.string_dtype("utf-8")
        self.file.create_dataset("ids", data=[row["id"] for row in ordered], dtype=strings)
        self.file.create_dataset("splits", data=[row["split"] for row in ordered], dtype=strings)
        self.file.create_dataset("consistency", data=np.array([row["consistency"] for row in ordered], np.float32))
        self.sizes = self.file.create_dataset("sizes", shape=(self.count, 2), dtype=np.int32)
        self.seen: set[tuple[int, int]] = set()
        self.file.attrs["format"] = "dasgen-hdf5"
        self.file.attrs["layout_version"] = LAYOUT_VERSION
        self.file.attrs["split_offsets"] = json.dumps(offsets, sort_keys=True)
        self.file.attrs["label_convention"] = "labels: Cityscapes label ids 0-33; train_ids: 0-18, 255 = ignore"

    def _create_arrays(self, height: int, width: int) -> None:
        """Create the pixel arrays at the first image's size; they grow (never shrink) to the largest image seen.

        Each array is chunked one image per chunk at the first image's size and stretchable in height and width, so
        a larger image later (GTA5 has 1914x1052 and 1914x1046 frames) only stretches the arrays: the region outside
        a smaller image reads as the fill value (0 for pixels and label ids, 255 = ignore for trainIds)."""
        self.shape = (height, width)
        options = {"compression": "gzip", "compression_opts": GZIP_LEVEL}
        n = self.count
        self.images = self.file.create_dataset(
            "images", shape=(n, height, width, 3), maxshape=(n, None, None, 3), dtype=np.uint8,
            chunks=(1, height, width, 3), fillvalue=0, **options
        )
        self.labels = self.file.create_dataset(
            "labels", shape=(n, height, width), maxshape=(n, None, None), dtype=np.uint8, chunks=(1, height, width),
            fillvalue=0, **options
        )
        self.train_ids = self.file.create_dataset(
            "train_ids", shape=(n, height, width), maxshape=(n, None, None), dtype=np.uint8,
            chunks=(1, height, width), fillvalue=IGNORE_INDEX, **options
        )

    def _stretch(self, height: int, width: int) -> None:
        """Grow every pixel array to hold a ``height`` x ``width`` image (metadata only: no pixel is rewritten)."""
        self.shape = (max(self.shape[0], height), max(self.shape[1], width))
        for array in (self.images, self.labels, self.train_ids):
            array.resize((self.count, *self.shape, *array.shape[3:]))

    def add(self, item: ExportItem) -> None:
        """Write one image and its labels at the row's (split, id) position, in the top-left corner when the arrays
        are larger than the image (``sizes`` records each image's own size)."""
        height, width = item.size
        if self.shape is None:
            self._create_arrays(height, width)
        elif height > self.shape[0] or width > self.shape[1]:
            self._stretch(height, width)
        i = self.position[item.row["id"]]
        self.images[i, :height, :width] = item.image
        self.labels[i, :height, :width] = item.label_ids
        self.train_ids[i, :height, :width] = id_to_train_id(item.label_ids)
        self.sizes[i] = (height, width)
        self.seen.add((height, width))
        self._check()

    def _check(self) -> None:
        """Raise the first write error the OS gave (one DasgenError naming the file)."""
        if self.sink.error is not None:
            error = self.sink.error
            raise DasgenError(f"cannot write {self.path}: {error.strerror or error}")

    def close(self) -> dict[str, Any]:
        """Close the file, move it into place and record its checksum."""
        self.file.attrs["padded"] = len(self.seen) > 1
        self.file.close()
        self.sink.close()
        self._check()
        try:
            self.tmp.replace(self.path)
        except OSError as error:
            raise DasgenError(f"cannot write {self.path}: {error.strerror or error}") from None
        self.files.add_existing(self.path)
        return {"image_size": list(self.shape or ())}

    def abort(self) -> None:
        """Close and delete the unfinished temp file."""
        try:
            self.file.close()
        finally:
            self.sink.close()
            self.tmp.unlink(missing_ok=True)

    def card(self, splits: list[str]) -> tuple[str, str]:
        """(layout, how to load) sections of the dataset card."""
        layout = (
            "```\n"
            "dataset.h5\n"
            "  images       (N, H, W, 3) uint8   RGB, one chunk per image, gzip\n"
            "  labels       (N, H, W)    uint8   Cityscapes label ids 0-33\n"
            "  train_ids    (N, H, W)    uint8   trainIds 0-18, 255 = ignore\n"
            "  sizes        (N, 2)       int32   (height, width) of each image; larger arrays are padding\n"
            "  ids, splits  (N,)         utf-8 strings\n"
            "  consistency  (N,)         float32\n"
            "  attrs: split_offsets = JSON {split: [start, stop]} (rows are ordered by split, then id)\n"
            "```"
        )
        load = (
            "```python\n"
            "import json, h5py\n"
            "with h5py.File(\"path/to/this/dir/dataset.h5\") as f:\n"
            f"    start, stop = json.loads(f.attrs[\"split_offsets\"])[\"{splits[0]}\"]\n"
            "    for i in range(start, stop):          # streaming: one chunk (image) read at a time\n"
            "        h, w = f[\"sizes\"][i]                 # images of several sizes share the arrays\n"
            "        image, label_ids = f[\"images\"][i, :h, :w], f[\"labels\"][i, :h, :w]\n"
            "```"
        )
        return layout, load
