"""``dasgen sheet``: contact sheets that show the translation -- analogues of the paper's Fig. 4 and Fig. 7.

* :func:`domain_sheet` (Fig. 4): for a few source images, one row each: the source image, its label, X^n for several
  domains n, the final X^N, and the label overlaid on X^N -- read from a finished pipeline workspace.
* :func:`guidance_sheet` (Fig. 7): the same images re-translated on the last domain's chain without guidance, with
  LCG only (w/o GSG), GSG only (w/o LCG) and with the configured SGG arrangement, all at the SAME per-image seeds
  (the domain stage's), with the workspace's DDPM and g_{N-1}: the one code path of the domain stage
  (:func:`dasgen.guidance.sampler.translate`), so the SGG column reproduces X^N exactly.

Tiny toy images are upscaled with nearest-neighbour so the pixels stay visible; larger images are scaled to the
same cell width (labels always nearest-neighbour, never interpolated).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dasgen.config import Config
from dasgen.datasets.io import to_model_tensor, to_uint8
from dasgen.datasets.pairs import PairStore
from dasgen.errors import DasgenError
from dasgen.guidance.sampler import translate
from dasgen.labels import IGNORE_INDEX, NUM_TRAIN_CLASSES, train_id_to_color
from dasgen.seeding import image_generator
from dasgen.segment.checkpoint import load_segmenter
from dasgen.pipeline.chains import domain_chain, domain_noise_levels
from dasgen.pipeline.guided import domain_denoiser, domain_guidance
from dasgen.pipeline.common import load_source_pairs, resolve_device, source_reader
from dasgen.stages.translate import image_consistency
from dasgen.pipeline.workspace import Workspace
from dasgen.io.atomic import atomic_write_bytes
from dasgen.artifact.reader import DomainReader

CELL_WIDTH = 192  # px per image cell: a 64-px-wide toy image at 3x
GAP = 4  # px between cells
TITLE_HEIGHT = 22  # px of the column-title band
ROW_LABEL_WIDTH = 64  # px of the left band holding each row's image id
FONT_SIZE = 13
OVERLAY_ALPHA = 0.5  # label colour weight in the overlay column
GUIDANCE_COLUMNS = (("none", "unguided t={t}"), ("lcg-only", "w/o GSG (LCG)"), ("gsg-only", "w/o LCG (GSG)"))


@dataclass(frozen=True)
class Grid:
    """A grid of image cells (None = empty cell) with column titles and row labels."""

    titles: list[str]
    rows: list[list[np.ndarray | None]]
    row_labels: list[str]


def grid_size(columns: int, rows: int, cell: tuple[int, int]) -> tuple[int, int]:
    """(width, height) in px of a sheet of ``columns`` x ``rows`` cells of ``cell`` = (width, height) px."""
    return (ROW_LABEL_WIDTH + columns * (cell[0] + GAP) + GAP, TITLE_HEIGHT + rows * (cell[1] + GAP) + GAP)


def cell_size(height: int, width: int, cell_width: int = CELL_WIDTH) -> tuple[int, int]:
    """(width, height) of a cell showing an image of ``height`` x ``width`` scaled to ``cell_width``."""
    return cell_width, max(1, round(height * cell_width / width))


def _fit(image: np.ndarray, size: tuple[int, int], *, is_label: bool) -> Image.Image:
    """Scale an RGB uint8 image to ``size``: nearest when enlarging (keeps the toy's pixels) or for label colours."""
    pil = Image.fromarray(image)
    enlarging = size[0] >= pil.width
    return pil.resize(size, Image.Resampling.NEAREST if is_label or enlarging else Image.Resampling.LANCZOS)


def render_grid(grid: Grid, *, image_shape: tuple[int, int], label_columns: Sequence[int] = (),
                cell_width: int = CELL_WIDTH) -> Image.Image:
    """Draw ``grid`` on a white sheet; columns in ``label_columns`` hold label colours (scaled nearest)."""
    cell = cell_size(*image_shape, cell_width)
    sheet = Image.new("RGB", grid_size(len(grid.titles), len(grid.rows), cell), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=FONT_SIZE)
    for c, title in enumerate(grid.titles):
        x = ROW_LABEL_WIDTH + GAP + c * (cell[0] + GAP)
        draw.text((x + cell[0] / 2, TITLE_HEIGHT / 2), title, fill="black", font=font, anchor="mm")
    for r, (row, label) in enumerate(zip(grid.rows, grid.row_labels)):
        y = TITLE_HEIGHT + GAP + r * (cell[1] + GAP)
        draw.text((ROW_LABEL_WIDTH / 2, y + cell[1] / 2), label, fill="black", font=font, anchor="mm")
        for c, image in enumerate(row):
            x = ROW_LABEL_WIDTH + GAP + c * (cell[0] + GAP)
            if image is None:  # not translated in this domain (intermediate domains translate a sample)
                draw.rectangle((x, y, x + cell[0] - 1, y + cell[1] - 1), fill=(225, 225, 225))
                continue
            sheet.paste(_fit(image, cell, is_label=c in label_columns), (x, y))
    return sheet


def save_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` as a PNG atomically (no partial file under its final name)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def overlay(image: np.ndarray, train_ids: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The label's colours blended over ``image`` (uint8 (H, W, 3)); ignore pixels keep the image."""
    colours = train_id_to_color(train_ids).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    keep = (train_ids == IGNORE_INDEX)[..., None]
    return np.where(keep, image, np.round(blended)).astype(np.uint8)


# -- which domains and images ----------------------------------------------------------------------------------------


def finished_domains(config: Config, ws: Workspace) -> list[int]:
    """Domains 1..N whose artifact is finalised (has ``index.parquet``)."""
    return [n for n in range(1, config.ptl.N + 1) if (ws.domain_dir(n, config.ptl.N) / "index.parquet").is_file()]


def shown_domains(finished: list[int], max_columns: int) -> list[int]:
    """Up to ``max_columns`` finished domains, evenly spread and ending at the last (N = 600 needs this): the
    k-th of m columns shows the domain at position round(k * len / m), e.g. 150, 300, 450, 600."""
    if len(finished) <= max_columns:
        return finished
    return [finished[round(k * len(finished) / max_columns) - 1] for k in range(1, max_columns + 1)]


def pick_ids(id_sets: list[set[str]], count: int) -> list[str]:
    """``count`` ids, preferring those translated in the most domains (all, ideally), then by id."""
    everywhere: dict[str, int] = {}
    for ids in id_sets:
        for image_id in ids:
            everywhere[image_id] = everywhere.get(image_id, 0) + 1
    return sorted(everywhere, key=lambda i: (-everywhere[i], i))[:count]


def _domain_reader(directory: Path) -> tuple[DomainReader, set[str]]:
    """Random access to a finished domain's images (PNGs or Parquet shards), and the set of its ids."""
    reader = DomainReader(directory)
    return reader, reader.ids()


def _source_store(config: Config, ws: Workspace) -> PairStore:
    entries, _ = load_source_pairs(ws, config)
    return PairStore(source_reader(config, ws.root), entries, config.data.resolution)


# -- the two sheets --------------------------------------------------------------------------------------------------


def domain_sheet(config: Config, ws: Workspace, out: Path, *, count: int = 4, ids: Sequence[str] | None = None,
                 max_domains: int = 6, cell_width: int = CELL_WIDTH) -> dict:
    """Fig. 4 analogue: rows of source | label | X^n (several n) | label over X^N; returns what it drew."""
    domains = shown_domains(finished_domains(config, ws), max_domains)
    if not domains:
        raise DasgenError(f"{ws.data / 'domains'}: no finished domain (run `dasgen translate` first)")
    readers = {n: _domain_reader(ws.domain_dir(n, config.ptl.N)) for n in domains}
    last = domains[-1]
    chosen = list(ids) if ids else pick_ids([readers[n][1] for n in domains], count)
    missing = [i for i in chosen if i not in readers[last][1]]
    if missing:
        raise DasgenError(f"--ids: {missing[0]!r} is not in {ws.domain_dir(last, config.ptl.N)}")
    store = _source_store(config, ws)
    levels = domain_noise_levels(config.ptl)
    titles = ["source", "label"] + [f"X^{n} (t={levels[n - 1]})" for n in domains] + [f"label on X^{last}"]
    rows = []
    for image_id in chosen:
        pair = store.get(image_id)
        translated = [readers[n][0].read_image(image_id) if image_id in readers[n][1] else None for n in domains]
        rows.append([pair.image, train_id_to_color(pair.train_ids), *translated,
                     overlay(translated[-1], pair.train_ids)])
    sheet = render_grid(Grid(titles, rows, chosen), image_shape=tuple(config.data.resolution), label_columns=(1,),
                        cell_width=cell_width)
    save_png(sheet, out)
    return {"path": str(out), "ids": chosen, "domains": domains, "size": list(sheet.size)}


def guidance_sheet(config: Config, ws: Workspace, out: Path, *, count: int = 4, ids: Sequence[str] | None = None,
                   cell_width: int = CELL_WIDTH) -> dict:
    """Fig. 7 analogue: the last domain's translation unguided, LCG only, GSG only and with SGG, same seeds.

    Column titles carry each column's mean label consistency under g_{N-1} (the domain stage's score).
    """
    N = config.ptl.N
    device = resolve_device(config.run.device)
    store = _source_store(config, ws)
    chosen = list(ids) if ids else [e.id for e in store.entries][:count]
    unknown = [i for i in chosen if i not in {e.id for e in store.entries}]
    if unknown:
        raise DasgenError(f"--ids: {unknown[0]!r} is not a usable source pair in {ws.source_pairs}")
    g_prev = load_segmenter(ws.segmenter_path(N - 1, N), device=device, expect_arch=config.segmenter.arch,
                            expect_classes=NUM_TRAIN_CLASSES)
    g_prev.eval().requires_grad_(False)
    eps_fn = domain_denoiser(config, ws.diffusion_model, device)
    chain = domain_chain(config, N)
    x0, labels = store.batch(chosen)
    columns = [*GUIDANCE_COLUMNS, (config.sgg.arrangement, f"SGG ({config.sgg.arrangement})")]
    translated, titles, scores = [], [], {}
    for arrangement, title in columns:
        guidance = domain_guidance(config, g_prev, N, len(chain), arrangement=arrangement)
        generators = [image_generator(config.run.seed, N, i) for i in chosen]  # the domain stage's seeds
        guide = None if guidance is None else guidance.for_labels(labels.to(device))
        out_images = [to_uint8(x) for x in translate(x0.to(device), denoiser=eps_fn, schedule=chain,
                                                     generators=generators, guide=guide)]
        with torch.inference_mode():
            preds = g_prev(torch.stack([to_model_tensor(i) for i in out_images]).to(device)).argmax(1).cpu()
        scores[arrangement] = float(np.mean([image_consistency(preds[k], labels[k]) for k in range(len(chosen))]))
        translated.append(out_images)
        titles.append(f"{title.format(t=domain_noise_levels(config.ptl)[N - 1])} c={scores[arrangement]:.2f}")
    rows = [[store.get(i).image, train_id_to_color(store.get(i).train_ids), *(col[k] for col in translated)]
            for k, i in enumerate(chosen)]
    grid = Grid(["source", "label", *titles], rows, chosen)
    sheet = render_grid(grid, image_shape=tuple(config.data.resolution), label_columns=(1,), cell_width=cell_width)
    save_png(sheet, out)
    return {"path": str(out), "ids": chosen, "consistency": scores, "size": list(sheet.size),
            "images": {arr: imgs for (arr, _), imgs in zip(columns, translated)}}
