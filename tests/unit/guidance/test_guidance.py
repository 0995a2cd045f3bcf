"""SGG gradients (LCG Eqs. 6-9, GSG Eq. 10) and the LCG/GSG arrangements (Tab. 5, Tab. 2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dasgen.errors import ConfigError
from dasgen.guidance.arrangement import ARRANGEMENTS, guidance_plan
from dasgen.guidance.sgg import IGNORE_INDEX, class_regions, gsg_gradient, lcg_gradient

NUM_CLASSES = 5


def make_segmenter(seed: int = 0) -> torch.nn.Module:
    """A tiny conv net with 3x3 context, so a pixel's logits depend on its neighbours (and on the masking)."""
    torch.manual_seed(seed)  # test-local weights only; the code under test takes no global RNG
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, NUM_CLASSES, 3, padding=1)
    )
    return net.eval().requires_grad_(False)


def make_batch(batch: int = 3, height: int = 10, width: int = 14, seed: int = 1):
    """Random images in [-1, 1] and block labels with several classes per image and an ignore patch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, 3, height, width), generator=g) * 2 - 1
    labels = torch.randint(0, NUM_CLASSES, (batch, height // 2, width // 2), generator=g)
    labels = labels.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (B, H, W) 2x2 blocks
    labels[:, :3, :4] = IGNORE_INDEX
    return x, labels


def class_copies(x, labels, b):
    """Eq. 6's inputs for image b, one class at a time: (m_c, a fresh leaf copy of x_b, y * m_c with ignore elsewhere)."""
    for c in labels[b].unique().tolist():
        if c == IGNORE_INDEX:
            continue
        m_c = labels[b] == c
        yield m_c, x[b : b + 1].clone().requires_grad_(True), torch.where(m_c, labels[b], IGNORE_INDEX)[None]


def reference_lcg_step(segmenter, x, labels, mu, sigma, scale, noise):
    """Eqs. 6-9 literally: one segmenter call per (image, class), x_{k-1} = sum_c m_c x_{k-1,c}; ignore = mu + sqrt(s) z."""
    out = mu + sigma.sqrt() * noise  # unguided sample; labelled pixels are overwritten below
    for b in range(x.shape[0]):
        combined = torch.zeros_like(x[b])
        covered = torch.zeros(labels.shape[1:], dtype=torch.bool)
        for m_c, x_b, y_c in class_copies(x, labels, b):
            loss = F.cross_entropy(segmenter(x_b * m_c), y_c, ignore_index=IGNORE_INDEX)  # Eq. 6, mean over m_c
            (grad_c,) = torch.autograd.grad(loss, x_b)
            mu_hat = mu[b] - scale * sigma * grad_c[0]  # Eq. 7 (descending the CE)
            x_c = mu_hat + sigma.sqrt() * noise[b]  # Eq. 8, shared noise draw
            combined += m_c * x_c  # Eq. 9
            covered |= m_c
        out[b] = torch.where(covered, combined, out[b])
    return out


