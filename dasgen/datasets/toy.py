"""Procedural toy domains: a GTA5-like source and a Cityscapes-like target of tiny street scenes.

The toy lets the whole pipeline run out of the box on a CPU in minutes. It stands in for GTA5 -> Cityscapes, so it
has the same *kind* of gap, not just any gap:

* **One layout generator for both domains.** Every scene is a street seen from a car: a perspective road with lane
  markings, sidewalks, building facades with windows (or a park: grass and a tree line), a far skyline, the sky,
  and small objects -- cars, poles with traffic signs, persons -- placed in metres and projected
  with a pinhole camera. Source and target draw their scenes from the same distribution, so the label statistics
  match and only the look differs.
* **Most of the gap is rendering** (:data:`SOURCE_LOOK` vs :data:`TARGET_LOOK`). The source is "game-like": hard
  sun with cast shadows, saturated colours, a blue sky, clean flat textures, sharp edges. The target is "camera-
  like": soft overcast light, a pale sky, haze, desaturated colour grading, varying exposure, vignetting, grain and
  texture, a slight blur. Class colours are *shifted* (roads are grey in both; buildings more often concrete, cars
  and clothes duller, poles darker).
* **Some of the gap is confusing colour** (``colour_swap``): in the target, sidewalks are red brick paving (the
  source's sidewalks are pale, its brick is on buildings), the grass (terrain) is green where the source's is dry
  khaki -- the colour of the source's vegetation -- and foliage is dark. A segmenter that learnt colour shortcuts
  on the source fails there; one that uses layout and shape does not.

Measured at 32x64 with a 6-layer CNN (1500 Adam steps, batch 16, 300 training images; mIoU over the 10 classes on
the 100 target val images): trained on the source, 42 mIoU (91 on source images); trained on other target images
(the oracle), 91. The source-only model fails on the swapped classes (sidewalk 39, terrain 30) and on the small
objects, which the target's blur, haze and duller colours hide (pole 8, sign 2, person 15, car 35).

Every image has its own ``numpy.random.Generator`` derived from (seed, domain, split, index); the layout and the
rendering use separate child streams, so changing a rendering knob keeps every layout. Files are written in GTA5
layout (source) and Cityscapes layout (target) so the ordinary readers load them.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from dasgen.errors import DasgenError
from dasgen.labels import LABEL_BY_ID, color_palette, id_to_color, id_to_train_id
from dasgen.io.atomic import atomic_write_bytes, atomic_write_json, is_temp_name

TOY_FORMAT_VERSION = 1
CITY = "toytown"

# Cityscapes label ids used by the toy (dasgen.labels.CITYSCAPES_LABELS).
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = 7, 8, 11, 17, 20, 21, 22, 23, 24, 26
TOY_LABEL_IDS: tuple[int, ...] = (ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR)
TOY_CLASSES: tuple[str, ...] = tuple(LABEL_BY_ID[i].name for i in TOY_LABEL_IDS)

# Part codes: sub-regions of a class drawn with another colour (the label stays the class's).
PLAIN, GLASS, TYRE, SKIN, LEGS, MARKING, BORDER = range(7)

# Camera, in metres: a car-mounted camera like Cityscapes' (1.2 m high, about 50 degrees of horizontal view).
CAMERA_HEIGHT = 1.3
FOCAL = 1.0  # focal length in units of the image width: horizontal field of view 2*atan(0.5) = 53 degrees
NEAR = 5.5  # closest object depth (m), so nothing covers the whole frame
_NOWHERE = 1e9  # depth (m) standing for "not on this surface": finite, so the modulo arithmetic stays quiet


# ----------------------------------------------------------------------------------------------------------------
# Seeding
# ----------------------------------------------------------------------------------------------------------------
def sample_rngs(seed: int, domain: str, split: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(layout, rendering) generators of one image, from sha256 of ``"toy/{seed}/{domain}/{split}/{index}"``.

    A hash, not a running RNG, so any image can be made alone, in any order, by any process.
    """
    digest = hashlib.sha256(f"toy/{seed}/{domain}/{split}/{index}".encode()).digest()
    layout, rendering = np.random.SeedSequence(int.from_bytes(digest[:16], "little")).spawn(2)
    return np.random.default_rng(layout), np.random.default_rng(rendering)


