"""Shared fixtures: a tiny params file and a tiny prepared workspace (toy data, DDPM, g_0) for end-to-end tests.

The workspace is built once per test run through the stage functions (seconds on a CPU) -- once for all pytest-xdist
workers too (:func:`build_once`) -- and copied for each test that needs to write into it, so tests stay independent.
``make test`` runs the suite on two workers (``-n 2``): a test must not write outside its ``tmp_path`` or a copy of a
shared fixture, and must not rely on another test having run in the same process.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses too: 2 shared cores oversubscribe badly

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock

from dasgen.config import config_from_dict, load_config

torch.set_num_threads(1)  # torch with 2 threads on 2 busy cores runs 10x slower than with 1

TINY_PARAMS = {
    "run": {"seed": 0, "device": "cpu"},
    "data": {"resolution": [16, 32]},
    "toy": {"height": 16, "width": 32, "n_source": 12, "n_target_train": 12, "n_target_val": 6},
    # round trips at three levels up to t_N (not the shipped 25/50/100: each level is t U-Net passes per photo)
    "diffusion": {"unet": {"block_out_channels": [16, 32], "attention_levels": [False, False], "norm_num_groups": 8},
                  "train": {"steps": 6, "batch_size": 4, "checkpoint_every": 3}, "fidelity_levels": [5, 10, 20]},
    "segmenter": {"width": 8, "source_train": {"iters": 6, "batch_size": 4}},
    "ptl": {"N": 2, "t_final": 20, "steps_per_domain": 3, "images_per_domain": 5, "translate_batch_size": 4,
            "finetune": {"iters": 2, "batch_size": 4}},
}


def write_tiny_params(directory: Path, **overrides) -> Path:
    """Write the tiny params (plus ``section={...}`` overrides merged one level deep) to ``directory/params.yaml``."""
    params = {k: dict(v) for k, v in TINY_PARAMS.items()}
    for key, value in overrides.items():
        params.setdefault(key, {}).update(value)
    path = directory / "params.yaml"
    # every key written out, as in the shipped params.yaml: DVC reads each stage's params from the file itself
    path.write_text(yaml.safe_dump(config_from_dict(params).to_dict(), sort_keys=False))
    return path


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The directory ``build(root)`` fills, built once per test run and shared by every xdist worker: the first
    worker to ask builds it under a file lock, the others wait and reuse it (a failed build is retried by the next
    one). Read-only to tests: copy it to write into it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's temp directory, shared by its workers (each has its own below it)
    root, built = base / name, base / f"{name}.built"
    with FileLock(str(base / f"{name}.lock")):
        if not built.is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            build(root)
            built.touch()
    return root


def _build_tiny_workspace(root: Path) -> None:
    from dasgen.stages.train_diffusion import run_train_diffusion
    from dasgen.stages.train_g0 import run_train_g0
    from dasgen.stages.scan import run_scan
    from dasgen.stages.toy import run_toy
    from dasgen.pipeline.workspace import Workspace

    config = load_config(write_tiny_params(root))
    ws = Workspace(root)
    run_toy(config, root=root, progress=False)
    run_scan(config, ws)
    run_train_diffusion(config, ws, progress=False)
    run_train_g0(config, ws, progress=False)


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> Path:
    """A workspace with toy data, a scanned source, a 6-step DDPM and g_0 -- ready for `translate`. Read-only."""
    return build_once(tmp_path_factory, "tiny-workspace", _build_tiny_workspace)


@pytest.fixture
def workspace(tiny_workspace, tmp_path) -> Path:
    """A private copy of the tiny workspace for a test that writes into it."""
    root = tmp_path / "ws"
    shutil.copytree(tiny_workspace, root)
    return root


@pytest.fixture(scope="session")
def two_domains(tiny_workspace, tmp_path_factory) -> Path:
    """The tiny workspace with domains 1 and 2 (both of its domains) finished, built once per test run. Read-only."""
    from dasgen.pipeline.workspace import Workspace
    from dasgen.stages.translate import run_domain

    def build(root: Path) -> None:
        shutil.copytree(tiny_workspace, root, dirs_exist_ok=True)
        config, ws = load_config(root / "params.yaml"), Workspace(root)
        for n in (1, 2):
            run_domain(config, ws, n, progress=False)

    return build_once(tmp_path_factory, "two-domains", build)


@pytest.fixture
def two_domains_ws(two_domains, tmp_path) -> Path:
    """A private copy of :func:`two_domains` for a test that writes into it."""
    root = tmp_path / "ws"
    shutil.copytree(two_domains, root, symlinks=True)
    return root
