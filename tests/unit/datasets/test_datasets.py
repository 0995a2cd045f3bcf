"""Dataset readers on fake trees in their real layouts (built by fake_trees.py), flaws included."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.fake_trees import (
    make_cityscapes_tree,
    make_folder_tree,
    make_gta5_tree,
    make_synthia_tree,
    scene_image,
    scene_label,
    write_label,
    write_png16,
    write_rgb,
)
from PIL import Image

from dasgen.datasets import base
from dasgen.datasets.base import BadPair, BadPairError
from dasgen.datasets.registry import open_dataset
from dasgen.datasets.synthia import read_png16
from dasgen.errors import DatasetError
from dasgen.labels import synthia_to_id

BUILDERS = {
    "gta5": make_gta5_tree,
    "synthia": make_synthia_tree,
    "cityscapes": make_cityscapes_tree,
    "folder": make_folder_tree,
}


def expected_label(kind, tree, id_):
    """The Cityscapes label ids a reader must return for a good id of ``tree``."""
    return synthia_to_id(tree.labels[id_]) if kind == "synthia" else tree.labels[id_]


def collect(reader, policy="skip"):
    bad: list[BadPair] = []
    samples = list(reader.iter_samples(policy, on_bad=bad.append))
    return samples, bad


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_reader_finds_good_pairs_and_every_flaw(kind, tmp_path):
    tree = BUILDERS[kind](tmp_path)
    reader = open_dataset(kind, tmp_path)
    assert reader.kind == kind and reader.root == tmp_path

    ids = [e.id for e in reader.entries()]
    assert ids == sorted(ids)
    for entry in reader.entries():
        assert (tmp_path / entry.image).is_file() and "\\" not in entry.image
        assert entry.label is not None and (tmp_path / entry.label).is_file()
        assert entry.split == tree.splits[entry.id]

    samples, bad = collect(reader)
    assert [s.id for s in samples] == tree.good
    for sample in samples:
        assert sample.image.dtype == np.uint8 and sample.image.ndim == 3 and sample.image.shape[2] == 3
        assert sample.label.dtype == np.uint8 and sample.label.shape == sample.image.shape[:2]
        np.testing.assert_array_equal(sample.label, expected_label(kind, tree, sample.id))
        if tree.images[sample.id] is not None:  # exact for PNG, not for JPEG
            np.testing.assert_array_equal(sample.image, tree.images[sample.id])
    reasons = {b.id: b.reason for b in bad}
    assert sorted(reasons) == sorted(tree.bad)
    for id_, fragment in tree.bad.items():
        assert fragment in reasons[id_], (id_, reasons[id_])
    for b in bad:
        assert (tmp_path / b.file).exists(), b  # names the file at fault


def test_gta5_label_read_by_palette_index_not_colour(tmp_path):
    tree = make_gta5_tree(tmp_path, flaws=False)
    with Image.open(tmp_path / "labels/00001.png") as im:
        assert im.mode == "P"  # the fake is a real palette image, so reading RGB would give colours
    sample = open_dataset("gta5", tmp_path).load(open_dataset("gta5", tmp_path).entries()[0])
    assert set(np.unique(sample.label)) == set(np.unique(tree.labels["00001"]))
    assert sample.label.max() <= 33


def test_gta5_split_mat(tmp_path):
    make_gta5_tree(tmp_path)
    val = open_dataset("gta5", tmp_path, split="val")
    assert [e.id for e in val.entries()] == ["00003", "00008"]
    assert {e.split for e in val.entries()} == {"val"}
    assert [b.id for b in val.listing_problems()] == ["00006"]  # listed in split.mat's valIds, no label
    test = open_dataset("gta5", tmp_path, split="test")
    assert [e.id for e in test.entries()] == ["00004", "00010", "00011"]
    everything = open_dataset("gta5", tmp_path)
    assert len(everything.entries()) == 10 and {e.split for e in everything.entries()} == {"train", "val", "test"}


def test_gta5_without_split_mat_is_all_train(tmp_path):
    make_gta5_tree(tmp_path, split_mat=False, flaws=False)
    reader = open_dataset("gta5", tmp_path, split="train")
    assert [e.split for e in reader.entries()] == ["train"] * 4
    with pytest.raises(DatasetError, match="split.mat"):
        open_dataset("gta5", tmp_path, split="val")


def test_gta5_broken_split_mat_names_the_file(tmp_path):
    make_gta5_tree(tmp_path, flaws=False)
    (tmp_path / "split.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="split.mat"):
        open_dataset("gta5", tmp_path)


def test_synthia_16_bit_label_decoded_from_first_channel(tmp_path):
    tree = make_synthia_tree(tmp_path, flaws=False)
    path = tmp_path / "GT/LABELS/0000001.png"  # the 4-channel one
    with Image.open(path) as im:
        pillow_first_channel = np.asarray(im)[..., 0]
    assert pillow_first_channel.max() == 0  # the Pillow pitfall this reader avoids: classes < 256 read as 0
    reader = open_dataset("synthia", tmp_path)
    sample = reader.load(reader.entries()[1])
    classes = tree.labels["0000001"]
    assert (sample.label[classes == 3] == 7).all()  # SYNTHIA road -> Cityscapes road
    assert (sample.label[classes == 8] == 26).all()  # SYNTHIA car -> Cityscapes car
    assert (sample.label[classes == 13] == 0).all()  # parking-slot -> unlabeled


def test_cityscapes_splits_and_unlabelled(tmp_path):
    make_cityscapes_tree(tmp_path)
    val = open_dataset("cityscapes", tmp_path, split="val")
    assert [(e.id, e.split) for e in val.entries()] == [("frankfurt_000000_000294", "val")]
    assert val.entries()[0].label == "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"

    images = open_dataset("cityscapes", tmp_path, split="train", labelled=False)
    assert [e.id for e in images.entries()] == [
        "aachen_000000_000019",
        "aachen_000001_000019",  # no label, but fine unlabelled
        "aachen_000002_000019",
        "bochum_000000_000313",
    ]
    assert all(e.label is None for e in images.entries())
    samples, bad = collect(images)
    assert len(samples) == 4 and all(s.label is None for s in samples)
    assert [b.id for b in bad] == ["aachen_extra"]


def test_cityscapes_missing_gtfine_names_the_directory(tmp_path):
    make_cityscapes_tree(tmp_path, flaws=False)
    for path in sorted((tmp_path / "gtFine/val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / "gtFine/val").rmdir()
    with pytest.raises(DatasetError, match="gtFine/val"):
        open_dataset("cityscapes", tmp_path)
    assert len(open_dataset("cityscapes", tmp_path, labelled=False).entries()) == 5


def test_fail_policy_raises_on_first_bad_pair(tmp_path):
    make_gta5_tree(tmp_path)
    reader = open_dataset("gta5", tmp_path)
    seen = []
    with pytest.raises(BadPairError) as info:
        for sample in reader.iter_samples("fail"):
            seen.append(sample.id)
    assert seen == []  # the listing problem (00006) comes first
    assert info.value.bad.id == "00006"
    assert str(info.value) == f"{tmp_path.as_posix()}/images/00006.png: {info.value.bad.reason}"
    assert isinstance(info.value, DatasetError)

    # Without listing problems, "fail" yields the good pairs in order up to the first broken one.
    (tmp_path / "images/00006.png").unlink()
    reader = open_dataset("gta5", tmp_path)
    seen = []
    with pytest.raises(BadPairError, match=r"labels/00005\.png: size mismatch") as info:
        for sample in reader.iter_samples("fail"):
            seen.append(sample.id)
    assert seen == ["00001", "00002", "00003", "00004"]


def test_skip_policy_without_callback_and_bad_policy(tmp_path):
    make_gta5_tree(tmp_path)
    reader = open_dataset("gta5", tmp_path)
    assert [s.id for s in reader.iter_samples()] == ["00001", "00002", "00003", "00004"]
    with pytest.raises(ValueError, match="policy"):
        reader.iter_samples("ignore")


def test_file_vanishing_after_listing_is_a_bad_pair(tmp_path):
    make_gta5_tree(tmp_path, flaws=False)
    reader = open_dataset("gta5", tmp_path)
    (tmp_path / "labels/00002.png").unlink()
    samples, bad = collect(reader)
    assert [s.id for s in samples] == ["00001", "00003", "00004"]
    assert [(b.id, b.file) for b in bad] == [("00002", "labels/00002.png")]
    with pytest.raises(BadPairError, match="missing"):
        reader.load(reader.entries()[1])


def test_decompression_bomb_guard_is_on():
    assert Image.MAX_IMAGE_PIXELS == base.MAX_IMAGE_PIXELS >= 2048 * 1024


def test_label_ids_outside_range_listed(tmp_path):
    label = np.full((8, 8), 7, np.uint8)
    label[0, 0], label[1, 1] = 34, 255
    write_rgb(tmp_path / "images/x.png", np.arange(192, dtype=np.uint8).reshape(8, 8, 3))
    write_label(tmp_path / "labels/x.png", label)
    reader = open_dataset("folder", tmp_path)
    with pytest.raises(BadPairError, match=r"labels/x\.png: label ids outside 0\.\.33: 34, 255"):
        reader.load(reader.entries()[0])


@pytest.mark.parametrize(
    ("kind", "setup", "split", "message"),
    [
        ("nope", lambda p: None, None, "unknown dataset kind 'nope'"),
        ("gta5", lambda p: p.rmdir(), None, "does not exist"),
        ("gta5", lambda p: None, None, "images: missing directory"),
        ("gta5", lambda p: (p / "images").mkdir() or (p / "labels").mkdir(), None, "no usable gta5 entries"),
        ("synthia", lambda p: make_synthia_tree(p, flaws=False), "val", "split 'val' is not one of"),
        ("folder", lambda p: make_folder_tree(p, flaws=False), "oracle", "split 'oracle' is not one of"),
        ("folder", lambda p: make_folder_tree(p, flaws=False), "val", "val/images: missing directory"),
    ],
)
def test_open_dataset_errors_name_the_path(tmp_path, kind, setup, split, message):
    root = tmp_path / "root"
    root.mkdir()
    setup(root)
    with pytest.raises(DatasetError, match=message) as info:
        open_dataset(kind, root, split=split)
    assert str(root) in str(info.value)
    assert "\n" not in str(info.value)


def test_unlabelled_folder_lists_every_image(tmp_path):
    make_folder_tree(tmp_path)
    reader = open_dataset("folder", tmp_path, labelled=False)
    assert [e.id for e in reader.entries()] == ["a", "b", "d", "e", "f"]
    samples, bad = collect(reader)
    assert [s.id for s in samples] == ["a", "b", "d"]
    assert sorted(b.id for b in bad) == ["c", "e", "f"]


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_read_png16_is_exact_for_every_16_bit_value(tmp_path, channels):
    values = np.random.default_rng(channels).integers(0, 65536, size=(13, 11, channels), dtype=np.uint16)
    values[0, :4, 0] = [0, 255, 256, 65535]  # byte boundaries
    write_png16(tmp_path / "x.png", values)
    np.testing.assert_array_equal(read_png16(tmp_path / "x.png"), values)


def test_folder_split_subdirectories(tmp_path):
    tree = make_folder_tree(tmp_path / "val", flaws=False)
    reader = open_dataset("folder", tmp_path, split="val")
    assert [(e.id, e.image, e.label, e.split) for e in reader.entries()] == [
        ("a", "val/images/a.png", "val/labels/a.png", "val"),
        ("b", "val/images/b.jpg", "val/labels/b.png", "val"),
    ]
    np.testing.assert_array_equal(reader.load(reader.entries()[0]).label, tree.labels["a"])


def test_cityscapes_train_extra_is_read_unlabelled(tmp_path):
    rng = np.random.default_rng(0)
    image = scene_image(rng, scene_label(rng, 8, 16))
    write_rgb(tmp_path / "leftImg8bit/train_extra/augsburg/augsburg_000000_000000_leftImg8bit.png", image)
    reader = open_dataset("cityscapes", tmp_path, split="train_extra", labelled=False)
    assert [(e.id, e.split) for e in reader.entries()] == [("augsburg_000000_000000", "train_extra")]
    with pytest.raises(DatasetError, match="gtFine/train_extra: missing directory"):
        open_dataset("cityscapes", tmp_path, split="train_extra")
