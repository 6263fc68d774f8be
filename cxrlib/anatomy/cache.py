"""Priors and grid masks per image id, in shard files, never read under other settings.

One folder per setting, ``<folder>/priors-<key[:16]>/``, where the key
(:attr:`PriorCache.key`) is a sha256 of everything that decides the values: the
layout version :data:`CACHE_FORMAT`, the prior settings (:meth:`PriorConfig.cache_key`,
which includes :data:`~cxrlib.anatomy.priors.PRIORS_VERSION`), the mask source mode,
the segmenter's identity and the storage dtype. Files of format 1 (one whole
``priors-<key[:16]>.safetensors`` per setting) are under another key and never read:
their images are computed again once and may be deleted.

The folder holds shards ``shard-<seq>.safetensors`` of at most :data:`SHARD_IMAGES`
images each, numbered in the order they were written. A shard holds:

- ``priors``: (n, L, P) float32 (or float16 when asked: half the disk, values
  rounded to within 2.5e-4), layer priors in [0, 1] (:func:`layer_priors`);
- ``grid_masks``: (n, g, g) float32, patch coverage of the united structures, from
  which the priors of any schedule on the same grid can be recomputed cheaply;
- header metadata (JSON strings): ``cache_key`` (checked again on every load, so a
  shard copied under another key is ignored), ``config``, ``value_settings``,
  ``image_ids``, ``sources`` and ``fingerprints`` per image, and ``counts`` per source.

:meth:`PriorCache.put` only ever writes new shards (each to a temporary name, then
renamed); an image put again later is served from its newest shard. The index (image
id -> shard and row, with its fingerprint) is read from the shard headers only, and
rows are read from the memory-mapped shards on demand (:class:`LazyRows`), so memory
does not grow with the number of images. :meth:`PriorCache.compact` rewrites the live
rows when superseded ones take more room than they do. An unreadable shard is logged
and ignored (its images are computed again).

Per image, a fingerprint of its mask inputs (source, resolved mask or image paths,
their sizes and modification times) is stored; :func:`cached_priors_for_manifest`
recomputes every image whose fingerprint changed, so an edited mask is never served
from the cache. Writers hold the folder's lock (:func:`cxrlib.base.cache.entry_lock`,
``priors-<key[:16]>/shards.lock``): a second process computing the same images waits,
then reuses them, and two processes adding different images both keep theirs.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrlib.anatomy.manifest_priors import (
    PriorInfo,
    manifest_mask_paths,
    priors_for_manifest,
    row_sources,
    warn_unmasked,
)
from cxrlib.anatomy.priors import PriorConfig
from cxrlib.base import storage
from cxrlib.base.cache import cache_key, entry_lock
from cxrlib.base.io import write_atomic
from cxrlib.data.manifest import Manifest, resolve

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
"""Version of the layout; part of the key. Format 1 (one whole file per setting,
``priors-<key[:16]>.safetensors``) is not read: its images are recomputed once."""

SHARD_IMAGES = 4096
"""Most images in one shard file (a :meth:`PriorCache.put` of more writes several)."""

OPEN_SHARDS = 8
"""Most shard files a :class:`LazyRows` keeps open (memory-mapped) at once."""

_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _file_stat(path: Path) -> list:
    try:
        st = path.stat()
    except FileNotFoundError:
        return [str(path), None, None]
    return [str(path), st.st_size, st.st_mtime_ns]


def _input_stat(path: Path | str) -> list:
    """:func:`_file_stat` of a resolved local path; for a URL, its size and version
    (:func:`cxrlib.base.storage.stat`)."""
    return storage.stat(path) if storage.is_url(path) else _file_stat(Path(path).resolve())


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """Identity of a segmenter checkpoint (file or folder) for cache keys.

    sha256 (first 16 hex digits) of the resolved path and every file's relative name,
    size and modification time: retraining or replacing the checkpoint changes it.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"segmenter checkpoint {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    entries = [
        [str(p.relative_to(path)) if path.is_dir() else p.name, *_file_stat(p)[1:]] for p in files
    ]
    return cache_key([str(path), entries], compact=False)[:16]


