"""Dataset kinds by name: ``open_dataset("gta5", root)`` returns a listed reader, or a DatasetError naming the path."""

from __future__ import annotations

from pathlib import Path

from dasgen.datasets.base import DatasetReader
from dasgen.datasets.cityscapes import CityscapesReader
from dasgen.datasets.folder import FolderReader
from dasgen.datasets.gta5 import GTA5Reader
from dasgen.datasets.synthia import SynthiaReader
from dasgen.errors import DatasetError

READERS: dict[str, type[DatasetReader]] = {
    reader.kind: reader for reader in (GTA5Reader, SynthiaReader, CityscapesReader, FolderReader)
}


def open_dataset(
    kind: str, root: str | Path, *, split: str | None = None, labelled: bool = True
) -> DatasetReader:
    """Open the dataset of ``kind`` ("gta5", "synthia", "cityscapes", "folder") at ``root`` and list it.

    ``split`` picks one split (None: every pair); ``labelled=False`` lists images only. Raises DatasetError naming
    the path for an unknown kind, a missing root or layout directory, or a dataset with no usable entries.
    """
    root = Path(root)
    if kind not in READERS:
        raise DatasetError(f"{root}: unknown dataset kind {kind!r}; expected one of {', '.join(sorted(READERS))}")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist or is not a directory")
    reader = READERS[kind](root, split=split, labelled=labelled)
    if not reader.entries():
        which = f" in split {split!r}" if split is not None else ""
        problems = reader.listing_problems()
        detail = f" ({len(problems)} listing problems, first: {problems[0].reason})" if problems else ""
        raise DatasetError(f"{root}: no usable {kind} entries{which}{detail}")
    return reader
