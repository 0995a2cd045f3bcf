"""Writing the toy datasets: the source in GTA5 layout and the target in Cityscapes layout, atomically, with
stale generator-owned files pruned and everything else left alone -- and only into a directory that is new, empty
or an earlier toy's (a GTA5 tree uses the very file names the toy writes)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from dasgen.errors import DasgenError
from dasgen.labels import color_palette, id_to_color, id_to_train_id
from dasgen.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, is_temp_name
from dasgen.datasets.toy.look import _check_geometry, appearance, render_sample
from dasgen.datasets.toy.scene import CITY, TOY_CLASSES, TOY_FORMAT_VERSION, TOY_LABEL_IDS

# ----------------------------------------------------------------------------------------------------------------
# Writing the two datasets
# ----------------------------------------------------------------------------------------------------------------
SUMMARY_FILE = "toy.json"  # written last: a directory holding it is a finished toy
IN_PROGRESS_FILE = ".dasgen-toy-incomplete"  # written first, removed last: a directory holding it is an unfinished toy


def _is_toy(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a toy of this generator: its summary, or the marker of an interrupted run."""
    if (out_dir / IN_PROGRESS_FILE).is_file():
        return True
    try:
        summary = json.loads((out_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "format_version" in summary and "label_ids" in summary


def _claim(out_dir: Path) -> None:
    """Mark ``out_dir`` as a toy being written, or refuse with one line: a non-empty directory that holds no toy may
    be a user's dataset, whose ``00001.png`` ... the generator would overwrite and prune."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DasgenError(f"refusing to write the toy datasets into {out_dir}: it exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_toy(out_dir):
        raise DasgenError(f"refusing to write the toy datasets into {out_dir}: it is not empty and holds no dasgen "
                          f"toy (no {SUMMARY_FILE}), so it may hold data of yours; choose an empty or new --out")
    atomic_write_text(out_dir / IN_PROGRESS_FILE, "unfinished dasgen toy: rerun `dasgen toy` to finish it\n")


def _png(image: Image.Image) -> bytes:
    """PNG bytes with no metadata (so the same pixels give the same bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _label_png(label: np.ndarray) -> bytes:
    """GTA5-style label: mode P whose index is the Cityscapes label id, with the Cityscapes colours."""
    image = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
    image.putpalette(color_palette())
    return _png(image)


def _write(path: Path, data: bytes, written: set[Path]) -> None:
    atomic_write_bytes(path, data, fsync=False)
    written.add(path)


_OWNED_NAME = re.compile(r"^(\d{5}\.png|" + CITY + r"_000000_\d{6}_(leftImg8bit|gtFine_labelIds|gtFine_labelTrainIds"
                         r"|gtFine_color)\.png)$")  # the only file names generate_toy writes in its folders


def _prune(dirs: Iterable[Path], keep: set[Path]) -> None:
    """Remove toy files a previous run with other counts left in our directories (and our leftover temporary files).

    Only names this generator writes are ever removed: a user's own file in the same folder stays where it is.
    """
    for folder in dirs:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not path.is_file() or path.is_symlink() or path in keep:
                continue
            # a temporary file of ours is ".<final name>.<hex>.tmp" (io.atomic.temp_name)
            final = path.name[1:].rsplit(".", 2)[0] if is_temp_name(path.name) else path.name
            if _OWNED_NAME.match(final):
                path.unlink()


def _progress(items: range, enabled: bool, what: str) -> Iterator[int]:
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=what)


def generate_toy(
    out_dir: Path,
    *,
    seed: int = 0,
    height: int = 32,
    width: int = 64,
    n_source: int = 300,
    n_target_train: int = 300,
    n_target_val: int = 100,
    progress: bool = False,
    rendering_gap: float = 1.0,
    colour_swap: bool = True,
    thin_object_scale: float = 1.0,
) -> dict:
    """Write the toy source (GTA5 layout) and target (Cityscapes layout) under ``out_dir``; return a summary.

    ``out_dir/source``: ``images/00001.png`` (RGB) and ``labels/00001.png`` (mode P, index = label id).
    ``out_dir/target``: ``leftImg8bit/{train,val}/toytown/toytown_000000_{i:06d}_leftImg8bit.png``; the val images
    have ``gtFine/val/toytown/..._gtFine_{labelIds,labelTrainIds,color}.png``, the train images no labels (they
    are the diffusion model's unlabelled training set). Deterministic: the same arguments give the same bytes, and a
    rerun over an existing directory rewrites it to exactly that (files of other counts are removed).
    ``out_dir/toy.json`` holds the summary, written last; ``out_dir`` must be new, empty or an earlier toy's (else
    DasgenError, nothing written). ``rendering_gap`` and ``colour_swap`` set the target's look
    (``appearance``); ``thin_object_scale`` widens the poles, signs and persons of both domains (``make_scene``).
    """
    for name, count in (("n_source", n_source), ("n_target_train", n_target_train), ("n_target_val", n_target_val)):
        if count < 0:
            raise DasgenError(f"toy {name} must be >= 0, got {count}")
    if n_source > 99999:
        raise DasgenError(f"toy n_source must be <= 99999 (GTA5 names are 5 digits), got {n_source}")
    _check_geometry(height, width, thin_object_scale)
    source_look, target_look = appearance(rendering_gap, colour_swap)
    out_dir = Path(out_dir)
    _claim(out_dir)
    written: set[Path] = set()
    src = out_dir / "source"
    for i in _progress(range(n_source), progress, "toy source"):
        image, label = render_sample(source_look, "source", "train", i, seed, height, width, thin_object_scale)
        _write(src / "images" / f"{i + 1:05d}.png", _png(Image.fromarray(image)), written)
        _write(src / "labels" / f"{i + 1:05d}.png", _label_png(label), written)

    tgt = out_dir / "target"
    for split, count in (("train", n_target_train), ("val", n_target_val)):
        for i in _progress(range(count), progress, f"toy target {split}"):
            image, label = render_sample(target_look, "target", split, i, seed, height, width, thin_object_scale)
            stem = f"{CITY}_000000_{i:06d}"
            rgb = tgt / "leftImg8bit" / split / CITY / f"{stem}_leftImg8bit.png"
            _write(rgb, _png(Image.fromarray(image)), written)
            if split == "val":
                gt = tgt / "gtFine" / split / CITY
                _write(gt / f"{stem}_gtFine_labelIds.png", _png(Image.fromarray(label)), written)
                _write(gt / f"{stem}_gtFine_labelTrainIds.png", _png(Image.fromarray(id_to_train_id(label))), written)
                colour = np.dstack([id_to_color(label), np.full(label.shape, 255, np.uint8)])  # RGBA, as Cityscapes
                _write(gt / f"{stem}_gtFine_color.png", _png(Image.fromarray(colour)), written)

    _prune(
        [src / "images", src / "labels"]
        + [tgt / "leftImg8bit" / s / CITY for s in ("train", "val")]
        + [tgt / "gtFine" / s / CITY for s in ("train", "val")],
        written,
    )
    summary = {
        "format_version": TOY_FORMAT_VERSION,
        "seed": seed,
        "height": height,
        "width": width,
        "n_source": n_source,
        "n_target_train": n_target_train,
        "n_target_val": n_target_val,
        "rendering_gap": rendering_gap,
        "colour_swap": colour_swap,
        "thin_object_scale": thin_object_scale,
        "classes": list(TOY_CLASSES),
        "label_ids": list(TOY_LABEL_IDS),
        "source": {"kind": "gta5", "root": "source"},
        "target": {"kind": "cityscapes", "root": "target", "city": CITY, "labelled_splits": ["val"]},
    }
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    (out_dir / IN_PROGRESS_FILE).unlink()
    return summary
