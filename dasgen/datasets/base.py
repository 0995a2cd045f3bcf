"""The reader interface shared by every dataset kind, and the checks that decide whether an image/label pair is usable.

A reader lists its pairs cheaply (``entries``: names only, no decoding), decodes one pair on demand (``load``), and
streams a whole dataset (``iter_samples``) under a policy for broken pairs: real copies of GTA5 and SYNTHIA have
truncated files, size-mismatched labels and blank frames, and one of them must not stop a 25k-image run ("skip"),
unless the user asks for a strict check ("fail").

Every decoded pair goes through the same checks, each giving a one-line reason: the file decodes; the image is not
a single colour; the label has the image's size; the label ids are Cityscapes ids 0..33. Subclasses only say where
files are (``_list``) and how their label file is decoded (``_read_label``).
"""

from __future__ import annotations

import os
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from dasgen.errors import DatasetError
from dasgen.io.paths import id_problem

# Pillow refuses to open images above 2 * MAX_IMAGE_PIXELS pixels (DecompressionBombError) and warns above it.
# The largest real frames we read are Cityscapes' 2048x1024; 2048*4096*4 (33.5 Mpx) leaves room for 4x larger
# user datasets while keeping the guard against a crafted PNG header that claims gigapixels. This is the one place
# the limit is set (it is process-wide in Pillow); readers turn the error into a bad pair.
MAX_IMAGE_PIXELS = 2048 * 4096 * 4
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

MAX_LABEL_ID = 33
"""Largest Cityscapes label id (``dasgen.labels.CITYSCAPES_LABELS``); larger values make a pair bad."""

SPLITS = ("train", "val", "test", "all")

# What Pillow, zlib and torchvision raise on a broken file: these become bad pairs, anything else is a bug.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # truncated file, unreadable file, UnidentifiedImageError
    ValueError,
    SyntaxError,  # Pillow's PNG plugin on a broken chunk
    EOFError,
    RuntimeError,
    zlib.error,
    Image.DecompressionBombError,
)


@dataclass(frozen=True)
class Entry:
    """One listed pair, produced without decoding anything.

    ``id`` is the source file's stem (GTA5 ``"00001"``, Cityscapes ``"aachen_000000_000019"``), stable across runs;
    ``image`` and ``label`` are posix paths relative to the dataset root (``label`` is None when unlabelled).
    """

    id: str
    image: str
    label: str | None
    split: str


@dataclass
class Sample:
    """A decoded, checked pair: ``image`` uint8 (H, W, 3) RGB, ``label`` uint8 (H, W) Cityscapes label ids or None."""

    entry: Entry
    image: np.ndarray
    label: np.ndarray | None

    @property
    def id(self) -> str:
        return self.entry.id


class BadPair(NamedTuple):
    """A pair that cannot be used: its id, why, and the file at fault (relative to the root; "" if none is)."""

    id: str
    reason: str
    file: str = ""


class BadPairError(DatasetError):
    """A broken pair under policy "fail" (or from ``load``); ``.bad`` holds the ``BadPair``.

    ``str()`` is ``"<root>/<file>: <reason>"``, the one line the CLI prints.
    """

    def __init__(self, root: Path, bad: BadPair):
        self.root = Path(root)
        self.bad = bad
        where = self.root / bad.file if bad.file else self.root
        super().__init__(f"{where.as_posix()}: {bad.reason}")


class PairProblem(Exception):
    """Raised by the decode helpers and checks; ``load`` turns it into a ``BadPairError`` for the pair."""

    def __init__(self, file: str, reason: str):
        super().__init__(reason)
        self.file = file
        self.reason = reason


def decode_failure(what: str, error: BaseException) -> str:
    """One-line reason for a file that does not decode (``what`` is "image" or "label")."""
    if isinstance(error, Image.DecompressionBombError):
        return f"{what} refused by the decompression-bomb guard: {error}"
    if isinstance(error, UnidentifiedImageError):
        return f"{what} is not a readable image file (empty, truncated header or wrong format)"
    if isinstance(error, FileNotFoundError):
        return f"{what} file is missing"
    # torchvision prefixes its messages with the C++ source location; keep only the sentence.
    message = re.sub(r"^.*?\.cpp:\d+,\s*", "", str(error).strip()) or type(error).__name__
    return f"cannot decode {what} (truncated or corrupt file): {message}"


def read_rgb(root: Path, rel: str) -> np.ndarray:
    """Decode ``root/rel`` to uint8 (H, W, 3) RGB (grey, palette and alpha images are converted; 16-bit grey keeps
    its high byte -- Pillow's own conversion clips it to 255, which made a grey photo a white "blank frame")."""
    try:
        with Image.open(root / rel) as im:
            im.load()
            if im.mode.startswith("I;16") or im.mode == "I":
                return _wide_grey_to_rgb(rel, np.asarray(im))
            if im.mode == "F":
                raise PairProblem(rel, "image has floating-point pixels (mode F); expected an 8- or 16-bit image")
            return np.asarray(im.convert("RGB"))
    except DECODE_ERRORS as error:
        raise PairProblem(rel, decode_failure("image", error)) from error


