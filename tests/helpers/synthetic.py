"""Small synthetic source datasets and domains for the artifact and export tests and the benchmarks
(no models, no downloads).

Scenes look like the toy domains: sky, buildings, road and sidewalk bands with small cars, poles and signs, coloured
by their Cityscapes colour plus texture noise, so PNGs compress like real renders rather than flat colours.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dasgen.labels import id_to_color
from dasgen.io.atomic import atomic_write_bytes
from dasgen.artifact.writer import DomainWriter, ImageRecord
from dasgen.io.png import encode_png

SKY, BUILDING, ROAD, SIDEWALK, VEGETATION, CAR, POLE, SIGN, UNLABELED = 23, 11, 7, 8, 21, 26, 17, 20, 0


def synthetic_scene(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A (uint8 (H, W, 3) image, uint8 (H, W) Cityscapes label ids) street scene drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    label = np.full((height, width), SKY, dtype=np.uint8)
    horizon = int(height * rng.uniform(0.35, 0.5))
    label[int(height * rng.uniform(0.1, 0.25)) : horizon] = BUILDING
    label[horizon : int(horizon + 0.1 * height), : width // 3] = VEGETATION
    label[horizon:] = np.where(np.arange(width) < width * rng.uniform(0.15, 0.3), SIDEWALK, ROAD)[None, :]
    for _ in range(int(rng.integers(2, 5))):  # cars on the road
        y, x = int(rng.integers(horizon, height - 8)), int(rng.integers(0, width - 16))
        label[y : y + max(4, height // 12), x : x + max(8, width // 10)] = CAR
    for _ in range(int(rng.integers(1, 4))):  # thin poles topped by a sign
        x = int(rng.integers(0, width - 2))
        label[horizon // 2 : horizon + height // 8, x : x + 2] = POLE
        label[horizon // 2 : horizon // 2 + 4, x : x + 6] = SIGN
    label[-2:, :4] = UNLABELED
    base = id_to_color(label).astype(np.float32)
    shade = np.linspace(0.8, 1.1, height, dtype=np.float32)[:, None, None]  # vertical lighting gradient
    noise = rng.normal(0.0, 12.0, size=base.shape).astype(np.float32)  # texture
    image = np.clip(base * shade + noise, 0, 255).round().astype(np.uint8)
    return image, label


def write_synthetic_source(root: Path, ids: Iterable[str], *, height: int, width: int) -> None:
    """A GTA5-like source tree under ``root``: ``images/<id>.png`` (RGB) and ``labels/<id>.png`` (mode L ids)."""
    for image_id in ids:
        image, label = synthetic_scene(int(image_id), height, width)
        atomic_write_bytes(root / "images" / f"{image_id}.png", encode_png(image), fsync=False)
        atomic_write_bytes(root / "labels" / f"{image_id}.png", encode_png(label), fsync=False)


def translated_image(image_id: str, height: int, width: int) -> np.ndarray:
    """A stand-in "translation" of a source image: its scene at (height, width), colour-graded and re-noised."""
    image, _ = synthetic_scene(int(image_id), height, width)
    rng = np.random.default_rng(int(image_id) + 10_000)
    graded = image.astype(np.float32) * np.array([0.9, 1.0, 1.05], np.float32) + rng.normal(0, 4, image.shape)
    return np.clip(graded, 0, 255).round().astype(np.uint8)


def synthetic_record(
    image_id: str, *, height: int, width: int, domain: int = 1, splits: tuple[str, ...] = ("train", "val")
) -> ImageRecord:
    """The index record of a synthetic translated image (split and consistency derived from the id)."""
    number = int(image_id)
    return ImageRecord(
        id=image_id,
        source_image=f"images/{image_id}.png",
        source_label=f"labels/{image_id}.png",
        split=splits[number % len(splits)],
        domain=domain,
        t=100 * domain,
        seed=number * 7919,
        height=height,
        width=width,
        consistency=(number * 37 % 100) / 100.0,
    )


def build_synthetic_domain(
    directory: Path,
    ids: list[str],
    *,
    height: int,
    width: int,
    image_format: str = "png",
    domain: int = 1,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write and finalize a domain of synthetic translated images for ``ids`` (numeric strings)."""
    with DomainWriter(directory, image_format=image_format, shard_size=8) as writer:
        for image_id in writer.pending_ids(ids):
            record = synthetic_record(image_id, height=height, width=width, domain=domain)
            writer.add(record, translated_image(image_id, height, width))
    provenance = provenance or {"source": {"kind": "gta5", "root": "source", "pairs_used": len(ids)}}
    return writer.finalize(metrics={"images": len(ids)}, provenance=provenance)


def label_loader_for(source_root: Path):
    """A ``label_loader(row)`` reading the row's mode-L source label under ``source_root``."""

    def load(row: dict[str, Any]) -> np.ndarray:
        with Image.open(source_root / row["source_label"]) as label:
            return np.array(label)

    return load
