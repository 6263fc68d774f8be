"""The encoder feature cache: a frozen encoder's patch features, computed once per image.

With ``encoder_trainable="frozen"`` the encoder gives the same (P, E) patch features for
an image in every epoch, so the trainer reads them from disk
(:meth:`ReportModel.forward(image_features=...) <cxrlib.model.ReportModel.forward>`)
instead of decoding the image and running the encoder again.

Layout of ``FeatureCache(folder, model)``::

    folder/features-<key[:16]>/index.json               key, settings, shard names
    folder/features-<key[:16]>/shard-00000.safetensors  "features" (n, P, E) float16,
                                                        header: key, image ids (rows)
    folder/features-<key[:16]>/shard-00001.safetensors  ...

The index lists shard names only, so its size grows with the number of shards, not of
images (rewriting it after every shard stays cheap at 377k images); each shard's image
ids are in its own header, read once per shard when the index changes (a reader
remembers them per file size, mtime and inode, and the writer knows the shards it
wrote).

The key (:attr:`FeatureCache.key`) is a sha256 of everything that decides the values:
:data:`CACHE_FORMAT`, :func:`encoder_fingerprint` (every encoder weight), the encoder's
config (operations without weights: norms, RoPE), the image preprocessing
(:func:`cxrlib.base.images.preprocessing` at ``config.image_size``), the register
tokens dropped, the stored dtype, P and E. Any change gives a new folder; an old
folder is never read under new settings. Format 2 (index of shard names, ids in the
headers) replaced format 1 (every id in the index): folders of format 1 have another
key, so they are not read and the features are computed again.

Each shard is written whole to a temporary name, then renamed; ``index.json`` is
rewritten the same way after every shard. A build killed at any point therefore loses
at most the shard in progress and never leaves an index that names a missing or
half-written shard. A write the system refuses (disk full, read-only) raises
:class:`~cxrlib.base.io.WriteError` and leaves the previous index and its shards
loadable: a shard written before a failed index write is deleted again. Both the index
and every shard header carry the key, checked again on reading: a folder copied under
another key is ignored with a warning (and rebuilt), and so is a shard the index lists
but that is missing, unreadable or from another key (its images are computed again).
Shards are read with :func:`safetensors.safe_open` (memory-mapped, no pickle). One
writer per folder at a time: :meth:`FeatureCache.build` holds the folder's lock
(:func:`cxrlib.base.cache.entry_lock`, ``features-<key[:16]>.lock`` beside it) while
it encodes, so a second process building the same images waits and then reuses them;
readers may run beside a writer (they see whole shards only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cxrlib.base.cache import cache_key, entry_lock
from cxrlib.base.errors import CxrError
from cxrlib.base.images import load_pixels, preprocessing
from cxrlib.base.io import remove_quietly, write_atomic, write_json_atomic
from cxrlib.data.manifest import Manifest

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
"""Version of the folder layout and of what is stored; part of the key (2: the index
lists shard names only, the image ids are in the shard headers)."""

STORED_DTYPE = "float16"
INDEX_FILE = "index.json"
SHARD_BYTES = 256 * 2**20
"""Default shard size in bytes of features (a build killed mid-way loses at most one)."""

OPEN_SHARDS = 8
"""Shards a process keeps memory-mapped at once (the oldest opened is closed first): the
file-backed pages they hold count in its RSS, at most 8 x 256 MB."""

_SHARD_RE = re.compile(r"^shard-(\d+)\.safetensors$")
_FORMAT_NAME = "cxrlib-features"


def encoder_fingerprint(model) -> str:
    """sha256 (hex) of the encoder's weights: every tensor of ``model.encoder.state_dict()``.

    Tensors are taken in name order; each contributes its name, dtype, shape and raw
    bytes, so changing any single value (or casting the encoder) changes the result.
    Computed afresh on every call (about 0.1 s per 100 MB of weights).
    """
    digest = hashlib.sha256()
    state = model.encoder.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        head = f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0"
        digest.update(head.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# encoder config fields that never change the features: bookkeeping, outputs, init
_CONFIG_BOOKKEEPING = frozenset(
    {
        "transformers_version",
        "architectures",
        "dtype",
        "torch_dtype",  # the weights' dtype is in encoder_fingerprint
        "id2label",
        "label2id",
        "problem_type",
        "return_dict",
        "output_attentions",
        "output_hidden_states",
        "initializer_range",
        "out_features",
        "out_indices",
        "stage_names",
    }
)


def _encoder_config(model) -> dict:
    """The encoder config fields that affect its output (operations without weights)."""
    data = model.encoder.config.to_dict()
    return {
        k: v
        for k, v in sorted(data.items())
        if not k.startswith("_") and k not in _CONFIG_BOOKKEEPING
    }


@dataclass
class BuildReport:
    """What :meth:`FeatureCache.build` did.

    Attributes
    ----------
    computed : int
        Images whose features were computed (and written) in this call.
    reused : int
        Images already in the cache.
    bad : list of (image_id, path, message)
        Images that could not be read; not cached, retried by the next build.
    seconds : float
        Wall time of the call.
    folder : Path
        The cache folder (``features-<key[:16]>``).
    """

    computed: int = 0
    reused: int = 0
    bad: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    folder: Path | None = None

    def describe(self) -> str:
        """One line, plus one per unreadable image."""
        lines = [
            f"encoder features: {self.computed} computed, {self.reused} reused, "
            f"{len(self.bad)} unreadable, {self.seconds:.1f} s; cache: {self.folder}"
        ]
        lines += [f"  unreadable {image_id}: {message}" for image_id, _, message in self.bad]
        return "\n".join(lines)


class FeatureCache:
    """Patch features of a frozen encoder per image id, in float16 safetensors shards.

    Parameters
    ----------
    folder : path-like
        Parent folder; the cache lives in ``folder/features-<key[:16]>`` (created on
        the first :meth:`build`).
    model : ReportModel
        Its encoder, ``config.image_size`` and patch grid decide the key. The encoder
        must be frozen (``config.encoder_trainable == "frozen"``).

    Raises
    ------
    ValueError
        For a trainable encoder: its features change while training, a cache would
        serve stale ones.
    """

    def __init__(self, folder: str | os.PathLike, model):
        how = model.config.encoder_trainable
        if how != "frozen":
            raise ValueError(
                f"FeatureCache: the encoder is trainable (encoder_trainable={how!r}); its "
                "features change during training, so they cannot be cached"
            )
        self.model = model
        self.root = Path(folder)
        self.fingerprint = encoder_fingerprint(model)
        enc = model.encoder.config
        self.num_patches = int(model.num_patches)
        self.width = int(model.encoder_width)
        self.settings = {
            "format": CACHE_FORMAT,
            "encoder_fingerprint": self.fingerprint,
            "encoder_config": _encoder_config(model),
            "preprocessing": preprocessing(model.config.image_size),
            "num_register_tokens": int(getattr(enc, "num_register_tokens", 0) or 0),
            "dtype": STORED_DTYPE,
            "num_patches": self.num_patches,
            "encoder_width": self.width,
        }
        self.key = cache_key(self.settings)
        self.folder = self.root / f"features-{self.key[:16]}"
        self.index_path = self.folder / INDEX_FILE
        self._shards: dict[str, list[str]] = {}  # shard file name -> its image ids (rows)
        self._where: dict[str, tuple[str, int]] = {}  # image id -> (shard, row)
        self._stat: tuple | None = None  # (size, mtime_ns) of the index last read
        # shard file name -> (its (size, mtime_ns, inode), image ids): headers read once
        self._known: dict[str, tuple[tuple[int, int, int], list[str]]] = {}
        self._handles: dict[str, object] = {}  # open safe_open handles, per shard
        self.build_seconds = 0.0  # encoder time spent filling this folder, all builds
        self._refresh()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.folder)!r}, {len(self._where)} images)"

    def description(self) -> str:
        """The settings in words (also stored in ``index.json``)."""
        pre = self.settings["preprocessing"]
        size = pre["image_size"]
        grid = int(round(self.num_patches**0.5))
        registers = self.settings["num_register_tokens"]
        kind = self.settings["encoder_config"].get("model_type", "dinov3_vit")
        return (
            f"{self.num_patches} patch features ({grid}x{grid} grid at {size} px) of width "
            f"{self.width}, float16, from a {kind} encoder (a ViT's CLS and {registers} "
            f"register tokens dropped); preprocessing v{pre['version']} ({pre['resize']}, "
            f"{pre['channels']}, ImageNet mean/std); encoder sha256 {self.fingerprint[:16]}"
        )

    # --- the index ------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-read ``index.json`` when it changed on disk (another process wrote it)."""
        try:
            st = self.index_path.stat()
            stat = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stat = None
        if stat == self._stat and (stat is not None or not self._shards):
            return
        self._handles.clear()
        self._shards, self._where, self._stat = {}, {}, stat
        if stat is None:
            return
        try:
            data = json.loads(self.index_path.read_text())
            key, shards = data["cache_key"], data["shards"]
            if not isinstance(shards, list):
                raise TypeError(f"shards: expected a list, got {type(shards).__name__}")
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("%s: unreadable feature index ignored (%s)", self.index_path, err)
            return
        if key != self.key:
            log.warning(
                "%s: written under another key (%s...), ignored; its features will be rebuilt",
                self.index_path,
                str(key)[:16],
            )
            return
        known = {}
        for name in shards:
            ids, problem = self._shard_ids(name)
            if ids is None:
                log.warning(
                    "%s: %s; shard ignored, its images will be rebuilt", self.folder / name, problem
                )
                continue
            known[name] = self._known[name]
            self._shards[name] = ids
            for row, image_id in enumerate(ids):
                self._where[image_id] = (name, row)
        self._known = known  # forget shards the index no longer lists
        self.build_seconds = float(data.get("build_seconds", 0.0) or 0.0)

    def _shard_ids(self, name: object) -> tuple[list[str] | None, str]:
        """The image ids (rows) of shard ``name`` from its header, or None and why it
        cannot serve them. The header is read only when the file is new or changed
        since the last read (its size, mtime and inode)."""
        from safetensors import SafetensorError

        if not isinstance(name, str) or not _SHARD_RE.match(name):
            return None, "not a shard name"
        path = self.folder / name
        try:
            st = path.stat()
        except OSError:
            return None, "listed in the index but missing"
        stat = (st.st_size, st.st_mtime_ns, st.st_ino)
        known = self._known.get(name)
        if known is not None and known[0] == stat:
            return known[1], ""
        try:
            ids, problem = self._read_header(path)
        except (SafetensorError, OSError, ValueError) as err:
            ids, problem = None, f"unreadable ({err})"
        if ids is not None:
            self._known[name] = (stat, ids)
        return ids, problem

    def _read_header(self, path: Path) -> tuple[list[str] | None, str]:
        """A shard's image ids from its header (None and why when it cannot serve them)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shape = tuple(f.get_slice("features").get_shape())
            dtype = f.get_slice("features").get_dtype()
        if meta.get("cache_key") != self.key:
            return None, "written under another key"
        ids = json.loads(meta.get("image_ids", "null"))
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return None, "no image ids in its header"
        if shape != (len(ids), self.num_patches, self.width) or dtype != "F16":
            return None, f"unexpected features {dtype} {shape}"
        return ids, ""

    def _write_index(self) -> None:
        data = {
            "format": _FORMAT_NAME,
            "format_version": CACHE_FORMAT,
            "cache_key": self.key,
            "description": self.description(),
            "settings": self.settings,
            "num_images": len(self._where),
            "build_seconds": self.build_seconds,  # unrounded: a tiny build adds milliseconds
            "shards": list(self._shards),  # names only: the ids are in the headers
        }
        write_json_atomic(self.index_path, data, default=str)
        st = self.index_path.stat()
        self._stat = (st.st_size, st.st_mtime_ns)

    # --- queries ----------------------------------------------------------------------

    def __contains__(self, image_id: object) -> bool:
        self._refresh()
        return str(image_id) in self._where

    def __len__(self) -> int:
        self._refresh()
        return len(self._where)

    @property
    def image_ids(self) -> list[str]:
        """Every cached image id (shard order)."""
        self._refresh()
        return list(self._where)

    def missing(self, image_ids: Sequence[str]) -> list[str]:
        """The ids of ``image_ids`` not in the cache, first occurrence order, no repeats."""
        self._refresh()
        return list(dict.fromkeys(str(i) for i in image_ids if str(i) not in self._where))

    def load(self, image_ids: Sequence[str]) -> torch.Tensor:
        """Cached features of ``image_ids``, in that order (repeats allowed).

        Returns
        -------
        torch.Tensor
            (N, P, E) float16 on the CPU.

        Raises
        ------
        KeyError
            Naming the first id that is not cached.
        """
        self._refresh()
        ids = [str(i) for i in image_ids]
        out = torch.empty(len(ids), self.num_patches, self.width, dtype=torch.float16)
        by_shard: dict[str, list[tuple[int, int]]] = {}  # shard -> [(row, output position)]
        for pos, image_id in enumerate(ids):
            where = self._where.get(image_id)
            if where is None:
                raise KeyError(f"image id {image_id!r} is not in the feature cache {self.folder}")
            by_shard.setdefault(where[0], []).append((where[1], pos))
        for name, wanted in by_shard.items():
            features = self._handle(name).get_slice("features")
            wanted.sort()
            i = 0
            while i < len(wanted):  # read contiguous runs of rows
                j = i + 1
                while j < len(wanted) and wanted[j][0] <= wanted[j - 1][0] + 1:
                    j += 1
                lo, hi = wanted[i][0], wanted[j - 1][0] + 1
                block = features[lo:hi]  # (hi - lo, P, E)
                for row, pos in wanted[i:j]:
                    out[pos] = block[row - lo]
                i = j
        return out

    def _handle(self, name: str):
        from safetensors import safe_open

        handle = self._handles.get(name)
        if handle is None:
            if len(self._handles) >= OPEN_SHARDS:
                self._handles.pop(next(iter(self._handles)))
            handle = safe_open(str(self.folder / name), framework="pt")
            if (handle.metadata() or {}).get("cache_key") != self.key:
                raise CxrError(f"{self.folder / name}: shard changed on disk; rebuild the cache")
            self._handles[name] = handle
        return handle

    # --- building ---------------------------------------------------------------------

    def _clean_orphans(self) -> None:
        """Remove shards the index does not list and temporary files of killed writers."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            orphan = _SHARD_RE.match(path.name) and path.name not in self._shards
            if orphan or (path.name.startswith(".") and path.name.endswith(".tmp")):
                log.info("%s: removing a leftover of an interrupted build", path)
                path.unlink(missing_ok=True)

    def _next_shard(self) -> str:
        numbers = [int(_SHARD_RE.match(name).group(1)) for name in self._shards]
        return f"shard-{max(numbers, default=-1) + 1:05d}.safetensors"

    def _write_shard(self, ids: list[str], features: list[torch.Tensor]) -> None:
        from safetensors.torch import save_file

        name = self._next_shard()
        tensor = torch.cat(features).contiguous()  # (n, P, E) float16
        meta = {
            "format": _FORMAT_NAME,
            "cache_key": self.key,
            "image_ids": json.dumps(ids),
            "description": self.description(),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self.folder / name,
            lambda tmp: save_file({"features": tensor}, str(tmp), metadata=meta),
        )
        # what an undo needs: these ids' earlier places only (copying every id's place
        # before each shard made a build O(N^2 / shard))
        before = {image_id: self._where.get(image_id) for image_id in ids}
        try:
            st = (self.folder / name).stat()
            self._known[name] = ((st.st_size, st.st_mtime_ns, st.st_ino), list(ids))  # no re-read
            self._shards[name] = list(ids)
            for row, image_id in enumerate(ids):
                self._where[image_id] = (name, row)
            self._write_index()
        except BaseException:  # the index on disk is the previous one: forget the shard
            self._shards.pop(name, None)
            for image_id, place in before.items():
                if place is None:
                    self._where.pop(image_id, None)
                else:
                    self._where[image_id] = place
            self._known.pop(name, None)
            remove_quietly(self.folder / name)
            raise

    def build(
        self,
        image_ids: Sequence[str],
        paths: Sequence[str | os.PathLike],
        batch_size: int = 32,
        progress: bool = True,
        shard_size: int | None = None,
    ) -> BuildReport:
        """Compute and store the features of every image not cached yet.

        Parameters
        ----------
        image_ids : sequence of str
            One id per image; a repeated id is computed once (its first path is used).
        paths : sequence of path-like
            The image files, aligned with ``image_ids``; read with
            :func:`cxrlib.base.images.load_pixels`.
        batch_size : int
            Images per encoder forward.
        progress : bool
            Show a tqdm progress bar.
        shard_size : int, optional
            Images per shard (default: about :data:`SHARD_BYTES` of features, a
            multiple of ``batch_size``). A shard is written, then the index, as soon as
            it is full.

        Returns
        -------
        BuildReport
            Counts, time and the unreadable images (logged as warnings too; they are
            not cached, so the next build tries them again).

        Raises
        ------
        RuntimeError
            When the encoder's weights changed since this cache object was made, or
            features overflow float16.
        """
        t0 = time.perf_counter()
        ids = [str(i) for i in image_ids]
        paths = [str(p) for p in paths]
        if len(ids) != len(paths):
            raise ValueError(f"image_ids ({len(ids)}) and paths ({len(paths)}) differ in length")
        if batch_size <= 0:
            raise ValueError(f"batch_size: expected > 0 (got {batch_size})")
        if encoder_fingerprint(self.model) != self.fingerprint:
            raise RuntimeError(
                "the encoder's weights changed since this FeatureCache was made; make a new one"
            )
        self._refresh()
        first = dict(zip(reversed(ids), reversed(paths), strict=True))  # id -> its first path
        unique = list(dict.fromkeys(ids))
        todo = [i for i in unique if i not in self._where]
        report = BuildReport(reused=len(unique) - len(todo), folder=self.folder)
        if shard_size is None:
            per_image = self.num_patches * self.width * 2
            shard_size = max(batch_size, SHARD_BYTES // per_image // batch_size * batch_size)
        if shard_size <= 0:
            raise ValueError(f"shard_size: expected > 0 (got {shard_size})")
        if todo:
            with entry_lock(self.folder):  # one writer at a time: others wait, then reuse
                self._refresh()  # what another process wrote while this one waited
                todo = [i for i in unique if i not in self._where]
                report.reused = len(unique) - len(todo)
                if todo:
                    started = time.perf_counter()  # encoder time, without the wait
                    self._clean_orphans()
                    self._encode(todo, first, batch_size, shard_size, progress, report)
                    self.build_seconds += time.perf_counter() - started
                    self._write_index()
        report.seconds = time.perf_counter() - t0
        return report

    def _encode(self, todo, paths, batch_size, shard_size, progress, report) -> None:
        model = self.model
        size = model.config.image_size
        param = next(model.encoder.parameters())
        was_training = model.training
        model.eval()
        pending_ids: list[str] = []
        pending: list[torch.Tensor] = []
        bar = tqdm(total=len(todo), unit="img", desc="encoder features", disable=not progress)
        try:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                good, pixels = [], []
                for image_id in chunk:
                    try:
                        pixels.append(load_pixels(paths[image_id], size))  # (3, S, S)
                        good.append(image_id)
                    except CxrError as err:
                        log.warning("image %s unreadable, not cached: %s", image_id, err)
                        report.bad.append((image_id, paths[image_id], str(err)))
                if good:
                    batch = torch.stack(pixels).to(param.device, param.dtype)  # (b, 3, S, S)
                    with torch.no_grad():
                        features = model.encode_images(batch)  # (b, P, E)
                    half = features.to("cpu", torch.float16)
                    if not bool(torch.isfinite(half).all()):
                        raise RuntimeError(
                            f"encoder features of {good[0]}..{good[-1]} are not finite in "
                            "float16 (overflow or NaN)"
                        )
                    pending_ids += good
                    pending.append(half)
                    report.computed += len(good)
                    if len(pending_ids) >= shard_size:
                        self._write_shard(pending_ids, pending)
                        pending_ids, pending = [], []
                bar.update(len(chunk))
            if pending_ids:
                self._write_shard(pending_ids, pending)
        finally:
            bar.close()
            model.train(was_training)


@dataclass
class ManifestFeatures:
    """Result of :func:`features_for_manifest`.

    Attributes
    ----------
    image_ids : list of str
        The id of each readable row, manifest order (repeats kept).
    features : torch.Tensor
        (N, P, E) float16, aligned with ``image_ids``.
    bad : list of (image_id, path, message)
        Rows whose image could not be read (left out of ``features``).
    report : BuildReport
    rows : list of int
        Position (``df.iloc``) of each kept row in the manifest.
    """

    image_ids: list[str]
    features: torch.Tensor
    bad: list[tuple[str, str, str]]
    report: BuildReport
    rows: list[int] = field(default_factory=list)


class LazyFeatures:
    """Cached features read from the shards one item at a time, for datasets too large to
    hold in memory (published sizes: 0.79 MB per image). Indexing with an int gives a
    (P, E) float16 tensor; with a list of ints, another :class:`LazyFeatures`. Picklable
    (file handles are reopened in each DataLoader worker)."""

    def __init__(self, folder: Path, where: list[tuple[str, int]], num_patches: int, width: int):
        self.folder = Path(folder)
        self.where = list(where)  # (shard file name, row) per item
        self.num_patches, self.width = num_patches, width
        self._handles: dict = {}

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.where), self.num_patches, self.width)

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, index):
        if isinstance(index, (list, tuple, torch.Tensor)):
            rows = index.tolist() if isinstance(index, torch.Tensor) else list(index)
            return LazyFeatures(
                self.folder, [self.where[i] for i in rows], self.num_patches, self.width
            )
        name, row = self.where[index]
        handle = self._handles.get(name)
        if handle is None:
            from safetensors import safe_open

            if len(self._handles) >= OPEN_SHARDS:
                self._handles.pop(next(iter(self._handles)))
            handle = safe_open(str(self.folder / name), framework="pt")
            self._handles[name] = handle
        return handle.get_slice("features")[row : row + 1][0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}

    def batches(self, batch_size: int = 1024):
        """Yield ``(positions, features)``: every item once, as (b, P, E) float16 blocks
        of at most ``batch_size`` items of one shard, with their positions (list of int).

        Shards are read one at a time and closed after (a memory-mapped shard's pages
        count in the resident memory while it is open), so the memory used does not
        grow with the number of items or shards.
        """
        from safetensors import safe_open

        if batch_size <= 0:
            raise ValueError(f"batch_size: expected > 0 (got {batch_size})")
        by_shard: dict[str, list[tuple[int, int]]] = {}  # shard -> [(row, position)]
        for pos, (name, row) in enumerate(self.where):
            by_shard.setdefault(name, []).append((row, pos))
        for name, wanted in by_shard.items():
            wanted.sort()
            handle = safe_open(str(self.folder / name), framework="pt")
            features = handle.get_slice("features")
            for start in range(0, len(wanted), batch_size):
                part = wanted[start : start + batch_size]
                lo, hi = part[0][0], part[-1][0] + 1
                block = features[lo:hi]  # (hi - lo, P, E): rows sorted, at most one shard
                rows = torch.tensor([row - lo for row, _ in part])
                yield [pos for _, pos in part], block[rows]
                del block
            del features, handle


