"""Segmentation scores: a confusion matrix, per-class IoU, mIoU under the 19/16/13-class protocols, pixel accuracy.

mIoU follows the convention of cityscapesScripts and mmsegmentation: IoU_c = TP / (TP + FP + FN), averaged over the
protocol's classes whose union TP + FP + FN is non-zero. A class absent from the ground truth *and* never predicted
has no IoU and is left out (so a toy scene set with 10 classes is scored on its 10, not diluted by 9 zeros); a class
absent from the ground truth but predicted somewhere scores 0 (false positives are punished). Scores are fractions in
[0, 1]; the paper's tables print them as percentages. Pixels labelled 255 are not scored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from dasgen.errors import ConfigError
from dasgen.labels import IGNORE_INDEX, NUM_TRAIN_CLASSES, PROTOCOLS, TRAIN_ID_NAMES
from dasgen.segment.models import Segmenter


def protocol_classes(protocol: int | None, num_classes: int = NUM_TRAIN_CLASSES) -> tuple[int, ...]:
    """The trainIds a protocol averages (``None``: all ``num_classes``); unknown protocol -> ConfigError."""
    if protocol is None:
        return tuple(range(num_classes))
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"segmenter eval_protocol: unknown {protocol!r} (expected one of {sorted(PROTOCOLS)} or null)"
        )
    return PROTOCOLS[protocol]


def class_name(train_id: int) -> str:
    """Cityscapes name of a trainId (``str(id)`` beyond the 19)."""
    return TRAIN_ID_NAMES[train_id] if train_id < len(TRAIN_ID_NAMES) else str(train_id)


class ConfusionMatrix:
    """Accumulates ``matrix[gt, pred]`` pixel counts (int64, CPU) over batches; ignore-labelled pixels skipped."""

    def __init__(self, num_classes: int = NUM_TRAIN_CLASSES, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add predicted class ids and ground-truth labels of the same shape (any device, any integer dtype)."""
        if pred.shape != label.shape:
            raise ValueError(f"ConfusionMatrix.update: pred {tuple(pred.shape)} vs label {tuple(label.shape)}")
        n = self.num_classes
        label = label.reshape(-1).long()  # (P,) pixels
        pred = pred.reshape(-1).long().to(label.device)  # (P,)
        valid = label != self.ignore_index
        label, pred = label[valid], pred[valid]
        if label.numel() and (label.min() < 0 or label.max() >= n):
            raise ValueError(f"ConfusionMatrix.update: label values must be in [0, {n}) or {self.ignore_index}")
        if pred.numel() and (pred.min() < 0 or pred.max() >= n):
            raise ValueError(f"ConfusionMatrix.update: predictions must be in [0, {n})")
        counts = torch.bincount(label * n + pred, minlength=n * n)  # (n*n,) flat index gt*n + pred
        self.matrix += counts.reshape(n, n).cpu()

    def iou_per_class(self) -> torch.Tensor:
        """float64 (num_classes,): TP / (TP + FP + FN); NaN where the class is neither present nor predicted."""
        m = self.matrix.double()
        tp = m.diagonal()
        union = m.sum(0) + m.sum(1) - tp  # predicted + ground truth - intersection
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))

    def scored_classes(self, protocol: int | None = None) -> list[int]:
        """The protocol's trainIds that have an IoU (non-zero union), i.e. those :meth:`miou` averages."""
        iou = self.iou_per_class()
        return [c for c in protocol_classes(protocol, self.num_classes) if c < self.num_classes and not iou[c].isnan()]

    def miou(self, protocol: int | None = None) -> float:
        """Mean IoU over :meth:`scored_classes` (NaN when there is none)."""
        classes = self.scored_classes(protocol)
        if not classes:
            return math.nan
        return float(self.iou_per_class()[classes].mean())

    def pixel_accuracy(self) -> float:
        """Correct / scored pixels over all classes (NaN before any update)."""
        total = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / total if total else math.nan


def evaluate(
    model: Segmenter,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    protocol: int | None = 19,
    device: str | torch.device = "cpu",
) -> dict:
    """Score ``model`` on labelled batches (x in [-1, 1] (B, 3, H, W), y trainIds (B, H, W)).

    Returns ``{"miou", "per_class": {name: iou}, "pixel_accuracy", "images"}``; ``per_class`` holds the protocol's
    scored classes only. Runs in eval mode under ``inference_mode`` and restores the model's previous mode.
    """
    classes = protocol_classes(protocol, model.num_classes)  # fail on a bad protocol before any work
    confusion = ConfusionMatrix(model.num_classes)
    images = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for x, y in batches:
                pred = model(x.to(device)).argmax(1)  # (B, C, H, W) -> (B, H, W)
                confusion.update(pred, y.to(device))
                images += int(x.shape[0])
    finally:
        model.train(was_training)
    iou = confusion.iou_per_class()
    scored = [c for c in classes if c < confusion.num_classes and not iou[c].isnan()]
    return {
        "miou": confusion.miou(protocol),
        "per_class": {class_name(c): float(iou[c]) for c in scored},
        "pixel_accuracy": confusion.pixel_accuracy(),
        "images": images,
    }


def label_agreement(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """mIoU of predictions against labels (B, H, W) over every class present in either (ignore excluded), pooled
    over the batch; 1.0 when nothing is scored. What the pipeline calls a translation's label consistency (of one
    image, or of a batch)."""
    matrix = ConfusionMatrix(num_classes=NUM_TRAIN_CLASSES)
    matrix.update(preds, labels)
    miou = matrix.miou()
    return 1.0 if math.isnan(miou) else miou
