"""``dasgen plot``: PNG charts of the PTL curve (``metrics/ptl.csv``) and of the ablation results, drawn with Pillow.

``metrics/ptl.csv`` is also declared as DVC plots in ``dvc.yaml`` (``dvc plots show``); this PNG is the same curve
for places without DVC's renderer (the README). Pillow, already a dependency, keeps matplotlib out of the runtime
dependencies: the charts are simple (lines with markers, bars with whiskers), not worth a plotting library.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from dasgen.errors import DasgenError
from dasgen.io.state import read_state
from dasgen.research.sheet import save_png

CHART_SIZE = (760, 420)  # px
MARGINS = (64, 44, 24, 64)  # left, top, right, bottom px
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
           (227, 119, 194), (127, 127, 127))
FONT_SIZE = 13


def _font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def nice_range(values: Sequence[float], step: float = 10.0) -> tuple[float, float]:
    """The smallest [lo, hi] on multiples of ``step`` holding every value (at least one step wide)."""
    lo, hi = math.floor(min(values) / step) * step, math.ceil(max(values) / step) * step
    return (lo, hi if hi > lo else lo + step)


def line_chart(x: Sequence[float], series: dict[str, Sequence[float | None]], *, x_labels: Sequence[str],
               title: str, y_label: str, size: tuple[int, int] = CHART_SIZE) -> Image.Image:
    """Lines with markers, one per series, over shared x positions; a None value breaks its line."""
    values = [v for ys in series.values() for v in ys if v is not None]
    if not values or not x:
        raise DasgenError("line chart: nothing to plot (no values)")
    y_lo, y_hi = nice_range(values)
    left, top, right, bottom = MARGINS
    top += 18 * len(series)  # the legend sits above the axes, never over a line
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    x_lo, x_hi = min(x), max(x) if max(x) > min(x) else min(x) + 1
    pad = 0.04 * (x_hi - x_lo)

    def px(xv: float, yv: float) -> tuple[float, float]:
        return (left + (xv - x_lo + pad) / (x_hi - x_lo + 2 * pad) * (width - left - right),
                height - bottom - (yv - y_lo) / (y_hi - y_lo) * (height - top - bottom))

    step = 10.0 if y_hi - y_lo > 30 else 5.0
    tick = y_lo
    while tick <= y_hi + 1e-9:  # horizontal grid and y ticks
        _, y = px(x_lo, tick)
        draw.line((left, y, width - right, y), fill=(230, 230, 230))
        draw.text((left - 6, y), f"{tick:g}", fill="black", font=font, anchor="rm")
        tick += step
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    for xv, label in zip(x, x_labels):
        X, _ = px(xv, y_lo)
        draw.line((X, height - bottom, X, height - bottom + 4), fill="black")
        draw.multiline_text((X, height - bottom + 8), label, fill="black", font=font, anchor="ma", align="center")
    draw.text((width / 2, 14), title, fill="black", font=_font(FONT_SIZE + 2), anchor="mm")
    draw.text((left - 6, top - 12), y_label, fill="black", font=font, anchor="rm")
    for k, (name, ys) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = [px(xv, yv) if yv is not None else None for xv, yv in zip(x, ys)]
        for a, b in zip(points, points[1:]):
            if a is not None and b is not None:
                draw.line((a, b), fill=colour, width=2)
        for p in points:
            if p is not None:
                draw.ellipse((p[0] - 4, p[1] - 4, p[0] + 4, p[1] + 4), fill=colour)
        ly = MARGINS[1] + 18 * k  # legend rows between the title and the axes
        draw.line((left + 10, ly, left + 30, ly), fill=colour, width=2)
        draw.text((left + 36, ly), name, fill="black", font=font, anchor="lm")
    return image


def read_ptl_csv(path: Path) -> list[dict]:
    """Rows of ``metrics/ptl.csv`` (domain, t, consistency, target_miou; empty cells -> None)."""
    if not path.is_file():
        raise DasgenError(f"{path}: not found (run `dasgen summarize` first)")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DasgenError(f"{path}: not a readable CSV file ({error})") from None
    needed = {"domain", "t", "consistency", "target_miou"}
    if not rows or not needed <= set(rows[0]):
        raise DasgenError(f"{path}: expected a header with {', '.join(sorted(needed))} and at least one row")

    def cell(line: int, row: dict, key: str, kind: type, optional: bool) -> float | int | None:
        text = row[key]
        if optional and text in ("", None):
            return None
        try:
            value = kind(text)
        except (TypeError, ValueError):
            value = None
        if value is None or (kind is float and not math.isfinite(value)):
            raise DasgenError(f"{path}: line {line}: {key} {str(text)[:40]!r} is not a{' finite' * (kind is float)} "
                              f"{'number' if kind is float else 'whole number'}")
        return value

    return [{"domain": cell(line, r, "domain", int, False), "t": cell(line, r, "t", int, False),
             "consistency": cell(line, r, "consistency", float, True),
             "target_miou": cell(line, r, "target_miou", float, True)} for line, r in enumerate(rows, start=2)]


def plot_ptl(csv_path: Path, out: Path) -> dict:
    """``metrics/ptl.csv`` -> PNG: label consistency of X^n and target mIoU of g_n against n (g_0 at n = 0)."""
    rows = read_ptl_csv(Path(csv_path))
    percent = lambda v: None if v is None else 100 * v  # noqa: E731
    chart = line_chart(
        [r["domain"] for r in rows],
        {"label consistency of X^n (judged by g_n-1)": [percent(r["consistency"]) for r in rows],
         "target val mIoU of g_n": [percent(r["target_miou"]) for r in rows]},
        x_labels=[f"{r['domain']}\nt={r['t']}" for r in rows], title="PTL domains: consistency and target mIoU vs n",
        y_label="%")
    save_png(chart, Path(out))
    return {"path": str(out), "points": len(rows), "size": list(chart.size)}


def bar_chart(labels: Sequence[str], means: Sequence[float], errors: Sequence[float | None], *, title: str,
              x_label: str, paper: Sequence[float | None] | None = None, row_height: int = 26) -> Image.Image:
    """Horizontal bars with +-error whiskers, one per label; optional paper values as hollow diamonds."""
    if not labels:
        raise DasgenError("bar chart: nothing to plot (no rows)")
    left, top, right, bottom = 200, 44, 24, 48
    width, height = CHART_SIZE[0], top + bottom + row_height * len(labels)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    reach = [m + (e or 0) for m, e in zip(means, errors)] + [p for p in (paper or []) if p is not None]
    hi = nice_range([0.0, *reach])[1]

    def px(v: float) -> float:
        return left + v / hi * (width - left - right)

    for tick in range(0, int(hi) + 1, 10):
        draw.line((px(tick), top, px(tick), height - bottom), fill=(230, 230, 230))
        draw.text((px(tick), height - bottom + 6), str(tick), fill="black", font=font, anchor="ma")
    for k, (label, mean, error) in enumerate(zip(labels, means, errors)):
        y = top + row_height * k + row_height / 2
        draw.text((left - 8, y), label, fill="black", font=font, anchor="rm")
        draw.rectangle((px(0), y - row_height * 0.32, px(mean), y + row_height * 0.32), fill=COLOURS[0])
        if error:
            draw.line((px(mean - error), y, px(mean + error), y), fill="black", width=2)
        if paper and paper[k] is not None:
            p = px(paper[k])
            draw.polygon(((p, y - 6), (p + 6, y), (p, y + 6), (p - 6, y)), outline=COLOURS[1], width=2)
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    draw.text((width / 2, 14), title, fill="black", font=_font(FONT_SIZE + 2), anchor="mm")
    draw.text(((left + width - right) / 2, height - 16), x_label, fill="black", font=font, anchor="mm")
    return image


def plot_ablation(json_path: Path, out: Path) -> dict:
    """``ablation.json`` (from ``dasgen ablate``) -> two PNGs: ``out``, the toy target mIoU per row (mean +- std, the
    paper's values marked), and ``<out stem>-curves.png``, g_n's target mIoU against n for the runs with the most
    domains (mean over seeds; n = 0 is g_0)."""
    path = Path(json_path)
    expected = "plot --ablation reads the ablation.json `dasgen ablate` writes"
    report = read_state(path, keys={"summary": list, "runs": list}, remedy=expected)
    rows = report["summary"]
    fields = {"label": str, "target_miou": (int, float, type(None)), "target_miou_std": (int, float, type(None)),
              "paper_miou": (int, float, type(None))}
    for number, row in enumerate(rows, start=1):
        if not (isinstance(row, dict) and all(isinstance(row.get(k, ...), kind) for k, kind in fields.items())):
            raise DasgenError(f"{path}: summary row {number} is not an ablation row (label, target_miou, "
                              f"target_miou_std, paper_miou); {expected}")
    try:  # before anything is written
        curves = _mean_curves(report["runs"])
    except (KeyError, TypeError, AttributeError):
        raise DasgenError(f"{path}: its runs are not ablation runs (seed, variant, label, curve); {expected}") from None
    summary = [s for s in rows if s["target_miou"] is not None]
    chart = bar_chart([s["label"] for s in summary], [100 * s["target_miou"] for s in summary],
                      [None if s["target_miou_std"] is None else 100 * s["target_miou_std"] for s in summary],
                      paper=[s["paper_miou"] for s in summary],
                      title="Ablation on the toy: final g_N target mIoU (bar: mean, whisker: ±1 std over seeds)",
                      x_label="mIoU % (diamond: the paper's GTA5 -> Cityscapes number)")
    out = Path(out)
    save_png(chart, out)
    result = {"path": str(out), "rows": len(summary), "size": list(chart.size)}
    if curves:
        steps = sorted({n for curve in curves.values() for n in curve})
        chart = line_chart(steps, {label: [curve.get(n) for n in steps] for label, curve in curves.items()},
                           x_labels=[str(n) for n in steps],
                           title="Target mIoU of g_n against domain n (mean over seeds)",
                           y_label="%", size=(CHART_SIZE[0], CHART_SIZE[1] + 18 * len(curves)))
        result["curves"] = str(save_png(chart, out.with_name(f"{out.stem}-curves.png")))
    return result


def _mean_curves(runs: list[dict]) -> dict[str, dict[int, float]]:
    """label -> {n: mean target mIoU % over seeds} for the runs with the most domains, g_0 (source-only) at n = 0."""
    most = max((r.get("domains") or 0 for r in runs), default=0)
    if most < 2:
        return {}
    g0 = {r["seed"]: r["target_miou"] for r in runs if r["variant"] == "source-only"}
    points: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        if run.get("domains") != most or not run.get("curve"):
            continue
        series = points.setdefault(run["label"], {})
        if run["seed"] in g0:
            series.setdefault(0, []).append(100 * g0[run["seed"]])
        for point in run["curve"]:
            if point.get("target_miou") is not None:
                series.setdefault(point["domain"], []).append(100 * point["target_miou"])
    return {label: {n: sum(v) / len(v) for n, v in sorted(series.items())} for label, series in points.items()}
