"""``dasgen ablate``: the paper's ablations (Tab. 2 components, Tab. 3 fine-tune loss, Tab. 5 arrangements) on the toy.

The spec (``ablation.yaml``) names a base params file, overrides shared by every variant (the shrunk toy), paired
seeds and the variants, each a set of params overrides. For every seed s and variant v the runner builds a workspace
``<out>/seed-<s>/<v>/`` whose read-only inputs are symlinks and runs PTL domains 1..N there with the ordinary domain
stage (:func:`dasgen.stages.translate.run_domain`), so an ablation exercises exactly the code a user runs::

    <out>/shared/                 toy data, source_pairs.json, ONE target DDPM (trained once for all seeds),
                                  oracle-toy/ (labelled target images of a second toy for the oracle)
    <out>/seed-<s>/source-only/   g_0 of seed s (run.seed = s), shared by every variant of that seed
    <out>/seed-<s>/oracle/        the target-trained oracle of seed s (same arch and recipe as g_0)
    <out>/seed-<s>/<variant>/     data/{toy,source_pairs.json,diffusion,g0} -> links; data/domains/, result.json

Each run is judged by the paper's measure, the mIoU of its final g_N on the toy target val split, and by the label
consistency of its final images X^N as scored by the oracle (mIoU of the oracle's prediction against the source
labels): one fixed judge for every variant, unlike the pipeline's own consistency (scored by g_{N-1}, which differs
per variant). Everything is resumable: a (seed, variant) whose ``result.json`` matches its inputs is skipped, and an
interrupted one resumes inside the domain stage. The spec is parsed by :mod:`dasgen.research.ablate_spec`, the reports
written by :mod:`dasgen.research.ablate_report`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from pathlib import Path
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from rich.console import Console

from dasgen.config import Config
from dasgen.datasets.io import to_model_tensor, to_uint8
from dasgen.datasets.pairs import PairStore
from dasgen.datasets.registry import open_dataset
from dasgen.diffusion.unet import WEIGHTS_NAME, load_denoiser, make_eps_fn, verify_denoiser_checksum
from dasgen.labels import NUM_TRAIN_CLASSES
from dasgen.errors import DasgenError
from dasgen.guidance.sampler import translate
from dasgen.seeding import image_generator, image_seed
from dasgen.segment.checkpoint import load_segmenter, save_segmenter
from dasgen.segment.metrics import ConfusionMatrix
from dasgen.segment.models import Segmenter
from dasgen.segment.train import Checkpointing, train_source
from dasgen.research.ablate_report import (RESULT_FILE, _pct, build_report, render_markdown, roundtrip_path,
                                           write_reports)
from dasgen.research.ablate_spec import (AblationSpec, Variant, load_spec, params,  # noqa: F401 (API)
                                       reference_fingerprint, seed_config, variant_config)
from dasgen.pipeline.image_quality import blow_up_report, target_roughness
from dasgen.pipeline.augment import augment_settings
from dasgen.pipeline.chains import domain_chain, domain_noise_levels
from dasgen.pipeline.common import load_source_pairs, read_json, resolve_device, source_reader, write_json
from dasgen.stages.train_diffusion import run_train_diffusion
from dasgen.stages.translate import run_domain
from dasgen.stages.train_g0 import g0_fingerprint, run_train_g0
from dasgen.stages.scan import run_scan
from dasgen.pipeline.segmenters import new_segmenter, on_device, score_on_target, target_val_store
from dasgen.stages.toy import run_toy
from dasgen.pipeline.workspace import Workspace
from dasgen.io.atomic import sha256_file
from dasgen.io.lock import directory_lock
from dasgen.artifact.reader import iter_domain_images


__all__ = ["AblationSpec", "Variant", "load_spec", "render_markdown", "run_ablation", "seed_config",
           "variant_config"]


# -- workspaces ------------------------------------------------------------------------------------------------------


def _link(link: Path, target: Path) -> None:
    """A relative symlink ``link -> target`` (replaced if it points elsewhere; a real file there is an error)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(target, link.parent)
    if link.is_symlink():
        if os.readlink(link) == relative:
            return
        link.unlink()
    elif link.exists():
        raise DasgenError(f"{link}: exists and is not a link to {target}; remove it to let the ablation link it")
    link.symlink_to(relative, target_is_directory=target.is_dir())


