"""Check an export (against its ``manifest.json``) or a domain artifact (against ``index.parquet``).

An export is checked file by file: every file listed in the manifest must exist with its sha256, and no other file
may exist. A domain is checked through its index and its ``checksums.json``: every image file (PNG, or shard whose
sha256 the index metadata records) must match, parquet-mode shards must hold every indexed image with its PNG sha256,
every other file (index, metrics, provenance, segmenter) must match ``checksums.json``, and no file either leaves
out may exist. A path in an index or manifest that is absolute or climbs out with
``..`` is reported as invalid and never opened. ``python -m dasgen.artifact.verify PATH`` exits 0 only when ok.
"""

from __future__ import annotations

import json
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dasgen.errors import DasgenError
from dasgen.io.atomic import sha256_bytes, sha256_file
from dasgen.artifact.reader import index_image_format, read_index
from dasgen.io.paths import is_safe_relpath, resolve_inside, walk_files
from dasgen.artifact.schema import CHECKSUMS_FILE, INDEX_FILE, MANIFEST_FILE, is_image_payload


@dataclass
class VerifyReport:
    """What :func:`verify` found; ``ok`` only when nothing is missing, extra, altered or invalid."""

    path: Path
    kind: str  # "export" or "domain"
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # unsafe paths in the index/manifest

    @property
    def ok(self) -> bool:
        """True when every listed file is present and unaltered and nothing else is there."""
        return not (self.missing or self.extra or self.altered or self.invalid)

    def summary(self) -> str:
        """A few human-readable lines (at most 10 paths per problem)."""
        lines = [f"{self.kind} {self.path}: {self.checked} files checked, " + ("OK" if self.ok else "FAILED")]
        for name in ("missing", "extra", "altered", "invalid"):
            paths = getattr(self, name)
            if paths:
                shown = ", ".join(paths[:10]) + (f" (+{len(paths) - 10} more)" if len(paths) > 10 else "")
                lines.append(f"  {name} ({len(paths)}): {shown}")
        return "\n".join(lines)


def verify(path: str | Path) -> VerifyReport:
    """Verify an export (has ``manifest.json``) or a domain artifact (has ``index.parquet``)."""
    root = Path(path)
    if (root / MANIFEST_FILE).is_file():
        return verify_export(root)
    if (root / INDEX_FILE).is_file():
        return verify_domain(root)
    raise DasgenError(f"{root} has neither {MANIFEST_FILE} nor {INDEX_FILE}: nothing to verify")


def _compare(report: VerifyReport, root: Path, expected: dict[str, str]) -> None:
    """Check each expected path's sha256; unsafe paths go to ``invalid`` and are never opened."""
    for relpath, digest in sorted(expected.items()):
        if not is_safe_relpath(relpath):
            report.invalid.append(relpath)
            continue
        try:
            target = resolve_inside(root, relpath)
        except DasgenError:
            report.invalid.append(relpath)
            continue
        if not target.is_file():
            report.missing.append(relpath)
            continue
        report.checked += 1
        if sha256_file(target) != digest:
            report.altered.append(relpath)


def verify_export(root: Path) -> VerifyReport:
    """Compare an export directory with its manifest's ``files``."""
    report = VerifyReport(root, "export")
    try:
        manifest = json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
    except (ValueError, KeyError, TypeError) as error:
        raise DasgenError(f"{root / MANIFEST_FILE} is not a dasgen manifest: {error}") from error
    _compare(report, root, files)
    report.extra = [p for p in walk_files(root) if p != MANIFEST_FILE and p not in files]
    report.invalid += _special_files(root)
    return report


def verify_domain(root: Path) -> VerifyReport:
    """Compare a domain directory with its index (image checksums, shard contents) and its ``checksums.json``
    (every other file: the index itself, metrics, provenance, the segmenter g_n); any file neither covers is extra."""
    report = VerifyReport(root, "domain")
    recorded = _recorded_checksums(root, report)
    _compare(report, root, recorded)
    table = read_index(root)
    image_format = index_image_format(table)
    rows = table.select(["id", "image", "sha256"]).to_pylist()
    if image_format == "png":
        expected = {row["image"]: row["sha256"] for row in rows}
    else:
        expected = json.loads((table.schema.metadata or {}).get(b"image_shards", b"{}"))
        for row in rows:
            if row["image"] not in expected:
                report.invalid.append(f"{row['image']} (shard of {row['id']} has no checksum in the index)")
    _compare(report, root, expected)
    if image_format == "parquet":
        _check_shard_contents(report, root, rows)
    report.extra = [p for p in walk_files(root)
                    if p != CHECKSUMS_FILE and p not in (expected if is_image_payload(p) else recorded)]
    report.invalid += _special_files(root)
    return report


def _special_files(root: Path) -> list[str]:
    """Entries that are neither folders, regular files nor links (a FIFO, a socket, a device): no artifact holds
    one, and reading one could block or never end, so each is reported invalid and never opened."""
    found = []
    for path in sorted(root.rglob("*")):
        if not (path.is_symlink() or path.is_dir() or path.is_file()):
            kind = "FIFO" if stat.S_ISFIFO(path.lstat().st_mode) else "not a regular file"
            found.append(f"{path.relative_to(root).as_posix()} ({kind})")
    return found


def _recorded_checksums(root: Path, report: VerifyReport) -> dict[str, str]:
    """``checksums.json``'s files; a missing or unreadable record is reported (an artifact it does not cover is
    not verified)."""
    path = root / CHECKSUMS_FILE
    if not path.is_file():
        report.missing.append(f"{CHECKSUMS_FILE} (the artifact's record of its non-image files)")
        return {}
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise TypeError("files is not an object of sha256 strings")
    except (OSError, ValueError, KeyError, TypeError):
        report.altered.append(CHECKSUMS_FILE)
        return {}
    return files


def _check_shard_contents(report: VerifyReport, root: Path, rows: list[dict]) -> None:
    """Every indexed image must be in its shard with the indexed PNG sha256 (catches rebuilt shards)."""
    by_shard: dict[str, dict[str, str]] = {}
    for row in rows:
        by_shard.setdefault(row["image"], {})[row["id"]] = row["sha256"]
    for shard, wanted in sorted(by_shard.items()):
        if shard in report.invalid or shard in report.missing or not is_safe_relpath(shard):
            continue
        try:
            path = resolve_inside(root, shard)
            for batch in pq.ParquetFile(path).iter_batches(batch_size=32, columns=["id", "image"]):
                for image_id, image in zip(batch.column("id").to_pylist(), batch.column("image").to_pylist()):
                    digest = wanted.pop(image_id, None)
                    if digest is not None and sha256_bytes(image["bytes"]) != digest:
                        report.altered.append(f"{shard}#{image_id}")
        except (DasgenError, OSError, pa.ArrowException, TypeError):
            if shard not in report.altered:
                report.altered.append(shard)
            continue
        report.missing.extend(f"{shard}#{image_id}" for image_id in sorted(wanted))


def main(argv: list[str] | None = None) -> int:
    """``python -m dasgen.artifact.verify PATH...``: print each report; exit status 0 only when all are ok."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m dasgen.artifact.verify PATH [PATH...]", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        try:
            report = verify(path)
        except DasgenError as error:
            print(f"error: {error}", file=sys.stderr)
            status = 1
            continue
        print(report.summary())
        status |= 0 if report.ok else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
