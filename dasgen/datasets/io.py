"""Image conversions between files (uint8 HWC) and models (float CHW in [-1, 1])."""

from __future__ import annotations

import numpy as np
import torch


def to_model_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    array = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float()
    return array / 127.5 - 1.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """float (3, H, W) in [-1, 1] -> uint8 (H, W, 3): clamp, scale, round half to even. The one quantisation used."""
    scaled = ((image.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
