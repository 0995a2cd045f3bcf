"""``dasgen evaluate``: score any segmenter checkpoint on a labelled target set (the paper's mIoU)."""

from __future__ import annotations

from pathlib import Path

from dasgen.config import Config
from dasgen.datasets.pairs import PairStore
from dasgen.datasets.registry import open_dataset
from dasgen.errors import DasgenError
from dasgen.labels import NUM_TRAIN_CLASSES
from dasgen.segment.checkpoint import load_segmenter
from dasgen.segment.metrics import evaluate
from dasgen.pipeline.common import resolve_device
from dasgen.pipeline.segmenters import store_batches


def run_evaluate(config: Config, checkpoint: Path, *, workspace: Path = Path("."), kind: str | None = None, root: Path | None = None,
                 split: str | None = None, protocol: int | None = None, batch_size: int = 16) -> dict:
    """Per-class IoU and mIoU of ``checkpoint`` on a labelled set (default: the params' target val split)."""
    kind = kind or config.data.target.kind
    root = root or workspace / config.data.target.root
    split = split or config.data.target.val_split
    if split is None:
        raise DasgenError("evaluate: no labelled split given (--split) and data.target.val_split is null")
    device = resolve_device(config.run.device)
    model = load_segmenter(checkpoint, device=device, expect_arch=config.segmenter.arch, expect_classes=NUM_TRAIN_CLASSES)
    reader = open_dataset(kind, root, split=split, labelled=True)
    store = PairStore(reader, reader.entries(), config.data.resolution)
    protocol = protocol or config.segmenter.eval_protocol
    result = evaluate(model, store_batches(store, batch_size, device), protocol=protocol, device=device)
    return {"checkpoint": str(checkpoint), "dataset": f"{kind}:{root}:{split}", "protocol": protocol, **result}
