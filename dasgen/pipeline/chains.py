"""Config -> noise schedules: the DDPM schedule of Sec. 5.1 and the reverse chain phi^{t_n} of each PTL domain."""

from __future__ import annotations

from dasgen.config import Config, PTLConfig
from dasgen.diffusion.schedule import NoiseSchedule, evenly_spaced_steps


def domain_noise_levels(ptl: PTLConfig) -> list[int]:
    """t_n for n = 1..N: evenly spread up to t_final, t_n = round(n * t_final / N). Paper (N = t_final = 600): t_n = n."""
    return [round(n * ptl.t_final / ptl.N) for n in range(1, ptl.N + 1)]


def base_schedule(config: Config) -> NoiseSchedule:
    """The DDPM schedule of Sec. 5.1 (linear betas over T steps)."""
    d = config.diffusion
    return NoiseSchedule.linear(d.num_train_timesteps, d.beta_start, d.beta_end)


def domain_chain(config: Config, n: int) -> NoiseSchedule:
    """The reverse chain of domain n: phi^{t_n} on all t_n steps (paper) or respaced to ``ptl.steps_per_domain``."""
    t_n = domain_noise_levels(config.ptl)[n - 1]
    chain = base_schedule(config)
    if config.ptl.steps_per_domain is None or config.ptl.steps_per_domain >= t_n:
        return chain.truncated(t_n)
    return chain.respaced(evenly_spaced_steps(t_n, config.ptl.steps_per_domain))
