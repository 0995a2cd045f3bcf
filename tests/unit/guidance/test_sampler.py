"""The guided reverse loop phi^n (Sec. 4.1-4.2): identity at n = 0, seeding, batch invariance, guidance effect."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dasgen.diffusion.schedule import NoiseSchedule, evenly_spaced_steps
from dasgen.guidance.arrangement import guidance_plan
from dasgen.guidance.sampler import translate as sample
from dasgen.guidance.sgg import IGNORE_INDEX, Guidance, gsg_gradient, lcg_gradient

T = 1000
COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])  # class prototypes (red, green, blue)


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def conv_denoiser(seed: int = 0):
    """A tiny fixed conv 'denoiser' whose output depends on the timestep (no diffusers needed)."""
    torch.manual_seed(seed)  # test-local weights only
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).requires_grad_(False)
    return lambda x, t: conv(x) * (1.0 + t.float().view(-1, 1, 1, 1) / T)


def colour_segmenter(x):
    """A 1x1 conv colour classifier with known weights: logit_c = 4 * <x, colour_c>."""
    return F.conv2d(x, (4.0 * COLOURS).view(3, 3, 1, 1))


def translate(x0, labels, *, guidance=None, **kwargs):
    """The sampler with SGG bound to ``labels`` (what the domain stage does for each batch)."""
    return sample(x0, guide=None if guidance is None else guidance.for_labels(labels), **kwargs)


def make_batch(batch=3, height=8, width=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((batch, 3, height, width), generator=g) * 2 - 1
    labels = torch.randint(0, 3, (batch, height // 2, width // 2), generator=g)
    labels = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)  # (B, H, W) 2x2 blocks
    labels[:, :2, :2] = IGNORE_INDEX
    return x0, labels


def test_phi_zero_is_the_identity():
    x0, labels = make_batch()
    schedule = NoiseSchedule.linear(T).truncated(0)
    guidance = Guidance(segmenter=colour_segmenter, plan=[])
    out = translate(x0, labels, denoiser=conv_denoiser(), schedule=schedule, generators=generators([1, 2, 3]),
                    guidance=guidance)
    assert torch.equal(out, x0)


def test_true_noise_denoiser_recovers_x0():
    x0, _ = make_batch()
    alpha_bars = NoiseSchedule.linear(T).alpha_bars.float()

    def oracle(x, t):  # the exact noise of x_t given the known x0 (Eq. 2 solved for eps)
        ab = alpha_bars[t].view(-1, 1, 1, 1)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    for schedule in (NoiseSchedule.linear(T).truncated(60),
                     NoiseSchedule.linear(T).truncated(200).respaced(evenly_spaced_steps(200, 10))):
        out = translate(x0, None, denoiser=oracle, schedule=schedule, generators=generators([1, 2, 3]))
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


def test_denoiser_sees_the_schedules_model_timesteps_in_reverse_order():
    x0, _ = make_batch()
    schedule = NoiseSchedule.linear(T).truncated(100).respaced(evenly_spaced_steps(100, 5))
    seen, steps = [], []

    def recording(x, t):
        seen.append(t.tolist())
        return torch.zeros_like(x)

    translate(x0, None, denoiser=recording, schedule=schedule, generators=generators([1, 2, 3]), on_step=steps.append)
    expected = schedule.model_timesteps.flip(0).tolist()
    assert expected[0] == 99 and expected[-1] == 0
    assert seen == [[t] * 3 for t in expected]
    assert steps == list(range(len(schedule)))


def test_two_step_chain_matches_manual_equations():
    """q_sample draw, then one draw per noisy reverse step, from each image's own generator; plan[i] at step i."""
    x0, labels = make_batch(batch=2)
    schedule = NoiseSchedule.linear(T).truncated(2)
    denoiser = conv_denoiser()
    guidance = Guidance(segmenter=colour_segmenter, plan=["lcg", "gsg"], lambda_=80.0)
    out = translate(x0, labels, denoiser=denoiser, schedule=schedule, generators=generators([5, 6]),
                    guidance=guidance)

    gens = generators([5, 6])
    draw = lambda: torch.stack([torch.randn((3, 8, 12), generator=g) for g in gens])  # noqa: E731
    x = schedule.q_sample(x0, 1, draw())  # Eq. 2
    mean = schedule.p_mean(x, 1, denoiser(x, torch.tensor([1, 1])))
    mean = mean - 80.0 * schedule.betas[1].float() * lcg_gradient(colour_segmenter, x, labels)  # Eq. 7, LCG first
    x = mean + schedule.betas[1].float().sqrt() * draw()  # Eq. 8
    mean = schedule.p_mean(x, 0, denoiser(x, torch.tensor([0, 0])))
    expected = mean - 80.0 * schedule.betas[0].float() * gsg_gradient(colour_segmenter, x, labels)  # no noise at 0
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arrangement", ["alternate", "none"])
def test_image_alone_equals_image_inside_a_batch(arrangement):
    x0, labels = make_batch(batch=3)
    schedule = NoiseSchedule.linear(T).truncated(12)
    guidance = Guidance(segmenter=colour_segmenter, plan=guidance_plan(arrangement, 12), max_copies_per_pass=4)
    seeds = [11, 12, 13]
    batch = translate(x0, labels, denoiser=conv_denoiser(), schedule=schedule, generators=generators(seeds),
                      guidance=guidance)
    alone = translate(x0[1:2], labels[1:2], denoiser=conv_denoiser(), schedule=schedule,
                      generators=generators(seeds[1:2]), guidance=guidance)
    torch.testing.assert_close(alone, batch[1:2], rtol=0, atol=1e-6)
    other_seed = translate(x0[1:2], labels[1:2], denoiser=conv_denoiser(), schedule=schedule,
                           generators=generators([99]), guidance=guidance)
    assert (other_seed - alone).abs().max() > 1e-3  # the seed, not the batch position, decides the noise


