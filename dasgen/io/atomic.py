"""Atomic file writes and sha256 checksums.

Every file dasgen produces is written through a temporary name in the same directory (same filesystem, so the final
``os.replace`` is atomic), flushed and fsync'ed first. A reader -- or a run resumed after a kill -- therefore sees
either the old file or the complete new one, never a torn one. A failed write (disk full, permission denied) raises
:class:`~dasgen.errors.DasgenError` naming the path, removes its temporary file and leaves the old file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from dasgen.errors import DasgenError

_CHUNK = 1 << 20  # 1 MiB reads: large enough to reach disk speed, small enough to keep memory flat
TEMP_SUFFIX = ".tmp"


def temp_name(path: Path) -> Path:
    """The temporary sibling ``.<name>.<random>.tmp`` that :func:`atomic_open` writes before renaming."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """Whether a file name looks like a leftover :func:`temp_name` (from a killed process)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _write_error(path: Path, error: OSError) -> DasgenError:
    reason = error.strerror or str(error)
    return DasgenError(f"cannot write {path}: {reason}")


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory: the rename is still atomic
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, fsync: bool = True) -> Iterator[IO[Any]]:
    """Open ``path`` for writing through a temporary name; on success fsync it, rename it into place and fsync the
    directory (so a journal written afterwards never lists a file that a power cut could still take back).

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8, ``\\n`` newlines). With ``fsync=False`` the rename is still atomic
    (no torn files) but the data may sit in the page cache after a power cut; exports use that for speed and write
    their manifest, the completion marker, with fsync. Parent directories are created. Any exception inside the
    block removes the temporary file and re-raises; an ``OSError`` becomes a ``DasgenError`` naming ``path``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 lets the umask decide the permissions, as a plain open() would (mkstemp forces 0o600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as error:
        raise _write_error(path, error) from error
    try:
        if mode == "wb":
            handle: IO[Any] = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        with handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException as error:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:  # pragma: no cover - e.g. the directory became read-only meanwhile
            pass
        if isinstance(error, OSError):
            raise _write_error(path, error) from error
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb", fsync=fsync) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8, ``\\n`` newlines) to ``path`` atomically."""
    with atomic_open(path, "w", fsync=fsync) as handle:
        handle.write(text)


def dumps_json(data: Any) -> str:
    """Canonical JSON text: sorted keys, 2-space indent, trailing newline -- same data, same bytes."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=True) + "\n"


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, fsync: bool = True) -> None:
    """Write ``data`` as canonical JSON (:func:`dumps_json`) to ``path`` atomically."""
    atomic_write_text(path, dumps_json(data), fsync=fsync)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's contents, read in 1 MiB chunks (constant memory)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as error:
        raise DasgenError(f"cannot read {path}: {error.strerror or error}") from error
    return digest.hexdigest()
