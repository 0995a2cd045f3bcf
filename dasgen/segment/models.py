"""Segmenter registry: one interface over the toy net, torchvision models and plug-in factories.

Every segmenter g (paper Secs. 4.2-4.3) is wrapped in :class:`Segmenter`, so guidance, training and scoring see one
contract: ``forward(x)`` takes images in the diffusion convention (float ``(B, 3, H, W)`` in [-1, 1]) and returns
logits ``(B, num_classes, H, W)`` at the input resolution. The wrapper applies the backbone's own input normalisation
and optional resize, both differentiable, because SGG (Eqs. 6-10) backpropagates the segmentation loss to x.

Architectures (``arch``):

- ``"toy"``: a small fully-convolutional net for the procedural 32x64 toy domains (CPU, seconds to train).
- ``"deeplabv2_resnet101"``, ``"fcn8s_vgg16"``: the paper's networks (Sec. 5.1), assembled from torchvision
  backbones in :mod:`dasgen.segment.paper_nets`; ``"segformer_b0/b2/b5"``: transformers' SegFormer, the stand-in for
  DAFormer (its MiT encoder, SegFormer's decoder; needs the ``segformer`` extra).
- ``"deeplabv3_resnet50"``, ``"deeplabv3_resnet101"``, ``"fcn_resnet50"``, ``"fcn_resnet101"``: torchvision models
  built with ``weights=None, weights_backbone=None``.
- Initial weights (``segmenter.weights``): a local safetensors file
  (:func:`dasgen.segment.checkpoint.load_initial_weights`), or ``imagenet``, fetched through torchvision's and
  transformers' own weight APIs (:mod:`dasgen.segment.pretrained`); building a model never downloads anything.
- ``"module:factory"``: imports ``module`` and calls ``factory(num_classes=...)``; the returned ``nn.Module`` may
  return logits, a dict with ``"out"`` (torchvision style) or an object with ``.logits`` (transformers style, e.g.
  ``SegformerForSemanticSegmentation``); logits at any resolution are resized to the input.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dasgen.errors import ConfigError
from dasgen.labels import NUM_TRAIN_CLASSES
from dasgen.segment.paper_nets import DeepLabV2, FCN8s, build_segformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TORCHVISION_ARCHS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50", "fcn_resnet101")
PAPER_ARCHS = ("deeplabv2_resnet101", "fcn8s_vgg16")  # the paper's Sec. 5.1 networks (segment/paper_nets.py)
SEGFORMER_ARCHS = ("segformer_b0", "segformer_b2", "segformer_b5")  # DAFormer's encoder; needs the segformer extra
BUILTIN_ARCHS = ("toy", *PAPER_ARCHS, *SEGFORMER_ARCHS, *TORCHVISION_ARCHS)

# The task head of each arch: the layers that depend on the class count and that initial (ImageNet) weights never
# provide. Every other tensor of the network is what a complete initialisation must fill (see
# dasgen.segment.checkpoint.initial_weights_scope); a plug-in's head is unknown, so all of it counts.
HEAD_PREFIXES = {
    "toy": ("net.classifier.",),
    "deeplabv2_resnet101": ("net.aspp.",),  # the V2 ASPP classifier (paper_nets.DeepLabV2)
    "fcn8s_vgg16": ("net.score_",),  # score_fr / score_pool4 / score_pool3; fc6/fc7 come from VGG's classifier
    **{arch: ("net.decode_head.",) for arch in SEGFORMER_ARCHS},  # ImageNet MiT checkpoints hold the encoder only
    **{arch: ("net.classifier.", "net.aux_classifier.") for arch in TORCHVISION_ARCHS},
}


# -- normalisation --------------------------------------------------------------------------------------------------


def resolve_normalisation(spec: str | Mapping[str, Any] | None, arch: str) -> dict[str, Any]:
    """A normalisation spec -> ``{"kind", "mean", "std"}`` (mean/std on the [0, 1] scale, or None for kind "none").

    ``None`` picks the arch's default: ImageNet statistics for torchvision and plug-in models (their backbones are
    pretrained that way), "none" for the toy net (it sees x in [-1, 1] directly). A mapping with ``mean`` and ``std``
    gives custom statistics; a mapping written by :meth:`Segmenter.config` round-trips.
    """
    if spec is None:
        spec = "none" if arch == "toy" else "imagenet"
    if isinstance(spec, str):
        if spec == "imagenet":
            return {"kind": "imagenet", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        if spec == "none":
            return {"kind": "none", "mean": None, "std": None}
        raise ConfigError(f"segmenter normalisation: unknown value {spec!r} (expected 'imagenet', 'none' or mean/std)")
    if spec.get("kind") == "none":
        return {"kind": "none", "mean": None, "std": None}
    mean, std = spec.get("mean"), spec.get("std")
    if mean is None or std is None or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"segmenter normalisation: need 3 means and 3 positive stds, got {dict(spec)!r}")
    return {"kind": str(spec.get("kind", "custom")), "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


# -- the toy network -----------------------------------------------------------------------------------------------


def _conv_block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """conv3x3 -> GroupNorm -> ReLU. GroupNorm, not BatchNorm: the paper trains g with batch size 2 (Sec. 5.1), and
    per-sample statistics make train and eval mode behave alike."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.ReLU(inplace=True),
    )


