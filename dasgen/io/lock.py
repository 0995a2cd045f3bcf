"""Exclusive OS locks on a directory, for dasgen commands that must not write the same files at once.

The lock is ``flock`` on the directory itself, so the kernel drops it when the holder exits or is killed: there is no
lock file to go stale. Where ``fcntl`` does not exist (Windows) nothing is locked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from dasgen.errors import DasgenError


@contextmanager
def directory_lock(directory: Path, *, busy: str | None = None,
                   on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (which must exist) for the ``with`` block.

    If another process holds it: with ``busy``, raise :class:`DasgenError` with that line at once; without, block
    until it is released, calling ``on_wait()`` once first (e.g. to say what the command is waiting for). Only taking
    the lock raises; errors of the ``with`` block pass through untouched.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if busy is not None:
                raise DasgenError(busy) from None
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing the descriptor releases the lock
