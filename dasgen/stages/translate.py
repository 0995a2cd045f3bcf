"""Stage ``translate --domain n``: one Progressive Translation Learning domain (Sec. 4.3, Eqs. 11-12).

    X^n = SGG(phi^{t_n}(X^S), g_{n-1})                                   (Eq. 11)
    g_n = fine-tune g_{n-1} on L_ft = L_ce(g(X^n), Y^S) + L_ce(g(X^S), Y^S)  (Eq. 12)

Intermediate domains translate a seeded sample of ``ptl.images_per_domain`` source images; the last domain N
translates every usable source image -- the dataset users export. The stage is resumable and shardable:

* images are translated in fixed batches of the sorted id list, so an image's computation never depends on which
  other images are pending, on a resume, or on the number of ranks;
* every finished image is written atomically and journalled; a re-run skips finished batches;
* with torchrun, pending batch b goes to rank b % K; every rank then fine-tunes g_n data-parallel on its share of each
  batch (DistributedDataParallel, same batches as one process), and rank 0 merges the journals and finalises.
  The images and ``index.parquet`` are byte-identical for any K; g_n equals the one-process g_n to float rounding;
* a fingerprint of everything the images depend on guards against resuming a run made with other params.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

import dasgen
from dasgen.config import Config
from dasgen.datasets.io import to_model_tensor, to_uint8
from dasgen.datasets.pairs import PairStore
from dasgen.diffusion.unet import WEIGHTS_NAME, verify_denoiser_checksum
from dasgen.labels import NUM_TRAIN_CLASSES
from dasgen.errors import CheckpointError, DasgenError
from dasgen.guidance.sampler import translate
from dasgen.progress import LoopProgress
from dasgen.seeding import image_generator, image_seed
from dasgen.segment.checkpoint import load_segmenter, read_sidecar, save_segmenter
from dasgen.segment.metrics import label_agreement
from dasgen.segment.train import finetune, freeze_batchnorm
from dasgen.pipeline.augment import augment_settings
from dasgen.pipeline.chains import domain_chain, domain_noise_levels
from dasgen.pipeline.code_deps import code_sha256
from dasgen.pipeline.common import canonical_root, load_source_pairs, resolve_device, source_reader, write_json
from dasgen.pipeline.distributed import DistContext, data_parallel_segmenter
from dasgen.pipeline.guided import domain_denoiser, domain_guidance
from dasgen.pipeline.live import live_dir, live_metrics, warner
from dasgen.pipeline.source_content import check_unchanged, content_sha256
from dasgen.pipeline.image_quality import blow_up_report, target_roughness
from dasgen.pipeline.keep_segmenters import prune_segmenter, recorded_segmenter_sha256
from dasgen.pipeline.segmenters import on_device, score_on_target, target_val_store
from dasgen.pipeline.workspace import Workspace
from dasgen.io.atomic import sha256_file
from dasgen.io.state import read_state
from dasgen.artifact.writer import DomainWriter, ImageRecord
from dasgen.artifact.journal import JOURNAL_DIR
from dasgen.artifact.schema import CHECKSUMS_FILE, STAGING_DIR

FINGERPRINT_FILE = ".fingerprint.json"


@dataclass(frozen=True)
class DomainPlan:
    """What domain n translates: its noise level, its reverse chain length and its image ids (sorted)."""

    n: int
    t: int
    steps: int
    ids: list[str]


def domain_ids(config: Config, n: int, all_ids: list[str]) -> list[str]:
    """Every id for the last domain; a seeded sample of ``ptl.images_per_domain`` ids for the others."""
    if n == config.ptl.N or config.ptl.images_per_domain >= len(all_ids):
        return sorted(all_ids)
    rng = np.random.default_rng(image_seed(config.run.seed, n, "domain-sample"))
    picks = rng.choice(len(all_ids), size=config.ptl.images_per_domain, replace=False)
    return sorted(all_ids[i] for i in picks)


def plan_domain(config: Config, n: int, all_ids: list[str]) -> DomainPlan:
    if not 1 <= n <= config.ptl.N:
        raise DasgenError(f"--domain {n}: must be between 1 and ptl.N = {config.ptl.N}")
    return DomainPlan(n=n, t=domain_noise_levels(config.ptl)[n - 1], steps=len(domain_chain(config, n)),
                      ids=domain_ids(config, n, all_ids))


def image_consistency(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Label consistency of one translated image: mIoU of g's prediction against the source label.

    Averaged over the classes present in the label or the prediction (ignore pixels excluded); 1.0 = perfect.
    """
    return label_agreement(pred[None], label[None])


