"""Precision, recall and F1 from counts, with the one empty-denominator convention.

Every precision, recall and F1 of cxrlib (clinical F1, the IU X-ray labeler validation)
comes from :func:`precision_recall_f1`: precision = TP / (TP + FP), recall =
TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN), and each is **0 when its denominator is
0** (scikit-learn's ``zero_division=0``, which f1chexbert's ``classification_report``
uses for the published CheXbert micro / macro F1). So an observation nobody reports
and nobody predicts scores F1 0 and counts as 0 in a macro average (``docs/evaluation.md``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["precision_recall_f1", "ratio"]


def ratio(num: np.ndarray | int, den: np.ndarray | int) -> np.ndarray:
    """``num / den`` elementwise as float, 0 where ``den`` is 0.

    Examples
    --------
    >>> ratio(np.array([1, 0]), np.array([4, 0])).tolist()
    [0.25, 0.0]
    """
    den = np.asarray(den)
    return np.divide(num, den, out=np.zeros(np.shape(den), float), where=den > 0)


def precision_recall_f1(
    tp: np.ndarray | int, fp: np.ndarray | int, fn: np.ndarray | int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of counts (scalars or arrays of one shape), 0 where empty.

    Examples
    --------
    >>> [float(v) for v in precision_recall_f1(2, 1, 1)]
    [0.6666666666666666, 0.6666666666666666, 0.6666666666666666]
    >>> [float(v) for v in precision_recall_f1(0, 0, 0)]
    [0.0, 0.0, 0.0]
    """
    tp, fp, fn = np.asarray(tp), np.asarray(fp), np.asarray(fn)
    return ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)
