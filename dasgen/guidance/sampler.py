"""The (guided) translation phi^n (paper Sec. 4.1, Fig. 2; guidance Sec. 4.2, Eqs. 7-8).

Noise the source image to the last position of the chain with ``q_sample`` (Eq. 2), then run the reverse chain back
to position 0 with the target-domain denoiser (Eq. 4 mean, Eq. 3 sampling). With guidance, the mean of reverse step i
is shifted by the module ``plan[i]`` (LCG or GSG) before sampling (Eqs. 7-8):

    mu_hat = mu - lambda * Sigma * grad_x CE,   Sigma = beta_t (Sec. 5.1),   x_{t-1} = mu_hat + sqrt(Sigma) z.

The chain is whatever ``NoiseSchedule`` the caller built: ``NoiseSchedule.linear(T).truncated(n)`` for the paper's
phi^n, or a respaced one (a named deviation). The denoiser and segmenter are injected callables; nothing here imports
a model.

Randomness: every draw for image b comes from ``generators[b]`` (a CPU generator), in a fixed order: the ``q_sample``
draw, then one draw per reverse step that adds noise. So an image's result is the same alone or inside any batch.

Speed without changing the maths (bench/RESULTS.md): the batch goes through the denoiser and the segmenter together,
LCG runs all (image, class) copies in one pass, the denoiser runs under ``inference_mode``, convolution inputs are
channels-last on CPU (:func:`~dasgen.guidance.sgg.preferred_memory_format`), and the loop makes no host/device sync
(schedule tables live on the device; noise is copied from pinned memory without blocking). Changing the maths is
opt-in: :func:`autocast_denoiser` (bf16 U-Net forward) and respaced schedules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from dasgen.diffusion.schedule import REVERSE_VARIANCES, NoiseSchedule
from dasgen.guidance.arrangement import GSG, LCG
from dasgen.guidance.sgg import (LCG_VIEWS, Segmenter, class_regions, gsg_gradient, lcg_gradient,
                                  preferred_memory_format)

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B,3,H,W), timesteps (B,)) -> eps (B,3,H,W)


@dataclass(frozen=True)
class Guidance:
    """SGG settings for one translation: the segmenter g_n, the per-step plan, and lambda (Eq. 7)."""

    segmenter: Segmenter  # x in [-1, 1] (B, 3, H, W) -> logits (B, C, H, W); must treat images independently
    plan: Sequence[str | None]  # plan[i] = module at reverse step i (see arrangement.guidance_plan)
    lambda_: float = 80.0  # lambda of Eq. 7 (Sec. 5.1: lambda = 80); params: sgg.lambda
    max_copies_per_pass: int = 64  # LCG masked copies per segmenter pass: bounds memory, not the result
    lcg_normalise: str = "region"  # LCG loss: mean over the class region (default) or over the image (sgg.py)
    lcg_view: str = "masked"  # LCG's segmenter sees x * m_c (Eq. 6) or the whole image, step on m_c (deviation; sgg.py)
    # Where the segmenter looks: the noisy x_k (paper, Eqs. 6 and 10) or the denoised estimate x0_hat(x_k, eps)
    # (deviation, after FreeDoM / MPGD: a clean-image segmenter judges a clean-looking image; the gradient is taken
    # with respect to x0_hat and not propagated through the U-Net, so it costs what the paper's does).
    gradient_at: str = "x_t"
    # lambda's resolution (deviation if set): the CE is a mean over a region or an image, so for the same scene its
    # per-pixel gradient shrinks as 1 / pixels; scaling it by pixels / reference_pixels makes every pixel's step the
    # one it gets at the reference resolution, so a lambda tuned there transfers (None: no scaling, the paper).
    reference_pixels: int | None = None
    # per-pixel cap on the guidance step |lambda * Sigma * grad| in [-1, 1] image units (deviation if set): peers'
    # guard against single steps that paint adversarial noise (None: uncapped, the paper).
    max_step: float | None = None
    # RMS-normalised step (deviation if set; FreeDoM rescales its energy gradient to the RMS of the classifier-free
    # correction): each image's step is grad / RMS(grad) times this share of sqrt(beta_t) (the std of the paper's
    # sampling noise, Sigma = beta_t, whatever ptl.reverse_variance draws), so every guided step moves an image by the
    # same amount relative to the noise whatever the loss's scale (region or image mean, resolution, how far g already
    # agrees). lambda and reference_pixels then play no part; the cap still applies. None: lambda * beta_t * grad.
    step_rms: float | None = None

    def __post_init__(self) -> None:
        plan = tuple(self.plan)
        unknown = sorted({str(m) for m in plan if m not in (LCG, GSG, None)})
        if unknown:
            raise ValueError(f"Guidance.plan entries must be 'lcg', 'gsg' or None, got {unknown}")
        if self.reference_pixels is not None and self.reference_pixels < 1:
            raise ValueError(f"Guidance.reference_pixels must be >= 1, got {self.reference_pixels}")
        if self.max_step is not None and not self.max_step > 0:
            raise ValueError(f"Guidance.max_step must be > 0, got {self.max_step}")
        if self.step_rms is not None and not self.step_rms > 0:
            raise ValueError(f"Guidance.step_rms must be > 0, got {self.step_rms}")
        if self.step_rms is not None and self.reference_pixels is not None:
            raise ValueError("Guidance.step_rms and Guidance.reference_pixels both rescale the step; set one")
        if self.gradient_at not in ("x_t", "x0_hat"):
            raise ValueError(f"Guidance.gradient_at must be 'x_t' or 'x0_hat', got {self.gradient_at!r}")
        if self.lcg_view not in LCG_VIEWS:
            raise ValueError(f"Guidance.lcg_view must be one of {LCG_VIEWS}, got {self.lcg_view!r}")
        object.__setattr__(self, "plan", plan)


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


def rms_normalised(grad: torch.Tensor) -> torch.Tensor:
    """Each image's gradient (B, C, H, W) divided by its root mean square over the image; an all-zero gradient
    (nothing to guide) stays zero. A vanishing gradient (squares below float32's range) has its RMS taken after
    scaling by its largest entry, so it still comes out with RMS 1. By design the result does not shrink as the
    segmenter comes to agree."""
    tiny = torch.finfo(grad.dtype).tiny
    rms = grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()  # (B, 1, 1, 1)
    largest = grad.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(tiny)  # (B, 1, 1, 1)
    rescaled_rms = (grad / largest).pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() * largest
    # The direct RMS wherever its squares stay clear of float32's underflow (squares of entries below ~1e-19 vanish),
    # so the usual case is computed exactly as the ablation runs computed it.
    rms = torch.where(rms > 1e-15, rms, rescaled_rms)
    return grad / rms.clamp_min(tiny)


def guidance_step(guidance: Guidance, beta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The step subtracted from the reverse mean (Eq. 7): ``lambda * beta_t * grad`` (paper; beta_t is Sigma), or the
    RMS-normalised ``step_rms * sqrt(beta_t) * grad / RMS(grad)`` (``step_rms``, deviation); then scaled to lambda's
    resolution (``reference_pixels``, deviation) and capped per pixel (``max_step``, deviation). ``beta``
    broadcastable to ``grad`` (B, C, H, W)."""
    if guidance.step_rms is not None:
        step = guidance.step_rms * beta.sqrt() * rms_normalised(grad)
    else:
        step = guidance.lambda_ * beta * grad
    if guidance.reference_pixels is not None:  # per-pixel steps as at the reference resolution
        step = step * (grad.shape[-2] * grad.shape[-1] / guidance.reference_pixels)
    if guidance.max_step is not None:
        step = step.clamp(-guidance.max_step, guidance.max_step)
    return step


def _schedule_on(schedule: NoiseSchedule, device: torch.device) -> NoiseSchedule:
    """The schedule's tables on ``device``, so per-step coefficients are device indexing, not host-to-device copies."""
    if device.type in ("cpu", "mps"):  # MPS has no float64: keep the tables on the host there
        return schedule
    return NoiseSchedule(betas=schedule.betas.to(device), model_timesteps=schedule.model_timesteps.to(device))


def translate(
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    generators: Sequence[torch.Generator],
    guidance: Guidance | None = None,
    on_step: Callable[[int], None] | None = None,
    memory_format: torch.memory_format | None = None,
    variance: str = "beta",
) -> torch.Tensor:
    """phi^n(x0) over ``schedule`` (n = len(schedule)), guided by ``guidance`` if given; returns (B, 3, H, W).

    ``x0`` (B, 3, H, W) in [-1, 1]; ``labels`` (B, H, W) int64 trainIds, 255 = ignore (needed only with guidance);
    ``generators`` one CPU generator per image; ``on_step(i)`` is called after reverse step i (for progress bars).
    ``memory_format``: layout of the denoiser's and segmenter's inputs (default: ``preferred_memory_format``).
    ``variance``: the sampling noise of Eqs. 3 / 8, ``"beta"`` (paper: Sigma = beta_t), ``"posterior"``
    (beta-tilde_t, a named deviation) or ``"ddim"`` (no sampling noise: DDIM's deterministic step replaces Eqs. 3-4,
    a named deviation, and draws nothing after ``q_sample``); the guidance step (:func:`guidance_step`) uses beta_t
    whichever noise is drawn.
    ``len(schedule) == 0`` is phi^0, the identity. The output is not clamped (the caller quantises with to_uint8).
    """
    n_steps = len(schedule)
    batch = x0.shape[0]
    if x0.ndim != 4:
        raise ValueError(f"x0 must be (B, C, H, W), got shape {tuple(x0.shape)}")
    if len(generators) != batch:
        raise ValueError(f"need one generator per image: {len(generators)} generators for {batch} images")
    if variance not in REVERSE_VARIANCES:
        raise ValueError(f"variance must be one of {REVERSE_VARIANCES}, got {variance!r}")
    if n_steps == 0:
        return x0.clone()
    guided = guidance is not None and any(module is not None for module in guidance.plan)
    if guidance is not None:
        if len(guidance.plan) != n_steps:
            raise ValueError(f"guidance plan has {len(guidance.plan)} entries for a chain of {n_steps} reverse steps")
        if guided and (labels is None or labels.shape != (batch, *x0.shape[-2:])):
            raise ValueError(f"guidance needs labels of shape {(batch, *x0.shape[-2:])}, got "
                             f"{None if labels is None else tuple(labels.shape)}")
    schedule = _schedule_on(schedule, x0.device)
    memory_format = memory_format or preferred_memory_format(x0.device)
    if guided:
        labels = labels.to(x0.device, torch.int64)
        regions = class_regions(labels) if LCG in guidance.plan else None  # once: labels do not change

    # DDIM (deviation) replaces Eq. 4's mean by its deterministic step and draws no noise after q_sample.
    reverse_mean = schedule.ddim_mean if variance == "ddim" else schedule.p_mean
    image_shape = tuple(x0.shape[1:])
    x = schedule.q_sample(x0, n_steps - 1, _draw_noise(generators, image_shape, x0))  # Eq. 2: x_n
    for step, position in enumerate(range(n_steps - 1, -1, -1)):
        timesteps = schedule.timestep_for_model(position, batch, x.device)  # (B,) original timestep index
        with torch.inference_mode():
            eps = denoiser(x.contiguous(memory_format=memory_format), timesteps)  # (B, 3, H, W) eps_theta(x_k, k)
        mean = reverse_mean(x, position, eps)  # Eq. 4: mu_theta(x_k, k) (or DDIM's step)
        module = guidance.plan[step] if guidance is not None else None
        if module is not None:
            seen = x if guidance.gradient_at == "x_t" else schedule.predict_x0(x, position, eps).clamp(-1.0, 1.0)
            if module == LCG:  # Eqs. 6-9
                grad = lcg_gradient(guidance.segmenter, seen, labels, regions=regions,
                                    max_copies_per_pass=guidance.max_copies_per_pass, memory_format=memory_format,
                                    normalise=guidance.lcg_normalise, view=guidance.lcg_view)
            else:  # Eq. 10
                grad = gsg_gradient(guidance.segmenter, seen, labels, memory_format=memory_format)
            # Eq. 7 with Sigma = beta_t; minus: a step that lowers the CE (the paper's "+" reads as descent). Under
            # respacing beta_t is the step's beta' (it spans several original steps, so the summed guidance over the
            # chain matches the full chain's; not so for step_rms, whose sqrt(beta') makes a value hold for one chain
            # length only). LCG's grad is sum_c m_c grad_c: Eq. 9's recombination of the per-class
            # guided means, exact because the masks partition the image and share one noise draw (sgg.py).
            mean = mean - guidance_step(guidance, schedule.sigma(position, mean), grad)
        adds_noise = position > 0 and variance != "ddim"  # no noise at the last step, nor in DDIM's chain
        noise = _draw_noise(generators, image_shape, x) if adds_noise else None
        x = schedule.p_sample(mean, position, noise, variance)  # Eqs. 3 / 8
        if on_step is not None:
            on_step(step)
    return x.contiguous()
