"""Inputs that change under a long run: the source after the scan, two trainings into one workspace at once.

(The DDPM's cosine schedule length in its resume fingerprint: tests/unit/diffusion/test_diffusion_train.py.)
"""

from __future__ import annotations

import json
import shutil

from dasgen.io.lock import directory_lock
from dasgen.pipeline.workspace import Workspace
from test_bad_inputs import error_line, invoke
from helpers.files import tree_bytes


def _pairs(root):
    return json.loads(Workspace(root).source_pairs.read_text())


def test_after_the_source_changes_no_domain_made_from_the_old_one_is_called_complete(workspace):
    ws = Workspace(workspace)
    assert invoke(workspace, "translate", "--domain", "1").exit_code == 0
    before = _pairs(workspace)
    assert len(before["pair_sha256"]) == 12 and before["content_sha256"]
    provenance = json.loads((ws.domain_dir(1) / "provenance.json").read_text())
    assert provenance["source"]["content_sha256"] == before["content_sha256"]  # for export to check

    # A user replaces a pair's files (another pair's bytes): before the rescan, translate refuses to reuse domain 1.
    source = workspace / "data/toy/source"
    first = before["entries"][0]
    replaced = next(e for e in before["entries"] if before["pair_bytes"][e["id"]] != before["pair_bytes"][first["id"]])
    for key in ("image", "label"):
        shutil.copyfile(source / replaced[key], source / first[key])
    domain_before = tree_bytes(ws.domain_dir(1))
    error_line(invoke(workspace, "translate", "--domain", "1"), f"source pair {first['id']}", "changed since the scan",
               "run `dasgen scan`")
    assert tree_bytes(ws.domain_dir(1)) == domain_before  # nothing removed or rewritten

    # After the rescan the content digest differs: the old domain is made afresh, g_0 is trained afresh.
    assert invoke(workspace, "scan").exit_code == 0
    after = _pairs(workspace)
    assert after["content_sha256"] != before["content_sha256"]
    assert after["pair_sha256"][first["id"]] == after["pair_sha256"][replaced["id"]]
    rerun = invoke(workspace, "translate", "--domain", "1")
    assert rerun.exit_code == 0, rerun.output
    assert "already complete" not in rerun.output and "starting this domain afresh" in rerun.output
    provenance = json.loads((ws.domain_dir(1) / "provenance.json").read_text())
    assert provenance["source"]["content_sha256"] == after["content_sha256"]
    g0 = invoke(workspace, "train-g0")
    assert g0.exit_code == 0 and "finished state of other settings (source_content_sha256) replaced" in g0.output


def test_a_second_train_diffusion_into_a_workspace_in_training_stops_at_once_leaving_nothing(workspace):
    ws = Workspace(workspace)
    before = tree_bytes(ws.diffusion_dir)
    metrics = (ws.metrics / "diffusion.json").read_bytes()
    with directory_lock(ws.diffusion_dir):  # what the first `dasgen train-diffusion` holds while it trains
        result = invoke(workspace, "--set", "diffusion.train.steps=12", "train-diffusion")
    error_line(result, f"{ws.diffusion_dir}: another `dasgen train-diffusion` is training into it right now")
    assert tree_bytes(ws.diffusion_dir) == before  # no state, no model, no loss log of its own
    assert (ws.metrics / "diffusion.json").read_bytes() == metrics
    again = invoke(workspace, "--set", "diffusion.train.steps=12", "train-diffusion")  # once it is free: trains
    assert again.exit_code == 0, again.output
