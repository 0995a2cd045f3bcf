"""The files stages leave for each other -- the scan record, metrics, a domain's fingerprint and journal, dvc.yaml --
damaged, emptied, hand-edited or out of date: one line naming the file and what to do, never a traceback, and nothing
already written lost. The table in docs/bad-inputs.md names these tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dasgen.config import load_config
from dasgen.pipeline.dvc_yaml import render_pipeline
from dasgen.pipeline.workspace import Workspace
from test_bad_inputs import error_line, invoke
from helpers.files import tree_bytes


# -- dvc.yaml out of date --------------------------------------------------------------------------------------------


def test_a_stage_run_by_dvc_from_a_stale_dvc_yaml_stops_before_translating(workspace, monkeypatch):
    (workspace / "dvc.yaml").write_text(render_pipeline(load_config(workspace / "params.yaml")))  # N = 2
    monkeypatch.setenv("DVC_STAGE", "domain_001")
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    error_line(invoke(workspace, "--set", "ptl.N=3", "translate", "--domains", "1-1"),
               f"{workspace / 'dvc.yaml'}: out of date with params.yaml", "stage 'domain_001'",
               "run `dasgen pipeline --write`")
    assert not Workspace(workspace).domain_dir(1).exists()
    monkeypatch.delenv("DVC_STAGE")  # run by hand, with any --set: no dvc.yaml is involved
    result = invoke(workspace, "--set", "ptl.N=3", "plan")
    assert result.exit_code == 0, result.output


# -- data/source_pairs.json ------------------------------------------------------------------------------------------


SCAN_DAMAGE = {
    "garbage": (b"\x00{garbage", "not valid JSON (line 1)"),
    "empty": (b"", "empty file"),
    "a-list": (b"[]", "expected a JSON object, found a JSON list"),
    "no-entries": (json.dumps({"kind": "gta5", "root": "data/toy/source", "split": None, "skipped": []}).encode(),
                   "no 'entries' in it"),
    "no-pairs": (json.dumps({"kind": "gta5", "root": "data/toy/source", "split": None, "entries": [],
                             "skipped": []}).encode(), "holds no source pair"),
    "entry-not-a-record": (json.dumps({"kind": "gta5", "root": "data/toy/source", "split": None,
                                       "entries": [["00001", "images/00001.png"]], "skipped": []}).encode(),
                           "entry 1 is not a source pair record"),
}


@pytest.mark.parametrize("damage", list(SCAN_DAMAGE))
def test_a_damaged_scan_record_is_one_line_in_every_command_that_reads_it(two_domains_ws, tmp_path, damage):
    data, fragment = SCAN_DAMAGE[damage]
    ws = Workspace(two_domains_ws)
    ws.source_pairs.write_bytes(data)
    before = tree_bytes(two_domains_ws)
    for command in (["translate", "--domain", "1"], ["--set", "sgg.lambda=40", "translate", "--domain", "2"],
                    ["train-g0"], ["export", "--out", str(tmp_path / "out")], ["plan"]):
        error_line(invoke(two_domains_ws, *command), f"{ws.source_pairs}: {fragment}", "run `dasgen scan`")
    assert tree_bytes(two_domains_ws) == before and not (tmp_path / "out").exists()


# -- a finished domain's own files ------------------------------------------------------------------------------


def test_a_damaged_domain_fingerprint_or_metrics_is_one_line_and_the_domain_is_kept(two_domains_ws):
    domain = Workspace(two_domains_ws).domain_dir(2, 2)
    before = tree_bytes(domain)
    (domain / ".fingerprint.json").write_bytes(b"{garbage")
    error_line(invoke(two_domains_ws, "translate", "--domain", "2"), f"{domain / '.fingerprint.json'}: not valid JSON",
               f"remove {domain} to translate the domain afresh")
    (domain / ".fingerprint.json").write_bytes(before[".fingerprint.json"])
    (domain / "metrics.json").write_bytes(b"")
    error_line(invoke(two_domains_ws, "translate", "--domain", "2"), f"{domain / 'metrics.json'}: empty file",
               f"`dasgen verify {domain}` lists the damage")
    assert tree_bytes(domain) == before | {"metrics.json": b""}


def test_damaged_metrics_are_one_line_in_summarize(two_domains_ws):
    ws = Workspace(two_domains_ws)
    assert invoke(two_domains_ws, "summarize").exit_code == 0
    g0 = (ws.metrics / "g0.json").read_bytes()
    (ws.metrics / "g0.json").write_bytes(b"not json")
    error_line(invoke(two_domains_ws, "summarize"), f"{ws.metrics / 'g0.json'}: not valid JSON",
               "rerun `dasgen train-g0`")
    (ws.metrics / "g0.json").write_bytes(g0)
    (ws.metrics / "domain-002.json").write_bytes(b'"a string"')
    error_line(invoke(two_domains_ws, "summarize"), "domain-002.json: expected a JSON object, found a string",
               "run `dasgen translate --domain 2`")
    (ws.metrics / "domain-002.json").unlink()
    error_line(invoke(two_domains_ws, "summarize"), "domain-002.json: not found", "dasgen pipeline --write")


# -- the journal of an unfinished domain -----------------------------------------------------------------------------


@pytest.fixture
def unfinished(workspace, monkeypatch) -> Path:
    """Domain 1 with every image translated and journalled, stopped before the fine-tune (no index yet)."""
    from dasgen.stages import translate

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(translate, "finetune_segmenter", stop)
    assert invoke(workspace, "translate", "--domain", "1").exit_code == 130
    monkeypatch.undo()
    return Workspace(workspace).domain_dir(1)


JOURNAL_TAMPER = {
    "not-an-object": (lambda entry: [entry["id"], entry["sha256"]], "a JSON list, not an object"),
    "no-sha256": (lambda entry: {k: v for k, v in entry.items() if k != "sha256"}, "no 'sha256' string"),
    "id-leaving-the-domain": (lambda entry: entry | {"id": "../../../escape"},
                              "id '../../../escape' cannot name a file"),
    "image-path-leaving-the-domain": (lambda entry: entry | {"image": "../../../escape.png"},
                                      "image path '../../../escape.png' is not images/<id>.png"),
}


@pytest.mark.parametrize("tamper", list(JOURNAL_TAMPER))
def test_a_tampered_journal_line_is_refused_before_it_reaches_the_index(unfinished, tamper):
    change, fragment = JOURNAL_TAMPER[tamper]
    journal = unfinished / ".journal" / "rank-0.jsonl"
    lines = journal.read_text().splitlines()
    lines[-1] = json.dumps(change(json.loads(lines[-1])))
    journal.write_text("\n".join(lines) + "\n")
    error_line(invoke(unfinished.parents[2], "translate", "--domain", "1"), f"journal {journal} line {len(lines)}",
               fragment, "delete the domain directory and rerun")
    assert not (unfinished / "index.parquet").exists()
    assert not list(unfinished.parents[2].rglob("escape*"))