def domain_fingerprint(config: Config, n: int, ws: Workspace, source_record: dict | None = None, *,
                       known_sha256: dict[str, str] | None = None) -> dict:
    """Everything domain n's images depend on; a resume with a different fingerprint starts the domain afresh.

    Built from :meth:`Config.result_dict` (no memory or batching knob), the meaning of the stage's code (:func:`code_sha256`: a comment or docstring edit
    keeps finished domains, a real change redoes them) and the source content the scan hashed (``source_record``,
    read from ``data/source_pairs.json`` when not given). ``known_sha256`` (``{"diffusion": ..., "segmenter_in":
    ...}``) spares hashing files whose digest the caller has (``dasgen status`` over 600 domains)."""
    known = known_sha256 or {}
    if source_record is None:
        source_record = read_state(ws.source_pairs, remedy="run `dasgen scan`") if ws.source_pairs.is_file() else {}
    d = config.result_dict()
    ptl = {k: v for k, v in d["ptl"].items() if k != "keep_segmenters"}  # which files stay, not what they hold
    return {
        "n": n,
        "code_sha256": code_sha256("domain"),
        "params": {"ptl": ptl, "sgg": d["sgg"], "seed": config.run.seed, "resolution": d["data"]["resolution"],
                   "source": d["data"]["source"] | {"root": canonical_root(config.data.source.root, ws.root)},
                   "schedule": {k: d["diffusion"][k] for k in ("num_train_timesteps", "beta_start", "beta_end")}},
        "source_content_sha256": content_sha256(source_record),
        "diffusion_sha256": known.get("diffusion") or sha256_file(_required(ws.diffusion_model / WEIGHTS_NAME,
                                                                           "dasgen train-diffusion")),
        "segmenter_in_sha256": known.get("segmenter_in") or _segmenter_sha256(config, ws, n - 1),
    }


def _segmenter_sha256(config: Config, ws: Workspace, n: int) -> str:
    """sha256 of g_n: of its file, or as domain n recorded it when ``ptl.keep_segmenters`` removed the file."""
    path = ws.segmenter_path(n, config.ptl.N)
    recorded = None if path.is_file() else recorded_segmenter_sha256(config, ws, n)
    return recorded or sha256_file(_required(path, "dasgen train-g0" if n == 0 else f"dasgen translate --domain {n}"))


