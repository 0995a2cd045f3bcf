"""A stage run by ``dvc repro`` from a ``dvc.yaml`` that ``params.yaml`` no longer generates stops at once.

``dvc.yaml`` is generated (:mod:`dasgen.pipeline.dvc_yaml`): after a change of ``ptl.N`` or ``ptl.domains_per_stage``
without ``dasgen pipeline --write``, ``dvc repro`` would run the old chain of domains -- hours of translation under
the new schedule -- and only then fail on a domain's missing metrics. DVC names the stage it runs in the environment
(``DVC_STAGE``, and the repository in ``DVC_ROOT``), so every stage command checks the file first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dasgen.config import Config
from dasgen.errors import DasgenError


def check_dvc_stage(config: Config, environ: Mapping[str, str] = os.environ) -> None:
    """Under ``dvc repro`` (``DVC_STAGE`` set), raise one line naming the command when ``dvc.yaml`` is stale."""
    if "DVC_STAGE" not in environ:
        return
    from dasgen.pipeline.dvc_yaml import render_pipeline

    path = Path(environ.get("DVC_ROOT", ".")) / "dvc.yaml"
    if path.is_file() and path.read_text(encoding="utf-8") != render_pipeline(config):
        raise DasgenError(f"{path}: out of date with params.yaml (ptl.N, ptl.domains_per_stage or the code "
                          f"changed), so `dvc repro` would run stage {environ['DVC_STAGE']!r} of an old "
                          "pipeline; run `dasgen pipeline --write`, then `dvc repro` again")
