"""Local paths out of everything an export publishes: the card and the manifest carry the domain's provenance, whose
params name dataset roots such as ``/home/me/datasets/gta5``. An export is shared, so a path inside the workspace
becomes relative to it, and any other absolute path keeps only its last component behind :data:`REDACTED`
(``<local>/gta5``): enough to tell datasets apart, nothing about the machine it was made on.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

REDACTED = "<local>"
# An absolute POSIX path (not the tail of a URL or of a relative path: nothing path-like right before the slash) or a
# Windows drive path, up to a character that cannot be part of a path written into a message.
_ABSOLUTE = re.compile(r"(?<![\w.~/:\\-])/[^\s/'\"`,;()<>]+(?:/[^\s/'\"`,;()<>]+)*/?"
                       r"|\b[A-Za-z]:[\\/][^\s'\"`,;()<>]*")


def _last_component(path: str) -> str:
    pure = PureWindowsPath(path) if re.match(r"[A-Za-z]:", path) else PurePosixPath(path)
    return pure.name


def redact_text(text: str, workspace: Path | None = None) -> str:
    """``text`` with the workspace's absolute path made relative (``.``) and every other absolute path reduced to
    ``<local>/<last component>``."""
    if workspace is not None:
        for root in sorted({str(workspace.absolute()), str(workspace.resolve())}, key=len, reverse=True):
            text = text.replace(root + "/", "")  # inside the workspace: relative to it
            text = re.sub(re.escape(root) + r"(?![\w.-])", ".", text)  # the workspace itself
    return _ABSOLUTE.sub(lambda m: f"{REDACTED}/{_last_component(m.group(0).rstrip('/'))}", text)


def redact_paths(value: Any, workspace: Path | None = None) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with :func:`redact_text` applied to every string,
    keys included."""
    if isinstance(value, str):
        return redact_text(value, workspace)
    if isinstance(value, dict):
        return {redact_paths(k, workspace): redact_paths(v, workspace) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_paths(v, workspace) for v in value]
    return value
