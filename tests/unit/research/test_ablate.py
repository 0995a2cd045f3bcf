"""The ablation runner on the tiny workspace: spec checks, one seed x two variants end to end, resume, reports."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from typer.testing import CliRunner

from conftest import write_tiny_params
from dasgen.cli import app
from dasgen.errors import ConfigError, DasgenError
from dasgen.research import ablate
from dasgen.pipeline.workspace import Workspace
from dasgen.research.ablate import load_spec, run_ablation, variant_config
from dasgen.research.ablate_report import build_report, load_roundtrip, roundtrip_path

SPEC = {
    "base": "params.yaml",
    "out": "abl",
    "results": "results",
    "seeds": [0],
    "set": {"toy.n_source": 8},
    "reference": {"source-only": {"label": "Source only", "table": "Tab. 1", "paper": 37.3}},
    "variants": {
        "full": {"label": "Ours (full)", "table": "Tab. 2 (f)", "paper": 61.9, "set": {}},
        "wo-ptl": {"label": "Ours w/o PTL", "table": "Tab. 2 (c)", "paper": 58.3, "set": {"ptl.N": 1}},
        "lower-t": {"label": "Ours, t_N = 10", "table": "diagnosis", "paper": None, "set": {"ptl.t_final": 10}},
    },
}


def write_spec(directory, **changes):
    write_tiny_params(directory)
    spec = {**SPEC, **changes}
    (directory / "ablation.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return directory / "ablation.yaml"


def test_spec_rejects_shared_overrides_and_unknown_keys(tmp_path):
    bad = {**SPEC["variants"], "smaller": {"set": {"toy.n_source": 4}}}
    with pytest.raises(ConfigError, match=r"variants\.smaller\.set\.toy\.n_source: a variant cannot change"):
        load_spec(write_spec(tmp_path, variants=bad))
    with pytest.raises(ConfigError, match=r"ptl\.NN: unknown key"):
        load_spec(write_spec(tmp_path, variants={"full": {"set": {"ptl.NN": 2}}}))
    with pytest.raises(ConfigError, match="variants.oracle: reserved"):
        load_spec(write_spec(tmp_path, variants={"oracle": {"set": {}}}))
    with pytest.raises(ConfigError, match="seeds: expected distinct"):
        load_spec(write_spec(tmp_path, seeds=[1, 1]))


def test_spec_based_on_another_merges_set_and_picks_variants(tmp_path):
    write_spec(tmp_path)
    child = tmp_path / "lower.yaml"
    child.write_text(yaml.safe_dump({"based_on": "ablation.yaml", "out": "abl-lower", "set": {"ptl.t_final": 10},
                                     "variants": ["wo-ptl", "full"]}))
    spec = load_spec(child)
    assert [v.name for v in spec.variants] == ["wo-ptl", "full"]
    assert spec.common == {"toy.n_source": 8, "ptl.t_final": 10}  # parent's set kept, this file's added
    assert spec.out == tmp_path / "abl-lower" and spec.results == tmp_path / "results"
    assert variant_config(spec, spec.variants[1], 0).ptl.t_final == 10
    parent = tmp_path / "ablation.yaml"
    parent.write_text(parent.read_text() + "\n# edited\n")
    assert load_spec(child).sha256 != spec.sha256  # the recorded spec hash covers the parent too
    child.write_text(yaml.safe_dump({"based_on": "ablation.yaml", "variants": ["nope"]}))
    with pytest.raises(ConfigError, match=r"lower\.yaml\.variants: 'nope' is not a variant of"):
        load_spec(child)
    child.write_text(yaml.safe_dump({"based_on": "missing.yaml"}))
    with pytest.raises(ConfigError, match=r"missing\.yaml: spec not found \(named by .*lower\.yaml\.based_on\)"):
        load_spec(child)


def test_the_report_takes_the_round_trip_of_the_first_spec_seed_that_has_one(tmp_path):
    """Calls on different --seeds each cache the round trip judged by their own first seed's oracle; the report
    reads the spec's first seed that has one, whatever order the calls ran in."""
    spec = load_spec(write_spec(tmp_path, seeds=[0, 1, 2]))
    shared = Workspace(spec.out / "shared")
    assert load_roundtrip(spec, shared) is None
    shared.root.mkdir(parents=True)
    for seed in (2, 1):
        roundtrip_path(shared, seed).write_text(json.dumps({"fingerprint": {"x": seed}, "judge_seed": seed}))
    assert load_roundtrip(spec, shared) == {"judge_seed": 1}
    roundtrip_path(shared, 0).write_text(json.dumps({"fingerprint": {}, "judge_seed": 0}))
    assert load_roundtrip(spec, shared) == {"judge_seed": 0}


