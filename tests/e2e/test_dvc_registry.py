"""The registry recipe of docs/artifact.md: a separate git project gets the translated dataset from a dasgen repo
(DVC local remote) by the artifact name that dvc.yaml declares, and by path with ``dvc import``, then reads it with
torchvision."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import write_tiny_params
from dasgen.artifact.verify import verify
from dasgen.config import load_config
from dasgen.pipeline.dvc_yaml import ARTIFACT_NAME, build_pipeline
from dasgen.pipeline.workspace import Workspace
from dasgen.stages.export import run_export
from dasgen.stages.scan import run_scan
from helpers.vcs import DVC, isolated_env, sh
from helpers.synthetic import build_synthetic_domain, write_synthetic_source

pytestmark = pytest.mark.slow

IDS = [f"{i:05d}" for i in range(1, 7)]


def dasgen_repo(repo: Path, remote: Path, env: dict[str, str]) -> None:
    """A dasgen project whose last domain is finished: its dvc.yaml holds the generated export stage (deps limited to
    what this small repo has: no dasgen source tree here) and the generated ``artifacts:``; the export runs and is
    committed (as ``dvc repro`` would), a git tag versions the artifact and ``dvc push`` publishes it to a local
    remote."""
    repo.mkdir()
    sh(["git", "init", "-q"], repo, env)
    sh(DVC + ["init", "-q"], repo, env)
    write_synthetic_source(repo / "source", IDS, height=24, width=48)
    config = load_config(write_tiny_params(repo, data={"source": {"kind": "gta5", "root": "source"}}))
    ws = Workspace(repo)
    run_scan(config, ws)
    build_synthetic_domain(ws.domain_dir(2, 2), IDS, height=16, width=32, domain=2)
    pipeline = build_pipeline(config, ws)
    stage = pipeline["stages"]["export"]
    stage["deps"] = [dep for dep in stage["deps"] if (repo / dep).exists()]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"export": stage}, "artifacts": pipeline["artifacts"]},
                                                  sort_keys=False))
    run_export(config, ws, progress=False)  # what the stage's `dasgen export --force` does, without a second Python
    sh(DVC + ["commit", "-q", "-f", "export"], repo, env)  # records the stage's run in dvc.lock, as `dvc repro` would
    with open(repo / ".dvc" / "config", "a") as config_file:  # = dvc remote add -d local <remote>
        config_file.write(f"[core]\n    remote = local\n['remote \"local\"']\n    url = {remote}\n")
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-q", "-m", "translated dataset"], repo, env)
    # a registry version: DVC (and Studio) read artifact versions from annotated git tags named <artifact>@v<semver>
    sh(["git", "tag", "-a", f"{ARTIFACT_NAME}@v0.1.0", "-m", "translated dataset v0.1.0"], repo, env)
    sh(DVC + ["push", "-q"], repo, env)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_separate_project_gets_the_translated_dataset_and_reads_it_with_torchvision(tmp_path):
    from torchvision.datasets import Cityscapes

    env = isolated_env(tmp_path, OMP_NUM_THREADS="1")
    registry = tmp_path / "dasgen-project"
    dasgen_repo(registry, tmp_path / "remote", env)

    colleague = tmp_path / "colleague"
    colleague.mkdir()
    sh(["git", "init", "-q"], colleague, env)
    sh(DVC + ["init", "-q"], colleague, env)
    sh(DVC + ["import", "-q", str(registry), "data/export", "-o", "translated"], colleague, env)  # pinned, updatable
    sh(DVC + ["artifacts", "get", "-q", str(registry), ARTIFACT_NAME, "-o", "by-name"], colleague, env)  # latest
    sh(["git", "add", "-A"], colleague, env)
    sh(["git", "commit", "-q", "-m", "use the translated dataset"], colleague, env)

    for got in (colleague / "translated", colleague / "by-name"):
        report = verify(got)
        assert report.ok, report.summary()
        ds = Cityscapes(str(got), split="train", mode="fine", target_type="semantic")
        assert len(ds) == len(IDS)
        image, label_ids = ds[0]
        assert image.size == (32, 16) and np.array(label_ids).dtype == np.uint8
    assert (colleague / "translated.dvc").is_file()
    assert (registry / "data" / "export" / "manifest.json").read_bytes() == (
        colleague / "translated" / "manifest.json").read_bytes()