def _linked_workspace(root: Path, shared: Workspace, g0: Path | None = None) -> Workspace:
    """A workspace at ``root`` whose toy, scanned pairs and DDPM (and g_0 directory) are links into the shared ones."""
    ws = Workspace(root)
    _link(ws.data / "toy", shared.data / "toy")
    _link(ws.source_pairs, shared.source_pairs)
    _link(ws.diffusion_dir, shared.diffusion_dir)
    if g0 is not None:
        _link(ws.g0_dir, g0)
    return ws


def _marker_matches(path: Path, fingerprint: dict) -> bool:
    return path.is_file() and json.loads(path.read_text()) == fingerprint


def prepare_data(spec: AblationSpec, *, console: Console) -> Workspace:
    """The shared workspace's data: the toy, the scanned source pairs and the oracle's toy (skipped when done)."""
    config = params(spec, spec.common)
    ws = Workspace(spec.out / "shared")
    d = config.result_dict()
    data_marker = ws.data / ".ablation-data.json"
    data_print = {"toy": d["toy"], "data": d["data"]}
    if not _marker_matches(data_marker, data_print) or not ws.source_pairs.is_file():
        console.print(f"ablation: toy data ({config.toy.n_source} source images) in {ws.data / 'toy'}")
        run_toy(config, root=ws.root, progress=False)
        run_scan(config, ws, console=console)
        write_json(data_marker, data_print)
    oracle_toy = ws.root / "oracle-toy"
    oracle_print = {"toy": d["toy"], "oracle_toy_seed": spec.oracle_toy_seed}
    if not _marker_matches(oracle_toy / ".ablation-oracle-toy.json", oracle_print):
        # labelled target images of another toy seed: as many as the source, with the toy's own look and geometry
        run_toy(config, out=oracle_toy, progress=False, seed=spec.oracle_toy_seed, n_source=0, n_target_train=0,
                n_target_val=config.toy.n_source)
        write_json(oracle_toy / ".ablation-oracle-toy.json", oracle_print)
    return ws


def prepare_ddpm(spec: AblationSpec, ws: Workspace, *, ddpm: Path | None, console: Console) -> str:
    """The one DDPM every run shares: copied from ``ddpm`` when given (replacing another), else kept if present, else
    trained with the base params. A kept DDPM trained here with other diffusion params is retrained. Returns its sha256.
    """
    config = params(spec, spec.common)
    d = config.result_dict()  # a checkpoint interval changed keeps the DDPM
    model_file = ws.diffusion_model / WEIGHTS_NAME
    marker = ws.diffusion_dir / ".ablation-ddpm.json"
    trained_print = {"diffusion": d["diffusion"], "seed": config.run.seed, "resolution": d["data"]["resolution"],
                     "target": [d["data"]["target"]["root"], d["data"]["target"]["train_split"]]}
    recorded = json.loads(marker.read_text()) if marker.is_file() and model_file.is_file() else None
    if ddpm is not None:
        given = Path(ddpm) / WEIGHTS_NAME
        if not given.is_file():
            raise DasgenError(f"--ddpm {ddpm}: no {WEIGHTS_NAME} there (a diffusers UNet2DModel)")
        wanted = {"copied_from_sha256": sha256_file(given)}
        if Path(ddpm).resolve() == ws.diffusion_model.resolve():  # the shared DDPM itself (e.g. through a link)
            verify_denoiser_checksum(ws.diffusion_model, required=True)
            if recorded != wanted:
                write_json(marker, wanted)
        elif recorded != wanted:
            console.print(f"ablation: using the DDPM in {ddpm}")
            # checked before the shared one is removed: a DDPM that cannot be loaded costs nothing
            load_denoiser(Path(ddpm), device="cpu")
            shutil.rmtree(ws.diffusion_model, ignore_errors=True)
            run_train_diffusion(params(spec, {**spec.common, "diffusion.pretrained": str(Path(ddpm).resolve())}),
                                ws, progress=False, console=console)
            write_json(marker, wanted)
    elif recorded is None or ("copied_from_sha256" not in recorded and recorded != trained_print):
        console.print("ablation: training the shared target DDPM (once for all seeds)")
        shutil.rmtree(ws.diffusion_model, ignore_errors=True)
        run_train_diffusion(config, ws, progress=False, console=console)
        write_json(marker, trained_print)
    return sha256_file(model_file)