# ----------------------------------------------------------------------------------------------------------------
# Layout: one street scene, labels plus the geometry the renderer needs
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Scene:
    """A layout, independent of the rendering: per-pixel maps (H, W) and per-instance classes.

    ``inst`` indexes ``inst_class`` (every region -- the road, one building, one car -- is an instance, so the
    renderer gives each its own colour); ``part`` marks sub-regions (windows, tyres, lane markings...); ``shadow``
    is 1 where the sun would be blocked (only sunny looks use it); ``depth`` is metres along the view axis
    (inf for the sky), for haze.
    """

    label: np.ndarray
    inst: np.ndarray
    part: np.ndarray
    shadow: np.ndarray
    depth: np.ndarray
    horizon: float
    inst_class: list[int] = field(default_factory=list)

    def add(self, cls: int) -> int:
        """Register an instance of Cityscapes label id ``cls``; returns its index."""
        self.inst_class.append(cls)
        return len(self.inst_class) - 1

    def paint(self, mask: np.ndarray, cls: int, inst: int, depth: np.ndarray | float, part: int = PLAIN) -> None:
        """Painter's algorithm: ``mask`` pixels become this class/instance (callers paint far to near)."""
        self.label[mask] = cls
        self.inst[mask] = inst
        self.part[mask] = part
        self.depth[mask] = depth[mask] if isinstance(depth, np.ndarray) else depth
        self.shadow[mask] = 0.0


@dataclass(frozen=True)
class _Facade:
    """A stretch of wall (building) or tree line along one side of the street, between depths z0 and z1."""

    z0: float
    z1: float
    cls: int  # BUILDING, VEGETATION, or 0 for a gap
    top: float  # height in metres
    inst: int
    bumps: tuple[float, float, float] = (0.0, 1.0, 0.0)  # tree lines: amplitude (m), period (m), phase


def _span(a: float, b: float, n: int) -> slice:
    """Pixel columns/rows covered by the continuous interval [a, b): at least one pixel, clipped to [0, n)."""
    i0 = int(np.floor(a + 0.5))
    i1 = max(int(np.floor(b + 0.5)), i0 + 1)
    return slice(min(max(i0, 0), n), min(max(i1, 0), n))


def _facades(rng: np.random.Generator, scene: Scene, kind: str, far: float) -> list[_Facade]:
    """The facade stretches of one side: a row of buildings (with a few tree-filled gaps) or a tree line."""
    out: list[_Facade] = []
    z = float(rng.uniform(0.0, 4.0))
    while z < far:
        if kind == "park":
            length = float(rng.uniform(15.0, 40.0))
            cls, top = VEGETATION, float(rng.uniform(4.0, 10.0))
            bumps = (float(rng.uniform(0.5, 2.0)), float(rng.uniform(3.0, 8.0)), float(rng.uniform(0, 2 * np.pi)))
        else:
            length = float(rng.uniform(8.0, 28.0))
            draw = rng.random()
            if draw < 0.12:
                cls, top = 0, 0.0  # an open gap: the terrain and sky beyond show
                length *= 0.5
                bumps = (0.0, 1.0, 0.0)
            elif draw < 0.27:
                cls, top = VEGETATION, float(rng.uniform(3.5, 8.0))
                bumps = (float(rng.uniform(0.5, 1.5)), float(rng.uniform(2.0, 5.0)), float(rng.uniform(0, 2 * np.pi)))
            else:
                cls, top = BUILDING, float(rng.uniform(6.0, 26.0))
                bumps = (0.0, 1.0, 0.0)
        inst = scene.add(cls) if cls else -1
        out.append(_Facade(z, min(z + length, far), cls, top, inst, bumps))
        z += length
    return out


