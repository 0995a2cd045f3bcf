"""Resumable DDPM training state: model, EMA, Adam moments, step, losses and the torch.Generator, on disk.

Layout in the work directory:

- ``training_state-<step>.safetensors``: every tensor (``model.*`` weights, ``ema.*`` shadow weights, ``adam.<i>.*``
  moments of the i-th parameter, ``generator`` state bytes, ``losses`` of steps 1..step);
- ``training_state.json``: the commit marker, written last: the step, the tensor file's name and sha256, the
  EMA's update count, and a fingerprint of the run's settings.

Both files are written atomically and the JSON only ever names a complete tensor file, so a run killed at any moment
resumes from the last complete state. Everything random in training is drawn from the saved generator, so a resumed
run ends with exactly the weights of an uninterrupted one. Nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save

from dasgen.errors import CheckpointError
from dasgen.io.atomic import atomic_write_bytes, atomic_write_json, sha256_file

STATE_JSON = "training_state.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RestoredState:
    """What a resumed run needs besides the objects restored in place."""

    step: int  # optimisation steps already done
    losses: list[float]  # loss of steps 1..step


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
) -> Path:
    """Write the state after ``step`` optimisation steps into ``work_dir``; older tensor files are removed after."""
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
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"adam.{index}.{key}"] = value.detach().cpu().contiguous()
    tensors["generator"] = generator.get_state()  # (N,) uint8
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)  # (step,)

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
            "fingerprint": _canonical(fingerprint),
        },
    )
    for old in work_dir.glob("training_state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return work_dir / STATE_JSON


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
    saved = meta.get("fingerprint", {})
    wanted = _canonical(fingerprint)
    changed = sorted(key for key in set(saved) | set(wanted) if saved.get(key) != wanted.get(key))
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
    return RestoredState(step=step, losses=losses)
