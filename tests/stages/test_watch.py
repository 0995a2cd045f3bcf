"""A long run can be watched: plain progress lines in a log file, DVCLive metrics while training, `dasgen status`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from typer.testing import CliRunner

from dasgen.cli import app
from dasgen.pipeline.live import live_dir, live_plots
from dasgen.pipeline.workspace import Workspace

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _dasgen(root, *args):
    return ["--params", str(root / "params.yaml"), "--workspace", str(root), *args]


def test_train_g0_sent_to_a_file_prints_progress_lines_while_it_runs(workspace):
    """stderr is not a terminal (SLURM, nohup): rich's bar would print nothing until the end."""
    log = workspace / "g0.log"
    with open(log, "wb") as out:
        subprocess.run([sys.executable, "-m", "dasgen", *_dasgen(workspace, "--set", "segmenter.source_train.iters=30",
                                                                  "train-g0")],
                       stdout=out, stderr=subprocess.STDOUT, env={**ENV, "DASGEN_PROGRESS_SECONDS": "0.05"},
                       check=True, timeout=240)
    text = log.read_text()
    counts = [int(m) for m in re.findall(r"^g_0 \(source\): (\d+)/30 \(\d+%\), [\d.e+]+ it/s, elapsed", text, re.M)]
    assert len(counts) >= 2 and counts[0] == 0 and counts[-1] == 30 and counts == sorted(counts), text
    assert text.index("g_0 (source): 30/30") < text.index("g_0: target val mIoU")  # the lines came before the end
    assert "\x1b[" not in text  # plain text, no terminal codes


def test_training_metrics_are_logged_with_dvclive(tiny_workspace):
    """The fixture's DDPM (6 steps) and g_0 (6 iterations) logged their curves where dvc.yaml declares them."""
    ws = Workspace(tiny_workspace)
    for name in ("diffusion", "g0"):
        directory = live_dir(ws, name)
        rows = (live_plots(directory) / "loss.tsv").read_text().splitlines()
        assert rows[0] == "step\tloss"
        summary = json.loads((directory / "metrics.json").read_text())
        # both log at their last step (and every 50 steps / log_every iterations before it)
        assert summary["step"] == 6 and float(rows[-1].split("\t")[1]) == summary["loss"]


def test_status_shows_stages_the_current_domain_and_an_eta(workspace):
    runner = CliRunner()
    before = runner.invoke(app, _dasgen(workspace, "status"))
    assert before.exit_code == 0, before.output
    assert re.search(r"^scan +done: 12 usable source pairs$", before.output, re.M)
    assert re.search(r"^train-diffusion +done$", before.output, re.M)
    assert re.search(r"^domains +0 of 2 complete$", before.output, re.M)
    assert "after the first domain finishes" in before.output

    assert runner.invoke(app, _dasgen(workspace, "translate", "--domain", "1")).exit_code == 0
    ws = Workspace(workspace)
    journal = ws.domain_dir(2) / ".journal" / "rank-0.jsonl"  # domain 2 part-way: 3 images journalled
    journal.parent.mkdir(parents=True)
    journal.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c"}\n')
    result = runner.invoke(app, _dasgen(workspace, "status", "--json"))
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["domains_complete"] == 1 and status["eta_s"] > 0
    assert status["stages"]["domain 2"] == "in progress: 3 of 12 images translated (25%)"

    changed = runner.invoke(app, _dasgen(workspace, "--set", "sgg.lambda=40", "status"))
    assert re.search(r"^domain 1 +complete, but made with other params or code: will be redone$", changed.output, re.M)
    assert re.search(r"^domains +0 of 2 complete$", changed.output, re.M)


def test_training_goes_on_when_dvclive_cannot_start(tmp_path, monkeypatch):
    """DVCLive fails in a git repository without a commit: training must not, and dvc.yaml's files must exist."""
    import dvclive

    from dasgen.pipeline.live import live_metrics

    def broken(*args, **kwargs):
        raise RuntimeError("Empty git repo")

    monkeypatch.setattr(dvclive, "Live", broken)
    warnings: list[str] = []
    with live_metrics(tmp_path / "g0", warn=warnings.append) as log:
        assert log is None
    assert warnings == ["training metrics not logged: DVCLive could not start (Empty git repo)"]
    assert (live_plots(tmp_path / "g0") / "loss.tsv").read_text() == "step\tloss\n"
    assert json.loads((tmp_path / "g0" / "metrics.json").read_text()) == {}
