"""GTA5 reader (Richter et al., "Playing for Data", 2016): ``images/00001.png``, ``labels/00001.png``.

Labels are mode-P PNGs whose palette *index* is the Cityscapes label id (the palette colours are only for viewing),
so they are read by index, never converted to RGB. An optional ``split.mat`` (keys ``trainIds``, ``valIds``,
``testIds``; 1-based integers naming ``%05d.png``) gives each pair a split; without it every pair is "train".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from dasgen.datasets.base import (BadPair, DatasetReader, Entry, files_by_stem, image_files_by_stem, pair_entries,
                                  read_index_label)
from dasgen.errors import DatasetError

SPLIT_KEYS = {"trainIds": "train", "valIds": "val", "testIds": "test"}


def label_of(id_: str) -> str:
    """The label path GTA5's layout prescribes for an image id."""
    return f"labels/{id_}.png"


def read_split_mat(path: Path) -> dict[str, str]:
    """``split.mat`` -> {"00001": "train", ...}; a DatasetError naming the file when it is unreadable."""
    try:
        mat = scipy.io.loadmat(str(path))
    except (OSError, ValueError, TypeError, NotImplementedError, scipy.io.matlab.MatReadError) as error:
        raise DatasetError(f"{path}: cannot read split file ({error})") from error
    missing = [key for key in SPLIT_KEYS if key not in mat]
    if missing:
        raise DatasetError(f"{path}: split file lacks key(s) {', '.join(missing)}")
    split_of: dict[str, str] = {}
    for key, split in SPLIT_KEYS.items():
        ids = np.asarray(mat[key]).ravel()  # stored as (N, 1) or (1, N) doubles
        if ids.size and (not np.issubdtype(ids.dtype, np.number) or (ids != np.round(ids)).any() or ids.min() < 1):
            raise DatasetError(f"{path}: {key} must hold positive integer image numbers")
        for number in ids.astype(np.int64):
            split_of[f"{number:05d}"] = split
    return split_of


class GTA5Reader(DatasetReader):
    """Pairs ``images/<id>.png`` with ``labels/<id>.png``; ``split`` filters by ``split.mat`` when given."""

    kind = "gta5"
    splits = (None, "all", "train", "val", "test")

    def _list(self) -> tuple[list[Entry], list[BadPair]]:
        self._require_dir("images")
        images, problems = image_files_by_stem(self.root, "images", (".png",))
        split_file = self.root / "split.mat"
        if split_file.is_file():
            split_map = read_split_mat(split_file)
        elif self.split in (None, "all", "train"):
            split_map = {}
        else:
            raise DatasetError(f"{split_file}: missing, so split {self.split!r} is undefined (all pairs are 'train')")
        # Without split.mat everything is "train"; an id that split.mat leaves out is in no split ("all").
        default = "all" if split_file.is_file() else "train"
        if self.split not in (None, "all"):
            images = {i: p for i, p in images.items() if split_map.get(i, default) == self.split}
        existing: set[str] = set()
        if self.labelled:
            self._require_dir("labels")
            existing = set(files_by_stem(self.root, "labels", (".png",)).values())
        entries, missing = pair_entries(
            images,
            label_of if self.labelled else None,
            existing,
            lambda id_: split_map.get(id_, default),
        )
        return entries, problems + missing

    def _read_label(self, rel: str) -> np.ndarray:
        return read_index_label(self.root, rel, expected="mode P (palette index = Cityscapes label id)")
