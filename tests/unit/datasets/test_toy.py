"""Tests for the procedural toy domains (dasgen.datasets.toy): determinism, on-disk layout, shared label
distribution, the rendering gap, and that the ordinary GTA5 / Cityscapes readers load what it writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dasgen.datasets.toy import (
    BUILDING,
    CAR,
    CITY,
    PERSON,
    POLE,
    SIDEWALK,
    SIGN,
    SKY,
    TERRAIN,
    TOY_CLASSES,
    TOY_LABEL_IDS,
    VEGETATION,
    generate_toy,
    toy_sample,
)
from dasgen.errors import DasgenError
from dasgen.labels import color_palette, id_to_color, id_to_train_id
from helpers.files import tree_bytes

SMALL = {"n_source": 5, "n_target_train": 4, "n_target_val": 3}


def samples(domain: str, split: str, n: int, **knobs) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*(toy_sample(domain, split, i, **knobs) for i in range(n)))
    return np.stack(images), np.stack(labels)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = generate_toy(tmp_path / "a", seed=3, **SMALL)
    second = generate_toy(tmp_path / "b", seed=3, **SMALL)
    generate_toy(tmp_path / "c", seed=4, **SMALL)
    a, b, c = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b"), tree_bytes(tmp_path / "c")
    assert first == second
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.startswith(("source/images/", "target/leftImg8bit/"))]
    assert all(a[k] != c[k] for k in images)


def test_rerun_over_existing_dir_gives_the_fresh_tree(tmp_path: Path) -> None:
    generate_toy(tmp_path / "out", seed=1, n_source=7, n_target_train=6, n_target_val=5)
    (tmp_path / "out" / "source" / "images" / ".00001.png.abc.tmp").write_bytes(b"left by a killed run")
    generate_toy(tmp_path / "out", seed=0, **SMALL)
    generate_toy(tmp_path / "fresh", seed=0, **SMALL)
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "fresh")


def test_rerun_removes_only_files_the_generator_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    generate_toy(out, seed=0, n_source=7, n_target_train=6, n_target_val=5)
    mine = {
        "source/images/my-photo.png": b"a user's image",
        "source/labels/notes.txt": b"a user's notes",
        "source/images/.my-photo.png.abc.tmp": b"a temp file of some other tool",
        f"target/leftImg8bit/val/{CITY}/{CITY}_000000_000000_leftImg8bit.jpg": b"not a name the toy writes",
        "target/leftImg8bit/val/munich/munich_000000_000001_leftImg8bit.png": b"another city",
    }
    for rel, data in mine.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    generate_toy(out, seed=0, **SMALL)
    generate_toy(tmp_path / "fresh", seed=0, **SMALL)
    assert {k: v for k, v in tree_bytes(out).items() if k not in mine} == tree_bytes(tmp_path / "fresh")
    assert all((out / rel).read_bytes() == data for rel, data in mine.items())


def test_written_layout_and_label_modes(tmp_path: Path) -> None:
    summary = generate_toy(tmp_path, seed=0, height=24, width=40, **SMALL)
    assert summary["classes"] == list(TOY_CLASSES)
    assert (summary["n_source"], summary["height"], summary["width"]) == (5, 24, 40)
    assert (tmp_path / "toy.json").is_file()
    files = tree_bytes(tmp_path)
    src = sorted(k for k in files if k.startswith("source/"))
    assert src == [f"source/{d}/{i:05d}.png" for d in ("images", "labels") for i in range(1, 6)]
    stems = [f"{CITY}_000000_{i:06d}" for i in range(4)]
    assert sorted(k for k in files if k.startswith("target/leftImg8bit/train/")) == [
        f"target/leftImg8bit/train/{CITY}/{s}_leftImg8bit.png" for s in stems
    ]
    assert not (tmp_path / "target" / "gtFine" / "train").exists()  # the DDPM's training images are unlabelled

    with Image.open(tmp_path / "source/images/00001.png") as im:
        assert (im.mode, im.size) == ("RGB", (40, 24))
    with Image.open(tmp_path / "source/labels/00001.png") as im:
        assert im.mode == "P"
        assert im.getpalette()[: 34 * 3] == color_palette()[: 34 * 3]
        source_ids = np.asarray(im)
    assert set(np.unique(source_ids)) <= set(TOY_LABEL_IDS)

    gt = tmp_path / "target/gtFine/val" / CITY
    for i in range(3):
        stem = f"{CITY}_000000_{i:06d}"
        with Image.open(tmp_path / f"target/leftImg8bit/val/{CITY}/{stem}_leftImg8bit.png") as im:
            assert (im.mode, im.size) == ("RGB", (40, 24))
        with Image.open(gt / f"{stem}_gtFine_labelIds.png") as im:
            assert im.mode == "L"
            ids = np.asarray(im)
        with Image.open(gt / f"{stem}_gtFine_labelTrainIds.png") as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), id_to_train_id(ids))
        with Image.open(gt / f"{stem}_gtFine_color.png") as im:
            assert im.mode == "RGBA"
            np.testing.assert_array_equal(np.asarray(im)[..., :3], id_to_color(ids))
        assert set(np.unique(ids)) <= set(TOY_LABEL_IDS)


def test_written_files_match_toy_sample(tmp_path: Path) -> None:
    generate_toy(tmp_path, seed=2, **SMALL)
    image, label = toy_sample("source", "train", 4, seed=2)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "source/images/00005.png")), image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "source/labels/00005.png")), label)
    image, label = toy_sample("target", "val", 2, seed=2)
    stem = f"{CITY}_000000_000002"
    written = np.asarray(Image.open(tmp_path / f"target/leftImg8bit/val/{CITY}/{stem}_leftImg8bit.png"))
    np.testing.assert_array_equal(written, image)
    written = np.asarray(Image.open(tmp_path / f"target/gtFine/val/{CITY}/{stem}_gtFine_labelIds.png"))
    np.testing.assert_array_equal(written, label)


def test_domains_share_the_label_distribution() -> None:
    _, source = samples("source", "train", 150)
    _, target = samples("target", "val", 150)
    present = lambda labels: {int(c) for c in np.unique(labels)}  # noqa: E731
    assert present(source) == present(target) == set(TOY_LABEL_IDS)
    fraction = lambda labels: np.bincount(labels.ravel(), minlength=256) / labels.size  # noqa: E731
    np.testing.assert_allclose(fraction(source), fraction(target), atol=0.03)
    # Small objects appear in most scenes of both domains.
    for labels in (source, target):
        per_image = lambda c: np.mean([(lab == c).any() for lab in labels])  # noqa: E731
        assert per_image(POLE) > 0.9 and per_image(CAR) > 0.7
        assert per_image(SIGN) > 0.5 and per_image(PERSON) > 0.4


def test_layout_does_not_depend_on_the_rendering_knobs() -> None:
    _, full = toy_sample("target", "val", 5, seed=1)
    _, plain = toy_sample("target", "val", 5, seed=1, rendering_gap=0.0, colour_swap=False)
    np.testing.assert_array_equal(full, plain)


def class_means(images: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    return {c: images[labels == c].reshape(-1, 3).astype(float).mean(0) for c in TOY_LABEL_IDS}


def test_target_differs_in_rendering_and_confuses_colours() -> None:
    source = class_means(*samples("source", "train", 60))
    target = class_means(*samples("target", "val", 60))
    # Swapped colours: target sidewalks look like source buildings, target grass like source vegetation.
    dist = lambda a, b: float(np.linalg.norm(a - b))  # noqa: E731
    assert dist(target[SIDEWALK], source[BUILDING]) < dist(target[SIDEWALK], source[SIDEWALK])
    assert dist(target[TERRAIN], source[VEGETATION]) < dist(target[TERRAIN], source[TERRAIN])
    # Shifted colours: a blue sky in the source, a grey one in the target.
    saturation = lambda rgb: float(rgb.max() - rgb.min())  # noqa: E731
    assert saturation(source[SKY]) > 2 * saturation(target[SKY])


def test_target_is_noisier_and_the_gap_knob_closes_it() -> None:
    def roughness(images: np.ndarray, labels: np.ndarray) -> float:
        """Mean |horizontal difference| between sky pixels (grain; both skies are smooth vertical gradients)."""
        grey = images.astype(float).mean(-1)
        same = (labels[:, :, 1:] == SKY) & (labels[:, :, :-1] == SKY)
        return float(np.abs(np.diff(grey, axis=2))[same].mean())

    source = samples("source", "train", 30)
    target = samples("target", "train", 30)
    assert roughness(*target) > 2 * roughness(*source)
    closed = samples("target", "train", 30, rendering_gap=0.0, colour_swap=False)
    src_means, closed_means = class_means(*source), class_means(*closed)
    assert all(np.abs(src_means[c] - closed_means[c]).max() < 25 for c in (BUILDING, SIDEWALK, SKY, VEGETATION))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"n_source": -1}, "n_source"), ({"rendering_gap": 1.5}, "rendering_gap"), ({"height": 4}, "height"),
     ({"thin_object_scale": 0.5}, "thin_object_scale")],
)
def test_bad_arguments_name_the_knob(tmp_path: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(DasgenError, match=key):
        generate_toy(tmp_path, **{**SMALL, **kwargs})


def test_readers_load_the_toy_without_bad_pairs(tmp_path: Path) -> None:
    registry = pytest.importorskip("dasgen.datasets.registry")
    generate_toy(tmp_path, seed=0, **SMALL)
    bad: list = []

    source = registry.open_dataset("gta5", tmp_path / "source")
    got = list(source.iter_samples(policy="skip", on_bad=bad.append))
    assert len(got) == SMALL["n_source"] and all(s.label is not None for s in got)
    image, label = toy_sample("source", "train", 0)
    np.testing.assert_array_equal(got[0].image, image)
    np.testing.assert_array_equal(got[0].label, label)

    val = registry.open_dataset("cityscapes", tmp_path / "target", split="val")
    got = list(val.iter_samples(policy="skip", on_bad=bad.append))
    assert len(got) == SMALL["n_target_val"] and all(s.label is not None for s in got)
    np.testing.assert_array_equal(got[1].label, toy_sample("target", "val", 1)[1])

    train = registry.open_dataset("cityscapes", tmp_path / "target", split="train", labelled=False)
    got = list(train.iter_samples(policy="skip", on_bad=bad.append))
    assert len(got) == SMALL["n_target_train"] and all(s.label is None for s in got)
    assert bad == []


def test_thin_object_scale_widens_only_the_thin_objects() -> None:
    """Toy calibration (#12): thin_object_scale widens poles, signs and persons and nothing else."""
    thin = (POLE, SIGN, PERSON)
    shipped = samples("target", "val", 40)[1]
    wide = samples("target", "val", 40, thin_object_scale=2.0)[1]
    area = lambda labels, c: int((labels == c).sum())  # noqa: E731
    for c in thin:
        assert area(wide, c) > 1.3 * area(shipped, c)  # poles 1.5x (the farthest stay 1 pixel), signs 5x
    # Everything the thin objects do not cover at either scale is the same layout (the random draws are unchanged).
    untouched = ~np.isin(shipped, thin) & ~np.isin(wide, thin)
    assert untouched.mean() > 0.8
    np.testing.assert_array_equal(shipped[untouched], wide[untouched])


def test_run_toy_overrides_counts_and_keeps_the_params_look(tmp_path: Path) -> None:
    """The ablation's oracle toy: another seed and counts, the params' own look and geometry."""
    from dasgen.config import config_from_dict
    from dasgen.stages.toy import run_toy

    config = config_from_dict({"toy": {"colour_swap": False, "thin_object_scale": 2.0, "seed": 5}})
    summary = run_toy(config, out=tmp_path / "oracle", progress=False, seed=7, n_source=0, n_target_train=0,
                      n_target_val=2)
    assert (summary["seed"], summary["n_source"], summary["n_target_val"]) == (7, 0, 2)
    assert summary["colour_swap"] is False and summary["thin_object_scale"] == 2.0
    _, label = toy_sample("target", "val", 1, seed=7, colour_swap=False, thin_object_scale=2.0)
    written = tmp_path / "oracle" / "target" / "gtFine" / "val" / CITY / f"{CITY}_000000_000001_gtFine_labelIds.png"
    np.testing.assert_array_equal(np.asarray(Image.open(written)), label)


def test_writes_only_into_a_new_empty_or_earlier_toy_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    (foreign / "notes.txt").parent.mkdir()
    (foreign / "notes.txt").write_bytes(b"a user's notes")
    with pytest.raises(DasgenError, match=r"mine: it is not empty and holds no dasgen toy \(no toy.json\)"):
        generate_toy(foreign, seed=0, **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(DasgenError, match="exists and is not a directory"):
        generate_toy(tmp_path / "file", seed=0, **SMALL)

    empty = tmp_path / "empty"
    empty.mkdir()
    generate_toy(empty, seed=0, **SMALL)
    assert not (empty / ".dasgen-toy-incomplete").exists()
    (empty / "toy.json").unlink()  # as if killed before its summary: the marker says the folder is ours
    (empty / ".dasgen-toy-incomplete").write_text("unfinished")
    generate_toy(empty, seed=0, **SMALL)
    generate_toy(tmp_path / "fresh", seed=0, **SMALL)
    assert tree_bytes(empty) == tree_bytes(tmp_path / "fresh")
