"""Segmenter checkpoints: safetensors weights plus a JSON sidecar; nothing is ever unpickled.

A checkpoint ``g_n.safetensors`` holds the :class:`~dasgen.segment.models.Segmenter` state dict (keys ``net.*``);
its sidecar ``g_n.json`` holds what rebuilds the model (arch, classes, input size, normalisation, toy width), the
format version, the weights' sha256, where the initial weights came from with their tensor counts
(``initial_weights``, when g started from any) and caller metadata (e.g. the domain n it was fine-tuned on). Both
files are written atomically, weights first, so a sidecar never describes weights that are not on disk.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from dasgen.errors import CheckpointError, ConfigError
from dasgen.segment.models import HEAD_PREFIXES, SEGFORMER_ARCHS, Segmenter, build_segmenter
from dasgen.io.atomic import atomic_write_bytes, atomic_write_json, sha256_bytes

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
_RESERVED = ("arch", "num_classes", "input_size", "normalisation", "width", "format_version", "weights_sha256",
             "initial_weights")


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar next to a ``.safetensors`` checkpoint (same stem)."""
    return Path(path).with_suffix(".json")


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: refusing pickle-based checkpoint ({path.suffix}); convert it to safetensors "
            "(safetensors.torch.save_file(state_dict, 'weights.safetensors'))"
        )


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], bytes]:
    """Tensors and raw bytes of a safetensors file; every failure is a one-line CheckpointError naming it."""
    path = Path(path)
    _refuse_pickle(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: expected a .safetensors file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from error
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as error:  # safetensors raises its own SafetensorError on corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    return tensors, data


def _abbrev(keys: list[str], limit: int = 3) -> str:
    head = ", ".join(keys[:limit])
    return head + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def save_segmenter(model: Segmenter, path: Path, *, meta: dict[str, Any]) -> str:
    """Write ``model`` to ``path`` (.safetensors) and its JSON sidecar; return the weights file's sha256.

    ``meta`` (JSON-serialisable, e.g. ``{"domain": 3, "trained_on": "X^3 + source"}``) is merged into the sidecar;
    it may not override the keys that rebuild the model.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: segmenter checkpoints must end in .safetensors")
    clash = sorted(set(meta) & set(_RESERVED))
    if clash:
        raise ValueError(f"save_segmenter: meta may not set reserved keys {clash}")
    # contiguous CPU copies: safetensors stores dense buffers and refuses shared storage
    state = {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}
    # One metadata key only: safetensors writes its metadata map in hash order, so two keys make the bytes of the
    # same weights differ from run to run (the architecture lives in the JSON sidecar).
    data = save_safetensors_bytes(state, metadata={"format": "pt"})
    digest = sha256_bytes(data)
    atomic_write_bytes(path, data)
    sidecar = {**model.config(), "format_version": FORMAT_VERSION, "weights_sha256": digest, **meta}
    atomic_write_json(sidecar_path(path), sidecar)
    return digest


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar of checkpoint ``path`` as a dict (CheckpointError when missing, unreadable or incomplete)."""
    side = sidecar_path(Path(path))
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: sidecar {side.name} not found (it records the architecture)") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{side}: unreadable sidecar ({error})") from error
    if not isinstance(sidecar, dict) or "arch" not in sidecar or "num_classes" not in sidecar:
        raise CheckpointError(f"{side}: sidecar lacks 'arch' or 'num_classes'")
    classes = sidecar["num_classes"]
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise CheckpointError(f"{side}: num_classes must be a positive integer, got {str(classes)[:40]!r}")
    width, size = sidecar.get("width"), sidecar.get("input_size")  # a hand-edited sidecar: one line, not a torch error
    if width is not None and (type(width) is not int or width < 1):
        raise CheckpointError(f"{side}: width must be a positive integer, got {repr(width)[:40]}")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(type(v) is int and v >= 8 for v in size)):
        raise CheckpointError(f"{side}: input_size must be [height, width] with sides >= 8 (as in params), or null; "
                              f"got {repr(size)[:40]}")
    if not isinstance(sidecar.get("weights_sha256"), str):
        raise CheckpointError(f"{side}: no weights_sha256 recorded, so the weights cannot be checked; re-save the "
                              "checkpoint with dasgen (save_segmenter) or rerun the stage that wrote it")
    version = sidecar.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{side}: format_version {version!r} is newer than this dasgen reads ({FORMAT_VERSION})")
    return sidecar