def test_fewer_domains_get_the_same_total_finetune_budget(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    full, wo_ptl, _ = spec.variants
    base, single = variant_config(spec, full, 0), variant_config(spec, wo_ptl, 0)
    assert single.ptl.N == 1 and single.run.seed == 0
    assert single.ptl.finetune.iters == base.ptl.N * base.ptl.finetune.iters
    unmatched = load_spec(write_spec(tmp_path, match_finetune_budget=False))
    assert variant_config(unmatched, unmatched.variants[1], 0).ptl.finetune.iters == base.ptl.finetune.iters


def test_one_seed_two_variants_report_and_resume(tmp_path, tiny_workspace, monkeypatch):
    spec = load_spec(write_spec(tmp_path))
    ddpm = tiny_workspace / "data" / "diffusion" / "model"
    report = run_ablation(spec, ddpm=ddpm)

    with (tmp_path / "results" / "ablation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["seed"], r["variant"]) for r in rows] == [("0", "source-only"), ("0", "full"), ("0", "wo-ptl"),
                                                         ("0", "lower-t"), ("0", "oracle")]
    by_name = {r["variant"]: r for r in rows}
    assert by_name["full"]["domains"] == "2" and by_name["wo-ptl"]["domains"] == "1"
    runs = {r["variant"]: r for r in report["runs"]}
    assert [c["t"] for c in runs["full"]["curve"]] == [10, 20]
    assert [c["t"] for c in runs["lower-t"]["curve"]] == [5, 10]  # same g_0, lower noise levels
    assert [level["t"] for level in report["ddpm_roundtrip"]["levels"]] == [10, 20]
    assert report["ddpm_roundtrip"]["judge_seed"] == 0 and (tmp_path / "abl" / "shared" /
                                                           "ddpm-roundtrip-seed-0.json").is_file()
    for name in ("source-only", "full", "wo-ptl", "lower-t"):
        assert 0.0 <= float(by_name[name]["target_miou"]) <= 1.0
        assert 0.0 <= float(by_name[name]["consistency"]) <= 1.0
    assert by_name["oracle"]["consistency"] == ""  # the judge does not judge itself
    # the variants ran in their own workspaces on the shared, linked inputs
    full_ws = tmp_path / "abl" / "seed-0" / "full"
    assert (full_ws / "data" / "g0").is_symlink() and (full_ws / "data" / "domains" / "002" / "index.parquet").is_file()
    markdown = (tmp_path / "results" / "ablation.md").read_text()
    for label in ("Source only", "Ours (full)", "Ours w/o PTL", "Target-trained oracle", "58.3",
                  "dasgen ablate --spec", "DDPM round trip", "seed 0's oracle's mIoU"):
        assert label in markdown
    summary = {s["variant"]: s for s in report["summary"]}
    assert summary["full"]["delta_vs_g0"] == pytest.approx(float(by_name["full"]["target_miou"])
                                                           - float(by_name["source-only"]["target_miou"]), abs=1e-4)
    assert summary["source-only"]["delta_vs_g0"] is None
    saved = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(report["summary"]))
    assert saved["spec_sha256"] == spec.sha256

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished (seed, variant) ran again")

    monkeypatch.setattr(ablate, "run_domain", must_not_run)
    monkeypatch.setattr(ablate, "run_train_g0", must_not_run)
    monkeypatch.setattr(ablate, "run_train_diffusion", must_not_run)
    again = run_ablation(spec, ddpm=ddpm)
    assert again["runs"] == report["runs"]
    assert run_ablation(spec)["runs"] == report["runs"]  # resuming without --ddpm keeps the copied DDPM

    # a variant whose params changed after it ran is left out of the report, not mixed in
    edited = load_spec(write_spec(tmp_path, variants={**SPEC["variants"], "full": {"set": {"sgg.lambda": 40.0}}}))
    stale = run_ablation(edited, report_only=True)
    assert stale["stale_runs"] == ["seed-0/full"]
    assert [r["variant"] for r in stale["runs"]] == ["source-only", "wo-ptl", "lower-t", "oracle"]
    assert "Left out: 1 finished runs" in (tmp_path / "results" / "ablation.md").read_text()

    # a change of the translation params shared by every variant leaves g_0 and the oracle as they are (prepare_seed
    # reuses them), so their rows stay in the report while every PTL row is stale
    retuned = load_spec(write_spec(tmp_path, set={**SPEC.get("set", {}), "sgg.lambda": 40.0}))
    kept = run_ablation(retuned, report_only=True)
    assert [r["variant"] for r in kept["runs"]] == ["source-only", "oracle"]
    assert sorted(kept["stale_runs"]) == ["seed-0/full", "seed-0/lower-t", "seed-0/wo-ptl"]
    # ... and a change of g_0's recipe makes them stale too
    resegmented = load_spec(write_spec(tmp_path, set={**SPEC.get("set", {}), "segmenter.width": 12}))
    assert build_report(resegmented, command="", wall_s=0)["runs"] == []
    # ... and a report of no run never replaces the one with rows
    with pytest.raises(DasgenError, match=r"ablation.json: holds 2 finished runs; refusing to replace it"):
        run_ablation(resegmented, report_only=True)
    assert [r["variant"] for r in json.loads((tmp_path / "results" / "ablation.json").read_text())["runs"]] == [
        "source-only", "oracle"]


def test_cli_ablate_selects_and_reports(tmp_path):
    spec_path = write_spec(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["ablate", "--spec", str(spec_path), "--variants", "nope"])
    assert result.exit_code == 1 and "unknown variant 'nope'" in result.output
    result = runner.invoke(app, ["ablate", "--spec", str(spec_path), "--seeds", "3"])
    assert result.exit_code == 1 and "seed 3 is not in" in result.output
    result = runner.invoke(app, ["ablate", "--spec", str(spec_path), "--report-only"])
    assert result.exit_code == 0, result.output
    assert "| Ours (full) |" in (tmp_path / "results" / "ablation.md").read_text()



def test_a_second_ablate_on_a_running_seed_stops_at_once(tmp_path):
    """Two `dasgen ablate` calls may split the seeds between them, not share one: the second on a held seed fails
    with one line naming it, before writing anything (the first's seed work tree is left as it was)."""
    spec = load_spec(write_spec(tmp_path))
    with ablate.seed_lock(spec, 0):
        before = sorted(p.relative_to(spec.out) for p in spec.out.rglob("*"))
        with pytest.raises(DasgenError, match=r"seed-0: another dasgen ablate is running seed 0"):
            run_ablation(spec, seeds=[0])
        assert sorted(p.relative_to(spec.out) for p in spec.out.rglob("*")) == before