# -- scoring ---------------------------------------------------------------------------------------------------------


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_consistency(judge: Segmenter, pairs: Iterable[tuple[np.ndarray, np.ndarray]], *, protocol: int,
                      device: torch.device, batch_size: int = 32) -> float:
    """Label consistency as judged by ``judge``: mIoU (``protocol``) of its prediction on uint8 (H, W, 3) images
    against their trainId labels (H, W), accumulated over all images."""
    confusion = ConfusionMatrix(num_classes=judge.num_classes)
    judge.eval()
    with torch.inference_mode():
        for batch in _batched(pairs, batch_size):
            x = torch.stack([to_model_tensor(image) for image, _ in batch]).to(device)  # (B, 3, H, W)
            y = torch.stack([torch.from_numpy(label.astype(np.int64)) for _, label in batch])  # (B, H, W)
            confusion.update(judge(x).argmax(1).cpu(), y)
    return confusion.miou(protocol)


def _domain_pairs(directory: Path, store: PairStore) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(translated image, its source label) for every image of a finished domain."""
    for row, image in iter_domain_images(directory):
        yield image, store.get(row["id"]).train_ids


def _source_pairs(store: PairStore) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for entry in store.entries:
        pair = store.get(entry.id)
        yield pair.image, pair.train_ids


def final_image_roughness(directory: Path, shared: Workspace, config: Config) -> dict:
    """Roughness of a domain's images against real target photos' (:mod:`dasgen.pipeline.image_quality`): the
    mean, and the fraction of images blown up into noise."""
    reference = target_roughness(config, shared.root)
    report = blow_up_report((image for _, image in iter_domain_images(directory)), reference)
    return {"roughness": report["roughness_ratio"] * reference, "target_roughness": reference,
            "blown_up": report["blown_up_images"] / max(report["images"], 1)}


# -- per-seed inputs and reference rows ------------------------------------------------------------------------------


def prepare_seed(spec: AblationSpec, seed: int, shared: Workspace, *, console: Console) -> dict:
    """g_0 and the oracle of ``seed`` and their reference rows (``source-only``, ``oracle``); skipped when done."""
    config = seed_config(spec, seed)
    device = resolve_device(config.run.device)
    seed_root = spec.out / f"seed-{seed}"
    fingerprint = reference_fingerprint(spec, config)
    ws = _linked_workspace(seed_root / "source-only", shared)
    g0_result, oracle_result = seed_root / "source-only" / RESULT_FILE, seed_root / "oracle" / RESULT_FILE
    oracle_path = seed_root / "oracle" / "segmenter.safetensors"
    done = all(p.is_file() and json.loads(p.read_text()).get("fingerprint") == fingerprint
               for p in (g0_result, oracle_result))
    if done and ws.segmenter_path(0).is_file() and oracle_path.is_file():
        return {"g0": ws.segmenter_path(0), "oracle": oracle_path}
    started = time.time()
    console.print(f"ablation: seed {seed}: training g_0")
    run_train_g0(config, ws, progress=False, console=console)
    g0_s = time.time() - started
    console.print(f"ablation: seed {seed}: training the target-trained oracle")
    oracle, oracle_s = train_oracle(config, shared.root / "oracle-toy", oracle_path, device=device,
                                    log=lambda line: console.print(f"ablation: seed {seed}: oracle: {line}"))
    val = target_val_store(config, shared.root)
    target = score_on_target(oracle, config, device, val)
    entries, _ = load_source_pairs(shared)
    store = PairStore(source_reader(config, shared.root), entries, config.data.resolution)
    source_consistency = score_consistency(oracle, _source_pairs(store), protocol=config.segmenter.eval_protocol,
                                           device=device)
    g0_metrics = read_json(ws.metrics / "g0.json")
    common = {"seed": seed, "fingerprint": fingerprint, "params_sha256": config.sha256(), "domains": 0,
              "finetune_iters": 0, "pipeline_consistency": None}
    write_json(g0_result, common | {"variant": "source-only", "target_miou": g0_metrics["target_miou"],
                                    "consistency": source_consistency, "wall_s": round(g0_s, 1)})
    write_json(oracle_result, common | {"variant": "oracle", "target_miou": None if target is None else target["miou"],
                                        "consistency": None, "wall_s": round(oracle_s, 1)})
    return {"g0": ws.segmenter_path(0), "oracle": oracle_path}


def oracle_fingerprint(config: Config, oracle_toy: Path) -> dict:
    """What the oracle's weights depend on: g_0's recipe (:func:`g0_fingerprint`) on the oracle toy's target images."""
    recipe = {k: v for k, v in g0_fingerprint(config, Workspace(oracle_toy), {}).items()
              if k not in ("source", "source_content_sha256")}
    return recipe | {"trained_on": {"kind": config.data.target.kind, "split": "val"}}  # of the spec's own oracle toy


