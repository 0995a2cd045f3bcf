"""Exports (Cityscapes layout, Parquet, HDF5): real loaders read back the same pixels and labels; gate; out dir."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from dasgen.errors import DasgenError
from dasgen.labels import LABEL_BY_ID, id_to_color, id_to_train_id
from dasgen.io.atomic import sha256_file
from dasgen.artifact.writer import DomainWriter, iter_domain_images, read_index
from dasgen.export.run import export_domain
from dasgen.export.cityscapes import city_name, sequence_numbers
from dasgen.export.parts import resize_label
from helpers.synthetic import (
    build_synthetic_domain,
    label_loader_for,
    synthetic_record,
    translated_image,
    write_synthetic_source,
)

H, W = 32, 64  # translation resolution
SH, SW = 48, 96  # source resolution
IDS = [f"{i:05d}" for i in range(1, 11)]  # splits: odd ids val, even ids train (synthetic_record)
PROVENANCE = {
    "dasgen_version": "0.1.0",
    "params_sha256": "abc123",
    "diffusion_sha256": "d1ff",
    "source": {"kind": "gta_5", "root": "/data/gta5", "pairs_used": 10, "pairs_skipped": 2, "skipped": {"size": 2}},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A source tree and one finished domain per image format."""
    root = tmp_path_factory.mktemp("export")
    write_synthetic_source(root / "source", IDS, height=SH, width=SW)
    domains = {
        fmt: build_synthetic_domain(root / f"domain-{fmt}", IDS, height=H, width=W, image_format=fmt,
                                    provenance=PROVENANCE)
        for fmt in ("png", "parquet")
    }
    return {"root": root, "source": root / "source", "domains": domains}


def run(world, out: Path, fmt: str, *, domain: str = "png", **kwargs):
    """Export with the source's splits (the fixture's odd ids are val), unless the test says otherwise."""
    kwargs.setdefault("splits", "source")
    return export_domain(
        world["domains"][domain], out, fmt=fmt, label_loader=label_loader_for(world["source"]), progress=False,
        **kwargs,
    )


def source_label(world, image_id: str) -> np.ndarray:
    return np.array(Image.open(world["source"] / "labels" / f"{image_id}.png"))


def domain_images(world, domain: str = "png") -> dict[str, np.ndarray]:
    return {row["id"]: image for row, image in iter_domain_images(world["domains"][domain])}


