"""The domain artifact contract: directory layout and ``index.parquet`` schema (version 1).

This is dasgen's public interface; change it only together with :data:`SCHEMA_VERSION`.

Layout of one domain X^n (``data/domains/<nnn>/``, ``nnn`` zero-padded so directories sort)::

    index.parquet              one row per translated image, sorted by id (schema below)
    images/<id>.png            image_format "png": one RGB PNG per image
    images-00000.parquet ...   image_format "parquet": shards of (id, image) in id order, ``shard_size`` rows each,
                               ``image`` = struct<bytes: binary, path: string> with the Hugging Face ``huggingface``
                               schema metadata, so ``datasets.load_dataset("parquet", ...)`` reads them as images
    segmenter.safetensors      the segmenter g_n fine-tuned on this domain (+ ``segmenter.json`` sidecar)
    metrics.json               the stage's metrics (canonical JSON)
    provenance.json            how the domain was made (dasgen version, params and their hash, model checksums,
                               source dataset kind/root and pair counts); copied into every export's manifest
    .journal/, .staging/       only while a run is unfinished (resume state); removed by ``finalize``

``index.parquet`` columns (none nullable):

    ============  =======  =======================================================================================
    id            string   stable image id: the source file's stem (e.g. GTA5 ``00001``)
    image         string   where the image is, relative to the domain dir: ``images/<id>.png``, or the shard file
                           ``images-00000.parquet`` holding the row with this id
    source_image  string   source image path relative to the source dataset root
    source_label  string   source label path relative to the source dataset root
    split         string   the source split (``train``/``val``/``test``/...)
    domain        int32    n, the intermediate domain X^n (Sec. 4.3)
    t             int32    the noise level t_n of this domain, in paper steps (of T = 1000)
    seed          int64    the per-image seed (``dasgen.seeding.image_seed``)
    height        int32    translated image height in pixels
    width         int32    translated image width in pixels
    consistency   float32  label-consistency score: mIoU of g_{n-1}'s prediction on this image against the source
                           label (NaN when not measured)
    sha256        string   hex sha256 of the PNG file, or of the PNG bytes inside the shard
    ============  =======  =======================================================================================

Schema metadata of ``index.parquet``: ``schema_version`` (``"1"``), ``image_format`` (``"png"`` or ``"parquet"``),
``image_shards`` (JSON object shard file -> sha256; ``{}`` in png mode). Files are written by pyarrow with fixed
options and no timestamps: the same records give the same bytes, whatever the number of ranks or resumes.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa

SCHEMA_VERSION = 1
INDEX_FILE = "index.parquet"
METRICS_FILE = "metrics.json"
PROVENANCE_FILE = "provenance.json"
MANIFEST_FILE = "manifest.json"  # written last by every export: its presence means the export is complete
CHECKSUMS_FILE = "checksums.json"  # sha256 of every file of a domain that the index does not cover, written last
IMAGES_DIR = "images"
SHARD_PREFIX = "images"
STAGING_DIR = ".staging"
JOURNAL_DIR = ".journal"  # per-rank journals of finished images until finalize merges them (artifact/journal.py)
TRASH_DIR = ".trash"
SHARD_FILE = re.compile(r"^images-\d{5}\.parquet$")  # the domain's image shards, parquet mode
IMAGE_FORMATS = ("png", "parquet")


def is_image_payload(relpath: str) -> bool:
    """Files a domain's index accounts for (images, shards) and leftovers of unfinished runs; everything else in a
    finished domain is covered by :data:`CHECKSUMS_FILE`."""
    return (relpath.startswith(f"{IMAGES_DIR}/") or bool(SHARD_FILE.match(relpath))
            or relpath.startswith((f"{JOURNAL_DIR}/", f"{STAGING_DIR}/", f"{TRASH_DIR}/")))

INDEX_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.string(), nullable=False),
        pa.field("source_image", pa.string(), nullable=False),
        pa.field("source_label", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("domain", pa.int32(), nullable=False),
        pa.field("t", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("consistency", pa.float32(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
    ]
)

# Hugging Face `datasets` recognises an Image column only as exactly struct<bytes: binary, path: string>, with the
# schema metadata key "huggingface" declaring {"_type": "Image"}; its fields must be nullable to match.
IMAGE_STRUCT = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])

def parquet_options(dictionary: tuple[str, ...] = ()) -> dict:
    """Fixed pyarrow writer options for every Parquet file dasgen writes: the bytes depend on nothing else.

    ``dictionary`` names the columns worth dictionary encoding (few distinct values, e.g. ``split``).
    """
    return {
        "compression": "zstd",  # fast and widely supported; ids/paths compress well, PNG payloads cost little
        "compression_level": 3,
        "use_dictionary": list(dictionary) if dictionary else False,
        "write_statistics": True,  # min/max per row group: readers can skip row groups when filtering by id
        "write_page_index": False,
        "store_schema": True,
    }


SHARD_ROW_GROUP = 32
"""Rows per row group in image shards: streaming readers hold one group (32 images) at a time."""


def hf_value(dtype: str) -> dict:
    """A Hugging Face ``Value`` feature description, e.g. ``hf_value("string")``."""
    return {"dtype": dtype, "_type": "Value"}


HF_IMAGE = {"_type": "Image"}


def hf_metadata(features: dict[str, dict]) -> dict[bytes, bytes]:
    """Schema metadata declaring Hugging Face features (``{"info": {"features": ...}}`` under key ``huggingface``)."""
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def index_metadata(image_format: str, shards: dict[str, str]) -> dict[bytes, bytes]:
    """The ``index.parquet`` schema metadata for this schema version."""
    return {
        b"schema_version": str(SCHEMA_VERSION).encode(),
        b"image_format": image_format.encode(),
        b"image_shards": json.dumps(shards, sort_keys=True).encode(),
    }


DOMAIN_SHARD_SCHEMA = pa.schema(
    [pa.field("id", pa.string()), pa.field("image", IMAGE_STRUCT)],
    metadata=hf_metadata({"id": hf_value("string"), "image": HF_IMAGE}),
)
"""Schema of the domain's image shards ``images-NNNNN.parquet`` (parquet mode)."""


def shard_name(prefix: str, index: int, total: int | None = None) -> str:
    """``<prefix>-00003.parquet`` or, with ``total``, ``<prefix>-00003-of-00010.parquet`` (the HF convention)."""
    if total is None:
        return f"{prefix}-{index:05d}.parquet"
    return f"{prefix}-{index:05d}-of-{total:05d}.parquet"
