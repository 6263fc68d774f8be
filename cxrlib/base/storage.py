"""Files anywhere: local paths, or fsspec URLs (``gs://``, ``s3://``, ``https://``,
``file://``, ``memory://``...) for manifests, images and masks.

A local path (a ``Path``, or a string without ``scheme://``) never goes through fsspec:
callers keep their local code as it was and branch on :func:`is_url`. A URL is read
through ``fsspec`` and the back-end of its protocol, an optional package (``gcsfs``,
``s3fs``, ``aiohttp``...): a missing back-end, an unknown protocol, a missing object or
a failed read is a :class:`~cxrlib.base.errors.CxrError` naming the URL, in one line.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from cxrlib.base.errors import CxrError, one_line

_URL = re.compile(r"^(?:[A-Za-z][\w+.-]*::)*([A-Za-z][\w+.-]+)://")
"""``scheme://`` (optionally behind fsspec's ``chain::`` prefixes); the scheme has two
characters at least, so a Windows drive (``C:/``) is never a URL."""

_VERSION_KEYS = ("etag", "ETag", "md5Hash", "generation", "LastModified", "updated", "mtime")
"""Fields of an fsspec ``info`` that change when an object is replaced (the back-ends
name them differently); the first one present goes into a cache fingerprint."""


def is_url(path: object) -> bool:
    """Whether ``path`` is a URL string (``scheme://...``); ``Path`` objects never are."""
    return isinstance(path, str) and "://" in path and _URL.match(path) is not None


def join(root: str | os.PathLike, cell: str) -> Path | str:
    """``cell`` resolved against the folder ``root``: a URL or absolute path as is, a
    relative one under ``root`` (a URL when ``root`` is one, ``..`` applied)."""
    if is_url(cell):
        return cell
    path = Path(cell)
    if path.is_absolute():
        return path
    if is_url(root):
        scheme, _, rest = str(root).rstrip("/").partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, cell))}"
    return Path(root) / path


def parent(url: str) -> str:
    """The folder of a URL (``memory://data/m.csv`` -> ``memory://data``)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"


_UNUSABLE: dict[str, str] = {}
"""Protocol -> why its URLs cannot be read (unknown, back-end missing): found once, so
a manifest of many such rows does not retry the import on each."""


def _filesystem(url: str):
    """``(filesystem, path)`` of a URL; CxrError for an unknown protocol or a back-end
    that is not installed (naming the package to install)."""
    protocol = _URL.match(url).group(1)
    if protocol in _UNUSABLE:
        raise CxrError(f"{url}: {_UNUSABLE[protocol]}")
    try:
        import fsspec.core  # deferred: local files never need it
    except ImportError:
        raise CxrError(f"{url}: reading URLs needs fsspec (pip install fsspec)") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:
        cause = err.__cause__ if isinstance(err.__cause__, ImportError) else err
        package = (cause.name or "").split(".")[0]
        needs = f"the {package} package (pip install {package})" if package else one_line(err)
        _UNUSABLE[protocol] = f"{protocol}:// URLs need {needs}"
    except ValueError as err:
        if "protocol" not in str(err).lower():
            raise CxrError(f"{url}: not a usable URL ({one_line(err)})") from None
        _UNUSABLE[protocol] = f"unknown URL protocol {protocol!r} (fsspec knows none such)"
    raise CxrError(f"{url}: {_UNUSABLE[protocol]}")


def read_bytes(url: str, what: str = "file") -> bytes:
    """The whole object at ``url``; CxrError naming it (``what`` it should be) when it
    is missing or cannot be read."""
    fs, path = _filesystem(url)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CxrError(f"{url}: {what} file does not exist") from None
    except IsADirectoryError:
        raise CxrError(f"{url}: {what} is a folder, not a file") from None
    except Exception as err:  # a back-end's own errors (network, permission, auth)
        raise CxrError(f"{url}: cannot read {what} ({one_line(err)})") from None


def is_file(url: str) -> bool:
    """Whether the object at ``url`` exists as a file; CxrError when the URL cannot be
    looked up at all (unknown protocol, missing back-end, a refused request)."""
    fs, path = _filesystem(url)
    try:
        return bool(fs.isfile(path))
    except FileNotFoundError:
        return False
    except Exception as err:  # a back-end's own errors (network, permission, auth)
        raise CxrError(f"{url}: cannot look it up ({one_line(err)})") from None


def stat(url: str) -> list:
    """``[url, size, version]`` of an object for cache fingerprints (version: its etag,
    generation or modification time, whichever the back-end gives); sizes None when it
    does not exist."""
    fs, path = _filesystem(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return [url, None, None]
    except Exception as err:  # a back-end's own errors (network, permission, auth)
        raise CxrError(f"{url}: cannot look it up ({one_line(err)})") from None
    version = next((info[k] for k in _VERSION_KEYS if info.get(k) is not None), None)
    if version is None:
        version = info.get("created")
    return [url, info.get("size"), None if version is None else str(version)]
