"""ptl.keep_segmenters: stage_last keeps only what the pipeline needs again, and a resume still finds its inputs."""

from __future__ import annotations

import shutil

from dasgen.pipeline.workspace import Workspace
from test_bad_inputs import error_line, invoke
from helpers.files import tree_bytes

SETS = ("--set", "ptl.N=5", "--set", "ptl.domains_per_stage=2", "--set", "ptl.keep_segmenters=stage_last")


def test_stage_last_keeps_each_stages_last_segmenter_and_resumes(workspace):
    ws = Workspace(workspace)
    result = invoke(workspace, *SETS[:-2], "translate", "--domains", "1-5")  # made with every g_n kept
    assert result.exit_code == 0, result.output
    assert all(ws.segmenter_path(n, 5).is_file() for n in range(1, 6))
    switched = invoke(workspace, *SETS, "translate", "--domains", "1-5")  # switched on the finished run
    assert switched.exit_code == 0 and switched.output.count("already complete") == 5, switched.output
    kept = {n for n in range(1, 6) if ws.segmenter_path(n, 5).is_file()}
    assert kept == {2, 4, 5}  # the stages' last (2, 4), g_{N-1} = g_4, g_N = g_5; g_1 and g_3 removed
    assert not (ws.domain_dir(1, 5) / "segmenter.json").exists()
    for n in range(1, 6):  # each domain still verifies: its checksums no longer list the removed files
        assert invoke(workspace, "verify", str(ws.domain_dir(n, 5))).exit_code == 0, n

    again = invoke(workspace, *SETS, "translate", "--domains", "1-5")  # a re-run: nothing redone, nothing missing
    assert again.exit_code == 0 and again.output.count("already complete") == 5, again.output

    # (metrics.json: wall times; provenance.json and checksums.json: the params in force, keep_segmenters included)
    run_dependent = ("metrics.json", "checksums.json", "provenance.json")
    domain_4 = tree_bytes(ws.domain_dir(4, 5), skip=run_dependent)
    shutil.rmtree(ws.domain_dir(4, 5))  # domain 4 lost: it needs g_3, which was removed
    error_line(invoke(workspace, *SETS, "translate", "--domains", "4-5"),
               "segmenter.safetensors: removed to save disk (ptl.keep_segmenters: stage_last)",
               f"remove {ws.domain_dir(3, 5)} and run `dasgen translate --domains 3-4`")
    shutil.rmtree(ws.domain_dir(3, 5))  # as the message says: the stage is made again from g_2
    redo = invoke(workspace, *SETS, "translate", "--domains", "3-4")
    assert redo.exit_code == 0, redo.output
    assert tree_bytes(ws.domain_dir(4, 5), skip=run_dependent) == domain_4  # images, index, g_4: the same
    assert not ws.segmenter_path(3, 5).exists() and ws.segmenter_path(4, 5).is_file()
