"""The ablation's target-trained oracle resumes like g_0: interrupted, then run again, it ends with the same weights."""

from __future__ import annotations

import pytest
import torch

from dasgen.config import load_config
from dasgen.datasets.pairs import PairStore
from dasgen.research.ablate import train_oracle

SETS = {"segmenter.source_train.iters": 8, "segmenter.source_train.checkpoint_every": 2}


def test_the_oracle_resumes_after_an_interruption_to_the_same_weights(tiny_workspace, tmp_path, monkeypatch):
    config = load_config(tiny_workspace / "params.yaml", SETS)
    toy, cpu = tiny_workspace / "data" / "toy", torch.device("cpu")
    straight = tmp_path / "straight" / "segmenter.safetensors"
    train_oracle(config, toy, straight, device=cpu)

    real_sampler = PairStore.sampler

    def interrupting(self, *args, **kwargs):
        draw, calls = real_sampler(self, *args, **kwargs), [0]

        def sample(generator):
            calls[0] += 1
            if calls[0] == 6:  # iteration 6's batch: the state holds iteration 4
                raise KeyboardInterrupt
            return draw(generator)
        return sample

    resumed = tmp_path / "resumed" / "segmenter.safetensors"
    monkeypatch.setattr(PairStore, "sampler", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train_oracle(config, toy, resumed, device=cpu)
    monkeypatch.undo()
    assert not resumed.exists()
    log: list[str] = []
    train_oracle(config, toy, resumed, device=cpu, log=log.append)
    assert log == [f"resuming from iteration 4 of 8 ({resumed.parent / 'state'})"]
    assert resumed.read_bytes() == straight.read_bytes()
