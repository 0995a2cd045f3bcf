"""Config -> the noisy+masked augmentation of Supp. C, shared by g_0's training and each domain's fine-tune (Eq. 12).

SGG asks g to classify noisy, masked images, so a fraction of g's training samples are noised by Eq. 2 at a random
level below the last domain's t_N and masked by one class region (:func:`dasgen.segment.train.train_source`).
"""

from __future__ import annotations

from dasgen.config import Config
from dasgen.pipeline.chains import base_schedule


def augment_settings(config: Config, fraction: float) -> dict | None:
    """Supp. C augmentation arguments: noise up to the final domain's level t_N, masked by a class region."""
    if fraction <= 0:
        return None
    return {"schedule": base_schedule(config), "max_t": config.ptl.t_final, "fraction": fraction}
