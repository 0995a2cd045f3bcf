"""Shared glue for stages: config -> readers and devices; small JSON helpers. (Schedules: :mod:`.chains`, so the stages
that never touch the reverse-step maths do not depend on it in dvc.yaml.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dasgen.config import Config
from dasgen.datasets.base import DatasetReader, Entry
from dasgen.datasets.registry import open_dataset
from dasgen.errors import DasgenError
from dasgen.io.atomic import atomic_write_json
from dasgen.io.state import read_state
from dasgen.pipeline.workspace import Workspace


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DasgenError("params.yaml: run.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def source_reader(config: Config, root: Path = Path(".")) -> DatasetReader:
    src = config.data.source
    return open_dataset(src.kind, root / src.root, split=src.split, labelled=True)


def target_reader(config: Config, split: str, *, labelled: bool, root: Path = Path(".")) -> DatasetReader:
    return open_dataset(config.data.target.kind, root / config.data.target.root, split=split, labelled=labelled)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


def read_json(path: Path, *, keys: dict | None = None, remedy: str = "run the stage that writes it first") -> dict:
    """A JSON state file written by a stage, checked (:func:`dasgen.io.state.read_state`): one line if damaged."""
    return read_state(path, keys=keys, remedy=remedy)


def canonical_root(root: str, ws_root: Path) -> str:
    """A dataset root as one spelling: resolved (``data/x/``, ``./data/x`` and a symlink to it are the same place),
    relative to the workspace when it lies inside it (so a moved or cloned workspace keeps its fingerprints), else
    absolute. Used wherever a root is compared or fingerprinted."""
    base = ws_root.resolve()
    path = (base / root).resolve()
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def load_source_pairs(ws: Workspace, config: Config | None = None) -> tuple[list[Entry], dict]:
    """The scan stage's usable source entries, and the whole record (for provenance).

    With ``config``, the scan must be of the dataset the params name (kind, root, split, bad-pair policy): a scan of
    another source would silently translate the wrong images, so it is refused with the command that redoes it.
    """
    remedy = "run `dasgen scan` (or `dvc repro`) to rewrite it"
    record = read_json(ws.source_pairs, keys={"kind": str, "root": str, "entries": list, "skipped": list},
                       remedy=remedy)
    if not record["entries"]:
        raise DasgenError(f"{ws.source_pairs}: holds no source pair; {remedy}")
    if config is not None:
        src = config.data.source
        expected = {"kind": src.kind, "root": canonical_root(src.root, ws.root), "split": src.split}
        found = {"kind": record.get("kind"), "split": record.get("split"),
                 "root": canonical_root(str(record.get("root")), ws.root)}
        if found != expected:
            key = next(k for k in expected if expected[k] != found[k])
            raise DasgenError(f"{ws.source_pairs}: scanned from source {key} {found[key]!r}, but params name "
                              f"data.source.{key} = {expected[key]!r}; run `dasgen scan` (or `dvc repro`) first")
    entries = [_entry(e, ws.source_pairs, number, remedy) for number, e in enumerate(record["entries"], start=1)]
    return entries, record


def _entry(item: Any, path: Path, number: int, remedy: str) -> Entry:
    """Entry ``number`` of a scan record, checked: an object of strings ``id``, ``image``, ``split`` and ``label``
    (string or null) and nothing else."""
    fields = {"id": str, "image": str, "label": (str, type(None)), "split": str}
    if not (isinstance(item, dict) and set(item) == set(fields)
            and all(isinstance(item[k], kind) for k, kind in fields.items())):
        raise DasgenError(f"{path}: entry {number} is not a source pair record (an object of {', '.join(fields)}); "
                          f"{remedy}")
    return Entry(**item)


def parse_domain_range(text: str, total: int) -> list[int]:
    """``"3"`` or ``"1-4"`` -> [domains]; each within 1..N."""
    try:
        first, _, last = text.partition("-")
        lo, hi = int(first), int(last or first)
    except ValueError:
        raise DasgenError(f"--domains {text!r}: expected N or FIRST-LAST, e.g. 1-4") from None
    if not 1 <= lo <= hi <= total:
        raise DasgenError(f"--domains {text!r}: must lie within 1..ptl.N = {total}")
    return list(range(lo, hi + 1))
