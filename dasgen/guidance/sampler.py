"""The (guided) translation phi^n (paper Sec. 4.1, Fig. 2; guidance Sec. 4.2, Eqs. 7-8).

Noise the source image to the last position of the chain with ``q_sample`` (Eq. 2), then run the reverse chain back
to position 0 with the target-domain denoiser (Eq. 4 mean, Eq. 3 sampling). Guidance is one injected function, the
way guided-diffusion's sampler receives ``cond_fn``: at reverse step i it is given the state of the chain
(:class:`ReverseStep`) and returns the shift subtracted from the mean, or None for an unguided step (Eqs. 7-8):

    mu_hat = mu - shift,   x_{t-1} = mu_hat + sqrt(Sigma) z,   Sigma = beta_t (Sec. 5.1).

Semantic Gradient Guidance (:class:`dasgen.guidance.sgg.Guidance`) builds that function; the sampler knows nothing of
segmenters, labels or LCG/GSG. The chain is whatever ``NoiseSchedule`` the caller built:
``NoiseSchedule.linear(T).truncated(n)`` for the paper's phi^n, or a respaced one (a named deviation). The denoiser
is an injected callable; nothing here imports a model.

Randomness: every draw for image b comes from ``generators[b]`` (a CPU generator), in a fixed order: the ``q_sample``
draw, then one draw per reverse step that adds noise. So an image's result is the same alone or inside any batch.

Speed without changing the maths (bench/RESULTS.md): the batch goes through the denoiser together, the denoiser runs
under ``inference_mode``, convolution inputs are channels-last on CPU (:func:`preferred_memory_format`), and the
loop makes no host/device sync (schedule tables live on the device; noise is copied from pinned memory without
blocking). Changing the maths is opt-in: :func:`autocast_denoiser` (bf16 U-Net forward) and respaced schedules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from dasgen.diffusion.schedule import NoiseSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B,3,H,W), timesteps (B,)) -> eps (B,3,H,W)


@dataclass(frozen=True)
class ReverseStep:
    """What a guidance function is given at one reverse step (guided-diffusion's ``cond_fn(x, t, **kwargs)``)."""

    index: int  # reverse step i: 0 is the first step, from x_n
    position: int  # chain position k of x_k (n-1 .. 0)
    x: torch.Tensor  # x_k (B, 3, H, W)
    eps: torch.Tensor  # eps_theta(x_k, k) (B, 3, H, W)
    schedule: NoiseSchedule  # the chain, its tables on x's device
    memory_format: torch.memory_format  # the layout convolutions are fed in


# reverse step -> the shift subtracted from the mean mu_theta(x_k, k) (Eq. 7), or None for an unguided step
GuidanceFn = Callable[[ReverseStep], "torch.Tensor | None"]


def preferred_memory_format(device: torch.device) -> torch.memory_format:
    """The layout to feed convolutions on ``device``: channels-last on CPU, where oneDNN's convolutions run about
    1.3x faster in NHWC for both the toy nets and ResNet-50 (bench/RESULTS.md); the default layout elsewhere (not
    measured on a GPU here). The layout changes speed and the last float bits, never the maths."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def autocast_denoiser(denoiser: Denoiser, dtype: torch.dtype = torch.bfloat16) -> Denoiser:
    """``denoiser`` run under ``torch.autocast(dtype)`` on the input's device, returning float32 eps.

    A named deviation (eps_theta in reduced precision), off by default; the reverse-step maths around it (Eqs. 3-8,
    the guidance gradients) stays float32. Measured on the toy: see bench/RESULTS.md.
    """

    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            eps = denoiser(x, t)
        return eps.float()

    return run


def _draw_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """One standard-normal draw per image from its own CPU generator, stacked (B, *shape) on ``like``'s device."""
    noise = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])  # (B, C, H, W)
    if like.device.type == "cuda":
        # Pinned staging + non_blocking: the copy is queued without a host/device sync in the loop.
        return noise.pin_memory().to(like.device, dtype=like.dtype, non_blocking=True)
    return noise.to(like.device, dtype=like.dtype)


def _schedule_on(schedule: NoiseSchedule, device: torch.device) -> NoiseSchedule:
    """The schedule's tables on ``device``, so per-step coefficients are device indexing, not host-to-device copies."""
    if device.type in ("cpu", "mps"):  # MPS has no float64: keep the tables on the host there
        return schedule
    return NoiseSchedule(betas=schedule.betas.to(device), model_timesteps=schedule.model_timesteps.to(device))


def translate(
    x0: torch.Tensor,
    *,
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    generators: Sequence[torch.Generator],
    guide: GuidanceFn | None = None,
    on_step: Callable[[int], None] | None = None,
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """phi^n(x0) over ``schedule`` (n = len(schedule)), guided by ``guide`` if given; returns (B, 3, H, W).

    ``x0`` (B, 3, H, W) in [-1, 1]; ``generators`` one CPU generator per image; ``guide`` the injected guidance
    (e.g. ``Guidance.for_labels(labels)``); ``on_step(i)`` is called after reverse step i (for progress bars).
    ``memory_format``: layout of the denoiser's (and the guidance's) inputs (default: ``preferred_memory_format``).
    ``len(schedule) == 0`` is phi^0, the identity. The output is not clamped (the caller quantises with to_uint8).
    """
    n_steps = len(schedule)
    batch = x0.shape[0]
    if x0.ndim != 4:
        raise ValueError(f"x0 must be (B, C, H, W), got shape {tuple(x0.shape)}")
    if len(generators) != batch:
        raise ValueError(f"need one generator per image: {len(generators)} generators for {batch} images")
    if n_steps == 0:
        return x0.clone()
    schedule = _schedule_on(schedule, x0.device)
    memory_format = memory_format or preferred_memory_format(x0.device)
    image_shape = tuple(x0.shape[1:])
    x = schedule.q_sample(x0, n_steps - 1, _draw_noise(generators, image_shape, x0))  # Eq. 2: x_n
    for index, position in enumerate(range(n_steps - 1, -1, -1)):
        timesteps = schedule.timestep_for_model(position, batch, x.device)  # (B,) original timestep index
        with torch.inference_mode():
            eps = denoiser(x.contiguous(memory_format=memory_format), timesteps)  # (B, 3, H, W) eps_theta(x_k, k)
        mean = schedule.p_mean(x, position, eps)  # Eq. 4: mu_theta(x_k, k)
        if guide is not None:
            shift = guide(ReverseStep(index=index, position=position, x=x, eps=eps, schedule=schedule,
                                      memory_format=memory_format))
            if shift is not None:
                mean = mean - shift  # Eq. 7
        noise = _draw_noise(generators, image_shape, x) if position > 0 else None  # no noise at the last step
        x = schedule.p_sample(mean, position, noise)  # Eqs. 3 / 8
        if on_step is not None:
            on_step(index)
    return x.contiguous()
