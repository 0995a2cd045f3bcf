"""An export survives a DVC round trip: dvc add, push to a local remote, git clone, dvc pull, verify passes."""

from __future__ import annotations

import shutil

import pytest

from dasgen.export.run import export_domain
from helpers.vcs import DVC, isolated_env, sh
from helpers.synthetic import build_synthetic_domain, label_loader_for, write_synthetic_source
from dasgen.artifact.verify import verify

pytestmark = pytest.mark.slow



@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_export_round_trips_through_a_dvc_remote(tmp_path):
    env = isolated_env(tmp_path)
    ids = [f"{i:05d}" for i in range(1, 6)]
    write_synthetic_source(tmp_path / "source", ids, height=24, width=40)
    domain = build_synthetic_domain(tmp_path / "domain", ids, height=24, width=40)

    repo = tmp_path / "repo"
    repo.mkdir()
    sh(["git", "init", "-q"], repo, env)
    sh(DVC + ["init", "-q"], repo, env)
    export_domain(domain, repo / "translated", fmt="cityscapes", label_loader=label_loader_for(tmp_path / "source"),
                  progress=False)
    sh(DVC + ["add", "-q", "translated"], repo, env)
    sh(DVC + ["remote", "add", "-d", "local", str(tmp_path / "remote")], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-q", "-m", "translated dataset"], repo, env)
    sh(DVC + ["push", "-q"], repo, env)

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "translated").exists()
    sh(DVC + ["pull", "-q"], clone, env)
    report = verify(clone / "translated")
    assert report.ok, report.summary()
    # 4 files per image + id_map.csv, README.md, id2label.json and the 3 rare-class-sampling files
    assert report.checked == len(ids) * 4 + 6
