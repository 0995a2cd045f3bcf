"""Supp. C augmentation, g_0 training, the Eq. 12 fine-tune (dasgen.segment.train) and the toy data sampler."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dasgen.diffusion.schedule import NoiseSchedule
from dasgen.errors import ConfigError, DasgenError, DatasetError
from dasgen.labels import IGNORE_INDEX, TRAIN_ID_TO_COLOR
from helpers.segment_data import LabelledArrays, batch_sampler, sequential_batches
from dasgen.segment.metrics import evaluate
from dasgen.segment.models import build_segmenter
from dasgen.segment.train import cross_entropy, finetune, noisy_masked_augment, train_source

SCHEDULE = NoiseSchedule.linear()
CLASSES = (0, 2, 8, 10, 13)  # road, building, vegetation, sky, car


def colour_dataset(n: int, seed: int, *, bgr: bool = False, height: int = 32, width: int = 64) -> LabelledArrays:
    """Random rectangles of 5 classes, each painted its Cityscapes colour with pixel noise (channels reversed with
    ``bgr``: a stand-in for a translated domain that the source model misreads)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, height, width), np.uint8)
    for i in range(n):
        for _ in range(5):
            y0, x0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
            labels[i, y0:y0 + rng.integers(4, 16), x0:x0 + rng.integers(4, 24)] = rng.choice(CLASSES)
    labels[:, :, :2] = IGNORE_INDEX  # an ignored border, as in real label maps
    colours = TRAIN_ID_TO_COLOR[labels].astype(np.int16) + rng.integers(-20, 21, (n, height, width, 3))
    if bgr:
        colours = colours[..., ::-1]
    return LabelledArrays(np.clip(colours, 0, 255).astype(np.uint8), labels)



# -- data ------------------------------------------------------------------------------------------------------------


