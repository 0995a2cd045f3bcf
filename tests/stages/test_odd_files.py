"""Files of odd kinds and encodings where a dataset or an artifact should be: a FIFO in a domain's images, a 16-bit
greyscale source photo. Each is read for what it is or reported by name. The table in docs/bad-inputs.md names these
tests."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dasgen.datasets.registry import open_dataset
from dasgen.pipeline.workspace import Workspace
from helpers.fake_trees import scene_label, write_label, write_png16
from test_bad_inputs import gta5_workspace, invoke


@pytest.mark.parametrize("where", ["extra", "in-place-of-an-image"])
def test_verify_reports_a_fifo_in_a_domain_without_opening_it(two_domains_ws, where):
    domain = Workspace(two_domains_ws).domain_dir(2, 2)
    victim = sorted((domain / "images").glob("*.png"))[1]
    if where == "extra":
        victim = victim.with_name("zz.png")
    else:
        victim.unlink()
    os.mkfifo(victim)  # opening it for reading would block verify for ever
    result = invoke(two_domains_ws, "verify", str(domain))
    assert result.exit_code == 1, result.output
    assert f"images/{victim.name} (FIFO)" in result.stdout and "invalid (1)" in result.stdout
    if where == "in-place-of-an-image":
        assert f"missing (1): images/{victim.name}" in result.stdout


def test_a_16_bit_grey_source_photo_is_read_as_grey_not_as_a_blank_frame(tmp_path):
    root = gta5_workspace(tmp_path)
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 65536, size=(20, 32), dtype=np.uint16)  # a photo: every value of the 16-bit range
    write_png16(root / "src/images/00012.png", grey[:, :, None])
    write_label(root / "src/labels/00012.png", scene_label(rng, 20, 32), mode="P")
    result = invoke(root, "scan")
    assert result.exit_code == 0, result.output
    assert "00012" not in result.stderr  # not skipped as a blank frame
    assert "00012" in [e["id"] for e in json.loads(Workspace(root).source_pairs.read_text())["entries"]]
    reader = open_dataset("gta5", root / "src")
    image = reader.load(next(e for e in reader.entries() if e.id == "00012")).image
    assert image.dtype == np.uint8 and image.shape == (20, 32, 3)
    np.testing.assert_array_equal(image[:, :, 0], grey >> 8)
    assert (image == image[:, :, :1]).all()