def features_for_manifest(
    manifest: Manifest,
    model,
    folder: str | os.PathLike,
    batch_size: int = 32,
    progress: bool = True,
    shard_size: int | None = None,
    in_memory: bool = True,
) -> ManifestFeatures:
    """Encoder features of every manifest row through a :class:`FeatureCache` in ``folder``.

    Parameters
    ----------
    manifest : Manifest
        ``image_id`` and ``image_path`` columns; relative paths resolve against its root.
    model : ReportModel
        With a frozen encoder.
    folder : path-like
        Parent folder of the cache.
    batch_size, progress, shard_size
        As :meth:`FeatureCache.build`.
    in_memory : bool
        Load every feature into one tensor (default); False gives a
        :class:`LazyFeatures` that reads each item from the shards when indexed.

    Returns
    -------
    ManifestFeatures
        Features (N, P, E) float16 of the rows whose image was readable, in manifest
        order (one tensor in memory, or with ``in_memory=False`` a
        :class:`LazyFeatures` read per item); the unreadable ones in ``bad``.
    """
    df = manifest.frame
    ids = [str(v).strip() for v in df["image_id"]]
    paths = [str(manifest.resolve(str(p))) for p in df["image_path"]]
    cache = FeatureCache(folder, model)
    report = cache.build(
        ids, paths, batch_size=batch_size, progress=progress, shard_size=shard_size
    )
    bad_ids = {image_id for image_id, _, _ in report.bad}
    rows = [i for i, image_id in enumerate(ids) if image_id not in bad_ids]
    kept = [ids[i] for i in rows]
    if in_memory:
        features = cache.load(kept)
    else:
        cache._refresh()
        features = LazyFeatures(
            cache.folder, [cache._where[i] for i in kept], cache.num_patches, cache.width
        )
    return ManifestFeatures(kept, features, list(report.bad), report, rows)


