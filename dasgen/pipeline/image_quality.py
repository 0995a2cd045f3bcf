"""Is a translated image still a picture? Roughness against real target photos, and the count of blown-up images.

An over-strong guidance step paints high-frequency adversarial noise: an image that fools g_{n-1} but shows nothing.
Such images are rough -- their neighbouring pixels differ far more than in a photo -- so each domain counts the images
rougher than :data:`BLOWN_UP_FACTOR` times the mean of real target photos (the DDPM's own unlabelled training images,
which every workspace has) and reports it in its ``metrics.json`` (and so in ``dvc metrics show``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dasgen.config import Config
from dasgen.datasets.pairs import PairStore
from dasgen.pipeline.common import target_reader

BLOWN_UP_FACTOR = 2.5  # an image rougher than 2.5x the real target photos counts as blown up into noise
REFERENCE_IMAGES = 64  # target photos averaged for the reference (the first, by id: deterministic)


def roughness(image: np.ndarray) -> float:
    """Mean absolute difference of horizontally adjacent pixels of a uint8 (H, W, 3) image, in uint8 units: about
    12 for the toy target photos, far higher for adversarial noise."""
    return float(np.abs(np.diff(image.astype(np.float32), axis=1)).mean())  # (H, W-1, 3) -> scalar


def target_roughness(config: Config, root: Path = Path(".")) -> float:
    """Mean roughness of the first :data:`REFERENCE_IMAGES` target training photos at the translation resolution."""
    reader = target_reader(config, config.data.target.train_split, labelled=False, root=root)
    entries = reader.entries()[:REFERENCE_IMAGES]
    store = PairStore(reader, entries, config.data.resolution)
    return float(np.mean([roughness(store.get(entry.id).image) for entry in entries]))


def blow_up_report(images: Iterable[np.ndarray], reference: float) -> dict:
    """``{"roughness_ratio": mean roughness / reference, "blown_up_images": count above the factor, "images"}``."""
    ratios = [roughness(image) / reference for image in images]
    return {"roughness_ratio": float(np.mean(ratios)) if ratios else None,
            "blown_up_images": int(sum(r > BLOWN_UP_FACTOR for r in ratios)), "images": len(ratios)}
