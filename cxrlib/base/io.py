"""Atomic writes: a file appears complete or not at all.

Every output the workbook writes (manifests, checkpoints, caches, run records) goes
through :func:`write_atomic`: written to a temporary name beside the target, then
renamed over it, so a killed process never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary file (``.<name>.<pid>.tmp``) is removed if ``write`` fails.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike, data: object, **dumps: object) -> Path:
    """Write ``data`` as indented JSON (plus a final newline) atomically.

    ``dumps`` are extra keyword arguments of :func:`json.dumps` (e.g. ``sort_keys``,
    ``default``).
    """
    text = json.dumps(data, indent=2, **dumps) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def read_json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in ``path``, or None when the file is missing, unreadable, not
    JSON or not an object (for records that may be absent; never raises)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