def train_oracle(config: Config, oracle_toy: Path, path: Path, *, device: torch.device,
                 log: Callable[[str], None] | None = None) -> tuple[Segmenter, float]:
    """A segmenter of g_0's arch and recipe trained on labelled *target* images (the oracle toy's val split).

    Resumable like g_0: its training state lives in ``state/`` beside ``path`` (``log`` hears where it starts from)."""
    started = time.time()
    reader = open_dataset(config.data.target.kind, oracle_toy / "target", split="val", labelled=True)
    store = PairStore(reader, reader.entries(), config.data.resolution)
    st = config.segmenter.source_train
    model = new_segmenter(config).to(device)
    sample_batch = on_device(store.sampler(st.batch_size), device)

    generator = torch.Generator().manual_seed(image_seed(config.run.seed, 0, "train-oracle"))
    train_source(model, sample_batch, iters=st.iters, lr=st.lr, momentum=st.momentum, weight_decay=st.weight_decay,
                 optimizer=st.optimizer, augment=augment_settings(config, st.aug_fraction), generator=generator,
                 progress=False, batchnorm=config.segmenter.batchnorm, checkpoint=Checkpointing(path.parent / "state", st.checkpoint_every,
                                                          oracle_fingerprint(config, oracle_toy), log=log))
    model.eval()
    save_segmenter(model, path, meta={"domain": 0, "trained_on": "target (oracle)"})
    return model, time.time() - started


def ddpm_roundtrip(spec: AblationSpec, shared: Workspace, seed: int, oracle_path: Path, *, images: int = 32) -> dict:
    """How much of a REAL target image survives the shared DDPM's round trip phi^t (Sec. 4.1: noise to t by Eq. 2,
    denoise unguided with ``ptl.steps_per_domain`` respaced steps), judged by seed ``seed``'s oracle at
    ``oracle_path``, at every noise level the variants translate to: an upper bound on the label consistency any
    translation to that level can keep. Cached in :func:`roundtrip_path`."""
    config = seed_config(spec, spec.seeds[0])
    device = resolve_device(config.run.device)
    # Every noise level of the base schedule, and the last one of any variant that changes t_N.
    levels = sorted(set(domain_noise_levels(config.ptl))
                    | {variant_config(spec, v, spec.seeds[0]).ptl.t_final for v in spec.variants})
    fingerprint = {"diffusion_sha256": sha256_file(shared.diffusion_model / WEIGHTS_NAME),
                   "oracle_sha256": sha256_file(oracle_path), "images": images, "levels": levels,
                   "steps_per_domain": config.ptl.steps_per_domain}
    path = roundtrip_path(shared, seed)
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if cached.get("fingerprint") == fingerprint:
        return cached
    store = target_val_store(config, shared.root)
    if store is None:
        return {}
    ids = [e.id for e in store.entries][:images]
    x0, _ = store.batch(ids)
    labels = [store.get(i).train_ids for i in ids]
    oracle = load_segmenter(oracle_path, device=device, expect_arch=config.segmenter.arch, expect_classes=NUM_TRAIN_CLASSES)
    eps_fn = make_eps_fn(load_denoiser(shared.diffusion_model, device=device))
    protocol = config.segmenter.eval_protocol
    result = {"fingerprint": fingerprint, "judge_seed": seed, "images": len(ids),
              "clean": score_consistency(oracle, zip((store.get(i).image for i in ids), labels), protocol=protocol,
                                         device=device), "levels": []}
    for t in levels:
        one_domain = params(spec, {**spec.common, "run.seed": config.run.seed, "ptl.N": 1, "ptl.t_final": t})
        out = translate(x0.to(device), denoiser=eps_fn, schedule=domain_chain(one_domain, 1),
                        generators=[image_generator(config.run.seed, t, i) for i in ids])
        score = score_consistency(oracle, zip((to_uint8(x) for x in out), labels), protocol=protocol, device=device)
        result["levels"].append({"t": t, "oracle_miou": score})
    write_json(path, result)
    return result


