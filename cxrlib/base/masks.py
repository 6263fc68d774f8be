"""Masks: reading and writing binary lung/heart masks, finding region bit fields, and
the cardiothoracic ratio (CTR) measured from lung and heart masks.

CTR, as used everywhere in the workbook: the heart's maximal horizontal width
(columns spanned by the heart mask) divided by the widest horizontal thoracic width
(on any one row, the span from the outermost pixel of either lung to the outermost
pixel on the other side). Both are measured in pixels on the same image, so the
ratio does not depend on resolution. A CTR above 0.5 on a PA view is cardiomegaly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrlib.base.errors import CxrError
from cxrlib.base.images import check_pixels, image_source, open_gray


def cardiothoracic_ratio(lungs: np.ndarray, heart: np.ndarray) -> float:
    """CTR of one image.

    Parameters
    ----------
    lungs : ndarray of bool, shape (H, W)
        Both lungs (union of left and right).
    heart : ndarray of bool, shape (H, W)
        The heart.

    Returns
    -------
    float
        Heart width / widest thoracic width, in (0, inf); NaN when either mask is empty.
    """
    lungs = np.asarray(lungs, dtype=bool)
    heart = np.asarray(heart, dtype=bool)
    if lungs.shape != heart.shape or lungs.ndim != 2:
        raise ValueError(
            f"masks must be 2-D and equal in shape, got {lungs.shape} and {heart.shape}"
        )
    heart_cols = np.flatnonzero(heart.any(axis=0))
    rows = np.flatnonzero(lungs.any(axis=1))
    if heart_cols.size == 0 or rows.size == 0:
        return float("nan")
    heart_width = heart_cols[-1] - heart_cols[0] + 1
    sub = lungs[rows]
    first = sub.argmax(axis=1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    thoracic_width = int((last - first + 1).max())
    return float(heart_width / thoracic_width)


def load_mask(path: str | os.PathLike, threshold: int = 127) -> np.ndarray:
    """Read a binary mask image: pixels brighter than ``threshold`` (127) are inside.

    Parameters
    ----------
    path : path-like or str
        Mask file (8-bit grayscale PNG; any image Pillow reads is converted first): a
        local path or an fsspec URL (:mod:`cxrlib.base.storage`).

    Returns
    -------
    numpy.ndarray
        bool array of shape (height, width).

    Raises
    ------
    CxrError
        Naming the file, when it does not exist or cannot be decoded.
    """
    return open_gray(path, "mask") > threshold


def read_finding_mask(path: str | os.PathLike) -> np.ndarray:
    """The integer (H, W) bit field of a finding region mask file
    (:data:`FINDING_MASK_COLUMN`; decode it with :func:`finding_regions`).

    Raises :class:`~cxrlib.base.errors.CxrError` naming the file when it is missing,
    unreadable or not a single-channel integer image.
    """
    path, source = image_source(path, "finding mask")
    try:
        with Image.open(source) as img:
            check_pixels(img, path, "finding mask")
            img.load()
            mode = img.mode
            bits = np.asarray(img)
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CxrError(f"{path}: not a readable finding mask ({reason})") from None
    if bits.ndim != 2 or bits.dtype.kind not in "ui":
        raise CxrError(
            f"{path}: a finding mask is a single-channel integer image (16-bit PNG), "
            f"got mode {mode}"
        )
    return bits


def write_binary_mask(mask: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a boolean ``(H, W)`` mask as an 8-bit PNG with values 0 and 255."""
    path = Path(path)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(path)
    return path
