"""Stage ``toy``: write the procedural toy source (GTA5 layout) and target (Cityscapes layout)."""

from __future__ import annotations

from pathlib import Path

from dasgen.config import Config
from dasgen.datasets.toy import generate_toy
from dasgen.io.paths import refuse_location
from dasgen.pipeline.protected import dataset_roots, workspace_artifacts
from dasgen.pipeline.workspace import Workspace


def run_toy(config: Config, *, root: Path = Path("."), out: Path | None = None, progress: bool = True,
            **overrides: int) -> dict:
    """Generate the toy domains from ``params.yaml: toy``; deterministic for ``toy.seed``.

    ``overrides`` replace the seed or image counts (e.g. the ablation's oracle toy: another seed, labelled target
    images only) while the look and geometry stay the params' own. ``out`` (default ``toy.out``) may not be, lie
    inside or contain the workspace's artifacts or a dataset other than the toy's own ``out/source`` and
    ``out/target``; inside it, :func:`generate_toy` writes only into a new, empty or earlier toy directory.
    """
    t = config.toy
    out_dir = Path(out or root / t.out)
    own = {out_dir.resolve(), (out_dir / "source").resolve(), (out_dir / "target").resolve()}
    ws = Workspace(root)
    protect = workspace_artifacts(ws) | {path: what for path, what in dataset_roots(config, ws).items()
                                                 if path.resolve() not in own}
    refuse_location(out_dir, protect, doing="write the toy datasets into")
    knobs = {"seed": t.seed, "n_source": t.n_source, "n_target_train": t.n_target_train,
             "n_target_val": t.n_target_val} | overrides
    return generate_toy(out_dir, height=t.height, width=t.width, progress=progress,
                        rendering_gap=t.rendering_gap, colour_swap=t.colour_swap,
                        thin_object_scale=t.thin_object_scale, **knobs)
