"""Shared glue for stages: config -> readers and devices; small JSON helpers. (Schedules: :mod:`.chains`, so the stages
that never touch the reverse-step maths do not depend on it in dvc.yaml.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dasgen.config import Config
from dasgen.datasets.base import DatasetReader, Entry
from dasgen.datasets.registry import open_dataset
from dasgen.errors import DasgenError
from dasgen.io.atomic import atomic_write_json
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


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DasgenError(f"{path}: not found (run the stage that writes it first)")
    return json.loads(path.read_text())


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
    record = read_json(ws.source_pairs)
    if config is not None:
        src = config.data.source
        expected = {"kind": src.kind, "root": canonical_root(src.root, ws.root), "split": src.split}
        found = {"kind": record.get("kind"), "split": record.get("split"),
                 "root": canonical_root(str(record.get("root")), ws.root)}
        if found != expected:
            key = next(k for k in expected if expected[k] != found[k])
            raise DasgenError(f"{ws.source_pairs}: scanned from source {key} {found[key]!r}, but params name "
                              f"data.source.{key} = {expected[key]!r}; run `dasgen scan` (or `dvc repro`) first")
    entries = [Entry(**e) for e in record["entries"]]
    return entries, record


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
