"""Segmentation quality: Dice and the 95th-percentile Hausdorff distance (HD95).

Both take boolean masks of one organ on one image, shape (H, W), and are measured in
pixels of the image they are given (the workbook evaluates at the original resolution).
Their means and intervals over images: :func:`cxrlib.base.stats.bootstrap_mean_ci`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)`` of two boolean masks (H, W).

    1.0 when both masks are empty (nothing to find, nothing found).
    """
    pred, true = _check(pred, true)
    total = pred.sum() + true.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, true).sum() / total)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a mask: in the mask, with a 4-neighbour outside it."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, true: np.ndarray) -> float:
    """Symmetric 95th-percentile Hausdorff distance between mask boundaries, in pixels.

    For every boundary pixel of one mask, the Euclidean distance to the nearest boundary
    pixel of the other; the 95th percentile of each direction, and the larger of the two.
    0.0 when both masks are empty; ``inf`` when exactly one is.
    """
    pred, true = _check(pred, true)
    if not pred.any() and not true.any():
        return 0.0
    if not pred.any() or not true.any():
        return float("inf")
    sp, st = _surface(pred), _surface(true)
    to_true = ndimage.distance_transform_edt(~st)[sp]
    to_pred = ndimage.distance_transform_edt(~sp)[st]
    return float(max(np.percentile(to_true, 95), np.percentile(to_pred, 95)))


def _check(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(f"masks must be 2-D and equal in shape, got {pred.shape} and {true.shape}")
    return pred, true
