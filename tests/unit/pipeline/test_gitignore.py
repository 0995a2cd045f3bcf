"""The repo's .gitignore must not hide what DVC needs git to see: `dvc repro` refuses to run when dvc.lock is
git-ignored ("ERROR: '.../dvc.lock' is git-ignored"), and the metrics it writes uncached are for git to commit."""

import shutil
import subprocess

import pytest
import yaml

from helpers import REPO


def _metric_paths() -> list[str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    paths = []
    for stage in stages.values():
        for kind in ("metrics", "plots"):
            for entry in stage.get(kind, []):
                paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dvc_lock_and_metrics_are_not_git_ignored(tmp_path):
    # A scratch repo with only the shipped .gitignore: the answer does not depend on this checkout's state.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    paths = ["dvc.lock", "dvc.yaml", "params.yaml", *_metric_paths()]
    assert len(paths) > 3, "dvc.yaml declares no metrics or plots"
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=tmp_path, capture_output=True,
                             text=True).stdout.split()
    assert ignored == [], f"git-ignored, but DVC needs git to see them: {ignored}"
