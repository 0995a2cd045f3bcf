"""The source dataset's content, as the scan records it: a sha256 and a byte count per usable pair.

A domain's images pair translations with the source labels, so a domain (and g_0, trained on the source) is valid
only for the source content it was made from. The scan hashes every usable pair's files; the digest of those hashes
is part of g_0's and each domain's fingerprint and of each domain's provenance, so after the source changes
(``dasgen toy --set toy.seed=7``, files replaced) and a new scan, nothing made from the old content is called
complete. Between a change and the new scan, before earlier work is resumed or called complete,
:func:`check_unchanged` compares the files' sizes with the scan's (one ``stat`` per file) and names the command that
rescans; a replacement of exactly the same size is seen only by the scan itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from dasgen.datasets.base import Entry
from dasgen.errors import DasgenError

_CHUNK = 1 << 20


def _files(root: Path, entry: Entry) -> list[Path]:
    return [root / entry.image] + ([root / entry.label] if entry.label is not None else [])


def pair_content(root: Path, entry: Entry) -> tuple[str, int]:
    """(sha256 of the pair's image bytes then label bytes, their total size in bytes)."""
    digest, size = hashlib.sha256(), 0
    for path in _files(root, entry):
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        digest.update(b"\0")  # image|label boundary: moving bytes from one file to the other changes the digest
    return digest.hexdigest(), size


def content_record(hashes: dict[str, tuple[str, int]]) -> dict:
    """The scan record's content keys from ``{id: (sha256, bytes)}``: per-pair hashes and sizes, and their digest."""
    ids = sorted(hashes)
    digest = hashlib.sha256("".join(f"{i}:{hashes[i][0]}\n" for i in ids).encode()).hexdigest()
    return {"content_sha256": digest, "pair_sha256": {i: hashes[i][0] for i in ids},
            "pair_bytes": {i: hashes[i][1] for i in ids}}


def content_sha256(record: dict) -> str | None:
    """The source content digest of a scan record; None for a scan written before dasgen recorded it."""
    value = record.get("content_sha256")
    return value if isinstance(value, str) else None


def listing_sha256(root: Path, entries: list[Entry]) -> str:
    """sha256 of each entry's id and file sizes: a cheap stand-in for the content of a dataset no scan hashes (the
    DDPM's unlabelled target images), so that another set of images, or images replaced by others of another size,
    make another fingerprint."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.id):
        digest.update(f"{entry.id}:{':'.join(str(p.stat().st_size) for p in _files(root, entry))}\n".encode())
    return digest.hexdigest()


def check_unchanged(record: dict, root: Path, entries: list[Entry]) -> None:
    """Raise a one-line DasgenError when a source file of ``entries`` is gone or its size differs from the scan's.

    A scan without recorded sizes (older dasgen) is not checked."""
    sizes = record.get("pair_bytes")
    if not isinstance(sizes, dict):
        return
    for entry in entries:
        try:
            size = sum(path.stat().st_size for path in _files(root, entry))
        except OSError:
            size = None
        if size != sizes.get(entry.id):
            files = " and ".join(p.relative_to(root).as_posix() for p in _files(root, entry))
            raise DasgenError(f"{root}: source pair {entry.id} ({files}) changed since the scan; run `dasgen scan` "
                              "(or `dvc repro`) so that nothing made from the old content is reused")
