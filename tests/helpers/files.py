"""What the tests compare folders by: every file's bytes under its relative path."""

from __future__ import annotations

from pathlib import Path


def tree_bytes(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """relative posix path -> bytes of every file under ``directory`` (file names in ``skip`` left out)."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(Path(directory).rglob("*"))
            if p.is_file() and p.name not in skip}
