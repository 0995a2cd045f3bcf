"""Per-rank append-only journals: the durable record of which images of an unfinished domain are done.

Each rank appends one JSON line per finished image to ``.journal/rank-<r>.jsonl`` (flush + fsync per append), after
the image's bytes are safely on disk. A kill can tear at most the last line: readers ignore a final line without its
newline, and the owning rank truncates it before appending again, so a torn line never ends up in the middle.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from dasgen.errors import DasgenError
from dasgen.artifact.schema import IMAGES_DIR, JOURNAL_DIR  # noqa: F401 (JOURNAL_DIR re-exported for callers)
from dasgen.io.paths import id_problem

_RANK_FILE = re.compile(r"^rank-(\d+)\.jsonl$")


def journal_path(directory: Path, rank: int) -> Path:
    """The journal file of ``rank`` inside a domain directory."""
    return directory / JOURNAL_DIR / f"rank-{rank}.jsonl"


def journal_files(directory: Path) -> list[Path]:
    """All rank journals of a domain directory, by rank number (any world size, any earlier run)."""
    folder = directory / JOURNAL_DIR
    if not folder.is_dir():
        return []
    ranked = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _RANK_FILE.match(p.name))]
    return [p for _, p in sorted(ranked)]


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The entries of one journal, in write order; a torn (newline-less) last line is ignored."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DasgenError(f"cannot read journal {path}: {error.strerror or error}") from error
    lines = data.split(b"\n")
    complete = lines[:-1]  # the piece after the last newline is empty, or a torn line from a killed writer
    entries = []
    for number, line in enumerate(complete, start=1):
        try:
            entry = json.loads(line)
        except ValueError as error:
            raise DasgenError(f"journal {path} line {number} is corrupt: {error}") from error
        problem = entry_problem(entry)
        if problem is not None:
            raise DasgenError(f"journal {path} line {number} is not a record of a translated image ({problem}); "
                              "delete the domain directory and rerun")
        entries.append(entry)
    return entries


def entry_problem(entry: Any) -> str | None:
    """Why a journal line cannot be a finished image's record, or None. A journal is a file on disk that the index,
    the image file names and the fine-tune are built from, so its id and paths are checked as strictly as a scan's:
    a tampered ``"id": "../../../escape"`` never reaches ``index.parquet``."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    for key in ("id", "sha256", "format"):
        if not isinstance(entry.get(key), str):
            return f"no {key!r} string"
    problem = id_problem(entry["id"])
    if problem is not None:
        return f"id {entry['id'][:80]!r} cannot name a file: {problem}"
    if entry["format"] == "png" and entry.get("image") != f"{IMAGES_DIR}/{entry['id']}.png":
        return f"image path {str(entry.get('image'))[:80]!r} is not {IMAGES_DIR}/<id>.png"
    if entry["format"] == "parquet" and not (isinstance(entry.get("staged"), str) and type(entry.get("row")) is int):
        return "no staging shard and row"
    return None


def read_journals(directory: Path) -> list[dict[str, Any]]:
    """The entries of every rank's journal, rank by rank, each in write order."""
    return [entry for path in journal_files(directory) for entry in read_journal(path)]


class JournalAppender:
    """Appends entries to one rank's journal; opening it first cuts off a torn last line left by a kill."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered O_APPEND descriptor: nothing lingers in a Python buffer after a failed write.
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            size = os.fstat(self._fd).st_size
            if size:
                keep = path.read_bytes().rfind(b"\n") + 1  # 0 when no complete line exists
                if keep != size:
                    os.ftruncate(self._fd, keep)
        except OSError as error:
            raise DasgenError(f"cannot open journal {path}: {error.strerror or error}") from error

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Write ``entries`` as JSON lines, then fsync: they are durable when this returns."""
        if not entries:
            return
        if self._fd is None:
            raise DasgenError(f"journal {self.path} is closed")
        payload = b"".join(
            json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n" for entry in entries
        )
        start = os.fstat(self._fd).st_size
        try:
            view = memoryview(payload)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError as error:
            try:  # do not leave a partial line that a later append would bury in the middle
                os.ftruncate(self._fd, start)
            except OSError:  # pragma: no cover - readers still ignore a torn last line
                pass
            raise DasgenError(f"cannot append to journal {self.path}: {error.strerror or error}") from error

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