def test_plan_of_none_equals_unguided():
    x0, labels = make_batch()
    schedule = NoiseSchedule.linear(T).truncated(6)
    kwargs = dict(denoiser=conv_denoiser(), schedule=schedule)
    unguided = translate(x0, None, generators=generators([1, 2, 3]), **kwargs)
    none_plan = translate(x0, labels, generators=generators([1, 2, 3]),
                          guidance=Guidance(segmenter=colour_segmenter, plan=guidance_plan("none", 6)), **kwargs)
    assert torch.equal(unguided, none_plan)


def pixel_agreement(x, labels):
    valid = labels != IGNORE_INDEX
    return (colour_segmenter(x).argmax(1) == labels)[valid].float().mean().item()


@pytest.mark.parametrize("arrangement", ["alternate", "lcg-only", "gsg-only"])
def test_guidance_raises_segmenter_agreement_with_the_label(arrangement):
    x0, labels = make_batch(batch=4, seed=3)
    n = 150
    schedule = NoiseSchedule.linear(T).truncated(n)
    alpha_bars = schedule.alpha_bars.float()

    def gaussian_denoiser(x, t):  # optimal eps for a target domain of N(0, 0.25) pixels
        ab = alpha_bars[t].view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * x / (0.25 * ab + 1 - ab)

    seeds = [21, 22, 23, 24]
    kwargs = dict(denoiser=gaussian_denoiser, schedule=schedule)
    unguided = translate(x0, labels, generators=generators(seeds), **kwargs)
    guided = translate(x0, labels, generators=generators(seeds),
                       guidance=Guidance(segmenter=colour_segmenter, plan=guidance_plan(arrangement, n)), **kwargs)
    before, after = pixel_agreement(unguided, labels), pixel_agreement(guided, labels)
    assert after > before + 0.1, (before, after)


