"""Test helpers, imported as ``helpers.<module>`` (pyproject's ``pythonpath = ["tests"]`` puts ``tests/`` on
``sys.path``): fake dataset trees in their real layouts (:mod:`helpers.fake_trees`), small synthetic sources and
domain artifacts (:mod:`helpers.synthetic`, also used by ``bench/``), in-memory labelled arrays with a seeded batch
sampler (:mod:`helpers.segment_data`), and :data:`REPO`, the repository root.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
