"""dasgen.labels against the official Cityscapes table (as torchvision ships it) and the SYNTHIA class list."""

from __future__ import annotations

import numpy as np
import pytest
from torchvision.datasets import Cityscapes

from dasgen import labels as L

OFFICIAL = [c for c in Cityscapes.classes if c.id >= 0]  # drops "license plate" (id -1, never in label images)

# SYNTHIA-RAND-CITYSCAPES README: class id -> name, written here by the Cityscapes name it corresponds to
# (None: no Cityscapes training class, so it must come out as ignore).
SYNTHIA_CLASSES = {
    0: None,  # void
    1: "sky",
    2: "building",
    3: "road",
    4: "sidewalk",
    5: "fence",
    6: "vegetation",
    7: "pole",
    8: "car",
    9: "traffic sign",
    10: "person",  # pedestrian
    11: "bicycle",
    12: "motorcycle",
    13: None,  # parking-slot
    14: None,  # road-work
    15: "traffic light",
    16: "terrain",
    17: "rider",
    18: "truck",
    19: "bus",
    20: "train",
    21: "wall",
    22: None,  # lanemarking
}


def test_table_matches_official_cityscapes_labels():
    assert [label.id for label in L.CITYSCAPES_LABELS] == list(range(34))
    for ours, official in zip(L.CITYSCAPES_LABELS, OFFICIAL, strict=True):
        assert (ours.name, ours.id, ours.train_id) == (official.name, official.id, official.train_id)
        assert (ours.category, ours.category_id) == (official.category, official.category_id)
        assert ours.has_instances == official.has_instances
        assert ours.ignore_in_eval == official.ignore_in_eval
        assert tuple(ours.color) == tuple(official.color)


def test_id_to_train_id_and_back():
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)  # any shape works
    expected = np.array([c.train_id for c in OFFICIAL], dtype=np.uint8).reshape(2, 17)
    np.testing.assert_array_equal(L.id_to_train_id(ids), expected)
    # Values outside the table are ignore, not an IndexError or a wrong class.
    assert L.id_to_train_id(np.array([34, 200, 255])).tolist() == [255, 255, 255]
    train_ids = np.arange(19, dtype=np.uint8)
    back = L.train_id_to_id(train_ids)
    assert [OFFICIAL[i].train_id for i in back] == list(range(19))
    assert [L.LABEL_BY_ID[int(i)].name for i in back] == list(L.TRAIN_ID_NAMES)
    assert L.train_id_to_id(np.array([255])).tolist() == [0]  # ignore -> unlabeled


def test_colour_lookups():
    ids = np.arange(34)
    np.testing.assert_array_equal(L.id_to_color(ids), np.array([c.color for c in OFFICIAL], dtype=np.uint8))
    train_colours = L.train_id_to_color(np.array([*range(19), 255]))
    expected = [next(c.color for c in OFFICIAL if c.train_id == t) for t in range(19)] + [(0, 0, 0)]
    np.testing.assert_array_equal(train_colours, np.array(expected, dtype=np.uint8))
    palette = L.color_palette()
    assert len(palette) == 768
    assert tuple(palette[3 * 26 : 3 * 26 + 3]) == (0, 0, 142)  # index 26 (car) has car's colour


@pytest.mark.parametrize("synthia_id", sorted(SYNTHIA_CLASSES))
def test_synthia_mapping(synthia_id):
    mapped = int(L.synthia_to_id(np.array([synthia_id], dtype=np.uint16))[0])
    name = SYNTHIA_CLASSES[synthia_id]
    if name is None:
        assert L.LABEL_BY_ID[mapped].train_id == L.IGNORE_INDEX
    else:
        assert L.LABEL_BY_ID[mapped].name == name
        assert L.LABEL_BY_ID[mapped].train_id != L.IGNORE_INDEX


def test_synthia_mapping_handles_16_bit_values_and_shapes():
    values = np.array([[3, 256 + 3], [65535, 8]], dtype=np.uint16)  # 259 must not wrap around to 3 (road)
    out = L.synthia_to_id(values)
    assert out.dtype == np.uint8 and out.shape == (2, 2)
    assert out.tolist() == [[7, 0], [0, 26]]


def test_protocols_by_name():
    names = {t: L.TRAIN_ID_NAMES[t] for t in range(19)}
    assert L.PROTOCOLS[19] == tuple(range(19))
    sixteen = {names[t] for t in L.PROTOCOLS[16]}
    assert sixteen == set(names.values()) - {"terrain", "truck", "train"}
    thirteen = {names[t] for t in L.PROTOCOLS[13]}
    assert thirteen == sixteen - {"wall", "fence", "pole"}
    for n in (16, 13):
        assert len(L.PROTOCOLS[n]) == n and list(L.PROTOCOLS[n]) == sorted(L.PROTOCOLS[n])
