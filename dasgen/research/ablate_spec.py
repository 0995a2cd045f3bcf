"""The ablation spec (``experiments/ablation.yaml``): variants as params overrides on a base params file, paired seeds.

Loaded strictly, like params.yaml: an unknown key, a bad type or a variant override that params.yaml would reject is a
ConfigError naming the key, raised before anything runs. The base params file is read once, so a long ablation never
sees a later edit of it. A spec may start from another (``based_on: ablation.yaml``) and change a few keys; its
recorded sha256 then covers both files.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from dasgen.config import Config, apply_overrides, config_from_dict, read_yaml_file
from dasgen.errors import ConfigError
from dasgen.io.atomic import sha256_file

DEFAULT_SPEC = Path("experiments/ablation.yaml")  # the paper's Tab. 2/3/5 rows; the other specs sit beside it
REFERENCE_ROWS = ("source-only", "oracle")
DEFAULT_LABELS = {"source-only": "Source only (g_0)", "oracle": "Target-trained oracle"}
# Inputs every variant of a seed shares (toy, DDPM, g_0): a variant may not override them. ptl.t_final is allowed: a
# variant with another t_N translates to other noise levels with the same g_0 (trained with the augmentation of the
# base t_N), which is what a paired comparison of schedules needs.
SHARED_KEYS = ("toy.", "data.", "diffusion.", "segmenter.", "run.")


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: a name, the paper's label, table and G->C mIoU, and its params overrides."""

    name: str
    label: str
    table: str | None
    paper: float | None
    overrides: dict[str, Any]


@dataclass(frozen=True)
class AblationSpec:
    """``ablation.yaml``, parsed; relative paths are resolved against the spec file's directory."""

    path: Path
    base: Path
    out: Path
    results: Path
    seeds: list[int]
    common: dict[str, Any]
    match_finetune_budget: bool
    oracle_toy_seed: int
    reference: dict[str, Variant]
    variants: list[Variant]
    sha256: str
    base_data: dict  # the base params as read once by load_spec: a long run never sees a later edit of the file


def _require(data: dict, key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise ConfigError(f"{where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _row(name: str, data: Any, where: str, *, overrides: bool) -> Variant:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with label, table, paper{', set' if overrides else ''}")
    allowed = {"label", "table", "paper"} | ({"set"} if overrides else set())
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (expected one of {', '.join(sorted(allowed))})")
    paper = data.get("paper")
    if paper is not None and (isinstance(paper, bool) or not isinstance(paper, (int, float))):
        raise ConfigError(f"{where}.paper: expected a number or null, got {paper!r}")
    sets = data.get("set") or {}
    if not isinstance(sets, dict):
        raise ConfigError(f"{where}.set: expected a mapping of dotted params keys, got {sets!r}")
    for key in sets:
        if str(key).startswith(SHARED_KEYS):
            raise ConfigError(f"{where}.set.{key}: a variant cannot change an input every variant of a seed shares "
                              "(toy, data, DDPM, segmenter, run); put it in the top-level `set`")
    return Variant(name=name, label=str(data.get("label", DEFAULT_LABELS.get(name, name))), table=data.get("table"),
                   paper=None if paper is None else float(paper), overrides=dict(sets))


def load_spec(path: str | Path) -> AblationSpec:
    """Read and check ``ablation.yaml``; every variant's params are validated here, before anything runs."""
    path = Path(path)
    data, parent = _inherit(read_yaml_file(path, missing="ablation spec not found", what="YAML file"), path)
    where = str(path)
    known = {"base", "out", "results", "seeds", "set", "match_finetune_budget", "oracle", "reference", "variants"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown key")
    here = path.parent
    seeds = _require(data, "seeds", list, where)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) or \
            len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}.seeds: expected distinct non-negative integers, got {seeds!r}")
    common = data.get("set") or {}
    if not isinstance(common, dict):
        raise ConfigError(f"{where}.set: expected a mapping of dotted params keys")
    oracle = data.get("oracle") or {}
    if not isinstance(oracle, dict) or set(oracle) - {"toy_seed"}:
        raise ConfigError(f"{where}.oracle: expected a mapping with toy_seed")
    variants_data = _require(data, "variants", dict, where)
    if not variants_data:
        raise ConfigError(f"{where}.variants: needs at least one variant")
    variants = []
    for name, row in variants_data.items():
        if name in REFERENCE_ROWS or "/" in str(name) or str(name).startswith((".", "seed-")) or name == "shared":
            raise ConfigError(f"{where}.variants.{name}: reserved or unusable name")
        variants.append(_row(str(name), row, f"{where}.variants.{name}", overrides=True))
    reference_data = data.get("reference") or {}
    unknown_ref = sorted(set(reference_data) - set(REFERENCE_ROWS))
    if unknown_ref:
        raise ConfigError(f"{where}.reference.{unknown_ref[0]}: unknown row (expected {', '.join(REFERENCE_ROWS)})")
    reference = {name: _row(name, reference_data.get(name, {}), f"{where}.reference.{name}", overrides=False)
                 for name in REFERENCE_ROWS}
    budget = data.get("match_finetune_budget", True)
    if not isinstance(budget, bool):
        raise ConfigError(f"{where}.match_finetune_budget: expected true or false, got {budget!r}")
    toy_seed = oracle.get("toy_seed", 1000)
    if isinstance(toy_seed, bool) or not isinstance(toy_seed, int) or toy_seed < 0:
        raise ConfigError(f"{where}.oracle.toy_seed: expected a non-negative integer, got {toy_seed!r}")
    spec = AblationSpec(
        path=path, base=here / str(_require(data, "base", str, where)),
        out=here / str(data.get("out", "data/ablation")),
        results=here / str(data.get("results", "docs/results")), seeds=list(seeds), common=dict(common),
        match_finetune_budget=budget, oracle_toy_seed=toy_seed, reference=reference, variants=variants,
        sha256=_spec_sha256(path, parent), base_data=_read_base(here / str(data["base"])))
    for key, folder in (("out", spec.out), ("results", spec.results)):
        if folder.exists() and not folder.is_dir():  # found now, not when the reports are written after the runs
            raise ConfigError(f"{where}.{key}: {folder} exists and is not a directory; name a folder")
    base = seed_config(spec, spec.seeds[0])
    if base.toy.n_source < 1:
        raise ConfigError(f"{where}: set: toy.n_source must be >= 1")
    for variant in variants:
        variant_config(spec, variant, spec.seeds[0])  # fail now on a bad override, not after an hour
    return spec


