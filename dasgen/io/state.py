"""Reading the JSON state files the stages leave for each other (``data/source_pairs.json``, ``metrics/*.json``, a
domain's ``.fingerprint.json`` and ``metrics.json``): one reader that checks the file's shape, so a damaged, empty or
hand-edited file is one line naming it and what to do, never a traceback from deep inside the stage that reads it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dasgen.errors import DasgenError

_NAMES = {dict: "a JSON object", list: "a JSON list", str: "a string", int: "an integer", float: "a number",
          bool: "true or false"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return next((name for kind, name in _NAMES.items() if type(value) is kind), type(value).__name__)


def read_state(path: Path, *, keys: Mapping[str, type | tuple[type, ...]] | None = None,
               remedy: str = "rerun the stage that writes it") -> dict[str, Any]:
    """The JSON object in ``path``, with each of ``keys`` present and of its type (``(int, float)`` for either).

    Raises DasgenError ``<path>: <what is wrong>; <remedy>`` when the file is missing, unreadable, empty, not JSON,
    not an object, or lacks a key or holds it with another type.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DasgenError(f"{path}: not found; {remedy}") from None
    except UnicodeDecodeError:
        raise DasgenError(f"{path}: not a JSON state file (not UTF-8 text); {remedy}") from None
    except OSError as error:
        raise DasgenError(f"{path}: cannot read ({error.strerror or error}); {remedy}") from None
    if not text.strip():
        raise DasgenError(f"{path}: empty file (a write cut short, or a copy that failed); {remedy}")
    try:
        data = json.loads(text)
    except ValueError as error:
        line = f" (line {error.lineno})" if isinstance(error, json.JSONDecodeError) else ""
        raise DasgenError(f"{path}: not valid JSON{line}; {remedy}") from None
    if not isinstance(data, dict):
        raise DasgenError(f"{path}: expected a JSON object, found {_kind(data)}; {remedy}")
    for key, kind in (keys or {}).items():
        if key not in data:
            raise DasgenError(f"{path}: no {key!r} in it; {remedy}")
        kinds = kind if isinstance(kind, tuple) else (kind,)
        value = data[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            wanted = " or ".join(_NAMES.get(k, k.__name__) for k in kinds)
            raise DasgenError(f"{path}: {key!r} should be {wanted}, found {_kind(value)}; {remedy}")
    return data
