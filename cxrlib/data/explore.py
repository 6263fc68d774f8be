"""Dataset exploration: counts, label prevalence, report text statistics.

Plain functions on a manifest DataFrame (see :mod:`cxrlib.data.manifest`); notebook
``01_dataset_exploration`` calls them and :mod:`cxrlib.experiment.figures` draws their results.

CheXpert labels and Findings belong to a study, not to an image: a study with a frontal
and a lateral image has one report. Label and text statistics therefore count each
study once (its first row in the manifest) unless told otherwise; image counts count
rows.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from cxrlib.data import sections
from cxrlib.data.manifest import CHEXPERT_LABELS, SPLITS

TOTAL = "total"
"""Name of the totals row and column of :func:`split_view_counts`."""

BLANK_VIEW = "(blank)"
"""View name shown for rows whose ``view`` cell is empty."""


def _ordered_splits(values: pd.Series) -> list[str]:
    """Splits present in ``values``, in :data:`SPLITS` order (unknown ones last, sorted)."""
    present = set(values.astype(str))
    return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))


def studies(df: pd.DataFrame) -> pd.DataFrame:
    """One row per study: the first row of each ``study_id``, in manifest order.

    Parameters
    ----------
    df : pandas.DataFrame
        A manifest (one row per image).

    Returns
    -------
    pandas.DataFrame
        The rows of ``df`` that are the first of their study; index kept.
    """
    return df.loc[~df["study_id"].astype(str).duplicated(keep="first")]


def split_view_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Number of images per split and view, with totals.

    Parameters
    ----------
    df : pandas.DataFrame
        A manifest (one row per image).

    Returns
    -------
    pandas.DataFrame
        Integer counts. Rows: the splits present, in the order train, validate, test,
        then a ``"total"`` row. Columns: views by decreasing number of images (ties by
        name; an empty view cell is ``"(blank)"``), then a ``"total"`` column.
        Index name ``"split"``, columns name ``"view"``.
    """
    split = df["split"].astype(str)
    view = df["view"].fillna("").astype(str).str.strip().replace("", BLANK_VIEW)
    table = pd.crosstab(split, view)
    by_size = table.sum(axis=0).sort_index().sort_values(ascending=False, kind="stable")
    table = table.reindex(index=_ordered_splits(split), columns=list(by_size.index), fill_value=0)
    table.loc[TOTAL] = table.sum(axis=0)
    table[TOTAL] = table.sum(axis=1)
    table.index.name = "split"
    table.columns.name = "view"
    return table.astype("int64")


def label_prevalence(df: pd.DataFrame, *, per_study: bool = True) -> pd.DataFrame:
    """Counts of each CheXpert value per observation and split.

    Parameters
    ----------
    df : pandas.DataFrame
        A manifest read with :func:`~cxrlib.data.manifest.read_manifest` (label
        columns are floats in {1, 0, -1, NaN}).
    per_study : bool
        Count each study once (labels are study-level); ``False`` counts images.

    Returns
    -------
    pandas.DataFrame
        One row per (observation, split): observations in :data:`CHEXPERT_LABELS`
        order, splits in the order train, validate, test. Columns ``observation``,
        ``split``, ``positive`` (1), ``uncertain`` (-1), ``negative`` (0), ``blank``
        (NaN, not mentioned), ``n`` (their sum), ``positive_fraction``
        (positive / n) and ``positive_or_uncertain_fraction`` ((positive +
        uncertain) / n); fractions are NaN for an empty split.
    """
    rows = studies(df) if per_study else df
    split = rows["split"].astype(str)
    records = []
    for label in CHEXPERT_LABELS:
        values = pd.to_numeric(rows[label], errors="coerce")
        for name in _ordered_splits(split):
            v = values[split == name]
            positive = int((v == 1).sum())
            uncertain = int((v == -1).sum())
            n = len(v)
            records.append(
                {
                    "observation": label,
                    "split": name,
                    "positive": positive,
                    "uncertain": uncertain,
                    "negative": int((v == 0).sum()),
                    "blank": int(v.isna().sum()),
                    "n": n,
                    "positive_fraction": positive / n if n else float("nan"),
                    "positive_or_uncertain_fraction": (positive + uncertain) / n
                    if n
                    else float("nan"),
                }
            )
    return pd.DataFrame.from_records(
        records,
        columns=[
            "observation",
            "split",
            "positive",
            "uncertain",
            "negative",
            "blank",
            "n",
            "positive_fraction",
            "positive_or_uncertain_fraction",
        ],
    )


