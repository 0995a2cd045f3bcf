"""Stage ``train-g0``: the source segmenter g_0 (Sec. 4.4), with the noisy+masked augmentation of Supp. C.

SGG asks g to classify noisy, masked images (Eq. 6 masks x_k, a noisy sample), so a fraction of g_0's training
samples (``segmenter.source_train.aug_fraction``, 10 % as in Supp. C) are noised by Eq. 2 at a random level below the
last domain's t_N and masked by one class region.

Training is resumable (``segmenter.source_train.checkpoint_every``): a killed run continues from its last state in
``data/g0/state`` to the same weights, and the log says from which iteration. The finished state is kept,
fingerprinted with the params g_0 depends on and the meaning of its code, so a re-run after an edit that changes no
computation rebuilds the same g_0 in seconds.
"""

from __future__ import annotations

import json
import time

import torch
from rich.console import Console

from dasgen.config import Config
from dasgen.datasets.pairs import PairStore
from dasgen.diffusion.training_state import STATE_JSON
from dasgen.io.lock import directory_lock
from dasgen.seeding import image_seed
from dasgen.segment.checkpoint import save_segmenter
from dasgen.segment.train import Checkpointing, train_source
from dasgen.pipeline.augment import augment_settings
from dasgen.pipeline.code_deps import code_sha256
from dasgen.pipeline.live import live_dir, live_metrics, warner
from dasgen.pipeline.common import canonical_root, load_source_pairs, resolve_device, source_reader, write_json
from dasgen.pipeline.source_content import check_unchanged, content_sha256
from dasgen.pipeline.segmenters import new_segmenter, on_device, score_on_target, target_val_store
from dasgen.pipeline.workspace import Workspace


def g0_fingerprint(config: Config, ws: Workspace, source_record: dict | None = None) -> dict:
    """What g_0's weights depend on: a training state made with anything else is not resumed (see
    :mod:`dasgen.diffusion.training_state`). Scoring settings (``segmenter.eval_protocol``) are left out: a re-run
    for them rescores the same g_0. ``source_record``: the scan (read from ``data/source_pairs.json`` when not
    given), whose content digest is part of it."""
    if source_record is None:
        source_record = json.loads(ws.source_pairs.read_text()) if ws.source_pairs.is_file() else {}
    d = config.result_dict()
    segmenter = {k: v for k, v in d["segmenter"].items() if k != "eval_protocol"}
    return {
        "code_sha256": code_sha256("train_g0"),
        "segmenter": segmenter,
        "seed": config.run.seed,
        "augment_max_t": config.ptl.t_final,
        "schedule": {k: d["diffusion"][k] for k in ("num_train_timesteps", "beta_start", "beta_end")},
        "resolution": d["data"]["resolution"],
        "source": d["data"]["source"] | {"root": canonical_root(config.data.source.root, ws.root)},
        "source_content_sha256": content_sha256(source_record),
    }


def run_train_g0(config: Config, ws: Workspace, *, progress: bool = True, console: Console | None = None) -> dict:
    """Train g_0 into ``data/g0`` under an OS lock on it (a second ``train-g0`` stops at once with one line)."""
    console = console or Console(stderr=True)
    ws.g0_dir.mkdir(parents=True, exist_ok=True)
    with directory_lock(ws.g0_dir, busy=f"{ws.g0_dir}: another `dasgen train-g0` is training into it right now; "
                        "wait for it to finish (or stop it), then rerun"):
        return _train_g0(config, ws, progress=progress, console=console)


def _train_g0(config: Config, ws: Workspace, *, progress: bool, console: Console) -> dict:
    device = resolve_device(config.run.device)
    started = time.time()
    entries, source_record = load_source_pairs(ws, config)
    if (ws.g0_state / STATE_JSON).is_file():  # a training state to resume or restore: not from a stale scan
        check_unchanged(source_record, ws.root / config.data.source.root, entries)
    store = PairStore(source_reader(config, ws.root), entries, config.data.resolution)
    st = config.segmenter.source_train
    model = new_segmenter(config, ws.root).to(device)
    generator = torch.Generator().manual_seed(image_seed(config.run.seed, 0, "train-g0"))
    sample_batch = on_device(store.sampler(st.batch_size), device)

    console.print(f"g_0: {config.segmenter.arch} on {len(entries)} source pairs, {st.iters} iterations on {device}")
    checkpoint = Checkpointing(ws.g0_state, st.checkpoint_every, g0_fingerprint(config, ws, source_record),
                               log=lambda line: console.print(f"g_0: {line}", highlight=False, soft_wrap=True))
    with live_metrics(live_dir(ws, "g0"), warn=warner(console, "g_0")) as on_metrics:
        losses = train_source(model, sample_batch, iters=st.iters, lr=st.lr, momentum=st.momentum,
                              weight_decay=st.weight_decay, optimizer=st.optimizer,
                              augment=augment_settings(config, st.aug_fraction), generator=generator,
                              progress=progress, checkpoint=checkpoint, on_metrics=on_metrics, console=console,
                              batchnorm=config.segmenter.batchnorm)
    model.eval()
    sha = save_segmenter(model, ws.segmenter_path(0), meta={"domain": 0, "trained_on": "source"})
    target = score_on_target(model, config, device, target_val_store(config, ws.root))
    metrics = {"domain": 0, "t": 0, "target_miou": None if target is None else target["miou"],
               "target_per_class": None if target is None else target["per_class"],
               "final_loss": losses.get("final_loss") if isinstance(losses, dict) else None,
               "resumed_from": losses.get("resumed_from") if isinstance(losses, dict) else None,
               "segmenter_sha256": sha, "wall_s": round(time.time() - started, 1)}
    write_json(ws.metrics / "g0.json", metrics)
    console.print(f"g_0: target val mIoU {metrics['target_miou']}")
    return metrics
