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

The package follows those three jobs: :mod:`~dasgen.datasets.toy.scene` (labels, seeding, street layout),
:mod:`~dasgen.datasets.toy.look` (the two looks and the renderer), :mod:`~dasgen.datasets.toy.writing` (the files).
"""

from dasgen.datasets.toy.look import (  # noqa: F401  (the toy's public names, in one place)
    SOURCE_LOOK, TARGET_LOOK, Look, appearance, render, render_sample, toy_sample,
)
from dasgen.datasets.toy.scene import (  # noqa: F401
    BUILDING, CAR, CITY, PERSON, POLE, ROAD, SIDEWALK, SIGN, SKY, TERRAIN, TOY_CLASSES, TOY_FORMAT_VERSION,
    TOY_LABEL_IDS, VEGETATION, Scene, make_scene, sample_rngs,
)
from dasgen.datasets.toy.writing import generate_toy  # noqa: F401
