"""Grounding on the phantom: is each generated finding there, and on the right side?

The phantom's ground truth is exact: its manifest holds every study's CheXpert labels
and, per lateral finding, the side it was drawn on (``effusion_side``, ...; the
patient's side). Generated Findings are read with the labeler (labels and laterality,
:func:`cxrlib.metrics.labeler.label_reports`). Per observation and overall:

Observations: the 13 CheXpert findings (:data:`FINDINGS`; "No Finding" is not a
finding).

- **hallucination rate**: of the (study, observation) pairs the generated text calls
  positive, the fraction whose ground truth is not positive;
- **omission rate**: of the ground-truth positive pairs, the fraction the generated
  text does not call positive;
- **laterality accuracy**: of the pairs positive in both whose generated text states a
  side, the fraction whose side equals the drawn one (``bilateral`` only matches
  ``bilateral``); pairs positive in both but without a stated side are counted
  separately (``unspecified``) and are not in the accuracy.

"Positive" follows the convention: ``uncertain_as_negative`` (1 only) or
``uncertain_as_positive`` (1 and -1), for ground truth and generated text alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrlib.base.vocabulary import SIDE_COLUMNS
from cxrlib.data.manifest import CHEXPERT_LABELS, text_cell
from cxrlib.metrics.labeler import laterality_column

CONVENTIONS = ("uncertain_as_negative", "uncertain_as_positive")

FINDINGS = tuple(label for label in CHEXPERT_LABELS if label != "No Finding")
"""The 13 observations that are findings ("No Finding" is not one)."""


def _positive(values: pd.Series, convention: str) -> np.ndarray:
    v = pd.to_numeric(values, errors="coerce").to_numpy()
    return (v == 1) | ((v == -1) & (convention == "uncertain_as_positive"))


@dataclass
class Grounding:
    """Per-observation table and overall rates, with the pair-level indicators kept for
    bootstrap intervals (:mod:`cxrlib.base.stats`)."""

    table: pd.DataFrame
    overall: dict
    convention: str


def grounding(
    generated_labels: pd.DataFrame,
    truth: pd.DataFrame,
    convention: str = "uncertain_as_negative",
) -> Grounding:
    """Hallucination, omission and laterality on the phantom.

    Parameters
    ----------
    generated_labels : pandas.DataFrame
        :func:`label_reports` of the generated Findings, one row per study.
    truth : pandas.DataFrame
        The same studies' manifest rows (labels and ``*_side`` columns), same order.
    convention : {"uncertain_as_negative", "uncertain_as_positive"}

    Returns
    -------
    Grounding
        ``table``: one row per observation with ``n_generated_positive``,
        ``hallucinated``, ``hallucination_rate``, ``n_true_positive_truth``,
        ``omitted``, ``omission_rate``, and for lateral ones ``n_sided``,
        ``side_correct``, ``laterality_accuracy``, ``unspecified``; ``overall``: the
        same pooled over observations.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}")
    if len(generated_labels) != len(truth):
        raise ValueError(f"{len(generated_labels)} generated rows for {len(truth)} studies")
    counts = GroundingData.build(generated_labels, truth).counts
    per_obs = {k: counts[f"{convention}.{k}"].sum(axis=0) for k in _COUNTS}  # (13,) each
    rows = []
    for j, obs in enumerate(FINDINGS):
        row = {
            "observation": obs,
            "n_generated_positive": int(per_obs["gen"][j]),
            "hallucinated": int(per_obs["hall"][j]),
            "n_truth_positive": int(per_obs["truth"][j]),
            "omitted": int(per_obs["omit"][j]),
        }
        if obs in SIDE_COLUMNS and SIDE_COLUMNS[obs] in truth.columns:
            row["n_sided"] = int(per_obs["sided"][j])
            row["side_correct"] = int(per_obs["correct"][j])
            row["unspecified"] = int(per_obs["both"][j] - per_obs["sided"][j])
        rows.append(row)
    table = pd.DataFrame(rows)
    table["hallucination_rate"] = _rate(table["hallucinated"], table["n_generated_positive"])
    table["omission_rate"] = _rate(table["omitted"], table["n_truth_positive"])
    if "n_sided" in table:
        table["laterality_accuracy"] = _rate(table["side_correct"], table["n_sided"])
    sums = table.sum(numeric_only=True)
    overall = {
        "n_studies": len(generated_labels),
        "hallucination_rate": _ratio(sums["hallucinated"], sums["n_generated_positive"]),
        "omission_rate": _ratio(sums["omitted"], sums["n_truth_positive"]),
        "laterality_accuracy": _ratio(sums.get("side_correct", 0), sums.get("n_sided", 0)),
        "n_generated_positive": int(sums["n_generated_positive"]),
        "n_truth_positive": int(sums["n_truth_positive"]),
        "n_sided": int(sums.get("n_sided", 0)),
        "unspecified": int(sums.get("unspecified", 0)),
    }
    table.insert(1, "convention", convention)
    return Grounding(table, overall, convention)


