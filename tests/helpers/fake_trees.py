"""Build small fake dataset trees on disk in the real GTA5 / SYNTHIA / Cityscapes / folder layouts.

Each builder writes a handful of tiny pairs (good ones, plus, with ``flaws=True``, one pair per kind of flaw real
copies have) and returns a ``FakeTree`` saying what a reader should find: the good ids with their exact arrays, and
for each bad id a fragment its reason must contain. Other tests can reuse these trees (``flaws=False`` for a clean
one). Import as ``from helpers.fake_trees import make_gta5_tree`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from dasgen.labels import color_palette

# Cityscapes label ids the fake scenes use: unlabeled, road, building, pole, vegetation, sky, car, caravan (ignored).
SCENE_IDS = (0, 7, 11, 17, 21, 23, 26, 29)
# SYNTHIA class ids: void, sky, building, road, car, pole, parking-slot (ignored), wall.
SYNTHIA_SCENE_CLASSES = (0, 1, 2, 3, 8, 7, 13, 21)


@dataclass
class FakeTree:
    """What a reader of ``root`` must find."""

    root: Path
    images: dict[str, np.ndarray] = field(default_factory=dict)  # good id -> exact RGB (None for lossy JPEG)
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # good id -> Cityscapes label ids
    bad: dict[str, str] = field(default_factory=dict)  # bad id -> fragment of its reason
    splits: dict[str, str] = field(default_factory=dict)  # good or bad id -> split

    @property
    def good(self) -> list[str]:
        return sorted(self.images)

    def sizes(self) -> Counter:
        """``"WxH"`` -> number of good pairs of that size."""
        return Counter(f"{lab.shape[1]}x{lab.shape[0]}" for lab in self.labels.values())


# -- writers -------------------------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(array: np.ndarray, bit_depth: int) -> bytes:
    """Encode (H, W) or (H, W, C) C in {1, 2, 3, 4} (grey, grey+alpha, RGB, RGBA) as a PNG of ``bit_depth`` 8 or 16 (big-endian samples), written
    by hand so the 16-bit multi-channel files are real ones, not something Pillow produced.
    """
    array = array if array.ndim == 3 else array[..., None]
    height, width, channels = array.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = array.astype(dtype).reshape(height, width * channels)  # (H, W*C) samples per scanline
    # Cycle through filter types 0 (None), 2 (Up) and 1 (Sub) so the decoder has to undo real filters.
    bpp = channels * bit_depth // 8  # bytes per pixel
    raw = bytearray()
    previous = np.zeros(width * bpp, dtype=np.int16)
    for y in range(height):
        row = np.frombuffer(rows[y].tobytes(), dtype=np.uint8).astype(np.int16)
        if y % 3 == 1:
            raw += b"\x02" + ((row - previous) % 256).astype(np.uint8).tobytes()
        elif y % 3 == 2:
            left = np.concatenate([np.zeros(bpp, np.int16), row[:-bpp]])
            raw += b"\x01" + ((row - left) % 256).astype(np.uint8).tobytes()
        else:
            raw += b"\x00" + row.astype(np.uint8).tobytes()
        previous = row
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(bytes(raw))) + _chunk(
        b"IEND", b""
    )


def write_png16(path: Path, array: np.ndarray) -> None:
    """Write uint16 (H, W, C) as a 16-bit PNG (C = 1, 3 or 4; SYNTHIA's GT/LABELS have 3 or 4)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(array, 16))


def write_rgb(path: Path, image: np.ndarray) -> None:
    """Write uint8 (H, W, 3) with Pillow; the format follows the suffix (.png, .jpg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path)


def write_label(path: Path, ids: np.ndarray, mode: str = "L") -> None:
    """Write uint8 (H, W) label ids as mode L, or mode P with the Cityscapes palette (GTA5's format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    image = Image.frombytes(mode, (ids.shape[1], ids.shape[0]), ids.tobytes())  # pixel value = label id
    if mode == "P":
        image.putpalette(color_palette())
    image.save(path)


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its length, as an interrupted download would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_bomb_png(path: Path, width: int = 10_000, height: int = 10_000) -> None:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression-bomb shape)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + idat + _chunk(b"IEND", b""))


