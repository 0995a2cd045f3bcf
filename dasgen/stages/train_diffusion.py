"""Stage ``train-diffusion``: the unconditional target DDPM (Sec. 4.4 "Training", Eq. 5).

Trains on the unlabelled target train images at the translation resolution, resumably (a killed run continues from its
last checkpoint), and saves the model in the diffusers layout. The finished training state stays in
``data/diffusion/state``, fingerprinted with the meaning of the training code: re-run after an edit that changes no
computation (DVC re-runs the stage for a comment), the command restores it and writes the same bytes in seconds.
With ``diffusion.pretrained`` set, a user's own diffusers UNet2DModel is checked and copied instead of training one.
"""

from __future__ import annotations

import json
import time

from rich.console import Console

from dasgen.config import Config
from dasgen.datasets.pairs import PairStore
from dasgen.diffusion.train import train_ddpm
from dasgen.diffusion.unet import (DenoiserExpectation, build_unet, load_pretrained_denoiser,
                                   make_eps_fn, save_denoiser)
from dasgen.errors import ConfigError
from dasgen.seeding import image_seed
from dasgen.pipeline.chains import base_schedule
from dasgen.pipeline.code_deps import code_sha256
from dasgen.pipeline.common import canonical_root, resolve_device, target_reader, write_json
from dasgen.pipeline.diffusion_fidelity import round_trip
from dasgen.pipeline.live import live_dir, live_metrics, warner as _warner
from dasgen.pipeline.source_content import listing_sha256
from dasgen.pipeline.workspace import Workspace
from dasgen.io.atomic import atomic_write_bytes, sha256_file
from dasgen.io.lock import directory_lock

ROUNDTRIP_RECORD = "roundtrip.json"  # the round trip's figures and what they were computed from (_round_trip)


def run_train_diffusion(config: Config, ws: Workspace, *, progress: bool = True,
                        console: Console | None = None) -> dict:
    """Train (or copy the pretrained) DDPM into ``data/diffusion``, holding an OS lock on that directory: a second
    ``train-diffusion`` into the same workspace stops at once with one line, before it writes anything."""
    console = console or Console(stderr=True)
    ws.diffusion_dir.mkdir(parents=True, exist_ok=True)
    with directory_lock(ws.diffusion_dir, busy=f"{ws.diffusion_dir}: another `dasgen train-diffusion` is training "
                        "into it right now; wait for it to finish (or stop it), then rerun"):
        return _train_diffusion(config, ws, progress=progress, console=console)


