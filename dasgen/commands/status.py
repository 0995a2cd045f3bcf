"""``dasgen status``: where a run stands, read from the workspace's files only (it never locks, trains or writes).

For each stage: done, in progress (how far: the training state's step, the loss log's rows, the domain's journal) or
not started; which finished domains the current params and code would redo; and an estimate of the time the
remaining domains need, from the wall time the finished ones took per image and reverse step. Safe to run while a
stage runs, from another shell or node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dasgen.artifact.journal import journal_files
from dasgen.config import Config
from dasgen.diffusion.training_state import STATE_JSON
from dasgen.diffusion.unet import WEIGHTS_NAME
from dasgen.errors import DasgenError
from dasgen.io.atomic import sha256_file
from dasgen.pipeline.chains import domain_chain
from dasgen.pipeline.workspace import Workspace
from dasgen.pipeline.keep_segmenters import recorded_segmenter_sha256
from dasgen.progress import format_duration
from dasgen.stages.translate import FINGERPRINT_FILE, domain_finalized, domain_fingerprint, domain_ids

@dataclass
class RunStatus:
    """What :func:`run_status` found: one line per stage, then the domains and the estimate."""

    lines: list[tuple[str, str]] = field(default_factory=list)  # (stage, state)
    domains_complete: int = 0
    domains_total: int = 0
    eta_s: float | None = None

    def as_dict(self) -> dict:
        return {"stages": dict(self.lines), "domains_complete": self.domains_complete,
                "domains_total": self.domains_total, "eta_s": self.eta_s}


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _training(done: bool, state_dir: Path, total: int, unit: str, log: Path | None = None) -> str:
    if done:
        return "done"
    state = _json(state_dir / STATE_JSON) or {}
    step = state.get("step") if isinstance(state.get("step"), int) else 0
    if log is not None and log.is_file():  # the loss log moves every few seconds, the state only at checkpoints
        step = max(step, log.read_bytes().count(b"\n") - 1)
    if not step:
        return "not started"
    return f"training: {unit} {step} of {total} ({100 * step / max(total, 1):.0f}%), last checkpoint at " \
           f"{state.get('step', 0)}"


def _journalled(directory: Path) -> int:
    """Images of an unfinished domain already translated (one journal line each; a torn last line not counted)."""
    return sum(path.read_bytes().count(b"\n") for path in journal_files(directory))


def run_status(config: Config, ws: Workspace) -> RunStatus:
    """The state of every stage of the run in ``ws`` for ``config``."""
    status = RunStatus(domains_total=config.ptl.N)
    add = status.lines.append
    scan = _json(ws.source_pairs)
    entries = scan.get("entries") if scan else None
    ids = [e["id"] for e in entries if isinstance(e, dict) and "id" in e] if isinstance(entries, list) else None
    add(("scan", f"done: {len(ids)} usable source pairs" if ids is not None else "not done"))
    d = config.diffusion
    add(("train-diffusion", "pretrained" if d.pretrained else _training(
        (ws.diffusion_model / WEIGHTS_NAME).is_file() and (ws.metrics / "diffusion.json").is_file(),
        ws.diffusion_state, d.train.steps, "step", ws.diffusion_state / "loss.csv")))
    add(("train-g0", _training(ws.segmenter_path(0).is_file() and (ws.metrics / "g0.json").is_file(),
                               ws.g0_state, config.segmenter.source_train.iters, "iteration")))

    seconds, work, remaining, stale = 0.0, 0, 0, False
    known: dict[str, str] = {}  # digests hashed once (the DDPM, g_0) or read from the previous domain's provenance
    for n in range(1, config.ptl.N + 1):
        directory = ws.domain_dir(n, config.ptl.N)
        steps = len(domain_chain(config, n))
        images = len(domain_ids(config, n, ids)) if ids else config.ptl.images_per_domain
        if domain_finalized(directory):
            metrics = _json(directory / "metrics.json") or {}
            if metrics.get("images_translated_this_run") == metrics.get("images") and metrics.get("wall_s"):
                seconds += float(metrics["wall_s"])  # a whole domain timed in one run: a fair rate sample
                work += int(metrics.get("images", images)) * int(metrics.get("reverse_steps", steps))
            stale = stale or _made_otherwise(config, ws, n, directory, scan or {}, known)
            if stale:
                add((f"domain {n}", "complete, but made with other params or code: will be redone"))
                remaining += images * steps
            else:
                status.domains_complete += 1
            continue
        done = _journalled(directory) if directory.is_dir() else 0
        remaining += (images - min(done, images)) * steps
        if done:
            add((f"domain {n}", f"in progress: {done} of {images} images translated ({100 * done / images:.0f}%)"))
    add(("domains", f"{status.domains_complete} of {config.ptl.N} complete"))
    add(("export", "done" if (Path(ws.root) / config.export.out / "manifest.json").is_file() else "not done"))
    if remaining == 0:
        add(("ETA", "nothing left to translate"))
    elif work:
        status.eta_s = remaining * seconds / work
        add(("ETA", f"~{format_duration(status.eta_s)} for the remaining domains ({seconds / work * 1e3:.3g} ms per image "
                    f"and reverse step, measured on the finished domains)"))
    else:
        add(("ETA", "after the first domain finishes (dasgen plan estimates the whole run before it)"))
    return status


def _made_otherwise(config: Config, ws: Workspace, n: int, directory: Path, scan: dict,
                    known: dict[str, str]) -> bool:
    """True when domain n's marker differs from what the current params, inputs and code give (translate redoes it).

    Each file is hashed at most once: the DDPM and g_0 here, g_{n-1} (n >= 2) as domain n-1 recorded it."""
    try:
        if "diffusion" not in known:
            known["diffusion"] = sha256_file(ws.diffusion_model / WEIGHTS_NAME)
        if n == 1:
            known["segmenter_in"] = sha256_file(ws.segmenter_path(0))
        else:
            known["segmenter_in"] = recorded_segmenter_sha256(config, ws, n - 1) or ""
        return _json(directory / FINGERPRINT_FILE) != domain_fingerprint(config, n, ws, scan, known_sha256=known)
    except (DasgenError, OSError):  # its inputs are gone: it cannot be checked, nor redone until they are back
        return False
