"""Denoiser factory and checkpoint I/O (dasgen.diffusion.unet) and DDPM training (dasgen.diffusion.train, Eq. 5)."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from dasgen.diffusion.schedule import NoiseSchedule
from dasgen.diffusion.train import train_ddpm
from dasgen.diffusion.unet import build_unet, load_denoiser, make_eps_fn, save_denoiser
from dasgen.errors import CheckpointError

H, W = 8, 16



def _tiny(dropout: float = 0.0) -> UNet2DModel:
    return build_unet(
        sample_size=(H, W), block_out_channels=(8, 16), attention_levels=(False, True), norm_num_groups=4,
        dropout=dropout,
    )


@pytest.fixture(scope="module")
def template() -> UNet2DModel:
    """One tiny UNet; tests deep-copy it so every run starts from the same weights without a global seed."""
    return _tiny()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Four fixed toy images in [-1, 1]: a sky band over a road band, with a car-like block in varying places."""
    out = torch.empty(4, 3, H, W)  # (N, 3, H, W)
    for i in range(4):
        out[i, :, : H // 2] = torch.tensor([-0.2, 0.3, 0.9])[:, None, None]  # sky
        out[i, :, H // 2 :] = -0.4  # road
        out[i, :, 3:6, 2 + 3 * i : 5 + 3 * i] = torch.tensor([0.8, -0.9, -0.9])[:, None, None]  # car
    return out


def _sampler(images: torch.Tensor, fail_at_call: int | None = None):
    """sample_batch over a fixed image set; optionally raises on its n-th call to simulate a killed run."""
    calls = {"n": 0}

    def sample_batch(generator: torch.Generator, batch_size: int) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == fail_at_call:
            raise KeyboardInterrupt("simulated kill")
        return images[torch.randint(len(images), (batch_size,), generator=generator)]

    return sample_batch


def _train(unet, images, work_dir: Path, steps: int, *, log_path=None, fail_at_call=None, **overrides):
    settings = dict(
        steps=steps, batch_size=4, lr=2e-3, ema_decay=0.9, seed=3, work_dir=work_dir, checkpoint_every=2,
        log_path=log_path, progress=False,
    )
    settings.update(overrides)
    return train_ddpm(unet, _sampler(images, fail_at_call), NoiseSchedule.linear(), **settings)


def _read_log(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# -- factory and checkpoint I/O ----------------------------------------------------------------------------------


def test_build_unet_rectangular_and_eps_fn_shapes():
    unet = build_unet(sample_size=(32, 64))
    assert tuple(unet.config.sample_size) == (32, 64)
    assert unet.config.down_block_types == ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    x = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    t = torch.tensor([0, 999])
    with torch.no_grad():
        eps = make_eps_fn(unet.eval())(x, t)
        assert eps.shape == (2, 3, 32, 64)
        assert torch.equal(eps, unet(x, t).sample)
    with pytest.raises(ValueError, match="divisible"):
        build_unet(sample_size=(30, 64))


def test_eps_fn_keeps_eps_half_of_learned_variance_output(template):
    wide = UNet2DModel.from_config({**template.config, "out_channels": 6}).eval()
    x, t = torch.zeros(1, 3, H, W), torch.tensor([5])
    with torch.no_grad():
        assert torch.equal(make_eps_fn(wide)(x, t), wide(x, t).sample[:, :3])


def test_save_load_round_trip(template, tmp_path):
    unet = copy.deepcopy(template).eval()
    target = tmp_path / "denoiser"
    digest = save_denoiser(unet, target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "dasgen_checksum.json",
                                                       "diffusion_pytorch_model.safetensors"]
    assert digest == hashlib.sha256((target / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    loaded = load_denoiser(target)
    assert not loaded.training
    x = torch.rand(3, 3, H, W, generator=torch.Generator().manual_seed(1)) * 2 - 1
    t = torch.tensor([0, 400, 999])
    with torch.no_grad():
        assert torch.equal(loaded(x, t).sample, unet(x, t).sample)

    with torch.no_grad():  # overwriting an existing model replaces it whole and leaves no temp folders behind
        for p in unet.parameters():
            p.add_(0.01)
    assert save_denoiser(unet, target) != digest
    assert [p.name for p in tmp_path.iterdir()] == ["denoiser"]
    _assert_same_weights(load_denoiser(target), unet)

    pipeline = tmp_path / "pipeline"  # a whole diffusers pipeline folder: the UNet lives in unet/
    save_denoiser(unet, pipeline / "unet")
    (pipeline / "model_index.json").write_text("{}")
    _assert_same_weights(load_denoiser(pipeline), unet)


def test_load_refuses_bad_checkpoints(template, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="nope"):
        load_denoiser(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_denoiser(empty)

    good = tmp_path / "good"
    save_denoiser(template, good)
    config = json.loads((good / "config.json").read_text())

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(CheckpointError, match="UNet2DConditionModel"):
        load_denoiser(other)

    conditional = tmp_path / "conditional"
    conditional.mkdir()
    (conditional / "config.json").write_text(json.dumps({**config, "num_class_embeds": 10}))
    with pytest.raises(CheckpointError, match="class-conditional"):
        load_denoiser(conditional)

    pickled = tmp_path / "pickled"  # a pickle-only checkpoint is refused before anything is read
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(config))
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickle"):
        load_denoiser(pickled)


# -- training ----------------------------------------------------------------------------------------------------


def test_training_lowers_loss(template, images, tmp_path):
    unet = copy.deepcopy(template)
    result = _train(unet, images, tmp_path / "work", 40, lr=3e-3, batch_size=8, ema_decay=None, checkpoint_every=0)
    assert result.steps_done == 40 and len(result.losses) == 40 and result.resumed_from is None
    assert result.model is unet and not unet.training
    first, last = sum(result.losses[:8]) / 8, sum(result.losses[-8:]) / 8
    assert last < 0.6 * first, (first, last)  # measured ~0.4 over seeds 0-3
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [
        "training_state-00000040.safetensors", "training_state.json",
    ]


def test_ema_model_is_returned(template, images, tmp_path):
    raw = copy.deepcopy(template)
    result = _train(raw, images, tmp_path / "a", 3, ema_decay=0.0)  # decay 0: the EMA is the last weights
    assert result.model is not raw
    _assert_same_weights(result.model, raw)
    raw_half = copy.deepcopy(template)
    averaged = _train(raw_half, images, tmp_path / "b", 3, ema_decay=0.5).model
    _assert_same_weights(raw, raw_half)  # EMA does not touch the training weights
    differs = [not torch.equal(p, q) for p, q in zip(averaged.parameters(), raw_half.parameters())]
    assert any(differs)


def test_resume_gives_same_weights_losses_and_log(template, images, tmp_path):
    straight = _train(copy.deepcopy(template), images, tmp_path / "a", 4, log_path=tmp_path / "a.csv")

    first = _train(copy.deepcopy(template), images, tmp_path / "b", 2, log_path=tmp_path / "b.csv")
    assert first.steps_done == 2
    fresh = _tiny()
    resumed = _train(fresh, images, tmp_path / "b", 4, log_path=tmp_path / "b.csv")  # other init: state overrides it
    assert resumed.resumed_from == 2
    _assert_same_weights(resumed.model, straight.model)  # EMA weights
    assert resumed.losses == straight.losses
    assert _read_log(tmp_path / "b.csv") == _read_log(tmp_path / "a.csv")
    assert [row[0] for row in _read_log(tmp_path / "a.csv")] == ["step", "1", "2", "3", "4"]
    assert float(_read_log(tmp_path / "a.csv")[3][1]) == pytest.approx(straight.losses[2], rel=1e-5)

    again = _train(copy.deepcopy(template), images, tmp_path / "b", 4, log_path=tmp_path / "b.csv")  # nothing left
    assert again.resumed_from == 4 and again.losses == straight.losses
    _assert_same_weights(again.model, straight.model)


def test_resume_after_kill_drops_unsaved_log_rows(template, images, tmp_path):
    straight = _train(copy.deepcopy(template), images, tmp_path / "a", 5, log_path=tmp_path / "a.csv", ema_decay=None)
    with pytest.raises(KeyboardInterrupt):  # killed while drawing step 4's batch: state at step 2, log rows 1..3
        _train(copy.deepcopy(template), images, tmp_path / "b", 5, log_path=tmp_path / "b.csv", ema_decay=None,
               fail_at_call=4)
    assert [row[0] for row in _read_log(tmp_path / "b.csv")] == ["step", "1", "2", "3"]
    resumed = _train(copy.deepcopy(template), images, tmp_path / "b", 5, log_path=tmp_path / "b.csv", ema_decay=None)
    assert resumed.resumed_from == 2
    _assert_same_weights(resumed.model, straight.model)
    assert _read_log(tmp_path / "b.csv") == _read_log(tmp_path / "a.csv")


def test_resume_with_dropout_is_exact(images, tmp_path):
    """Dropout masks come from the saved generator too, not from the global RNG."""
    base = _tiny(dropout=0.3)
    straight = _train(copy.deepcopy(base), images, tmp_path / "a", 4, ema_decay=None)
    _train(copy.deepcopy(base), images, tmp_path / "b", 2, ema_decay=None)
    torch.rand(100)  # disturb the global RNG between the two halves
    resumed = _train(copy.deepcopy(base), images, tmp_path / "b", 4, ema_decay=None)
    _assert_same_weights(resumed.model, straight.model)


def test_resume_refuses_other_settings_or_fewer_steps(template, images, tmp_path):
    with pytest.raises(KeyboardInterrupt):  # an unfinished state at step 2 of 4
        _train(copy.deepcopy(template), images, tmp_path / "w", 4, fail_at_call=4)
    with pytest.raises(CheckpointError, match="lr"):
        _train(copy.deepcopy(template), images, tmp_path / "w", 4, lr=1e-3)
    with pytest.raises(CheckpointError, match="step 2"):
        _train(copy.deepcopy(template), images, tmp_path / "w", 1)
    with pytest.raises(CheckpointError, match="code"):
        _train(copy.deepcopy(template), images, tmp_path / "w", 4, extra_fingerprint={"code_sha256": "edited"})
    state = json.loads((tmp_path / "w" / "training_state.json").read_text())
    tensors = tmp_path / "w" / state["tensors"]
    tensors.write_bytes(tensors.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(CheckpointError, match="corrupt"):
        _train(copy.deepcopy(template), images, tmp_path / "w", 4)


# -- training-recipe knobs: cosine learning rate, truncated timestep range ---------------------------------------


def test_cosine_learning_rate_decays_from_base_to_near_zero():
    from dasgen.diffusion.train import learning_rate

    steps = 100
    rates = [learning_rate(2e-3, s, steps, "cosine") for s in range(1, steps + 1)]
    assert rates[0] == pytest.approx(2e-3)
    assert all(a > b for a, b in zip(rates, rates[1:]))  # strictly decreasing
    assert rates[-1] < 2e-3 * 1e-3
    assert learning_rate(2e-3, 57, steps, "constant") == 2e-3
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(2e-3, 1, steps, "linear")


def test_cosine_schedule_resumes_on_the_same_curve(template, images, tmp_path):
    whole = _train(copy.deepcopy(template), images, tmp_path / "a", steps=4, lr_schedule="cosine")
    with pytest.raises(KeyboardInterrupt):  # killed while drawing step 4's batch: state saved at step 2
        _train(copy.deepcopy(template), images, tmp_path / "b", steps=4, lr_schedule="cosine", fail_at_call=4)
    resumed = _train(copy.deepcopy(template), images, tmp_path / "b", steps=4, lr_schedule="cosine")
    assert resumed.resumed_from == 2 and resumed.losses == whole.losses
    _assert_same_weights(resumed.model, whole.model)
    constant = _train(copy.deepcopy(template), images, tmp_path / "c", steps=4)
    assert constant.losses[:1] == whole.losses[:1] and constant.losses[1:] != whole.losses[1:]


def test_a_cosine_run_is_not_resumed_with_another_length(template, images, tmp_path):
    """The schedule's rates depend on its length: state of a 4-step cosine run cannot continue as a 6-step one."""
    with pytest.raises(KeyboardInterrupt):  # state saved at step 2 of 4
        _train(copy.deepcopy(template), images, tmp_path / "w", steps=4, lr_schedule="cosine", fail_at_call=4)
    with pytest.raises(CheckpointError, match="lr_schedule_steps"):
        _train(copy.deepcopy(template), images, tmp_path / "w", steps=6, lr_schedule="cosine")
    _train(copy.deepcopy(template), images, tmp_path / "w", steps=4, lr_schedule="cosine")  # finished at 4
    longer = _train(copy.deepcopy(template), images, tmp_path / "w", steps=6, lr_schedule="cosine")
    straight = _train(copy.deepcopy(template), images, tmp_path / "x", steps=6, lr_schedule="cosine")
    assert longer.resumed_from is None and longer.losses == straight.losses  # trained afresh on the 6-step curve


def test_a_truncated_schedule_trains_only_its_timesteps(template, images, tmp_path, monkeypatch):
    seen: list[int] = []
    original = UNet2DModel.forward

    def spy(self, sample, timestep, *args, **kwargs):
        seen.extend(torch.as_tensor(timestep).reshape(-1).tolist())
        return original(self, sample, timestep, *args, **kwargs)

    monkeypatch.setattr(UNet2DModel, "forward", spy)
    train_ddpm(copy.deepcopy(template), _sampler(images), NoiseSchedule.linear().truncated(50), steps=20,
               batch_size=4, lr=1e-3, ema_decay=None, seed=0, work_dir=tmp_path / "w", checkpoint_every=100,
               log_path=None, progress=False)
    assert len(seen) == 80 and max(seen) < 50 and min(seen) >= 0


def test_the_ddpm_learns_the_noise_that_diffusers_add_noise_mixes_in(template, images, tmp_path, monkeypatch):
    """Eq. 5: the U-Net sees x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (diffusers' DDPMScheduler.add_noise with the
    paper's schedule) and is regressed onto that eps -- not onto x_0, not onto x_{t-1}."""
    from diffusers import DDPMScheduler

    seen, drawn = {}, []
    original_forward, original_mse = UNet2DModel.forward, torch.nn.functional.mse_loss

    def forward(self, sample, timestep, *args, **kwargs):
        seen["x_t"], seen["t"] = sample.detach().clone(), torch.as_tensor(timestep).detach().clone()
        return original_forward(self, sample, timestep, *args, **kwargs)

    def mse_loss(prediction, target, *args, **kwargs):
        seen["target"] = target.detach().clone()
        return original_mse(prediction, target, *args, **kwargs)

    def sample_batch(generator, batch_size):
        drawn.append(_sampler(images)(generator, batch_size))
        return drawn[-1]

    monkeypatch.setattr(UNet2DModel, "forward", forward)
    monkeypatch.setattr(torch.nn.functional, "mse_loss", mse_loss)
    train_ddpm(copy.deepcopy(template), sample_batch, NoiseSchedule.linear(), steps=1, batch_size=4, lr=1e-3,
               ema_decay=None, seed=0, work_dir=tmp_path / "w", checkpoint_every=100, log_path=None, progress=False)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    expected = scheduler.add_noise(drawn[0], seen["target"], seen["t"])
    torch.testing.assert_close(seen["x_t"], expected, rtol=1e-4, atol=1e-5)
    assert seen["target"].std() > 0.5  # a noise draw, not a copy of the images


def test_max_timestep_below_the_last_domain_is_a_config_error():
    from dasgen.config import config_from_dict
    from dasgen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"diffusion.train.max_timestep: 150 is below ptl.t_final \(200\)"):
        config_from_dict({"ptl": {"t_final": 200}, "diffusion": {"train": {"max_timestep": 150}}})
    with pytest.raises(ConfigError, match="exceeds diffusion.num_train_timesteps"):
        config_from_dict({"diffusion": {"train": {"max_timestep": 1001}}})
    assert config_from_dict({"ptl": {"t_final": 200},
                             "diffusion": {"train": {"max_timestep": 200}}}).diffusion.train.max_timestep == 200


def test_plan_names_the_ddpm_recipe_deviations():
    from dasgen.config import config_from_dict
    from dasgen.planning.report import deviations

    shipped_style = deviations(config_from_dict({"ptl": {"t_final": 200}, "diffusion": {
        "train": {"max_timestep": None, "lr_schedule": "constant"}}}))
    changed = deviations(config_from_dict({"ptl": {"t_final": 200}, "diffusion": {
        "train": {"max_timestep": 250, "lr_schedule": "cosine"}}}))
    new = [note for note in changed if note not in shipped_style and "domain schedule" not in note]
    assert any("t <= 250" in note for note in new) and any("cosine" in note for note in new) and len(new) == 2
    pretrained = deviations(config_from_dict({"diffusion": {"pretrained": "ddpm", "train": {"max_timestep": 900}}}))
    assert not any("t <= 900" in note for note in pretrained)  # a brought DDPM is not trained here


def test_train_diffusion_records_the_round_trip_of_real_target_photos(tiny_workspace):
    from PIL import Image

    metrics = json.loads((Path(tiny_workspace) / "metrics" / "diffusion.json").read_text())
    assert set(metrics["roundtrip"]) == {"t5", "t10", "t20"}  # the tiny params' fidelity levels (no cap)
    for level in metrics["roundtrip"].values():
        assert level["psnr"] > 0 and level["roughness_ratio"] > 0
    psnr = [metrics["roundtrip"][k]["psnr"] for k in ("t5", "t10", "t20")]
    assert psnr[0] > psnr[2]  # more noise, less of the photo kept
    picture = Image.open(Path(tiny_workspace) / "metrics" / "diffusion_roundtrip.png")
    assert picture.size[0] > picture.size[1] > 0  # rows: photos; columns: clean | phi^5 | phi^10 | phi^20


def test_a_finished_state_is_kept_restored_as_is_and_replaced_only_for_other_settings(template, images, tmp_path):
    logs: list[str] = []
    code = {"code_sha256": "a"}
    first = _train(copy.deepcopy(template), images, tmp_path / "w", 4, extra_fingerprint=code)
    state = json.loads((tmp_path / "w" / "training_state.json").read_text())
    assert state["finished"] is True and state["step"] == 4  # kept after the end

    again = _train(_tiny(), images, tmp_path / "w", 4, extra_fingerprint=code, log=logs.append)  # no training
    assert again.resumed_from == 4 and logs == [f"resuming from step 4 of 4 ({tmp_path / 'w'})"]
    _assert_same_weights(again.model, first.model)

    other = _train(copy.deepcopy(template), images, tmp_path / "w", 4, extra_fingerprint={"code_sha256": "b"},
                   log=logs.append)  # a real code change: trained afresh (same init and seed: the same weights)
    assert other.resumed_from is None and "finished state of other settings (code_sha256) replaced" in logs[-1]
    _assert_same_weights(other.model, first.model)
    fewer = _train(copy.deepcopy(template), images, tmp_path / "w", 2, extra_fingerprint={"code_sha256": "b"},
                   log=logs.append)
    assert fewer.resumed_from is None and "4 steps done, 2 asked" in logs[-1]
    longer = _train(copy.deepcopy(template), images, tmp_path / "w", 4, extra_fingerprint={"code_sha256": "b"},
                    lr_schedule="constant")  # a finished run continues when asked for more steps
    assert longer.resumed_from == 2


def test_training_metrics_are_logged_every_n_steps_and_at_the_end_also_after_a_resume(template, images, tmp_path):
    """on_metrics hears steps 2, 4 and the last, 5; a run killed at step 5 and resumed from its step-4 state first
    replays 2 and 4 from that state, with the values the uninterrupted run logged."""
    straight: list = []
    _train(copy.deepcopy(template), images, tmp_path / "a", 5, on_metrics=lambda s, m: straight.append((s, m)),
           metrics_every=2)
    assert [s for s, _ in straight] == [2, 4, 5]
    first, resumed = [], []
    with pytest.raises(KeyboardInterrupt):
        _train(copy.deepcopy(template), images, tmp_path / "b", 5, fail_at_call=5,
               on_metrics=lambda s, m: first.append(s), metrics_every=2)
    _train(copy.deepcopy(template), images, tmp_path / "b", 5, on_metrics=lambda s, m: resumed.append((s, m)),
           metrics_every=2)
    assert first == [2, 4] and resumed == straight