def _round_trip(config: Config, ws: Workspace, unet, model_sha256: str, device) -> dict:
    """The DDPM's round trip (:func:`round_trip`), kept beside the training state with what it was computed from:
    a re-run for an edit that changes nothing (DVC re-runs the stage after a comment) reuses it instead of spending
    the stage's longest minute recomputing the same figures and picture."""
    d = config.diffusion
    fingerprint = {"model_sha256": model_sha256, "code_sha256": code_sha256("roundtrip"),
                   "fidelity_levels": d.fidelity_levels, "max_timestep": d.train.max_timestep,
                   "schedule": [d.num_train_timesteps, d.beta_start, d.beta_end], "seed": config.run.seed,
                   "resolution": config.data.resolution,
                   "target": config.data.target.kind, "root": canonical_root(config.data.target.root, ws.root),
                   "splits": [config.data.target.val_split, config.data.target.train_split]}
    record_path, picture = ws.diffusion_state / ROUNDTRIP_RECORD, ws.diffusion_state / ws.roundtrip_png.name
    try:
        record = json.loads(record_path.read_text())
        if record["fingerprint"] == fingerprint and sha256_file(picture) == record["picture_sha256"]:
            atomic_write_bytes(ws.roundtrip_png, picture.read_bytes())
            return record["result"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or made otherwise: compute it
    result = round_trip(config, make_eps_fn(unet), ws.root, device, ws.roundtrip_png)
    ws.diffusion_state.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(picture, ws.roundtrip_png.read_bytes())
    write_json(record_path, {"fingerprint": fingerprint, "result": result, "picture_sha256": sha256_file(picture)})
    return result


def diffusion_fingerprint(config: Config, ws: Workspace, entries: list) -> dict:
    """What the DDPM's weights depend on beyond :func:`~dasgen.diffusion.train.train_ddpm`'s own arguments (which
    fingerprint themselves): the stage's code, the target images it learns (their listing: ids and file sizes) and how
    they are read (resolution, flips). A training state made with anything else is not resumed."""
    target = config.data.target
    return {
        "code_sha256": code_sha256("train_diffusion"),
        "hflip": config.diffusion.train.hflip,  # flipped by the stage's sampler, not by train_ddpm
        "resolution": list(config.data.resolution),
        "target": {"kind": target.kind, "split": target.train_split, "root": canonical_root(target.root, ws.root)},
        "target_listing_sha256": listing_sha256(ws.root / target.root, entries),
    }


def _train_diffusion(config: Config, ws: Workspace, *, progress: bool, console: Console) -> dict:
    d = config.diffusion
    device = resolve_device(config.run.device)
    started = time.time()
    if d.pretrained:
        unet = load_pretrained_denoiser(d.pretrained, root=ws.root, expect=DenoiserExpectation(
            d.num_train_timesteps, d.beta_start, d.beta_end, tuple(config.data.resolution)))
        sha = save_denoiser(unet, ws.diffusion_model)
        with live_metrics(live_dir(ws, "diffusion"), warn=_warner(console, "diffusion")):
            pass  # nothing trained: empty training metrics, so the files dvc.yaml declares exist
        metrics = {"pretrained": d.pretrained, "model_sha256": sha,
                   "roundtrip": _round_trip(config, ws, unet.to(device), sha, device)}
        write_json(ws.metrics / "diffusion.json", metrics)
        return metrics

    reader = target_reader(config, config.data.target.train_split, labelled=False, root=ws.root)
    entries = reader.entries()
    store = PairStore(reader, entries, config.data.resolution)
    console.print(f"diffusion: {len(entries)} target images at {tuple(config.data.resolution)}, "
                  f"{d.train.steps} steps on {device}")
    pair_sampler = store.sampler(d.train.batch_size, hflip=d.train.hflip)

    def sample_batch(generator, batch_size):
        images, _ = pair_sampler(generator)
        return images[:batch_size].to(device)

    try:
        unet = build_unet(sample_size=tuple(config.data.resolution), block_out_channels=d.unet.block_out_channels,
                          layers_per_block=d.unet.layers_per_block, attention_levels=d.unet.attention_levels,
                          norm_num_groups=d.unet.norm_num_groups, dropout=d.unet.dropout,
                          seed=image_seed(config.run.seed, 0, "unet-init")).to(device)
    except ValueError as error:  # sizes that do not fit the U-Net's levels or groups: a params problem
        raise ConfigError(f"params: data.resolution / diffusion.unet: {error}") from error
    log_path = ws.diffusion_state / "loss.csv"
    schedule = base_schedule(config)
    if d.train.max_timestep is not None:  # deviation: learn only the noise levels the domains use
        schedule = schedule.truncated(d.train.max_timestep)
    with live_metrics(live_dir(ws, "diffusion"), warn=_warner(console, "diffusion")) as on_metrics:
        result = train_ddpm(unet, sample_batch, schedule, steps=d.train.steps,
                            batch_size=d.train.batch_size, lr=d.train.lr, adam_betas=tuple(d.train.adam_betas),
                            ema_decay=d.train.ema_decay, lr_schedule=d.train.lr_schedule, seed=config.run.seed,
                            work_dir=ws.diffusion_state, checkpoint_every=d.train.checkpoint_every,
                            log_path=log_path, progress=progress, console=console, on_metrics=on_metrics,
                            extra_fingerprint=diffusion_fingerprint(config, ws, entries),
                            log=lambda line: console.print(f"diffusion: {line}", highlight=False,
                                                              soft_wrap=True))
    sha = save_denoiser(result.model, ws.diffusion_model)
    ws.metrics.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(ws.metrics / "diffusion_loss.csv", log_path.read_bytes())  # never a torn copy
    losses = list(result.losses)
    tail = losses[-max(1, len(losses) // 10):] if losses else []
    metrics = {
        "steps": result.steps_done,
        "final_loss": float(sum(tail) / len(tail)) if tail else None,
        "resumed_from": result.resumed_from,
        "model_sha256": sha,
        "roundtrip": _round_trip(config, ws, result.model, sha, device),
        "wall_s": round(time.time() - started, 1),
    }
    write_json(ws.metrics / "diffusion.json", metrics)
    console.print(f"diffusion: done, final loss {metrics['final_loss']}")
    return metrics