def test_labelled_arrays_validate():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(DatasetError, match="labels must be uint8"):
        LabelledArrays(images, np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(DatasetError, match="label value 19"):
        LabelledArrays(images, np.full((2, 4, 4), 19, np.uint8))
    with pytest.raises(DatasetError, match="images must be uint8"):
        LabelledArrays(images.astype(np.float32), np.zeros((2, 4, 4), np.uint8))


def test_sampler_is_seeded_and_flips_pairs_together():
    data = colour_dataset(8, 0)
    sample = batch_sampler(data, 32, hflip=True)
    x1, y1 = sample(torch.Generator().manual_seed(3))
    x2, y2 = sample(torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (32, 3, 32, 64) and y1.dtype == torch.int64 and -1 <= x1.min() and x1.max() <= 1
    unflipped = (y1[:, :, :2] == IGNORE_INDEX).all(dim=2).all(dim=1)  # the ignored border is on the left ...
    flipped = (y1[:, :, -2:] == IGNORE_INDEX).all(dim=2).all(dim=1)  # ... or, flipped, on the right
    assert (unflipped ^ flipped).all()
    assert 0 < int(flipped.sum()) < 32  # with 32 draws, both orientations occur
    # image and label flipped together: each pixel's colour still matches its label's colour
    colours = torch.from_numpy(TRAIN_ID_TO_COLOR[y1.numpy()].astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1
    valid = (y1 != IGNORE_INDEX)[:, None].expand_as(x1)
    assert (x1 - colours)[valid].abs().max() <= 21 / 127.5 + 1e-6
    assert sum(b[0].shape[0] for b in sequential_batches(data, 3)) == 8


# -- Supp. C augmentation --------------------------------------------------------------------------------------------


def test_augment_fraction_honoured():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.zeros(16, 3, 4, 4), torch.zeros(16, 4, 4, dtype=torch.int64)
    picked = 0
    for _ in range(250):  # 4000 samples: expected 400, binomial std 19
        _, _, t = noisy_masked_augment(x, y, schedule=SCHEDULE, max_t=100, fraction=0.1, generator=generator,
                                       return_timesteps=True)
        picked += int((t >= 0).sum())
    assert abs(picked - 400) < 80
    _, _, t = noisy_masked_augment(x, y, schedule=SCHEDULE, max_t=10, fraction=0.0, generator=generator,
                                   return_timesteps=True)
    assert (t == -1).all()
    _, _, t = noisy_masked_augment(x, y, schedule=SCHEDULE, max_t=10, fraction=1.0, generator=generator,
                                   return_timesteps=True)
    assert (t >= 0).all()


def test_augment_masks_one_class_and_noises_below_max_t():
    data = colour_dataset(64, 1)
    x, y = data.batch(np.arange(64))
    x_in, y_in = x.clone(), y.clone()
    max_t = 300
    out_x, out_y, t = noisy_masked_augment(x, y, schedule=SCHEDULE, max_t=max_t, fraction=0.5,
                                           generator=torch.Generator().manual_seed(1), return_timesteps=True)
    assert torch.equal(x, x_in) and torch.equal(y, y_in)  # inputs untouched
    picked = t >= 0
    assert 16 < int(picked.sum()) < 48
    assert torch.equal(out_x[~picked], x[~picked]) and torch.equal(out_y[~picked], y[~picked])
    assert int(t.max()) < max_t and int(t[picked].min()) >= 0
    alpha_bars = SCHEDULE.alpha_bars
    for i in picked.nonzero().flatten().tolist():
        kept = out_y[i] != IGNORE_INDEX
        classes = out_y[i][kept].unique()
        assert len(classes) == 1 and int(classes) in y[i].unique().tolist()  # ONE class region that was present
        assert torch.equal(kept, y[i] == classes[0])  # the whole region of that class, labels unchanged inside
        assert (out_x[i][:, ~kept] == 0).all()  # masked pixels are 0 (mid grey) ...
        # ... and the kept ones are x_t of Eq. 2 at the reported t: residual std = sqrt(1 - abar_t)
        residual = out_x[i][:, kept] - alpha_bars[t[i]].sqrt().float() * x[i][:, kept]
        if residual.numel() >= 300:
            expected_std = float((1 - alpha_bars[t[i]]).sqrt())
            assert float(residual.std()) == pytest.approx(expected_std, rel=0.2, abs=0.01)


def test_augment_timesteps_spread_uniformly():
    x, y = torch.zeros(64, 3, 2, 2), torch.zeros(64, 2, 2, dtype=torch.int64)
    generator = torch.Generator().manual_seed(2)
    ts = torch.cat([noisy_masked_augment(x, y, schedule=SCHEDULE, max_t=50, fraction=1.0, generator=generator,
                                         return_timesteps=True)[2] for _ in range(20)])
    assert int(ts.max()) == 49 and int(ts.min()) == 0
    assert abs(float(ts.float().mean()) - 24.5) < 2.0


def test_augment_is_seeded_and_validates():
    data = colour_dataset(8, 2)
    x, y = data.batch(np.arange(8))
    a, b = (noisy_masked_augment(x, y, schedule=SCHEDULE, max_t=20, fraction=0.5,
                                 generator=torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ConfigError, match="max_t"):
        noisy_masked_augment(x, y, schedule=SCHEDULE, max_t=1001, fraction=0.1, generator=torch.Generator())
    with pytest.raises(ConfigError, match="fraction"):
        noisy_masked_augment(x, y, schedule=SCHEDULE, max_t=10, fraction=1.5, generator=torch.Generator())


# -- training --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_model():
    """g_0 trained on the colour dataset with the Supp. C augmentation (a few seconds)."""
    torch.manual_seed(0)
    model = build_segmenter("toy", width=16)
    augment = {"schedule": SCHEDULE, "max_t": 50, "fraction": 0.1}
    losses = train_source(model, batch_sampler(colour_dataset(64, 10), 8), iters=40, lr=0.1, optimizer="sgd",
                          augment=augment, generator=torch.Generator().manual_seed(0), progress=False, log_every=10)
    return model, losses


def test_train_source_reaches_high_accuracy(source_model):
    model, losses = source_model
    assert not model.training
    assert losses["final_loss"] < 0.5 * losses["first_loss"]
    assert losses["iters"] == 40 and [h[0] for h in losses["history"]] == [10, 20, 30, 40]
    scores = evaluate(model, sequential_batches(colour_dataset(16, 11), 16), protocol=None)
    assert scores["pixel_accuracy"] > 0.9
    assert set(scores["per_class"]) >= {"road", "building", "vegetation", "sky", "car"}


def test_train_source_adam_and_progress_bar():
    torch.manual_seed(0)
    model = build_segmenter("toy", width=8)
    losses = train_source(model, batch_sampler(colour_dataset(16, 12), 4), iters=8, lr=5e-3, optimizer="adam",
                          augment=None, generator=torch.Generator().manual_seed(0), progress=True, log_every=4)
    assert losses["final_loss"] < losses["first_loss"]
    assert not model.training


def test_train_source_errors():
    model = build_segmenter("toy", width=8)
    sample = batch_sampler(colour_dataset(4, 13), 2)
    with pytest.raises(ConfigError, match="optimizer: unknown 'lion'"):
        train_source(model, sample, iters=1, lr=0.1, optimizer="lion", augment=None, generator=torch.Generator(),
                     progress=False)

    def nan_batches(generator):
        x, y = sample(generator)
        return torch.full_like(x, float("nan")), y

    with pytest.raises(DasgenError, match="loss became nan at iteration 0"):
        train_source(model, nan_batches, iters=3, lr=0.1, augment=None, generator=torch.Generator(), progress=False)
    assert not model.training


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, 19, 2, 2, requires_grad=True)
    loss = cross_entropy(logits, torch.full((1, 2, 2), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().sum() == 0


@pytest.mark.parametrize("use_src", [True, False])
def test_finetune_lowers_adapted_loss(source_model, use_src):
    model = copy.deepcopy(source_model[0])
    adapted = batch_sampler(colour_dataset(32, 20, bgr=True), 8)  # a "translated" domain, same labels
    source = batch_sampler(colour_dataset(32, 21), 8) if use_src else None
    losses = finetune(model, adapted, source, iters=30, lr=0.05, momentum=0.9, optimizer="sgd", augment=None,
                      generator=torch.Generator().manual_seed(0), progress=False, log_every=5)
    assert not model.training
    assert losses["first_loss_ada"] > 0.5  # g_0 misreads the swapped colours ...
    assert losses["final_loss_ada"] < 0.5 * losses["first_loss_ada"]  # ... and the fine-tune adapts it
    assert ("final_loss_src" in losses) is use_src
    if use_src:
        assert losses["final_loss"] == pytest.approx(losses["final_loss_ada"] + losses["final_loss_src"])


@pytest.mark.parametrize("src_weight", [1.0, 0.25])
def test_finetune_gradient_is_that_of_eq12_sum(src_weight):
    """One SGD step of finetune == one manual step on L_ada + w L_src (Eq. 12: w = 1; the fading schedule: less)."""
    torch.manual_seed(0)
    model = build_segmenter("toy", width=8)
    reference = copy.deepcopy(model)
    ada, src = colour_dataset(4, 30, bgr=True), colour_dataset(4, 31)
    xa, ya = ada.batch(np.arange(4))
    xs, ys = src.batch(np.arange(4))
    finetune(model, lambda g: (xa, ya), lambda g: (xs, ys), iters=1, lr=0.1, momentum=0.0, weight_decay=0.0,
             optimizer="sgd", augment=None, generator=torch.Generator(), progress=False, src_weight=src_weight)
    reference.train()
    loss = cross_entropy(reference(xa), ya) + src_weight * cross_entropy(reference(xs), ys)
    loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_zero_iterations_leave_the_model_unchanged():
    model = build_segmenter("toy", width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sample = batch_sampler(colour_dataset(4, 40), 2)
    losses = finetune(model, sample, sample, iters=0, lr=0.1, augment=None, generator=torch.Generator(),
                      progress=False)
    assert losses["iters"] == 0 and losses["final_loss"] is None and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="iters"):
        train_source(model, sample, iters=-1, lr=0.1, augment=None, generator=torch.Generator(), progress=False)


class _BatchNormNet(torch.nn.Module):
    """conv -> BatchNorm -> 1x1 classifier: the smallest net whose judge depends on running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Conv2d(8, 19, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


@pytest.mark.parametrize("trainer", ["source", "finetune"])
def test_frozen_batchnorm_keeps_statistics_and_affine_while_the_rest_trains(trainer):
    """segmenter.batchnorm: frozen -- running mean/var and BatchNorm's weight/bias stay as they were (also though
    the loop puts the model in train mode); every other layer trains. In train mode the statistics move."""
    data = colour_dataset(16, seed=3)
    after = {}
    for mode in ("train", "frozen"):
        torch.manual_seed(0)
        model = _BatchNormNet()
        with torch.no_grad():
            model.bn.running_mean.fill_(0.3)
            model.bn.running_var.fill_(2.0)
        before = copy.deepcopy(model.state_dict())
        sample = batch_sampler(data, 2)
        kwargs = dict(iters=5, lr=1e-2, optimizer="adam", generator=torch.Generator().manual_seed(1),
                      progress=False, batchnorm=mode)
        if trainer == "source":
            train_source(model, sample, **kwargs)
        else:
            finetune(model, sample, sample, **kwargs)
        state = model.state_dict()
        after[mode] = {k: not torch.equal(state[k], before[k]) for k in before if "num_batches" not in k}
        assert not model.training
    assert after["train"]["bn.running_mean"] and after["train"]["bn.weight"]
    assert not any(changed for key, changed in after["frozen"].items() if key.startswith("bn."))
    assert after["frozen"]["conv.weight"] and after["frozen"]["head.weight"]
    with pytest.raises(ConfigError, match="batchnorm"):
        train_source(_BatchNormNet(), batch_sampler(data, 2), iters=1, lr=1e-3, generator=torch.Generator(),
                     progress=False, batchnorm="eval")


# -- resumable g_0 training ------------------------------------------------------------------------------------------


class _DroppedOut(torch.nn.Module):
    """The toy segmenter behind a dropout layer: its masks come from the global RNG, which a resume must restore."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = torch.nn.Dropout2d(0.2)
        self.net = build_segmenter("toy", width=8)

    def forward(self, x):
        return self.net(self.drop(x))


def _interrupting(sample, at_call: int):
    calls = [0]

    def draw(generator):
        calls[0] += 1
        if calls[0] == at_call:
            raise KeyboardInterrupt  # what Ctrl-C or a kill does mid-run, as far as the saved state goes
        return sample(generator)
    return draw


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_train_source_resumes_to_the_same_weights_and_losses(tmp_path, optimizer):
    from dasgen.segment.train import Checkpointing

    torch.manual_seed(0)
    template = _DroppedOut()
    sample = batch_sampler(colour_dataset(16, 14), 4)
    augment = {"schedule": SCHEDULE, "max_t": 50, "fraction": 0.5}
    settings = dict(iters=9, lr=0.05, optimizer=optimizer, augment=augment, progress=False, log_every=2)

    def run(model, sampler, work: str, log: list[str] | None = None):
        checkpoint = Checkpointing(tmp_path / work, 4, {"recipe": 1}, log=None if log is None else log.append)
        return train_source(model, sampler, generator=torch.Generator().manual_seed(5), checkpoint=checkpoint,
                            **settings)

    straight_model = copy.deepcopy(template)
    torch.manual_seed(1)
    straight = run(straight_model, sample, "a")
    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):  # dies drawing iteration 7's batch: state saved after iteration 4
        run(copy.deepcopy(template), _interrupting(sample, 7), "b")
    torch.rand(100)  # disturb the global RNG, as a new process would start from another state
    log: list[str] = []
    resumed_model = copy.deepcopy(_DroppedOut())  # other initial weights: the state overrides them
    resumed = run(resumed_model, sample, "b", log)
    assert log == [f"resuming from iteration 4 of 9 ({tmp_path / 'b'})"]
    assert resumed["resumed_from"] == 4 and straight["resumed_from"] is None
    for key in ("first_loss", "final_loss", "history"):
        assert resumed[key] == straight[key], key
    for (name, p), q in zip(straight_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(p, q), name
    again = run(copy.deepcopy(template), sample, "b", log)  # finished state: restored, nothing trained
    assert again["resumed_from"] == 9 and again["history"] == straight["history"]
