"""Shared fixtures: a tiny params file and a tiny prepared workspace (toy data, DDPM, g_0) for end-to-end tests.

The workspace is built once per test session through the stage functions (seconds on a CPU) and copied for each test
that needs to write into it, so tests stay independent.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses too: 2 shared cores oversubscribe badly

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from dasgen.config import config_from_dict, load_config

torch.set_num_threads(1)  # torch with 2 threads on 2 busy cores runs 10x slower than with 1

TINY_PARAMS = {
    "run": {"seed": 0, "device": "cpu"},
    "data": {"resolution": [16, 32]},
    "toy": {"height": 16, "width": 32, "n_source": 12, "n_target_train": 12, "n_target_val": 6},
    "diffusion": {"unet": {"block_out_channels": [16, 32], "attention_levels": [False, False], "norm_num_groups": 8},
                  "train": {"steps": 6, "batch_size": 4, "checkpoint_every": 3}},
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


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> Path:
    """A workspace with toy data, a scanned source, a 6-step DDPM and g_0 -- ready for `translate`."""
    from dasgen.stages.train_diffusion import run_train_diffusion
    from dasgen.stages.train_g0 import run_train_g0
    from dasgen.stages.scan import run_scan
    from dasgen.stages.toy import run_toy
    from dasgen.pipeline.workspace import Workspace

    root = tmp_path_factory.mktemp("tiny-workspace")
    config = load_config(write_tiny_params(root))
    ws = Workspace(root)
    run_toy(config, root=root, progress=False)
    run_scan(config, ws)
    run_train_diffusion(config, ws, progress=False)
    run_train_g0(config, ws, progress=False)
    return root


@pytest.fixture
def workspace(tiny_workspace, tmp_path) -> Path:
    """A private copy of the tiny workspace for a test that writes into it."""
    root = tmp_path / "ws"
    shutil.copytree(tiny_workspace, root)
    return root
