"""RadGraph F1 from entity and relation annotations, computed by our own code.

Definitions (followed exactly; source: the ``radgraph`` package of Stanford AIMI,
``radgraph/rewards.py`` and ``F1RadGraph``, which implements Delbrouck et al.,
"Improving the Factual Correctness of Radiology Report Generation with Semantic
Rewards", Findings of EMNLP 2022; its reward levels are named "simple", "partial",
"complete"):

For one report pair, each annotation becomes a **set** of candidate tuples:

- ``simple`` (RG_E): ``(tokens, label)`` for every entity.
- ``partial`` (RG_ER): ``(tokens, label)`` for an entity without relations,
  ``(tokens, label, True)`` for an entity with at least one relation.
- ``complete``: ``(tokens, label)`` for an entity without relations; for an entity with
  relations, one ``(tokens.lower(), label, relation_type, target_tokens.lower())`` per
  relation (the target looked up by id in the same annotation). As in the package, only
  the tuples of related entities are lower-cased.

Then precision = |H & R| / |H| (0 when H is empty), recall = |H & R| / |R| (0 when R is
empty), F1 = 2 P R / (P + R) (0 when P + R = 0), where H, R are the hypothesis' and the
reference's sets (duplicates collapse: sets, not multisets). A pair where either
annotation has no entity scores 0 at every level, and so does a pair where either text
is empty (the package tests ``len(text) == 0``; here the text is stripped first, so a
blank text is empty too). The reported value is the **mean of the per-report F1**
(``F1RadGraph``'s mean reward); its bootstrap recomputes that mean on each resample.

Annotations are the ``radgraph`` package's output dicts::

    {"text": ..., "entities": {"1": {"tokens": "effusion", "label": "OBS-DP",
                                     "start_ix": 3, "end_ix": 3,
                                     "relations": [["located_at", "2"]]}, ...}}

They come from :class:`RadGraphAnnotator` when the ``radgraph`` package and its model
weights are installed locally (model ``radgraph`` = RadGraph v1, or ``radgraph-xl``;
their numbers are not comparable, so the model is named in every output); otherwise
:func:`radgraph_unavailable_reason` says why and the metric is reported unavailable.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "LEVELS",
    "RADGRAPH_KEYS",
    "RADGRAPH_MODELS",
    "RadGraphAnnotator",
    "RadGraphScores",
    "candidates",
    "pair_scores",
    "radgraph_scores",
    "radgraph_unavailable_reason",
    "set_f1",
]

LEVELS: tuple[str, ...] = ("simple", "partial", "complete")
"""Reward levels, in order: RG_E, RG_ER, complete."""

RADGRAPH_KEYS: tuple[str, ...] = tuple(f"radgraph.{level}" for level in LEVELS)
"""Flat metric keys of metrics.json."""

RADGRAPH_MODELS: tuple[str, ...] = ("radgraph", "radgraph-xl")
"""Annotation models of the radgraph package (v1 and XL; not comparable)."""

_ARCHIVES = {"radgraph": "radgraph.tar.gz", "radgraph-xl": "radgraph-xl.tar.gz"}


def candidates(annotation: Mapping, level: str) -> set[tuple]:
    """The candidate tuples of one annotation at one level (module docstring).

    Parameters
    ----------
    annotation : mapping
        A radgraph output dict with an ``entities`` mapping.
    level : str
        ``simple``, ``partial`` or ``complete``.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    entities = annotation.get("entities", {}) or {}
    out: set[tuple] = set()
    for entity in entities.values():
        tokens, label, relations = entity["tokens"], entity["label"], entity.get("relations")
        if level == "simple" or not relations:
            out.add((tokens, label))
        elif level == "partial":
            out.add((tokens, label, True))
        else:
            for rel_type, target in relations:
                target_tokens = entities[str(target)]["tokens"]
                out.add((tokens.lower(), label, rel_type, target_tokens.lower()))
    return out


def set_f1(hyp: set, ref: set) -> tuple[float, float, float]:
    """(precision, recall, F1) of two candidate sets (0 where a denominator is 0)."""
    precision = sum(1 for x in hyp if x in ref) / len(hyp) if hyp else 0.0
    recall = sum(1 for x in ref if x in hyp) / len(ref) if ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def pair_scores(hyp: Mapping | None, ref: Mapping | None) -> dict[str, float]:
    """F1 of one (hypothesis, reference) annotation pair at every level.

    None (an empty text) or an annotation without entities gives 0 at every level.
    """
    if not hyp or not ref or not hyp.get("entities") or not ref.get("entities"):
        return dict.fromkeys(LEVELS, 0.0)
    return {level: set_f1(candidates(hyp, level), candidates(ref, level))[2] for level in LEVELS}