def _wide_grey_to_rgb(rel: str, grey: np.ndarray) -> np.ndarray:
    """16-bit grey (H, W) -> uint8 (H, W, 3): the top 8 bits, as a 16-bit PNG's 8-bit rendering shows it."""
    if grey.size and (int(grey.min()) < 0 or int(grey.max()) > 0xFFFF):
        raise PairProblem(rel, "image has 32-bit integer pixels; expected an 8- or 16-bit image")
    byte = (grey.astype(np.uint32) >> 8).astype(np.uint8)
    return np.repeat(byte[:, :, None], 3, axis=2)


def read_index_label(root: Path, rel: str, *, expected: str) -> np.ndarray:
    """Decode a label file whose pixel values are Cityscapes label ids: mode L, or mode P read by palette index.

    Colour labels (RGB) and 16-bit labels are refused with a reason; ``expected`` names the format for that reason.
    """
    try:
        with Image.open(root / rel) as im:
            im.load()
            if im.mode not in ("L", "P"):
                raise PairProblem(rel, f"label is a mode {im.mode} image; expected {expected}")
            # Mode P: asarray gives the palette index (the label id), not the colour.
            return np.asarray(im)
    except DECODE_ERRORS as error:
        raise PairProblem(rel, decode_failure("label", error)) from error


def check_image(rel: str, image: np.ndarray) -> None:
    """Refuse a blank frame (every pixel one colour, like GTA5 15188 and 17705): it carries no scene."""
    first = image[0, 0]
    if (image == first).all():
        colour = tuple(int(v) for v in first)
        raise PairProblem(rel, f"blank frame: every pixel of the image is {colour}")


def check_label(rel: str, label: np.ndarray, image_shape: tuple[int, ...]) -> None:
    """Refuse a label whose size differs from its image's, or that holds values outside the Cityscapes ids."""
    if label.shape[:2] != image_shape[:2]:
        (ih, iw), (lh, lw) = image_shape[:2], label.shape[:2]
        raise PairProblem(rel, f"size mismatch: image is {iw}x{ih} but label is {lw}x{lh}")
    if int(label.max(initial=0)) <= MAX_LABEL_ID:
        return
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256)[MAX_LABEL_ID + 1 :]) + MAX_LABEL_ID + 1
    shown = ", ".join(str(v) for v in present[:8]) + (" ..." if present.size > 8 else "")
    raise PairProblem(rel, f"label ids outside 0..{MAX_LABEL_ID}: {shown}")


class DatasetReader(ABC):
    """Lists and decodes one dataset on disk. Subclasses set ``kind`` and implement ``_list`` (and maybe
    ``_read_label``); ``open_dataset`` in ``registry.py`` is the usual way to get one.
    """

    kind: ClassVar[str]
    splits: ClassVar[tuple[str | None, ...]] = (None, "all")
    """Values of ``split`` this kind accepts."""

    def __init__(self, root: str | Path, *, split: str | None = None, labelled: bool = True):
        self.root = Path(root)
        if split not in self.splits:
            accepted = ", ".join(repr(s) for s in self.splits if s is not None)
            raise DatasetError(f"{self.root}: split {split!r} is not one of {accepted} for a {self.kind} dataset")
        self.split = split
        self.labelled = labelled
        self._listing: tuple[list[Entry], list[BadPair]] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}, labelled={self.labelled})"

    # -- what subclasses provide -------------------------------------------------------------------------------
    @abstractmethod
    def _list(self) -> tuple[list[Entry], list[BadPair]]:
        """Walk the tree: usable entries and listing problems (e.g. an image without its label)."""

    def _read_label(self, rel: str) -> np.ndarray:
        """Decode one label file to uint8 (H, W) Cityscapes label ids; raise ``PairProblem`` when it cannot."""
        return read_index_label(self.root, rel, expected="mode L or P with Cityscapes label ids")

    # -- the shared interface ----------------------------------------------------------------------------------
    def _listed(self) -> tuple[list[Entry], list[BadPair]]:
        if self._listing is None:
            if not self.root.is_dir():
                raise DatasetError(f"{self.root}: dataset root does not exist or is not a directory")
            try:
                entries, problems = self._list()
            except OSError as error:  # unreadable directory, vanished mount
                raise DatasetError(f"{self.root}: cannot list the dataset ({error})") from error
            self._listing = (
                sorted(entries, key=lambda e: e.id),
                sorted(problems, key=lambda b: (b.id, b.file)),
            )
        return self._listing

    def _require_dir(self, rel: str) -> Path:
        """The directory ``root/rel``, or a DatasetError naming it (the tree is not of this kind)."""
        path = self.root / rel
        if not path.is_dir():
            raise DatasetError(f"{path}: missing directory; is {self.root} a {self.kind} dataset root?")
        return path

    def entries(self) -> list[Entry]:
        """Usable-looking pairs sorted by id (listed once, then cached); nothing is decoded."""
        return list(self._listed()[0])

    def listing_problems(self) -> list[BadPair]:
        """Pairs found broken while listing (an image without its label), sorted by id."""
        return list(self._listed()[1])

    def load(self, entry: Entry) -> Sample:
        """Decode and check one pair; raise ``BadPairError`` naming the file at fault when it is broken."""
        try:
            image = read_rgb(self.root, entry.image)
            check_image(entry.image, image)
            label = None
            if entry.label is not None:
                label = self._read_label(entry.label)
                check_label(entry.label, label, image.shape)
        except PairProblem as problem:
            raise BadPairError(self.root, BadPair(entry.id, problem.reason, problem.file)) from problem
        return Sample(entry=entry, image=image, label=label)

    def iter_samples(
        self, policy: str = "skip", on_bad: Callable[[BadPair], None] | None = None
    ) -> Iterator[Sample]:
        """Yield every usable sample in id order.

        policy "skip": each bad pair (listing problems first, then pairs that fail ``load``) goes to ``on_bad``
        and iteration goes on; "fail": raise ``BadPairError`` on the first bad pair.
        """
        if policy not in ("skip", "fail"):  # checked now, not at the first next()
            raise ValueError(f"policy must be 'skip' or 'fail', not {policy!r}")
        return self._samples(policy, on_bad)

    def _samples(self, policy: str, on_bad: Callable[[BadPair], None] | None) -> Iterator[Sample]:
        for bad in self.listing_problems():
            if policy == "fail":
                raise BadPairError(self.root, bad)
            if on_bad is not None:
                on_bad(bad)
        for entry in self.entries():
            try:
                sample = self.load(entry)
            except BadPairError as error:
                if policy == "fail":
                    raise
                if on_bad is not None:
                    on_bad(error.bad)
                continue
            yield sample


