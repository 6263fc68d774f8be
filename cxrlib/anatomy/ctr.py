"""Cardiothoracic ratio (CTR) from lung and heart masks.

Definition used everywhere in the workbook: the heart's maximal horizontal width
(columns spanned by the heart mask) divided by the widest horizontal thoracic width
(on any one row, the span from the outermost pixel of either lung to the outermost
pixel on the other side). Both are measured in pixels on the same image, so the
ratio does not depend on resolution. A CTR above 0.5 on a PA view is cardiomegaly.
"""

from __future__ import annotations

import numpy as np


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
