"""The paper's segmenters (Sec. 5.1) built from torchvision parts: DeepLab-V2 / ResNet-101 and FCN-8s / VGG16.

torchvision ships DeepLab-V3 and FCN-ResNet, not the two older networks the paper reports (its Tab. 1 "Res-101" rows
and its VGG16 rows), so they are assembled here from torchvision's backbones, randomly initialised;
``segmenter.weights: imagenet`` (or a local safetensors file) fills their encoders with ImageNet weights under
torchvision's key names. Both return logits at their own output stride; :class:`~dasgen.segment.models.Segmenter`
resizes them to the input.

Parameter counts (19 classes), against the published networks:

- ``deeplabv2_resnet101``: 43.9M -- ResNet-101 without its fc (42.5M) plus the V2 ASPP classifier (4 x 3x3 convs
  2048 -> 19 with bias, 1.4M). The reference Caffe/PyTorch DeepLab-V2 (as used by AdaptSegNet and the paper) has the
  same layers and ~43.9M parameters; its ResNet has stride 2 in the first 1x1 conv of each stage (torchvision's is in
  the 3x3), which changes no parameter count.
- ``fcn8s_vgg16``: 134.3M -- VGG16 features (14.7M), fc6 as a 7x7 conv (102.8M), fc7 as a 1x1 conv (16.8M), score
  layers for pool3 / pool4 / fc7. The published FCN-8s has ~134M. Differences: no 100-pixel input padding (fc6 uses
  padding 3 so the map keeps its size) and bilinear upsampling in place of learned deconvolutions (which FCN
  initialises to bilinear and most reimplementations freeze).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DeepLabV2(nn.Module):
    """ResNet-101 at output stride 8 (dilated layer3/layer4) and the V2 ASPP classifier: four parallel dilated 3x3
    convs (rates 6, 12, 18, 24) straight to class scores, summed (Chen et al., DeepLab, TPAMI 2017)."""

    RATES = (6, 12, 18, 24)

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from torchvision.models import resnet101

        # torchvision's own ResNet (its key names, so ImageNet weights load under the prefix "net.backbone.")
        self.backbone = resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        del self.backbone.fc, self.backbone.avgpool  # not part of a segmenter
        self.aspp = nn.ModuleList(nn.Conv2d(2048, num_classes, 3, padding=r, dilation=r) for r in self.RATES)
        for conv in self.aspp:  # DeepLab-V2 initialises the classifier with N(0, 0.01)
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))  # (B, 64, H/4, W/4)
        features = b.layer4(b.layer3(b.layer2(b.layer1(x))))  # (B, 2048, H/8, W/8)
        return sum(conv(features) for conv in self.aspp)  # (B, C, H/8, W/8)


class FCN8s(nn.Module):
    """VGG16 features, fc6/fc7 as convolutions, and the FCN-8s skip head: class scores from fc7 (1/32), pool4 (1/16)
    and pool3 (1/8), each upsampled and added to the next (Long et al., CVPR 2015)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from torchvision.models import vgg16

        self.features = vgg16(weights=None).features  # torchvision's key names ("net.features.N" for ImageNet weights)
        self.fc = nn.Sequential(
            nn.Conv2d(512, 4096, 7, padding=3), nn.ReLU(inplace=True), nn.Dropout2d(),
            nn.Conv2d(4096, 4096, 1), nn.ReLU(inplace=True), nn.Dropout2d(),
        )
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        for layer in (self.score_pool4, self.score_pool3):  # FCN zero-initialises the skip scores
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @staticmethod
    def convolutionalise(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An ImageNet VGG16 state dict (torchvision names) with its fc6/fc7 as FCN's convolutions: ``classifier.0``
        (4096 x 25088, the flattened 512x7x7 pool5) -> ``fc.0`` (4096, 512, 7, 7), ``classifier.3`` -> ``fc.3``
        (4096, 4096, 1, 1), as FCN initialises them; the 1000-way ``classifier.6`` is left as it is (unused)."""
        out = dict(state)
        for vgg, fcn, shape in (("classifier.0", "fc.0", (4096, 512, 7, 7)),
                                ("classifier.3", "fc.3", (4096, 4096, 1, 1))):
            weight = out.get(f"{vgg}.weight")
            if weight is not None and weight.numel() == math.prod(shape) and f"{vgg}.bias" in out:
                out[f"{fcn}.weight"] = out.pop(f"{vgg}.weight").reshape(shape)  # (out, in) -> (out, C, kH, kW)
                out[f"{fcn}.bias"] = out.pop(f"{vgg}.bias")
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3 = self.features[:17](x)  # (B, 256, H/8, W/8): VGG16 pools at indices 4, 9, 16, 23, 30
        pool4 = self.features[17:24](pool3)  # (B, 512, H/16, W/16)
        score = self.score_fr(self.fc(self.features[24:](pool4)))  # (B, C, H/32, W/32)
        score = F.interpolate(score, size=pool4.shape[-2:], mode="bilinear", align_corners=False)
        score = score + self.score_pool4(pool4)  # (B, C, H/16, W/16)
        score = F.interpolate(score, size=pool3.shape[-2:], mode="bilinear", align_corners=False)
        return score + self.score_pool3(pool3)  # (B, C, H/8, W/8)


SEGFORMER_VARIANTS = {  # MiT-b0 ... b5 encoders (Xie et al., 2021), as in transformers' SegformerConfig presets
    "segformer_b0": {"depths": [2, 2, 2, 2], "hidden_sizes": [32, 64, 160, 256], "decoder_hidden_size": 256},
    "segformer_b2": {"depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
    "segformer_b5": {"depths": [3, 6, 40, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
}


def build_segformer(variant: str, num_classes: int) -> nn.Module:
    """transformers' ``SegformerForSemanticSegmentation`` from a config (random init; nothing downloaded).

    The stand-in for the paper's DAFormer: the same MiT encoder (``segformer_b5`` is DAFormer's), but SegFormer's
    all-MLP decoder instead of DAFormer's context-aware fusion head -- a named deviation. Needs the ``segformer``
    extra (``pip install 'dasgen[segformer]'``).
    """
    from dasgen.errors import ConfigError

    try:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
    except ImportError as error:
        raise ConfigError(f"segmenter arch {variant!r} needs the transformers package: pip install "
                          f"'dasgen[segformer]' ({error})") from None
    config = SegformerConfig(num_labels=num_classes, **SEGFORMER_VARIANTS[variant])
    return SegformerForSemanticSegmentation(config)
