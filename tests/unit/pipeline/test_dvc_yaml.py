"""dvc.yaml generation: the shipped file is current, the chain is explicit, params are scoped per stage."""


import pytest
import yaml

from dasgen.config import Config, config_from_dict, load_config
from dasgen.errors import DasgenError
from dasgen.pipeline.common import parse_domain_range
from dasgen.pipeline.dvc_yaml import build_pipeline, check_pipeline, domain_groups, render_pipeline

from helpers import REPO


def test_shipped_dvc_yaml_matches_params():
    check_pipeline(load_config(REPO / "params.yaml"), REPO / "dvc.yaml")


def test_stale_dvc_yaml_is_reported(tmp_path):
    stale = tmp_path / "dvc.yaml"
    stale.write_text(render_pipeline(config_from_dict({"ptl": {"N": 3}})))
    with pytest.raises(DasgenError, match="out of date with params.yaml"):
        check_pipeline(Config(), stale)


def test_each_domain_depends_on_the_previous_segmenter():
    stages = build_pipeline(Config())["stages"]
    assert stages["domain_001"]["deps"][0] == "data/g0/segmenter.safetensors"
    for n in range(2, Config().ptl.N + 1):
        assert stages[f"domain_{n:03d}"]["deps"][0] == f"data/domains/{n - 1:03d}/segmenter.safetensors"
    assert stages["export"]["deps"][0] == f"data/domains/{Config().ptl.N:03d}"


def test_sgg_params_reach_domain_stages_but_not_training():
    stages = build_pipeline(Config())["stages"]
    assert "sgg.lambda" in stages["domain_001"]["params"]
    for name in ("train_diffusion", "train_g0", "scan", "toy"):
        assert not any(p == "sgg" or p.startswith("sgg.") for p in stages[name]["params"])


def test_600_domains_group_into_few_stages():
    paper = load_config(REPO / "params-paper.yaml")
    groups = domain_groups(paper)
    assert len(groups) == 30 and groups[0] == (1, 20) and groups[-1] == (581, 600)
    pipeline = yaml.safe_load(render_pipeline(paper))
    assert pipeline["stages"]["domains_021_040"]["deps"][0] == "data/domains/020/segmenter.safetensors"
    assert "toy" not in pipeline["stages"]  # real datasets: no toy stage, roots outside the repo are not hashed


@pytest.mark.parametrize("text, expected", [("3", [3]), ("2-4", [2, 3, 4])])
def test_parse_domain_range(text, expected):
    assert parse_domain_range(text, 4) == expected


@pytest.mark.parametrize("text", ["0", "3-2", "1-5", "a-b", ""])
def test_parse_domain_range_rejects(text):
    with pytest.raises(DasgenError, match="--domains"):
        parse_domain_range(text, 4)


def test_the_export_is_declared_as_a_dataset_artifact():
    """dvc.yaml's ``artifacts:`` names the export for ``dvc artifacts get`` and DVC's registry (type, description,
    labels); the toy pipeline does not call its toy data GTA5."""
    from dasgen.pipeline.dvc_yaml import ARTIFACT_NAME

    shipped = yaml.safe_load((REPO / "dvc.yaml").read_text())
    artifact = shipped["artifacts"][ARTIFACT_NAME]
    assert artifact["path"] == load_config(REPO / "params.yaml").export.out == shipped["stages"]["export"]["outs"][0]
    assert artifact["type"] == "dataset" and "dasgen" in artifact["desc"] and "semantic-segmentation" in artifact["labels"]
    assert "toy-source" in artifact["labels"] and "gta5" not in artifact["labels"]
    paper = build_pipeline(load_config(REPO / "params-paper.yaml"))["artifacts"][ARTIFACT_NAME]
    assert paper["desc"].startswith("gta5 translated to the cityscapes domain") and "gta5" in paper["labels"]