def _required(path: Path, stage: str) -> Path:
    """``path`` if it exists, else a one-line CheckpointError saying which command writes it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (run `{stage}` first)")
    return path


def domain_finalized(out: Path) -> bool:
    """Whether finalize ran to its end in ``out``: its files exist and its clean-up left no journal, staging or trash."""
    return all((out / name).is_file() for name in ("index.parquet", "metrics.json", "provenance.json",
                                                   CHECKSUMS_FILE)) \
        and not any((out / name).exists() for name in (JOURNAL_DIR, STAGING_DIR, ".trash"))


def _recorded_fingerprint(out: Path) -> dict | None:
    """The fingerprint ``out`` was made with (None when it has none); a damaged one is one line naming the file."""
    marker = out / FINGERPRINT_FILE
    if not marker.is_file():
        return None
    return read_state(marker, remedy=f"it records what {out.name} was made from; remove {out} to translate the "
                      "domain afresh")


def _complete_with(out: Path, fingerprint: dict) -> bool:
    """Whether ``out`` holds a finished domain made with ``fingerprint`` (as :func:`_prepare_directory` decides)."""
    return _recorded_fingerprint(out) == fingerprint and domain_finalized(out)


def _prepare_directory(out: Path, fingerprint: dict, ctx: DistContext, console: Console) -> bool:
    """Returns True when the domain is already complete with this fingerprint; clears a stale partial run."""
    marker = out / FINGERPRINT_FILE
    # Every rank decides from the same state: without the two barriers a rank that reads the marker after rank 0 has
    # written it below would skip rank 0's barrier, and the ranks' barriers would pair up wrongly (a hang).
    ctx.barrier()
    same_run = _recorded_fingerprint(out) == fingerprint
    complete = same_run and domain_finalized(out)
    ctx.barrier()
    if same_run:
        return complete
    if ctx.is_main:
        # A link (data/domains/003 -> a bigger disk) is used when it leads to an empty folder, never cleared:
        # rmtree refuses links, and emptying what one points to could empty a folder dasgen did not make.
        if out.is_symlink() and not (out.is_dir() and not any(out.iterdir())):
            raise DasgenError(f"{out}: a symbolic link (to {os.readlink(out)}) holding a run made with other params "
                              "or inputs (or leading nowhere); dasgen never clears a directory through a link: "
                              "empty what it points to, or remove the link, and rerun")
        try:
            if out.exists() and not out.is_symlink():
                console.print(f"[yellow]{out}: made with other params or inputs; starting this domain afresh[/]")
                shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=out.is_symlink())
            write_json(marker, fingerprint)
        except OSError as error:  # a read-only workspace: one line, not a traceback
            raise DasgenError(f"cannot write {error.filename or out}: {error.strerror or error}") from None
    ctx.barrier()
    return False


def translate_images(config: Config, ws: Workspace, plan: DomainPlan, store: PairStore, writer: DomainWriter,
                     ctx: DistContext, device: torch.device, console: Console, progress: bool) -> int:
    """Translate this rank's pending batches of ``plan.ids`` into ``writer``; returns the number of images written."""
    eps_fn = domain_denoiser(config, ws.diffusion_model, device)
    g_prev = load_segmenter(ws.segmenter_path(plan.n - 1, config.ptl.N), device=device,
                            expect_arch=config.segmenter.arch, expect_classes=NUM_TRAIN_CLASSES)
    g_prev.eval().requires_grad_(False)
    chain = domain_chain(config, plan.n)
    guidance = domain_guidance(config, g_prev, plan.n, len(chain))
    done = writer.done_ids()
    ctx.barrier()  # every rank has read the same finished set before any rank writes
    size = config.ptl.translate_batch_size
    batches = [plan.ids[i:i + size] for i in range(0, len(plan.ids), size)]
    pending = [b for b in batches if not set(b) <= done]
    # Pending batches dealt round-robin (batch b -> rank b % K on a fresh run): a resume rebalances the ranks, so
    # no rank idles at the barrier for hours. A batch's content is fixed, so which rank runs it never shows.
    mine = pending[ctx.rank::ctx.world_size]
    todo = sum(len(b) for b in mine)
    written = 0
    with LoopProgress(f"domain {plan.n} (t={plan.t}, {plan.steps} steps)", todo, unit="img",
                      enabled=progress and ctx.is_main, console=console) as bar:
        for batch in mine:
            x0, labels = store.batch(batch)
            generators = [image_generator(config.run.seed, plan.n, i) for i in batch]
            guide = None if guidance is None else guidance.for_labels(labels.to(device))
            out = translate(x0.to(device), denoiser=eps_fn, schedule=chain, generators=generators, guide=guide)
            broken = [image_id for image_id, ok in zip(batch, torch.isfinite(out).flatten(1).all(1).tolist())
                      if not ok]
            if broken:  # NaN/inf in eps, a gradient or x: nothing of this batch is written (to_uint8 would blacken)
                raise DasgenError(f"domain {plan.n}: translation produced non-finite pixels for image(s) "
                                  f"{', '.join(broken[:5])}{' ...' if len(broken) > 5 else ''} (a damaged DDPM or "
                                  "segmenter, or a guidance scale too large); nothing written for this batch")
            images = [to_uint8(img) for img in out]
            with torch.inference_mode():
                quantised = torch.stack([to_model_tensor(img) for img in images]).to(device)
                preds = g_prev(quantised).argmax(1).cpu()
            for k, image_id in enumerate(batch):
                if image_id in done:
                    continue
                pair = store.get(image_id)
                writer.add(ImageRecord(id=image_id, source_image=pair.entry.image, source_label=pair.entry.label,
                                       split=pair.entry.split, domain=plan.n, t=plan.t,
                                       seed=image_seed(config.run.seed, plan.n, image_id),
                                       height=images[k].shape[0], width=images[k].shape[1],
                                       consistency=image_consistency(preds[k], labels[k])), images[k])
                written += 1
            bar.advance(len(batch))
    return written


def src_loss_weight(schedule: str, n: int, N: int) -> float:
    """Weight of L_src in domain n's fine-tune (Eq. 12 weighs it 1). ``fade`` (a deviation) lowers it linearly,
    1 - (n - 1) / N: g_1 still leans on the source it was trained on, g_N keeps 1/N of it."""
    return 1.0 if schedule == "constant" else 1.0 - (n - 1) / N


