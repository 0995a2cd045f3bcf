"""Toy street scenes: the label set, per-image seeding and the layout generator (one scene = labels plus the
geometry the renderer needs). Shared by both toy domains, so their label statistics match."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from dasgen.labels import LABEL_BY_ID

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


def make_scene(rng: np.random.Generator, height: int, width: int, thin_object_scale: float = 1.0) -> Scene:
    """Draw one street layout of ``height`` x ``width`` pixels.

    ``thin_object_scale`` widens the thin objects (poles, traffic signs, persons) by that factor, heights kept: at
    32x64 a pole is 1-2 pixels wide where a Cityscapes pole at 256x512 is tens (toy calibration, docs/toy.md). The
    random draws do not depend on it, so every other part of the layout is the same.

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
        if kind == "car":
            _car(rng, scene, z, x, f, vx)
        else:
            {"pole": _pole, "person": _person}[kind](rng, scene, z, x, f, vx, thin_object_scale)
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


def _pole(rng: np.random.Generator, scene: Scene, z: float, x: float, f: float, vx: float, scale: float) -> None:
    """A pole; most carry a traffic sign (a plate with a white border where it is big enough) on the road side.
    ``scale`` widens the pole and enlarges the sign (``make_scene``'s thin_object_scale)."""
    inst = scene.add(POLE)
    h = float(rng.uniform(4.5, 7.5))
    _paint_box(scene, _box(scene, z, x - 0.15 * scale, x + 0.15 * scale, 0.0, h, f, vx), POLE, inst, z)
    if rng.random() >= 0.65:
        return
    sign = scene.add(SIGN)
    size = float(rng.uniform(0.8, 1.2)) * scale
    cx = x - np.sign(x) * float(rng.uniform(0.0, 0.4))  # towards the road
    top = h - float(rng.uniform(0.0, 1.5))
    outer = _box(scene, z - 0.05, cx - size / 2, cx + size / 2, top - size, top, f, vx)
    inner = _box(scene, z - 0.05, cx - 0.32 * size, cx + 0.32 * size, top - 0.82 * size, top - 0.18 * size, f, vx)
    big = (outer[0].stop - outer[0].start) >= 4 and (outer[1].stop - outer[1].start) >= 4
    _paint_box(scene, outer, SIGN, sign, z, BORDER if big else PLAIN)
    if big:
        _paint_box(scene, inner, SIGN, sign, z)


def _person(rng: np.random.Generator, scene: Scene, z: float, x: float, f: float, vx: float, scale: float) -> None:
    """A pedestrian: legs, torso (clothes), head (skin); ``scale`` widens all three, the height is kept."""
    inst = scene.add(PERSON)
    h = float(rng.uniform(1.55, 1.9))
    w = 0.5 * scale
    legs = (x - w / 2 + 0.05 * scale, x + w / 2 - 0.05 * scale)
    _paint_box(scene, _box(scene, z, *legs, 0.0, 0.48 * h, f, vx), PERSON, inst, z, LEGS)
    _paint_box(scene, _box(scene, z, x - w / 2, x + w / 2, 0.46 * h, 0.86 * h, f, vx), PERSON, inst, z)
    head = 0.11 * scale
    _paint_box(scene, _box(scene, z, x - head, x + head, 0.86 * h, h, f, vx), PERSON, inst, z, SKIN)
