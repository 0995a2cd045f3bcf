"""Every ablation spec committed in experiments/ still loads: its base params, shared overrides and every variant's
overrides validate against today's params schema, so a renamed or removed knob cannot leave a documented experiment
that no longer runs. The specs live in experiments/, not beside the product's params at the repository root."""

from __future__ import annotations

import pytest

from dasgen.research.ablate_spec import DEFAULT_SPEC, load_spec
from helpers import REPO

SPECS = sorted((REPO / "experiments").glob("*.yaml"))


def test_the_specs_live_in_experiments_and_the_default_is_there():
    assert REPO / DEFAULT_SPEC in SPECS and len(SPECS) > 1
    assert not list(REPO.glob("ablation*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_committed_spec_loads_and_every_variant_validates(path):
    spec = load_spec(path)  # validates every variant's params (load_spec's own check)
    assert spec.variants and spec.results.parent.is_dir()
    assert spec.base.resolve() == (REPO / "params.yaml").resolve()
    assert (spec.results / "ablation.md").is_file()  # the header's link to its results
