"""Contact sheets (Fig. 4 / Fig. 7 analogues) and the Pillow charts, on the tiny workspace after two PTL domains."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dasgen.cli import app
from dasgen.config import load_config
from dasgen.errors import DasgenError
from dasgen.stages.translate import run_domain
from dasgen.research.plots import CHART_SIZE, _mean_curves, plot_ablation, plot_ptl
from dasgen.research.sheet import (GAP, ROW_LABEL_WIDTH, TITLE_HEIGHT, cell_size, domain_sheet, grid_size,
                                 guidance_sheet, overlay, pick_ids, shown_domains)
from dasgen.stages.summarize import run_summary
from dasgen.pipeline.workspace import Workspace
from dasgen.artifact.writer import DomainWriter


@pytest.fixture(scope="module")
def translated(tmp_path_factory, tiny_workspace):
    """A copy of the tiny workspace with both PTL domains finished and summarised."""
    import shutil

    root = tmp_path_factory.mktemp("sheet") / "ws"
    shutil.copytree(tiny_workspace, root)
    config = load_config(root / "params.yaml")
    for n in (1, 2):
        run_domain(config, Workspace(root), n, progress=False)
    run_summary(config, Workspace(root))
    return root


def cell_at(sheet: Image.Image, row: int, column: int, cell: tuple[int, int]) -> np.ndarray:
    x = ROW_LABEL_WIDTH + GAP + column * (cell[0] + GAP)
    y = TITLE_HEIGHT + GAP + row * (cell[1] + GAP)
    return np.asarray(sheet)[y:y + cell[1], x:x + cell[0]]


def test_domain_sheet_layout_and_pixels(translated, tmp_path):
    config = load_config(translated / "params.yaml")
    ws = Workspace(translated)
    result = domain_sheet(config, ws, tmp_path / "sheet.png", count=3)
    sheet = Image.open(tmp_path / "sheet.png")
    cell = cell_size(16, 32)
    assert result["domains"] == [1, 2]
    assert sheet.size == grid_size(2 + 2 + 1, 3, cell)  # source, label, X^1, X^2, overlay; 3 rows
    # rows prefer ids translated in every domain: domain 1 holds only a sample of 5
    first_domain = DomainWriter(ws.domain_dir(1)).done_ids()
    assert set(result["ids"]) <= first_domain
    # the X^2 cell is that image, enlarged by nearest-neighbour (3 px per pixel at the default width)
    x2 = DomainWriter(ws.domain_dir(2)).read_image(result["ids"][0])
    shown = cell_at(sheet.convert("RGB"), 0, 3, cell)
    assert np.array_equal(shown[::cell[0] // 32, ::cell[0] // 32], x2)


def test_guidance_sheet_reproduces_the_domain_and_guidance_changes_images(translated, tmp_path):
    config = load_config(translated / "params.yaml")
    ws = Workspace(translated)
    result = guidance_sheet(config, ws, tmp_path / "guidance.png", count=2)
    assert Image.open(tmp_path / "guidance.png").size == grid_size(2 + 4, 2, cell_size(16, 32))
    final = DomainWriter(ws.domain_dir(2))
    for k, image_id in enumerate(result["ids"]):
        # the SGG column is the same code path and seeds as the domain stage: X^N exactly
        assert np.array_equal(result["images"][config.sgg.arrangement][k], final.read_image(image_id))
    assert not np.array_equal(result["images"]["none"][0], result["images"]["alternate"][0])
    assert set(result["consistency"]) == {"none", "lcg-only", "gsg-only", "alternate"}


def test_sheet_helpers():
    assert pick_ids([{"a", "b", "c"}, {"b", "c"}, {"c", "b", "d"}], 2) == ["b", "c"]
    assert shown_domains(list(range(1, 601)), 4) == [150, 300, 450, 600]
    image = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 255], [0, 255]], np.uint8)
    blended = overlay(image, labels, alpha=0.5)
    assert (blended[:, 1] == 100).all() and (blended[:, 0] != 100).any()  # ignore pixels keep the image


def test_plots(translated, tmp_path):
    result = plot_ptl(translated / "metrics" / "ptl.csv", tmp_path / "ptl.png")
    assert result["points"] == 3 and Image.open(tmp_path / "ptl.png").size == CHART_SIZE
    with pytest.raises(DasgenError, match="run `dasgen summarize` first"):
        plot_ptl(tmp_path / "missing.csv", tmp_path / "x.png")
    summary = [{"label": name, "target_miou": miou, "target_miou_std": 0.02, "paper_miou": paper}
               for name, miou, paper in (("full", 0.6, 61.9), ("baseline", 0.5, 48.3), ("oracle", 0.9, None))]
    runs = [{"seed": 0, "variant": "source-only", "label": "g_0", "target_miou": 0.4, "domains": 0, "curve": None},
            {"seed": 0, "variant": "full", "label": "full", "target_miou": 0.6, "domains": 2,
             "curve": [{"domain": 1, "target_miou": 0.5}, {"domain": 2, "target_miou": 0.6}]},
            {"seed": 0, "variant": "wo-ptl", "label": "w/o PTL", "target_miou": 0.5, "domains": 1,
             "curve": [{"domain": 1, "target_miou": 0.5}]}]
    (tmp_path / "ablation.json").write_text(json.dumps({"summary": summary, "runs": runs}))
    result = plot_ablation(tmp_path / "ablation.json", tmp_path / "ablation.png")
    width, height = Image.open(tmp_path / "ablation.png").size
    assert result["rows"] == 3 and width == CHART_SIZE[0] and height > 3 * 20
    # curves: only the runs with the most domains (one series), g_0 at n = 0
    assert Image.open(result["curves"]).size == (CHART_SIZE[0], CHART_SIZE[1] + 18)
    assert _mean_curves(runs) == {"full": {0: 40.0, 1: 50.0, 2: 60.0}}


def test_sheet_and_plot_cli(translated, tmp_path):
    runner = CliRunner()
    base = ["--params", str(translated / "params.yaml"), "--workspace", str(translated)]
    result = runner.invoke(app, [*base, "sheet", "--count", "1", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*base, "plot", "--out", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").is_file() and (tmp_path / "p.png").is_file()
    result = runner.invoke(app, [*base, "sheet", "--ids", "nope"])
    assert result.exit_code == 1 and "'nope' is not in" in result.output
