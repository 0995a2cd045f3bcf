"""git and DVC in a test: an environment of their own (no user config, no analytics) and a checked runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DVC = [sys.executable, "-m", "dvc"]


def isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The process environment with git and DVC kept inside ``tmp_path``: a throwaway HOME, git identity and config,
    DVC's site cache, no analytics."""
    return {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"),
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": str(tmp_path / "gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(tmp_path / "home"),
        **extra,
    }


def sh(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run ``args`` in ``cwd``; fail the test with its output unless it exits 0."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout
