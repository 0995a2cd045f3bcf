"""The deviation list of `dasgen plan`: empty for params-paper.yaml, one entry for each way off the paper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dasgen.cli import app
from dasgen.config import load_config
from dasgen.planning.report import PAPER_LOSS_REDUCTION, deviations

REPO = Path(__file__).resolve().parents[3]
PAPER_PARAMS = REPO / "params-paper.yaml"

# Every value of params-paper.yaml that a deviation would move, with where the paper says it.
PAPER_VALUES = {
    "ptl.N": 600,  # Sec. 5.1
    "ptl.t_final": 600,  # t_n = n
    "ptl.steps_per_domain": None,  # all t_n reverse steps
    "ptl.unet_bf16": False,
    "ptl.finetune.use_src_loss": True,  # Eq. 12
    "ptl.finetune.src_loss_schedule": "constant",  # Eq. 12: L_ada + L_src in every domain
    "ptl.finetune.aug_fraction": 0.1,  # Supp. C
    "segmenter.source_train.aug_fraction": 0.1,  # Supp. C
    "segmenter.weights": "imagenet",  # ImageNet-initialised
    "sgg.lambda_": 80.0,  # Sec. 5.1
    "sgg.arrangement": "alternate",  # Sec. 4.2, Tab. 5 (c)
    "sgg.loss_reduction": PAPER_LOSS_REDUCTION,  # docs/guidance.md
    "sgg.gradient_at": "x_t",  # Eqs. 6 and 10
    "sgg.max_step": None,  # Eq. 7 uncapped
    "diffusion.num_train_timesteps": 1000,  # Sec. 5.1
    "diffusion.beta_start": 1e-4,
    "diffusion.beta_end": 0.02,
    "diffusion.train.lr_schedule": "constant",  # Sec. 5.1
    "diffusion.train.max_timestep": None,  # Eq. 5: t ~ U(1, T)
    "diffusion.train.batch_size": 4,  # Sec. 5.1
    "diffusion.train.lr": 2e-5,
    "diffusion.train.adam_betas": [0.9, 0.99],
    "ptl.images_per_domain": 600,  # 300 iterations x batch 2
    "segmenter.arch": "deeplabv2_resnet101",  # Tab. 1, Res-101
    "segmenter.source_train.iters": 20000,  # Sec. 5.1
    "segmenter.source_train.batch_size": 2,
    "segmenter.source_train.optimizer": "sgd",
    "segmenter.source_train.lr": 2.5e-4,
    "segmenter.source_train.momentum": 0.9,
    "ptl.finetune.iters": 300,
    "ptl.finetune.batch_size": 2,
    "ptl.finetune.optimizer": "sgd",
    "ptl.finetune.lr": 2.5e-4,
}


def _get(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("key", sorted(PAPER_VALUES))
def test_params_paper_holds_the_papers_value(key):
    assert _get(load_config(PAPER_PARAMS), key) == PAPER_VALUES[key]


def test_params_paper_lists_no_deviation_through_the_cli(tmp_path):
    result = CliRunner().invoke(app, ["--params", str(PAPER_PARAMS), "--workspace", str(tmp_path), "plan", "--json",
                                      "--source-images", "24966"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["deviations"] == []


OTHER_REDUCTION = {"mean": "sum", "sum": "mean"}[PAPER_LOSS_REDUCTION]


@pytest.mark.parametrize("overrides, names", [
    ({"ptl.t_final": 900}, "t_n != n"),
    ({"ptl.N": 300, "ptl.t_final": 300}, "ptl.N"),
    ({"ptl.images_per_domain": 64}, "ptl.images_per_domain"),
    ({"segmenter.arch": "deeplabv3_resnet50"}, "segmenter.arch"),
    ({"segmenter.source_train.iters": 1500}, "g_0 training recipe"),
    ({"ptl.finetune.optimizer": "adam"}, "fine-tune training recipe"),
    ({"diffusion.train.lr": 2e-3}, "DDPM training recipe"),
    ({"ptl.finetune.use_src_loss": False}, "ptl.finetune.use_src_loss"),
    ({"ptl.finetune.src_loss_schedule": "fade"}, "ptl.finetune.src_loss_schedule"),
    ({"ptl.finetune.aug_fraction": 0.2}, "ptl.finetune.aug_fraction"),
    ({"segmenter.source_train.aug_fraction": 0.0}, "segmenter.source_train.aug_fraction"),
    ({"sgg.arrangement": "random"}, "sgg.arrangement"),
    ({"ptl.steps_per_domain": 25}, "ptl.steps_per_domain"),
    ({"segmenter.weights": None, "segmenter.batchnorm": "train"}, "segmenter.weights = null"),
    ({"sgg.loss_reduction": OTHER_REDUCTION}, "sgg.loss_reduction"),
    ({"sgg.lambda": 40.0}, "sgg.lambda"),
    ({"sgg.gradient_at": "x0_hat"}, "sgg.gradient_at"),
    ({"sgg.max_step": 0.1}, "sgg.max_step"),
    ({"ptl.unet_bf16": True}, "ptl.unet_bf16"),
    ({"diffusion.train.lr_schedule": "cosine"}, "diffusion.train.lr_schedule"),
])
def test_each_way_off_the_paper_adds_one_deviation(overrides, names):
    notes = deviations(load_config(PAPER_PARAMS, overrides))
    assert len(notes) == 1 and names in notes[0], notes
