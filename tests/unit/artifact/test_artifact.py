"""Domain artifact store: atomic writes, PNG/Parquet round trips, resume and multi-rank byte identity."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dasgen.errors import DasgenError
from dasgen.io import atomic
from dasgen.io.atomic import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from dasgen.artifact.writer import (
    DomainWriter,
    ImageRecord,
    domain_dir_name,
    domain_files,
    iter_domain_images,
    read_index,
)
from dasgen.artifact.journal import journal_path
from dasgen.artifact.reader import DomainReader
from dasgen.io.png import decode_png, encode_png
from dasgen.artifact.schema import INDEX_SCHEMA, SCHEMA_VERSION
from helpers.files import tree_bytes
from helpers.synthetic import synthetic_record, translated_image

H, W = 24, 40
IDS = [f"{i:05d}" for i in range(1, 12)]  # 11 images: odd counts exercise partial shards and flush buffers
FORMATS = ["png", "parquet"]


def writer(directory: Path, fmt: str, **kwargs) -> DomainWriter:
    return DomainWriter(directory, image_format=fmt, shard_size=4, flush_every=3, **kwargs)


def add(w: DomainWriter, image_id: str) -> None:
    w.add(synthetic_record(image_id, height=H, width=W), translated_image(image_id, H, W))


def finalize(w: DomainWriter) -> Path:
    return w.finalize(metrics={"miou": 0.5}, provenance={"source": {"kind": "toy"}})


def one_pass(directory: Path, fmt: str) -> Path:
    with writer(directory, fmt) as w:
        for image_id in w.pending_ids(IDS):
            add(w, image_id)
    return finalize(w)


# -- atomic writes -----------------------------------------------------------------------------------------------


def test_atomic_writes_round_trip_and_checksums(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01payload")
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": [1.5, None]})
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01payload"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [1.5, None], "b": 1}
    assert (tmp_path / "j.json").read_text().index('"a"') < (tmp_path / "j.json").read_text().index('"b"')
    assert sha256_file(tmp_path / "a" / "b.bin") == hashlib.sha256(b"\x00\x01payload").hexdigest()
    assert atomic.sha256_bytes(b"x") == hashlib.sha256(b"x").hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "j.json", "t.txt"]  # no temp files


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_atomic_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, failing):
    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, b"old")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, failing, disk_full)
    with pytest.raises(DasgenError, match="metrics.json.*No space left"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_atomic_write_into_read_only_dir_raises_dasgen_error(tmp_path):
    target = tmp_path / "ro" / "x.bin"
    atomic_write_bytes(target, b"old")
    target.parent.chmod(0o500)
    try:
        with pytest.raises(DasgenError, match="x.bin"):
            atomic_write_bytes(target, b"new")
    finally:
        target.parent.chmod(0o700)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]


def test_error_inside_atomic_block_propagates_and_cleans_up(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with atomic_open(tmp_path / "f.bin") as handle:
            handle.write(b"partial")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


# -- PNG codec ---------------------------------------------------------------------------------------------------


def test_png_encoding_is_deterministic_and_lossless():
    image = translated_image("00007", H, W)
    label = np.arange(H * W, dtype=np.uint8).reshape(H, W) % 34
    assert encode_png(image) == encode_png(image.copy())
    assert np.array_equal(decode_png(encode_png(image), mode="RGB", what="x"), image)
    assert np.array_equal(decode_png(encode_png(label), mode="L", what="x"), label)
    with pytest.raises(DasgenError, match="mode-L"):
        decode_png(encode_png(image), mode="L", what="label")


# -- domain round trip -------------------------------------------------------------------------------------------


def test_domain_dir_name_sorts():
    assert domain_dir_name(7) == "007"
    assert domain_dir_name(12, width=4) == "0012"
    assert sorted(domain_dir_name(n) for n in (10, 2, 1)) == ["001", "002", "010"]
    with pytest.raises(DasgenError):
        domain_dir_name(-1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_gives_exact_pixels_schema_and_checksums(tmp_path, fmt):
    directory = one_pass(tmp_path / "001", fmt)
    table = read_index(directory)
    assert table.schema.remove_metadata().equals(INDEX_SCHEMA)
    assert table.schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()
    assert table.schema.metadata[b"image_format"] == fmt.encode()
    assert table.column("id").to_pylist() == IDS

    rows = list(iter_domain_images(directory))
    assert [row["id"] for row, _ in rows] == IDS
    for row, image in rows:
        assert np.array_equal(image, translated_image(row["id"], H, W))
        expected = synthetic_record(row["id"], height=H, width=W)
        assert row["split"] == expected.split and row["seed"] == expected.seed and row["t"] == expected.t
        assert row["consistency"] == pytest.approx(expected.consistency)
        assert row["sha256"] == hashlib.sha256(encode_png(image)).hexdigest()

    files = domain_files(directory)
    for relpath, digest in files.items():
        assert sha256_file(directory / relpath) == digest
    if fmt == "png":
        assert sorted(files) == [f"images/{i}.png" for i in IDS]
    else:
        assert sorted(files) == ["images-00000.parquet", "images-00001.parquet", "images-00002.parquet"]
        shard = pq.read_table(directory / "images-00000.parquet")
        assert shard.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        assert json.loads(shard.schema.metadata[b"huggingface"])["info"]["features"]["image"] == {"_type": "Image"}
        assert shard.column("id").to_pylist() == IDS[:4]
    left = sorted(p.relative_to(directory).as_posix() for p in directory.iterdir())
    assert ".journal" not in left and ".staging" not in left
    assert json.loads((directory / "metrics.json").read_text()) == {"miou": 0.5}


def test_hugging_face_reads_parquet_mode_shards_as_images(tmp_path):
    datasets = pytest.importorskip("datasets")
    directory = one_pass(tmp_path / "001", "parquet")
    ds = datasets.load_dataset(
        "parquet", data_files=str(directory / "images-*.parquet"), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds[3]["id"] == IDS[3]
    assert np.array_equal(np.array(ds[3]["image"]), translated_image(IDS[3], H, W))


# -- resume and ranks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_after_kill_gives_identical_bytes(tmp_path, fmt):
    reference = tree_bytes(one_pass(tmp_path / "ref", fmt))

    directory = tmp_path / "resumed"
    first = writer(directory, fmt)
    for image_id in IDS[:7]:
        add(first, image_id)
    # "kill": no close(). PNG mode keeps all 7; parquet mode keeps the 6 of two flushed buffers of 3.
    if fmt == "png":
        first._journal.close()
    durable = IDS[:7] if fmt == "png" else IDS[:6]
    second = writer(directory, fmt)
    assert second.done_ids() == set(durable)
    assert second.pending_ids(IDS) == [i for i in IDS if i not in durable]
    with second:
        for image_id in second.pending_ids(IDS):
            add(second, image_id)
    finalize(second)
    assert tree_bytes(directory) == reference


def test_torn_journal_line_and_orphan_image_are_recovered(tmp_path):
    reference = tree_bytes(one_pass(tmp_path / "ref", "png"))
    directory = tmp_path / "torn"
    with writer(directory, "png") as w:
        for image_id in IDS[:5]:
            add(w, image_id)
    journal = journal_path(directory, 0)
    journal.write_bytes(journal.read_bytes() + b'{"id": "000')  # a kill in the middle of an append
    (directory / "images" / "orphan.png").write_bytes(b"written, never journaled")
    (directory / "images" / ".00009.png.abc123.tmp").write_bytes(b"half a temp file")

    resumed = writer(directory, "png")
    assert resumed.done_ids() == set(IDS[:5])
    with resumed:
        for image_id in resumed.pending_ids(IDS):
            add(resumed, image_id)
    assert journal.read_bytes().count(b"\n") == len(IDS)  # torn tail cut, not buried mid-file
    finalize(resumed)
    assert tree_bytes(directory) == reference


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_ranks_give_the_same_bytes_as_one(tmp_path, fmt):
    reference = tree_bytes(one_pass(tmp_path / "ref", fmt))
    directory = tmp_path / "two"
    ranks = [writer(directory, fmt, rank=r, world_size=2) for r in range(2)]
    shares = [w.pending_ids(IDS) for w in ranks]
    assert sorted(shares[0] + shares[1]) == IDS and not set(shares[0]) & set(shares[1])
    for step in range(max(map(len, shares))):  # interleave the ranks, as concurrent processes would
        for w, share in zip(ranks, shares):
            if step < len(share):
                add(w, share[step])
    for w in ranks:
        w.close()
    with pytest.raises(DasgenError, match="rank 0"):
        finalize(ranks[1])
    finalize(ranks[0])
    assert tree_bytes(directory) == reference


def test_resume_with_other_world_size_and_idempotent_finalize(tmp_path):
    reference = tree_bytes(one_pass(tmp_path / "ref", "parquet"))
    directory = tmp_path / "mixed"
    with writer(directory, "parquet", rank=1, world_size=3) as w:  # one rank of a 3-process run finished
        for image_id in w.pending_ids(IDS):
            add(w, image_id)
    with writer(directory, "parquet") as w:  # resumed as one process
        assert len(w.pending_ids(IDS)) == len(IDS) - len(IDS[1::3])
        for image_id in w.pending_ids(IDS):
            add(w, image_id)
    finalize(w)
    finalize(DomainWriter(directory, image_format="parquet", shard_size=4))  # again: no-op rewrite
    assert tree_bytes(directory) == reference
    with pytest.raises(DasgenError, match="finalized"):
        add(DomainWriter(directory, image_format="parquet"), "00099")


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_image_and_consistencies_before_and_after_finalize(tmp_path, fmt):
    directory = tmp_path / "d"
    w = writer(directory, fmt)
    for image_id in IDS[:4]:  # parquet: 3 flushed to staging, 1 still in the buffer
        add(w, image_id)
    for image_id in IDS[:4]:
        assert np.array_equal(w.read_image(image_id), translated_image(image_id, H, W))
    w.close()
    fresh = writer(directory, fmt)  # as the fine-tuning step does: a new writer on the unfinished domain
    expected = [synthetic_record(i, height=H, width=W).consistency for i in IDS[:4]]
    assert fresh.consistencies() == pytest.approx(expected)
    assert np.array_equal(fresh.read_image(IDS[3]), translated_image(IDS[3], H, W))
    with pytest.raises(DasgenError, match="not \\(yet\\)"):
        fresh.read_image(IDS[5])
    finalize(fresh)
    after = writer(directory, fmt)
    assert np.array_equal(after.read_image(IDS[2]), translated_image(IDS[2], H, W))
    assert after.consistencies() == pytest.approx(expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_domain_reader_reads_every_image_of_a_finalized_domain(tmp_path, fmt):
    directory = tmp_path / "d"
    w = writer(directory, fmt)
    for image_id in IDS:
        add(w, image_id)
    w.close()
    finalize(w)
    reader = DomainReader(directory)
    assert reader.ids() == set(IDS) and reader.image_format == fmt
    for image_id in IDS:
        assert np.array_equal(reader.read_image(image_id), translated_image(image_id, H, W))
    with pytest.raises(DasgenError, match="not in"):
        reader.read_image("99999")
    with pytest.raises(DasgenError, match="not found"):
        DomainReader(tmp_path / "unfinished")


# -- errors ------------------------------------------------------------------------------------------------------


def test_writer_rejects_bad_input(tmp_path):
    w = DomainWriter(tmp_path / "d")
    good = synthetic_record("00001", height=H, width=W)
    with pytest.raises(DasgenError, match="uint8"):
        w.add(good, translated_image("00001", H, W).astype(np.float32))
    with pytest.raises(DasgenError, match="record says"):
        w.add(good, translated_image("00001", H + 1, W))
    bad_id = ImageRecord(**{**good.__dict__, "id": "../escape"})
    with pytest.raises(DasgenError, match="cannot name a file"):
        w.add(bad_id, translated_image("00001", H, W))
    w.add(good, translated_image("00001", H, W))
    with pytest.raises(DasgenError, match="twice"):
        w.add(good, translated_image("00001", H, W))
    w.close()
    with pytest.raises(DasgenError, match="image_format"):
        DomainWriter(tmp_path / "d", image_format="parquet").done_ids()
    with pytest.raises(DasgenError, match="rank 2"):
        DomainWriter(tmp_path / "d", rank=2, world_size=2)
    with pytest.raises(DasgenError, match="image_format"):
        DomainWriter(tmp_path / "d", image_format="jpeg")


def test_read_index_rejects_newer_schema_and_non_index(tmp_path):
    directory = one_pass(tmp_path / "001", "png")
    table = read_index(directory)
    newer = table.replace_schema_metadata({**table.schema.metadata, b"schema_version": b"99"})
    pq.write_table(newer, directory / "index.parquet")
    with pytest.raises(DasgenError, match="schema_version 99"):
        read_index(directory)
    pq.write_table(pa.table({"x": [1]}), directory / "index.parquet")
    with pytest.raises(DasgenError, match="schema_version"):
        read_index(directory)
    with pytest.raises(DasgenError, match="not found"):
        read_index(tmp_path / "nowhere")