@pytest.mark.parametrize("max_copies", [64, 4, 1])
def test_batched_lcg_equals_per_class_reference(max_copies):
    segmenter = make_segmenter()
    x, labels = make_batch()
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(x.shape, generator=g)
    noise = torch.randn(x.shape, generator=g)
    sigma, scale = torch.tensor(0.01), 80.0
    n_copies = len(class_regions(labels))
    assert n_copies > max_copies or max_copies == 64  # the small budgets really split the copies into chunks

    grad = lcg_gradient(segmenter, x, labels, max_copies_per_pass=max_copies)
    batched = mu - scale * sigma * grad + sigma.sqrt() * noise
    expected = reference_lcg_step(segmenter, x, labels, mu, sigma, scale, noise)
    assert grad.abs().max() > 0
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_copies", [64, 3])
def test_summed_reduction_equals_the_per_class_summed_ce(max_copies):
    """reduction="sum" (sgg.loss_reduction): LCG's per-class CE summed over m_c, GSG's over the labelled image --
    log p(y | x) of independent pixels; a region's step is then |m_c| times its mean-reduced step."""
    segmenter = make_segmenter()
    x, labels = make_batch()
    expected_lcg, expected_gsg = torch.zeros_like(x), torch.zeros_like(x)
    for b in range(x.shape[0]):
        for m_c, x_b, y_c in class_copies(x, labels, b):
            summed = F.cross_entropy(segmenter(x_b * m_c), y_c, ignore_index=IGNORE_INDEX, reduction="sum")
            (grad_c,) = torch.autograd.grad(summed, x_b)
            expected_lcg[b] += grad_c[0]
        x_b = x[b:b + 1].clone().requires_grad_(True)
        summed = F.cross_entropy(segmenter(x_b), labels[b:b + 1], ignore_index=IGNORE_INDEX, reduction="sum")
        expected_gsg[b] = torch.autograd.grad(summed, x_b)[0][0]
    lcg = lcg_gradient(segmenter, x, labels, max_copies_per_pass=max_copies, reduction="sum")
    torch.testing.assert_close(lcg, expected_lcg, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gsg_gradient(segmenter, x, labels, reduction="sum"), expected_gsg, rtol=1e-5, atol=1e-6)
    assert lcg.abs().max() > lcg_gradient(segmenter, x, labels, max_copies_per_pass=max_copies).abs().max()
    with pytest.raises(ValueError, match="reduction"):
        lcg_gradient(segmenter, x, labels, reduction="pixels")
    with pytest.raises(ValueError, match="reduction"):
        gsg_gradient(segmenter, x, labels, reduction="pixels")


def test_lcg_makes_one_segmenter_pass_per_chunk():
    x, labels = make_batch()
    inner = make_segmenter()
    calls = []

    def segmenter(images):
        calls.append(images.shape[0])
        return inner(images)

    n_copies = len(class_regions(labels))
    lcg_gradient(segmenter, x, labels, max_copies_per_pass=5)
    assert calls == [min(5, n_copies - start) for start in range(0, n_copies, 5)]


def test_class_regions_lists_present_classes_without_ignore():
    labels = torch.tensor([[[0, 0, 3], [255, 3, 3]], [[255, 255, 255], [255, 255, 255]], [[2, 1, 2], [1, 1, 2]]])
    regions = class_regions(labels)
    assert regions.image_index.tolist() == [0, 0, 2, 2]
    assert regions.class_id.tolist() == [0, 3, 1, 2]
    with pytest.raises(ValueError):
        class_regions(torch.full((1, 2, 2), 256))


def test_ignore_pixels_get_zero_lcg_guidance():
    x, labels = make_batch()
    grad = lcg_gradient(make_segmenter(), x, labels)
    ignore = (labels == IGNORE_INDEX).unsqueeze(1).expand_as(grad)
    assert torch.all(grad[ignore] == 0)
    assert grad[~ignore].abs().sum() > 0


def test_all_ignore_image_gets_zero_guidance_and_others_are_unaffected():
    x, labels = make_batch()
    labels[1] = IGNORE_INDEX
    segmenter = make_segmenter()
    for gradient in (lcg_gradient, gsg_gradient):
        grad = gradient(segmenter, x, labels)
        assert torch.all(grad[1] == 0)
        torch.testing.assert_close(grad[2:], gradient(segmenter, x[2:], labels[2:]), rtol=1e-5, atol=1e-7)


def lcg_loss(segmenter, x, labels):
    """Sum over (image, class) of the region-mean CE: the objective lcg_gradient differentiates."""
    total = torch.zeros(())
    for b in range(x.shape[0]):
        for c in labels[b].unique().tolist():
            if c != IGNORE_INDEX:
                m_c = labels[b] == c
                y_c = torch.where(m_c, labels[b], IGNORE_INDEX)[None]
                total = total + F.cross_entropy(segmenter(x[b : b + 1] * m_c), y_c, ignore_index=IGNORE_INDEX)
    return total


def gsg_loss(segmenter, x, labels):
    return sum(F.cross_entropy(segmenter(x[b : b + 1]), labels[b : b + 1], ignore_index=IGNORE_INDEX)
               for b in range(x.shape[0]))


