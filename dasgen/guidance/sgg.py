"""Semantic Gradient Guidance (paper Sec. 4.2): LCG (Eqs. 6-9), GSG (Eq. 10), and the guidance function that the
sampler is given (:class:`Guidance`).

Each gradient function returns the gradient that shifts the reverse-step mean, ``mu_hat = mu - lambda * Sigma * grad``
(Eq. 7 read as a step that *decreases* the cross-entropy, as in classifier guidance towards the label). The segmenter
is injected, the way guided-diffusion's sampler receives ``cond_fn``: any callable ``segmenter(x) -> logits
(B, C, H, W)`` that takes ``x`` in [-1, 1] and does its own normalisation/resizing in torch. It must treat images
independently (e.g. BatchNorm in eval mode) so that guidance is batch-invariant.

Loss reduction (``reduction``, params ``sgg.loss_reduction``; the paper does not say, and it fixes what lambda = 80
means -- docs/guidance.md):
- ``"mean"``: LCG's cross-entropy averaged over the class region's pixels (one loss per (image, class) copy), GSG's
  over the image's labelled pixels. The per-pixel gradient then shrinks as 1 / pixels: the same lambda is a 64x
  smaller step at 256x512 than at 32x64.
- ``"sum"``: the cross-entropy summed over the region (LCG) or the image (GSG): log p(y | x) of a label map of
  independent pixels, the quantity classifier guidance (Dhariwal & Nichol) steps along. Its per-pixel gradient does
  not shrink with the image, so a lambda keeps its meaning across resolutions.
Losses of different copies/images are summed before ``autograd.grad``; since each loss depends on one image only,
the summed gradient at image b is exactly that image's own gradient.

LCG batching: the class masks m_c partition the labelled pixels and all classes share one noise draw, so Eq. 9's
``sum_c m_c * x_{k-1,c}`` equals ``mu - lambda * Sigma * sum_c m_c * grad_c + sqrt(Sigma) z`` on labelled pixels
(``grad_c`` is already zero outside m_c because it flows through ``x * m_c``). Every (image, class) pair therefore
goes through the segmenter as one batch of masked copies, ``max_copies_per_pass`` copies at a time counted across the
whole image batch, and :func:`lcg_gradient` returns ``sum_c grad_c``. Pixels labelled ignore (255) belong to no m_c
and get zero guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from dasgen.guidance.arrangement import GSG, LCG
from dasgen.guidance.sampler import GuidanceFn, ReverseStep, preferred_memory_format

IGNORE_INDEX = 255  # trainId "ignore" (docs/CONVENTIONS.md)
LOSS_REDUCTIONS = ("mean", "sum")  # how a module's pixel cross-entropies become its loss (sgg.loss_reduction)
GRADIENT_AT = ("x_t", "x0_hat")  # what the segmenter judges: x_k (Eqs. 6, 10) or the denoised estimate (deviation)

Segmenter = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ClassRegions:
    """The LCG copies of a label batch: copy k is class ``class_id[k]`` of image ``image_index[k]`` (Eq. 6's m_c).

    Labels do not change during a translation, so the guidance builds this once per batch (it needs one host sync,
    for ``torch.unique``) and reuses it at every LCG step.
    """

    image_index: torch.Tensor  # (K,) int64, on the labels' device
    class_id: torch.Tensor  # (K,) int64, on the labels' device

    def __len__(self) -> int:
        return int(self.image_index.shape[0])


def class_regions(labels: torch.Tensor) -> ClassRegions:
    """All (image, class) pairs present in ``labels`` (B, H, W) int64, ignore (255) excluded, sorted by image then class."""
    if labels.ndim != 3:
        raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > IGNORE_INDEX):
        raise ValueError(f"labels must lie in [0, {IGNORE_INDEX}] (trainIds, 255 = ignore)")
    offsets = torch.arange(labels.shape[0], device=labels.device).view(-1, 1, 1) * (IGNORE_INDEX + 1)
    keys = torch.unique(labels.long() + offsets)  # (K',) sorted: image-major, class-minor
    keys = keys[keys % (IGNORE_INDEX + 1) != IGNORE_INDEX]  # (K,)
    return ClassRegions(image_index=keys // (IGNORE_INDEX + 1), class_id=keys % (IGNORE_INDEX + 1))


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A normal copy of an inference tensor (autograd cannot save those), else the tensor itself."""
    return tensor.clone() if tensor.is_inference() else tensor


def _check_reduction(reduction: str) -> None:
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")


def _check_logits(logits: torch.Tensor, like: torch.Tensor) -> None:
    if logits.ndim != 4 or logits.shape[0] != like.shape[0] or logits.shape[-2:] != like.shape[-2:]:
        raise ValueError(
            f"segmenter must return logits (B, C, H, W) = ({like.shape[0]}, C, {like.shape[-2]}, {like.shape[-1]}), "
            f"got {tuple(logits.shape)}"
        )


def lcg_gradient(
    segmenter: Segmenter,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    max_copies_per_pass: int = 64,
    regions: ClassRegions | None = None,
    memory_format: torch.memory_format | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """LCG (Eqs. 6-9): ``sum_c m_c * grad_{x} L_local(x, y, c)``, shape of ``x`` (B, 3, H, W).

    ``L_local`` (Eq. 6) is the cross-entropy of ``segmenter(x * m_c)`` against ``y`` on m_c (ignore elsewhere),
    averaged over m_c's pixels (``reduction="mean"``) or summed over them (``"sum"``). All copies of all images are run
    as batches of at most ``max_copies_per_pass``. ``regions`` (from :func:`class_regions`) may be passed to skip
    recomputing the class list. ``memory_format`` is the layout of the segmenter's input (default
    :func:`~dasgen.guidance.sampler.preferred_memory_format`).
    """
    if max_copies_per_pass < 1:
        raise ValueError(f"max_copies_per_pass must be >= 1, got {max_copies_per_pass}")
    _check_reduction(reduction)
    if regions is None:
        regions = class_regions(labels)
    memory_format = memory_format or preferred_memory_format(x.device)
    # Autograd on even if the caller runs under no_grad/inference_mode; a fresh leaf because x may be an inference
    # tensor (from the denoiser's inference_mode), which cannot require grad.
    with torch.inference_mode(False), torch.enable_grad():
        x_leaf = x.detach().clone().requires_grad_(True)
        labels, all_images, all_classes = _plain(labels), _plain(regions.image_index), _plain(regions.class_id)
        grad = None
        for start in range(0, len(regions), max_copies_per_pass):
            image_index = all_images[start : start + max_copies_per_pass]  # (k,)
            class_id = all_classes[start : start + max_copies_per_pass]  # (k,)
            label_copies = labels[image_index]  # (k, H, W)
            mask = label_copies == class_id.view(-1, 1, 1)  # (k, H, W) m_c
            target = torch.where(mask, label_copies, IGNORE_INDEX)  # (k, H, W) y * m_c, ignore elsewhere
            copies = x_leaf[image_index] * mask.unsqueeze(1).to(x_leaf.dtype)  # (k, 3, H, W) Eq. 6: x * m_c
            logits = segmenter(copies.contiguous(memory_format=memory_format))  # (k, C, H, W)
            _check_logits(logits, copies)
            ce = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")  # (k, H, W)
            loss_per_copy = ce.sum(dim=(1, 2))  # (k,) summed over m_c
            if reduction == "mean":
                loss_per_copy = loss_per_copy / mask.sum(dim=(1, 2))  # (k,) mean over m_c
            # Sum over copies: each copy's loss depends on its own image only, so grads add up per Eq. 9.
            (chunk_grad,) = torch.autograd.grad(loss_per_copy.sum(), x_leaf)
            grad = chunk_grad if grad is None else grad.add_(chunk_grad)
    return torch.zeros_like(x) if grad is None else grad.contiguous()


def gsg_gradient(segmenter: Segmenter, x: torch.Tensor, labels: torch.Tensor, *,
                 memory_format: torch.memory_format | None = None, reduction: str = "mean") -> torch.Tensor:
    """GSG (Eq. 10): ``grad_x L_global(x, y)``, the whole-image cross-entropy averaged over the non-ignore pixels
    (``reduction="mean"``) or summed over them (``"sum"``). Images whose label is all ignore get a zero gradient.
    ``memory_format``: as in :func:`lcg_gradient`."""
    _check_reduction(reduction)
    memory_format = memory_format or preferred_memory_format(x.device)
    with torch.inference_mode(False), torch.enable_grad():
        x_leaf = x.detach().clone(memory_format=memory_format).requires_grad_(True)
        labels = _plain(labels)
        logits = segmenter(x_leaf)  # (B, C, H, W)
        _check_logits(logits, x_leaf)
        ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")  # (B, H, W)
        loss_per_image = ce.sum(dim=(1, 2))  # (B,) summed CE
        if reduction == "mean":
            loss_per_image = loss_per_image / (labels != IGNORE_INDEX).sum(dim=(1, 2)).clamp_min(1)  # (B,)
        (grad,) = torch.autograd.grad(loss_per_image.sum(), x_leaf)
    return grad.contiguous()


@dataclass(frozen=True)
class GuidedStep:
    """One guided reverse step as an observer sees it (``Guidance.observer``): the measurement behind
    ``dasgen calibrate``."""

    index: int  # reverse step i
    position: int  # chain position k
    module: str  # "lcg" | "gsg"
    beta: torch.Tensor  # Sigma = beta_t, broadcastable to the step
    raw: torch.Tensor  # lambda * beta_t * grad (B, 3, H, W), before the cap
    applied: torch.Tensor  # the shift subtracted from the mean (after the cap, if any)


@dataclass(frozen=True)
class Guidance:
    """SGG for one translation: the segmenter g_{n-1}, which module guides each reverse step, and the step's scale.

    ``for_labels(labels)`` gives the sampler its guidance function for one batch (:data:`GuidanceFn`). At reverse step
    i with ``plan[i]`` set, it returns ``lambda * beta_t * grad`` (Eq. 7 with Sigma = beta_t; under respacing beta_t is
    the step's beta', which spans several original steps, so the summed guidance over the chain matches the full
    chain's), capped per pixel at ``max_step`` when set.
    """

    segmenter: Segmenter  # x in [-1, 1] (B, 3, H, W) -> logits (B, C, H, W); must treat images independently
    plan: Sequence[str | None]  # plan[i] = module at reverse step i (see arrangement.guidance_plan)
    lambda_: float = 80.0  # lambda of Eq. 7 (Sec. 5.1: lambda = 80); params: sgg.lambda
    reduction: str = "mean"  # how the pixel CEs make the loss: "mean" | "sum" (sgg.loss_reduction; module docstring)
    # Where the segmenter looks: the noisy x_k (paper, Eqs. 6 and 10) or the denoised estimate x0_hat(x_k, eps)
    # (deviation, after FreeDoM / MPGD: a clean-image segmenter judges a clean-looking image; the gradient is taken
    # with respect to x0_hat and not propagated through the U-Net, so it costs what the paper's does).
    gradient_at: str = "x_t"
    # per-pixel cap on the step |lambda * Sigma * grad| in [-1, 1] image units (deviation if set): peers' guard
    # against single steps that paint adversarial noise (None: uncapped, the paper).
    max_step: float | None = None
    max_copies_per_pass: int = 64  # LCG masked copies per segmenter pass: bounds memory, not the result
    observer: Callable[[GuidedStep], None] | None = None  # sees every guided step (calibration); None in a run

    def __post_init__(self) -> None:
        plan = tuple(self.plan)
        unknown = sorted({str(m) for m in plan if m not in (LCG, GSG, None)})
        if unknown:
            raise ValueError(f"Guidance.plan entries must be 'lcg', 'gsg' or None, got {unknown}")
        if self.max_step is not None and not self.max_step > 0:
            raise ValueError(f"Guidance.max_step must be > 0, got {self.max_step}")
        if self.gradient_at not in GRADIENT_AT:
            raise ValueError(f"Guidance.gradient_at must be one of {GRADIENT_AT}, got {self.gradient_at!r}")
        _check_reduction(self.reduction)
        object.__setattr__(self, "plan", plan)

    def for_labels(self, labels: torch.Tensor) -> GuidanceFn:
        """The sampler's guidance function for a batch whose source labels are ``labels`` (B, H, W) trainIds."""
        labels = labels.to(torch.int64)
        regions = class_regions(labels) if LCG in self.plan else None  # once: labels do not change
        on_device: dict[torch.device, tuple] = {}  # labels and regions moved to the images' device once

        def guide(step: ReverseStep) -> torch.Tensor | None:
            if len(self.plan) != len(step.schedule):
                raise ValueError(f"guidance plan has {len(self.plan)} entries for a chain of {len(step.schedule)} "
                                 "reverse steps")
            module = self.plan[step.index]
            if module is None:
                return None
            if labels.shape != (step.x.shape[0], *step.x.shape[-2:]):
                raise ValueError(f"guidance needs labels of shape {(step.x.shape[0], *step.x.shape[-2:])}, got "
                                 f"{tuple(labels.shape)}")
            if step.x.device not in on_device:
                on_device[step.x.device] = (labels.to(step.x.device), None if regions is None else ClassRegions(
                    regions.image_index.to(step.x.device), regions.class_id.to(step.x.device)))
            batch_labels, batch_regions = on_device[step.x.device]
            seen = step.x if self.gradient_at == "x_t" else \
                step.schedule.predict_x0(step.x, step.position, step.eps).clamp(-1.0, 1.0)
            if module == LCG:  # Eqs. 6-9
                grad = lcg_gradient(self.segmenter, seen, batch_labels, regions=batch_regions,
                                    max_copies_per_pass=self.max_copies_per_pass, memory_format=step.memory_format,
                                    reduction=self.reduction)
            else:  # Eq. 10
                grad = gsg_gradient(self.segmenter, seen, batch_labels, memory_format=step.memory_format,
                                    reduction=self.reduction)
            beta = step.schedule.sigma(step.position, grad)  # Sigma = beta_t (Sec. 5.1)
            # Eq. 7's shift, subtracted by the sampler: a step that lowers the CE (the paper's "+" reads as descent)
            raw = self.lambda_ * beta * grad
            applied = raw if self.max_step is None else raw.clamp(-self.max_step, self.max_step)
            if self.observer is not None:
                self.observer(GuidedStep(index=step.index, position=step.position, module=module, beta=beta,
                                         raw=raw, applied=applied))
            return applied

        return guide
