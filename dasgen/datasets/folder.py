"""Plain-folder reader: ``ROOT/images/<stem>.(png|jpg|jpeg)`` with ``ROOT/labels/<stem>.png``.

The simplest layout a user can bring (their own target images, or a dataset exported elsewhere). Labels are mode L
or P PNGs of Cityscapes label ids, like Cityscapes' ``_gtFine_labelIds.png``. Without a split every pair's split is
"all"; ``split="train"`` (or "val", "test") reads ``ROOT/train/images`` and ``ROOT/train/labels`` instead, so a
folder can stand in for a target domain with train/val splits.
"""

from __future__ import annotations


from dasgen.datasets.base import BadPair, DatasetReader, Entry, files_by_stem, image_files_by_stem, pair_entries

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class FolderReader(DatasetReader):
    """Pairs ``[<split>/]images/<stem>.*`` with ``[<split>/]labels/<stem>.png``; two images sharing a stem are a
    listing problem."""

    kind = "folder"
    splits = (None, "all", "train", "val", "test")

    def _list(self) -> tuple[list[Entry], list[BadPair]]:
        base = "" if self.split in (None, "all") else f"{self.split}/"
        split = self.split or "all"
        self._require_dir(f"{base}images")
        images, problems = image_files_by_stem(self.root, f"{base}images", IMAGE_SUFFIXES)
        existing: set[str] = set()
        if self.labelled:
            self._require_dir(f"{base}labels")
            existing = set(files_by_stem(self.root, f"{base}labels", (".png",)).values())

        def label_of(id_: str) -> str:
            return f"{base}labels/{id_}.png"

        entries, missing = pair_entries(images, label_of if self.labelled else None, existing, lambda _: split)
        return entries, problems + missing