def test_bad_arguments_are_rejected():
    x0, labels = make_batch()
    schedule = NoiseSchedule.linear(T).truncated(4)
    kwargs = dict(denoiser=conv_denoiser(), schedule=schedule)
    with pytest.raises(ValueError, match="generator"):
        translate(x0, labels, generators=generators([1, 2]), **kwargs)
    with pytest.raises(ValueError, match="plan"):
        translate(x0, labels, generators=generators([1, 2, 3]),
                  guidance=Guidance(segmenter=colour_segmenter, plan=guidance_plan("alternate", 3)), **kwargs)
    with pytest.raises(ValueError, match="labels"):
        translate(x0, labels[:2], generators=generators([1, 2, 3]),
                  guidance=Guidance(segmenter=colour_segmenter, plan=guidance_plan("alternate", 4)), **kwargs)
    with pytest.raises(ValueError, match="reduction"):
        Guidance(segmenter=colour_segmenter, plan=[], reduction="batch-mean")
    with pytest.raises(ValueError, match="plan"):
        Guidance(segmenter=colour_segmenter, plan=["lcg", "LCG"])


def test_gradient_at_x0_hat_shows_the_segmenter_the_denoised_estimate():
    """With gradient_at="x0_hat" the segmenter sees (x_k - sqrt(1 - ab) eps) / sqrt(ab), clamped to [-1, 1], and
    the step uses its gradient there; with "x_t" (the paper) it sees x_k itself."""
    x0, labels = make_batch(batch=2)
    schedule = NoiseSchedule.linear(T).truncated(5)
    denoiser, seen = conv_denoiser(), {"x_t": [], "x0_hat": []}
    for where in seen:
        def spy(x, where=where):
            seen[where].append(x.detach().clone())
            return colour_segmenter(x)

        translate(x0, labels, denoiser=denoiser, schedule=schedule, generators=generators([4, 5]),
                  guidance=Guidance(segmenter=spy, plan=guidance_plan("gsg-only", 5), gradient_at=where))
    g = generators([4, 5])
    x_n = schedule.q_sample(x0, 4, torch.stack([torch.randn(x0.shape[1:], generator=gen) for gen in g]))
    eps = denoiser(x_n, torch.full((2,), 4))
    assert torch.allclose(seen["x_t"][0], x_n, atol=1e-6)
    assert torch.allclose(seen["x0_hat"][0], schedule.predict_x0(x_n, 4, eps).clamp(-1, 1).float(), atol=1e-5)
    assert len(seen["x0_hat"]) == 5 and not torch.allclose(seen["x0_hat"][0], x_n)
    with pytest.raises(ValueError, match="gradient_at"):
        Guidance(segmenter=colour_segmenter, plan=[], gradient_at="x0")


def test_x0_hat_guidance_raises_segmenter_agreement_too():
    x0, labels = make_batch(batch=4, seed=3)
    n = 150
    schedule = NoiseSchedule.linear(T).truncated(n)
    alpha_bars = schedule.alpha_bars.float()

    def gaussian_denoiser(x, t):
        ab = alpha_bars[t].view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * x / (0.25 * ab + 1 - ab)

    kwargs = dict(denoiser=gaussian_denoiser, schedule=schedule)
    unguided = translate(x0, labels, generators=generators([21, 22, 23, 24]), **kwargs)
    guided = translate(x0, labels, generators=generators([21, 22, 23, 24]), **kwargs,
                       guidance=Guidance(segmenter=colour_segmenter, plan=guidance_plan("alternate", n),
                                         gradient_at="x0_hat"))
    assert pixel_agreement(guided, labels) > pixel_agreement(unguided, labels) + 0.1


def _first_guided_step(x0, labels, guidance, seed=7):
    """x after one guided step minus x after the same step unguided: the guidance displacement (B, 3, H, W).

    One reverse step of beta = 1e-6 (noise std 1e-3: the noisy input is the scene itself to 0.1 %)."""
    schedule = NoiseSchedule(betas=torch.tensor([1e-6], dtype=torch.float64), model_timesteps=torch.tensor([0]))
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    kwargs = dict(denoiser=zero, schedule=schedule)
    guided = translate(x0, labels, generators=generators([seed] * len(x0)), guidance=guidance, **kwargs)
    plain = translate(x0, labels, generators=generators([seed] * len(x0)), **kwargs)
    return guided - plain


