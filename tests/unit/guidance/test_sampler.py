"""The guided reverse loop phi^n (Sec. 4.1-4.2): identity at n = 0, seeding, batch invariance, guidance effect."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dasgen.diffusion.schedule import NoiseSchedule, evenly_spaced_steps
from dasgen.guidance.arrangement import guidance_plan
from dasgen.guidance.sampler import Guidance, rms_normalised, translate
from dasgen.guidance.sgg import IGNORE_INDEX, gsg_gradient, lcg_gradient

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
        translate(x0, None, generators=generators([1, 2, 3]),
                  guidance=Guidance(segmenter=colour_segmenter, plan=guidance_plan("alternate", 4)), **kwargs)
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


def test_posterior_variance_changes_only_the_noise_scale():
    """With an eps = 0 denoiser each step is x <- x / sqrt(alpha) + sigma z: replayed by hand with the same draws,
    sigma^2 = beta' (paper) or beta-tilde' ("posterior")."""
    x0, _ = make_batch()
    schedule = NoiseSchedule.linear(T).truncated(40).respaced(evenly_spaced_steps(40, 4))
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    like = torch.zeros(1, dtype=torch.float64)
    for variance, sigma2 in (("beta", schedule.sigma), ("posterior", schedule.posterior_variance)):
        out = translate(x0, None, denoiser=zero, schedule=schedule, generators=generators([1, 2, 3]),
                        variance=variance)
        g = generators([1, 2, 3])
        draw = lambda: torch.stack([torch.randn(x0.shape[1:], generator=gen) for gen in g])  # noqa: E731
        x = schedule.q_sample(x0, len(schedule) - 1, draw())
        for position in range(len(schedule) - 1, -1, -1):
            x = x / float(schedule.alphas[position]) ** 0.5
            if position > 0:
                x = x + float(sigma2(position, like)) ** 0.5 * draw()
        assert torch.allclose(out, x, atol=1e-5), variance
    with pytest.raises(ValueError, match="variance"):
        translate(x0, None, denoiser=zero, schedule=schedule, generators=generators([1, 2, 3]), variance="small")


def test_ddim_carries_the_first_noise_draw_down_the_chain_and_draws_no_other():
    """variance="ddim" (deviation): with the exact-noise denoiser every x_k the chain visits is q_sample(x0, k, z) for
    the one draw z of Eq. 2 (DDIM's defining property, eta = 0); the DDPM chain replaces z with fresh draws. After
    the run each generator has made exactly that one draw."""
    x0, _ = make_batch()
    schedule = NoiseSchedule.linear(T).truncated(80).respaced(evenly_spaced_steps(80, 8))
    alpha_bars = NoiseSchedule.linear(T).alpha_bars.float()
    first = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators([1, 2, 3])])
    for variance, on_path in (("ddim", True), ("beta", False)):
        seen = []

        def oracle(x, t):
            seen.append((x.clone(), int(t[0])))
            ab = alpha_bars[t].view(-1, 1, 1, 1)
            return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

        gens = generators([1, 2, 3])
        out = translate(x0, None, denoiser=oracle, schedule=schedule, generators=gens, variance=variance)
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)
        on_q_path = [torch.allclose(x, NoiseSchedule.linear(T).q_sample(x0, t, first), atol=1e-4) for x, t in seen]
        assert all(on_q_path[1:]) == on_path and on_q_path[0]
        if variance == "ddim":
            after_one_draw = generators([1, 2, 3])
            for g in after_one_draw:
                torch.randn(x0.shape[1:], generator=g)
            assert all(torch.equal(g.get_state(), h.get_state()) for g, h in zip(gens, after_one_draw))


def test_guided_ddim_raises_segmenter_agreement():
    x0, labels = make_batch(batch=4, seed=3)
    n = 150
    schedule = NoiseSchedule.linear(T).truncated(n).respaced(evenly_spaced_steps(n, 25))
    alpha_bars = NoiseSchedule.linear(T).alpha_bars.float()

    def gaussian_denoiser(x, t):
        ab = alpha_bars[t].view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * x / (0.25 * ab + 1 - ab)

    kwargs = dict(denoiser=gaussian_denoiser, schedule=schedule, variance="ddim")
    unguided = translate(x0, labels, generators=generators([21, 22, 23, 24]), **kwargs)
    guided = translate(x0, labels, generators=generators([21, 22, 23, 24]), **kwargs,
                       guidance=Guidance(segmenter=colour_segmenter, plan=guidance_plan("alternate", 25),
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


def test_lambda_resolution_gives_the_same_per_pixel_step_at_two_resolutions():
    """The same synthetic scene at 8x12 and at 2x (16x24, nearest): with the CE a region or image mean, the paper's
    step per pixel is 4x smaller at 2x; with reference_pixels it is the same (GSG exactly, LCG too)."""
    g = torch.Generator().manual_seed(5)
    small_labels = torch.randint(0, 3, (1, 8, 12), generator=g)
    small = COLOURS[small_labels[0]].permute(2, 0, 1)[None] * 0.3  # (1, 3, 8, 12): colour-coded scene
    big, big_labels = (small.repeat_interleave(2, 2).repeat_interleave(2, 3),
                       small_labels.repeat_interleave(2, 1).repeat_interleave(2, 2))
    for module in ("gsg", "lcg"):
        steps = {}
        for name, ref, rms in (("paper", None, None), ("normalised", 8 * 12, None), ("rms", None, 5.0)):
            guidance = Guidance(segmenter=colour_segmenter, plan=[module], reference_pixels=ref, lambda_=1e4,
                                step_rms=rms)
            small_step = _first_guided_step(small, small_labels, guidance)
            big_step = _first_guided_step(big, big_labels, guidance)
            big_as_small = big_step.reshape(1, 3, 8, 2, 12, 2).mean(dim=(3, 5))  # (1, 3, 8, 12)
            steps[name] = float(big_as_small.abs().mean() / small_step.abs().mean())
        assert steps["paper"] == pytest.approx(0.25, rel=0.05), (module, steps)
        assert steps["normalised"] == pytest.approx(1.0, rel=0.05), (module, steps)
        assert steps["rms"] == pytest.approx(1.0, rel=0.05), (module, steps)


def test_context_lcg_reaches_the_sampler():
    """Guidance.lcg_view = "context" steps with sgg.lcg_gradient(view="context"): with a segmenter that looks at
    neighbours, one LCG step differs from the masked (Eq. 6) one and equals the manual Eq. 7 step."""
    x0, labels = make_batch(batch=2)
    schedule = NoiseSchedule.linear(T).truncated(1)
    denoiser = conv_denoiser()
    torch.manual_seed(3)  # test-local weights only
    neighbours = torch.nn.Conv2d(3, 3, 3, padding=1).requires_grad_(False)  # logits depend on a 3x3 context

    def one_step(view):
        guidance = Guidance(segmenter=neighbours, plan=["lcg"], lambda_=1e4, lcg_view=view)  # beta_1 = 1e-4
        return translate(x0, labels, denoiser=denoiser, schedule=schedule, generators=generators([5, 6]),
                         guidance=guidance)

    x = schedule.q_sample(x0, 0, torch.stack([torch.randn((3, 8, 12), generator=g) for g in generators([5, 6])]))
    mean = schedule.p_mean(x, 0, denoiser(x, torch.tensor([0, 0])))
    expected = mean - 1e4 * schedule.betas[0].float() * lcg_gradient(neighbours, x, labels, view="context")
    context = one_step("context")
    torch.testing.assert_close(context, expected, rtol=1e-5, atol=1e-6)
    assert (context - one_step("masked")).abs().max() > 1e-3
    with pytest.raises(ValueError, match="lcg_view"):
        Guidance(segmenter=neighbours, plan=[], lcg_view="crop")


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


@pytest.mark.parametrize("module", ["lcg", "gsg"])
def test_step_rms_sets_each_images_step_to_a_share_of_the_noise_std(module):
    """With step_rms the guidance displacement of each image has RMS step_rms * sqrt(beta) whatever lambda and the
    loss's scale; an image whose label is all ignore (nothing to guide) is not moved."""
    x0, labels = make_batch(batch=3)
    labels[2] = IGNORE_INDEX
    for lambda_, normalise in ((1.0, "region"), (1e4, "region"), (1.0, "image")):
        step = _first_guided_step(x0, labels, Guidance(segmenter=colour_segmenter, plan=[module], lambda_=lambda_,
                                                       lcg_normalise=normalise, step_rms=2.0))
        rms = step.pow(2).mean(dim=(1, 2, 3)).sqrt()
        assert rms[:2].tolist() == pytest.approx([2.0 * 1e-3] * 2, rel=1e-3)  # beta = 1e-6: sqrt(beta) = 1e-3
        assert rms[2] == 0
    paper = _first_guided_step(x0, labels, Guidance(segmenter=colour_segmenter, plan=[module], lambda_=1.0))
    assert paper.pow(2).mean(dim=(1, 2, 3)).sqrt()[0] < 1e-3 * 2.0 / 10  # without it lambda = 1 barely moves x


def test_step_rms_keeps_the_direction_and_the_cap():
    x0, labels = make_batch(batch=2)
    paper = _first_guided_step(x0, labels, Guidance(segmenter=colour_segmenter, plan=["lcg"], lambda_=1e4))
    rms = _first_guided_step(x0, labels, Guidance(segmenter=colour_segmenter, plan=["lcg"], step_rms=50.0))
    cosine = F.cosine_similarity(paper.flatten(1), rms.flatten(1))
    assert cosine.min() > 0.999  # the same direction, another length
    capped = _first_guided_step(x0, labels, Guidance(segmenter=colour_segmenter, plan=["lcg"], step_rms=50.0,
                                                     max_step=0.02))
    assert rms.abs().max() > 0.02 and capped.abs().max() <= 0.02 + 1e-6
    with pytest.raises(ValueError, match="step_rms"):
        Guidance(segmenter=colour_segmenter, plan=[], step_rms=0.0)
    with pytest.raises(ValueError, match="reference_pixels"):
        Guidance(segmenter=colour_segmenter, plan=[], step_rms=1.0, reference_pixels=96)


def test_rms_normalised_survives_a_vanishing_gradient():
    """A gradient whose squares underflow float32 (1e-25 everywhere) still comes out with RMS 1, not blown up."""
    grad = torch.full((2, 3, 4, 5), 1e-25)
    grad[1] = torch.linspace(-1e-30, 1e-30, 60).view(3, 4, 5)
    unit = rms_normalised(grad)
    assert unit.pow(2).mean(dim=(1, 2, 3)).sqrt().tolist() == pytest.approx([1.0, 1.0], rel=1e-5)
    assert torch.equal(rms_normalised(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))
