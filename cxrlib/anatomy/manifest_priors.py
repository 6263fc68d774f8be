"""Priors for the images of a manifest: where each image's masks come from (the
manifest's mask files, the segmenter, or none) and reading them onto the patch grid.

The maths from masks to one prior per decoder layer is :mod:`cxrlib.anatomy.priors`;
the cache of the results on disk is :mod:`cxrlib.anatomy.cache`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrlib.anatomy.priors import (
    PriorConfig,
    downsample_to_grid,
    layer_priors,
    masks_to_grid,
    masks_to_priors,
)
from cxrlib.base.errors import CxrError
from cxrlib.base.images import image_source, load_image
from cxrlib.base.masks import load_mask
from cxrlib.base.storage import is_url
from cxrlib.base.vocabulary import MASK_SOURCES
from cxrlib.data.manifest import Manifest, resolve, text_cell

log = logging.getLogger(__name__)


@dataclass
class PriorInfo:
    """What :func:`priors_for_manifest` did, per image and in total."""

    sources: list[str]  # per image: "manifest", "segmenter" or "none"
    grid_masks: torch.Tensor  # float32 (N, g, g): patch coverage (zeros for "none")
    empty: list[str] = field(default_factory=list)  # ids whose mask was all zero

    @property
    def counts(self) -> dict[str, int]:
        """Images per mask source, every source named (0 when unused)."""
        return {s: self.sources.count(s) for s in ("manifest", "segmenter", "none")}

    def describe(self) -> str:
        """One line: images per source and empty masks."""
        c = self.counts
        text = ", ".join(f"{k} {v}" for k, v in c.items())
        line = f"mask sources: {text}"
        if c["none"]:
            line += f" ({c['none']} without masks: uniform prior, attention unbiased)"
        if self.empty:
            line += f"; {len(self.empty)} all-zero masks (uniform prior)"
        return line


def manifest_mask_paths(row: Mapping, structures: Sequence[str]) -> dict[str, list[str]] | None:
    """Manifest mask cells that give each structure, or None if any is missing.

    ``"lungs"`` comes from ``lung_mask_path``, else from both ``left_lung_mask_path``
    and ``right_lung_mask_path``; ``"left_lung"``, ``"right_lung"``, ``"heart"`` from
    their own column. Cells are returned as written (relative to the manifest).
    """
    out: dict[str, list[str]] = {}
    for s in structures:
        if s == "lungs":
            both = text_cell(row.get("lung_mask_path"))
            left, right = (
                text_cell(row.get("left_lung_mask_path")),
                text_cell(row.get("right_lung_mask_path")),
            )
            cells = [both] if both else ([left, right] if left and right else [])
        else:
            cell = text_cell(row.get(f"{s}_mask_path"))
            cells = [cell] if cell else []
        if not cells:
            return None
        out[s] = cells
    return out


def row_sources(df: pd.DataFrame, structures: Sequence[str], source: str, has_segmenter: bool):
    """Mask source of every row (``"manifest"``, ``"segmenter"``, ``"none"``).

    ``auto``: the manifest's masks when every structure has one, else the segmenter
    when given, else none. ``manifest``: every row must have its masks (CxrError
    naming the first image without). ``segmenter``: needs a segmenter.
    """
    if source not in MASK_SOURCES:
        raise CxrError(f"source must be one of {', '.join(MASK_SOURCES)}, got {source!r}")
    if source == "segmenter" and not has_segmenter:
        raise CxrError("source 'segmenter' needs a segmenter (--segmenter CKPT)")
    if source in ("none", "segmenter"):
        return [source] * len(df)
    out = []
    for row in df.to_dict("records"):
        if manifest_mask_paths(row, structures) is not None:
            out.append("manifest")
        elif source == "manifest":
            raise CxrError(
                f"image {text_cell(row.get('image_id'))!r}: no manifest mask for every one of "
                f"{', '.join(structures)} (columns lung_mask_path or left/right_lung_mask_path, "
                "heart_mask_path); use source 'auto' to fall back"
            )
        else:
            out.append("segmenter" if has_segmenter else "none")
    return out


def _image_size(path: Path | str) -> tuple[int, int]:
    """(height, width) of an image file (a local path or a URL), from its header."""
    from PIL import Image

    source = image_source(path, "image")[1] if is_url(path) else path
    try:
        with Image.open(source) as img:
            w, h = img.size
    except FileNotFoundError:
        raise CxrError(f"{path}: image file does not exist") from None
    except OSError as err:
        raise CxrError(f"{path}: not a readable image ({err})") from None
    return h, w


def _manifest_grid_mask(row: Mapping, root: Path, structures: Sequence[str], grid: int):
    image_id = text_cell(row.get("image_id"))
    paths = manifest_mask_paths(row, structures)
    assert paths is not None
    image_cell = text_cell(row.get("image_path"))
    expected = _image_size(resolve(root, image_cell)) if image_cell else None
    union = None
    for s, cells in paths.items():
        for cell in cells:
            m = load_mask(resolve(root, cell))
            if expected is None:
                expected = m.shape  # text-only manifest: masks must agree with each other
            if m.shape != expected:
                raise CxrError(
                    f"image {image_id!r}: {s} mask {cell} is {m.shape[1]}x{m.shape[0]} px but "
                    f"the image is {expected[1]}x{expected[0]} px"
                )
            union = m if union is None else (union | m)
    return downsample_to_grid(torch.from_numpy(union[None]), grid)[0]


def _segmenter_grid_masks(segmenter, rows: list[dict], root: Path, config: PriorConfig):
    """Grid masks of rows from the segmenter, images of one shape batched together."""
    images = [load_image(resolve(root, text_cell(r.get("image_path")))) for r in rows]
    out: list[torch.Tensor | None] = [None] * len(rows)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(img.shape, []).append(i)
    for shape, idx in by_shape.items():
        pred = segmenter.predict(np.stack([images[i] for i in idx]))
        for name, m in pred.items():
            if tuple(np.shape(m)) != (len(idx), *shape):
                ids = [text_cell(rows[i].get("image_id")) for i in idx]
                raise CxrError(
                    f"image {ids[0]!r}: segmenter mask {name!r} has shape {tuple(np.shape(m))}, "
                    f"expected {(len(idx), *shape)} (the images' size)"
                )
        grid = masks_to_grid(pred, config.structures, config.grid)
        for j, i in enumerate(idx):
            out[i] = grid[j]
    return out


def priors_for_manifest(
    manifest: Manifest,
    config: PriorConfig,
    *,
    source: str = "auto",
    segmenter=None,
    progress: bool = True,
    batch_size: int = 16,
    bar=None,
) -> tuple[list[str], torch.Tensor, PriorInfo]:
    """Priors for every image of a manifest, masks taken from the best source.

    Mask sources, in order (``source="auto"``): the manifest's mask files (ground
    truth, CheXmask), when every structure of ``config.structures`` has one; the
    segmenter's prediction, when ``segmenter`` is given; none, in which case the prior
    is uniform (all ones) and :class:`PriorInfo` counts it. ``"manifest"``,
    ``"segmenter"`` and ``"none"`` force one source for every row.

    Masks are PNGs thresholded at > 127 (:func:`cxrlib.base.masks.load_mask`), united
    and area-downsampled from their native resolution straight to the patch grid
    (:func:`downsample_to_grid`; no resize to ``image_size`` first).

    Parameters
    ----------
    manifest : Manifest
        Rows in any order; relative paths resolve against its root.
    config : PriorConfig
    source : {"auto", "manifest", "segmenter", "none"}
    segmenter : object, optional
        Anything with ``predict(images) -> dict[str, ndarray]``: images uint8
        (B, H, W), masks bool (B, H, W) under keys ``left_lung``, ``right_lung``,
        ``heart`` (e.g. :class:`cxrlib.anatomy.segmenter.Segmenter`).
    progress : bool
        Show a tqdm progress bar.
    batch_size : int
        Images per segmenter call.
    bar : tqdm, optional
        An open progress bar to advance, for a caller computing one manifest in parts
        (the prior cache, a shard at a time); that caller then warns about images
        without masks once for all parts (:func:`warn_unmasked`). Default: a bar of its
        own, and the warning here.

    Returns
    -------
    image_ids : list of str
        ``df["image_id"]`` in row order.
    priors : torch.Tensor
        float32, shape (N, L, g*g), values in [0, 1] (see :func:`layer_priors`).
    info : PriorInfo
        Source per image and counts, grid masks (N, g, g), ids of all-zero masks.

    Raises
    ------
    CxrError
        Naming the image, when its mask size differs from its image's, when
        ``source="manifest"`` and it has no masks; or when ``source`` is unknown or
        ``"segmenter"`` without a segmenter; naming the file, when a mask or image
        cannot be read.
    ValueError
        When ``batch_size`` is below 1.
    """
    from tqdm.auto import tqdm

    df, root = manifest.frame, manifest.root
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    g, n = config.grid, len(df)
    ids = [text_cell(v) for v in df["image_id"]]
    sources = row_sources(df, config.structures, source, segmenter is not None)
    rows = df.to_dict("records")
    grid_masks = torch.zeros(n, g, g)
    seg_rows = [i for i, s in enumerate(sources) if s == "segmenter"]
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=n, desc="priors", unit="img", disable=not progress)
    for i, s in enumerate(sources):
        if s == "manifest":
            grid_masks[i] = _manifest_grid_mask(rows[i], root, config.structures, g)
            bar.update()
        elif s == "none":
            bar.update()
    for start in range(0, len(seg_rows), batch_size):
        chunk = seg_rows[start : start + batch_size]
        predicted = _segmenter_grid_masks(segmenter, [rows[i] for i in chunk], root, config)
        for i, m in zip(chunk, predicted, strict=True):
            grid_masks[i] = m
        bar.update(len(chunk))
    if own_bar:
        bar.close()
    # rows without masks get ones directly (no "all-zero mask" warning for them)
    priors = torch.ones(n, config.num_layers, g * g)
    masked = [i for i, s in enumerate(sources) if s != "none"]
    empty_ids: list[str] = []
    if masked:
        sub_ids = [ids[i] for i in masked]
        sub, empty = layer_priors(grid_masks[masked], config, image_ids=sub_ids, return_empty=True)
        priors[masked] = sub
        empty_ids = [sub_ids[j] for j in torch.nonzero(empty).flatten().tolist()]
    info = PriorInfo(sources=sources, grid_masks=grid_masks, empty=empty_ids)
    if own_bar:
        warn_unmasked(info.counts["none"], n)
    return ids, priors, info


def warn_unmasked(unmasked: int, n: int) -> None:
    """Log how many of ``n`` images have no masks (their prior is uniform), if any."""
    if unmasked:
        log.warning("%d of %d images have no masks: uniform prior", unmasked, n)


def row_prior_stack(row: Mapping, root: str | os.PathLike, config: PriorConfig) -> np.ndarray:
    """The per-layer priors, float32 (L, g*g), of one manifest row from its manual masks
    (``left_lung_mask_path``, ``right_lung_mask_path``, ``heart_mask_path`` under
    ``root``): what a figure of one image's priors draws."""
    masks = {
        organ: load_mask(resolve(root, text_cell(row[f"{organ}_mask_path"])))[None]
        for organ in ("left_lung", "right_lung", "heart")
    }
    return masks_to_priors(masks, config)[0].numpy()
