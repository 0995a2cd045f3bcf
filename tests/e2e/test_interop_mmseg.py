"""A dasgen Cityscapes-layout export read by mmsegmentation, the library DAFormer, HRDA and MIC train with.

Needs the ``interop`` extra (mmsegmentation 1.2.2, mmengine, mmcv-lite); skipped with the reason when it is missing.
mmcv-lite has no compiled ops, and mmseg 1.2.2 imports ``mmcv.ops.point_sample`` at package import (for its mask
classification heads, which a dataset never calls), so that one name is stubbed before importing mmseg.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from typer.testing import CliRunner

from dasgen.cli import app
from dasgen.datasets.registry import open_dataset
from dasgen.labels import id_to_train_id

runner = CliRunner()


def _mmseg():
    try:
        import mmcv  # noqa: F401
        import mmengine  # noqa: F401
    except ImportError as error:
        pytest.skip(f"interop extra not installed (pip install 'dasgen[interop]'): {error}")
    if "mmcv.ops" not in sys.modules:
        try:
            import mmcv.ops  # noqa: F401  (full mmcv: the real ops)
        except (ImportError, ModuleNotFoundError):
            stub = types.ModuleType("mmcv.ops")
            stub.point_sample = lambda *args, **kwargs: None  # mmcv-lite: never called by datasets
            sys.modules["mmcv.ops"] = stub
    try:
        from mmengine.registry import init_default_scope
        from mmseg.datasets import CityscapesDataset
    except ImportError as error:
        pytest.skip(f"mmsegmentation not importable here: {error}")
    init_default_scope("mmseg")  # transforms resolve in mmseg's registry (and mmcv's, its parent); no models imported
    return CityscapesDataset


@pytest.mark.slow
def test_mmseg_cityscapes_dataset_reads_a_dasgen_export_with_our_labels(workspace, tmp_path):
    CityscapesDataset = _mmseg()
    args = ["--params", str(workspace / "params.yaml"), "--workspace", str(workspace)]
    assert runner.invoke(app, [*args, "translate", "--domains", "1-2"]).exit_code == 0
    out = tmp_path / "export"
    result = runner.invoke(app, [*args, "export", "--format", "cityscapes", "--out", str(out)])
    assert result.exit_code == 0, result.output

    # The standard mmseg config for Cityscapes, pointed at the export (docs/artifact.md, "Exports and sharing").
    dataset = CityscapesDataset(
        data_root=str(out), data_prefix=dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train"),
        pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")], serialize_data=False)
    ours = {entry.id: entry for entry in open_dataset("cityscapes", out, split="train").entries()}
    reader = open_dataset("cityscapes", out, split="train")
    assert len(dataset) == len(ours) == 12
    for index in range(len(dataset)):
        sample = dataset[index]
        image_id = sample["img_path"].rsplit("/", 1)[1].removesuffix("_leftImg8bit.png")
        expected = reader.load(ours[image_id])
        assert sample["img"].shape == expected.image.shape  # (H, W, 3), BGR in mmcv's convention
        np.testing.assert_array_equal(sample["img"][..., ::-1], expected.image)
        np.testing.assert_array_equal(sample["gt_seg_map"], id_to_train_id(expected.label))
    assert set(np.unique(dataset[0]["gt_seg_map"])) - set(range(19)) <= {255}
