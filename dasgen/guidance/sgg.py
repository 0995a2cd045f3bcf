"""Semantic Gradient Guidance gradients (paper Sec. 4.2): LCG (Eqs. 6-9) and GSG (Eq. 10).

Each function returns the gradient that shifts the reverse-step mean, ``mu_hat = mu - lambda * Sigma * grad``
(Eq. 7 read as a step that *decreases* the cross-entropy, as in classifier guidance towards the label). The segmenter
is injected, the way guided-diffusion's sampler receives ``cond_fn``: any callable ``segmenter(x) -> logits
(B, C, H, W)`` that takes ``x`` in [-1, 1] and does its own normalisation/resizing in torch. It must treat images
independently (e.g. BatchNorm in eval mode) so that guidance is batch-invariant.

Loss normalisation (the paper does not say; it fixes what lambda = 80 means):
- LCG: cross-entropy *mean over the class region's pixels*, one loss per (image, class) copy (``normalise="region"``,
  the default). A region of 3 pixels then gets ~700x the per-pixel step of GSG on a 32x64 image, which at high noise
  can blow small regions into adversarial noise (README "Deviations"). ``normalise="image"`` divides each region's
  summed CE by the image's labelled pixels instead, so LCG steps every pixel as hard as GSG does (a named option,
  ``sgg.lcg_normalise``).
- GSG: cross-entropy *mean over the image's non-ignore pixels*, one loss per image.
Losses of different copies/images are summed before ``autograd.grad``; since each loss depends on one image only,
the summed gradient at image b is exactly that image's own gradient.

LCG view (``sgg.lcg_view``): Eq. 6 feeds the segmenter the masked copy ``x * m_c`` (``view="masked"``, the paper),
so it judges a class region's appearance without its surroundings. ``view="context"`` (a deviation) feeds the whole
image and keeps the CE and the step on m_c: the per-class weighting of LCG without taking the context away. Why it is
offered: a source-trained segmenter that sees a region alone judges it by colour, and on the toy its LCG step pushes
the colour-swapped terrain back to the source colour (docs/results.md, per-class gains).

LCG batching: the class masks m_c partition the labelled pixels and all classes share one noise draw, so Eq. 9's
``sum_c m_c * x_{k-1,c}`` equals ``mu - lambda * Sigma * sum_c m_c * grad_c + sqrt(Sigma) z`` on labelled pixels
(``grad_c`` is already zero outside m_c because it flows through ``x * m_c``). Every (image, class) pair therefore
goes through the segmenter as one batch of masked copies (chunked to ``max_copies_per_pass``), and
:func:`lcg_gradient` returns ``sum_c grad_c``. Pixels labelled ignore (255) belong to no m_c and get zero guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255  # trainId "ignore" (docs/CONVENTIONS.md)
LCG_VIEWS = ("masked", "context")  # what LCG's segmenter sees: x * m_c (Eq. 6) | the whole image (sgg.lcg_view)

Segmenter = Callable[[torch.Tensor], torch.Tensor]


def preferred_memory_format(device: torch.device) -> torch.memory_format:
    """The layout to feed convolutions on ``device``: channels-last on CPU, where oneDNN's convolutions run about
    1.3x faster in NHWC for both the toy nets and ResNet-50 (bench/RESULTS.md); the default layout elsewhere (not
    measured on a GPU here). The layout changes speed and the last float bits, never the maths."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


