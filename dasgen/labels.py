"""Label tables as data: Cityscapes, GTA5 and SYNTHIA, and the 19/16/13-class evaluation protocols.

The Cityscapes table is copied from the official cityscapesScripts ``helpers/labels.py`` (the 34 labels with ids 0-33;
the official table's extra ``license plate`` entry has id -1 and never appears in a label image, so it is left out).
GTA5 label images store Cityscapes label ids directly. SYNTHIA-RAND-CITYSCAPES stores its own ids, mapped here with
the table used across the domain-adaptation literature (ADVENT, DAFormer).

Every conversion is a vectorised lookup through a 256-entry table, so it works on arrays of any shape.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE_INDEX = 255
"""trainId (and our internal label value) for pixels that get no loss, no guidance and no score."""

NUM_TRAIN_CLASSES = 19


class Label(NamedTuple):
    """One Cityscapes label, with the fields of cityscapesScripts' ``Label``."""

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# fmt: off
CITYSCAPES_LABELS: tuple[Label, ...] = (
    #      name                     id  trainId  category        catId  instances ignore  color
    Label("unlabeled",              0,  255,     "void",         0,     False,    True,   (0, 0, 0)),
    Label("ego vehicle",            1,  255,     "void",         0,     False,    True,   (0, 0, 0)),
    Label("rectification border",   2,  255,     "void",         0,     False,    True,   (0, 0, 0)),
    Label("out of roi",             3,  255,     "void",         0,     False,    True,   (0, 0, 0)),
    Label("static",                 4,  255,     "void",         0,     False,    True,   (0, 0, 0)),
    Label("dynamic",                5,  255,     "void",         0,     False,    True,   (111, 74, 0)),
    Label("ground",                 6,  255,     "void",         0,     False,    True,   (81, 0, 81)),
    Label("road",                   7,  0,       "flat",         1,     False,    False,  (128, 64, 128)),
    Label("sidewalk",               8,  1,       "flat",         1,     False,    False,  (244, 35, 232)),
    Label("parking",                9,  255,     "flat",         1,     False,    True,   (250, 170, 160)),
    Label("rail track",             10, 255,     "flat",         1,     False,    True,   (230, 150, 140)),
    Label("building",               11, 2,       "construction", 2,     False,    False,  (70, 70, 70)),
    Label("wall",                   12, 3,       "construction", 2,     False,    False,  (102, 102, 156)),
    Label("fence",                  13, 4,       "construction", 2,     False,    False,  (190, 153, 153)),
    Label("guard rail",             14, 255,     "construction", 2,     False,    True,   (180, 165, 180)),
    Label("bridge",                 15, 255,     "construction", 2,     False,    True,   (150, 100, 100)),
    Label("tunnel",                 16, 255,     "construction", 2,     False,    True,   (150, 120, 90)),
    Label("pole",                   17, 5,       "object",       3,     False,    False,  (153, 153, 153)),
    Label("polegroup",              18, 255,     "object",       3,     False,    True,   (153, 153, 153)),
    Label("traffic light",          19, 6,       "object",       3,     False,    False,  (250, 170, 30)),
    Label("traffic sign",           20, 7,       "object",       3,     False,    False,  (220, 220, 0)),
    Label("vegetation",             21, 8,       "nature",       4,     False,    False,  (107, 142, 35)),
    Label("terrain",                22, 9,       "nature",       4,     False,    False,  (152, 251, 152)),
    Label("sky",                    23, 10,      "sky",          5,     False,    False,  (70, 130, 180)),
    Label("person",                 24, 11,      "human",        6,     True,     False,  (220, 20, 60)),
    Label("rider",                  25, 12,      "human",        6,     True,     False,  (255, 0, 0)),
    Label("car",                    26, 13,      "vehicle",      7,     True,     False,  (0, 0, 142)),
    Label("truck",                  27, 14,      "vehicle",      7,     True,     False,  (0, 0, 70)),
    Label("bus",                    28, 15,      "vehicle",      7,     True,     False,  (0, 60, 100)),
    Label("caravan",                29, 255,     "vehicle",      7,     True,     True,   (0, 0, 90)),
    Label("trailer",                30, 255,     "vehicle",      7,     True,     True,   (0, 0, 110)),
    Label("train",                  31, 16,      "vehicle",      7,     True,     False,  (0, 80, 100)),
    Label("motorcycle",             32, 17,      "vehicle",      7,     True,     False,  (0, 0, 230)),
    Label("bicycle",                33, 18,      "vehicle",      7,     True,     False,  (119, 11, 32)),
)

