"""params.yaml loading: strict keys, types, ranges and cross-checks, each error naming the file and key."""


import hashlib
import json

import pytest
import yaml

from dasgen.config import Config, config_from_dict, knob, load_config
from dasgen.pipeline.chains import domain_noise_levels
from dasgen.errors import ConfigError

from helpers import REPO


def test_shipped_params_equal_the_documented_defaults():
    assert load_config(REPO / "params.yaml") == Config()


def test_paper_params_load_and_hold_the_papers_values():
    paper = load_config(REPO / "params-paper.yaml")
    assert (paper.ptl.N, paper.ptl.t_final, paper.ptl.steps_per_domain) == (600, 600, None)
    assert paper.sgg.lambda_ == 80.0 and paper.sgg.arrangement == "alternate"
    assert (paper.diffusion.num_train_timesteps, paper.diffusion.beta_start, paper.diffusion.beta_end) == (1000, 1e-4, 0.02)
    assert domain_noise_levels(paper.ptl) == list(range(1, 601))  # t_n = n


@pytest.mark.parametrize(
    "text, message",
    [
        ("sgg: {lamda: 80}", "params.yaml: sgg.lamda: unknown key (did you mean sgg.lambda?)"),
        ("sgggg: {}", "params.yaml: sgggg: unknown key (did you mean sgg?)"),
        ("ptl: {N: 0}", "params.yaml: ptl.N: must be >= 1, got 0"),
        ("sgg: {lambda: -1}", "params.yaml: sgg.lambda: must be >= 0.0, got -1.0"),
        ("ptl: {N: 2.5}", "params.yaml: ptl.N: expected int, got 2.5"),
        ("ptl: {unet_bf16: 'yes'}", "params.yaml: ptl.unet_bf16: expected bool, got 'yes'"),
        ("sgg: {arrangement: zigzag}", "params.yaml: sgg.arrangement: must be one of"),
        ("diffusion: {num_train_timesteps: 90, train: {max_timestep: null}}",
         "params.yaml: ptl.t_final: 100 exceeds diffusion.num_train_timesteps"),
        ("ptl: {N: 500}", "params.yaml: ptl.N: 500 domains need t_final >= N"),
        ("data: {resolution: [32]}", "params.yaml: data.resolution: expected [height, width]"),
        ("export: {min_consistency: 1.5}", "params.yaml: export.min_consistency: must be <= 1.0, got 1.5"),
        ("data: {source: {kind: kitti}}", "params.yaml: data.source.kind: must be one of"),
        ("toy: 3", "params.yaml: toy: expected a mapping"),
    ],
)
def test_bad_params_name_the_key(text, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict(yaml.safe_load(text))
    assert str(error.value).startswith(message)


def test_load_config_reports_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("sgg:\n  lambda: 40\n  arrangment: random\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: sgg.arrangment: unknown key \(did you mean sgg.arrangement\?\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("sgg: [\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_overrides_are_checked_like_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("sgg: {lambda: 40}\n")
    assert load_config(path, {"sgg.lambda": 10, "ptl.finetune.use_src_loss": False}).ptl.finetune.use_src_loss is False
    with pytest.raises(ConfigError, match="sgg.lambda: must be >= 0.0"):
        load_config(path, {"sgg.lambda": -3})


def test_yaml_scientific_strings_are_floats_and_hash_is_stable():
    config = config_from_dict(yaml.safe_load("diffusion: {beta_start: 1e-4}"))  # YAML 1.1 reads 1e-4 as a string
    assert config.diffusion.beta_start == 1e-4
    assert config.sha256() == Config().sha256()
    assert config_from_dict({"sgg": {"lambda": 79}}).sha256() != Config().sha256()


def test_an_option_added_off_leaves_the_hash_of_runs_that_do_not_use_it():
    """sgg.step_rms was added after ablation runs were recorded: off, it is not hashed (their params_sha256 stay
    valid) though it is still in the params dict; set, it changes the hash."""
    config = Config()
    without = config.to_dict()
    assert without["sgg"].pop("step_rms") is None
    assert without["segmenter"]["source_train"].pop("checkpoint_every") == 500  # added later too, at its default
    assert without["ptl"].pop("keep_segmenters") == "all"
    assert config.sha256() == hashlib.sha256(json.dumps(without, sort_keys=True).encode()).hexdigest()
    assert config_from_dict({"sgg": {"step_rms": 0.2}}).sha256() != config.sha256()
    assert config_from_dict({"segmenter": {"source_train": {"checkpoint_every": 50}}}).sha256() != config.sha256()
    assert config_from_dict({"ptl": {"keep_segmenters": "stage_last"}}).sha256() != config.sha256()
    assert config_from_dict({"sgg": {"max_step": None}}).sha256() != config.sha256()  # other options: always hashed
    assert config.hashed_dict()["sgg"] == without["sgg"]  # what fingerprints are built from
    with pytest.raises(TypeError, match="scalar default"):  # a list default could never compare equal: refused
        knob([1, 2], hashed_when_off=False)


def test_step_rms_and_lambda_resolution_are_refused_together(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("sgg: {step_rms: 0.2, lambda_resolution: [32, 64]}\n")
    with pytest.raises(ConfigError, match="sgg.step_rms: set together with sgg.lambda_resolution"):
        load_config(path)


def test_domain_noise_levels_spread_to_t_final():
    config = Config()
    levels = domain_noise_levels(config.ptl)
    assert levels[-1] == config.ptl.t_final and len(levels) == config.ptl.N
    assert levels == sorted(set(levels))


def test_duplicate_keys_are_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("ptl:\n  N: 2\n  N: 3\n")
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML \(line 3\): duplicate key 'N'"):
        load_config(path)