def _rate(num: pd.Series, den: pd.Series) -> pd.Series:
    return (num / den.where(den > 0)).astype(float)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


_COUNTS = ("gen", "hall", "truth", "omit", "both", "sided", "correct")
"""Per (study, finding) indicators kept by :class:`GroundingData`: generated positive,
hallucinated, truth positive, omitted, positive in both, side stated, side correct."""

GROUNDING_RATES = ("hallucination_rate", "omission_rate", "laterality_accuracy")
GROUNDING_KEYS: tuple[str, ...] = tuple(
    f"grounding.{c}.{r}" for c in CONVENTIONS for r in GROUNDING_RATES
)
"""Flat keys of the overall grounding rates (``metrics.json``)."""


def has_ground_truth_sides(truth: pd.DataFrame) -> bool:
    """Whether ``truth`` carries the phantom's drawn sides (grounding applies)."""
    return any(column in truth.columns for column in SIDE_COLUMNS.values())


@dataclass
class GroundingData:
    """Per-study indicator counts (N, 13) of both conventions, for fast bootstraps."""

    counts: dict[str, np.ndarray]  # "<convention>.<count>" -> (N, 13) int

    @classmethod
    def build(cls, generated_labels: pd.DataFrame, truth: pd.DataFrame) -> GroundingData:
        gen = generated_labels.reset_index(drop=True)
        ref = truth.reset_index(drop=True)
        counts: dict[str, np.ndarray] = {}
        for convention in CONVENTIONS:
            cols = {k: [] for k in _COUNTS}
            for obs in FINDINGS:
                g = _positive(gen[obs], convention)
                t = _positive(ref[obs], convention)
                cols["gen"].append(g)
                cols["hall"].append(g & ~t)
                cols["truth"].append(t)
                cols["omit"].append(t & ~g)
                cols["both"].append(g & t)
                column = SIDE_COLUMNS.get(obs)
                lat = laterality_column(obs)
                if column in ref.columns and lat in gen.columns:
                    said = gen[lat].map(lambda v: v or "").to_numpy()
                    stated = g & t & np.isin(said, ["left", "right", "bilateral"])
                    correct = stated & (said == ref[column].map(text_cell).to_numpy())
                else:
                    stated = correct = np.zeros(len(gen), dtype=bool)
                cols["sided"].append(stated)
                cols["correct"].append(correct)
            for k, v in cols.items():
                counts[f"{convention}.{k}"] = np.stack(v, axis=1).astype(np.int64)
        return cls(counts)

    def scores(self, idx: np.ndarray | None = None) -> dict[str, float]:
        """The :data:`GROUNDING_KEYS` rates on the studies at ``idx`` (all: None)."""
        out = {}
        for c in CONVENTIONS:
            rows = slice(None) if idx is None else idx
            s = {k: self.counts[f"{c}.{k}"][rows].sum() for k in _COUNTS}
            out[f"grounding.{c}.hallucination_rate"] = _ratio(s["hall"], s["gen"])
            out[f"grounding.{c}.omission_rate"] = _ratio(s["omit"], s["truth"])
            out[f"grounding.{c}.laterality_accuracy"] = _ratio(s["correct"], s["sided"])
        return out


def finding_examples(
    generated_labels: pd.DataFrame,
    truth: pd.DataFrame,
    generated: list[str],
    references: list[str],
    image_ids: list[str],
    n: int = 3,
    convention: str = "uncertain_as_negative",
) -> pd.DataFrame:
    """Up to ``n`` studies each with a correct, a hallucinated and an omitted finding.

    Returns ``kind, observation, image_id, reference, generated`` rows (kinds in that
    order; studies in input order, one finding per study and kind).
    """
    gen = generated_labels.reset_index(drop=True)
    ref = truth.reset_index(drop=True)
    rows = []
    for kind in ("correct", "hallucinated", "omitted"):
        found = 0
        for i in range(len(gen)):
            if found >= n:
                break
            for obs in FINDINGS:
                g = _positive(gen[obs].iloc[[i]], convention)[0]
                t = _positive(ref[obs].iloc[[i]], convention)[0]
                hit = {"correct": g and t, "hallucinated": g and not t, "omitted": t and not g}
                if hit[kind]:
                    rows.append(
                        {
                            "kind": kind,
                            "observation": obs,
                            "image_id": image_ids[i],
                            "reference": references[i],
                            "generated": generated[i],
                        }
                    )
                    found += 1
                    break
    return pd.DataFrame(rows, columns=["kind", "observation", "image_id", "reference", "generated"])
