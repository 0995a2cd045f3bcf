"""The journal of an unfinished export: which files it wrote, so a rerun removes those and nothing else.

An export first writes :data:`IN_PROGRESS_FILE` into its directory, then appends one JSON line per file *before*
writing it (``{"path": p}``: a kill during the write may leave that file or its temporary sibling) and one after
(``{"path": p, "sha256": s}``: the file is complete with that content). The last rename of the export turns this file
into ``manifest.json``. Rerunning the command reads the journal back (:func:`read_journal`) and may delete exactly the
listed files, their temporary siblings and the folders they made -- so a file the user put there meanwhile, or a
listed file the user replaced, is never deleted. A marker whose first line is not the journal header (planted by
hand, or from another tool) is not a journal: the directory is then treated as foreign.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import IO

from dasgen.errors import DasgenError
from dasgen.io.atomic import atomic_write_text
from dasgen.io.paths import is_safe_relpath

IN_PROGRESS_FILE = ".dasgen-export-incomplete"
"""Written first into an export directory and turned into ``manifest.json`` by the last rename: while it exists the
directory holds an unfinished export of ours, which the same command may empty and redo without ``--force``."""

JOURNAL_VERSION = 1
_HEADER = {"dasgen_export_journal": JOURNAL_VERSION,
           "note": "unfinished dasgen export: rerun the same command to redo it"}


def _temp_pattern(name: str) -> re.Pattern[str]:
    """The names :func:`dasgen.io.atomic.temp_name` gives a temporary sibling of ``name``."""
    return re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{12}}\.tmp")


def is_temp_of(candidate: str, name: str) -> bool:
    """Whether file name ``candidate`` is a temporary sibling of file name ``name``."""
    return _temp_pattern(name).fullmatch(candidate) is not None


def start_journal(out_dir: Path) -> None:
    """Write a fresh, empty journal (the in-progress marker) into ``out_dir`` (atomic, fsync)."""
    atomic_write_text(out_dir / IN_PROGRESS_FILE, json.dumps(_HEADER, sort_keys=True) + "\n")


def read_journal(out_dir: Path) -> tuple[dict[str, str | None] | None, str]:
    """``({relpath: sha256 or None}, "")`` for the files an unfinished export in ``out_dir`` listed (None: it was being
    written), or ``(None, why)`` when the marker is not a journal of ours (wrong header, a bad line, an unsafe path).

    A last line without its newline is a line a kill cut short: it is ignored, since its file's write had not begun.
    """
    try:
        text = (out_dir / IN_PROGRESS_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return None, f"unreadable ({error})"
    lines = text.split("\n")
    if lines and lines[-1] != "":
        lines = lines[:-1]  # cut short by a kill
    lines = [line for line in lines if line]
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("dasgen_export_journal") != JOURNAL_VERSION:
        return None, "it is not a dasgen export journal"
    files: dict[str, str | None] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            entry = json.loads(line)
        except ValueError:
            return None, f"line {number} is not JSON"
        path = entry.get("path") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not is_safe_relpath(path) or path.split("/")[-1] == IN_PROGRESS_FILE:
            return None, f"line {number} names no safe path inside the directory"
        if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            return None, f"line {number} has no valid sha256"
        files[path] = digest if digest is not None else files.get(path)
    return files, ""


class JournalWriter:
    """Appends lines to the journal started by :func:`start_journal`; each line is flushed at once (one ``write``),
    so a killed process leaves every line it wrote before the file it names."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / IN_PROGRESS_FILE
        self._handle: IO[str] | None = None

    def _append(self, entry: dict[str, str]) -> None:
        try:
            if self._handle is None:
                self._handle = open(self.path, "a", encoding="utf-8", newline="\n")
            self._handle.write(json.dumps(entry, sort_keys=True) + "\n")
            self._handle.flush()
        except OSError as error:
            raise DasgenError(f"cannot write {self.path}: {error.strerror or error}") from None

    def reserve(self, relpath: str) -> None:
        """Record that ``relpath`` is about to be written."""
        self._append({"path": relpath})

    def written(self, relpath: str, sha256: str) -> None:
        """Record that ``relpath`` is complete with content ``sha256``."""
        self._append({"path": relpath, "sha256": sha256})

    def close(self) -> None:
        """Close the journal (before the marker is replaced by the manifest, or after a failure)."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()
            except OSError:  # every line was flushed when written; a failing close loses nothing
                pass
