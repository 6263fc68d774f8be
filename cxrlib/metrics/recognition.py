"""What a frozen encoder recognises: AUROC per finding, side and zone accuracy.

Measured after encoder pretraining (:mod:`cxrlib.training.pretrain`) from its target heads'
probabilities, on the validation and test splits, against the manifest's labels:

- **AUROC** per CheXpert label: positive or uncertain (1 or -1) against not (0 or
  blank), scored by the head's probability of "positive" + "uncertain"; the
  Mann-Whitney statistic with ties counted half. ``None`` when a split holds no
  positive or no negative study;
- **side accuracy** per lateral finding (a ``<finding>_side`` column of the phantom,
  :data:`PHANTOM_SIDE_COLUMNS`): of the studies with a drawn side, the fraction whose most
  probable non-blank side equals it (``bilateral`` only matches ``bilateral``);
- **zone accuracy** likewise for the ``<finding>_zone`` columns.

Targets (:func:`targets_met`): AUROC >= 0.97 for every finding drawn in >= 5% of the
train studies, >= 0.90 for the rarer ones, side accuracy >= 0.95.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from cxrlib.base.vocabulary import PHANTOM_SIDE_COLUMNS, phantom_column
from cxrlib.data.manifest import CHEXPERT_LABELS

ZONE_TARGETS = {phantom_column(f, "zone"): f for f in PHANTOM_SIDE_COLUMNS.values()}
"""Phantom zone column -> the finding it belongs to."""

COMMON_AUROC, RARE_AUROC, SIDE_ACCURACY = 0.97, 0.90, 0.95
COMMON_PREVALENCE = 0.05


def auroc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve of ``score`` for the boolean ``positive`` (ties: half)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recognition(
    probs: list[np.ndarray],
    targets: np.ndarray,
    names: list[str],
    classes: list[list[str]],
) -> dict:
    """Recognition of one split from the target heads' probabilities.

    Parameters
    ----------
    probs : one (N, C_k) array of class probabilities per target
    targets : (N, K) int class indices (:func:`cxrlib.training.pretrain.encode_targets`)
    names, classes : the targets' names and classes

    Returns
    -------
    dict with ``n``, ``auroc`` {label: value or None}, ``positives`` {label: count},
    ``side_accuracy`` / ``zone_accuracy`` {finding: value}, ``side_n`` / ``zone_n``.
    """
    out: dict = {"n": int(len(targets)), "auroc": {}, "positives": {}}
    for label in CHEXPERT_LABELS:
        if label not in names:
            continue
        k = names.index(label)
        positive = targets[:, k] > 0  # class 1 positive, 2 uncertain
        out["positives"][label] = int(positive.sum())
        value = auroc(positive, probs[k][:, 1] + probs[k][:, 2])
        out["auroc"][label] = None if value is None else round(value, 4)
    for key, table in (("side", PHANTOM_SIDE_COLUMNS), ("zone", ZONE_TARGETS)):
        accuracy, counts = {}, {}
        for column, finding in table.items():
            if column not in names:
                continue
            k = names.index(column)
            drawn = targets[:, k] > 0  # class 0 is blank
            if not drawn.any():
                continue
            p = probs[k][drawn].copy()
            p[:, 0] = -np.inf  # the most probable non-blank class
            accuracy[finding] = round(float((p.argmax(-1) == targets[drawn, k]).mean()), 4)
            counts[finding] = int(drawn.sum())
        out[f"{key}_accuracy"], out[f"{key}_n"] = accuracy, counts
    return out


def targets_met(result: dict, prevalence: dict[str, float]) -> dict[str, dict]:
    """Per finding: its target and whether ``result`` (:func:`recognition`) meets it.

    ``prevalence`` is each label's share of positive-or-uncertain train studies.
    """
    out = {}
    for label, value in result["auroc"].items():
        if label == "No Finding" or value is None:
            continue
        target = COMMON_AUROC if prevalence.get(label, 0) >= COMMON_PREVALENCE else RARE_AUROC
        out[label] = {"metric": "auroc", "value": value, "target": target, "met": value >= target}
    for finding, value in result.get("side_accuracy", {}).items():
        out[f"{finding} side"] = {
            "metric": "side_accuracy",
            "value": value,
            "target": SIDE_ACCURACY,
            "met": value >= SIDE_ACCURACY,
        }
    return out


def markdown_table(record: dict) -> str:
    """The recognition of ``pretrain.json``'s ``recognition`` record as a Markdown table."""
    splits = [s for s in ("validate", "test") if s in record]
    prevalence = record.get("train_prevalence", {})
    head = "| finding | train prevalence | " + " | ".join(f"{s} AUROC" for s in splits)
    head += " | " + " | ".join(f"{s} side acc." for s in splits) + " | target |"
    lines = [head, "| --- | ---: | " + " | ".join("---:" for _ in splits * 2) + " | --- |"]

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    shown = {
        name
        for split in splits
        for key in ("auroc", "side_accuracy")
        for name in record[split].get(key, {})
    }
    for label in CHEXPERT_LABELS:
        if label == "No Finding" or label not in shown:
            continue
        common = prevalence.get(label, 0) >= COMMON_PREVALENCE
        target = f"AUROC >= {COMMON_AUROC if common else RARE_AUROC}"
        sides = [record[s].get("side_accuracy", {}).get(label) for s in splits]
        if any(v is not None for v in sides):
            target += f", side >= {SIDE_ACCURACY}"
        cells = [fmt(record[s].get("auroc", {}).get(label)) for s in splits]
        cells += ["" if v is None else fmt(v) for v in sides]
        lines.append(
            f"| {label} | {prevalence.get(label, 0):.3f} | " + " | ".join(cells) + f" | {target} |"
        )
    return "\n".join(lines)
