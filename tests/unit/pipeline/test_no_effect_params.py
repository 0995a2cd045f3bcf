"""Params without effect on the results (memory, batching, checkpoint intervals) redo no work when changed: they are
in no resume fingerprint and in no stage's params in dvc.yaml. ``dasgen.config.NO_EFFECT_PARAMS`` is the list."""

from __future__ import annotations

import pytest

from dasgen.config import NO_EFFECT_PARAMS, load_config
from dasgen.pipeline.dvc_yaml import build_pipeline
from dasgen.pipeline.workspace import Workspace
from dasgen.stages.train_g0 import g0_fingerprint
from dasgen.stages.translate import domain_fingerprint


def _value(config, dotted: str):
    node = config.to_dict()
    for part in dotted.split("."):
        node = node[part]
    return node


def _covering(pipeline: dict, dotted: str) -> list[str]:
    """The stages whose params name ``dotted`` or a section holding it."""
    return [name for name, stage in pipeline["stages"].items()
            if any(dotted == p or dotted.startswith(p + ".") for p in stage.get("params", []))]


@pytest.mark.parametrize("key", NO_EFFECT_PARAMS + ("sgg.lambda",))
def test_a_knob_without_effect_changes_no_fingerprint_and_no_stage_params(tiny_workspace, key):
    params = tiny_workspace / "params.yaml"
    base = load_config(params)
    changed = load_config(params, {key: _value(base, key) + 1})  # every listed knob is a positive int
    ws = Workspace(tiny_workspace)
    same = key in NO_EFFECT_PARAMS  # sgg.lambda: a real knob, to show the checks can fail
    assert (changed.result_dict() == base.result_dict()) is same
    assert (changed.result_sha256() == base.result_sha256()) is same  # what ablation rows are matched by
    assert (domain_fingerprint(changed, 1, ws) == domain_fingerprint(base, 1, ws)) is same
    assert g0_fingerprint(changed, ws) == g0_fingerprint(base, ws)  # g_0 depends on none of them (nor on sgg)
    assert (_covering(build_pipeline(changed), key) == []) is same


def test_g0_fingerprint_holds_what_its_weights_depend_on(tiny_workspace):
    params, ws = tiny_workspace / "params.yaml", Workspace(tiny_workspace)
    base = g0_fingerprint(load_config(params), ws)
    for key, value in {"segmenter.source_train.lr": 1e-3, "run.seed": 9, "ptl.t_final": 19}.items():
        assert g0_fingerprint(load_config(params, {key: value}), ws) != base, key
    assert g0_fingerprint(load_config(params, {"segmenter.eval_protocol": 16}), ws) == base  # scoring only