@dataclass(frozen=True)
class ClassRegions:
    """The LCG copies of a label batch: copy k is class ``class_id[k]`` of image ``image_index[k]`` (Eq. 6's m_c).

    Labels do not change during a translation, so the sampler builds this once (it needs one host sync, for
    ``torch.unique``) and reuses it at every LCG step.
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
    normalise: str = "region",
    view: str = "masked",
) -> torch.Tensor:
    """LCG (Eqs. 6-9): ``sum_c m_c * grad_{x} L_local(x, y, c)``, shape of ``x`` (B, 3, H, W).

    ``L_local`` (Eq. 6) is the cross-entropy of ``segmenter(x * m_c)`` against ``y`` on m_c (ignore elsewhere),
    averaged over m_c's pixels (``normalise="region"``) or summed over m_c and divided by the image's non-ignore
    pixels (``normalise="image"``). All copies of all images are run as batches of at most ``max_copies_per_pass``.
    ``regions`` (from :func:`class_regions`) may be passed to skip recomputing the class list. ``memory_format`` is
    the layout of the segmenter's input (default :func:`preferred_memory_format`). ``view``: the segmenter sees
    ``x * m_c`` (``"masked"``, Eq. 6) or the whole ``x`` (``"context"``, a deviation; the step stays on m_c).
    """
    if max_copies_per_pass < 1:
        raise ValueError(f"max_copies_per_pass must be >= 1, got {max_copies_per_pass}")
    if normalise not in ("region", "image"):
        raise ValueError(f"normalise must be 'region' or 'image', got {normalise!r}")
    if view not in LCG_VIEWS:
        raise ValueError(f"view must be one of {LCG_VIEWS}, got {view!r}")
    if regions is None:
        regions = class_regions(labels)
    memory_format = memory_format or preferred_memory_format(x.device)
    # Autograd on even if the caller runs under no_grad/inference_mode; a fresh leaf because x may be an inference
    # tensor (from the denoiser's inference_mode), which cannot require grad.
    with torch.inference_mode(False), torch.enable_grad():
        x_leaf = x.detach().clone().requires_grad_(True)
        labels, all_images, all_classes = _plain(labels), _plain(regions.image_index), _plain(regions.class_id)
        labelled_pixels = (labels != IGNORE_INDEX).sum(dim=(1, 2))  # (B,) per image, for normalise="image"
        grad = None
        for start in range(0, len(regions), max_copies_per_pass):
            image_index = all_images[start : start + max_copies_per_pass]  # (k,)
            class_id = all_classes[start : start + max_copies_per_pass]  # (k,)
            label_copies = labels[image_index]  # (k, H, W)
            mask = label_copies == class_id.view(-1, 1, 1)  # (k, H, W) m_c
            target = torch.where(mask, label_copies, IGNORE_INDEX)  # (k, H, W) y * m_c, ignore elsewhere
            copies = x_leaf[image_index]  # (k, 3, H, W)
            if view == "masked":
                copies = copies * mask.unsqueeze(1).to(x_leaf.dtype)  # Eq. 6: x * m_c
            logits = segmenter(copies.contiguous(memory_format=memory_format))  # (k, C, H, W)
            _check_logits(logits, copies)
            ce = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")  # (k, H, W)
            pixels = mask.sum(dim=(1, 2)) if normalise == "region" else labelled_pixels[image_index]  # (k,)
            loss_per_copy = ce.sum(dim=(1, 2)) / pixels  # (k,) mean over the class region (or the image)
            if view == "masked":
                # Sum over copies: each copy's loss depends on its own image only, so grads add up per Eq. 9.
                (chunk_grad,) = torch.autograd.grad(loss_per_copy.sum(), x_leaf)
            else:
                # The whole image is seen, so a copy's gradient reaches beyond m_c: keep its m_c part (Eq. 9 takes
                # x_{k-1,c} on m_c only) and add the copies up per image.
                (copy_grad,) = torch.autograd.grad(loss_per_copy.sum(), copies)
                copy_grad = copy_grad * mask.unsqueeze(1).to(copy_grad.dtype)
                chunk_grad = torch.zeros_like(x_leaf).index_add_(0, image_index, copy_grad)
            grad = chunk_grad if grad is None else grad.add_(chunk_grad)
    return torch.zeros_like(x) if grad is None else grad.contiguous()


def gsg_gradient(segmenter: Segmenter, x: torch.Tensor, labels: torch.Tensor, *,
                 memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """GSG (Eq. 10): ``grad_x L_global(x, y)``, the whole-image cross-entropy averaged over non-ignore pixels.

    Images whose label is all ignore get a zero gradient. ``memory_format``: as in :func:`lcg_gradient`.
    """
    memory_format = memory_format or preferred_memory_format(x.device)
    with torch.inference_mode(False), torch.enable_grad():
        x_leaf = x.detach().clone(memory_format=memory_format).requires_grad_(True)
        labels = _plain(labels)
        logits = segmenter(x_leaf)  # (B, C, H, W)
        _check_logits(logits, x_leaf)
        ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")  # (B, H, W)
        valid = (labels != IGNORE_INDEX).sum(dim=(1, 2)).clamp_min(1)  # (B,)
        loss_per_image = ce.sum(dim=(1, 2)) / valid  # (B,)
        (grad,) = torch.autograd.grad(loss_per_image.sum(), x_leaf)
    return grad.contiguous()
