"""Shared glue for stages: config -> readers, schedules, devices; small JSON helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dasgen.config import Config, domain_noise_levels
from dasgen.datasets.base import DatasetReader, Entry
from dasgen.datasets.registry import open_dataset
from dasgen.diffusion.schedule import NoiseSchedule, evenly_spaced_steps
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


def base_schedule(config: Config) -> NoiseSchedule:
    """The DDPM schedule of Sec. 5.1 (linear betas over T steps)."""
    d = config.diffusion
    return NoiseSchedule.linear(d.num_train_timesteps, d.beta_start, d.beta_end)


def domain_chain(config: Config, n: int) -> NoiseSchedule:
    """The reverse chain of domain n: phi^{t_n} on all t_n steps (paper) or respaced to ``ptl.steps_per_domain``."""
    t_n = domain_noise_levels(config.ptl)[n - 1]
    chain = base_schedule(config)
    if config.ptl.steps_per_domain is None or config.ptl.steps_per_domain >= t_n:
        return chain.truncated(t_n)
    return chain.respaced(evenly_spaced_steps(t_n, config.ptl.steps_per_domain))


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
