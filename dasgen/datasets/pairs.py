"""Source pairs at the translation resolution: scanning, resizing, caching and seeded batch sampling.

The pipeline works at one translation resolution (``data.resolution``). Images are resized with Pillow's bicubic
filter and labels with nearest neighbour only (a label is never interpolated). Decoded, resized pairs are cached in
memory up to a byte budget, so the toy (a few MB) is decoded once while a real 25k-image GTA5 source streams from disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from dasgen.datasets.base import BadPair, BadPairError, DatasetReader, Entry
from dasgen.datasets.io import to_model_tensor
from dasgen.labels import id_to_train_id

DEFAULT_CACHE_BYTES = 2 * 1024**3  # 2 GiB of decoded pairs; beyond that, decode on demand


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (h, w, 3), bicubic; returned unchanged when already that size."""
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def resize_label(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 (H, W) -> uint8 (h, w) with nearest neighbour only, so every output value is a real label."""
    height, width = int(size[0]), int(size[1])
    if label.shape[:2] == (height, width):
        return label
    return np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))


@dataclass(frozen=True)
class Pair:
    """One source pair at the translation resolution: uint8 image (h, w, 3), uint8 trainIds (h, w) or None."""

    entry: Entry
    image: np.ndarray
    train_ids: np.ndarray | None


def scan_pairs(reader: DatasetReader, *, policy: str = "skip",
               on_bad: Callable[[BadPair], None] | None = None,
               on_sample: Callable[[object], None] | None = None) -> tuple[list[Entry], list[BadPair]]:
    """Decode every pair once: returns the usable entries (sorted by id) and the skipped ones with reasons.

    ``on_sample`` sees each usable decoded sample (e.g. to gather label statistics in the same pass).
    """
    bad: list[BadPair] = []

    def record(pair: BadPair) -> None:
        bad.append(pair)
        if on_bad is not None:
            on_bad(pair)

    usable = []
    for sample in reader.iter_samples(policy=policy, on_bad=record):
        usable.append(sample.entry)
        if on_sample is not None:
            on_sample(sample)
    return sorted(usable, key=lambda e: e.id), bad


class PairStore:
    """Random access to pairs at ``resolution``, decoding each at most once while the cache budget lasts."""

    def __init__(self, reader: DatasetReader, entries: Sequence[Entry], resolution: Sequence[int], *,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.reader = reader
        self.entries = list(entries)
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self._by_id = {entry.id: entry for entry in self.entries}
        self._cache: dict[str, Pair] = {}
        self._cache_left = cache_bytes

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, entry_id: str) -> Pair:
        """The resized pair for ``entry_id``; a pair that became unreadable raises BadPairError."""
        cached = self._cache.get(entry_id)
        if cached is not None:
            return cached
        sample = self.reader.load(self._by_id[entry_id])
        image = resize_image(sample.image, self.resolution)
        train_ids = None if sample.label is None else id_to_train_id(resize_label(sample.label, self.resolution))
        pair = Pair(entry=sample.entry, image=image, train_ids=train_ids)
        size = image.nbytes + (0 if train_ids is None else train_ids.nbytes)
        if size <= self._cache_left:
            self._cache[entry_id] = pair
            self._cache_left -= size
        return pair

    def batch(self, ids: Iterable[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images float (B, 3, h, w) in [-1, 1] and trainIds int64 (B, h, w) (None if unlabelled)."""
        pairs = [self.get(i) for i in ids]
        images = torch.stack([to_model_tensor(p.image) for p in pairs])
        if any(p.train_ids is None for p in pairs):
            return images, None
        labels = torch.stack([torch.from_numpy(p.train_ids.astype(np.int64)) for p in pairs])
        return images, labels

    def sampler(self, batch_size: int, *, hflip: bool = True, ids: Sequence[str] | None = None
                ) -> Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor | None]]:
        """A seeded sampler: ``sample(generator) -> (x, y)`` with uniform random pairs and optional flips."""
        pool = list(ids) if ids is not None else [e.id for e in self.entries]

        def sample(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
            picks = torch.randint(len(pool), (batch_size,), generator=generator).tolist()
            x, y = self.batch(pool[i] for i in picks)
            if hflip:
                flip = torch.rand(batch_size, generator=generator) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                if y is not None:
                    y = torch.where(flip[:, None, None], y.flip(-1), y)
            return x, y

        return sample


__all__ = ["BadPairError", "Pair", "PairStore", "resize_image", "resize_label", "scan_pairs"]