@dataclass
class RadGraphScores:
    """Per-report RadGraph F1 at every level, and the model that annotated.

    Attributes
    ----------
    per_report : numpy.ndarray, shape (items, 3)
        F1 per report, columns in :data:`LEVELS` order.
    model : str
        Annotation model (``radgraph`` / ``radgraph-xl`` / ``given`` for annotations
        passed in).
    """

    per_report: np.ndarray
    model: str

    def __len__(self) -> int:
        return len(self.per_report)

    def scores(self, idx: np.ndarray | None = None) -> dict[str, float]:
        """Mean F1 per level (:data:`RADGRAPH_KEYS`) over items ``idx`` (with repeats)."""
        rows = self.per_report if idx is None else self.per_report[np.asarray(idx)]
        if len(rows) == 0:
            return dict.fromkeys(RADGRAPH_KEYS, float("nan"))
        means = rows.mean(axis=0)
        return {key: float(v) for key, v in zip(RADGRAPH_KEYS, means, strict=True)}


def radgraph_scores(
    hyp_annotations: Sequence[Mapping | None],
    ref_annotations: Sequence[Mapping | None],
    *,
    model: str = "given",
) -> RadGraphScores:
    """Per-report F1 of paired annotations (None for an empty text).

    Examples
    --------
    >>> e = {"entities": {"1": {"tokens": "effusion", "label": "OBS-DP", "relations": []}}}
    >>> radgraph_scores([e], [e]).scores()["radgraph.simple"]
    1.0
    """
    if len(hyp_annotations) != len(ref_annotations):
        raise ValueError(
            f"{len(hyp_annotations)} hypothesis annotations but {len(ref_annotations)} references"
        )
    rows = [pair_scores(h, r) for h, r in zip(hyp_annotations, ref_annotations, strict=True)]
    per_report = np.array([[row[level] for level in LEVELS] for row in rows], dtype=float)
    return RadGraphScores(per_report.reshape(len(rows), len(LEVELS)), model)


# --------------------------------------------------------------------------- annotator


def _radgraph_cache(model: str) -> Path | None:
    try:
        version = importlib.metadata.version("radgraph")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        from appdirs import user_cache_dir  # the package's own dependency
    except ImportError:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "radgraph"
    else:
        base = Path(user_cache_dir("radgraph"))
    return base / version / _ARCHIVES[model]


def radgraph_unavailable_reason(model: str = "radgraph") -> str | None:
    """Why RadGraph annotations cannot be made here (None when they can).

    Needs the ``radgraph`` package and its model archive already in the package's cache
    (``radgraph`` would otherwise download it; we never trigger that).
    """
    if model not in RADGRAPH_MODELS:
        return f"unknown RadGraph model {model!r} (choose from {', '.join(RADGRAPH_MODELS)})"
    if importlib.util.find_spec("radgraph") is None:
        return (
            "RadGraph F1 needs the radgraph package and its model weights "
            f"(pip install radgraph, then fetch {_ARCHIVES[model]} once): not installed"
        )
    archive = _radgraph_cache(model)
    if archive is None or not (archive.is_file() or (archive.parent / model).is_dir()):
        return (
            f"RadGraph F1 needs the {model} model weights in the radgraph cache "
            f"({archive}); they are not there and are not downloaded automatically"
        )
    return None


class RadGraphAnnotator:
    """Entity/relation annotations from the ``radgraph`` package (weights local only).

    Parameters
    ----------
    model : str
        ``radgraph`` (v1) or ``radgraph-xl``.
    """

    def __init__(self, model: str = "radgraph") -> None:
        reason = radgraph_unavailable_reason(model)
        if reason is not None:
            raise RuntimeError(reason)
        from radgraph import RadGraph

        self.model = model
        self._radgraph = RadGraph(model_type=model)

    def __call__(self, texts: Sequence[object]) -> list[dict | None]:
        """One annotation per text; None for an empty text (not sent to the model)."""
        clean = ["" if t is None or t != t else str(t).strip() for t in texts]
        todo = [i for i, t in enumerate(clean) if t]
        out: list[dict | None] = [None] * len(clean)
        if todo:
            result = self._radgraph([clean[i] for i in todo])
            for k, i in enumerate(todo):
                out[i] = result[str(k)]
        return out
