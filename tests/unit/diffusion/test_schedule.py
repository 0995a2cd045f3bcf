"""NoiseSchedule (Eqs. 1-4) against closed forms and against diffusers' DDPMScheduler, an independent implementation."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from dasgen.diffusion.schedule import NoiseSchedule, evenly_spaced_steps

T = 1000


def _diffusers(**overrides) -> DDPMScheduler:
    """The paper's schedule in diffusers: linear betas 1e-4..0.02, T = 1000, Sigma = beta_t, no clipping."""
    config = dict(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", variance_type="fixed_large",
        clip_sample=False, prediction_type="epsilon",
    )
    config.update(overrides)
    return DDPMScheduler(**config)


def _in_float64(scheduler: DDPMScheduler, schedule: NoiseSchedule) -> DDPMScheduler:
    """Give diffusers our float64 betas: a comparison then tests the formulas, not float32 rounding of 1-alpha_bar."""
    scheduler.betas = schedule.betas.clone()
    scheduler.alphas = schedule.alphas.clone()
    scheduler.alphas_cumprod = schedule.alpha_bars.clone()
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def _randn(*shape: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_linear_betas_and_products_match_closed_forms():
    schedule = NoiseSchedule.linear()
    betas = schedule.betas
    assert len(schedule) == T and betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    steps = betas[1:] - betas[:-1]
    assert torch.allclose(steps, torch.full_like(steps, (0.02 - 1e-4) / (T - 1)), rtol=1e-9)
    assert torch.equal(schedule.alphas, 1.0 - betas)
    for k in (0, 1, 99, 500, T - 1):  # alpha_bar_k = prod_{s<=k} (1 - beta_s), computed independently in Python floats
        expected = math.prod(1.0 - (1e-4 + (0.02 - 1e-4) * s / (T - 1)) for s in range(k + 1))
        assert schedule.alpha_bars[k].item() == pytest.approx(expected, rel=1e-10)
    assert torch.equal(schedule.model_timesteps, torch.arange(T))


def test_alphas_cumprod_equal_diffusers():
    ours, theirs = NoiseSchedule.linear(), _diffusers()
    assert torch.allclose(ours.betas.float(), theirs.betas, rtol=1e-6, atol=0)
    assert torch.allclose(ours.alpha_bars.float(), theirs.alphas_cumprod, rtol=2e-5, atol=0)  # float32 cumprod drift


def test_q_sample_equals_add_noise():
    schedule, scheduler = NoiseSchedule.linear(), _diffusers()
    x0, noise = _randn(5, 3, 4, 6, seed=0).clamp(-1, 1), _randn(5, 3, 4, 6, seed=1)
    t = torch.tensor([0, 1, 250, 600, T - 1])
    expected = scheduler.add_noise(x0, noise, t)  # float32 sqrt(1 - alpha_bar): ~4e-6 off near t = 0
    assert torch.allclose(schedule.q_sample(x0, t, noise), expected, atol=1e-5)
    for i, step in enumerate(t.tolist()):  # an int position broadcasts the same coefficient
        assert torch.allclose(schedule.q_sample(x0[i : i + 1], step, noise[i : i + 1]), expected[i : i + 1], atol=1e-5)


@pytest.mark.parametrize("t", [0, 1, 10, 500, T - 1])
def test_p_mean_and_p_sample_equal_diffusers_step(t):
    """Eq. 4 (eps form) equals diffusers' posterior mean (x0 form); with Sigma = beta_t the whole step agrees."""
    schedule = NoiseSchedule.linear()
    scheduler = _in_float64(_diffusers(), schedule)
    x_t, eps = _randn(2, 3, 4, 6, seed=2, dtype=torch.float64), _randn(2, 3, 4, 6, seed=3, dtype=torch.float64)
    prev = scheduler.step(eps, t, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)  # diffusers' draw
    mean = schedule.p_mean(x_t, t, eps)
    assert torch.allclose(schedule.p_sample(mean, t, noise), prev, rtol=0, atol=1e-10)
    sigma = schedule.betas[t].sqrt() if t > 0 else 0.0  # position 0 adds no noise (DDPM Alg. 2)
    assert torch.allclose(mean, prev - sigma * noise, rtol=0, atol=1e-10)


def test_p_mean_float32_close_to_stock_diffusers():
    """Without the float64 hand-over the two agree to float32 rounding of 1 - alpha_bar."""
    schedule, scheduler = NoiseSchedule.linear(), _diffusers()
    x_t, eps = _randn(2, 3, 4, 6, seed=4), _randn(2, 3, 4, 6, seed=5)
    for t in (50, 300, T - 1):
        prev = scheduler.step(eps, t, x_t, generator=torch.Generator().manual_seed(1)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(schedule.p_sample(schedule.p_mean(x_t, t, eps), t, noise), prev, atol=1e-4)


def test_respaced_p_mean_equals_diffusers_custom_timesteps():
    """A respaced chain takes the same steps as diffusers' DDPM with custom timesteps (prev = previous kept step)."""
    schedule = NoiseSchedule.linear()
    keep = evenly_spaced_steps(T, 10)
    respaced = schedule.respaced(keep)
    scheduler = _in_float64(_diffusers(), schedule)
    scheduler.set_timesteps(timesteps=sorted(keep, reverse=True))
    x_t, eps = _randn(1, 3, 4, 4, seed=6, dtype=torch.float64), _randn(1, 3, 4, 4, seed=8, dtype=torch.float64)
    for position, original in enumerate(keep):
        prev = scheduler.step(eps, original, x_t, generator=torch.Generator().manual_seed(position)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(position), dtype=torch.float64)
        got = respaced.p_sample(respaced.p_mean(x_t, position, eps), position, noise)
        assert torch.allclose(got, prev, rtol=0, atol=1e-10), f"position {position} (t={original})"


@pytest.mark.parametrize("t", [50, 700])
def test_q_sample_statistics(t):
    """Over many eps draws, x_t has mean sqrt(alpha_bar) x0 and variance 1 - alpha_bar (Eq. 2)."""
    schedule = NoiseSchedule.linear()
    draws = 200_000
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0], dtype=torch.float64).reshape(1, 1, 1, 4)  # (1, 1, 1, 4)
    noise = torch.randn(draws, 1, 1, 4, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    x_t = schedule.q_sample(x0.expand(draws, 1, 1, 4), t, noise)  # (draws, 1, 1, 4)
    alpha_bar = schedule.alpha_bars[t].item()
    mean, var = x_t.mean(0).flatten(), x_t.var(0).flatten()
    tol_mean = 5 * math.sqrt((1 - alpha_bar) / draws)  # 5 standard errors
    assert torch.allclose(mean, math.sqrt(alpha_bar) * x0.flatten(), atol=tol_mean)
    assert torch.allclose(var, torch.full_like(var, 1 - alpha_bar), rtol=5 * math.sqrt(2 / draws))


def test_respaced_keeps_alpha_bar_and_model_timesteps():
    schedule = NoiseSchedule.linear()
    keep = [999, 0, 10, 10, 500, 250]  # unsorted with a duplicate: treated as the set {0, 10, 250, 500, 999}
    respaced = schedule.respaced(keep)
    kept = torch.tensor(sorted(set(keep)))
    assert len(respaced) == 5
    assert torch.allclose(respaced.alpha_bars, schedule.alpha_bars[kept], rtol=1e-12, atol=0)
    assert torch.equal(respaced.model_timesteps, kept)
    assert bool(((respaced.betas > 0) & (respaced.betas < 1)).all())
    assert respaced.betas[0].item() == pytest.approx(schedule.betas[0].item())  # first kept step is position 0
    assert torch.equal(respaced.timestep_for_model(3, batch=2, device="cpu"), torch.tensor([500, 500]))
    # respacing a respaced schedule composes: positions index the respaced chain, timesteps stay original
    twice = respaced.respaced([0, 2, 4])
    assert torch.equal(twice.model_timesteps, torch.tensor([0, 250, 999]))
    assert torch.allclose(twice.alpha_bars, schedule.alpha_bars[twice.model_timesteps], rtol=1e-12, atol=0)
    x0, noise = _randn(1, 3, 2, 2, seed=9), _randn(1, 3, 2, 2, seed=10)
    assert torch.equal(respaced.q_sample(x0, 3, noise), schedule.q_sample(x0, 500, noise))
    for bad in ([], [-1, 3], [T]):
        with pytest.raises(ValueError):
            schedule.respaced(bad)


def test_truncated():
    schedule = NoiseSchedule.linear()
    head = schedule.truncated(600)
    assert len(head) == 600
    assert torch.equal(head.betas, schedule.betas[:600]) and torch.equal(head.model_timesteps, torch.arange(600))
    assert torch.equal(head.alpha_bars, schedule.alpha_bars[:600])
    head.betas[0] = 0.5  # a copy: the parent schedule is untouched
    assert schedule.betas[0].item() == pytest.approx(1e-4)
    assert len(schedule.truncated(0)) == 0 and len(schedule.truncated(T)) == T
    respaced_head = schedule.respaced(evenly_spaced_steps(T, 20)).truncated(5)  # phi^n on a respaced chain
    assert torch.equal(respaced_head.model_timesteps, schedule.respaced(evenly_spaced_steps(T, 20)).model_timesteps[:5])
    for bad in (-1, T + 1):
        with pytest.raises(ValueError):
            schedule.truncated(bad)


@pytest.mark.parametrize("n,count", [(1000, 50), (600, 7), (10, 9), (37, 5), (100, 2)])
def test_evenly_spaced_steps(n, count):
    steps = evenly_spaced_steps(n, count)
    assert len(steps) == count and steps == sorted(set(steps))
    assert steps[0] == 0 and steps[-1] == n - 1
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert max(gaps) - min(gaps) <= 1  # even: gaps differ by rounding only


def test_evenly_spaced_steps_edge_counts():
    assert evenly_spaced_steps(5, 5) == [0, 1, 2, 3, 4]
    assert evenly_spaced_steps(5, 99) == [0, 1, 2, 3, 4]
    assert evenly_spaced_steps(5, 1) == [4]


def test_p_sample_adds_noise_except_at_position_0():
    schedule = NoiseSchedule.linear()
    mean, noise = _randn(2, 3, 4, 4, seed=11), _randn(2, 3, 4, 4, seed=12)
    assert torch.equal(schedule.p_sample(mean, 0, noise), mean)
    for t in (1, 999):
        expected = mean + math.sqrt(schedule.betas[t].item()) * noise  # Sigma = beta_t I (Sec. 5.1)
        assert torch.allclose(schedule.p_sample(mean, t, noise), expected, atol=1e-6)
        assert torch.allclose(schedule.sigma(t, mean), torch.tensor(schedule.betas[t].item()))


def test_predict_x0_inverts_q_sample():
    schedule = NoiseSchedule.linear()
    x0, noise = _randn(2, 3, 4, 6, seed=9, dtype=torch.float64), _randn(2, 3, 4, 6, seed=10, dtype=torch.float64)
    for t in (0, 250, T - 1):
        assert torch.allclose(schedule.predict_x0(schedule.q_sample(x0, t, noise), t, noise), x0, atol=1e-9)
