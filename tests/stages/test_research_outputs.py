"""The research commands' inputs and outputs: `sheet --out` and `plot --out` never write over a dataset or a stage's
artifact, `plot` reads only what it can plot, and an ablation spec's folders are checked before any run. The table in
docs/bad-inputs.md names these tests."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from dasgen.cli import app
from test_bad_inputs import error_line, invoke
from helpers.files import tree_bytes
from test_data_loss import _write_spec

TARGETS = {  # --out -> what the refusal names
    "data/toy/source/images/00001.png": "the source dataset (data.source.root)",
    "data/domains/002/index.parquet": "the PTL domains (data/domains)",
    "data/g0/segmenter.safetensors": "the source segmenter g_0 (data/g0)",
    "data/domains/002/images/00003.png": "the PTL domains (data/domains)",
}


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("command", [["sheet", "--count", "1"], ["plot"]], ids=["sheet", "plot"])
def test_sheet_and_plot_never_write_over_a_dataset_or_an_artifact(two_domains_ws, command, target):
    assert invoke(two_domains_ws, "summarize").exit_code == 0
    before = tree_bytes(two_domains_ws / "data")
    error_line(invoke(two_domains_ws, *command, "--out", str(two_domains_ws / target)),
               "refusing to write a figure over", TARGETS[target], "choose another --out")
    assert tree_bytes(two_domains_ws / "data") == before


def test_a_figure_is_written_only_as_a_png(two_domains_ws):
    assert invoke(two_domains_ws, "summarize").exit_code == 0
    summary = (two_domains_ws / "metrics/summary.json").read_bytes()
    for out in ("metrics/summary.json", "metrics"):
        error_line(invoke(two_domains_ws, "plot", "--out", str(two_domains_ws / out)),
                   "a figure is written as a .png file")
    assert (two_domains_ws / "metrics/summary.json").read_bytes() == summary
    result = invoke(two_domains_ws, "plot", "--out", str(two_domains_ws / "metrics/curve.png"))  # where they go
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("content, fragment", [
    (b'{"domains": 2, "final_target_miou": 0.4}', "no 'summary' in it"),
    (b"domain,t,consistency,target_miou\n0,0,,0.4\n", "not valid JSON (line 1)"),
    (json.dumps({"summary": [{"label": "full", "target_miou": "high"}], "runs": []}).encode(),
     "summary row 1 is not an ablation row"),
    (json.dumps({"summary": [], "runs": [{"domains": 2, "curve": [{}]}]}).encode(), "its runs are not ablation runs"),
], ids=["summary-json", "a-csv", "row-of-another-shape", "runs-of-another-shape"])
def test_plot_ablation_of_a_file_that_is_not_an_ablation_report(tmp_path, content, fragment):
    path = tmp_path / "report.json"
    path.write_bytes(content)
    error_line(CliRunner().invoke(app, ["plot", "--ablation", str(path), "--out", str(tmp_path / "a.png")]),
               f"{path}: {fragment}", "plot --ablation reads the ablation.json `dasgen ablate` writes")
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("row, fragment", [("1,10,high,0.4", "line 3: consistency 'high' is not a finite number"),
                                           ("one,10,0.5,0.4", "line 3: domain 'one' is not a whole number"),
                                           ("1,10,nan,0.4", "line 3: consistency 'nan' is not a finite number")])
def test_plot_of_a_ptl_csv_with_cells_that_are_not_numbers(tmp_path, row, fragment):
    path = tmp_path / "ptl.csv"
    path.write_text(f"domain,t,consistency,target_miou\n0,0,,0.4\n{row}\n")
    error_line(CliRunner().invoke(app, ["plot", "--csv", str(path), "--out", str(tmp_path / "p.png")]),
               f"{path}: {fragment}")
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("key", ["results", "out"])
def test_an_ablation_spec_naming_a_file_as_its_folder_stops_before_any_run(tmp_path, key):
    spec = _write_spec(tmp_path)
    data = yaml.safe_load(spec.read_text())
    (tmp_path / "notes.md").write_text("mine")
    spec.write_text(yaml.safe_dump(data | {key: "notes.md"}))
    error_line(CliRunner().invoke(app, ["ablate", "--spec", str(spec)]),
               f"{spec}.{key}: {tmp_path / 'notes.md'} exists and is not a directory")
    assert (tmp_path / "notes.md").read_text() == "mine" and not (tmp_path / "abl").exists()
