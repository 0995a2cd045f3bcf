"""Initial weights from the libraries' own weight APIs: ``segmenter.weights: imagenet`` and Hub-named SegFormer files.

The paper initialises its segmenters from ImageNet (Sec. 5.1). ``imagenet`` takes each arch's ImageNet encoder from
the library that defines it, through that library's own download-and-cache machinery, so the weights are the
published ones and a machine without network uses what is already cached:

- torchvision backbones (``deeplabv2_resnet101``, ``fcn8s_vgg16``, the torchvision segmentation models): the
  ``Weights`` enum's ``get_state_dict`` -- torch.hub's download into ``$TORCH_HOME/hub/checkpoints/`` (default
  ``~/.cache/torch``), read from there when present. torchvision publishes these files only as torch pickles; they
  are read with torch's weights-only loader, which builds tensors and refuses any other object.
- SegFormer (``segformer_b*``): transformers' ``from_pretrained`` of NVIDIA's ImageNet MiT encoders
  (``nvidia/mit-b*``): the Hugging Face Hub when online, its cache (``$HF_HOME``, ``HF_HUB_OFFLINE=1``) when not.

A SegFormer checkpoint written by transformers (the Hub's ``segformer.encoder.block...`` / ``decode_head.linear_c...``
names) is also loaded through transformers' ``from_pretrained``, which maps those names onto the modules of the
installed version (transformers 5 renamed them): :func:`segformer_state`.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from dasgen.errors import CheckpointError, ConfigError
from dasgen.segment.checkpoint import InitialWeightsReport, apply_initial_state
from dasgen.segment.models import SEGFORMER_ARCHS, Segmenter

# The torchvision weights each arch's encoder starts from. IMAGENET1K_V1 is the original ImageNet training (the
# weights the DeepLab/FCN literature and the paper's baselines used), not torchvision's later V2 recipe.
TORCHVISION_IMAGENET = {
    "deeplabv2_resnet101": ("resnet101", "ResNet101_Weights", "net.backbone."),
    "deeplabv3_resnet101": ("resnet101", "ResNet101_Weights", "net.backbone."),
    "fcn_resnet101": ("resnet101", "ResNet101_Weights", "net.backbone."),
    "deeplabv3_resnet50": ("resnet50", "ResNet50_Weights", "net.backbone."),
    "fcn_resnet50": ("resnet50", "ResNet50_Weights", "net.backbone."),
    "fcn8s_vgg16": ("vgg16", "VGG16_Weights", "net."),
}
TORCHVISION_WEIGHTS = "IMAGENET1K_V1"
# NVIDIA's ImageNet-1k MiT encoders on the Hugging Face Hub (the SegFormer paper's, and DAFormer's, initialisation)
SEGFORMER_IMAGENET = {arch: f"nvidia/mit-{arch.removeprefix('segformer_')}" for arch in SEGFORMER_ARCHS}


def imagenet_source(arch: str) -> str:
    """What ``imagenet`` means for ``arch`` (e.g. ``torchvision ResNet101_Weights.IMAGENET1K_V1``); ConfigError for
    an arch without published ImageNet weights (the toy net, plug-ins)."""
    if arch in TORCHVISION_IMAGENET:
        return f"torchvision {TORCHVISION_IMAGENET[arch][1]}.{TORCHVISION_WEIGHTS}"
    if arch in SEGFORMER_IMAGENET:
        return f"transformers {SEGFORMER_IMAGENET[arch]}"
    raise ConfigError(f"segmenter.weights: imagenet: no published ImageNet weights for arch {arch!r} (known for "
                      f"{', '.join([*TORCHVISION_IMAGENET, *SEGFORMER_IMAGENET])}); give a local .safetensors file "
                      "or null")


def load_imagenet_weights(model: Segmenter, *, allow_partial: bool = False) -> InitialWeightsReport:
    """Initialise ``model``'s encoder (in place) with its arch's published ImageNet weights (``segmenter.weights:
    imagenet``); a load that leaves part of the encoder unfilled is refused unless ``allow_partial``."""
    tensors, prefix, source = imagenet_state(model.arch, model.net)
    return apply_initial_state(model, tensors, source=f"imagenet: {source}", prefixes=(prefix,),
                               allow_partial=allow_partial)


def imagenet_state(arch: str, net: nn.Module) -> tuple[dict[str, torch.Tensor], str, str]:
    """ImageNet tensors for ``arch`` under the names of the bare network ``net`` (a Segmenter's ``.net``), the prefix
    they are loaded under in the Segmenter, and the source's name. Downloads when the library's cache lacks them;
    one-line CheckpointError when that fails (no network, a damaged cache file)."""
    source = imagenet_source(arch)
    if arch in SEGFORMER_IMAGENET:
        return segformer_state(net, SEGFORMER_IMAGENET[arch]), "net.", source
    module, enum_name, prefix = TORCHVISION_IMAGENET[arch]
    import torchvision.models

    weights = getattr(torchvision.models, enum_name)[TORCHVISION_WEIGHTS]
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        # torch.hub: read $TORCH_HOME/hub/checkpoints/<file> when present, else download it there (hash-checked)
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except OSError as error:  # URLError (no network), a full disk, an unreadable cache file
        raise CheckpointError(f"segmenter.weights: imagenet: cannot get {source} ({error}); on a machine without "
                              f"network put {Path(weights.url).name} (from {weights.url}) at {cache}") from None
    except Exception as error:  # noqa: BLE001 - torch raises UnpicklingError/RuntimeError for a foreign or torn file
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise CheckpointError(f"{cache}: not a readable {source} file ({reason}); delete it to download it "
                              "again") from None
    if arch == "fcn8s_vgg16":
        from dasgen.segment.paper_nets import FCN8s

        state = FCN8s.convolutionalise(state)
    return state, prefix, source


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers prints a load report and progress bars on every from_pretrained; dasgen reports the load itself."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def segformer_state(net: nn.Module, source: str | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors transformers' ``from_pretrained`` loads from ``source`` into a copy of the SegFormer ``net``, under
    ``net``'s own state-dict names; tensors it had to initialise itself (missing or of another shape) are left out.

    ``source``: a Hub id (the Hub or its cache), or a state dict in a transformers checkpoint's names (written to a
    temporary folder beside ``net``'s config, so the same loader maps them).
    """
    from transformers import SegformerForSemanticSegmentation

    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_transformers())
        if isinstance(source, dict):
            from safetensors.torch import save_file

            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dasgen-segformer-")))
            net.config.save_pretrained(folder)
            save_file({k: v.contiguous() for k, v in source.items()}, str(folder / "model.safetensors"),
                      metadata={"format": "pt"})
            where = str(folder)
        else:
            where = source
        try:
            loaded, info = SegformerForSemanticSegmentation.from_pretrained(
                where, config=net.config, output_loading_info=True, ignore_mismatched_sizes=True,
                use_safetensors=isinstance(source, dict) or None)
        except OSError as error:  # not on the Hub, no network and not cached, a damaged cache
            reason = str(error).splitlines()[0][:200]
            raise CheckpointError(f"segmenter.weights: cannot load {where} with transformers ({reason}); on a "
                                  "machine without network fill the Hugging Face cache first (HF_HOME)") from None
    skipped = set(info["missing_keys"]) | {str(k[0] if isinstance(k, tuple) else k) for k in info["mismatched_keys"]}
    return {k: v for k, v in loaded.state_dict().items() if k not in skipped}


def looks_hub_named(tensors: dict[str, torch.Tensor]) -> bool:
    """True for a SegFormer state dict in the names of transformers checkpoints on the Hub (``segformer.encoder.``,
    ``decode_head.linear_c``), which the installed transformers may have renamed."""
    return any(k.startswith("segformer.encoder.") or k.startswith("decode_head.linear_c.") for k in tensors)