def _spec_sha256(path: Path, parent: Path | None) -> str:
    """sha256 of the spec file, or of the spec file and its ``based_on`` parent together."""
    if parent is None:
        return sha256_file(path)
    return hashlib.sha256(path.read_bytes() + b"\0" + parent.read_bytes()).hexdigest()


def _inherit(data: Any, path: Path) -> tuple[dict, Path | None]:
    """``based_on: other.yaml``: start from that spec and replace the keys given here, except ``set``, which is merged
    (this file's overrides win). ``variants`` may be a list of the parent's variant names to keep, in that order.
    Returns the merged spec data and the parent's path (None without ``based_on``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of spec keys")
    if "based_on" not in data:
        return data, None
    parent_path = path.parent / str(data["based_on"])
    parent = read_yaml_file(parent_path, missing=f"spec not found (named by {path}.based_on)", what="YAML file")
    if "based_on" in parent:
        raise ConfigError(f"{path}.based_on: {parent_path} is itself based on another spec (one level only)")
    child = {k: v for k, v in data.items() if k != "based_on"}
    merged = {**parent, **child, "set": {**(parent.get("set") or {}), **(child.get("set") or {})}}
    if isinstance(child.get("variants"), list):
        inherited = parent.get("variants") or {}
        missing = [name for name in child["variants"] if name not in inherited]
        if missing:
            raise ConfigError(f"{path}.variants: {missing[0]!r} is not a variant of {parent_path}")
        merged["variants"] = {name: inherited[name] for name in child["variants"]}
    return merged, parent_path


def _read_base(path: Path) -> dict:
    return read_yaml_file(path, missing="params file not found (the ablation spec's base)", what="params file")


def params(spec: AblationSpec, overrides: dict[str, Any]) -> Config:
    """The base params (as read by :func:`load_spec`) with dotted-key ``overrides``, validated like params.yaml."""
    data = copy.deepcopy(spec.base_data)
    apply_overrides(data, overrides, source=str(spec.base))
    return config_from_dict(data, source=str(spec.base))


def seed_config(spec: AblationSpec, seed: int) -> Config:
    """The base params with the spec's shared overrides and ``run.seed = seed`` (what g_0 and the oracle use)."""
    return params(spec, {**spec.common, "run.seed": seed})


def reference_fingerprint(spec: AblationSpec, config: Config) -> dict:
    """What g_0 and the oracle of one seed depend on (the reference rows ``source-only`` and ``oracle``): the seed,
    toy, data, segmenter recipe and the noise schedule of g_0's augmentation -- not the translation params, so a
    spec that changes only the sampler or PTL keeps its g_0s and oracles, and their rows."""
    d = config.result_dict()
    return {"seed": config.run.seed, "toy": d["toy"], "data": d["data"], "segmenter": d["segmenter"],
            "t_final": config.ptl.t_final, "schedule": {k: d["diffusion"][k] for k in
                                                       ("num_train_timesteps", "beta_start", "beta_end")},
            "oracle_toy_seed": spec.oracle_toy_seed}


def variant_config(spec: AblationSpec, variant: Variant, seed: int) -> Config:
    """The params of one (seed, variant) run. With ``match_finetune_budget``, a variant with fewer domains than the
    base fine-tunes each for proportionally more iterations, so every variant gets the same total fine-tuning."""
    overrides = {**spec.common, "run.seed": seed, **variant.overrides}
    config = params(spec, overrides)
    if spec.match_finetune_budget and "ptl.finetune.iters" not in variant.overrides:
        base = seed_config(spec, seed)
        if config.ptl.N != base.ptl.N:
            total = base.ptl.N * base.ptl.finetune.iters
            config = params(spec, {**overrides, "ptl.finetune.iters": round(total / config.ptl.N)})
    return config