def mask_fingerprints(
    manifest: Manifest,
    config: PriorConfig,
    *,
    source: str = "auto",
    has_segmenter: bool = False,
    segmenter_id: str | None = None,
) -> tuple[list[str], list[str]]:
    """Mask source and input fingerprint of every row.

    Parameters
    ----------
    manifest : Manifest
        Relative paths resolve against its root.
    config : PriorConfig
        Only ``structures`` matters (which mask columns are read).
    source, has_segmenter
        As :func:`cxrlib.anatomy.manifest_priors.row_sources`.
    segmenter_id : str, optional
        Identity of the segmenter (e.g. :func:`checkpoint_fingerprint`).

    Returns
    -------
    sources : list of str
        Per row, ``"manifest"``, ``"segmenter"`` or ``"none"``.
    fingerprints : list of str
        Per row, 16 hex digits of sha256 over the source and the resolved path, size
        and modification time of each input file (mask files, or the image for the
        segmenter, with ``segmenter_id``).
    """
    df, root = manifest.frame, manifest.root
    sources = row_sources(df, config.structures, source, has_segmenter)
    fingerprints = []
    for row, s in zip(df.to_dict("records"), sources, strict=True):
        if s == "manifest":
            paths = manifest_mask_paths(row, config.structures) or {}
            inputs = [
                [name, *_input_stat(resolve(root, cell))]
                for name, cells in sorted(paths.items())
                for cell in cells
            ]
        elif s == "segmenter":
            image = resolve(root, str(row.get("image_path", "")))
            inputs = [segmenter_id, _input_stat(image)]
        else:
            inputs = []
        fingerprints.append(cache_key([s, inputs], compact=False)[:16])
    return sources, fingerprints


_SHARD_RE = re.compile(r"^shard-(\d+)\.safetensors$")


def _shard_name(seq: int) -> str:
    return f"shard-{seq:08d}.safetensors"


@dataclass
class ShardHeader:
    """What one shard's header says (its tensors are not read)."""

    path: Path
    image_ids: list[str]
    sources: list[str]
    fingerprints: list[str]


@dataclass
class CacheIndex:
    """Where each image's newest row is: shards in write order, and per image id its
    shard (position in ``shards``) and row, source and fingerprint."""

    shards: list[ShardHeader]
    rows: dict[str, tuple[int, int]]  # image id -> (shard position, row)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def image_ids(self) -> list[str]:
        """Image ids in shard order (newest entry of each)."""
        return sorted(self.rows, key=self.rows.__getitem__)

    def fingerprint(self, image_id: str) -> str | None:
        """The stored fingerprint of ``image_id``, None when absent."""
        where = self.rows.get(image_id)
        return None if where is None else self.shards[where[0]].fingerprints[where[1]]

    def source(self, image_id: str) -> str:
        shard, row = self.rows[image_id]
        return self.shards[shard].sources[row]

    def superseded(self) -> int:
        """Rows in the shards that a later entry of the same id replaced."""
        return sum(len(h.image_ids) for h in self.shards) - len(self.rows)


