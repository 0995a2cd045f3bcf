"""End to end through the stage functions and the CLI on the tiny workspace: PTL domains, resume, export, plan."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import torch
from typer.testing import CliRunner

from dasgen.cli import app
from dasgen.config import load_config
import dasgen.stages.translate as translate
from dasgen.stages.translate import run_domain
from dasgen.stages.summarize import run_summary
from dasgen.pipeline.workspace import Workspace
from helpers.files import tree_bytes

runner = CliRunner()


def invoke(root, *args):
    return runner.invoke(app, ["--params", str(root / "params.yaml"), "--workspace", str(root), *args])


def domain_bytes(directory):
    """Every file of a domain artifact except the metrics' wall times (and the checksum record that covers them)."""
    return tree_bytes(directory, skip=("metrics.json", "checksums.json"))


def test_two_domain_ptl_writes_the_artifact_contract(workspace, monkeypatch):
    import dasgen.stages.translate as translate_stage
    from dasgen.segment.checkpoint import load_segmenter

    config = load_config(workspace / "params.yaml")
    ws = Workspace(workspace)
    judges, original_guidance = {}, translate_stage.domain_guidance

    def spy(config, segmenter, n, *args, **kwargs):  # who guides domain n
        judges[n] = {k: v.clone() for k, v in segmenter.state_dict().items()}
        return original_guidance(config, segmenter, n, *args, **kwargs)

    monkeypatch.setattr(translate_stage, "domain_guidance", spy)
    for n in (1, 2):
        metrics = run_domain(config, ws, n, progress=False)
        assert metrics["domain"] == n and 0.0 <= metrics["consistency"] <= 1.0
    # Eq. 11: X^n = SGG(phi^n(X^S), g_{n-1}) -- domain n is guided by the segmenter the previous domain fine-tuned
    for n in (1, 2):
        expected = load_segmenter(ws.segmenter_path(n - 1)).state_dict()
        assert all(torch.equal(judges[n][k], expected[k]) for k in expected), f"domain {n} not guided by g_{n - 1}"
    assert not all(torch.equal(judges[1][k], judges[2][k]) for k in judges[1])  # g_1 differs from g_0
    final = ws.domain_dir(2)
    index = pq.read_table(final / "index.parquet").to_pylist()
    assert len(index) == 12  # the last domain translates every source image
    assert len(pq.read_table(ws.domain_dir(1) / "index.parquet")) == 5  # intermediate: images_per_domain
    assert [r["id"] for r in index] == sorted(r["id"] for r in index)
    assert {r["t"] for r in index} == {20} and {r["domain"] for r in index} == {2}
    assert (final / "segmenter.safetensors").is_file() and (final / "segmenter.json").is_file()
    assert json.loads((final / "segmenter.json").read_text())["domain"] == 2
    summary = run_summary(config, ws)
    assert summary["domains"] == 2 and (ws.metrics / "ptl.csv").read_text().count("\n") == 4  # header, g_0, 2 domains


def test_translate_cli_resumes_to_identical_bytes(workspace, tmp_path, monkeypatch):
    import shutil

    from dasgen.artifact.writer import DomainWriter

    reference_root = tmp_path / "reference"
    shutil.copytree(workspace, reference_root)
    assert invoke(reference_root, "translate", "--domain", "1").exit_code == 0
    reference = domain_bytes(Workspace(reference_root).domain_dir(1))

    original_add, calls = DomainWriter.add, []

    def add_then_interrupt(self, record, image):
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C after three finished images
        calls.append(record.id)
        return original_add(self, record, image)

    monkeypatch.setattr(DomainWriter, "add", add_then_interrupt)
    result = invoke(workspace, "translate", "--domain", "1")
    assert result.exit_code == 130 and "run the same command again to resume" in result.output
    directory = Workspace(workspace).domain_dir(1)
    assert not (directory / "index.parquet").exists()
    assert DomainWriter(directory).done_ids() == set(calls)
    monkeypatch.setattr(DomainWriter, "add", original_add)

    result = invoke(workspace, "translate", "--domain", "1")
    assert result.exit_code == 0, result.output
    assert domain_bytes(directory) == reference
    result = invoke(workspace, "translate", "--domain", "1")
    assert result.exit_code == 0 and "already complete" in result.output
    assert domain_bytes(directory) == reference


def test_changed_sgg_param_restarts_the_domain(workspace):
    assert invoke(workspace, "translate", "--domain", "1").exit_code == 0
    before = domain_bytes(Workspace(workspace).domain_dir(1))
    result = invoke(workspace, "--set", "sgg.lambda=0", "translate", "--domain", "1")
    assert result.exit_code == 0, result.output
    assert "starting this domain afresh" in result.output
    assert domain_bytes(Workspace(workspace).domain_dir(1)) != before


