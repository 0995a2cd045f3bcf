"""DDPM noise-schedule maths (paper Sec. 3, Eqs. 1-5). Pure torch: no I/O, no models, no logging.

Index convention: the paper counts steps t = 1..T; tensors here are indexed 0..T-1 as in diffusers, so paper step t is
index ``t - 1``. "Noise n steps" (phi^n, Sec. 4.1) means ``q_sample`` at index ``n - 1`` and then ``n`` reverse steps
at indices ``n - 1, ..., 0``.

A schedule can be *respaced* (guided-diffusion's ``space_timesteps``): keep a subsequence of the original steps and
recompute betas from the kept alpha_bars, so that the reverse chain jumps several original steps at a time. That
changes the maths (fewer, larger steps), so it is a named deviation, off by default at paper scale. ``model_timesteps``
maps each position of a respaced schedule back to the original timestep that the denoiser is conditioned on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """Betas and their products for a (possibly respaced) DDPM chain; positions are 0-based."""

    betas: torch.Tensor  # (S,) float64, beta at each position
    model_timesteps: torch.Tensor  # (S,) int64, original timestep index the denoiser sees at each position

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """The paper's schedule (Sec. 5.1, following DDPM): T = 1000 betas linear from 1e-4 to 0.02."""
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        return cls(betas=betas, model_timesteps=torch.arange(num_train_timesteps, dtype=torch.int64))

    def __len__(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> torch.Tensor:
        """alpha_t = 1 - beta_t (Eq. 2)."""
        return 1.0 - self.betas

    @property
    def alpha_bars(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s<=t} alpha_s (Eq. 2)."""
        return torch.cumprod(self.alphas, dim=0)

    def respaced(self, keep: Sequence[int]) -> "NoiseSchedule":
        """Schedule over the kept positions only (guided-diffusion respacing); betas recomputed from alpha_bar.

        beta'_i = 1 - alpha_bar[keep_i] / alpha_bar[keep_{i-1}], so alpha_bar'_i == alpha_bar[keep_i] exactly and
        ``q_sample`` at a kept step is unchanged; only the reverse chain takes larger steps.
        """
        keep_sorted = sorted({int(k) for k in keep})
        if not keep_sorted or keep_sorted[0] < 0 or keep_sorted[-1] >= len(self):
            raise ValueError(f"respaced: steps must lie in [0, {len(self) - 1}], got {keep_sorted[:3]}...")
        alpha_bars = self.alpha_bars
        new_betas, previous = [], torch.tensor(1.0, dtype=torch.float64)
        for k in keep_sorted:
            new_betas.append(1.0 - alpha_bars[k] / previous)
            previous = alpha_bars[k]
        return NoiseSchedule(
            betas=torch.stack(new_betas),
            model_timesteps=self.model_timesteps[torch.tensor(keep_sorted, dtype=torch.int64)],
        )

    def truncated(self, n: int) -> "NoiseSchedule":
        """The first ``n`` positions: the chain phi^n runs on (noise to position n-1, reverse back to 0)."""
        if not 0 <= n <= len(self):
            raise ValueError(f"truncated: n={n} outside [0, {len(self)}]")
        return NoiseSchedule(betas=self.betas[:n].clone(), model_timesteps=self.model_timesteps[:n].clone())

    # -- per-position coefficients, broadcast to an image batch -------------------------------------------------

    @staticmethod
    def _at(values: torch.Tensor, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] cast to ``like``'s dtype/device and shaped to broadcast over (B, C, H, W)."""
        if isinstance(t, int):
            return values[t].to(device=like.device, dtype=like.dtype)
        out = values.to(like.device)[t.to(like.device)].to(like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Eq. 2: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        alpha_bar = self._at(self.alpha_bars, t, x0)
        return alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * noise

    def p_mean(self, x_t: torch.Tensor, t: int | torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Eq. 4: mu_theta(x_t, t) = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_theta) / sqrt(1 - beta_t)."""
        beta = self._at(self.betas, t, x_t)
        alpha_bar = self._at(self.alpha_bars, t, x_t)
        return (x_t - beta / (1.0 - alpha_bar).sqrt() * eps) / (1.0 - beta).sqrt()

    def sigma(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Sigma_theta = beta_t I (Sec. 5.1, DDPM's fixed variance), broadcastable to ``like``."""
        return self._at(self.betas, t, like)

    def predict_x0(self, x_t: torch.Tensor, t: int | torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Eq. 2 solved for x_0: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        alpha_bar = self._at(self.alpha_bars, t, x_t)
        return (x_t - (1.0 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()

    def p_sample(self, mean: torch.Tensor, t: int, noise: torch.Tensor | None) -> torch.Tensor:
        """Eqs. 3 / 8: x_{t-1} = mean + sqrt(Sigma) z with Sigma = beta_t I (Sec. 5.1, DDPM's fixed variance); as in
        DDPM (Alg. 2) the last step (position 0) adds no noise."""
        if t == 0:
            return mean
        return mean + self.sigma(t, mean).sqrt() * noise

    def timestep_for_model(self, t: int, batch: int, device: torch.device | str) -> torch.Tensor:
        """The original timestep the denoiser is conditioned on at position ``t``, as a (batch,) int64 tensor."""
        return self.model_timesteps[t].to(device).expand(batch)


def evenly_spaced_steps(n: int, count: int) -> list[int]:
    """``count`` positions spread evenly over [0, n-1], always including n-1 (the start of phi^n) and 0."""
    if count >= n:
        return list(range(n))
    if count < 2:
        return [n - 1]
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})