class LazyRows:
    """Rows of one tensor (``priors`` or ``grid_masks``) of the shard files, read on demand.

    Indexable like an (N, ...) float32 tensor without holding it: ``view[i]`` reads one
    row from its memory-mapped shard (at most :data:`OPEN_SHARDS` kept open, least
    recently used closed first); :meth:`rows` and :meth:`tensor` materialise several
    or all (for small data). Picklable: a DataLoader worker reopens the files itself.

    Parameters
    ----------
    paths : list of path-like
        Shard files.
    shard, row : array-like of int, length N
        Shard (position in ``paths``) and row of each item.
    name : str
        Tensor of the shards.
    row_shape : tuple of int
        Shape of one row.
    """

    def __init__(self, paths, shard, row, name: str, row_shape: tuple[int, ...]):
        self.paths = [str(p) for p in paths]
        self.shard = np.asarray(shard, dtype=np.int32)
        self.row = np.asarray(row, dtype=np.int64)
        if self.shard.shape != self.row.shape or self.shard.ndim != 1:
            raise ValueError("shard and row must be 1-D of the same length")
        self.name = name
        self.row_shape = tuple(int(d) for d in row_shape)
        self._open: OrderedDict[int, object] = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # handles are not picklable; reopened on demand
        return state

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    def __repr__(self) -> str:
        return f"LazyRows({self.name!r}, shape={self.shape}, shards={len(self.paths)})"

    def _file(self, shard: int):
        from safetensors import safe_open

        f = self._open.get(shard)
        if f is None:
            f = safe_open(self.paths[shard], framework="pt")
            self._open[shard] = f
            while len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(shard)
        return f

    def _read(self, shard: int, start: int, stop: int) -> torch.Tensor:
        return self._file(shard).get_slice(self.name)[start:stop].to(torch.float32)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)) or (
            isinstance(index, torch.Tensor) and index.ndim == 0
        ):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} out of range for {len(self)} rows")
            i %= len(self)
            r = int(self.row[i])
            return self._read(int(self.shard[i]), r, r + 1)[0]
        if isinstance(index, slice):
            return self.rows(range(*index.indices(len(self))))
        return self.rows(index)

    def rows(self, index: Iterable[int]) -> torch.Tensor:
        """float32 (len(index), ...) of these items, in this order."""
        idx = np.asarray(
            index.tolist() if isinstance(index, torch.Tensor) else list(index), dtype=np.int64
        ).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} rows")
        idx %= max(n, 1)
        out = torch.empty(len(idx), *self.row_shape)
        shards, rows = self.shard[idx], self.row[idx]
        for s in np.unique(shards):
            at = np.nonzero(shards == s)[0]
            order = at[np.argsort(rows[at], kind="stable")]
            r = rows[order]
            # runs of consecutive (or repeated) rows, each one slice of the shard
            cut = np.nonzero(np.diff(r) > 1)[0] + 1
            for run in np.split(np.arange(len(order)), cut):
                lo, hi = int(r[run[0]]), int(r[run[-1]]) + 1
                block = self._read(int(s), lo, hi)
                out[torch.from_numpy(order[run])] = block[torch.from_numpy(r[run] - lo)]
        return out

    def tensor(self) -> torch.Tensor:
        """Every row, float32 (N, ...): for small data only."""
        return self.rows(range(len(self)))

    def close(self) -> None:
        """Unmap the open shards (their pages count in the RSS); reads reopen them."""
        self._open.clear()