def test_cli_errors_are_one_line(workspace):
    result = invoke(workspace, "translate", "--domain", "3")
    assert result.exit_code == 1 and "must lie within 1..ptl.N = 2" in result.output
    result = invoke(workspace, "--set", "sgg.lamda=3", "plan")
    assert result.exit_code == 1 and "sgg.lamda: unknown key (did you mean sgg.lambda?)" in result.output
    result = invoke(workspace, "export")
    assert result.exit_code == 1 and "no finished domain artifact" in result.output


def test_plan_counts(workspace):
    result = invoke(workspace, "plan", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    domains = report["domains"]
    assert [d["t"] for d in domains] == [10, 20]
    assert [d["images"] for d in domains] == [5, 12]
    assert all(d["steps"] == 3 and d["lcg_steps"] == 2 and d["gsg_steps"] == 1 for d in domains)
    assert report["totals"]["unet_forwards"] == 3 * 5 + 3 * 12
    assert report["source_scanned"] is True


def test_export_and_verify_through_the_cli(workspace):
    assert invoke(workspace, "translate", "--domains", "1-2").exit_code == 0
    out = workspace / "exported"
    result = invoke(workspace, "export", "--format", "cityscapes", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert invoke(workspace, "verify", str(out)).exit_code == 0
    (sorted((out / "leftImg8bit").rglob("*.png"))[0]).write_bytes(b"tampered")
    result = invoke(workspace, "verify", str(out))
    assert result.exit_code == 1 and "altered" in result.output
    result = invoke(workspace, "export", "--format", "cityscapes", "--out", str(out))
    assert result.exit_code == 1 and "not empty" in result.output


def test_evaluate_cli(workspace):
    result = invoke(workspace, "evaluate", str(Workspace(workspace).segmenter_path(0)), "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert 0.0 <= scores["miou"] <= 1.0 and scores["protocol"] == 19


def test_blown_up_images_are_counted_against_real_target_photos(workspace):
    import numpy as np

    from dasgen.pipeline.image_quality import blow_up_report, target_roughness

    config = load_config(workspace / "params.yaml")
    reference = target_roughness(config, workspace)
    rng = np.random.default_rng(0)
    photo_like = np.full((16, 32, 3), 120, np.uint8)
    noise = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)  # what an over-strong guidance step paints
    report = blow_up_report([photo_like, noise, noise], reference)
    assert report == {"roughness_ratio": report["roughness_ratio"], "blown_up_images": 2, "images": 3}
    metrics = run_domain(config, Workspace(workspace), 1, progress=False)
    assert metrics["blown_up_images"] == 0 and 0 < metrics["roughness_ratio"] < 2.5
    assert json.loads((Workspace(workspace).domain_metrics(1)).read_text())["blown_up_images"] == 0


def test_no_file_of_an_export_holds_the_workspace_path(workspace):
    """The domain is translated with the source root given as an absolute path (params keep it as typed); no file of
    any export format contains the workspace's absolute path, and the toy's card cites no third-party dataset."""
    source = f"data.source.root={(workspace / 'data' / 'toy' / 'source').resolve()}"
    assert invoke(workspace, "--set", source, "translate", "--domain", "1").exit_code == 0
    assert str(workspace.resolve()) in (Workspace(workspace).domain_dir(1, 2) / "provenance.json").read_text()
    for fmt in ("cityscapes", "parquet", "hdf5"):
        out = workspace / "exports" / fmt
        result = invoke(workspace, "--set", source, "export", "--domain", "1", "--format", fmt, "--out", str(out))
        assert result.exit_code == 0, result.output
        for path in out.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert str(workspace.resolve()).encode() not in data and str(workspace).encode() not in data, path
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["provenance"]["params"]["data"]["source"]["root"] == "data/toy/source"
        card = (out / "README.md").read_text()
        assert "procedural toy" in card and "peng2023diffusion" in card and "richter2016playing" not in card


def test_version_option_prints_the_version():
    import dasgen

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"dasgen {dasgen.__version__}\n"


def test_fading_src_loss_reaches_each_domains_finetune(workspace, monkeypatch):
    """ptl.finetune.src_loss_schedule: fade hands domain n's fine-tune the weight 1 - (n - 1) / N for L_src;
    constant (Eq. 12) hands 1."""
    seen = {}
    real = translate.finetune

    def spy(*args, src_weight=1.0, **kwargs):
        seen[kwargs["description"]] = src_weight
        return real(*args, src_weight=src_weight, **kwargs)

    monkeypatch.setattr(translate, "finetune", spy)
    config = load_config(workspace / "params.yaml", {"ptl.finetune.src_loss_schedule": "fade"})
    for n in (1, 2):
        run_domain(config, Workspace(workspace), n, progress=False)
    assert seen == {"fine-tune g_1": 1.0, "fine-tune g_2": 1.0 - 1 / config.ptl.N}
    assert translate.src_loss_weight("constant", 2, config.ptl.N) == 1.0