def _top_at(stretches: list[_Facade], z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Facade height, class and instance at depths ``z`` (0 / 0 / -1 where there is no facade)."""
    top = np.zeros(z.shape)
    cls = np.zeros(z.shape, dtype=np.int64)
    inst = np.full(z.shape, -1, dtype=np.int64)
    for s in stretches:
        inside = (z >= s.z0) & (z < s.z1)
        if s.cls:
            amp, period, phase = s.bumps
            top[inside] = s.top + amp * np.sin(2 * np.pi * z[inside] / period + phase)
            cls[inside] = s.cls
            inst[inside] = s.inst
    return top, cls, inst


def make_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """Draw one street layout of ``height`` x ``width`` pixels.

    Geometry: pinhole camera at height CAMERA_HEIGHT looking down a straight street; a ground point at lateral X and
    depth Z projects to x = vx + f X / Z, y = horizon + f (CAMERA_HEIGHT - h) / Z for a point h metres high.
    """
    H, W = height, width
    f = FOCAL * W
    horizon = H * float(rng.uniform(0.36, 0.48))
    vx = W * float(rng.uniform(0.4, 0.6))
    ys = np.arange(H, dtype=np.float64)[:, None] + 0.5  # (H, 1) pixel-centre rows
    xs = np.arange(W, dtype=np.float64)[None, :] + 0.5  # (1, W) pixel-centre columns
    dx = np.broadcast_to(xs - vx, (H, W))
    dy = np.broadcast_to(ys - horizon, (H, W))

    scene = Scene(
        label=np.full((H, W), SKY, dtype=np.uint8),
        inst=np.zeros((H, W), dtype=np.int32),
        part=np.zeros((H, W), dtype=np.uint8),
        shadow=np.zeros((H, W), dtype=np.float32),
        depth=np.full((H, W), np.inf),
        horizon=horizon,
    )
    scene.add(SKY)  # instance 0

    # Street cross-section (metres): road from -road_l to road_r, then a sidewalk, then a wall or a park each side.
    road_l, road_r = float(rng.uniform(3.0, 7.0)), float(rng.uniform(3.0, 7.0))
    walk_l, walk_r = float(rng.uniform(1.8, 4.0)), float(rng.uniform(1.8, 4.0))
    kinds = ["park" if rng.random() < 0.3 else "buildings" for _ in range(2)]
    grass = [float(rng.uniform(3.0, 10.0)) if k == "park" else 0.0 for k in kinds]
    wall_x = [road_l + walk_l + grass[0], road_r + walk_r + grass[1]]  # lateral distance of each side's facade
    far = float(rng.uniform(90.0, 160.0))

    # 1. Far skyline: a frontal plane at depth `far` with buildings and tree clumps of varied height.
    x_far = dx * far / f  # lateral metres on that plane
    h_far = CAMERA_HEIGHT - dy * far / f  # height above ground on that plane
    edge = -float(rng.uniform(40.0, 60.0))
    while edge < 60.0:
        w_block = float(rng.uniform(8.0, 30.0))
        cls = BUILDING if rng.random() < 0.6 else VEGETATION
        top = float(rng.uniform(6.0, 30.0) if cls == BUILDING else rng.uniform(5.0, 12.0))
        if rng.random() < 0.2:
            top = 0.0
        inst = scene.add(cls)
        scene.paint((x_far >= edge) & (x_far < edge + w_block) & (h_far <= top) & (h_far >= 0), cls, inst, far)
        edge += w_block

    # 2. Ground (y below the horizon): lateral position X at ground depth Z.
    below = dy > 0
    z_ground = np.where(below, f * CAMERA_HEIGHT / np.maximum(dy, 1e-6), _NOWHERE)
    x_ground = dx * z_ground / f
    road_i, walk_i, grass_i, marking_i = scene.add(ROAD), scene.add(SIDEWALK), scene.add(TERRAIN), scene.add(ROAD)
    scene.paint(below, TERRAIN, grass_i, z_ground)  # beyond the sidewalks: grass (hidden by walls where present)
    on_walk = below & (x_ground > -road_l - walk_l) & (x_ground < road_r + walk_r)
    scene.paint(on_walk, SIDEWALK, walk_i, z_ground)
    on_road = below & (x_ground > -road_l) & (x_ground < road_r)
    scene.paint(on_road, ROAD, road_i, z_ground)
    # Dashed centre line: 0.15 m wide, 3 m dashes every 9 m, labelled road (as in Cityscapes).
    lane_x = float(rng.uniform(-0.5, 0.5)) * min(road_l, road_r)
    phase = float(rng.uniform(0.0, 9.0))
    dash = on_road & (np.abs(x_ground - lane_x) < 0.12 + 0.5 / np.maximum(f / z_ground, 1e-6))
    dash &= ((z_ground + phase) % 9.0) < 3.0
    scene.paint(dash, ROAD, marking_i, z_ground, MARKING)

    # 3. Facades (walls and tree lines) of both sides, with the sun's shadow on the ground.
    sun_side = 1 if rng.random() < 0.5 else -1  # the side whose facades face away from the sun
    sun_reach = float(rng.uniform(0.15, 0.7))  # shadow width on the ground per metre of facade height
    for side, kind, wall in ((-1, kinds[0], wall_x[0]), (1, kinds[1], wall_x[1])):
        stretches = _facades(rng, scene, kind, far)
        on_side = (dx * side) > 0
        z_wall = np.where(on_side, f * wall / np.maximum(np.abs(dx), 1e-6), _NOWHERE)
        h_wall = CAMERA_HEIGHT - dy * z_wall / f
        top, cls, inst = _top_at(stretches, z_wall)
        hit = on_side & (cls > 0) & (h_wall >= 0) & (h_wall <= top) & (z_wall < far)
        for c in (BUILDING, VEGETATION):
            m = hit & (cls == c)
            scene.paint(m, c, 0, z_wall)
            scene.inst[m] = inst[m]
        is_building = hit & (cls == BUILDING)
        # Windows on a 3 m x 3 m grid in facade coordinates, faded where the grid is finer than ~1.5 px.
        z_phase = float(rng.uniform(0.0, 3.0))
        window = ((z_wall + z_phase) % 3.0 < 1.4) & ((h_wall % 3.2) > 1.2) & ((h_wall % 3.2) < 2.6) & (h_wall > 3.0)
        px_per_period = 3.0 * f * wall / np.maximum(z_wall, 1e-6) ** 2
        scene.part[is_building & window & (px_per_period > 1.5)] = GLASS
        if side == sun_side:
            scene.shadow[hit] = 1.0
            ground_top, _, _ = _top_at(stretches, z_ground)
            shade = below & (x_ground * side > wall - sun_reach * ground_top) & (scene.label != BUILDING)
            scene.shadow[shade & ~hit] = 1.0

    # 4. Objects, far to near: cars on the road, poles with signs and persons on the sidewalks.
    objects: list[tuple[float, str, float]] = []
    for _ in range(int(min(rng.poisson(3.0), 6))):
        if rng.random() < 0.4:  # parked at a kerb
            x = (-road_l + 1.1) if rng.random() < 0.5 else (road_r - 1.1)
        else:
            x = float(rng.uniform(-road_l + 1.0, road_r - 1.0))
        objects.append((float(rng.uniform(NEAR + 1.5, 60.0)), "car", x))
    for _ in range(int(rng.integers(1, 5))):
        x = (-road_l - 0.4) if rng.random() < 0.5 else (road_r + 0.4)
        objects.append((float(rng.uniform(NEAR + 1.0, 45.0)), "pole", x))
    for _ in range(int(min(rng.poisson(1.5), 4))):
        side = -1 if rng.random() < 0.5 else 1
        walk = walk_l if side < 0 else walk_r
        road = road_l if side < 0 else road_r
        x = side * (road + float(rng.uniform(0.5, max(walk - 0.4, 0.6))))
        objects.append((float(rng.uniform(NEAR, 35.0)), "person", x))
    for z, kind, x in sorted(objects, key=lambda o: -o[0]):
        {"car": _car, "pole": _pole, "person": _person}[kind](rng, scene, z, x, f, vx)
    return scene


def _box(
    scene: Scene, z: float, x0: float, x1: float, h0: float, h1: float, f: float, vx: float
) -> tuple[slice, slice]:
    """Pixel rows/columns of a frontal rectangle at depth z: lateral [x0, x1], height [h0, h1] metres."""
    H, W = scene.label.shape
    cols = _span(vx + f * x0 / z, vx + f * x1 / z, W)
    rows = _span(scene.horizon + f * (CAMERA_HEIGHT - h1) / z, scene.horizon + f * (CAMERA_HEIGHT - h0) / z, H)
    return rows, cols


def _paint_box(scene: Scene, box: tuple[slice, slice], cls: int, inst: int, z: float, part: int = PLAIN) -> None:
    rows, cols = box
    scene.label[rows, cols] = cls
    scene.inst[rows, cols] = inst
    scene.part[rows, cols] = part
    scene.depth[rows, cols] = z
    scene.shadow[rows, cols] = 0.0  # objects stand in the sun (their own shading is left out)


def _car(rng: np.random.Generator, scene: Scene, z: float, x: float, f: float, vx: float) -> None:
    """A car seen from behind: body, a narrower cabin with a rear window, two tyres."""
    inst = scene.add(CAR)
    w, h = float(rng.uniform(1.7, 2.0)), float(rng.uniform(1.4, 1.7))
    x0, x1 = x - w / 2, x + w / 2
    _paint_box(scene, _box(scene, z, x0 + 0.1, x0 + 0.45, 0.0, 0.35, f, vx), CAR, inst, z, TYRE)
    _paint_box(scene, _box(scene, z, x1 - 0.45, x1 - 0.1, 0.0, 0.35, f, vx), CAR, inst, z, TYRE)
    _paint_box(scene, _box(scene, z, x0, x1, 0.3, 0.55 * h, f, vx), CAR, inst, z)
    _paint_box(scene, _box(scene, z, x0 + 0.15, x1 - 0.15, 0.55 * h, h, f, vx), CAR, inst, z)
    _paint_box(scene, _box(scene, z, x0 + 0.3, x1 - 0.3, 0.62 * h, 0.92 * h, f, vx), CAR, inst, z, GLASS)


def _pole(rng: np.random.Generator, scene: Scene, z: float, x: float, f: float, vx: float) -> None:
    """A pole; most carry a traffic sign (a plate with a white border where it is big enough) on the road side."""
    inst = scene.add(POLE)
    h = float(rng.uniform(4.5, 7.5))
    _paint_box(scene, _box(scene, z, x - 0.15, x + 0.15, 0.0, h, f, vx), POLE, inst, z)
    if rng.random() >= 0.65:
        return
    sign = scene.add(SIGN)
    size = float(rng.uniform(0.8, 1.2))
    cx = x - np.sign(x) * float(rng.uniform(0.0, 0.4))  # towards the road
    top = h - float(rng.uniform(0.0, 1.5))
    outer = _box(scene, z - 0.05, cx - size / 2, cx + size / 2, top - size, top, f, vx)
    inner = _box(scene, z - 0.05, cx - 0.32 * size, cx + 0.32 * size, top - 0.82 * size, top - 0.18 * size, f, vx)
    big = (outer[0].stop - outer[0].start) >= 4 and (outer[1].stop - outer[1].start) >= 4
    _paint_box(scene, outer, SIGN, sign, z, BORDER if big else PLAIN)
    if big:
        _paint_box(scene, inner, SIGN, sign, z)


def _person(rng: np.random.Generator, scene: Scene, z: float, x: float, f: float, vx: float) -> None:
    """A pedestrian: legs, torso (clothes), head (skin)."""
    inst = scene.add(PERSON)
    h = float(rng.uniform(1.55, 1.9))
    w = 0.5
    _paint_box(scene, _box(scene, z, x - w / 2 + 0.05, x + w / 2 - 0.05, 0.0, 0.48 * h, f, vx), PERSON, inst, z, LEGS)
    _paint_box(scene, _box(scene, z, x - w / 2, x + w / 2, 0.46 * h, 0.86 * h, f, vx), PERSON, inst, z)
    _paint_box(scene, _box(scene, z, x - 0.11, x + 0.11, 0.86 * h, h, f, vx), PERSON, inst, z, SKIN)


# ----------------------------------------------------------------------------------------------------------------
# Rendering: one look per domain
# ----------------------------------------------------------------------------------------------------------------
RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Look:
    """How a domain renders a scene. Colours are linear-ish RGB in [0, 1], before grading.

    ``palette`` gives each class a list of base colours, one drawn per instance then jittered by ``jitter``.
    Grading: saturation, per-channel ``tint``, ``contrast`` about 0.5, exposure drawn from ``exposure``. Light:
    ``shadow`` darkens sun-shadowed pixels (hard sun; 0 = overcast), ``vignette`` darkens corners, ``sky_gradient``
    brightens the sky towards the horizon, ``haze`` is the fraction of sky colour mixed into things 100 m away.
    Surface: ``texture`` amplitude of per-pixel texture, ``blur`` Gaussian sigma in pixels, ``noise`` sensor noise
    std.
    """

    palette: dict[int, tuple[RGB, ...]]
    jitter: float
    saturation: float
    tint: RGB
    contrast: float
    exposure: tuple[float, float]
    shadow: float
    vignette: float
    sky_gradient: float
    haze: float
    texture: float
    blur: float
    noise: float


_SOURCE_PALETTE: dict[int, tuple[RGB, ...]] = {
    ROAD: ((0.45, 0.45, 0.46), (0.5, 0.49, 0.48), (0.4, 0.4, 0.42)),
    SIDEWALK: ((0.78, 0.75, 0.68), (0.72, 0.72, 0.7), (0.82, 0.78, 0.7)),
    BUILDING: ((0.7, 0.38, 0.28), (0.8, 0.64, 0.45), (0.62, 0.45, 0.35), (0.6, 0.6, 0.62), (0.55, 0.52, 0.5)),
    VEGETATION: ((0.22, 0.58, 0.15), (0.3, 0.62, 0.2), (0.2, 0.5, 0.18)),
    TERRAIN: ((0.72, 0.64, 0.38), (0.68, 0.6, 0.35), (0.76, 0.7, 0.45)),
    SKY: ((0.35, 0.58, 0.85), (0.45, 0.65, 0.86), (0.6, 0.72, 0.86), (0.72, 0.78, 0.86)),
    CAR: ((0.85, 0.1, 0.1), (0.1, 0.25, 0.85), (0.95, 0.95, 0.95), (0.1, 0.1, 0.1), (0.95, 0.8, 0.1), (0.2, 0.6, 0.3)),
    POLE: ((0.68, 0.68, 0.68), (0.62, 0.62, 0.64)),
    SIGN: ((0.95, 0.85, 0.1), (0.9, 0.15, 0.1), (0.15, 0.35, 0.85)),
    PERSON: ((0.85, 0.2, 0.2), (0.2, 0.3, 0.8), (0.9, 0.9, 0.3), (0.2, 0.2, 0.25), (0.9, 0.5, 0.1)),
}

# The target's colours, shifted (not swapped) from the source's: duller, cooler, darker objects, more concrete.
_TARGET_PALETTE: dict[int, tuple[RGB, ...]] = {
    ROAD: ((0.4, 0.41, 0.43), (0.36, 0.37, 0.4), (0.44, 0.44, 0.46)),
    SIDEWALK: ((0.66, 0.64, 0.6), (0.6, 0.6, 0.6), (0.7, 0.66, 0.6)),
    BUILDING: ((0.62, 0.62, 0.6), (0.7, 0.68, 0.64), (0.56, 0.57, 0.58), (0.6, 0.45, 0.38), (0.68, 0.6, 0.5)),
    VEGETATION: ((0.25, 0.45, 0.18), (0.3, 0.48, 0.22), (0.22, 0.4, 0.18)),
    TERRAIN: ((0.6, 0.56, 0.4), (0.58, 0.54, 0.38), (0.64, 0.6, 0.44)),
    SKY: ((0.8, 0.85, 0.92), (0.86, 0.88, 0.92), (0.72, 0.8, 0.9), (0.9, 0.9, 0.92)),
    CAR: ((0.08, 0.08, 0.1), (0.55, 0.56, 0.58), (0.82, 0.82, 0.84), (0.15, 0.2, 0.35), (0.45, 0.1, 0.1), (0.3,) * 3),
    POLE: ((0.5, 0.5, 0.52), (0.45, 0.46, 0.48)),
    SIGN: ((0.9, 0.8, 0.25), (0.8, 0.2, 0.15), (0.2, 0.35, 0.75)),
    PERSON: ((0.15, 0.15, 0.18), (0.5, 0.35, 0.3), (0.25, 0.3, 0.55), (0.6, 0.55, 0.45), (0.65, 0.2, 0.2)),
}

# colour_swap=True: classes whose target colours mimic another class's source colours.
_TARGET_SWAPS: dict[int, tuple[RGB, ...]] = {
    SIDEWALK: ((0.62, 0.38, 0.32), (0.68, 0.44, 0.36), (0.58, 0.4, 0.36)),  # red brick paving ~ source buildings
    TERRAIN: ((0.3, 0.55, 0.2), (0.35, 0.58, 0.24), (0.28, 0.5, 0.2)),  # green grass ~ source vegetation
    VEGETATION: ((0.16, 0.26, 0.1), (0.2, 0.3, 0.12), (0.14, 0.22, 0.1)),  # dark foliage
}

SOURCE_LOOK = Look(
    palette=_SOURCE_PALETTE, jitter=0.04, saturation=1.15, tint=(1.0, 1.0, 1.0), contrast=1.1,
    exposure=(0.85, 1.15), shadow=0.45, vignette=0.0, sky_gradient=0.12, haze=0.1, texture=0.03, blur=0.0, noise=0.0,
)  # fmt: skip
TARGET_LOOK = Look(
    palette=_TARGET_PALETTE, jitter=0.05, saturation=0.85, tint=(0.96, 1.0, 0.98), contrast=0.95,
    exposure=(0.75, 1.05), shadow=0.1, vignette=0.2, sky_gradient=0.12, haze=0.15, texture=0.06, blur=0.35, noise=0.012,
)  # fmt: skip

# Surface texture amplitude per class, relative to Look.texture (vegetation is leafy, the sky smooth).
_TEXTURE_GAIN = {VEGETATION: 2.5, TERRAIN: 1.5, ROAD: 0.8, SIDEWALK: 0.8, BUILDING: 0.6, SKY: 0.15}
# Fixed part colours: glass, tyres, skin, legs (trousers), lane paint, sign borders.
_PART_COLOUR = {GLASS: (0.12, 0.16, 0.22), TYRE: (0.05, 0.05, 0.05), SKIN: (0.85, 0.65, 0.5), LEGS: (0.15, 0.15, 0.2),
                MARKING: (0.92, 0.92, 0.88), BORDER: (0.95, 0.95, 0.95)}  # fmt: skip


def appearance(rendering_gap: float = 1.0, colour_swap: bool = True) -> tuple[Look, Look]:
    """(source look, target look) for the two knobs.

    ``rendering_gap`` in [0, 1] blends every numeric setting and palette colour of the target from the source's
    (0: the target renders like the source) to :data:`TARGET_LOOK` (1). ``colour_swap`` gives the target its
    confusing colours (brick sidewalks, green grass, dark foliage) at full strength, whatever ``rendering_gap``.
    """
    if not 0.0 <= rendering_gap <= 1.0:
        raise DasgenError(f"toy rendering_gap must be in [0, 1], got {rendering_gap}")
    t = float(rendering_gap)

    def mix(a, b):  # noqa: ANN001, ANN202 - numbers or tuples of numbers
        if isinstance(a, tuple):
            return tuple(mix(u, v) for u, v in zip(a, b, strict=True))
        return (1 - t) * a + t * b

    palette = {c: mix(_SOURCE_PALETTE[c], _TARGET_PALETTE[c]) for c in _SOURCE_PALETTE}
    if colour_swap:
        palette.update(_TARGET_SWAPS)
    values = {
        f.name: mix(getattr(SOURCE_LOOK, f.name), getattr(TARGET_LOOK, f.name))
        for f in fields(Look)
        if f.name != "palette"
    }
    return SOURCE_LOOK, replace(TARGET_LOOK, palette=palette, **values)


def render(scene: Scene, look: Look, rng: np.random.Generator) -> np.ndarray:
    """Colour a scene with a look: uint8 (H, W, 3) RGB."""
    H, W = scene.label.shape
    # Per-instance base colour: a palette entry, jittered mostly in brightness (one (n, 3) table, then a gather).
    colours = np.empty((len(scene.inst_class), 3))
    for i, cls in enumerate(scene.inst_class):
        options = look.palette[cls]
        base = np.asarray(options[int(rng.integers(len(options)))])
        colours[i] = base * (1.0 + rng.normal(0.0, look.jitter)) + rng.normal(0.0, look.jitter / 3, 3)
    image = colours[scene.inst]  # (H, W, 3)

    for part, colour in _PART_COLOUR.items():
        image[scene.part == part] = colour
    glass = (scene.part == GLASS) & (scene.label == BUILDING)
    image[glass] = 0.275 * colours[scene.inst[glass]] + 0.45 * np.asarray(_PART_COLOUR[GLASS])  # tinted windows

    # Sky brightens towards the horizon.
    sky = scene.label == SKY
    rows = (np.arange(H, dtype=np.float64)[:, None] + 0.5) / max(scene.horizon, 1.0)  # 0 at top, 1 at horizon
    image[sky] += (look.sky_gradient * np.clip(np.broadcast_to(rows, (H, W)), 0, 1))[sky][:, None]

    # Texture: fine and coarse smooth noise, scaled per class.
    gain = np.zeros((H, W))
    for cls, g in _TEXTURE_GAIN.items():
        gain[scene.label == cls] = g
    fine = gaussian_filter(rng.standard_normal((H, W)), 0.6)
    coarse = gaussian_filter(rng.standard_normal((H, W)), 3.0)
    tex = look.texture * gain * (fine / (fine.std() + 1e-8) + 0.7 * coarse / (coarse.std() + 1e-8))
    image *= (1.0 + tex)[..., None]

    # Haze: distant things fade towards this image's sky colour (depth in metres; the sky itself is instance 0).
    fade = look.haze * (1.0 - np.exp(-np.minimum(scene.depth, 1e4) / 100.0)) / (1.0 - np.exp(-1.0))
    fade = np.where(sky, 0.0, np.clip(fade, 0.0, 1.0))[..., None]
    image = (1.0 - fade) * image + fade * colours[0]

    # Light: hard sun shadows, vignetting, exposure.
    image *= (1.0 - look.shadow * scene.shadow)[..., None]
    yy = (np.arange(H)[:, None] + 0.5) / H - 0.5
    xx = (np.arange(W)[None, :] + 0.5) / W - 0.5
    image *= (1.0 - look.vignette * (xx**2 + yy**2) * 2.0)[..., None]
    # Auto-exposure is set for the street, so the sky changes only a little with it (it is near clipping).
    exposure = float(rng.uniform(*look.exposure))
    image *= np.where(sky, 1.0 + 0.3 * (exposure - 1.0), exposure)[..., None]

    # Grading: saturation about the luminance, tint, contrast about mid grey.
    luma = image @ np.array([0.299, 0.587, 0.114])
    image = luma[..., None] + look.saturation * (image - luma[..., None])
    image = image * np.asarray(look.tint)
    image = 0.5 + look.contrast * (image - 0.5)

    if look.blur > 0:
        image = gaussian_filter(image, sigma=(look.blur, look.blur, 0.0))
    if look.noise > 0:
        image = image + rng.normal(0.0, look.noise, image.shape)
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def toy_sample(
    domain: str,
    split: str,
    index: int,
    *,
    seed: int = 0,
    height: int = 32,
    width: int = 64,
    rendering_gap: float = 1.0,
    colour_swap: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One toy image and its labels: (uint8 (H, W, 3) RGB, uint8 (H, W) Cityscapes label ids).

    ``domain`` "source" or "target" picks the look; ``split`` names the stream the image belongs to (any string:
    "train", "val", or e.g. "oracle" for extra labelled target images), so each split has its own scenes.
    """
    if domain not in ("source", "target"):
        raise DasgenError(f"toy domain must be 'source' or 'target', got {domain!r}")
    _check_size(height, width)
    source_look, target_look = appearance(rendering_gap, colour_swap)
    return _sample(source_look if domain == "source" else target_look, domain, split, index, seed, height, width)


def _check_size(height: int, width: int) -> None:
    if height < 8 or width < 8:
        raise DasgenError(f"toy height and width must be at least 8 pixels, got {height}x{width}")


def _sample(look: Look, domain: str, split: str, index: int, seed: int, height: int, width: int):  # noqa: ANN202
    layout_rng, render_rng = sample_rngs(seed, domain, split, index)
    scene = make_scene(layout_rng, height, width)
    return render(scene, look, render_rng), scene.label


# ----------------------------------------------------------------------------------------------------------------
# Writing the two datasets
# ----------------------------------------------------------------------------------------------------------------
def _png(image: Image.Image) -> bytes:
    """PNG bytes with no metadata (so the same pixels give the same bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _label_png(label: np.ndarray) -> bytes:
    """GTA5-style label: mode P whose index is the Cityscapes label id, with the Cityscapes colours."""
    image = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
    image.putpalette(color_palette())
    return _png(image)


def _write(path: Path, data: bytes, written: set[Path]) -> None:
    atomic_write_bytes(path, data, fsync=False)
    written.add(path)


_OWNED_NAME = re.compile(r"^(\d{5}\.png|" + CITY + r"_000000_\d{6}_(leftImg8bit|gtFine_labelIds|gtFine_labelTrainIds"
                         r"|gtFine_color)\.png)$")  # the only file names generate_toy writes in its folders


def _prune(dirs: Iterable[Path], keep: set[Path]) -> None:
    """Remove toy files a previous run with other counts left in our directories (and our leftover temporary files).

    Only names this generator writes are ever removed: a user's own file in the same folder stays where it is.
    """
    for folder in dirs:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not path.is_file() or path.is_symlink() or path in keep:
                continue
            # a temporary file of ours is ".<final name>.<hex>.tmp" (io.atomic.temp_name)
            final = path.name[1:].rsplit(".", 2)[0] if is_temp_name(path.name) else path.name
            if _OWNED_NAME.match(final):
                path.unlink()


def _progress(items: range, enabled: bool, what: str) -> Iterator[int]:
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=what)


def generate_toy(
    out_dir: Path,
    *,
    seed: int = 0,
    height: int = 32,
    width: int = 64,
    n_source: int = 300,
    n_target_train: int = 300,
    n_target_val: int = 100,
    progress: bool = False,
    rendering_gap: float = 1.0,
    colour_swap: bool = True,
) -> dict:
    """Write the toy source (GTA5 layout) and target (Cityscapes layout) under ``out_dir``; return a summary.

    ``out_dir/source``: ``images/00001.png`` (RGB) and ``labels/00001.png`` (mode P, index = label id).
    ``out_dir/target``: ``leftImg8bit/{train,val}/toytown/toytown_000000_{i:06d}_leftImg8bit.png``; the val images
    have ``gtFine/val/toytown/..._gtFine_{labelIds,labelTrainIds,color}.png``, the train images no labels (they
    are the diffusion model's unlabelled training set). Deterministic: the same arguments give the same bytes, and a
    rerun over an existing directory rewrites it to exactly that (files of other counts are removed).
    ``out_dir/toy.json`` holds the summary, written last.
    """
    for name, count in (("n_source", n_source), ("n_target_train", n_target_train), ("n_target_val", n_target_val)):
        if count < 0:
            raise DasgenError(f"toy {name} must be >= 0, got {count}")
    if n_source > 99999:
        raise DasgenError(f"toy n_source must be <= 99999 (GTA5 names are 5 digits), got {n_source}")
    _check_size(height, width)
    source_look, target_look = appearance(rendering_gap, colour_swap)
    out_dir = Path(out_dir)
    written: set[Path] = set()
    src = out_dir / "source"
    for i in _progress(range(n_source), progress, "toy source"):
        image, label = _sample(source_look, "source", "train", i, seed, height, width)
        _write(src / "images" / f"{i + 1:05d}.png", _png(Image.fromarray(image)), written)
        _write(src / "labels" / f"{i + 1:05d}.png", _label_png(label), written)

    tgt = out_dir / "target"
    for split, count in (("train", n_target_train), ("val", n_target_val)):
        for i in _progress(range(count), progress, f"toy target {split}"):
            image, label = _sample(target_look, "target", split, i, seed, height, width)
            stem = f"{CITY}_000000_{i:06d}"
            rgb = tgt / "leftImg8bit" / split / CITY / f"{stem}_leftImg8bit.png"
            _write(rgb, _png(Image.fromarray(image)), written)
            if split == "val":
                gt = tgt / "gtFine" / split / CITY
                _write(gt / f"{stem}_gtFine_labelIds.png", _png(Image.fromarray(label)), written)
                _write(gt / f"{stem}_gtFine_labelTrainIds.png", _png(Image.fromarray(id_to_train_id(label))), written)
                colour = np.dstack([id_to_color(label), np.full(label.shape, 255, np.uint8)])  # RGBA, as Cityscapes
                _write(gt / f"{stem}_gtFine_color.png", _png(Image.fromarray(colour)), written)

    _prune(
        [src / "images", src / "labels"]
        + [tgt / "leftImg8bit" / s / CITY for s in ("train", "val")]
        + [tgt / "gtFine" / s / CITY for s in ("train", "val")],
        written,
    )
    summary = {
        "format_version": TOY_FORMAT_VERSION,
        "seed": seed,
        "height": height,
        "width": width,
        "n_source": n_source,
        "n_target_train": n_target_train,
        "n_target_val": n_target_val,
        "rendering_gap": rendering_gap,
        "colour_swap": colour_swap,
        "classes": list(TOY_CLASSES),
        "label_ids": list(TOY_LABEL_IDS),
        "source": {"kind": "gta5", "root": "source"},
        "target": {"kind": "cityscapes", "root": "target", "city": CITY, "labelled_splits": ["val"]},
    }
    atomic_write_json(out_dir / "toy.json", summary)
    return summary
