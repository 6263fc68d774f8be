"""A file of priors and grid masks per image id, never read under other settings.

One safetensors file per setting, ``<folder>/priors-<key[:16]>.safetensors``, where
the key (:attr:`PriorCache.key`) is a sha256 of everything that decides the values:
the prior settings (:meth:`PriorConfig.cache_key`, which includes
:data:`~cxrlib.anatomy.priors.PRIORS_VERSION`), the mask source mode, the segmenter's
identity and the storage dtype. The file holds:

- ``priors``: (N, L, P) float32 (or float16 when asked: half the disk, values
  rounded to within 2.5e-4), layer priors in [0, 1] (:func:`layer_priors`);
- ``grid_masks``: (N, g, g) float32, patch coverage of the united structures, from
  which the priors of any schedule on the same grid can be recomputed cheaply;
- header metadata (JSON strings): ``cache_key`` (checked again on every load, so a
  file renamed or copied under another key is ignored), ``config``,
  ``value_settings``, ``image_ids``, ``sources`` and ``fingerprints`` per image, and
  ``counts`` per source.

Per image, a fingerprint of its mask inputs (source, resolved mask or image paths,
their sizes and modification times) is stored; :func:`cached_priors_for_manifest`
recomputes every image whose fingerprint changed, so an edited mask is never served
from the cache. Files are written whole to a temporary name, then renamed, under the
file's lock (:func:`cxrlib.base.cache.entry_lock`, ``priors-<key[:16]>.safetensors.lock``
beside it): a second process computing the same images waits, then reuses them, and
two processes adding different images both keep theirs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrlib.anatomy.manifest_priors import (
    PriorInfo,
    manifest_mask_paths,
    priors_for_manifest,
    row_sources,
)
from cxrlib.anatomy.priors import PriorConfig
from cxrlib.base import storage
from cxrlib.base.cache import cache_key, entry_lock
from cxrlib.base.io import write_atomic
from cxrlib.data.manifest import Manifest, resolve

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Version of the file layout; part of the key."""

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


@dataclass
class CacheContents:
    """Everything one cache file holds, rows aligned."""

    image_ids: list[str]
    priors: torch.Tensor  # (N, L, P) float32 or float16 as stored
    grid_masks: torch.Tensor  # (N, g, g) float32
    sources: list[str]
    fingerprints: list[str]

    def index(self) -> dict[str, int]:
        """Row of each image id."""
        return {image_id: i for i, image_id in enumerate(self.image_ids)}