@pytest.mark.parametrize("gradient, loss", [(lcg_gradient, lcg_loss), (gsg_gradient, gsg_loss)])
def test_step_along_minus_gradient_lowers_the_loss(gradient, loss):
    segmenter = make_segmenter()
    x, labels = make_batch()
    grad = gradient(segmenter, x, labels)
    with torch.no_grad():
        before = loss(segmenter, x, labels)
        after = loss(segmenter, x - 0.05 * grad / grad.abs().max(), labels)
        worse = loss(segmenter, x + 0.05 * grad / grad.abs().max(), labels)
    assert after < before < worse


def test_gsg_matches_direct_autograd_per_image():
    segmenter = make_segmenter()
    x, labels = make_batch()
    grad = gsg_gradient(segmenter, x, labels)
    for b in range(x.shape[0]):
        x_b = x[b : b + 1].clone().requires_grad_(True)
        loss = F.cross_entropy(segmenter(x_b), labels[b : b + 1], ignore_index=IGNORE_INDEX)  # mean over non-ignore
        (expected,) = torch.autograd.grad(loss, x_b)
        torch.testing.assert_close(grad[b : b + 1], expected, rtol=1e-5, atol=1e-7)


def test_gradients_work_under_inference_mode_and_reject_wrong_logits():
    segmenter = make_segmenter()
    x, labels = make_batch()
    with torch.inference_mode():
        x_inf = x.clone()
        lcg = lcg_gradient(segmenter, x_inf, labels)
        gsg = gsg_gradient(segmenter, x_inf, labels)
    torch.testing.assert_close(lcg, lcg_gradient(segmenter, x, labels))
    torch.testing.assert_close(gsg, gsg_gradient(segmenter, x, labels))
    half = lambda images: F.avg_pool2d(segmenter(images), 2)  # noqa: E731 - logits at half resolution
    with pytest.raises(ValueError, match="logits"):
        gsg_gradient(half, x, labels)
    with pytest.raises(ValueError, match="logits"):
        lcg_gradient(half, x, labels)


# -- arrangements ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 5, 6, 17])
@pytest.mark.parametrize("arrangement", ["alternate", "lcg-then-gsg", "gsg-then-lcg", "random"])
def test_mixed_plans_use_the_papers_counts(arrangement, n):
    plan = guidance_plan(arrangement, n, seed=3)
    assert len(plan) == n
    assert plan.count("lcg") == math.ceil(n / 2)  # LCG at k = n, n-2, ...
    assert plan.count("gsg") == n // 2


def test_plan_orders():
    assert guidance_plan("alternate", 5) == ["lcg", "gsg", "lcg", "gsg", "lcg"]
    assert guidance_plan("lcg-then-gsg", 5) == ["lcg", "lcg", "lcg", "gsg", "gsg"]
    assert guidance_plan("gsg-then-lcg", 5) == ["gsg", "gsg", "lcg", "lcg", "lcg"]
    assert guidance_plan("lcg-only", 3) == ["lcg"] * 3
    assert guidance_plan("gsg-only", 3) == ["gsg"] * 3
    assert guidance_plan("none", 4) == [None] * 4
    assert guidance_plan("alternate-no-gsg", 5) == ["lcg", None, "lcg", None, "lcg"]  # alternate's LCG steps only
    assert all(guidance_plan(a, 0) == [] for a in ARRANGEMENTS)


def test_random_plan_is_seeded_and_mixed():
    plans = {seed: guidance_plan("random", 40, seed=seed) for seed in range(5)}
    assert guidance_plan("random", 40, seed=2) == plans[2]
    assert len({tuple(p) for p in plans.values()}) == 5
    structured = {tuple(guidance_plan(a, 40)) for a in ("alternate", "lcg-then-gsg", "gsg-then-lcg")}
    assert not structured & {tuple(p) for p in plans.values()}


def test_unknown_arrangement_is_a_config_error():
    with pytest.raises(ConfigError, match="alternating"):
        guidance_plan("alternating", 4)
