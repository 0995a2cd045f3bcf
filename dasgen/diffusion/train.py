"""DDPM training of the denoiser on unlabelled target images (paper Sec. 3, Eq. 5; settings of Sec. 5.1).

Each step draws a batch x_0, a position t uniformly over the schedule and noise eps, forms x_t with Eq. 2 and takes an
Adam step on Eq. 5, || eps_theta(x_t, t) - eps ||^2. Optional: an EMA of the weights (DDPM evaluates the EMA model)
and a cosine learning-rate decay; the batch sampler does the augmentation (DDPM's random flips). The schedule passed in
may be truncated (``NoiseSchedule.truncated``): t is then drawn from its positions only, a named deviation for
pipelines whose translations never noise past a known level.

Every random draw (batch and its flips, t, eps, dropout) comes from one CPU ``torch.Generator`` seeded with ``seed`` and saved
with the training state, so a run resumed from ``work_dir`` ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from rich.console import Console

from dasgen.diffusion.schedule import NoiseSchedule
from dasgen.diffusion.training_state import discard_finished_state, restore_training_state, save_training_state
from dasgen.errors import CheckpointError
from dasgen.io.atomic import atomic_write_text
from dasgen.progress import LoopProgress

LOSS_LOG_HEADER = "step,loss"
CSV_FLUSH_S = 5.0  # the loss CSV reaches the disk this often while training (a tail -f sees it move)


@dataclass
class TrainResult:
    """Outcome of :func:`train_ddpm`."""

    model: UNet2DModel  # in eval mode; EMA weights when EMA is on
    losses: list[float]  # loss of every step 1..steps_done, including those done before a resume
    steps_done: int
    resumed_from: int | None  # step the run resumed from, None for a fresh start


def _fingerprint(unet: UNet2DModel, schedule: NoiseSchedule, **settings: object) -> dict[str, object]:
    """Settings a resumed run must share with the interrupted one to end with the same weights."""
    architecture = {key: value for key, value in dict(unet.config).items() if not key.startswith("_")}
    betas = schedule.betas.detach().cpu().to(torch.float64).contiguous().numpy().tobytes()
    model_steps = schedule.model_timesteps.detach().cpu().to(torch.int64).contiguous().numpy().tobytes()
    return {
        **settings,
        "architecture": architecture,
        "schedule_sha256": hashlib.sha256(betas + model_steps).hexdigest(),
    }


def _start_loss_log(log_path: Path | None, losses: list[float]):
    """(Re)write the CSV log with the rows of ``losses`` (steps 1..len) and open it for appending.

    Rewriting from the saved losses on resume drops rows a killed run logged after its last checkpoint, so every
    step appears once.
    """
    if log_path is None:
        return None
    rows = "".join(f"{step},{loss:.6g}\n" for step, loss in enumerate(losses, start=1))
    atomic_write_text(log_path, f"{LOSS_LOG_HEADER}\n{rows}")
    return open(log_path, "a", encoding="utf-8", newline="\n")


def _logged_metrics(losses: list[float], step: int, every: int, lr: float, steps: int,
                    lr_schedule: str) -> dict[str, float]:
    """What is logged at ``step``: the mean loss of the ``every`` steps up to it, and that step's learning rate."""
    window = losses[max(0, step - every):step]
    return {"loss": sum(window) / len(window), "lr": learning_rate(lr, step, steps, lr_schedule)}


