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
from dasgen.store.atomic import atomic_write_json
from dasgen.stages.workspace import Workspace


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
    return open_dataset(config.data.target_kind, root / config.data.target_root, split=split, labelled=labelled)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DasgenError(f"{path}: not found (run the stage that writes it first)")
    return json.loads(path.read_text())


def load_source_pairs(ws: Workspace) -> tuple[list[Entry], dict]:
    """The scan stage's usable source entries, and the whole record (for provenance)."""
    record = read_json(ws.source_pairs)
    entries = [Entry(**e) for e in record["entries"]]
    return entries, record
