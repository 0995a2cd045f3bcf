"""``ptl.keep_segmenters``: which intermediate segmenter checkpoints g_n stay on disk once they are no longer needed.

Each domain's g_n is only read by domain n+1 (and the contact sheet reads g_{N-1}); at paper scale 600 of them take
~100 GB, twice counting DVC's cache (docs/scale-out.md). ``stage_last`` keeps what can be read again: the last g_n of
each DVC stage -- the next stage's input, where a re-run of a stage starts from -- g_{N-1} and g_N.
"""

from __future__ import annotations

import json

from dasgen.artifact.schema import CHECKSUMS_FILE
from dasgen.config import Config
from dasgen.pipeline.common import write_json
from dasgen.pipeline.workspace import Workspace
from dasgen.segment.checkpoint import sidecar_path


def keeps_segmenter(config: Config, n: int) -> bool:
    """Whether g_n stays on disk once domain n+1 is made: always with ``ptl.keep_segmenters: all``; with
    ``stage_last`` only for the last domain of each DVC stage, g_{N-1} (the contact sheet's guide) and g_N."""
    ptl = config.ptl
    return ptl.keep_segmenters == "all" or n >= ptl.N - 1 or n % ptl.domains_per_stage == 0


def recorded_segmenter_sha256(config: Config, ws: Workspace, n: int) -> str | None:
    """g_n's sha256 as its finished domain recorded it (``provenance.json``), or None: what the next domain's
    fingerprint uses once the file itself is removed."""
    directory = ws.domain_dir(n, config.ptl.N)
    if n < 1 or not (directory / CHECKSUMS_FILE).is_file() or not (directory / "provenance.json").is_file():
        return None
    try:
        recorded = json.loads((directory / "provenance.json").read_text()).get("segmenter_out_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, str) else None


def prune_segmenter(config: Config, ws: Workspace, n: int) -> bool:
    """Remove g_n (and its sidecar) when :func:`keeps_segmenter` says so; call once domain n+1 is complete.

    The domain's ``checksums.json`` drops the two files first (``verify`` then still passes), and its provenance
    keeps g_n's sha256 for the next domain's fingerprint. Idempotent: a run killed half-way finishes the job on the
    next call. Returns True when something was removed."""
    if n < 1 or keeps_segmenter(config, n):
        return False
    directory = ws.domain_dir(n, config.ptl.N)
    files = [ws.segmenter_path(n, config.ptl.N), sidecar_path(ws.segmenter_path(n, config.ptl.N))]
    names = {path.name for path in files}
    checksums = directory / CHECKSUMS_FILE
    try:
        record = json.loads(checksums.read_text())
    except (OSError, ValueError):
        return False  # not a finished domain: nothing to prune safely
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return False
    if names & set(record["files"]):
        record["files"] = {k: v for k, v in record["files"].items() if k not in names}
        write_json(checksums, record)
    present = [path for path in files if path.exists()]
    for path in present:
        path.unlink()
    return bool(present)
