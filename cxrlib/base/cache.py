"""Cache keys: one hash of everything that decides a cached value.

Every cache (prior files, encoder features, trained segmenters, pretrained encoders)
names its entries by :func:`cache_key` of a JSON-able description of its inputs, and
writes the entries with :func:`cxrlib.base.io.write_atomic`, so an entry is complete
or absent and a changed input never finds a stale one.

The key is the sha256 (hex) of the description as canonical JSON: keys sorted, values
that JSON cannot hold written as ``str(value)``. Two spacings exist because the caches
were keyed with both before they shared this helper, and a changed spacing would
change every key and orphan caches that are meant to be reused:

- ``compact=True`` (``","`` and ``":"``): the prior cache, the prior settings and
  the encoder feature cache;
- ``compact=False`` (``", "`` and ``": "``, :func:`json.dumps`'s default): trained
  segmenters, pretrained encoders and the prior cache's input fingerprints.

Two processes may fill one cache at once (two notebooks, a notebook and ``cxr``).
:func:`entry_lock` serialises the builders of one entry with a :class:`filelock.FileLock`
on ``<entry>.lock`` beside it, and :func:`build_once` is the pattern of the caches whose
entry is one folder: check complete, lock, check again, build into a temporary folder,
rename it into place, unlock. The second process waits, then finds the entry complete
and reuses it; readers never see a half-built entry. The lock is an OS lock
(``fcntl.flock``): the kernel releases it when its holder exits or is killed, so a
killed build never leaves a stale lock (its temporary folder is removed by the next
builder). A wait longer than :func:`lock_timeout` raises :class:`CxrError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from cxrlib.base.errors import CxrError

LOCK_TIMEOUT_ENV = "CXR_CACHE_LOCK_TIMEOUT"
"""Environment variable: seconds to wait for another process's build of a cache entry."""

DEFAULT_LOCK_TIMEOUT = 6 * 3600.0
"""Default wait for a cache entry's lock: 6 hours (a full pretraining may take hours)."""


def canonical_json(value: object, *, compact: bool = True) -> str:
    """``value`` as JSON with sorted keys (non-JSON values as ``str``), the text
    :func:`cache_key` hashes; ``compact`` chooses the spacing (see the module doc)."""
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(value, sort_keys=True, separators=separators, default=str)


def cache_key(value: object, *, compact: bool = True) -> str:
    """sha256 (64 hex digits) of :func:`canonical_json` of ``value``.

    Equal descriptions give equal keys; callers name folders or files by a prefix
    (``key[:16]``) and store the description beside the entry to check it on load.
    """
    return hashlib.sha256(canonical_json(value, compact=compact).encode()).hexdigest()


def lock_timeout() -> float:
    """Seconds :func:`entry_lock` waits: ``$CXR_CACHE_LOCK_TIMEOUT`` or 6 hours."""
    value = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise CxrError(f"{LOCK_TIMEOUT_ENV}={value!r}: expected a number of seconds") from None
    if seconds < 0:
        raise CxrError(f"{LOCK_TIMEOUT_ENV}={value!r}: expected >= 0 seconds")
    return seconds


def lock_path(entry: str | os.PathLike) -> Path:
    """The lock file of a cache entry: ``<entry>.lock`` beside it."""
    entry = Path(entry)
    return entry.with_name(entry.name + ".lock")


@contextmanager
def entry_lock(entry: str | os.PathLike, timeout: float | None = None) -> Iterator[Path]:
    """Hold the lock of cache entry ``entry`` (a file or folder, existing or not).

    One process at a time holds it; others wait up to ``timeout`` seconds (default
    :func:`lock_timeout`), then :class:`CxrError`. The lock file ``<entry>.lock`` stays
    in place (waiters share its inode); the lock itself dies with its holder. Not
    re-entrant: do not take the same entry's lock twice in one process.
    """
    path = lock_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    wait = lock_timeout() if timeout is None else timeout
    lock = filelock.FileLock(path, timeout=wait)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise CxrError(
            f"{path}: another process has been building this cache entry for over "
            f"{wait:g} s; wait for it, or raise {LOCK_TIMEOUT_ENV} (seconds)"
        ) from None
    try:
        yield path
    finally:
        lock.release()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def build_once(
    folder: str | os.PathLike,
    is_complete: Callable[[Path], bool],
    build: Callable[[Path], object],
    timeout: float | None = None,
) -> bool:
    """Make the cache entry ``folder`` once, however many processes ask at the same time.

    If ``is_complete(folder)``, nothing is done. Otherwise the entry's lock is taken
    (:func:`entry_lock`), completeness checked again (another process may have built it
    while this one waited), and ``build(tmp)`` called on a fresh temporary folder
    beside it (``.<name>.<pid>.tmp``), which is then renamed to ``folder``; an
    incomplete ``folder`` and temporary folders of killed builds are removed first.
    ``build`` must write everything into ``tmp`` (it may create it) and record nothing
    that names ``tmp``. Returns True when this call built the entry, False when reused.
    """
    folder = Path(folder)
    if is_complete(folder):
        return False
    with entry_lock(folder, timeout):
        if is_complete(folder):
            return False
        for leftover in folder.parent.glob(f".{folder.name}.*.tmp"):
            _remove(leftover)  # a killed build's; the lock says no one else is building
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        try:
            build(tmp)
            if folder.exists() or folder.is_symlink():
                _remove(folder)  # incomplete: an interrupted build of an older version
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                _remove(tmp)
    return True