class ToySegNet(nn.Module):
    """A small U-shaped fully-convolutional net: full-res stem, two stride-2 stages, an additive-skip decoder.

    Channels w/2 at full resolution, w at 1/2, 2w at 1/4 (dilated, receptive field ~40 px, enough for 32x64 toy
    scenes). Skips are added after a 1x1 projection rather than concatenated, and only one 3x3 conv runs at full
    resolution: the convs at full resolution dominate the cost on a CPU. ~120k parameters at width 32.
    """

    def __init__(self, num_classes: int = NUM_TRAIN_CLASSES, width: int = 32) -> None:
        super().__init__()
        w0, w1, w2 = max(width // 2, 8), width, 2 * width
        self.stem = _conv_block(3, w0)  # (B, w0, H, W)
        self.down1 = nn.Sequential(_conv_block(w0, w1, stride=2), _conv_block(w1, w1))  # (B, w1, H/2, W/2)
        self.down2 = nn.Sequential(  # (B, w2, H/4, W/4); dilation widens context cheaply
            _conv_block(w1, w2, stride=2), _conv_block(w2, w2, dilation=2), _conv_block(w2, w2, dilation=4)
        )
        self.lateral2 = nn.Conv2d(w2, w1, 1)  # 1/4 -> added to the 1/2 skip
        self.up1 = _conv_block(w1, w1)  # (B, w1, H/2, W/2)
        self.lateral1 = nn.Conv2d(w1, w0, 1)  # 1/2 -> added to the full-res skip
        self.up0 = _conv_block(w0, w0)  # (B, w0, H, W)
        self.classifier = nn.Conv2d(w0, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(x)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        u1 = self.up1(s1 + F.interpolate(self.lateral2(s2), size=s1.shape[-2:], mode="bilinear", align_corners=False))
        u0 = self.up0(s0 + F.interpolate(self.lateral1(u1), size=s0.shape[-2:], mode="bilinear", align_corners=False))
        return self.classifier(u0)


# -- the wrapper -----------------------------------------------------------------------------------------------------


class Segmenter(nn.Module):
    """Wraps any backbone so callers see one interface: x in [-1, 1] -> logits (B, num_classes, H, W).

    The backbone is ``self.net``, so a checkpoint's keys are ``net.<backbone keys>``. Normalisation mean/std are
    non-persistent buffers: they follow ``.to(device)`` but live in the JSON sidecar, not in the weights.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        arch: str,
        num_classes: int,
        normalisation: dict[str, Any],
        input_size: tuple[int, int] | None = None,
        width: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.num_classes = num_classes
        self.normalisation = normalisation
        self.input_size = tuple(int(v) for v in input_size) if input_size is not None else None
        self.width = width
        # Where the initial weights came from and how many tensors they filled (set by the caller that loaded them,
        # e.g. pipeline.segmenters.new_segmenter); the checkpoint sidecar carries it down the chain g_0 -> g_N.
        self.initial_weights: dict[str, Any] | None = None
        if normalisation["kind"] != "none":
            self.register_buffer("_mean", torch.tensor(normalisation["mean"]).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("_std", torch.tensor(normalisation["std"]).view(1, 3, 1, 1), persistent=False)
        else:
            self._mean = self._std = None

    def config(self) -> dict[str, Any]:
        """What :func:`build_segmenter` needs to rebuild this model, and the provenance of its initial weights when
        it has any (written to the checkpoint sidecar)."""
        config = {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "input_size": list(self.input_size) if self.input_size is not None else None,
            "normalisation": dict(self.normalisation),
            "width": self.width,
        }
        if self.initial_weights is not None:  # absent otherwise, so sidecars of randomly initialised g stay as before
            config["initial_weights"] = dict(self.initial_weights)
        return config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float (B, 3, H, W) in [-1, 1] -> logits (B, num_classes, H, W); differentiable w.r.t. x."""
        height, width = x.shape[-2:]
        if self._mean is not None:
            x = ((x + 1.0) * 0.5 - self._mean.to(x.dtype)) / self._std.to(x.dtype)  # [-1,1] -> [0,1] -> standardised
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            shrinking = self.input_size[0] < height or self.input_size[1] < width
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=shrinking)
        out = self.net(x)
        if not isinstance(out, torch.Tensor):
            # torchvision: {"out": ...}; transformers: a ModelOutput (a Mapping too) with .logits
            out = out.logits if hasattr(out, "logits") else out["out"]
        if out.shape[-2:] != (height, width):
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
        return out


# -- registry --------------------------------------------------------------------------------------------------------


def _build_torchvision(arch: str, num_classes: int) -> nn.Module:
    from torchvision.models import segmentation

    factory = getattr(segmentation, arch)
    # weights=None and weights_backbone=None: never download; aux head off (Eq. 12 has no auxiliary loss).
    return factory(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)


def _build_plugin(arch: str, num_classes: int) -> nn.Module:
    module_name, _, factory_name = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"segmenter arch {arch!r}: cannot import module {module_name!r} ({error})") from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ConfigError(f"segmenter arch {arch!r}: module {module_name!r} has no callable {factory_name!r}")
    net = factory(num_classes=num_classes)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"segmenter arch {arch!r}: factory returned {type(net).__name__}, not a torch nn.Module")
    return net