def prevalence_wide(
    prev: pd.DataFrame, value: str = "positive_or_uncertain_fraction"
) -> pd.DataFrame:
    """One column of :func:`label_prevalence` as an observation x split table.

    Parameters
    ----------
    prev : pandas.DataFrame
        The table of :func:`label_prevalence`.
    value : str
        The column to spread, e.g. ``"positive_fraction"`` or ``"positive"``.

    Returns
    -------
    pandas.DataFrame
        Rows: observations in the order of ``prev``; columns: splits in the order of
        ``prev``.
    """
    observations = list(dict.fromkeys(prev["observation"]))
    splits = list(dict.fromkeys(prev["split"]))
    wide = prev.pivot(index="observation", columns="split", values=value)
    return wide.reindex(index=observations, columns=splits)


def word_count(text: object) -> int:
    """Number of whitespace-separated words in ``text``; 0 for empty, None or NaN."""
    if not isinstance(text, str):
        return 0
    return len(text.split())


def findings_lengths(df: pd.DataFrame) -> pd.Series:
    """Words per Findings text, one value per row of ``df``.

    Parameters
    ----------
    df : pandas.DataFrame
        A manifest, or any frame with a ``findings`` column.

    Returns
    -------
    pandas.Series
        int64 word counts (whitespace-separated tokens; empty text is 0), same index
        as ``df``, named ``"words"``.
    """
    return df["findings"].map(word_count).astype("int64").rename("words")


def findings_lengths_by_split(df: pd.DataFrame) -> pd.DataFrame:
    """Words per report, one row per study, for comparing splits.

    Parameters
    ----------
    df : pandas.DataFrame
        A manifest (one row per image).

    Returns
    -------
    pandas.DataFrame
        Columns ``study_id``, ``split``, ``words``; rows ordered by split (train,
        validate, test), then manifest order. Index 0..n-1.
    """
    rows = studies(df)
    table = pd.DataFrame(
        {
            "study_id": rows["study_id"].astype(str),
            "split": rows["split"].astype(str),
            "words": findings_lengths(rows),
        }
    )
    order = {s: i for i, s in enumerate(_ordered_splits(table["split"]))}
    rank = table["split"].map(order)
    return table.iloc[np.argsort(rank.to_numpy(), kind="stable")].reset_index(drop=True)


def split_sentences(text: object) -> list[str]:
    """Normalised sentences of a report, as :func:`sentence_frequencies` counts them.

    The sentences of :func:`cxrlib.data.sections.split_sentences` (which keeps
    ``"1.5 cm"`` whole and ends a sentence at ``.``, ``!``, ``?``, ``;``, ``:``),
    lower-cased, their end marks dropped; empty ones skipped.

    Parameters
    ----------
    text : str
        A Findings text; anything that is not a string gives no sentences.

    Returns
    -------
    list of str
        The sentences in order.
    """
    if not isinstance(text, str):
        return []
    pieces = (s.lower().rstrip(".!?;:").strip() for s in sections.split_sentences(text))
    return [s for s in pieces if s]


def sentence_frequencies(df: pd.DataFrame, top: int | None = 20) -> pd.DataFrame:
    """The most frequent sentences of the reports (one report per study).

    Parameters
    ----------
    df : pandas.DataFrame
        A manifest (one row per image).
    top : int or None
        Number of sentences to keep; ``None`` keeps all.

    Returns
    -------
    pandas.DataFrame
        Columns ``sentence`` (normalised as by :func:`split_sentences`), ``count``
        (occurrences in all reports) and ``fraction_of_reports`` (share of the
        non-empty reports that contain it at least once). Sorted by count, then
        fraction, descending, then sentence; index 0..n-1. Empty when no report has text.
    """
    if top is not None and top < 0:
        raise ValueError(f"top must be >= 0 or None, got {top}")
    counts: Counter[str] = Counter()
    reports_with: Counter[str] = Counter()
    n_reports = 0
    for text in studies(df)["findings"]:
        sentences = split_sentences(text)
        if not sentences:
            continue
        n_reports += 1
        counts.update(sentences)
        reports_with.update(set(sentences))
    table = pd.DataFrame(
        {
            "sentence": list(counts),
            "count": [counts[s] for s in counts],
            "fraction_of_reports": [reports_with[s] / n_reports for s in counts],
        },
        columns=["sentence", "count", "fraction_of_reports"],
    ).astype({"sentence": "object", "count": "int64", "fraction_of_reports": "float64"})
    table = table.sort_values(
        ["count", "fraction_of_reports", "sentence"],
        ascending=[False, False, True],
        kind="stable",
    )
    if top is not None:
        table = table.head(top)
    return table.reset_index(drop=True)


def sample_rows(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A deterministic random sample of rows, kept in manifest order.

    Parameters
    ----------
    df : pandas.DataFrame
        Any frame.
    n : int
        Number of rows; all rows when ``n >= len(df)``.
    seed : int
        Seed of :func:`numpy.random.default_rng`; the same ``(df, n, seed)`` always
        gives the same rows.

    Returns
    -------
    pandas.DataFrame
        ``min(n, len(df))`` rows of ``df`` in their original order, index kept.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n >= len(df):
        return df
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.choice(len(df), size=n, replace=False))
    return df.iloc[positions]