def card_header(out: Path) -> dict:
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# -- Cityscapes layout -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["png", "parquet"])
def test_cityscapes_export_loads_in_torchvision_with_same_pixels_and_labels(world, tmp_path, domain):
    from torchvision.datasets import Cityscapes

    out = tmp_path / "cs"
    summary = run(world, out, "cityscapes", domain=domain)
    assert summary["exported"] == len(IDS) and summary["per_split"] == {"train": 5, "val": 5}
    images = domain_images(world, domain)
    with open(out / "id_map.csv") as handle:
        id_map = {row["id"]: row for row in csv.DictReader(handle)}
    assert sorted(id_map) == IDS
    by_file = {Path(row["image"]).name: row["id"] for row in id_map.values()}

    seen = []
    for split in ("train", "val"):
        ds = Cityscapes(str(out), split=split, mode="fine", target_type=["semantic", "color"])
        assert len(ds) == 5
        for index in range(len(ds)):
            image_id = by_file[Path(ds.images[index]).name]
            image, (label_ids, color) = ds[index]
            expected_label = resize_label(source_label(world, image_id), (H, W))
            assert np.array_equal(np.array(image), images[image_id])
            assert np.array_equal(np.array(label_ids), expected_label)
            assert np.array_equal(np.array(color), id_to_color(expected_label))
            train_ids = Path(ds.targets[index][0].replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"))
            assert np.array_equal(np.array(Image.open(train_ids)), id_to_train_id(expected_label))
            assert Image.open(train_ids).mode == "L" and Image.open(ds.targets[index][0]).mode == "L"
            assert id_map[image_id]["split"] == split
            seen.append(image_id)
    assert sorted(seen) == IDS
    # the documented mapping: city = source kind without separators, seq = numeric id, frame 19
    assert (out / "leftImg8bit/val/gta5/gta5_000001_000019_leftImg8bit.png").is_file()
    assert (out / "gtFine/train/gta5/gta5_000010_000019_gtFine_labelTrainIds.png").is_file()


def test_default_split_policy_puts_every_image_where_training_reads(world, tmp_path):
    """By default every image lands in train (DAFormer's GTADataset reads the whole GTA5 folder; a Cityscapes-style
    config reads leftImg8bit/train), the card and summary say so, and id_map.csv keeps each source split."""
    from torchvision.datasets import Cityscapes

    out = tmp_path / "all-train"
    summary = export_domain(world["domains"]["png"], out, fmt="cityscapes", label_loader=label_loader_for(
        world["source"]), progress=False)
    assert summary["per_split"] == {"train": len(IDS)} and summary["splits"] == "all-train"
    assert len(Cityscapes(str(out), split="train", mode="fine", target_type="semantic")) == len(IDS)
    assert not (out / "leftImg8bit" / "val").exists()
    with open(out / "id_map.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["split"] for row in rows} == {"train"}
    assert {row["source_split"] for row in rows} == {"train", "val"}
    card = (out / "README.md").read_text()
    assert f"| train | {len(IDS)} |" in card and "the source dataset's own splits (train 5, val 5) are not used" in card
    assert json.loads((out / "manifest.json").read_text())["export"]["splits"] == "all-train"
    with pytest.raises(DasgenError, match="splits must be one of"):
        run(world, tmp_path / "bad", "cityscapes", splits="everything")


def _daformer_save_class_stats(sample_class_stats: list[dict]) -> dict[str, str]:
    """``save_class_stats`` of DAFormer's tools/convert_datasets/cityscapes.py (and gta.py), writing to strings."""
    written = {"sample_class_stats.json": json.dumps(sample_class_stats, indent=2)}
    sample_class_stats_dict = {}
    for stats in sample_class_stats:
        f = stats.pop("file")
        sample_class_stats_dict[f] = stats
    written["sample_class_stats_dict.json"] = json.dumps(sample_class_stats_dict, indent=2)
    samples_with_class = {}
    for file, stats in sample_class_stats_dict.items():
        for c, n in stats.items():
            if c not in samples_with_class:
                samples_with_class[c] = [(file, n)]
            else:
                samples_with_class[c].append((file, n))
    written["samples_with_class.json"] = json.dumps(samples_with_class, indent=2)
    return written


def test_cityscapes_export_holds_daformer_rare_class_sampling_files(world, tmp_path):
    """One entry per train image, byte for byte what DAFormer's converter writes from the same trainId files, and
    read back the way DAFormer's ``UDADataset`` reads them (file matched by base name to a CityscapesDataset source).
    """
    out = tmp_path / "daformer"
    export_domain(world["domains"]["png"], out, fmt="cityscapes", label_loader=label_loader_for(world["source"]),
                  progress=False)
    label_files = sorted((out / "gtFine" / "train").rglob("*_gtFine_labelTrainIds.png"))
    assert len(label_files) == len(IDS)

    # DAFormer's convert_json_to_label (cityscapes.py), on our trainId files, in sorted order
    expected = []
    for path in label_files:
        label = np.asarray(Image.open(path))
        stats = {c: int(np.sum(label == c)) for c in range(19) if np.sum(label == c) > 0}
        stats["file"] = path.relative_to(out).as_posix()
        expected.append(stats)
    for name, text in _daformer_save_class_stats(expected).items():
        assert (out / name).read_text() == text, name

    # DAFormer's mmseg/datasets/uda_dataset.py: get_rcs_class_probs and the samples_with_class filter
    sample_class_stats = json.loads((out / "sample_class_stats.json").read_text())
    assert len(sample_class_stats) == len(IDS)
    overall: dict[int, int] = {}
    for stats in sample_class_stats:
        stats.pop("file")
        for c, n in stats.items():
            overall[int(c)] = overall.get(int(c), 0) + n
    samples_with_class = {int(k): v for k, v in json.loads((out / "samples_with_class.json").read_text()).items()
                          if int(k) in overall}
    seg_maps = {p.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")  # CityscapesDataset's img_infos
                for p in (out / "leftImg8bit" / "train").rglob("*_leftImg8bit.png")}
    for c in overall:
        files = [file.split("/")[-1] for file, pixels in samples_with_class[c] if pixels > 0]
        assert files and set(files) <= seg_maps
        assert sum(pixels for _, pixels in samples_with_class[c]) == overall[c]
    assert "samples_with_class.json" in (out / "README.md").read_text()


def test_cityscapes_source_size_resizes_images_and_keeps_labels_exact(world, tmp_path):
    from torchvision.datasets import Cityscapes

    out = tmp_path / "cs-source"
    run(world, out, "cityscapes", size="source", city="synth")
    ds = Cityscapes(str(out), split="train", mode="fine", target_type="semantic")
    for index in range(len(ds)):
        image, label_ids = ds[index]
        seq = int(Path(ds.images[index]).name.split("_")[1])
        assert image.size == (SW, SH)
        assert np.array_equal(np.array(label_ids), source_label(world, f"{seq:05d}"))
    card = (out / "README.md").read_text()
    assert "Translated at 64x32; exported at the source resolution (96x48): images resized from" in card
    assert "labels are the source labels at their own resolution, never resized" in card


def test_sequence_numbers_and_city_names_are_stable():
    assert sequence_numbers(["00002", "00010"]) == {"00002": 2, "00010": 10}
    assert sequence_numbers(["b", "a", "c"]) == {"a": 0, "b": 1, "c": 2}
    assert sequence_numbers(["1", "01"]) == {"01": 0, "1": 1}  # numeric collision -> ranks
    assert sequence_numbers(["1234567", "2"]) == {"1234567": 0, "2": 1}  # too large for 6 digits
    assert city_name("GTA_5") == "gta5" and city_name("synthia-rand") == "synthiarand" and city_name("") == "dasgen"


# -- Parquet -----------------------------------------------------------------------------------------------------


def test_parquet_export_loads_in_hugging_face_datasets(world, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "pq"
    summary = run(world, out, "parquet", domain="parquet", shard_size=2)
    assert summary["shards"] == {"train": 3, "val": 3}
    assert (out / "data/train/train-00002-of-00003.parquet").is_file()
    images = domain_images(world, "parquet")

    files = {split: sorted(str(p) for p in (out / "data" / split).glob("*.parquet")) for split in ("train", "val")}
    ds = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
    for column in ("image", "label", "train_ids"):
        assert isinstance(ds["train"].features[column], datasets.Image)
    id2label = json.loads((out / "id2label.json").read_text())
    assert len(id2label) == 19 and id2label["0"] == "road" and id2label["13"] == "car" and id2label["18"] == "bicycle"
    seen_names: set[str] = set()
    for split in ("train", "val"):
        assert len(ds[split]) == 5
        for sample in ds[split]:
            assert sample["split"] == split
            assert np.array_equal(np.array(sample["image"]), images[sample["id"]])
            label = np.array(sample["label"])
            assert label.dtype == np.uint8
            assert np.array_equal(label, resize_label(source_label(world, sample["id"]), (H, W)))
            train_ids = np.array(sample["train_ids"])
            assert train_ids.dtype == np.uint8 and np.array_equal(train_ids, id_to_train_id(label))
            names = {id2label[str(v)] for v in np.unique(train_ids) if v != 255}  # a mask's values -> class names
            assert names == {LABEL_BY_ID[i].name for i in np.unique(label) if LABEL_BY_ID[i].train_id != 255}
            seen_names |= names
            expected = synthetic_record(sample["id"], height=H, width=W).consistency
            assert math.isclose(sample["consistency"], expected, rel_tol=1e-6)
    assert len(seen_names) > 3
    assert "id2label.json" in (out / "README.md").read_text()

    # the card's YAML configs alone are enough for load_dataset(<dir>)
    header = card_header(out)
    assert header["task_categories"] == ["image-segmentation"]
    by_dir = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf2"))
    assert sorted(by_dir) == ["train", "val"] and len(by_dir["val"]) == 5


# -- HDF5 --------------------------------------------------------------------------------------------------------


def test_hdf5_export_streams_back_with_plain_h5py(world, tmp_path):
    out = tmp_path / "h5"
    run(world, out, "hdf5")
    images = domain_images(world)
    with h5py.File(out / "dataset.h5", "r") as f:
        assert f["images"].shape == (10, H, W, 3) and f["images"].dtype == np.uint8
        assert f["images"].chunks == (1, H, W, 3) and f["images"].compression == "gzip"
        assert f["labels"].shape == (10, H, W)
        ids = [s.decode() for s in f["ids"][:]]
        splits = [s.decode() for s in f["splits"][:]]
        offsets = json.loads(f.attrs["split_offsets"])
        assert offsets == {"train": [0, 5], "val": [5, 10]}
        assert splits == ["train"] * 5 + ["val"] * 5 and ids[:5] == sorted(ids[:5])
        for i, image_id in enumerate(ids):
            label = resize_label(source_label(world, image_id), (H, W))
            assert np.array_equal(f["images"][i], images[image_id])
            assert np.array_equal(f["labels"][i], label)
            assert np.array_equal(f["train_ids"][i], id_to_train_id(label))
            expected = synthetic_record(image_id, height=H, width=W).consistency
            assert f["consistency"][i] == pytest.approx(expected)


def test_hdf5_export_of_two_image_sizes_completes_and_verifies(tmp_path):
    """GTA5 at its source resolution has frames of two heights: they share the arrays (each in the top-left corner,
    its size in ``sizes``, the rest 0 / 255 = ignore in train_ids); the export completes and verifies."""
    from dasgen.artifact.verify import verify

    ids = IDS[:6]
    write_synthetic_source(tmp_path / "source", ids[:3], height=SH, width=SW)
    write_synthetic_source(tmp_path / "source", ids[3:], height=SH - 4, width=SW)  # like 1914x1046 vs 1914x1052
    domain = build_synthetic_domain(tmp_path / "domain", ids, height=H, width=W, provenance=PROVENANCE)
    out = tmp_path / "h5"
    summary = export_domain(domain, out, fmt="hdf5", label_loader=label_loader_for(tmp_path / "source"),
                            size="source", progress=False)
    assert summary["exported"] == 6 and summary["image_size"] == [SH, SW]
    assert verify(out).ok
    with h5py.File(out / "dataset.h5", "r") as f:
        assert f["images"].shape == (6, SH, SW, 3) and f.attrs["padded"] and f.attrs["layout_version"] == 2
        for i, image_id in enumerate(s.decode() for s in f["ids"][:]):
            height, width = f["sizes"][i]
            source = np.array(Image.open(tmp_path / "source" / "labels" / f"{image_id}.png"))
            assert (height, width) == source.shape
            assert np.array_equal(f["labels"][i, :height, :width], source)
            assert np.array_equal(f["train_ids"][i, :height, :width], id_to_train_id(source))
            assert f["images"][i, :height, :width].std() > 0  # the translated image, resized, is there
            assert (f["train_ids"][i, height:] == 255).all() and (f["images"][i, height:] == 0).all()
    assert "images of several sizes share the arrays" in (out / "README.md").read_text()


# -- shared behaviour --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["cityscapes", "parquet", "hdf5"])
def test_quality_gate_counts_and_manifest(world, tmp_path, fmt):
    out = tmp_path / fmt
    threshold = 0.5
    summary = run(world, out, fmt, min_consistency=threshold)
    table = read_index(world["domains"]["png"])
    kept = [r["id"] for r in table.to_pylist() if r["consistency"] >= threshold]
    assert 0 < len(kept) < len(IDS)
    assert summary["exported"] == len(kept) and summary["dropped_low_consistency"] == len(IDS) - len(kept)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == fmt
    assert manifest["counts"]["dropped_low_consistency"] == len(IDS) - len(kept)
    assert manifest["counts"]["min_consistency"] == threshold
    assert manifest["provenance"] == {**PROVENANCE, "source": {**PROVENANCE["source"], "root": "<local>/gta5"}}
    assert manifest["domain"]["index_sha256"] == sha256_file(world["domains"]["png"] / "index.parquet")
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [p for p in on_disk if p != "manifest.json"]
    for relpath, digest in manifest["files"].items():
        assert sha256_file(out / relpath) == digest
    header = card_header(out)
    assert header["license"] == "other" and header["task_categories"] == ["image-segmentation"]
    card = (out / "README.md").read_text()
    assert f"left out ({len(IDS) - len(kept)} of {len(IDS)})" in card and "gta_5" in card
    assert "translated at 64x32 (width x height, `data.resolution`) by dasgen 0.1.0 with params sha256 `abc123`" in card
    assert "diffusion sha256: `d1ff`" in card
    assert 'source skipped: {"size": 2}' in card and "| train |" in card


def test_card_and_manifest_cite_the_sources_and_hold_no_local_path(tmp_path):
    """The card cites the paper and the source and target datasets with their terms pages, says the translation
    resolution and the resize, the dasgen version and params hash; no absolute path of the machine that made the
    domain (a workspace path, a dataset root outside it, a path inside a skip reason) reaches any file."""
    workspace = tmp_path / "ws"
    provenance = {
        "dasgen_version": "0.1.0",
        "params_sha256": "abc123",
        "params": {"data": {"source": {"kind": "gta5", "root": "/home/alice/datasets/gta5"},
                            "target": {"kind": "cityscapes", "root": str(workspace / "cityscapes")}}},
        "source": {"kind": "gta5", "root": "/home/alice/datasets/gta5",
                   "skipped": {"00007": "cannot decode /home/alice/datasets/gta5/images/00007.png"}},
    }
    write_synthetic_source(workspace / "source", IDS[:4], height=SH, width=SW)
    domain = build_synthetic_domain(workspace / "domain", IDS[:4], height=H, width=W, provenance=provenance)
    for fmt in ("cityscapes", "parquet", "hdf5"):
        out = tmp_path / fmt
        export_domain(domain, out, fmt=fmt, label_loader=label_loader_for(workspace / "source"), progress=False,
                      workspace=workspace)
        for path in out.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert b"/home/alice" not in data and str(tmp_path).encode() not in data, path
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["provenance"]["params"]["data"]["target"]["root"] == "cityscapes"  # inside: relative
        assert manifest["provenance"]["source"]["root"] == "<local>/gta5"  # outside: the last component only
        assert manifest["provenance"]["source"]["skipped"]["00007"] == "cannot decode <local>/00007.png"
        card = (out / "README.md").read_text()
        for cited in ("@inproceedings{peng2023diffusion", "@inproceedings{richter2016playing",
                      "@inproceedings{cordts2016cityscapes", "https://download.visinf.tu-darmstadt.de/data/from_games/",
                      "https://www.cityscapes-dataset.com/license/", "(root `<local>/gta5`)",
                      "translated at 64x32", "params sha256 `abc123`", "Translated and exported at 64x32"):
            assert cited in card, cited
        assert "synthia" not in card.lower()


def test_gate_drops_nan_scores_and_refuses_empty_result(world, tmp_path):
    directory = tmp_path / "nan"
    with DomainWriter(directory) as w:
        for image_id in IDS[:3]:
            record = synthetic_record(image_id, height=H, width=W)
            if image_id == IDS[0]:
                record = type(record)(**{**record.__dict__, "consistency": float("nan")})
            w.add(record, translated_image(image_id, H, W))
    w.finalize(metrics={}, provenance={})
    loader = label_loader_for(world["source"])
    summary = export_domain(directory, tmp_path / "o1", fmt="hdf5", label_loader=loader, min_consistency=0.0,
                            progress=False)
    assert summary["exported"] == 2 and summary["dropped_low_consistency"] == 1
    with pytest.raises(DasgenError, match="0 of 3 images pass min_consistency=2.0"):
        export_domain(directory, tmp_path / "o2", fmt="hdf5", label_loader=loader, min_consistency=2.0,
                      progress=False)


def test_force_replaces_only_an_earlier_export(world, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(DasgenError, match="busy.*not empty"):
        run(world, out, "parquet")
    with pytest.raises(DasgenError, match="refusing --force on .*busy: it is not a dasgen export"):
        run(world, out, "parquet", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "user data"

    earlier = tmp_path / "earlier"
    run(world, earlier, "parquet")
    first = (earlier / "manifest.json").read_bytes()
    run(world, earlier, "cityscapes", force=True)  # an earlier export of ours is replaced whole
    assert (earlier / "manifest.json").read_bytes() != first and not list(earlier.glob("*.parquet"))
    (earlier / "notes").mkdir()
    (earlier / "notes" / "mine.txt").write_text("mine")
    with pytest.raises(DasgenError, match="it holds notes/mine.txt, which the earlier export's manifest.json"):
        run(world, earlier, "parquet", force=True)
    assert (earlier / "notes" / "mine.txt").read_text() == "mine" and (earlier / "manifest.json").is_file()

    with pytest.raises(DasgenError, match="lies inside the domain being exported"):
        run(world, world["domains"]["png"] / "export", "parquet", force=True)
    with pytest.raises(DasgenError, match="unknown export format"):
        run(world, tmp_path / "x", "tiff")


def test_exports_are_reproducible(world, tmp_path):
    for fmt in ("cityscapes", "parquet"):
        first = run(world, tmp_path / f"{fmt}-1", fmt)
        second = run(world, tmp_path / f"{fmt}-2", fmt)
        assert first["exported"] == second["exported"]
        assert (tmp_path / f"{fmt}-1/manifest.json").read_bytes() == (tmp_path / f"{fmt}-2/manifest.json").read_bytes()


def test_failed_export_leaves_no_manifest_or_temp_files(world, tmp_path):
    def broken_loader(row):
        if row["id"] == IDS[4]:
            raise DasgenError(f"label {row['source_label']} unreadable")
        return np.array(Image.open(world["source"] / row["source_label"]))

    out = tmp_path / "broken"
    with pytest.raises(DasgenError, match="unreadable"):
        export_domain(world["domains"]["png"], out, fmt="hdf5", label_loader=broken_loader, progress=False)
    assert list(out.iterdir()) == []


def test_label_loader_must_return_label_ids(world, tmp_path):
    def rgb_loader(row):
        return np.zeros((SH, SW, 3), np.uint8)

    with pytest.raises(DasgenError, match="label of image 00001"):
        export_domain(world["domains"]["png"], tmp_path / "o", fmt="cityscapes", label_loader=rgb_loader,
                      progress=False)


def test_progress_bar_reports_images_per_second(world, tmp_path, capsys):
    run_progress = export_domain(world["domains"]["png"], tmp_path / "p", fmt="parquet",
                                 label_loader=label_loader_for(world["source"]), progress=True)
    shown = capsys.readouterr().out
    assert "export parquet" in shown and "img/s" in shown and f"{run_progress['exported']}/{len(IDS)}" in shown