def build_segmenter(
    arch: str,
    *,
    num_classes: int = NUM_TRAIN_CLASSES,
    input_size: tuple[int, int] | None = None,
    width: int = 32,
    normalisation: str | Mapping[str, Any] | None = None,
) -> Segmenter:
    """Build a randomly initialised :class:`Segmenter` (nothing downloaded).

    ``input_size`` (H, W): resize inputs to this size inside the model (logits come back at the input size);
    ``width``: channel width of the toy net (ignored by other archs); ``normalisation``: see
    :func:`resolve_normalisation`. Unknown arch -> ConfigError naming it.
    """
    if num_classes < 1:
        raise ConfigError(f"segmenter num_classes: must be positive, got {num_classes}")
    if arch == "toy":
        net: nn.Module = ToySegNet(num_classes=num_classes, width=width)
    elif arch in TORCHVISION_ARCHS:
        net = _build_torchvision(arch, num_classes)
    elif arch == "deeplabv2_resnet101":
        net = DeepLabV2(num_classes)
    elif arch == "fcn8s_vgg16":
        net = FCN8s(num_classes)
    elif arch in SEGFORMER_ARCHS:
        net = build_segformer(arch, num_classes)
    elif ":" in arch:
        net = _build_plugin(arch, num_classes)
    else:
        raise ConfigError(
            f"segmenter arch: unknown {arch!r} (expected one of {', '.join(BUILTIN_ARCHS)} or 'module:factory')"
        )
    return Segmenter(
        net,
        arch=arch,
        num_classes=num_classes,
        normalisation=resolve_normalisation(normalisation, arch),
        input_size=input_size,
        width=width if arch == "toy" else None,
    )