class PriorCache:
    """Priors and grid masks per image id, in shard files, one folder per setting.

    Parameters
    ----------
    folder : path-like
        Where the setting's folder lives (created on the first :meth:`put`).
    config : PriorConfig
    source : str
        Mask source mode the priors were made with (part of the key).
    segmenter_id : str, optional
        Identity of the segmenter, if any (part of the key).
    dtype : {"float32", "float16"}
        Storage dtype of ``priors`` (part of the key); reads return float32.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        config: PriorConfig,
        *,
        source: str = "auto",
        segmenter_id: str | None = None,
        dtype: str = "float32",
    ):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.folder = Path(folder)
        self.config = config
        self.source = source
        self.segmenter_id = segmenter_id
        self.dtype = dtype
        settings = {
            "format": CACHE_FORMAT,
            "priors": config.cache_key(),
            "source": source,
            "segmenter": segmenter_id,
            "dtype": dtype,
        }
        self.key = cache_key(settings)
        self.path = self.folder / f"priors-{self.key[:16]}"
        self._headers: dict[str, tuple[tuple, ShardHeader | None]] = {}

    def __repr__(self) -> str:
        return f"PriorCache({str(self.path)!r})"

    @property
    def lock(self) -> Path:
        """The entry :func:`entry_lock` takes for writers (``shards`` in the folder)."""
        return self.path / "shards"

    def shard_paths(self) -> list[Path]:
        """Shard files in write order."""
        if not self.path.is_dir():
            return []
        found = [
            (int(m.group(1)), p) for p in self.path.iterdir() if (m := _SHARD_RE.match(p.name))
        ]
        return [p for _, p in sorted(found)]

    def _header(self, path: Path) -> ShardHeader | None:
        """The header of one shard (cached while its size and mtime stay), None when
        unreadable or of another key (logged)."""
        from safetensors import SafetensorError, safe_open

        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        stat = (st.st_size, st.st_mtime_ns)
        known = self._headers.get(path.name)
        if known is not None and known[0] == stat:
            return known[1]
        header = None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("cache_key") != self.key:
                    log.warning("%s: written under another key, ignored", path)
                else:
                    p_shape = tuple(f.get_slice("priors").get_shape())
                    g_shape = tuple(f.get_slice("grid_masks").get_shape())
                    ids = json.loads(meta["image_ids"])
                    sources = json.loads(meta["sources"])
                    fingerprints = json.loads(meta["fingerprints"])
                    n, g = len(ids), self.config.grid
                    if (
                        p_shape == (n, self.config.num_layers, g * g)
                        and g_shape == (n, g, g)
                        and len(sources) == n == len(fingerprints)
                    ):
                        header = ShardHeader(path, ids, sources, fingerprints)
                    else:
                        log.warning("%s: inconsistent shapes, ignored", path)
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            log.warning("%s: unreadable cache shard ignored (%s)", path, err)
        self._headers[path.name] = (stat, header)
        return header

    def load(self) -> CacheIndex | None:
        """The index of the readable shards (headers only), None when there are none."""
        shards = [h for p in self.shard_paths() if (h := self._header(p)) is not None]
        if not shards:
            return None
        rows = {}
        for s, header in enumerate(shards):
            for r, image_id in enumerate(header.image_ids):
                rows[image_id] = (s, r)  # a later shard overrides
        return CacheIndex(shards, rows)

    def lazy(self, index: CacheIndex, image_ids: Sequence[str], name: str = "priors") -> LazyRows:
        """:class:`LazyRows` of tensor ``name`` for these ids (all in ``index``)."""
        where = np.array([index.rows[i] for i in image_ids], dtype=np.int64).reshape(-1, 2)
        g = self.config.grid
        row_shape = (self.config.num_layers, g * g) if name == "priors" else (g, g)
        paths = [h.path for h in index.shards]
        return LazyRows(paths, where[:, 0], where[:, 1], name, row_shape)

    def get(
        self, image_ids: Sequence[str], fingerprints: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Cached priors and grid masks of these images, or None if any is missing.

        Parameters
        ----------
        image_ids : sequence of str
        fingerprints : sequence of str, optional
            From :func:`mask_fingerprints`; an image whose stored fingerprint differs
            counts as missing (its masks changed since).

        Returns
        -------
        (torch.Tensor, torch.Tensor) or None
            priors float32 (n, L, P) in [0, 1] and grid masks float32 (n, g, g), rows
            in the order of ``image_ids`` (materialised: for a few images; see
            :func:`cached_priors_for_manifest` for many).
        """
        index = self.load()
        if index is None:
            return None
        for j, image_id in enumerate(image_ids):
            stored = index.fingerprint(image_id)
            if stored is None or (fingerprints is not None and stored != fingerprints[j]):
                return None
        ids = list(image_ids)
        return self.lazy(index, ids).tensor(), self.lazy(index, ids, "grid_masks").tensor()

    def put(
        self,
        image_ids: Sequence[str],
        priors: torch.Tensor,
        grid_masks: torch.Tensor,
        *,
        sources: Sequence[str] | None = None,
        fingerprints: Sequence[str] | None = None,
    ) -> list[Path]:
        """Add or replace these images' entries in new shards; other shards are kept.

        Takes the folder's lock (see :meth:`write` for a caller that holds it).

        Parameters
        ----------
        image_ids : sequence of str
            Unique ids, length N.
        priors : torch.Tensor
            float (N, L, P) in [0, 1], ``L, P`` as the config says.
        grid_masks : torch.Tensor
            float (N, g, g).
        sources, fingerprints : sequence of str, optional
            Per image (default ``"unknown"`` and ``""``: never matches a fingerprint).

        Returns
        -------
        list of pathlib.Path
            The new shard files, each written atomically.
        """
        with entry_lock(self.lock):
            return self.write(
                image_ids, priors, grid_masks, sources=sources, fingerprints=fingerprints
            )

    def write(
        self,
        image_ids: Sequence[str],
        priors: torch.Tensor,
        grid_masks: torch.Tensor,
        *,
        sources: Sequence[str] | None = None,
        fingerprints: Sequence[str] | None = None,
    ) -> list[Path]:
        """:meth:`put` for a caller that holds ``entry_lock(self.lock)``."""
        from safetensors.torch import save_file

        ids = [str(i) for i in image_ids]
        n, g, n_layers = len(ids), self.config.grid, self.config.num_layers
        if len(set(ids)) != n:
            raise ValueError("image_ids must be unique")
        if tuple(priors.shape) != (n, n_layers, g * g):
            raise ValueError(
                f"priors must have shape {(n, n_layers, g * g)}, got {tuple(priors.shape)}"
            )
        if tuple(grid_masks.shape) != (n, g, g):
            raise ValueError(
                f"grid_masks must have shape {(n, g, g)}, got {tuple(grid_masks.shape)}"
            )
        sources = list(sources) if sources is not None else ["unknown"] * n
        fingerprints = list(fingerprints) if fingerprints is not None else [""] * n
        if len(sources) != n or len(fingerprints) != n:
            raise ValueError("sources and fingerprints must have one entry per image")
        dtype = _DTYPES[self.dtype]
        self.path.mkdir(parents=True, exist_ok=True)
        existing = self.shard_paths()
        seq = int(_SHARD_RE.match(existing[-1].name).group(1)) + 1 if existing else 0
        written = []
        for lo in range(0, n, SHARD_IMAGES):
            hi = min(lo + SHARD_IMAGES, n)
            part = sources[lo:hi]
            meta = {
                "format": "cxrlib-priors",
                "cache_key": self.key,
                "config": json.dumps(self.config.to_dict()),
                "value_settings": json.dumps(self.config.value_settings()),
                "source": self.source,
                "segmenter_id": json.dumps(self.segmenter_id),
                "image_ids": json.dumps(ids[lo:hi]),
                "sources": json.dumps(part),
                "fingerprints": json.dumps(fingerprints[lo:hi]),
                "counts": json.dumps({s: part.count(s) for s in dict.fromkeys(part)}),
            }
            tensors = {
                "priors": priors[lo:hi].detach().to("cpu", dtype).contiguous(),
                "grid_masks": grid_masks[lo:hi].detach().to("cpu", torch.float32).contiguous(),
            }
            path = self.path / _shard_name(seq)
            write_atomic(path, lambda tmp, t=tensors, m=meta: save_file(t, str(tmp), metadata=m))
            written.append(path)
            seq += 1
        return written

    def compact(self) -> list[Path]:
        """Rewrite the live rows into new shards and delete the old ones (and unreadable
        ones) when superseded rows are more than the live ones; returns the new shards.

        Run it when no training run reads this cache: a run's open :class:`LazyRows`
        would lose the shards it reads.
        """
        with entry_lock(self.lock):
            index = self.load()
            old = self.shard_paths()
            if index is None or index.superseded() <= len(index):
                return []
            ids = index.image_ids
            new: list[Path] = []
            for lo in range(0, len(ids), SHARD_IMAGES):
                part = ids[lo : lo + SHARD_IMAGES]
                new += self.write(
                    part,
                    self.lazy(index, part).tensor(),
                    self.lazy(index, part, "grid_masks").tensor(),
                    sources=[index.source(i) for i in part],
                    fingerprints=[index.fingerprint(i) for i in part],
                )
            for path in old:
                path.unlink(missing_ok=True)
            return new