# --- when the cache pays ------------------------------------------------------------------

IMAGE_SECONDS = 0.0124
"""Seconds the cache saves per image and pass when the encoder runs on a GPU: reading
and resizing one image on a CPU core (12.4 ms, a 1024 px phantom PNG, ``cxr bench
features``), the encoder counted as free. Real radiographs (2-3k px JPEG) cost more and
the encoder on a CPU costs 1.23 s per image at the published sizes, so this is a lower
bound: the rule errs towards not caching (docs/decisions.md, "Caching encoder features
at scale")."""

DISK_BYTES_PER_SECOND = 200e6
"""Bytes per second the cache is written and read at: a cloud network disk (projection;
measured here: 822 MB/s written, 3.9 GB/s read from the page cache)."""


def format_bytes(n: float, binary: bool = False) -> str:
    """``n`` bytes in words: B, KB, MB, GB or TB (powers of 1000), or with ``binary``
    B, KiB, MiB or GiB (powers of 1024); the largest unit takes any bigger number."""
    step, units = (
        (1024, ("B", "KiB", "MiB", "GiB")) if binary else (1000, ("B", "KB", "MB", "GB", "TB"))
    )
    for unit in units:
        if abs(n) < step or unit == units[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= step
    raise AssertionError("unreachable: the last unit returns")


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class CacheDecision:
    """What :func:`cache_pays` decided: ``use`` the cache or not, ``reason`` in words,
    the disk it needs (``need_bytes``: the images not cached yet) and the free space
    (None: not checked)."""

    use: bool
    reason: str
    need_bytes: int = 0
    free_bytes: int | None = None

    def describe(self) -> str:
        return f"feature cache {'on' if self.use else 'off'}: {self.reason}"


def cache_pays(
    encoder_frozen: bool,
    epochs: int,
    runs: int,
    n_images: int,
    bytes_per_image: int,
    free_bytes: int | None,
    cached_images: int = 0,
    image_seconds: float = IMAGE_SECONDS,
    disk_bytes_per_second: float = DISK_BYTES_PER_SECOND,
) -> CacheDecision:
    """Whether caching encoder features pays for ``runs`` runs of ``epochs`` epochs each
    over ``n_images`` images (``cached_images`` of them cached already).

    With p = epochs x runs passes, m = images not cached, t = ``image_seconds``
    (image reading and encoder per image) and d = ``bytes_per_image`` /
    ``disk_bytes_per_second``: recomputing costs p n t, caching m (t + d) to build
    plus p n d to read. The cache is used when the encoder is frozen, caching costs
    less, and its m x ``bytes_per_image`` bytes fit in ``free_bytes`` (None: not
    checked).
    """
    for name, value in (("epochs", epochs), ("runs", runs)):
        if value < 1:
            raise ValueError(f"{name}: expected >= 1 (got {value})")
    if n_images < 0 or cached_images < 0 or bytes_per_image < 0:
        raise ValueError("n_images, cached_images and bytes_per_image: expected >= 0")
    if not encoder_frozen:
        return CacheDecision(False, "the encoder trains, so its features change every step")
    if n_images == 0:
        return CacheDecision(False, "no images")
    passes, missing = epochs * runs, max(0, n_images - cached_images)
    need = missing * bytes_per_image
    io = bytes_per_image / disk_bytes_per_second
    uncached = passes * n_images * image_seconds
    cached = missing * (image_seconds + io) + passes * n_images * io
    sizes = (
        f"{n_images} images ({missing} not cached, {format_bytes(bytes_per_image)} each), "
        f"{passes} passes ({epochs} epochs x {runs} runs)"
    )
    if cached >= uncached:
        saving = f"caching costs ~{_duration(cached)}, recomputing ~{_duration(uncached)}"
        return CacheDecision(False, f"{saving}; {sizes}", need, free_bytes)
    if free_bytes is not None and need > free_bytes:
        short = f"it needs {format_bytes(need)}, only {format_bytes(free_bytes)} free"
        return CacheDecision(False, f"{short}; {sizes}", need, free_bytes)
    saving = f"saves ~{_duration(uncached - cached)} of ~{_duration(uncached)} recomputing"
    free = "" if free_bytes is None else f", {format_bytes(free_bytes)} free"
    reason = f"{saving}; needs {format_bytes(need)}{free}; {sizes}"
    return CacheDecision(True, reason, need, free_bytes)