def finetune_segmenter(config: Config, ws: Workspace, plan: DomainPlan, store: PairStore, writer: DomainWriter,
                       device: torch.device, progress: bool, ctx: DistContext = DistContext(),
                       console: Console | None = None):
    """Eq. 12: g_{n-1} -> g_n on (X^n, Y^S) plus (X^S, Y^S) unless ``ptl.finetune.use_src_loss`` is false.

    Under torchrun every rank calls it: the batches are split over the ranks by
    :func:`~dasgen.pipeline.distributed.data_parallel_segmenter` (same batches, same maths as one process).
    """
    ft = config.ptl.finetune
    model = load_segmenter(ws.segmenter_path(plan.n - 1, config.ptl.N), device=device,
                           expect_arch=config.segmenter.arch, expect_classes=NUM_TRAIN_CLASSES)
    if config.segmenter.batchnorm == "frozen":
        freeze_batchnorm(model)  # before DistributedDataParallel registers the parameters it will reduce
    trained = data_parallel_segmenter(model, ctx, batch_size=ft.batch_size, device=device)
    if trained is None:  # a rank beyond the batch size sits the fine-tune out
        return model, {}
    source_sampler = store.sampler(ft.batch_size)

    def sample_adapted(generator):
        picks = torch.randint(len(plan.ids), (ft.batch_size,), generator=generator).tolist()
        ids = [plan.ids[i] for i in picks]
        # read on demand: the last domain holds every source image, too many to keep decoded on every rank
        x = torch.stack([to_model_tensor(writer.read_image(i)) for i in ids])
        _, y = store.batch(ids)
        flip = torch.rand(ft.batch_size, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        return x.to(device), y.to(device)

    sample_source = on_device(source_sampler, device)

    generator = torch.Generator().manual_seed(image_seed(config.run.seed, plan.n, "finetune"))
    # g_n's losses while it trains, for dvc plots (rank 0 writes them; every rank computes the same numbers)
    with live_metrics(live_dir(ws, ws.domain_metrics(plan.n, config.ptl.N).stem), enabled=ctx.is_main,
                      warn=warner(console or Console(stderr=True), f"g_{plan.n}")) as on_metrics:
        losses = finetune(trained, sample_adapted, sample_source if ft.use_src_loss else None, iters=ft.iters,
                          lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay, optimizer=ft.optimizer,
                          augment=augment_settings(config, ft.aug_fraction), generator=generator, progress=progress,
                          description=f"fine-tune g_{plan.n}", on_metrics=on_metrics, console=console,
                          batchnorm=config.segmenter.batchnorm,
                          src_weight=src_loss_weight(ft.src_loss_schedule, plan.n, config.ptl.N))
    model.eval()
    return model, losses


def run_domain(config: Config, ws: Workspace, n: int, *, ctx: DistContext = DistContext(), progress: bool = True,
               console: Console | None = None) -> dict:
    """Translate domain n, fine-tune g_n and write the domain artifact. Returns the domain's metrics."""
    console = console or Console(stderr=True)
    started = time.time()
    device = resolve_device(config.run.device)
    if ctx.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    entries, source_record = load_source_pairs(ws, config)
    plan = plan_domain(config, n, [e.id for e in entries])
    out = ws.domain_dir(n, config.ptl.N)
    if (out / FINGERPRINT_FILE).is_file():  # earlier work to resume or call complete: not from a stale scan
        check_unchanged(source_record, ws.root / config.data.source.root, entries)
    # Every input is checked before anything is written or cleared: a damaged g_{n-1} changes the fingerprint, and
    # found only when loaded it would first have cost the finished domain n. Each is hashed once here.
    _required(ws.diffusion_model / WEIGHTS_NAME, "dasgen train-diffusion")
    ddpm_sha256 = verify_denoiser_checksum(ws.diffusion_model, required=True)
    g_prev = ws.segmenter_path(n - 1, config.ptl.N)
    if g_prev.is_file():  # its sha256 is verified against its sidecar as it loads: the fingerprint reuses it
        load_segmenter(g_prev, expect_arch=config.segmenter.arch, expect_classes=NUM_TRAIN_CLASSES)
    known = {"diffusion": ddpm_sha256} | ({"segmenter_in": read_sidecar(g_prev)["weights_sha256"]}
                                          if g_prev.is_file() else {})
    fingerprint = domain_fingerprint(config, n, ws, source_record, known_sha256=known)
    if not g_prev.is_file() and not _complete_with(out, fingerprint):  # removed by ptl.keep_segmenters
        first = n - 1 - (n - 1) % config.ptl.domains_per_stage + 1  # after the last g that is kept
        dirs = ws.domain_dir(first, config.ptl.N) if first == n - 1 else \
            f"{ws.domain_dir(first, config.ptl.N)} .. {ws.domain_dir(n - 1, config.ptl.N).name}"
        raise CheckpointError(f"{g_prev}: removed to save disk (ptl.keep_segmenters: stage_last), and domain {n} "
                              f"must be made again from it; remove {dirs} and run "
                              f"`dasgen translate --domains {first}-{n}`")
    reader = source_reader(config, ws.root)
    if _prepare_directory(out, fingerprint, ctx, console):
        console.print(f"domain {n}: already complete, nothing to do")
        if ctx.is_main and prune_segmenter(config, ws, n - 1):
            console.print(f"domain {n}: g_{n - 1} removed (ptl.keep_segmenters: stage_last)")
        metrics = read_state(out / "metrics.json", remedy=f"`dasgen verify {out}` lists the damage; remove {out} "
                             "to translate the domain afresh")
        if ctx.is_main and not ws.domain_metrics(n, config.ptl.N).is_file():  # killed just before writing it
            write_json(ws.domain_metrics(n, config.ptl.N),
                       {k: v for k, v in metrics.items() if k != "target_per_class"})
        return metrics
    store = PairStore(reader, entries, config.data.resolution)
    writer = DomainWriter(out, image_format=config.ptl.image_format, rank=ctx.rank, world_size=ctx.world_size)
    written = translate_images(config, ws, plan, store, writer, ctx, device, console, progress)
    writer.close()
    ctx.barrier()
    translate_s = time.time() - started
    writer = DomainWriter(out, image_format=config.ptl.image_format, rank=ctx.rank, world_size=ctx.world_size)
    model, losses = finetune_segmenter(config, ws, plan, store, writer, device, progress and ctx.is_main, ctx,
                                       console)
    if not ctx.is_main:
        ctx.barrier()  # rank 0 writes g_n and finalises; the next domain of a --domains range needs g_n
        return {}
    sha_out = save_segmenter(model, out / "segmenter.safetensors", meta={"domain": n, "t": plan.t})
    target = score_on_target(model, config, device, target_val_store(config, ws.root))
    consistencies = writer.consistencies()
    quality = blow_up_report((writer.read_image(image_id) for image_id in plan.ids), target_roughness(config, ws.root))
    metrics = {
        "domain": n,
        "t": plan.t,
        "reverse_steps": plan.steps,
        "images": len(plan.ids),
        "images_translated_this_run": written,
        "consistency": float(np.mean(consistencies)) if consistencies else None,
        "blown_up_images": quality["blown_up_images"],  # rougher than 2.5x real target photos (image_quality.py)
        "roughness_ratio": quality["roughness_ratio"],
        "target_miou": None if target is None else target["miou"],
        "target_per_class": None if target is None else target["per_class"],
        "finetune_final_loss": losses.get("final_loss") if isinstance(losses, dict) else None,
        "translate_s": round(translate_s, 1),
        "wall_s": round(time.time() - started, 1),
    }
    provenance = {
        "dasgen_version": dasgen.__version__,
        "params": config.to_dict(),
        "params_sha256": config.sha256(),
        "diffusion_sha256": fingerprint["diffusion_sha256"],
        "segmenter_in_sha256": fingerprint["segmenter_in_sha256"],
        "segmenter_out_sha256": sha_out,
        "source": {k: source_record[k] for k in ("kind", "root", "split")}
        | {"pairs_used": len(plan.ids), "pairs_usable": len(entries), "skipped": source_record["skipped"],
           "content_sha256": fingerprint["source_content_sha256"]},  # the scan's digest: export can check it
    }
    writer.finalize(metrics=metrics, provenance=provenance)
    write_json(ws.domain_metrics(n, config.ptl.N), {k: v for k, v in metrics.items() if k != "target_per_class"})
    console.print(f"domain {n}/{config.ptl.N}: t={plan.t}, {len(plan.ids)} images, consistency "
                  f"{metrics['consistency']:.3f}, g_{n} target mIoU "
                  f"{'n/a' if target is None else format(target['miou'], '.3f')}, {metrics['wall_s']} s")
    if prune_segmenter(config, ws, n - 1):
        console.print(f"domain {n}: g_{n - 1} removed (ptl.keep_segmenters: stage_last)")
    ctx.barrier()  # release the other ranks only once g_n and the artifact are on disk
    return metrics
