"""In-memory labelled images and a seeded batch sampler for the tests -- toy scale only.

Holds the whole set as two uint8 arrays, fine for the procedural toy domains and for tests (a thousand 32x64 pairs
are 8 MB). Real datasets (GTA5: 25k images of 1914x1052) go through :class:`dasgen.datasets.pairs.PairStore`, whose
``sampler`` has the same ``sample(generator) -> (x, y)`` contract that :mod:`dasgen.segment.train` consumes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dasgen.datasets.io import to_model_tensor
from dasgen.errors import DatasetError
from dasgen.labels import IGNORE_INDEX, NUM_TRAIN_CLASSES

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LabelledArrays:
    """images uint8 (N, H, W, 3) RGB and labels uint8 (N, H, W) of trainIds (255 = ignore)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DatasetError(f"LabelledArrays: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if labels.dtype != np.uint8 or labels.shape != images.shape[:3]:
            raise DatasetError(
                f"LabelledArrays: labels must be uint8 {images.shape[:3]}, got {labels.dtype} {labels.shape}"
            )
        if len(images) == 0:
            raise DatasetError("LabelledArrays: no images")
        bad = (labels >= NUM_TRAIN_CLASSES) & (labels != IGNORE_INDEX)
        if bad.any():
            raise DatasetError(f"LabelledArrays: label value {int(labels[bad][0])} is not a trainId (0-18 or 255)")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, indices: list[int] | np.ndarray) -> Batch:
        """Images float (B, 3, H, W) in [-1, 1] and labels int64 (B, H, W) for the given indices."""
        x = torch.stack([to_model_tensor(self.images[i]) for i in indices])
        y = torch.from_numpy(self.labels[np.asarray(indices)].astype(np.int64))
        return x, y


def batch_sampler(arrays: LabelledArrays, batch_size: int, *, hflip: bool = True) -> Callable[[torch.Generator], Batch]:
    """``sample(generator) -> (x, y)``: ``batch_size`` pairs drawn uniformly with replacement, each flipped
    horizontally with probability 1/2 when ``hflip`` (image and label together). Every draw comes from the given
    generator, so a seeded generator replays the same batches."""
    if batch_size < 1:
        raise ValueError(f"batch_sampler: batch_size must be positive, got {batch_size}")

    def sample(generator: torch.Generator) -> Batch:
        picks = torch.randint(len(arrays), (batch_size,), generator=generator)
        x, y = arrays.batch(picks.numpy())
        if hflip:
            flip = torch.rand(batch_size, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None], y.flip(-1), y)
        return x, y

    return sample


def sequential_batches(arrays: LabelledArrays, batch_size: int) -> Iterator[Batch]:
    """Every pair once, in order, in batches of ``batch_size`` (the last may be smaller): for :func:`evaluate`."""
    for start in range(0, len(arrays), batch_size):
        yield arrays.batch(np.arange(start, min(start + batch_size, len(arrays))))