def pair_entries(
    images: dict[str, str],
    label_of: Callable[[str], str] | None,
    existing_labels: set[str],
    split_of: Callable[[str], str],
) -> tuple[list[Entry], list[BadPair]]:
    """Join images (id -> relative path) with their labels.

    ``label_of(id)`` is the relative label path the layout prescribes; None means unlabelled (every image is an
    entry). An image whose label is not in ``existing_labels`` becomes a listing problem naming the missing file.
    """
    entries: list[Entry] = []
    problems: list[BadPair] = []
    for id_, image in images.items():
        if label_of is None:
            entries.append(Entry(id_, image, None, split_of(id_)))
            continue
        label = label_of(id_)
        if label in existing_labels:
            entries.append(Entry(id_, image, label, split_of(id_)))
        else:
            problems.append(BadPair(id_, f"image without label: {label} is missing", image))
    return entries, problems


def image_files_by_stem(root: Path, rel_dir: str, suffixes: tuple[str, ...], strip: str = ""
                        ) -> tuple[dict[str, str], list[BadPair]]:
    """Like :func:`files_by_stem` for a folder of *images*, where the stem becomes the id: also returns the files that
    cannot be one image each, as bad pairs -- ids that break the id rule (``io.paths.id_problem``: hidden, too
    long, not UTF-8, ...), and ids shared by several files (``00001.png`` and ``00001.PNG``, or ``a.png`` and
    ``A.png``, which one case-insensitive filesystem cannot hold apart): none of those is used, all are reported.
    """
    by_key: dict[str, list[tuple[str, str]]] = {}
    problems: list[BadPair] = []
    for path in sorted((root / rel_dir).iterdir()):
        if not (path.suffix.lower() in suffixes and path.stem.endswith(strip)) or not path.is_file():
            continue
        stem, rel = path.stem[: len(path.stem) - len(strip)], f"{rel_dir}/{path.name}"
        problem = id_problem(stem)
        if problem is not None:  # names shown printable: undecodable bytes as \xNN, long ones cut
            shown = os.fsencode(stem).decode("utf-8", "backslashreplace")
            shown_rel = os.fsencode(rel).decode("utf-8", "backslashreplace")
            problems.append(BadPair(shown[:60] + ("..." if len(shown) > 60 else ""), f"unusable id: {problem}",
                                    shown_rel if len(shown_rel) <= 120 else shown_rel[:117] + "..."))
            continue
        by_key.setdefault(stem.lower(), []).append((stem, rel))
    found: dict[str, str] = {}
    for group in by_key.values():
        if len(group) == 1:
            found[group[0][0]] = group[0][1]
        else:
            files = ", ".join(rel for _, rel in group)
            problems.append(BadPair(group[0][0], f"several images share the id (up to letter case): {files}",
                                    group[0][1]))
    return found, problems


def files_by_stem(root: Path, rel_dir: str, suffixes: tuple[str, ...], strip: str = "") -> dict[str, str]:
    """Map stem -> posix path (relative to ``root``) for the files in ``root/rel_dir`` with one of ``suffixes``
    (lower case), not recursing. ``strip`` removes a fixed tail from the stem (Cityscapes' ``_leftImg8bit``).
    """
    found: dict[str, str] = {}
    for path in sorted((root / rel_dir).iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes and path.stem.endswith(strip):
            stem = path.stem[: len(path.stem) - len(strip)]
            found.setdefault(stem, f"{rel_dir}/{path.name}")
    return found
