"""Resumable training state (the DDPM's, and the segmenters'): model, EMA, optimiser moments, step, losses and the
torch.Generator, on disk.

Layout in the work directory:

- ``training_state-<step>.safetensors``: every tensor (``model.*`` weights, ``ema.*`` shadow weights, ``adam.<i>.*``
  optimiser state of the i-th parameter, ``generator`` state bytes, ``losses`` of steps 1..step, and the caller's
  ``extra.*`` tensors);
- ``training_state.json``: the commit marker, written last: the step, the tensor file's name and sha256, the
  EMA's update count, whether the run had finished, and a fingerprint of the run's settings (and code).

Both files are written atomically and the JSON only ever names a complete tensor file, so a run killed at any moment
resumes from the last complete state. Everything random in training is drawn from the saved generator, so a resumed
run ends with exactly the weights of an uninterrupted one. Nothing is pickled.

The state of a finished run is kept: the same command run again (DVC re-runs a stage after a comment edit) restores
it and rebuilds the same model in seconds instead of training again. A finished state written with other settings is
discarded by :func:`discard_finished_state` (its model is the stage's output already); an unfinished one is refused,
so that days of training are never thrown away by a mistyped param.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save

from dasgen.errors import CheckpointError
from dasgen.io.atomic import atomic_write_bytes, atomic_write_json, sha256_file

if TYPE_CHECKING:  # diffusers takes seconds to import: the segmenter trainings, which never use an EMA, skip it
    from diffusers.training_utils import EMAModel

STATE_JSON = "training_state.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RestoredState:
    """What a resumed run needs besides the objects restored in place."""

    step: int  # optimisation steps already done
    losses: list[float]  # loss of steps 1..step
    extra: dict[str, torch.Tensor]  # the caller's own tensors, saved with ``extra=``


def _tensor_file(step: int) -> str:
    return f"training_state-{step:08d}.safetensors"


def _canonical(value: Any) -> Any:
    """JSON round trip, so tuples become lists and a fingerprint compares equal to the one read back from disk."""
    return json.loads(json.dumps(value, sort_keys=True))


def save_training_state(
    work_dir: Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMAModel | None,
    generator: torch.Generator,
    losses: list[float],
    fingerprint: dict[str, Any],
    finished: bool = False,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the state after ``step`` optimisation steps into ``work_dir``; older tensor files are removed after.

    ``finished``: the run has done all its steps (see :func:`discard_finished_state`). ``extra``: more tensors to keep
    (e.g. per-term losses, the global RNG state), returned by :func:`restore_training_state` as they were given."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        tensors[f"model.{name}"] = value.detach().cpu().contiguous()
    if ema is not None:
        names = [name for name, _ in model.named_parameters()]
        for name, shadow in zip(names, ema.shadow_params, strict=True):
            tensors[f"ema.{name}"] = shadow.detach().cpu().contiguous()
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if value is None:  # e.g. SGD without momentum keeps no buffer
                continue
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"adam.{index}.{key}"] = value.detach().cpu().contiguous()
    tensors["generator"] = generator.get_state()  # (N,) uint8
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)  # (step,)
    for key, value in (extra or {}).items():
        tensors[f"extra.{key}"] = value.detach().cpu().contiguous()

    name = _tensor_file(step)
    atomic_write_bytes(work_dir / name, save(tensors))
    atomic_write_json(
        work_dir / STATE_JSON,
        {
            "format": FORMAT_VERSION,
            "step": step,
            "tensors": name,
            "sha256": sha256_file(work_dir / name),
            "ema_optimization_step": None if ema is None else ema.optimization_step,
            "finished": finished,
            "fingerprint": _canonical(fingerprint),
        },
    )
    for old in work_dir.glob("training_state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return work_dir / STATE_JSON


def _changed_settings(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    wanted = _canonical(wanted)
    return sorted(key for key in set(saved) | set(wanted) if saved.get(key) != wanted.get(key))


def discard_finished_state(work_dir: Path, *, fingerprint: dict[str, Any], steps: int) -> str | None:
    """Remove the state of a *finished* run in ``work_dir`` that this run cannot continue (other settings, or more
    steps than ``steps``); returns why, or None when nothing was removed. An unfinished state is left alone for
    :func:`restore_training_state` to resume or refuse. The marker goes first, so a kill while removing leaves no
    state that names missing tensors."""
    json_path = Path(work_dir) / STATE_JSON
    try:
        meta = json.loads(json_path.read_text())
        finished, step, saved = meta.get("finished") is True, int(meta["step"]), dict(meta.get("fingerprint", {}))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no state, or an unreadable one: restore_training_state says which
    changed = _changed_settings(saved, fingerprint)
    if not finished or not (changed or step > steps):
        return None
    json_path.unlink()
    for old in Path(work_dir).glob("training_state-*.safetensors"):
        old.unlink(missing_ok=True)
    return f"other settings ({', '.join(changed)})" if changed else f"{step} steps done, {steps} asked"


def restore_training_state(
    work_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMAModel | None,
    generator: torch.Generator,
    fingerprint: dict[str, Any],
) -> RestoredState | None:
    """Load the state in ``work_dir`` into the given objects, in place; ``None`` when there is no state yet.

    Raises ``CheckpointError`` naming the file when the state is corrupt, or was written by a run with other
    settings (``fingerprint``: batch size, lr, seed, schedule, architecture...), which it could not continue exactly.
    """
    json_path = Path(work_dir) / STATE_JSON
    if not json_path.is_file():
        return None
    try:
        meta = json.loads(json_path.read_text())
        step, tensor_name, digest = int(meta["step"]), str(meta["tensors"]), str(meta["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{json_path}: unreadable training state ({error})") from error
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{json_path}: format {meta.get('format')!r}, this dasgen reads {FORMAT_VERSION}")
    changed = _changed_settings(meta.get("fingerprint", {}), fingerprint)
    if changed:
        raise CheckpointError(
            f"{json_path}: written with other settings ({', '.join(changed)}); delete {json_path.parent} to start over"
        )
    if (ema is None) != (meta.get("ema_optimization_step") is None):
        raise CheckpointError(f"{json_path}: EMA on/off differs from this run")
    tensor_path = json_path.parent / tensor_name
    if not tensor_path.is_file() or sha256_file(tensor_path) != digest:
        raise CheckpointError(f"{tensor_path}: training state tensors missing or corrupt (sha256 mismatch)")
    tensors = load_file(tensor_path)

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}

    try:
        model.load_state_dict(group("model."), strict=True)
        if ema is not None:
            shadow = group("ema.")
            ema.shadow_params = [
                shadow[name].to(device=param.device, dtype=param.dtype) for name, param in model.named_parameters()
            ]
            ema.optimization_step = int(meta["ema_optimization_step"])
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in group("adam.").items():
            index, field = key.split(".", 1)
            moments.setdefault(int(index), {})[field] = value
        optimizer_state = optimizer.state_dict()  # current param_groups (hyper-parameters are in the fingerprint)
        optimizer_state["state"] = moments
        optimizer.load_state_dict(optimizer_state)
        generator.set_state(tensors["generator"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{tensor_path}: does not fit this model/optimizer ({error})") from error
    losses = tensors["losses"].tolist()
    if len(losses) != step:
        raise CheckpointError(f"{tensor_path}: holds {len(losses)} losses for step {step}")
    return RestoredState(step=step, losses=losses, extra=group("extra."))
