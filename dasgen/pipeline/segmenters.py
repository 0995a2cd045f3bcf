"""Config -> segmenter objects, and scoring a segmenter on the labelled target set."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch

from dasgen.config import Config
from dasgen.datasets.pairs import PairStore
from dasgen.labels import NUM_TRAIN_CLASSES
from dasgen.seeding import image_seed
from dasgen.segment.checkpoint import load_initial_weights
from dasgen.segment.metrics import evaluate
from dasgen.segment.models import Segmenter, build_segmenter
from dasgen.pipeline.common import target_reader


def new_segmenter(config: Config, root: Path = Path(".")) -> Segmenter:
    """A fresh g from ``params.yaml: segmenter``; its random initial weights come from ``run.seed``, so g_0 trains to
    the same weights on every run. ``segmenter.weights`` then fills it: a local .safetensors file (relative to
    ``root``) or ``imagenet`` (the library's published encoder). A partial load stops here with one line unless
    ``segmenter.allow_partial_weights``; the source and tensor counts are kept on the model
    (``model.initial_weights``), so its checkpoint sidecar records them."""
    s = config.segmenter
    with torch.random.fork_rng(devices=[]):  # layer init draws from the global RNG: seed a private copy of it
        torch.manual_seed(image_seed(config.run.seed, 0, "segmenter-init"))
        model = build_segmenter(s.arch, num_classes=NUM_TRAIN_CLASSES, width=s.width,
                                input_size=tuple(s.input_size) if s.input_size else None)
    if s.weights == "imagenet":
        from dasgen.segment.pretrained import load_imagenet_weights  # torchvision/transformers weight APIs

        report = load_imagenet_weights(model, allow_partial=s.allow_partial_weights)
    elif s.weights:
        report = load_initial_weights(model, root / s.weights, allow_partial=s.allow_partial_weights)
    else:
        return model
    model.initial_weights = report.provenance()
    return model


def on_device(sampler: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]], device: torch.device,
              ) -> Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """Wrap a seeded batch sampler (generator -> (x, y) on the CPU) so that its batches land on ``device``: what the
    training loops (:func:`~dasgen.segment.train.train_source`, ``finetune``) take."""
    def sample(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = sampler(generator)
        return x.to(device), y.to(device)
    return sample


def store_batches(store: PairStore, batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    ids = [e.id for e in store.entries]
    for start in range(0, len(ids), batch_size):
        x, y = store.batch(ids[start:start + batch_size])
        yield x.to(device), y.to(device)


def target_val_store(config: Config, root: Path = Path(".")) -> PairStore | None:
    """The labelled target set used only for scoring (None when ``data.target.val_split`` is null)."""
    if config.data.target.val_split is None:
        return None
    reader = target_reader(config, config.data.target.val_split, labelled=True, root=root)
    return PairStore(reader, reader.entries(), config.data.resolution)


def score_on_target(model: Segmenter, config: Config, device: torch.device, store: PairStore | None,
                    batch_size: int = 32) -> dict | None:
    """g's mIoU on the target val set under ``segmenter.eval_protocol`` (the paper's measure)."""
    if store is None:
        return None
    return evaluate(model, store_batches(store, batch_size, device), protocol=config.segmenter.eval_protocol,
                    device=device)
