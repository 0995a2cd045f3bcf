"""`dvc repro` end to end on tiny params inside a temporary git repository (slow: about a minute).

Checks what the pipeline promises: one `dvc repro` builds everything, a second does nothing, and changing an `sgg`
param re-runs the domain stages but not the diffusion training.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import write_tiny_params

from helpers import REPO
from helpers.vcs import isolated_env

BIN = Path(sys.executable).parent


def run(cwd: Path, *args: str) -> str:
    env = isolated_env(cwd.parent, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.mark.slow
def test_dvc_repro_runs_everything_then_nothing_then_only_what_a_change_affects(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(REPO / "dasgen", repo / "dasgen", ignore=shutil.ignore_patterns("__pycache__"))
    write_tiny_params(repo)
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "git", "commit", "-q", "--allow-empty", "-m", "start")  # DVCLive wants one
    run(repo, "dasgen", "pipeline", "--write")
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert {"toy", "scan", "train_diffusion", "train_g0", "domain_001", "domain_002", "summarize", "export"} <= set(stages)

    run(repo, "dvc", "repro")
    assert (repo / "data/export/manifest.json").is_file()
    assert (repo / "data/domains/002/index.parquet").is_file()
    run(repo, "dasgen", "verify", "data/export")
    metrics = json.loads(run(repo, "dvc", "metrics", "show", "--json"))
    assert metrics  # dvc reads the declared metrics files
    assert "up to date" in run(repo, "dvc", "status")
    assert "Running stage" not in run(repo, "dvc", "repro")

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.setdefault("sgg", {})["lambda"] = 40.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    status = run(repo, "dvc", "status")
    assert "domain_001" in status and "domain_002" in status
    assert "train_diffusion" not in status and "train_g0" not in status

    # A knob without effect on the results (a memory budget) re-runs nothing, and translate redoes no domain.
    params["sgg"]["lambda"] = 80.0
    params["sgg"]["max_copies_per_pass"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert "up to date" in run(repo, "dvc", "status")
    log = run(repo, "dasgen", "translate", "--domains", "1-2")
    assert "domain 1: already complete" in log and "domain 2: already complete" in log

    # An edit that changes no computation: DVC re-runs every stage (it hashes bytes), each finds its work done.
    before = _tree_digests(repo / "data")
    with open(repo / "dasgen" / "config.py", "a") as source:
        source.write("\n# a comment changes no result\n")
    log = run(repo, "dvc", "repro")
    assert "Running stage 'train_diffusion'" in log and "diffusion: resuming from step 6 of 6" in log
    assert "g_0: resuming from iteration 6 of 6" in log
    assert "domain 1: already complete" in log and "domain 2: already complete" in log
    assert _tree_digests(repo / "data") == before  # every byte of data/ kept


def _tree_digests(directory: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}