# -- one (seed, variant) ---------------------------------------------------------------------------------------------


def run_variant(spec: AblationSpec, variant: Variant, seed: int, shared: Workspace, inputs: dict, *,
                console: Console) -> dict:
    """PTL domains 1..N of one (seed, variant) in its own linked workspace; returns (and writes) its result row."""
    config = variant_config(spec, variant, seed)
    root = spec.out / f"seed-{seed}" / variant.name
    ws = _linked_workspace(root, shared, g0=inputs["g0"].parent)
    fingerprint = {"result_sha256": config.result_sha256(),
                   "diffusion_sha256": sha256_file(shared.diffusion_model / WEIGHTS_NAME),
                   "g0_sha256": sha256_file(inputs["g0"]), "oracle_sha256": sha256_file(inputs["oracle"])}
    result_path = root / RESULT_FILE
    if result_path.is_file():
        cached = json.loads(result_path.read_text())
        if cached.get("fingerprint") == fingerprint:
            console.print(f"ablation: seed {seed} {variant.name}: already done")
            if "blown_up" not in cached:  # a result written before the roughness measure existed
                cached |= final_image_roughness(ws.domain_dir(config.ptl.N, config.ptl.N), shared, config)
                write_json(result_path, cached)
            return cached
    started = time.time()
    N = config.ptl.N
    curve = []
    for n in range(1, N + 1):
        m = run_domain(config, ws, n, progress=False, console=console)
        curve.append({k: m.get(k) for k in ("domain", "t", "consistency", "target_miou")})
    device = resolve_device(config.run.device)
    oracle = load_segmenter(inputs["oracle"], device=device, expect_arch=config.segmenter.arch, expect_classes=NUM_TRAIN_CLASSES)
    entries, _ = load_source_pairs(ws)
    store = PairStore(source_reader(config, ws.root), entries, config.data.resolution)
    consistency = score_consistency(oracle, _domain_pairs(ws.domain_dir(N, N), store),
                                    protocol=config.segmenter.eval_protocol, device=device)
    result = {"seed": seed, "variant": variant.name, "target_miou": curve[-1]["target_miou"],
              "consistency": consistency, "pipeline_consistency": curve[-1]["consistency"], "domains": N,
              "finetune_iters": config.ptl.finetune.iters, "curve": curve, "params_sha256": config.sha256(),
              "result_sha256": config.result_sha256(),
              "overrides": {**spec.common, "run.seed": seed, **variant.overrides,
                            "ptl.finetune.iters": config.ptl.finetune.iters},
              "fingerprint": fingerprint, "wall_s": round(time.time() - started, 1)}
    result |= final_image_roughness(ws.domain_dir(N, N), shared, config)
    write_json(result_path, result)
    console.print(f"ablation: seed {seed} {variant.name}: target mIoU {_pct(result['target_miou'])}, "
                  f"oracle consistency {_pct(consistency)}, {result['wall_s']} s")
    return result


# -- the runner ------------------------------------------------------------------------------------------------------


