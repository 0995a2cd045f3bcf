"""Toy rendering: one :class:`Look` per domain (the game-like source, the camera-like target) and the renderer
that paints a :class:`~dasgen.datasets.toy.scene.Scene` with it; :func:`toy_sample` draws one (image, label) pair."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
from scipy.ndimage import gaussian_filter

from dasgen.errors import DasgenError
from dasgen.datasets.toy.scene import (
    BORDER, BUILDING, CAR, GLASS, LEGS, MARKING, PERSON, POLE, ROAD, SIDEWALK, SIGN, SKIN, SKY, TERRAIN, TYRE, VEGETATION,
    Scene, make_scene, sample_rngs,
)

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
    thin_object_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One toy image and its labels: (uint8 (H, W, 3) RGB, uint8 (H, W) Cityscapes label ids).

    ``domain`` "source" or "target" picks the look; ``split`` names the stream the image belongs to (any string:
    "train", "val", or e.g. "oracle" for extra labelled target images), so each split has its own scenes.
    """
    if domain not in ("source", "target"):
        raise DasgenError(f"toy domain must be 'source' or 'target', got {domain!r}")
    _check_geometry(height, width, thin_object_scale)
    source_look, target_look = appearance(rendering_gap, colour_swap)
    return render_sample(source_look if domain == "source" else target_look, domain, split, index, seed, height, width,
                   thin_object_scale)


def _check_geometry(height: int, width: int, thin_object_scale: float = 1.0) -> None:
    if height < 8 or width < 8:
        raise DasgenError(f"toy height and width must be at least 8 pixels, got {height}x{width}")
    if not 1.0 <= thin_object_scale <= 4.0:
        raise DasgenError(f"toy thin_object_scale must be in [1, 4], got {thin_object_scale}")


def render_sample(look: Look, domain: str, split: str, index: int, seed: int, height: int, width: int,
                  thin_object_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`toy_sample` with the look given: the same layout (from seed, domain, split, index) rendered in ``look``,
    so an experiment can render the source's scenes in a blend of the two looks."""
    layout_rng, render_rng = sample_rngs(seed, domain, split, index)
    scene = make_scene(layout_rng, height, width, thin_object_scale)
    return render(scene, look, render_rng), scene.label