@dataclass
class CachedPriors:
    """Result of :func:`cached_priors_for_manifest`."""

    image_ids: list[str]
    priors: LazyRows  # float32 (N, L, P) in [0, 1], manifest row order, read on demand
    info: PriorInfo  # its grid_masks: LazyRows (N, g, g)
    path: Path  # the cache folder
    reused: int  # images served from the cache
    computed: int  # images computed in this call

    def describe(self) -> str:
        """A few lines: images, sources, shape, folder, cache use."""
        n, n_layers, p = self.priors.shape
        return "\n".join(
            [
                f"priors for {n} images: shape ({n}, {n_layers}, {p}) float32 in [0, 1]",
                self.info.describe(),
                f"cache: {self.path} ({self.reused} reused, {self.computed} computed)",
            ]
        )


def cached_priors_for_manifest(
    manifest: Manifest,
    config: PriorConfig,
    folder: str | os.PathLike,
    *,
    source: str = "auto",
    segmenter=None,
    segmenter_id: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
) -> CachedPriors:
    """:func:`priors_for_manifest` through a :class:`PriorCache` in ``folder``.

    Images whose id and mask fingerprint are in the cache are read from it; the rest
    are computed and added to it. Parameters are those of :func:`priors_for_manifest`
    and :class:`PriorCache`; ``segmenter_id`` is required with a segmenter (e.g.
    :func:`checkpoint_fingerprint` of its checkpoint).

    Returns
    -------
    CachedPriors
        Priors float32 (N, L, P) in [0, 1] in manifest row order as a
        :class:`LazyRows` over the shards (computed ones included, as stored: with
        ``dtype="float16"`` rounded like every later read), with their
        :class:`PriorInfo` (grid masks lazy too), the cache folder and how many images
        were reused.
    """
    if segmenter is not None and not segmenter_id:
        raise ValueError("segmenter_id is required with a segmenter (it keys the cache)")
    ids = [str(v).strip() for v in manifest.frame["image_id"]]
    sources, fps = mask_fingerprints(
        manifest,
        config,
        source=source,
        has_segmenter=segmenter is not None,
        segmenter_id=segmenter_id,
    )
    cache = PriorCache(folder, config, source=source, segmenter_id=segmenter_id, dtype=dtype)
    stored = cache.load()
    hit, miss = _hits(stored, ids, fps)
    empty: set[str] = set()
    if miss:
        with entry_lock(cache.lock):  # one writer: another process's images are reused
            stored = cache.load()
            hit, miss = _hits(stored, ids, fps)
            # a shard's worth at a time: memory does not grow with the images to compute
            bar = tqdm(total=len(miss), desc="priors", unit="img", disable=not progress)
            unmasked = 0
            for lo in range(0, len(miss), SHARD_IMAGES):
                part = miss[lo : lo + SHARD_IMAGES]
                sub = manifest.subset(manifest.frame.iloc[part])
                _, new_priors, new_info = priors_for_manifest(
                    sub, config, source=source, segmenter=segmenter, bar=bar
                )
                empty |= set(new_info.empty)
                unmasked += new_info.counts["none"]
                cache.write(
                    [ids[i] for i in part],
                    new_priors,
                    new_info.grid_masks,
                    sources=new_info.sources,
                    fingerprints=[fps[i] for i in part],
                )
                del new_priors, new_info
            bar.close()
            warn_unmasked(unmasked, len(miss))
            if miss:
                stored = cache.load()
    if hit:
        grids = cache.lazy(stored, [ids[i] for i in hit], "grid_masks")
        for lo in range(0, len(hit), SHARD_IMAGES):  # a shard's worth at a time
            flat_max = grids.rows(range(lo, min(lo + SHARD_IMAGES, len(hit)))).flatten(1).amax(1)
            empty |= {
                ids[hit[lo + j]]
                for j in torch.nonzero(flat_max <= 0).flatten().tolist()
                if sources[hit[lo + j]] != "none"
            }
        grids.close()  # the scan's mapped pages go with it
    if stored is None:  # no rows at all
        stored = CacheIndex([], {})
    priors = cache.lazy(stored, ids)
    grid_masks = cache.lazy(stored, ids, "grid_masks")
    info = PriorInfo(sources=sources, grid_masks=grid_masks, empty=[i for i in ids if i in empty])
    return CachedPriors(ids, priors, info, cache.path, reused=len(hit), computed=len(miss))


def _hits(
    stored: CacheIndex | None, ids: list[str], fingerprints: list[str]
) -> tuple[list[int], list[int]]:
    """Rows of ``ids`` that ``stored`` holds with the same fingerprint, and the rest."""
    if stored is None:
        return [], list(range(len(ids)))
    hit = [
        i
        for i, (image_id, fp) in enumerate(zip(ids, fingerprints, strict=True))
        if stored.fingerprint(image_id) == fp
    ]
    return hit, sorted(set(range(len(ids))) - set(hit))
