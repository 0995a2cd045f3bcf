"""inspect_dataset / format_report on the fake trees of fake_trees.py."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from helpers.fake_trees import make_cityscapes_tree, make_folder_tree, make_gta5_tree, make_synthia_tree

from dasgen.datasets.inspect import MAX_BAD_SHOWN, format_report, inspect_dataset
from dasgen.datasets.registry import open_dataset
from dasgen.labels import CITYSCAPES_LABELS, synthia_to_id

BUILDERS = {
    "gta5": make_gta5_tree,
    "synthia": make_synthia_tree,
    "cityscapes": make_cityscapes_tree,
    "folder": make_folder_tree,
}


def expected_class_pixels(kind, tree) -> Counter:
    """trainId -> pixels over the good labels, counted through the label table's rows (not the lookup arrays)."""
    train_id_of = {label.id: label.train_id for label in CITYSCAPES_LABELS}
    counts: Counter = Counter()
    for labels in tree.labels.values():
        ids = synthia_to_id(labels) if kind == "synthia" else labels
        values, sizes = np.unique(ids, return_counts=True)
        for value, size in zip(values, sizes):
            counts[train_id_of[int(value)]] += int(size)
    return counts


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_report_counts(kind, tmp_path):
    tree = BUILDERS[kind](tmp_path)
    report = inspect_dataset(open_dataset(kind, tmp_path))
    assert report["kind"] == kind and report["root"] == str(tmp_path)
    assert report["pairs"] == len(tree.good)
    assert [b["id"] for b in report["bad"]] == sorted(tree.bad)
    for item in report["bad"]:
        assert tree.bad[item["id"]] in item["reason"]
    assert report["sizes"] == dict(tree.sizes())
    expected = expected_class_pixels(kind, tree)
    assert set(report["class_pixels"]) == {*range(19), 255}
    assert {t: n for t, n in report["class_pixels"].items() if n} == dict(expected)
    assert sum(report["class_pixels"].values()) == sum(lab.size for lab in tree.labels.values())


def test_synthia_report_sees_real_classes(tmp_path):
    make_synthia_tree(tmp_path, flaws=False)
    pixels = inspect_dataset(open_dataset("synthia", tmp_path))["class_pixels"]
    for train_id in (0, 2, 3, 5, 10, 13):  # road, building, wall, pole, sky, car are in the fake scenes
        assert pixels[train_id] > 0


def test_unlabelled_report_has_no_class_pixels(tmp_path):
    make_cityscapes_tree(tmp_path, flaws=False)
    report = inspect_dataset(open_dataset("cityscapes", tmp_path, labelled=False))
    assert report["pairs"] == 5 and report["class_pixels"] == {} and report["bad"] == []


def test_report_is_json_ready_and_formats(tmp_path, capsys):
    make_gta5_tree(tmp_path)
    report = inspect_dataset(open_dataset("gta5", tmp_path), progress=True)
    assert "inspect gta5" in capsys.readouterr().err  # the progress bar went to stderr
    round_trip = json.loads(json.dumps(report))
    assert round_trip["class_pixels"]["0"] == report["class_pixels"][0]
    for text in (format_report(report), format_report(round_trip)):
        flowed = " ".join(text.split())  # the console wraps at its width, wherever the temp path ends
        assert "gta5 at" in text and "4 usable pairs, 7 bad" in flowed
        assert "32x20" in text and "road" in text and "ignore" in text
        assert "00005" in text and "size mismatch" in text


def test_format_report_caps_the_bad_list():
    bad = [{"id": f"{i:05d}", "reason": "blank frame", "file": f"images/{i:05d}.png"} for i in range(MAX_BAD_SHOWN + 5)]
    report = {"kind": "gta5", "root": "/data/gta5", "pairs": 0, "bad": bad, "sizes": {}, "class_pixels": {}}
    text = format_report(report)
    assert f"{bad[MAX_BAD_SHOWN - 1]['id']}" in text and bad[MAX_BAD_SHOWN]["id"] not in text
    assert "and 5 more bad pairs" in text


def test_files_no_run_reads_are_reported(tmp_path):
    make_gta5_tree(tmp_path, flaws=False, split_mat=False)
    (tmp_path / "labels" / "99999.png").write_bytes((tmp_path / "labels" / "00001.png").read_bytes())  # no image
    (tmp_path / "images" / "extra").mkdir()  # the reader does not recurse
    (tmp_path / "images" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "broken-link").symlink_to("missing-target")
    report = inspect_dataset(open_dataset("gta5", tmp_path))
    unread = {item["path"]: item["reason"] for item in report["unread"]}
    assert unread == {
        "labels/99999.png": "orphan label (no image with its id)",
        "images/extra": "stray directory (not read: dataset folders are not searched recursively)",
        "images/gone.png": "dangling symlink",
        "notes/broken-link": "dangling symlink",
    }
    text = format_report(json.loads(json.dumps(report)))
    assert "not read by any run" in text and "labels/99999.png" in text


def test_a_clean_tree_has_nothing_unread(tmp_path):
    make_gta5_tree(tmp_path, flaws=False, split_mat=False)
    assert inspect_dataset(open_dataset("gta5", tmp_path))["unread"] == []
