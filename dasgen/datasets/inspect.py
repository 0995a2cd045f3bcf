"""``dasgen inspect``: decode every pair of a dataset once and report what a run would see.

The report says how many pairs are usable, which are bad and why (the flaws real GTA5/SYNTHIA copies have), the
image sizes present, and the pixel count of each trainId (to spot a wrong label mapping before hours of training:
a SYNTHIA copy read with the wrong decoder shows every pixel as ignore). The dict is JSON-ready once keys are
strings; ``format_report`` renders it for people.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dasgen.datasets.base import BadPair, BadPairError, DatasetReader
from dasgen.labels import IGNORE_INDEX, NUM_TRAIN_CLASSES, TRAIN_ID_NAMES, id_to_train_id
from dasgen.io.atomic import is_temp_name

MAX_BAD_SHOWN = 20  # format_report lists this many bad pairs, then counts the rest


def inspect_dataset(reader: DatasetReader, *, progress: bool = False) -> dict:
    """Decode every entry of ``reader`` and summarise it.

    Returns ``{"kind", "root", "pairs": usable pairs, "unread": [{"path", "reason"}] (:func:`unread_files`),
    "bad": [{"id", "reason", "file"}] sorted by id,
    "sizes": {"WxH": count}, "class_pixels": {trainId: pixels}}``; ``class_pixels`` holds trainIds 0..18 and 255
    (ignore) over the usable pairs, and is empty for an unlabelled reader. ``progress`` shows a rich progress bar
    on stderr.
    """
    bad: list[BadPair] = reader.listing_problems()
    sizes: Counter[str] = Counter()
    counts = np.zeros(256, dtype=np.int64)  # pixels per trainId
    labelled = False
    entries = reader.entries()
    with _progress_bar(progress) as bar:
        task = bar.add_task(f"inspect {reader.kind}", total=len(entries))
        for entry in entries:
            bar.advance(task)
            try:
                sample = reader.load(entry)
            except BadPairError as error:
                bad.append(error.bad)
                continue
            height, width = sample.image.shape[:2]
            sizes[f"{width}x{height}"] += 1
            if sample.label is not None:
                labelled = True
                counts += np.bincount(id_to_train_id(sample.label).ravel(), minlength=256)
    class_pixels: dict[int, int] = {}
    if labelled:
        class_pixels = {t: int(counts[t]) for t in (*range(NUM_TRAIN_CLASSES), IGNORE_INDEX)}
    return {
        "kind": reader.kind,
        "root": str(reader.root),
        "pairs": sum(sizes.values()),
        "unread": unread_files(reader, bad),
        "bad": [{"id": b.id, "reason": b.reason, "file": b.file} for b in sorted(bad, key=lambda b: (b.id, b.file))],
        "sizes": dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "class_pixels": class_pixels,
    }


def unread_files(reader: DatasetReader, bad: list[BadPair]) -> list[dict[str, str]]:
    """What sits in the dataset's image and label folders but no run will read, each with a reason: orphan labels
    (a label file with no image), stray directories (the readers do not recurse), dangling symlinks anywhere under
    the root. Sorted by path; files named by a bad pair are not repeated here."""
    root = reader.root
    entries = reader.entries()
    used = {e.image for e in entries} | {e.label for e in entries if e.label} | {b.file for b in bad}
    image_dirs = {str(PurePosixPath(e.image).parent) for e in entries}
    label_dirs = {str(PurePosixPath(e.label).parent) for e in entries if e.label}
    label_tails = {PurePosixPath(e.label).name[len(e.id):] for e in entries
                   if e.label and PurePosixPath(e.label).name.startswith(e.id)}  # e.g. ".png", "_gtFine_labelIds.png"
    found: dict[str, str] = {}
    for folder in sorted(image_dirs | label_dirs):
        directory = root / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            rel = f"{folder}/{path.name}"
            if path.is_symlink() and not path.exists():
                found[rel] = "dangling symlink"
            elif path.is_dir():
                found[rel] = "stray directory (not read: dataset folders are not searched recursively)"
            elif (folder in label_dirs and rel not in used and not is_temp_name(path.name)
                  and any(path.name.endswith(tail) for tail in label_tails)):
                found[rel] = "orphan label (no image with its id)"
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and not path.exists():
                found.setdefault(path.relative_to(root).as_posix(), "dangling symlink")
    return [{"path": os.fsencode(p).decode("utf-8", "backslashreplace"), "reason": r} for p, r in sorted(found.items())]


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def format_report(report: dict) -> str:
    """Render an ``inspect_dataset`` report (or its JSON round trip, with string keys) as plain text tables."""
    console = Console(file=io.StringIO(), width=100, color_system=None, force_terminal=False)
    console.print(
        f"{report['kind']} at {report['root']}: {report['pairs']} usable pairs, {len(report['bad'])} bad",
        highlight=False,
    )
    sizes = Table(title="image sizes", title_justify="left")
    sizes.add_column("W x H")
    sizes.add_column("pairs", justify="right")
    for size, count in report["sizes"].items():
        sizes.add_row(size, str(count))
    console.print(sizes)
    pixels = {int(k): int(v) for k, v in report["class_pixels"].items()}
    if pixels:
        total = sum(pixels.values()) or 1
        classes = Table(title="pixels per trainId", title_justify="left")
        for column, justify in (("trainId", "right"), ("class", "left"), ("pixels", "right"), ("share", "right")):
            classes.add_column(column, justify=justify)
        for train_id, count in sorted(pixels.items()):
            name = TRAIN_ID_NAMES[train_id] if train_id < NUM_TRAIN_CLASSES else "ignore"
            classes.add_row(str(train_id), name, str(count), f"{100 * count / total:.2f}%")
        console.print(classes)
    if report["bad"]:
        bad = Table(title="bad pairs", title_justify="left")
        bad.add_column("id")
        bad.add_column("file")
        bad.add_column("reason")
        for item in report["bad"][:MAX_BAD_SHOWN]:
            bad.add_row(item["id"], item.get("file", ""), item["reason"])
        console.print(bad)
        if len(report["bad"]) > MAX_BAD_SHOWN:
            console.print(f"... and {len(report['bad']) - MAX_BAD_SHOWN} more bad pairs", highlight=False)
    if report.get("unread"):
        unread = Table(title="not read by any run", title_justify="left")
        unread.add_column("path")
        unread.add_column("why")
        for item in report["unread"][:MAX_BAD_SHOWN]:
            unread.add_row(item["path"], item["reason"])
        console.print(unread)
        if len(report["unread"]) > MAX_BAD_SHOWN:
            console.print(f"... and {len(report['unread']) - MAX_BAD_SHOWN} more", highlight=False)
    return console.file.getvalue()
