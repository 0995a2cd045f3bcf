"""Cityscapes reader (Cordts et al., 2016): ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``.

Labels are ``gtFine/<split>/<city>/<id>_gtFine_labelIds.png`` (mode L, Cityscapes label ids; what torchvision's
``Cityscapes(target_type="semantic")`` reads). ``labelled=False`` lists the images alone: the unlabelled target
images the diffusion model trains on (``train``, or the larger ``train_extra``). City names contain no underscore, so an id is ``<city>_<seq:06>_<frame:06>``.
"""

from __future__ import annotations

import re

from dasgen.datasets.base import BadPair, DatasetReader, Entry, files_by_stem, image_files_by_stem, pair_entries
from dasgen.errors import DatasetError

CITYSCAPES_SPLITS = ("train", "val", "test")  # the gtFine splits; split=None reads these
EXTRA_SPLITS = ("train_extra",)  # leftImg8bit_trainextra: 20k images with coarse labels only, read unlabelled
ID_PATTERN = re.compile(r"(?P<city>[^_/]+)_\d{6}_\d{6}")
IMAGE_SUFFIX = "_leftImg8bit"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def label_of(image: str) -> str:
    """``leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png`` -> its ``gtFine`` labelIds path."""
    _, split, city, name = image.split("/")
    return f"gtFine/{split}/{city}/{name[: -len(IMAGE_SUFFIX + '.png')]}{LABEL_SUFFIX}"


class CityscapesReader(DatasetReader):
    """Lists ``leftImg8bit`` (one split, or every split present when ``split`` is None) with its gtFine labels."""

    kind = "cityscapes"
    splits = (None, *CITYSCAPES_SPLITS, *EXTRA_SPLITS)

    def _list(self) -> tuple[list[Entry], list[BadPair]]:
        image_root = self._require_dir("leftImg8bit")
        if self.split is None:
            splits = [s for s in CITYSCAPES_SPLITS if (image_root / s).is_dir()]
            if not splits:
                raise DatasetError(f"{image_root}: holds none of the split directories {', '.join(CITYSCAPES_SPLITS)}")
        else:
            splits = [self.split]
        entries: list[Entry] = []
        problems: list[BadPair] = []
        for split in splits:
            split_entries, split_problems = self._list_split(split)
            entries += split_entries
            problems += split_problems
        return entries, problems

    def _list_split(self, split: str) -> tuple[list[Entry], list[BadPair]]:
        cities = sorted(p.name for p in self._require_dir(f"leftImg8bit/{split}").iterdir() if p.is_dir())
        if self.labelled:
            self._require_dir(f"gtFine/{split}")
        images: dict[str, str] = {}
        existing: set[str] = set()
        problems: list[BadPair] = []
        for city in cities:
            city_images, unusable = image_files_by_stem(self.root, f"leftImg8bit/{split}/{city}", (".png",),
                                                        IMAGE_SUFFIX)
            problems.extend(unusable)
            for id_, rel in city_images.items():
                match = ID_PATTERN.fullmatch(id_)
                if match is None or match["city"] != city:
                    reason = f"file name is not {city}_<seq:06>_<frame:06>{IMAGE_SUFFIX}.png"
                    problems.append(BadPair(id_, reason, rel))
                else:
                    images[id_] = rel
            if self.labelled and (self.root / f"gtFine/{split}/{city}").is_dir():
                names = files_by_stem(self.root, f"gtFine/{split}/{city}", (".png",), LABEL_SUFFIX[:-4])
                existing.update(names.values())
        entries, missing = pair_entries(
            images, (lambda id_: label_of(images[id_])) if self.labelled else None, existing, lambda _: split
        )
        return entries, problems + missing
