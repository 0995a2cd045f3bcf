"""SYNTHIA-RAND-CITYSCAPES reader (Ros et al., 2016): ``RGB/0000000.png`` and ``GT/LABELS/0000000.png``.

The labels are 16-bit PNGs (3 or 4 channels) whose FIRST channel is the SYNTHIA class id (the second is an
instance id). Pillow opens a multi-channel 16-bit PNG as 8-bit RGB(A) through its "RGB;16B" unpacker, which keeps
the HIGH byte of each big-endian sample, so every class id (< 256) reads as 0. We still let Pillow do the PNG work
(zlib, scanline filters, interlacing, CRCs, the decompression-bomb guard) but decode twice: once as usual for the
high bytes and once with the little-endian unpacker ("RGB;16L"), which on big-endian data keeps the LOW bytes;
``high * 256 + low`` is the exact 16-bit sample. (``torchvision.io.decode_png`` reads these files too, but
torchvision 0.29 deprecates its image codecs.) Single-channel 16-bit labels (mode I;16) are read directly.
Class ids are mapped to Cityscapes label ids with ``dasgen.labels.synthia_to_id``; a label someone converted to 8
bits is a bad pair. SYNTHIA has no official split: every pair is "train".
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from dasgen.datasets.base import (
    DECODE_ERRORS,
    BadPair,
    DatasetReader,
    Entry,
    PairProblem,
    decode_failure,
    files_by_stem,
    image_files_by_stem,
    pair_entries,
)
from dasgen.labels import synthia_to_id

MAX_SYNTHIA_CLASS = 22  # void 0 ... lanemarking 22 (SYNTHIA-RAND-CITYSCAPES README)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bit_depth(header: bytes) -> int | None:
    """Bit depth from a PNG's IHDR (the first 33 bytes of the file); None when it is not a PNG."""
    if len(header) < 33 or header[:8] != PNG_SIGNATURE or header[12:16] != b"IHDR":
        return None
    return struct.unpack(">B", header[24:25])[0]


def png_colour_type(header: bytes) -> int | None:
    """PNG colour type from IHDR (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA); None when it is not a PNG."""
    if len(header) < 33 or header[:8] != PNG_SIGNATURE or header[12:16] != b"IHDR":
        return None
    return header[25]


class WrongChannelLayout(ValueError):
    """A 16-bit PNG whose channels are not grey, RGB or RGBA (e.g. grey+alpha), which no SYNTHIA label is."""


class NotSixteenBit(ValueError):
    """The file is not a 16-bit PNG; ``depth`` is its bit depth, or None when it is not a PNG at all."""

    def __init__(self, depth: int | None):
        super().__init__("not a PNG file" if depth is None else f"{depth} bits per sample")
        self.depth = depth


def _one_byte_per_sample(path: Path, order: str) -> np.ndarray:
    """Decode a 16-bit multi-channel PNG keeping one byte of each sample: order "B" the high byte (Pillow's
    default unpacker), "L" the low byte. Returns uint8 (H, W, C)."""
    with Image.open(path) as im:
        tiles = []
        for tile in im.tile:  # (codec, extents, offset, rawmode) -- rawmode is e.g. "RGB;16B"
            args = tile[3]
            if isinstance(args, tuple):  # older Pillow: (rawmode, ...)
                args = (args[0].replace(";16B", f";16{order}"), *args[1:])
            else:
                args = args.replace(";16B", f";16{order}")
            tiles.append((*tile[:3], args))
        im.tile = tiles
        im.load()
        return np.asarray(im)


def read_png16(path: Path) -> np.ndarray:
    """Decode a 16-bit PNG (grey, RGB or RGBA) exactly: uint16 (H, W, C). Raises NotSixteenBit for any other
    file, and Pillow's errors for a broken one."""
    with open(path, "rb") as handle:
        header = handle.read(33)
    depth = png_bit_depth(header)
    if depth != 16:
        raise NotSixteenBit(depth)
    if png_colour_type(header) not in (0, 2, 6):
        layouts = {3: "palette", 4: "grey+alpha"}
        raise WrongChannelLayout(layouts.get(png_colour_type(header), f"colour type {png_colour_type(header)}"))
    with Image.open(path) as im:  # the header alone: Pillow's decompression-bomb guard runs here
        if im.mode.startswith("I;16"):
            im.load()
            return np.asarray(im).astype(np.uint16)[..., None]  # (H, W, 1)
    high = _one_byte_per_sample(path, "B").astype(np.uint16)
    low = _one_byte_per_sample(path, "L").astype(np.uint16)
    return (high << 8) | low  # (H, W, C)


def read_synthia_classes(root: Path, rel: str) -> np.ndarray:
    """SYNTHIA class ids of a label file: the first channel of the 16-bit PNG, uint16 (H, W)."""
    try:
        return read_png16(root / rel)[..., 0]
    except NotSixteenBit as error:
        what = "is not a PNG file" if error.depth is None else f"PNG has {error.depth} bits per sample (converted?)"
        reason = f"label {what}; SYNTHIA GT/LABELS must be 16-bit PNGs with the class id in the first channel"
        raise PairProblem(rel, reason) from error
    except WrongChannelLayout as error:
        raise PairProblem(rel, f"label has a wrong channel layout ({error}); SYNTHIA GT/LABELS are 16-bit RGB or "
                               "RGBA PNGs with the class id in the first channel") from error
    except DECODE_ERRORS as error:
        raise PairProblem(rel, decode_failure("label", error)) from error


class SynthiaReader(DatasetReader):
    """Pairs ``RGB/<id>.png`` with ``GT/LABELS/<id>.png``; labels come out as Cityscapes label ids."""

    kind = "synthia"
    splits = (None, "all", "train")

    def _list(self) -> tuple[list[Entry], list[BadPair]]:
        self._require_dir("RGB")
        images, problems = image_files_by_stem(self.root, "RGB", (".png",))
        existing: set[str] = set()
        if self.labelled:
            self._require_dir("GT/LABELS")
            existing = set(files_by_stem(self.root, "GT/LABELS", (".png",)).values())
        entries, missing = pair_entries(images, label_of if self.labelled else None, existing, lambda _: "train")
        return entries, problems + missing

    def _read_label(self, rel: str) -> np.ndarray:
        classes = read_synthia_classes(self.root, rel)
        if int(classes.max(initial=0)) > MAX_SYNTHIA_CLASS:
            outside = np.unique(classes[classes > MAX_SYNTHIA_CLASS])
            shown = ", ".join(str(v) for v in outside[:8]) + (" ..." if outside.size > 8 else "")
            raise PairProblem(rel, f"SYNTHIA class ids outside 0..{MAX_SYNTHIA_CLASS}: {shown}")
        return synthia_to_id(classes)


def label_of(id_: str) -> str:
    """The label path SYNTHIA's layout prescribes for an image id."""
    return f"GT/LABELS/{id_}.png"
