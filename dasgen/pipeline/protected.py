"""What a command's output may never be written into, over or around: the datasets a run reads and the pipeline's
artifacts. Every command that takes a free output path (``export --out``, ``toy --out``, ``sheet --out``,
``plot --out``) checks it against these (:func:`dasgen.io.paths.refuse_location`)."""

from __future__ import annotations

from pathlib import Path

from dasgen.config import Config
from dasgen.pipeline.workspace import Workspace


def workspace_artifacts(ws: Workspace) -> dict[Path, str]:
    """The files and folders the pipeline's stages write (``{path: what it is}``)."""
    return {
        ws.source_pairs: "the source scan (data/source_pairs.json)",
        ws.diffusion_dir: "the target DDPM (data/diffusion)",
        ws.g0_dir: "the source segmenter g_0 (data/g0)",
        ws.domain_dir(1).parent: "the PTL domains (data/domains)",
        ws.metrics: "the pipeline's metrics (metrics/)",
    }


def dataset_roots(config: Config, ws: Workspace) -> dict[Path, str]:
    """The datasets a run reads: the source and target roots, and the toy's folder."""
    return {
        ws.root / config.data.source.root: "the source dataset (data.source.root)",
        ws.root / config.data.target.root: "the target dataset (data.target.root)",
        ws.root / config.toy.out: "the toy datasets (toy.out)",
    }


def protected_paths(config: Config, ws: Workspace) -> dict[Path, str]:
    """Both: what an export may never be written into, over or around."""
    return dataset_roots(config, ws) | workspace_artifacts(ws)


def figure_protected_paths(config: Config | None, ws: Workspace) -> dict[Path, str]:
    """What a figure (``sheet --out``, ``plot --out``) may not be written into or over: the datasets (when params are
    at hand) and the stages' artifacts, except ``metrics/`` -- where figures go by default; a figure is a ``.png``,
    so the metrics' JSON and CSV files are safe from it anyway."""
    roots = dataset_roots(config, ws) if config is not None else {}
    return roots | {path: what for path, what in workspace_artifacts(ws).items() if path != ws.metrics}
