"""Deterministic PNG encoding and checked decoding for images (uint8 RGB) and label maps (uint8 mode L).

The same pixels always give the same bytes: fixed Pillow parameters, no ``tIME``/text chunks (Pillow writes none
unless asked), no ``optimize`` pass. That is what makes the sha256 in an index a content address, and what lets a
resumed or re-sharded run reproduce a domain byte for byte (with the same Pillow/zlib build; a different zlib may
compress differently, which changes bytes but never pixels).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from dasgen.errors import DasgenError

PNG_COMPRESS_LEVEL = 6
"""zlib level: Pillow's default, a balance of size and speed (level 9 is ~3x slower for ~2 % smaller files)."""


def check_rgb(image: np.ndarray, what: str) -> np.ndarray:
    """``image`` as a C-contiguous uint8 (H, W, 3) array, or DasgenError naming ``what``."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise DasgenError(f"{what}: expected a uint8 (H, W, 3) image, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


def check_label(label: np.ndarray, what: str) -> np.ndarray:
    """``label`` as a C-contiguous uint8 (H, W) array, or DasgenError naming ``what``."""
    array = np.asarray(label)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise DasgenError(f"{what}: expected a uint8 (H, W) label map, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


def encode_png(array: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> RGB PNG bytes, or uint8 (H, W) -> mode-L PNG bytes; deterministic."""
    mode = "L" if array.ndim == 2 else "RGB"
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array), mode=mode).save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False
    )
    return buffer.getvalue()


def decode_png(data: bytes, *, mode: str, what: str) -> np.ndarray:
    """PNG bytes -> uint8 array, (H, W, 3) for ``mode="RGB"`` or (H, W) for ``mode="L"``.

    The file's own mode must match exactly: a palette or 16-bit PNG silently converted would change label values.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode != mode:
                raise DasgenError(f"{what}: expected a mode-{mode} PNG, found mode {image.mode}")
            return np.array(image)
    except DasgenError:
        raise
    except (OSError, ValueError) as error:
        raise DasgenError(f"{what}: not a readable PNG ({error})") from error