# -- scenes --------------------------------------------------------------------------------------------------------
def scene_label(rng: np.random.Generator, height: int, width: int, values=SCENE_IDS) -> np.ndarray:
    """A blocky label using every value of ``values`` at least once (uint8 (H, W), or int64 for large values)."""
    blocks = rng.choice(np.asarray(values), size=((height + 3) // 4, (width + 3) // 4))
    label = np.kron(blocks, np.ones((4, 4), dtype=blocks.dtype))[:height, :width]
    label.flat[: len(values)] = values  # make sure every value appears
    return label


def scene_image(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """An RGB image whose colour follows the label, plus noise (never a blank frame)."""
    base = (np.asarray(label, dtype=np.int64)[..., None] * np.array([37, 91, 53])) % 200
    noise = rng.integers(0, 50, size=(*label.shape, 3))
    return (base + noise).astype(np.uint8)


# -- trees ---------------------------------------------------------------------------------------------------------
GTA5_SPLITS = {"trainIds": [1, 2, 5, 7, 9], "valIds": [3, 6, 8], "testIds": [4, 10, 11]}


def make_gta5_tree(root: Path, *, flaws: bool = True, split_mat: bool = True, seed: int = 0) -> FakeTree:
    """GTA5 layout: images/%05d.png, labels/%05d.png (mode P), split.mat. Good: 1-4 (two sizes, like the real
    1914x1052 / 1914x1046). Flaws: 5 size mismatch, 6 missing label, 7 blank 16x10 frame, 8 truncated label,
    9 label id 40, 10 label saved as RGB colours, 11 truncated image.
    """
    rng = np.random.default_rng(seed)
    tree = FakeTree(root)
    number_split = {n: key.removesuffix("Ids") for key, ns in GTA5_SPLITS.items() for n in ns}  # "trainIds" -> "train"
    if split_mat:
        columns = {key: np.asarray(ns, dtype=np.float64)[:, None] for key, ns in GTA5_SPLITS.items()}  # (N, 1)
        scipy.io.savemat(root / "split.mat", columns)
    for number, (height, width) in zip((1, 2, 3, 4), ((20, 32), (20, 32), (18, 32), (20, 32))):
        id_ = f"{number:05d}"
        label = scene_label(rng, height, width)
        image = scene_image(rng, label)
        write_rgb(root / "images" / f"{id_}.png", image)
        write_label(root / "labels" / f"{id_}.png", label, mode="P")
        tree.images[id_], tree.labels[id_] = image, label
    if flaws:
        label = scene_label(rng, 20, 32)
        write_rgb(root / "images/00005.png", scene_image(rng, label))
        write_label(root / "labels/00005.png", label[:18], mode="P")
        tree.bad["00005"] = "size mismatch: image is 32x20 but label is 32x18"
        write_rgb(root / "images/00006.png", scene_image(rng, label))
        tree.bad["00006"] = "image without label"
        write_rgb(root / "images/00007.png", np.zeros((10, 16, 3), np.uint8))
        write_label(root / "labels/00007.png", np.zeros((10, 16), np.uint8), mode="P")
        tree.bad["00007"] = "blank frame"
        write_rgb(root / "images/00008.png", scene_image(rng, label))
        write_label(root / "labels/00008.png", label, mode="P")
        truncate(root / "labels/00008.png")
        tree.bad["00008"] = "cannot decode label (truncated or corrupt file)"
        outside = label.copy()
        outside[0, :3] = 40
        write_rgb(root / "images/00009.png", scene_image(rng, label))
        write_label(root / "labels/00009.png", outside, mode="P")
        tree.bad["00009"] = "label ids outside 0..33: 40"
        write_rgb(root / "images/00010.png", scene_image(rng, label))
        write_rgb(root / "labels/00010.png", scene_image(rng, label))
        tree.bad["00010"] = "mode RGB"
        write_rgb(root / "images/00011.png", scene_image(rng, label))
        write_label(root / "labels/00011.png", label, mode="P")
        truncate(root / "images/00011.png")
        tree.bad["00011"] = "cannot decode image (truncated or corrupt file)"
    for n in range(1, 12):
        tree.splits[f"{n:05d}"] = number_split[n] if split_mat else "train"
    return tree


def make_synthia_tree(root: Path, *, flaws: bool = True, seed: int = 0) -> FakeTree:
    """SYNTHIA-RAND-CITYSCAPES layout: RGB/%07d.png, GT/LABELS/%07d.png as 16-bit PNGs (class id in channel 0,
    instance id in channel 1; 3 and 4 channels). ``tree.labels`` holds the SYNTHIA class ids (map them with
    ``synthia_to_id``). Flaws: 3 label converted to 8-bit RGB, 4 truncated label, 5 missing label, 6 class id 30.
    """
    rng = np.random.default_rng(seed)
    tree = FakeTree(root)

    def label16(classes: np.ndarray, channels: int) -> np.ndarray:
        out = np.zeros((*classes.shape, channels), dtype=np.uint16)
        out[..., 0] = classes
        out[..., 1] = rng.integers(0, 4000, size=classes.shape)  # instance ids, > 255 like real ones
        if channels == 4:
            out[..., 3] = 65535
        return out

    for number, channels in ((0, 3), (1, 4), (2, 3)):
        id_ = f"{number:07d}"
        classes = scene_label(rng, 16, 24, SYNTHIA_SCENE_CLASSES)
        image = scene_image(rng, classes)
        write_rgb(root / "RGB" / f"{id_}.png", image)
        write_png16(root / "GT/LABELS" / f"{id_}.png", label16(classes, channels))
        tree.images[id_], tree.labels[id_] = image, classes
    if flaws:
        classes = scene_label(rng, 16, 24, SYNTHIA_SCENE_CLASSES)
        for number in (3, 4, 5, 6):
            write_rgb(root / "RGB" / f"{number:07d}.png", scene_image(rng, classes))
        converted = np.repeat(classes[..., None], 3, axis=2).astype(np.uint8)
        (root / "GT/LABELS/0000003.png").write_bytes(png_bytes(converted, 8))
        tree.bad["0000003"] = "PNG has 8 bits per sample"
        write_png16(root / "GT/LABELS/0000004.png", label16(classes, 3))
        truncate(root / "GT/LABELS/0000004.png")
        tree.bad["0000004"] = "cannot decode label (truncated or corrupt file)"
        tree.bad["0000005"] = "image without label"
        outside = classes.copy()
        outside[0, 0] = 30
        write_png16(root / "GT/LABELS/0000006.png", label16(outside, 3))
        tree.bad["0000006"] = "SYNTHIA class ids outside 0..22: 30"
    tree.splits = {id_: "train" for id_ in [*tree.images, *tree.bad]}
    return tree


CITYSCAPES_GOOD = {
    "aachen_000000_000019": "train",
    "aachen_000002_000019": "train",
    "bochum_000000_000313": "train",
    "frankfurt_000000_000294": "val",
    "berlin_000000_000019": "test",
}


def make_cityscapes_tree(root: Path, *, flaws: bool = True, seed: int = 0) -> FakeTree:
    """Cityscapes layout: leftImg8bit/<split>/<city>/<id>_leftImg8bit.png and gtFine/.../<id>_gtFine_labelIds.png
    (mode L), with the _color and _labelTrainIds siblings a real copy has. Flaws: train image
    aachen_000001_000019 without label, and a misnamed image leftImg8bit/train/aachen/aachen_extra_leftImg8bit.png.
    """
    rng = np.random.default_rng(seed)
    tree = FakeTree(root)
    for id_, split in CITYSCAPES_GOOD.items():
        city = id_.split("_")[0]
        label = scene_label(rng, 16, 32)
        image = scene_image(rng, label)
        write_rgb(root / "leftImg8bit" / split / city / f"{id_}_leftImg8bit.png", image)
        gt = root / "gtFine" / split / city
        write_label(gt / f"{id_}_gtFine_labelIds.png", label)
        write_label(gt / f"{id_}_gtFine_labelTrainIds.png", np.full_like(label, 255))
        write_rgb(gt / f"{id_}_gtFine_color.png", np.zeros((16, 32, 3), np.uint8))
        tree.images[id_], tree.labels[id_], tree.splits[id_] = image, label, split
    if flaws:
        label = scene_label(rng, 16, 32)
        write_rgb(root / "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png", scene_image(rng, label))
        tree.bad["aachen_000001_000019"] = "image without label"
        tree.splits["aachen_000001_000019"] = "train"
        write_rgb(root / "leftImg8bit/train/aachen/aachen_extra_leftImg8bit.png", scene_image(rng, label))
        tree.bad["aachen_extra"] = "file name is not"
    return tree


def make_folder_tree(root: Path, *, flaws: bool = True, seed: int = 0) -> FakeTree:
    """Folder layout: images/<stem>.png|.jpg, labels/<stem>.png (mode L and P). Good: "a" (png, mode L label),
    "b" (jpg, mode P label). Flaws: "c" has both c.png and c.jpg, "d" has no label,
    "e" is a decompression bomb, "f" is an empty file.
    """
    rng = np.random.default_rng(seed)
    tree = FakeTree(root)
    label = scene_label(rng, 12, 20)
    image = scene_image(rng, label)
    write_rgb(root / "images/a.png", image)
    write_label(root / "labels/a.png", label, mode="L")
    tree.images["a"], tree.labels["a"] = image, label
    label_b = scene_label(rng, 14, 20)
    write_rgb(root / "images/b.jpg", scene_image(rng, label_b))
    write_label(root / "labels/b.png", label_b, mode="P")
    tree.images["b"], tree.labels["b"] = None, label_b
    if flaws:
        write_rgb(root / "images/c.png", image)
        write_rgb(root / "images/c.jpg", image)
        write_label(root / "labels/c.png", label)
        tree.bad["c"] = "several images share the id"
        write_rgb(root / "images/d.png", image)
        tree.bad["d"] = "image without label"
        write_bomb_png(root / "images/e.png")
        write_label(root / "labels/e.png", label)
        tree.bad["e"] = "decompression-bomb"
        (root / "images/f.png").write_bytes(b"")
        write_label(root / "labels/f.png", label)
        tree.bad["f"] = "not a readable image file"
    tree.splits = {id_: "all" for id_ in [*tree.images, *tree.bad]}
    return tree
