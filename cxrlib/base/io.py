"""Atomic writes: a file appears complete or not at all.

Every output the workbook writes (manifests, checkpoints, caches, run records) goes
through :func:`write_atomic`: written to a temporary name beside the target, then
renamed over it, so a killed process never leaves a half-written file behind.

A write the system refuses (disk full, read-only file system, no permission) leaves
the previous file in place, removes the temporary one and raises :class:`WriteError`,
a :class:`~cxrlib.base.errors.CxrError` naming the file and the cause in one line
(``<path>: cannot write: no space left on device``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from cxrlib.base.errors import CxrError

# how safetensors (Rust) reports a failed write: "Error while serializing: I/O error:
# No space left on device (os error 28)", a SafetensorError rather than an OSError
_OS_ERROR_RE = re.compile(r"\(os error (\d+)\)")


class WriteError(CxrError):
    """``path`` could not be written because of ``cause`` (an :class:`OSError`); the
    previous version, if any, is left in place and no temporary file remains."""

    def __init__(self, path: str | os.PathLike, cause: OSError, what: str = ""):
        self.path = Path(path)
        self.cause = cause
        target = f" {what}" if what else ""
        super().__init__(f"{path}: cannot write{target}: {describe_os_error(cause)}")


def describe_os_error(err: OSError) -> str:
    """The system's words for ``err`` in lower case, e.g. ``no space left on device``."""
    text = err.strerror or (os.strerror(err.errno) if err.errno else "") or str(err)
    text = " ".join(str(text or type(err).__name__).split())  # one line
    return text[:1].lower() + text[1:]


def os_error(err: BaseException) -> OSError | None:
    """The operating-system error behind ``err``, or None when it is not one.

    ``err`` itself when it is an :class:`OSError`; the cause of a :class:`WriteError`;
    or an :class:`OSError` rebuilt from a library message ending in ``(os error N)``
    (safetensors reports a full disk so).
    """
    if isinstance(err, WriteError):
        return err.cause
    if isinstance(err, OSError):
        return err
    match = _OS_ERROR_RE.search(str(err))
    if match:
        number = int(match.group(1))
        return OSError(number, os.strerror(number))
    return None


def remove_quietly(path: Path) -> None:
    """Delete file ``path`` if it exists; a failure to delete is ignored."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary file (``.<name>.<pid>.tmp``) is removed if ``write`` or the rename
    fails; a failure of the system (see :func:`os_error`) is raised as
    :class:`WriteError`, any other exception as it is.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        remove_quietly(tmp)
        cause = os_error(err) if isinstance(err, Exception) else None
        if cause is None or isinstance(err, WriteError):
            raise
        raise WriteError(path, cause) from err
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
