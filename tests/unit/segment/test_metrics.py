"""Confusion matrix, IoU, mIoU protocols and evaluate() (dasgen.segment.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dasgen.errors import ConfigError
from dasgen.labels import PROTOCOLS, TRAIN_ID_NAMES
from dasgen.segment.metrics import ConfusionMatrix, evaluate
from dasgen.segment.models import Segmenter, resolve_normalisation


def test_hand_computed_example():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])  # last two pixels are ignored whatever they predict
    cm = ConfusionMatrix(num_classes=4)
    cm.update(pred, label)
    # class 0: TP 1, FP 1 (a gt-2 pixel), FN 1 (gt-0 predicted 1) -> 1/3
    # class 1: TP 2, FP 1, FN 0 -> 2/3;  class 2: TP 1, FP 0, FN 1 -> 1/2;  class 3: absent, never predicted
    iou = cm.iou_per_class()
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)  # class 3 left out, not counted as 0
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)
    assert cm.scored_classes() == [0, 1, 2]


def test_predicted_but_absent_class_scores_zero():
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 0, 2]), torch.tensor([0, 0, 0]))
    assert cm.iou_per_class()[2] == 0.0
    assert cm.miou() == pytest.approx((2 / 3 + 0.0) / 2)


def test_against_brute_force_numpy():
    rng = np.random.default_rng(0)
    n = 19
    labels = rng.integers(0, n, size=(4, 30, 40))
    labels[rng.random(labels.shape) < 0.1] = 255
    labels[labels == 7] = 255  # class 7 never in the ground truth ...
    preds = rng.integers(0, n, size=(4, 30, 40))
    preds[preds == 11] = 12  # ... class 11 never predicted
    cm = ConfusionMatrix(n)
    for p, l in zip(preds, labels):  # batches accumulate
        cm.update(torch.from_numpy(p), torch.from_numpy(l))
    expected = []
    valid = labels != 255
    for c in range(n):
        tp = np.sum((preds == c) & (labels == c) & valid)
        fp = np.sum((preds == c) & (labels != c) & valid)
        fn = np.sum((preds != c) & (labels == c) & valid)
        expected.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
    np.testing.assert_allclose(cm.iou_per_class().numpy(), np.array(expected), equal_nan=True)
    assert cm.miou() == pytest.approx(np.nanmean(expected))
    assert cm.pixel_accuracy() == pytest.approx(np.sum((preds == labels) & valid) / valid.sum())
    for protocol, classes in PROTOCOLS.items():
        assert cm.miou(protocol) == pytest.approx(np.nanmean([expected[c] for c in classes]))


def test_protocol_selection():
    # classes 0..18 perfectly predicted except terrain (9), which is always called vegetation (8)
    label = torch.arange(19).repeat_interleave(4)
    pred = label.clone()
    pred[label == 9] = 8
    cm = ConfusionMatrix()
    cm.update(pred, label)
    assert cm.miou(19) < 1.0
    assert 9 not in PROTOCOLS[16]
    iou_8 = 4 / 8  # vegetation: TP 4, FP 4
    assert cm.miou(16) == pytest.approx((15 + iou_8) / 16)
    assert cm.miou(13) == pytest.approx((12 + iou_8) / 13)
    assert cm.miou(None) == cm.miou(19)
    with pytest.raises(ConfigError, match="eval_protocol: unknown 15"):
        cm.miou(15)


def test_update_validates():
    cm = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match="label values"):
        cm.update(torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="predictions"):
        cm.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="pred"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())


class _ThresholdNet(nn.Module):
    """Predicts road (0) where the red channel is negative, sky (10) elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 19, *x.shape[-2:])
        logits[:, 10] = self.scale * x[:, 0]
        return logits


def test_evaluate_reports_and_restores_mode():
    model = Segmenter(_ThresholdNet(), arch="test", num_classes=19, normalisation=resolve_normalisation("none", "toy"))
    model.train()
    x = torch.full((2, 3, 4, 4), -0.5)
    x[:, 0, :2] = 0.5  # top half "sky"
    y = torch.zeros(2, 4, 4, dtype=torch.int64)
    y[:, :2] = 10
    y[1, 3, 3] = 10  # one sky pixel predicted road
    y[0, 3] = 255  # ignored row
    batches = [(x[:1], y[:1]), (x[1:], y[1:])]
    result = evaluate(model, iter(batches), protocol=19)
    assert model.training  # previous mode restored
    assert result["images"] == 2
    assert set(result["per_class"]) == {TRAIN_ID_NAMES[0], TRAIN_ID_NAMES[10]}
    # sky: TP 16, FN 1 -> 16/17; road: TP 11, FP 1 -> 11/12 (28 scored pixels)
    assert result["per_class"]["sky"] == pytest.approx(16 / 17)
    assert result["per_class"]["road"] == pytest.approx(11 / 12)
    assert result["miou"] == pytest.approx((16 / 17 + 11 / 12) / 2)
    assert result["pixel_accuracy"] == pytest.approx(27 / 28)
    with pytest.raises(ConfigError):
        evaluate(model, iter(batches), protocol=7)