def learning_rate(base: float, step: int, steps: int, schedule: str) -> float:
    """The learning rate of step ``step`` (1-based) of ``steps``: ``constant`` (DDPM) or ``cosine`` decay from ``base``
    to 0 (a function of the step alone, so a resumed run follows the same curve)."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / max(steps, 1)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected 'constant' or 'cosine'")


def _train_step(
    unet: UNet2DModel,
    optimizer: torch.optim.Optimizer,
    sample_batch: Callable[[torch.Generator, int], torch.Tensor],
    schedule: NoiseSchedule,
    generator: torch.Generator,
    batch_size: int,
    device: torch.device,
) -> float:
    """One optimisation step of Eq. 5; returns the batch loss."""
    x0 = sample_batch(generator, batch_size)  # (B, 3, H, W) in [-1, 1]
    if x0.ndim != 4 or x0.shape[:2] != (batch_size, 3) or not x0.is_floating_point():
        raise ValueError(f"sample_batch must return float ({batch_size}, 3, H, W), got {tuple(x0.shape)} {x0.dtype}")
    positions = torch.randint(len(schedule), (batch_size,), generator=generator)  # t ~ U over the schedule
    noise = torch.randn(x0.shape, generator=generator)  # eps ~ N(0, I), drawn on CPU: same on every device
    dropout_seed = int(torch.randint(2**62, (1,), generator=generator))

    x0, noise, positions = x0.to(device, torch.float32), noise.to(device), positions.to(device)
    x_t = schedule.q_sample(x0, positions, noise)  # Eq. 2
    timesteps = schedule.model_timesteps.to(device)[positions]  # (B,) original timestep the model is conditioned on
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(dropout_seed)  # dropout masks from the saved generator, not the global RNG
        eps_pred = unet(x_t, timesteps).sample[:, :3]  # (B, 3, H, W)
    loss = F.mse_loss(eps_pred, noise)  # Eq. 5
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_ddpm(
    unet: UNet2DModel,
    sample_batch: Callable[[torch.Generator, int], torch.Tensor],
    schedule: NoiseSchedule,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    adam_betas: tuple[float, float] = (0.9, 0.99),
    ema_decay: float | None,
    lr_schedule: str = "constant",
    seed: int,
    work_dir: Path,
    checkpoint_every: int,
    log_path: Path | None,
    progress: bool = True,
    extra_fingerprint: dict[str, object] | None = None,
    log: Callable[[str], None] | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    metrics_every: int = 50,
    console: Console | None = None,
) -> TrainResult:
    """Train ``unet`` (in place) with DDPM's objective (Eq. 5) for ``steps`` steps in total, resuming if possible.

    ``sample_batch(generator, batch_size)`` returns float (B, 3, H, W) in [-1, 1] and must draw its randomness from
    ``generator`` only. Adam with ``lr`` and ``adam_betas`` (Sec. 5.1: 2e-5, (0.9, 0.99)). ``ema_decay`` (e.g. DDPM's
    0.9999) keeps an EMA of the weights with diffusers' ``EMAModel`` warm-up, decay min(ema_decay, (1+n)/(10+n)) at
    update n, which equals DDPM's plain EMA after ~10^5 steps and makes the EMA usable on short toy runs; ``None``
    turns it off. Augmentation (DDPM's random flips) is the sampler's: ``dasgen.datasets.pairs.PairStore.sampler``. ``lr_schedule``: see
    :func:`learning_rate`.

    Every ``checkpoint_every`` steps, and at the end, the training state goes to ``work_dir``; a state found there at
    start is resumed (``CheckpointError`` if it was written with other settings or is past ``steps``). The state of the
    finished run is kept: run again with the same settings, training is restored instead of redone (same weights); a
    finished state of other settings is replaced by a fresh run. ``extra_fingerprint`` adds to the settings a resume
    must share (the stage passes its code's hash). ``log`` receives one line saying where training starts from. The
    loss of each step is appended to the CSV ``log_path`` (header ``step,loss``), flushed every few seconds.
    ``on_metrics(step, {"loss", "lr"})`` receives the mean loss of the last ``metrics_every`` steps and the learning
    rate every ``metrics_every`` steps and at the last (a resumed run first replays the steps it restored). Progress goes to
    ``console`` (:class:`~dasgen.progress.LoopProgress`). Returns the final model (a copy
    holding the EMA weights when EMA is on, else ``unet`` itself), in eval mode; the caller saves it with
    ``save_denoiser``.
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"train_ddpm: steps={steps} must be >= 0 and batch_size={batch_size} >= 1")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"train_ddpm: ema_decay={ema_decay} must lie in [0, 1)")
    work_dir = Path(work_dir)
    metrics_every = max(1, metrics_every)
    device = next(unet.parameters()).device
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    optimizer = torch.optim.Adam(unet.parameters(), lr=lr, betas=tuple(adam_betas))
    ema = EMAModel(unet.parameters(), decay=ema_decay) if ema_decay is not None else None
    learning_rate(lr, 1, steps, lr_schedule)  # an unknown schedule fails before any work
    fingerprint = _fingerprint(
        unet, schedule, batch_size=batch_size, lr=lr, adam_betas=list(adam_betas), ema_decay=ema_decay, seed=seed,
        **(extra_fingerprint or {}),
        # a cosine schedule's rates depend on its length: a run resumed with other steps would follow another curve
        **({"lr_schedule": lr_schedule, "lr_schedule_steps": steps} if lr_schedule != "constant" else {}),
    )
    state = dict(model=unet, optimizer=optimizer, ema=ema, generator=generator)

    dropped = discard_finished_state(work_dir, fingerprint=fingerprint, steps=steps)
    restored = restore_training_state(work_dir, fingerprint=fingerprint, **state)
    start, losses = (restored.step, list(restored.losses)) if restored else (0, [])
    if start > steps:
        raise CheckpointError(f"{work_dir}: training state is at step {start}, past the requested {steps} steps")
    if log is not None:
        log(f"resuming from step {start} of {steps} ({work_dir})" if restored else
            f"starting at step 0 of {steps}" + (f" (finished state of {dropped} replaced)" if dropped else ""))

    def logged(step: int) -> bool:  # every metrics_every steps, and the last step
        return step % metrics_every == 0 or step == steps

    if on_metrics is not None:  # the curve so far first, so the metrics always hold it from step 1
        for step in filter(logged, range(1, start + 1)):
            on_metrics(step, _logged_metrics(losses, step, metrics_every, lr, steps, lr_schedule))
    csv = _start_loss_log(log_path, losses)
    flushed = time.monotonic()
    unet.train()
    try:
        with LoopProgress("DDPM", steps, completed=start, enabled=progress, console=console,
                          loss=losses[-1] if losses else math.nan) as bar:
            for step in range(start + 1, steps + 1):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(lr, step, steps, lr_schedule)
                loss = _train_step(unet, optimizer, sample_batch, schedule, generator, batch_size, device)
                if ema is not None:
                    ema.step(unet.parameters())
                losses.append(loss)
                if csv is not None:
                    csv.write(f"{step},{loss:.6g}\n")
                    if time.monotonic() - flushed >= CSV_FLUSH_S:  # readable while training, not only at checkpoints
                        csv.flush()
                        flushed = time.monotonic()
                if on_metrics is not None and logged(step):
                    on_metrics(step, _logged_metrics(losses, step, metrics_every, lr, steps, lr_schedule))
                recent = losses[-50:]
                bar.advance(loss=sum(recent) / len(recent))
                if step == steps or (checkpoint_every > 0 and step % checkpoint_every == 0):
                    if csv is not None:
                        csv.flush()
                    save_training_state(work_dir, step=step, losses=losses, fingerprint=fingerprint,
                                        finished=step == steps, **state)
    finally:
        if csv is not None:
            csv.close()

    final = unet
    if ema is not None:
        final = copy.deepcopy(unet)
        ema.copy_to(final.parameters())
    resumed_from = restored.step if restored else None
    return TrainResult(model=final.eval(), losses=losses, steps_done=steps, resumed_from=resumed_from)
