"""verify: flipped bytes, missing and extra files, and escaping paths, in exports and in domain artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dasgen.errors import DasgenError
from dasgen.export.run import export_domain
from helpers.synthetic import build_synthetic_domain, label_loader_for, write_synthetic_source
from dasgen.artifact.verify import main, verify

IDS = [f"{i:05d}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    write_synthetic_source(root / "source", IDS, height=24, width=40)
    made = {
        fmt: build_synthetic_domain(root / f"domain-{fmt}", IDS, height=24, width=40, image_format=fmt)
        for fmt in ("png", "parquet")
    }
    made["export"] = root / "export"
    export_domain(made["png"], made["export"], fmt="cityscapes", label_loader=label_loader_for(root / "source"),
                  progress=False)
    return made


@pytest.fixture(params=["export", "png", "parquet"])
def artifact(request, pristine, tmp_path) -> Path:
    """A fresh copy of one pristine artifact, free to damage."""
    copy = tmp_path / request.param
    shutil.copytree(pristine[request.param], copy)
    return copy


def a_payload_file(root: Path) -> Path:
    """A file whose checksum the manifest or index records."""
    if (root / "manifest.json").is_file():
        return root / sorted(json.loads((root / "manifest.json").read_text())["files"])[0]
    if (root / "images").is_dir():
        return sorted((root / "images").iterdir())[0]
    return root / "images-00000.parquet"


def test_pristine_artifact_verifies(artifact):
    report = verify(artifact)
    assert report.ok, report.summary()
    assert report.checked > 0 and "OK" in report.summary()
    assert main([str(artifact)]) == 0


def test_flipped_byte_is_altered(artifact):
    target = a_payload_file(artifact)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    report = verify(artifact)
    assert not report.ok
    assert target.relative_to(artifact).as_posix() in report.altered
    assert main([str(artifact)]) == 1


def test_missing_file_is_reported(artifact):
    target = a_payload_file(artifact)
    target.unlink()
    report = verify(artifact)
    assert target.relative_to(artifact).as_posix() in report.missing and not report.ok


def test_extra_file_is_reported(artifact):
    extra = "leftImg8bit/train/gta5/intruder.png" if (artifact / "manifest.json").is_file() else "images/99999.png"
    (artifact / extra).parent.mkdir(parents=True, exist_ok=True)
    (artifact / extra).write_bytes(b"not part of the artifact")
    report = verify(artifact)
    assert report.extra == [extra] and not report.ok


@pytest.mark.parametrize("bad", ["../outside.txt", "/etc/hostname", "a/../../b.png"])
def test_escaping_paths_in_a_manifest_are_invalid(pristine, tmp_path, bad):
    copy = tmp_path / "export"
    shutil.copytree(pristine["export"], copy)
    (tmp_path / "outside.txt").write_text("secret")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][bad] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = verify(copy)
    assert report.invalid == [bad] and not report.ok


def test_escaping_path_in_a_domain_index_is_invalid(pristine, tmp_path):
    copy = tmp_path / "png"
    shutil.copytree(pristine["png"], copy)
    table = pq.read_table(copy / "index.parquet")
    images = table.column("image").to_pylist()
    images[0] = "../../etc/hostname"
    table = table.set_column(table.schema.get_field_index("image"), table.schema.field("image"), [images])
    pq.write_table(table, copy / "index.parquet")
    report = verify(copy)
    assert "../../etc/hostname" in report.invalid and not report.ok


def test_symlink_out_of_an_export_is_invalid(pristine, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(pristine["export"], copy)
    target = copy / sorted(json.loads((copy / "manifest.json").read_text())["files"])[0]
    (tmp_path / "elsewhere.png").write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(tmp_path / "elsewhere.png")
    report = verify(copy)
    assert target.relative_to(copy).as_posix() in report.invalid


def test_rebuilt_shard_with_other_images_is_caught(pristine, tmp_path):
    copy = tmp_path / "parquet"
    shutil.copytree(pristine["parquet"], copy)
    shard = pq.read_table(copy / "images-00000.parquet")
    first = shard.column("image").to_pylist()
    first[0] = {"bytes": first[1]["bytes"], "path": first[0]["path"]}  # image 0 replaced by image 1
    shard = shard.set_column(1, shard.schema.field("image"), [first])
    pq.write_table(shard, copy / "images-00000.parquet")
    report = verify(copy)
    assert "images-00000.parquet" in report.altered
    assert f"images-00000.parquet#{IDS[0]}" in report.altered


def test_unfinished_run_leftovers_are_extra(pristine, tmp_path):
    copy = tmp_path / "png"
    shutil.copytree(pristine["png"], copy)
    (copy / ".journal").mkdir()
    (copy / ".journal" / "rank-0.jsonl").write_text("{}\n")
    assert verify(copy).extra == [".journal/rank-0.jsonl"]


def test_verify_needs_a_manifest_or_an_index(tmp_path):
    with pytest.raises(DasgenError, match="nothing to verify"):
        verify(tmp_path)
    assert main([str(tmp_path)]) == 1


def _finished_domain(workspace) -> Path:
    from dasgen.config import load_config
    from dasgen.stages.translate import run_domain
    from dasgen.pipeline.workspace import Workspace

    run_domain(load_config(workspace / "params.yaml"), Workspace(workspace), 1, progress=False)
    return Workspace(workspace).domain_dir(1)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_consistency(domain: Path) -> None:
    table = pq.read_table(domain / "index.parquet")
    column = table.schema.get_field_index("consistency")
    table = table.set_column(column, "consistency", pa.array([1.0] * table.num_rows))
    pq.write_table(table, domain / "index.parquet")


@pytest.mark.parametrize("damage, problem, name", [
    (lambda d: _flip_last_byte(d / "segmenter.safetensors"), "altered", "segmenter.safetensors"),
    (_edit_consistency, "altered", "index.parquet"),
    (lambda d: (d / "metrics.json").write_text(json.dumps({"target_miou": 0.99})), "altered", "metrics.json"),
    (lambda d: (d / "provenance.json").unlink(), "missing", "provenance.json"),
    (lambda d: (d / "segmenter.json").write_text("{}"), "altered", "segmenter.json"),
    (lambda d: (d / "notes.txt").write_text("added"), "extra", "notes.txt"),
    (lambda d: (d / "checksums.json").unlink(), "missing", "checksums.json"),
])
def test_every_file_of_a_finished_domain_is_covered(workspace, damage, problem, name):
    domain = _finished_domain(workspace)
    assert verify(domain).ok
    damage(domain)
    report = verify(domain)
    assert not report.ok
    assert any(entry.startswith(name) for entry in getattr(report, problem)), report.summary()