def _select(spec: AblationSpec, seeds: list[int] | None, variants: list[str] | None) -> tuple[list[int], list[Variant]]:
    names = {v.name: v for v in spec.variants}
    unknown = [v for v in (variants or []) if v not in names]
    if unknown:
        raise DasgenError(f"--variants: unknown variant {unknown[0]!r} (in {spec.path}: {', '.join(names)})")
    bad_seeds = [s for s in (seeds or []) if s not in spec.seeds]
    if bad_seeds:
        raise DasgenError(f"--seeds: seed {bad_seeds[0]} is not in {spec.path} seeds {spec.seeds}")
    chosen = [v for v in spec.variants if variants is None or v.name in variants]
    return (seeds or spec.seeds), chosen


def ablate_command(spec: AblationSpec, *, seeds: list[int] | None, variants: list[str] | None,
                   ddpm: Path | None) -> str:
    """The command line that reproduces this call (recorded next to the results)."""
    parts = ["dasgen", "ablate", "--spec", os.path.relpath(spec.path)]
    if seeds:
        parts += ["--seeds", ",".join(map(str, seeds))]
    if variants:
        parts += ["--variants", ",".join(variants)]
    if ddpm is not None:
        parts += ["--ddpm", str(ddpm)]
    return shlex.join(parts)


@contextmanager
def shared_lock(spec: AblationSpec, *, console: Console) -> Iterator[None]:
    """Hold the lock on the spec's work tree while writing what every seed shares (toy, DDPM, round trip), so that
    `dasgen ablate --seeds 0` and `--seeds 1` can run side by side: the second waits for the first's DDPM and then
    finds it done, instead of training a second one into the same files."""
    spec.out.mkdir(parents=True, exist_ok=True)
    with directory_lock(spec.out, on_wait=lambda: console.print(
            f"ablation: waiting for another dasgen ablate writing the shared data in {spec.out}")):
        yield


@contextmanager
def seed_lock(spec: AblationSpec, seed: int) -> Iterator[None]:
    """Hold seed ``seed``'s work tree for a whole call: a second `dasgen ablate` on the same seed stops at once with
    one line instead of training the same g_0 and runs into the same files."""
    seed_root = spec.out / f"seed-{seed}"
    seed_root.mkdir(parents=True, exist_ok=True)
    with directory_lock(seed_root, busy=f"{seed_root}: another dasgen ablate is running seed {seed} of this spec; "
                        "wait for it, or give this one other --seeds"):
        yield


def run_ablation(spec: AblationSpec, *, seeds: list[int] | None = None, variants: list[str] | None = None,
                 ddpm: Path | None = None, report_only: bool = False, console: Console | None = None) -> dict:
    """Run every selected (seed, variant) not yet done -- variant-major, so each variant gets all its seeds before
    the next starts -- then write the CSV / JSON / Markdown reports from every finished run. Returns the report."""
    console = console or Console(stderr=True)
    chosen_seeds, chosen = _select(spec, seeds, variants)
    command = ablate_command(spec, seeds=seeds, variants=variants, ddpm=ddpm)
    started = time.time()
    if not report_only:
        with ExitStack() as seeds_held:
            for seed in chosen_seeds:
                seeds_held.enter_context(seed_lock(spec, seed))
            with shared_lock(spec, console=console):
                shared = prepare_data(spec, console=console)
            inputs = {s: prepare_seed(spec, s, shared, console=console) for s in chosen_seeds}  # needs no DDPM
            with shared_lock(spec, console=console):
                prepare_ddpm(spec, shared, ddpm=ddpm, console=console)
                judge = chosen_seeds[0]
                roundtrip = ddpm_roundtrip(spec, shared, judge, inputs[judge]["oracle"])
            console.print(f"ablation: DDPM round trip of real target images, oracle mIoU: clean "
                          f"{_pct(roundtrip.get('clean'))}, " + ", ".join(f"t={r['t']} {_pct(r['oracle_miou'])}"
                                                                       for r in roundtrip.get("levels", [])))
            for variant in chosen:
                for seed in chosen_seeds:
                    run_variant(spec, variant, seed, shared, inputs[seed], console=console)
    report = build_report(spec, command=command, wall_s=time.time() - started)
    write_reports(spec, report)
    return report


