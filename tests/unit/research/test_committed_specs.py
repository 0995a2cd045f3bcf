"""Every ablation spec committed at the repository root still loads: its base params, shared overrides and every
variant's overrides validate against today's params schema, so a renamed or removed knob cannot leave a documented
experiment that no longer runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dasgen.research.ablate_spec import load_spec

REPO = Path(__file__).resolve().parents[3]
SPECS = sorted(REPO.glob("ablation*.yaml"))


def test_the_repository_has_its_ablation_specs():
    assert REPO / "ablation.yaml" in SPECS and len(SPECS) > 1


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_committed_spec_loads_and_every_variant_validates(path):
    spec = load_spec(path)  # validates every variant's params (load_spec's own check)
    assert spec.variants and spec.results.parent.is_dir()