# SYNTHIA-RAND-CITYSCAPES class id -> Cityscapes trainId (ADVENT / DAFormer convention). Ids not listed
# (0 void, 13 parking-slot, 14 road-work, 22 lanemarking) are ignored.
SYNTHIA_TO_TRAIN_ID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9,
    1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}
# fmt: on

# Evaluation protocols: which trainIds are averaged into the mIoU.
PROTOCOLS: dict[int, tuple[int, ...]] = {
    19: tuple(range(19)),  # GTA5 -> Cityscapes
    16: (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),  # SYNTHIA -> Cityscapes (no terrain, truck, train)
    13: (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),  # the 16-class set without wall, fence, pole
}

LABEL_BY_ID: dict[int, Label] = {label.id: label for label in CITYSCAPES_LABELS}
LABEL_BY_TRAIN_ID: dict[int, Label] = {
    label.train_id: label for label in CITYSCAPES_LABELS if label.train_id != IGNORE_INDEX
}
TRAIN_ID_NAMES: tuple[str, ...] = tuple(LABEL_BY_TRAIN_ID[t].name for t in range(NUM_TRAIN_CLASSES))


def _table(pairs: dict[int, int], fill: int) -> np.ndarray:
    table = np.full(256, fill, dtype=np.uint8)
    for key, value in pairs.items():
        table[key] = value
    return table


# 256-entry lookup tables (uint8 in, uint8 out). Unknown ids map to ignore / unlabeled.
ID_TO_TRAIN_ID = _table({label.id: label.train_id for label in CITYSCAPES_LABELS}, IGNORE_INDEX)
TRAIN_ID_TO_ID = _table({t: label.id for t, label in LABEL_BY_TRAIN_ID.items()}, 0)
SYNTHIA_ID_TO_ID = _table({s: int(TRAIN_ID_TO_ID[t]) for s, t in SYNTHIA_TO_TRAIN_ID.items()}, 0)
ID_TO_COLOR = np.zeros((256, 3), dtype=np.uint8)
for _label in CITYSCAPES_LABELS:
    ID_TO_COLOR[_label.id] = _label.color
TRAIN_ID_TO_COLOR = np.zeros((256, 3), dtype=np.uint8)
for _t, _label in LABEL_BY_TRAIN_ID.items():
    TRAIN_ID_TO_COLOR[_t] = _label.color


def id_to_train_id(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids -> trainIds (255 = ignore), any shape, uint8."""
    return ID_TO_TRAIN_ID[np.asarray(label_ids, dtype=np.uint8)]


def train_id_to_id(train_ids: np.ndarray) -> np.ndarray:
    """trainIds -> Cityscapes label ids; ignore (255) becomes 0 = unlabeled."""
    return TRAIN_ID_TO_ID[np.asarray(train_ids, dtype=np.uint8)]


def id_to_color(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids -> RGB colours, shape (..., 3), as in ``_gtFine_color.png``."""
    return ID_TO_COLOR[np.asarray(label_ids, dtype=np.uint8)]


def train_id_to_color(train_ids: np.ndarray) -> np.ndarray:
    """trainIds -> RGB colours, shape (..., 3); ignore is black."""
    return TRAIN_ID_TO_COLOR[np.asarray(train_ids, dtype=np.uint8)]


def synthia_to_id(synthia_ids: np.ndarray) -> np.ndarray:
    """SYNTHIA-RAND-CITYSCAPES class ids (first channel of ``GT/LABELS``) -> Cityscapes label ids."""
    ids = np.asarray(synthia_ids)
    out = np.zeros(ids.shape, dtype=np.uint8)
    valid = (ids >= 0) & (ids < 256)
    out[valid] = SYNTHIA_ID_TO_ID[ids[valid].astype(np.uint8)]
    return out


def color_palette() -> list[int]:
    """A 768-entry Pillow palette whose index is the Cityscapes label id (GTA5's ``labels/`` mode-P convention)."""
    return ID_TO_COLOR.reshape(-1).tolist()