def test_max_step_bounds_every_pixels_guidance_step():
    x0, labels = make_batch()
    free = _first_guided_step(x0, labels, Guidance(segmenter=colour_segmenter, plan=["lcg"], lambda_=5e6))
    capped = _first_guided_step(x0, labels, Guidance(segmenter=colour_segmenter, plan=["lcg"], lambda_=5e6,
                                                     max_step=0.05))
    assert free.abs().max() > 0.05
    assert capped.abs().max() <= 0.05 + 1e-6
    small = free.abs() < 0.04  # below the cap, nothing changes
    assert torch.allclose(capped[small], free[small], atol=1e-6)
    with pytest.raises(ValueError, match="max_step"):
        Guidance(segmenter=colour_segmenter, plan=[], max_step=0.0)




def _scene_at_two_sizes(seed=5):
    """A colour-coded synthetic scene at 8x12 and the same scene at 2x (16x24, nearest)."""
    g = torch.Generator().manual_seed(seed)
    small_labels = torch.randint(0, 3, (1, 8, 12), generator=g)
    small = COLOURS[small_labels[0]].permute(2, 0, 1)[None] * 0.3  # (1, 3, 8, 12)
    big = small.repeat_interleave(2, 2).repeat_interleave(2, 3)  # (1, 3, 16, 24)
    big_labels = small_labels.repeat_interleave(2, 1).repeat_interleave(2, 2)
    return (small, small_labels), (big, big_labels)


@pytest.mark.parametrize("module", ["lcg", "gsg"])
def test_sum_reduction_keeps_the_per_pixel_step_across_resolutions(module):
    """The same scene at 2x: with the CE a region / image mean the step per pixel is 4x smaller (a lambda means less
    at a larger size); with the summed CE it is the same (a lambda keeps its meaning)."""
    (small, small_labels), (big, big_labels) = _scene_at_two_sizes()
    ratios = {}
    for reduction in ("mean", "sum"):
        guidance = Guidance(segmenter=colour_segmenter, plan=[module], lambda_=1e4, reduction=reduction)
        small_step = _first_guided_step(small, small_labels, guidance)
        big_as_small = _first_guided_step(big, big_labels, guidance).reshape(1, 3, 8, 2, 12, 2).mean(dim=(3, 5))
        ratios[reduction] = float(big_as_small.abs().mean() / small_step.abs().mean())
    assert ratios["mean"] == pytest.approx(0.25, rel=0.05), ratios
    assert ratios["sum"] == pytest.approx(1.0, rel=0.05), ratios


def test_the_observer_sees_every_guided_step_as_applied():
    """Guidance.observer gets one record per guided reverse step, in order, with the module of the plan, beta_t and
    the raw and applied (capped) steps; the applied step is what moved the image."""
    x0, labels = make_batch(batch=2)
    schedule = NoiseSchedule.linear(T).truncated(5)
    records = []
    plan = ["lcg", None, "gsg", "lcg", None]
    guidance = Guidance(segmenter=colour_segmenter, plan=plan, lambda_=5e5, max_step=0.01, observer=records.append)
    translate(x0, labels, denoiser=conv_denoiser(), schedule=schedule, generators=generators([1, 2]),
              guidance=guidance)
    assert [(r.index, r.position, r.module) for r in records] == [(0, 4, "lcg"), (2, 2, "gsg"), (3, 1, "lcg")]
    for r in records:
        assert float(r.beta.flatten()[0]) == pytest.approx(float(schedule.betas[r.position]))
        assert r.raw.abs().max() > 0.01 and r.applied.abs().max() <= 0.01 + 1e-7
        assert torch.equal(r.applied, r.raw.clamp(-0.01, 0.01))
    # the applied step is what moved the image: one guided step against the same step unguided
    moved = []
    one = Guidance(segmenter=colour_segmenter, plan=["lcg"], lambda_=5e9, max_step=0.01, observer=moved.append)
    displacement = _first_guided_step(x0, labels, one)
    torch.testing.assert_close(displacement, -moved[0].applied, rtol=1e-5, atol=1e-7)
