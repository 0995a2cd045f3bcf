"""How much of a real target image the trained DDPM keeps: its round trip phi^t on target photos (Sec. 4.1).

Noise real target images to t (Eq. 2) and denoise them unguided on all t reverse steps (Eqs. 3-4). A translation can
keep no more of a source image's structure than this; the train-diffusion stage records it for every level of
``diffusion.fidelity_levels`` as a DVC metric (PSNR to the clean photo, roughness against real photos) and draws the
rows clean | phi^t ... as ``metrics/diffusion_roundtrip.png``. Label retention needs a judge the pipeline does not
have; ``bench/experiments/ddpm_fidelity.py`` measures it on the toy with a target-trained oracle.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dasgen.config import Config
from dasgen.datasets.io import to_uint8
from dasgen.datasets.pairs import PairStore
from dasgen.guidance.sampler import translate
from dasgen.seeding import image_generator
from dasgen.pipeline.chains import base_schedule
from dasgen.pipeline.common import target_reader
from dasgen.pipeline.image_quality import roughness
from dasgen.io.atomic import atomic_write_bytes

IMAGES = 16  # target photos in the round trip (the first by id of the val split, else of the train split)
SHOWN = 6  # rows of the picture
FIDELITY_SEED_DOMAIN = 0  # per-image seeds from (run.seed, 0, "roundtrip-<t>-<id>")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * np.log10(255.0 ** 2 / max(mse, 1e-10))


def round_trip(config: Config, denoiser, root: Path, device: torch.device, picture: Path | None) -> dict:
    """``{"t<t>": {"psnr", "roughness_ratio"}}`` for each fidelity level the DDPM was trained for; draws
    ``picture``."""
    split = config.data.target.val_split or config.data.target.train_split
    reader = target_reader(config, split, labelled=False, root=root)
    entries = reader.entries()[:IMAGES]
    if not entries:
        return {}
    store = PairStore(reader, entries, config.data.resolution)
    ids = [e.id for e in entries]
    x0, _ = store.batch(ids)
    clean = [store.get(i).image for i in ids]
    reference = float(np.mean([roughness(image) for image in clean]))
    top = config.diffusion.train.max_timestep or config.diffusion.num_train_timesteps
    rows, columns = {}, [clean]
    for t in [t for t in config.diffusion.fidelity_levels if t <= top]:
        generators = [image_generator(config.run.seed, FIDELITY_SEED_DOMAIN, f"roundtrip-{t}-{i}") for i in ids]
        with torch.inference_mode():
            out = translate(x0.to(device), denoiser=denoiser, schedule=base_schedule(config).truncated(t),
                            generators=generators)
        images = [to_uint8(x) for x in out]
        rows[f"t{t}"] = {"psnr": round(float(np.mean([_psnr(a, b) for a, b in zip(images, clean)])), 2),
                         "roughness_ratio": round(float(np.mean([roughness(i) for i in images])) / reference, 3)}
        columns.append(images)
    if picture is not None:
        grid = np.concatenate([np.concatenate([column[k] for column in columns], axis=1)
                               for k in range(min(SHOWN, len(ids)))], axis=0)  # (rows*H, columns*W, 3)
        scale = max(1, 512 // grid.shape[1])  # about 512 pixels wide, nearest: pixels stay visible
        image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write_bytes(picture, buffer.getvalue())
    return rows
