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
"""

from __future__ import annotations

import hashlib
import json


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
