"""Relative paths read from an index or a manifest, checked so they can never leave their root directory.

An index or manifest is data a user may have downloaded; a path in it such as ``../../.bashrc`` or ``/etc/passwd``
must not make dasgen read or report on files outside the artifact. Paths are stored POSIX-style (``/``) on every OS.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from dasgen.errors import DasgenError


MAX_ID_CHARS = 200  # an id names files (images/<id>.png); long ids break on common filesystems' 255-byte names


def id_problem(image_id: object) -> str | None:
    """Why ``image_id`` cannot be a dasgen image id (it names files ``images/<id>.png`` in every artifact), or None.

    The one rule for ids: checked when a dataset is listed (the pair is reported bad) and when a domain is written.
    """
    if not isinstance(image_id, str) or not image_id:
        return "empty id"
    try:
        image_id.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    if image_id.startswith("."):
        return "id starts with '.' (a hidden file name)"
    if any(ch in image_id for ch in "/\\\x00") or any(ord(ch) < 32 for ch in image_id):
        return "id holds a path separator or a control character"
    if len(image_id) > MAX_ID_CHARS:
        return f"id longer than {MAX_ID_CHARS} characters"
    return None


def is_safe_relpath(relpath: str) -> bool:
    """Whether ``relpath`` is a plain relative POSIX path inside its root: no ``..``, no absolute or drive path."""
    if not relpath or "\\" in relpath or "\x00" in relpath or ":" in relpath.split("/", 1)[0]:
        return False
    pure = PurePosixPath(relpath)
    if pure.is_absolute():
        return False
    return all(part not in ("", ".", "..") for part in relpath.split("/"))


def resolve_inside(root: Path, relpath: str) -> Path:
    """``root / relpath`` after checking the path stays inside ``root`` (also through symlinks); else DasgenError."""
    if not is_safe_relpath(relpath):
        raise DasgenError(f"unsafe path {relpath!r} in {root}: paths must be relative and stay inside it")
    candidate = root / relpath
    real_root = root.resolve()
    real = candidate.resolve()
    if real != real_root and real_root not in real.parents:
        raise DasgenError(f"path {relpath!r} in {root} resolves outside it (symlink?)")
    return candidate


def relpath_posix(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string (the form stored in indexes and manifests)."""
    return path.relative_to(root).as_posix()


def walk_files(root: Path) -> list[str]:
    """All regular files (and symlinks) under ``root`` as sorted POSIX relative paths."""
    found = [relpath_posix(p, root) for p in root.rglob("*") if p.is_file() or p.is_symlink()]
    return sorted(found)


def refuse_location(out: Path, protect: Mapping[Path, str], *, doing: str) -> None:
    """Refuse (one line) an output path that is the filesystem root or the home directory, or that is, lies inside
    or contains a protected path (``{path: what it is}``: a dataset, a workspace artifact), compared resolved.
    ``doing`` names the writer in the message, e.g. "write the toy datasets into"."""
    real = Path(out).resolve()
    if real == Path(real.anchor) or real == Path.home().resolve():
        raise DasgenError(f"refusing to {doing} {out}: it is the filesystem root or the home directory; "
                          "choose another --out")
    for path, what in protect.items():
        guarded = Path(path).resolve()
        relation = ("is" if real == guarded else "lies inside" if guarded in real.parents
                    else "contains" if real in guarded.parents else None)
        if relation is not None:
            raise DasgenError(f"refusing to {doing} {out}: it {relation} {what} ({path}); choose another --out")
