"""Per-image seeds derived from (global seed, domain, image id).

A hash rather than Python's ``hash`` (salted per process) or a running RNG (depends on order), so that any run, split
over any number of processes or batches, draws the same noise for the same image, and ablations compare like with like.
"""

from __future__ import annotations

import hashlib

import torch


def image_seed(global_seed: int, domain: int, image_id: str) -> int:
    """A 63-bit seed from sha256 of ``"{global_seed}/{domain}/{image_id}"``."""
    digest = hashlib.sha256(f"{global_seed}/{domain}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def image_generator(global_seed: int, domain: int, image_id: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`image_seed` (CPU so draws are identical on every device)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(image_seed(global_seed, domain, image_id))
    return generator