def load_segmenter(
    path: Path,
    *,
    device: str | torch.device = "cpu",
    expect_arch: str | None = None,
    expect_classes: int | None = None,
) -> Segmenter:
    """Rebuild a :class:`Segmenter` from its sidecar, load its weights strictly, move it to ``device``, eval mode.

    Raises CheckpointError (one line naming the file) for a missing file or sidecar, a pickle format, an arch or
    class count other than expected, a sha256 that does not match the sidecar, or weights that do not fit. A
    ``module:factory`` arch is built only when ``expect_arch`` names it: the sidecar alone never picks code to run.
    """
    path = Path(path)
    _refuse_pickle(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    sidecar = read_sidecar(path)
    arch, num_classes = sidecar["arch"], sidecar["num_classes"]
    if expect_arch is not None and arch != expect_arch:
        raise CheckpointError(f"{path}: architecture {arch!r}, expected {expect_arch!r}")
    if expect_classes is not None and num_classes != expect_classes:
        raise CheckpointError(f"{path}: {num_classes} classes, expected {expect_classes}")
    if ":" in str(arch) and expect_arch is None:
        # a plug-in arch imports and calls code; a file alone must not choose what runs
        raise CheckpointError(f"{path}: plug-in architecture {arch!r} is only built when the caller expects it "
                              "(expect_arch, i.e. segmenter.arch in params.yaml)")
    tensors, data = _read_weights(path)
    if sidecar["weights_sha256"] != sha256_bytes(data):
        raise CheckpointError(f"{path}: sha256 does not match its sidecar (file replaced or truncated?)")
    input_size = sidecar.get("input_size")
    try:
        model = build_segmenter(
            arch,
            num_classes=int(num_classes),
            input_size=tuple(input_size) if input_size else None,
            width=int(sidecar.get("width") or 32),
            normalisation=sidecar.get("normalisation"),
        )
    except ConfigError as error:
        raise CheckpointError(f"{path}: cannot rebuild the model ({error})") from error
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {_abbrev(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_abbrev(unexpected)}")
        if wrong:
            k = wrong[0]
            parts.append(f"shape mismatch at {k}: {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}"
                         + (f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""))
        raise CheckpointError(f"{path}: weights do not fit {arch!r}: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=True)
    if isinstance(sidecar.get("initial_weights"), dict):  # g_n keeps g_0's record of where its weights began
        model.initial_weights = sidecar["initial_weights"]
    return model.to(device).eval()


@dataclass
class InitialWeightsReport:
    """What an initial-weights load did: tensors loaded, the network's tensors it was expected to fill, and the keys
    skipped for each reason. ``expected`` counts the network's tensors outside its task head (the class-count
    dependent layers, :data:`~dasgen.segment.models.HEAD_PREFIXES`) and without BatchNorm's step counters; ``filled``
    how many of those the weights gave. A load is complete when ``filled == expected``."""

    prefix: str
    loaded: int  # tensors loaded in all (the head's too, e.g. from a whole segmenter checkpoint)
    missing: list[str] = field(default_factory=list)  # model keys the file did not provide (e.g. the new head)
    unexpected: list[str] = field(default_factory=list)  # file keys the model has no slot for (e.g. ImageNet fc)
    shape_mismatch: list[str] = field(default_factory=list)  # same key, different shape (e.g. another class count)
    expected: int = 0
    filled: int = 0
    file_tensors: int = 0
    source: str = ""
    sha256: str | None = None

    @property
    def complete(self) -> bool:
        return self.filled == self.expected

    def summary(self) -> str:
        return (f"loaded {self.filled} of the {self.expected} tensors the network expects ({self.loaded} in all, "
                f"under prefix {self.prefix!r}); {len(self.missing)} model keys kept their init, "
                f"{self.file_tensors - self.loaded} of the file's {self.file_tensors} tensors unused, "
                f"{len(self.shape_mismatch)} shape mismatches")

    def provenance(self) -> dict[str, Any]:
        """The record a checkpoint sidecar keeps (``initial_weights``): where from, and the tensor counts."""
        record = {"source": self.source, "loaded": self.filled, "expected": self.expected,
                  "loaded_in_all": self.loaded, "file_tensors": self.file_tensors, "complete": self.complete}
        if self.sha256 is not None:
            record["sha256"] = self.sha256
        return record


def initial_weights_scope(model: Segmenter) -> list[str]:
    """The state-dict keys a complete initialisation of ``model`` fills: every tensor but the arch's task head
    (:data:`~dasgen.segment.models.HEAD_PREFIXES`; all of a plug-in) and BatchNorm's ``num_batches_tracked``
    counters (bookkeeping, absent from older ImageNet files)."""
    head = HEAD_PREFIXES.get(model.arch, ())
    return [k for k in model.state_dict() if not k.startswith(head) and not k.endswith("num_batches_tracked")]


def apply_initial_state(
    model: Segmenter,
    tensors: dict[str, torch.Tensor],
    *,
    source: str,
    prefixes: tuple[str, ...] = ("", "net.", "net.backbone."),
    allow_partial: bool = False,
    sha256: str | None = None,
    file_tensors: int | None = None,
) -> InitialWeightsReport:
    """Load ``tensors`` into ``model`` (in place) under whichever of ``prefixes`` fits most tensors, skipping keys the
    model lacks and tensors of another shape; returns the report (also logged).

    Refuses with one CheckpointError line naming ``source`` when nothing fits, or when the load is partial -- fewer
    than the :func:`initial_weights_scope` tensors filled, e.g. a file for another network of which one name happens
    to match -- unless ``allow_partial`` (then it loads and logs a warning). The model is unchanged when refused.
    ``file_tensors``: the file's tensor count when ``tensors`` was already narrowed (default ``len(tensors)``).
    """
    tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
    target = model.state_dict()
    scope = initial_weights_scope(model)
    best: InitialWeightsReport | None = None
    chosen: dict[str, torch.Tensor] = {}
    for prefix in prefixes:
        renamed = {prefix + key: value for key, value in tensors.items()}
        fits = {k: v for k, v in renamed.items() if k in target and target[k].shape == v.shape}
        if best is None or len(fits) > best.loaded:
            chosen = fits
            best = InitialWeightsReport(
                prefix=prefix,
                loaded=len(fits),
                missing=sorted(set(target) - set(renamed)),
                unexpected=sorted(set(renamed) - set(target)),
                shape_mismatch=sorted(k for k in renamed if k in target and target[k].shape != renamed[k].shape),
                expected=len(scope),
                filled=sum(k in fits for k in scope),
                file_tensors=len(tensors) if file_tensors is None else file_tensors,
                source=source,
                sha256=sha256,
            )
    assert best is not None
    if best.loaded == 0:
        raise CheckpointError(f"{source}: no tensor matches the {model.arch!r} segmenter (checked key names and "
                              "shapes)")
    if not best.complete:
        unfilled = [k for k in scope if k not in chosen]
        message = (f"{source}: partial load, {best.filled} of the {best.expected} tensors {model.arch!r} expects "
                   f"from initial weights ({len(unfilled)} not filled, e.g. {_abbrev(unfilled, 2)}; "
                   f"{best.file_tensors - best.loaded} of the file's {best.file_tensors} tensors unused)")
        if not allow_partial:
            raise CheckpointError(f"{message}; not weights for this network -- fix segmenter.weights, or set "
                                  "segmenter.allow_partial_weights: true to train from it anyway")
        log.warning("%s; loaded anyway (segmenter.allow_partial_weights)", message)
    model.load_state_dict(chosen, strict=False)
    log.info("%s: %s", source, best.summary())
    return best


def load_initial_weights(model: Segmenter, path: Path, *, allow_partial: bool = False) -> InitialWeightsReport:
    """Initialise ``model`` (in place) from a local .safetensors state dict, e.g. converted ImageNet backbone weights.

    The file's keys are matched under whichever prefix fits most tensors -- ``""`` (a full Segmenter state dict),
    ``"net."`` (the bare network) or ``"net.backbone."`` (a torchvision ResNet's ImageNet weights into a DeepLab/FCN
    backbone) -- after stripping a DataParallel ``module.`` prefix; tensors whose shape differs are skipped. A VGG16
    file's fc6/fc7 become FCN-8s's convolutions; a SegFormer file in the Hub's names (``segformer.encoder...``) goes
    through transformers' own loader. Refuses a partial load unless ``allow_partial`` (:func:`apply_initial_state`);
    CheckpointError when nothing fits or the file is pickle-based.
    """
    path = Path(path)
    tensors, data = _read_weights(path)
    count = len(tensors)
    prefixes: tuple[str, ...] = ("", "net.", "net.backbone.")
    if model.arch == "fcn8s_vgg16":
        from dasgen.segment.paper_nets import FCN8s

        tensors = FCN8s.convolutionalise(tensors)
    if model.arch in SEGFORMER_ARCHS:
        from dasgen.segment.pretrained import looks_hub_named, segformer_state

        bare = {key.removeprefix("module.").removeprefix("net."): value for key, value in tensors.items()}
        if looks_hub_named(bare):
            tensors, prefixes = segformer_state(model.net, bare), ("net.",)
    return apply_initial_state(model, tensors, source=str(path), prefixes=prefixes, allow_partial=allow_partial,
                               sha256=sha256_bytes(data), file_tensors=count)