class PriorCache:
    """Priors and grid masks per image id, in one file per setting.

    Parameters
    ----------
    folder : path-like
        Where the file lives (created on the first :meth:`put`).
    config : PriorConfig
    source : str
        Mask source mode the priors were made with (part of the key).
    segmenter_id : str, optional
        Identity of the segmenter, if any (part of the key).
    dtype : {"float32", "float16"}
        Storage dtype of ``priors`` (part of the key); :meth:`get` returns float32.
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
        self.path = self.folder / f"priors-{self.key[:16]}.safetensors"
        self._contents: CacheContents | None = None
        self._loaded_stat: tuple | None = None

    def __repr__(self) -> str:
        return f"PriorCache({str(self.path)!r})"

    def load(self) -> CacheContents | None:
        """The file's contents, or None when missing, unreadable or of another key.

        Kept in memory after the first load (reloaded when the file changes).
        """
        from safetensors import SafetensorError, safe_open

        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        stat = (st.st_size, st.st_mtime_ns)
        if self._contents is not None and stat == self._loaded_stat:
            return self._contents
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("cache_key") != self.key:
                    log.warning("%s: written under another key, ignored", self.path)
                    return None
                priors = f.get_tensor("priors")
                grid_masks = f.get_tensor("grid_masks")
            ids = json.loads(meta["image_ids"])
            sources = json.loads(meta["sources"])
            fingerprints = json.loads(meta["fingerprints"])
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            log.warning("%s: unreadable cache ignored (%s)", self.path, err)
            return None
        n, g = len(ids), self.config.grid
        shape_ok = (
            tuple(priors.shape) == (n, self.config.num_layers, g * g)
            and tuple(grid_masks.shape) == (n, g, g)
            and len(sources) == n == len(fingerprints)
        )
        if not shape_ok:
            log.warning("%s: inconsistent shapes, ignored", self.path)
            return None
        self._contents = CacheContents(ids, priors, grid_masks, sources, fingerprints)
        self._loaded_stat = stat
        return self._contents

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
            in the order of ``image_ids``.
        """
        contents = self.load()
        if contents is None:
            return None
        index = contents.index()
        rows = []
        for j, image_id in enumerate(image_ids):
            i = index.get(image_id)
            if i is None or (
                fingerprints is not None and contents.fingerprints[i] != fingerprints[j]
            ):
                return None
            rows.append(i)
        rows_t = torch.tensor(rows, dtype=torch.long)
        return contents.priors[rows_t].to(torch.float32), contents.grid_masks[rows_t]

    def put(
        self,
        image_ids: Sequence[str],
        priors: torch.Tensor,
        grid_masks: torch.Tensor,
        *,
        sources: Sequence[str] | None = None,
        fingerprints: Sequence[str] | None = None,
    ) -> Path:
        """Add or replace these images' entries; other images in the file are kept.

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
        pathlib.Path
            The file, written atomically.
        """
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
        new_priors = priors.detach().to("cpu", dtype)
        new_grid = grid_masks.detach().to("cpu", torch.float32)
        old = self.load()
        if old is not None:
            replaced = set(ids)
            keep = [i for i, image_id in enumerate(old.image_ids) if image_id not in replaced]
            keep_t = torch.tensor(keep, dtype=torch.long)
            ids = [old.image_ids[i] for i in keep] + ids
            sources = [old.sources[i] for i in keep] + sources
            fingerprints = [old.fingerprints[i] for i in keep] + fingerprints
            new_priors = torch.cat([old.priors[keep_t].to(dtype), new_priors])
            new_grid = torch.cat([old.grid_masks[keep_t], new_grid])
        counts = {s: sources.count(s) for s in dict.fromkeys(sources)}
        meta = {
            "format": "cxrlib-priors",
            "cache_key": self.key,
            "config": json.dumps(self.config.to_dict()),
            "value_settings": json.dumps(self.config.value_settings()),
            "source": self.source,
            "segmenter_id": json.dumps(self.segmenter_id),
            "image_ids": json.dumps(ids),
            "sources": json.dumps(sources),
            "fingerprints": json.dumps(fingerprints),
            "counts": json.dumps(counts),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {"priors": new_priors.contiguous(), "grid_masks": new_grid.contiguous()}
        write_atomic(self.path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        self._contents, self._loaded_stat = None, None
        return self.path


@dataclass
class CachedPriors:
    """Result of :func:`cached_priors_for_manifest`."""

    image_ids: list[str]
    priors: torch.Tensor  # float32 (N, L, P) in [0, 1], manifest row order
    info: PriorInfo
    path: Path  # the cache file
    reused: int  # images served from the cache
    computed: int  # images computed in this call

    def describe(self) -> str:
        """A few lines: images, sources, shape, file, cache use."""
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
    are computed and added to the file. Parameters are those of
    :func:`priors_for_manifest` and :class:`PriorCache`; ``segmenter_id`` is required
    with a segmenter (e.g. :func:`checkpoint_fingerprint` of its checkpoint).

    Returns
    -------
    CachedPriors
        Priors float32 (N, L, P) in [0, 1] in manifest row order, with their
        :class:`PriorInfo`, the cache file and how many images were reused.
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
    g, n_layers = config.grid, config.num_layers
    priors = torch.empty(len(ids), n_layers, g * g)
    grid_masks = torch.empty(len(ids), g, g)
    empty: set[str] = set()
    if miss:
        with entry_lock(cache.path):  # one writer: another process's images are reused
            stored = cache.load()
            hit, miss = _hits(stored, ids, fps)
            if miss:
                sub = manifest.subset(manifest.frame.iloc[miss])
                _, new_priors, new_info = priors_for_manifest(
                    sub, config, source=source, segmenter=segmenter, progress=progress
                )
                priors[miss] = new_priors
                grid_masks[miss] = new_info.grid_masks
                empty |= set(new_info.empty)
                cache.put(
                    [ids[i] for i in miss],
                    new_priors,
                    new_info.grid_masks,
                    sources=new_info.sources,
                    fingerprints=[fps[i] for i in miss],
                )
    if hit:
        index = stored.index()
        rows = torch.tensor([index[ids[i]] for i in hit], dtype=torch.long)
        priors[hit] = stored.priors[rows].to(torch.float32)
        grid_masks[hit] = stored.grid_masks[rows]
        flat_max = stored.grid_masks[rows].flatten(1).amax(dim=1)
        empty |= {ids[i] for j, i in enumerate(hit) if flat_max[j] <= 0 and sources[i] != "none"}
    info = PriorInfo(sources=sources, grid_masks=grid_masks, empty=[i for i in ids if i in empty])
    return CachedPriors(ids, priors, info, cache.path, reused=len(hit), computed=len(miss))


def _hits(
    stored: CacheContents | None, ids: list[str], fingerprints: list[str]
) -> tuple[list[int], list[int]]:
    """Rows of ``ids`` that ``stored`` holds with the same fingerprint, and the rest."""
    index = stored.index() if stored is not None else {}
    hit = [
        i
        for i, (image_id, fp) in enumerate(zip(ids, fingerprints, strict=True))
        if image_id in index and stored.fingerprints[index[image_id]] == fp
    ]
    return hit, sorted(set(range(len(ids))) - set(hit))
