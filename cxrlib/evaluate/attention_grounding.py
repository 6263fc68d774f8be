"""Attention grounding on the phantom: does a sentence that names a finding look at it?

The phantom's geometry is exact: each study's lungs (``left_lung_mask_path``,
``right_lung_mask_path``, the patient's sides) and the region of every drawn finding
(``finding_mask_path``; :data:`cxrlib.data.phantom.render.REGION_RULES`). For each
sentence of a generated Findings text (:func:`cxrlib.data.sections.split_sentences`):

1. **What it names** (:func:`named_findings`): the rule labeler
   (:func:`~cxrlib.metrics.labeler.label_reports`) reads the sentence alone; the
   findings it labels 1 or -1 (hedged counts; No Finding is not a finding) are named.
   The named **side**: the labeler's laterality of its six lateral observations
   (``left``, ``right``, ``bilateral``; ``unspecified`` names none); for a fracture and
   pleural thickening (Pleural Other) the side words of the sentence; for a support
   device its first side word (the device's side: "left chest wall pacemaker with leads
   in the right atrium"). Several sides in one sentence make ``bilateral``.
2. **Targets**: ``side_lung``, the named side's lung (both lungs for bilateral), for the
   sentences that name a side; ``region``, the union of the drawn regions of the named
   findings, for the sentences that name a finding drawn in that study (a hallucinated
   finding has no region; an edema sentence has a region and no side).
3. **Attention** (:func:`cxrlib.model.explain.sentence_attention`): the text read again
   teacher-forced with every layer's attention weights; per sentence and layer group
   (:func:`cxrlib.model.explain.layer_groups`) the weights from the sentence's tokens to the
   P patch keys, averaged over the tokens, heads and the group's layers: a vector
   ``a`` of P non-negative numbers.
4. **Share** (:func:`attention_shares`): the target mask mapped onto the model's patch
   grid by area (:func:`cxrlib.anatomy.priors.downsample_to_grid`; ``w`` = covered
   fraction of each patch; the grid is the model's ``config.grid_size``), then
   ``share = sum(a * w) / sum(a)``: the fraction of the sentence's attention to the
   image that falls on the target. Its **chance** level is ``mean(w)``, the target's
   share of the image area: attention spread uniformly over the patches scores exactly
   that, so a share above chance is attention drawn to the target.

Per layer group and target (:func:`summarise`): the mean share over sentences with a
95 % percentile bootstrap interval over studies (all sentences of a drawn study
together, :func:`cxrlib.base.stats.bootstrap_many`; every share lies in [0, 1], so
do the bounds), the numbers of sentences and studies, and the mean chance level over the
same sentences.

Cost: one teacher-forced pass with attention weights per study. ``max_studies``
(default :data:`DEFAULT_MAX_STUDIES`; None: all) caps the studies: the first ones, in
prediction order, whose text names a finding with a side or one that can have a region;
the cap and the counts are recorded (``settings``, :meth:`AttentionGrounding.note`).

Outputs (:meth:`AttentionGrounding.write`): ``attention_grounding.csv`` (the summary:
``layer_group, target, mean, ci_low, ci_high, n_sentences, n_studies, chance``) and
``attention_sentences.csv`` (one row per sentence and layer group: ``study_id,
image_id, sentence_index, sentence, observations, side, layer_group, image_share,
side_lung, side_lung_chance, region, region_chance``; empty where a target does not
apply).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.anatomy.priors import downsample_to_grid
from cxrlib.base.errors import CxrError
from cxrlib.base.io import write_atomic
from cxrlib.base.masks import load_mask, read_finding_mask
from cxrlib.base.stats import bootstrap_many, resample_runs
from cxrlib.data.dataset import image_inputs
from cxrlib.data.manifest import (
    FINDING_MASK_COLUMN,
    Manifest,
    finding_regions,
    read_manifest,
    resolve,
    text_cell,
)
from cxrlib.data.sections import split_sentences
from cxrlib.metrics.grounding import FINDINGS
from cxrlib.metrics.labeler import LATERAL_OBSERVATIONS, label_reports, laterality_column
from cxrlib.model.explain import group_label, layer_groups, sentence_attention
from cxrlib.training.generate import load_run
from cxrlib.training.inputs import split_dataset

__all__ = [
    "ABLATION_FILE",
    "DEFAULT_MAX_STUDIES",
    "SUMMARY_COLUMNS",
    "TARGET_REGIONS",
    "AttentionGrounding",
    "StudyMasks",
    "ablation_attention",
    "attention_grounding",
    "attention_grounding_for_run",
    "attention_shares",
    "has_lung_masks",
    "named_findings",
    "read_study_masks",
    "sentence_captions",
    "sentence_shares",
    "summarise",
]

DEFAULT_MAX_STUDIES = 100
"""Studies the attention is read for, by default (one teacher-forced pass each)."""

TARGET_REGIONS: tuple[str, ...] = ("side_lung", "region")
"""The regions a sentence's attention is scored on, the ``target`` column (module
docstring)."""

SUMMARY_COLUMNS: tuple[str, ...] = (
    "layer_group",
    "target",
    "mean",
    "ci_low",
    "ci_high",
    "n_sentences",
    "n_studies",
    "chance",
)
"""Columns of ``attention_grounding.csv`` (after any grouping columns, e.g. ``mode``)."""

SENTENCE_COLUMNS: tuple[str, ...] = (
    "study_id",
    "image_id",
    "sentence_index",
    "sentence",
    "observations",
    "side",
    "layer_group",
    "image_share",
    "side_lung",
    "side_lung_chance",
    "region",
    "region_chance",
)
"""Columns of ``attention_sentences.csv``."""

REGION_OBSERVATIONS: tuple[str, ...] = (
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
)
"""Observations the phantom draws with a region (the others never have one)."""

SIDE_WORD_OBSERVATIONS: tuple[str, ...] = ("Fracture", "Pleural Other")
"""Sided findings the labeler gives no laterality for: the sentence's side words."""

DEVICE = "Support Devices"

_SIDE_WORD = re.compile(
    r"\b(left|right|bilateral(?:ly)?|both|bibasilar|bibasal|biapical)\b", re.IGNORECASE
)
_LUNG_COLUMNS = ("left_lung_mask_path", "right_lung_mask_path")
_SIDE_NAMES = {"left": "left lung", "right": "right lung", "bilateral": "both lungs"}


# --- what a sentence names --------------------------------------------------------------


def _word_side(word: str) -> str:
    word = word.lower()
    return word if word in ("left", "right") else "bilateral"


def _combine(sides: set[str]) -> str | None:
    if not sides:
        return None
    if "bilateral" in sides or {"left", "right"} <= sides:
        return "bilateral"
    return next(iter(sides))


Found = tuple[str, tuple[str, ...], str | None]
"""(sentence, named findings, side) of one sentence."""


def named_findings(
    sentence: str, labels: Mapping[str, object]
) -> tuple[tuple[str, ...], str | None]:
    """The findings one sentence names and the side it names.

    Parameters
    ----------
    sentence : str
        The sentence (its side words are read for fractures, pleural thickening and
        devices).
    labels : mapping
        The labeler's row for that sentence alone (:func:`label_report`): the 14 labels
        and the laterality columns.

    Returns
    -------
    (tuple of str, str or None)
        The findings labelled 1 or -1 (CheXpert order, No Finding excluded) and
        ``left``, ``right``, ``bilateral`` or None (module docstring, step 1).
    """
    named = tuple(obs for obs in FINDINGS if labels.get(obs) in (1.0, -1.0))
    sides: set[str] = set()
    words = [_word_side(m.group(1)) for m in _SIDE_WORD.finditer(sentence)]
    for obs in named:
        if obs in LATERAL_OBSERVATIONS:
            side = labels.get(laterality_column(obs))
            if side in ("left", "right", "bilateral"):
                sides.add(str(side))
        elif obs in SIDE_WORD_OBSERVATIONS:
            sides |= set(words)
        elif obs == DEVICE and words:
            sides.add(words[0])
    return named, _combine(sides)


def _sentence_findings(texts: Sequence[str]) -> list[list[Found]]:
    """Per text: (sentence, named findings, side) of each sentence, one labeler call."""
    per_text = [split_sentences(t) if t else [] for t in texts]
    flat = [s for sentences in per_text for s in sentences]
    labels = label_reports(flat).to_dict("records") if flat else []
    out, k = [], 0
    for sentences in per_text:
        found = []
        for s in sentences:
            found.append((s, *named_findings(s, labels[k])))
            k += 1
        out.append(found)
    return out


def _may_have_target(found: list[Found]) -> bool:
    regions = set(REGION_OBSERVATIONS)
    return any(side is not None or regions.intersection(named) for _, named, side in found)


# --- the masks ---------------------------------------------------------------------------


@dataclass
class StudyMasks:
    """One study's lungs (patient's sides) and drawn finding regions, bool (H, W)."""

    left_lung: np.ndarray
    right_lung: np.ndarray
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    has_regions: bool = True  # False: the manifest has no finding mask for this study

    def target_mask(self, target: str, named: Sequence[str], side: str | None):
        """The pixel mask of ``target`` for a sentence (None where it does not apply)."""
        if target == "side_lung":
            if side is None:
                return None
            return {
                "left": self.left_lung,
                "right": self.right_lung,
                "bilateral": self.left_lung | self.right_lung,
            }[side]
        drawn = [self.regions[obs] for obs in named if obs in self.regions]
        if not drawn:
            return None
        return np.logical_or.reduce(drawn)


def has_lung_masks(rows: pd.DataFrame) -> bool:
    """Whether every row has both lung mask paths (the attention grounding applies)."""
    return all(c in rows.columns for c in _LUNG_COLUMNS) and bool(
        all((rows[c].map(text_cell) != "").all() for c in _LUNG_COLUMNS)
    )


def read_study_masks(row: Mapping[str, object], root: str | os.PathLike) -> StudyMasks:
    """Read one manifest row's lung masks and finding regions (``finding_mask_path``).

    Raises
    ------
    CxrError
        One line naming the file: a missing lung mask path, a missing or unreadable
        file, masks of different sizes.
    """
    image_id = text_cell(row.get("image_id"))
    masks, paths = {}, {}
    for column in _LUNG_COLUMNS:
        cell = text_cell(row.get(column))
        if not cell:
            raise CxrError(f"image {image_id!r}: no {column} (the attention grounding needs it)")
        paths[column] = resolve(root, cell)
        masks[column] = load_mask(paths[column])
    shape = masks["left_lung_mask_path"].shape
    if masks["right_lung_mask_path"].shape != shape:
        got = masks["right_lung_mask_path"].shape
        raise CxrError(
            f"{paths['right_lung_mask_path']}: right lung mask is {got[1]}x{got[0]} px but "
            f"the left lung mask {paths['left_lung_mask_path']} is {shape[1]}x{shape[0]} px"
        )
    regions: dict[str, np.ndarray] = {}
    cell = text_cell(row.get(FINDING_MASK_COLUMN))
    if cell:
        path = resolve(root, cell)
        bits = read_finding_mask(path)
        if bits.shape != shape:
            raise CxrError(
                f"{path}: finding mask is {bits.shape[1]}x{bits.shape[0]} px but the lung "
                f"masks of image {image_id!r} are {shape[1]}x{shape[0]} px"
            )
        regions = finding_regions(bits)
    return StudyMasks(
        masks["left_lung_mask_path"], masks["right_lung_mask_path"], regions, bool(cell)
    )


def _grid_weights(mask: np.ndarray, grid: int) -> np.ndarray:
    """(grid * grid,) covered fraction of each patch, row-major, clipped to [0, 1]."""
    import torch

    w = downsample_to_grid(torch.from_numpy(np.ascontiguousarray(mask))[None], grid)[0]
    return np.clip(w.numpy().astype(np.float64).ravel(), 0.0, 1.0)


# --- the shares --------------------------------------------------------------------------


def attention_shares(attention: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Share of attention on a target: ``sum(a * w) / sum(a)`` over the last axis.

    Parameters
    ----------
    attention : array (..., P)
        Non-negative attention to the P patches (any total: the share is relative).
    weights : array (P,)
        The target's covered fraction of each patch, in [0, 1].

    Returns
    -------
    numpy.ndarray (...)
        In [0, 1]; NaN where the attention sums to 0.

    Examples
    --------
    >>> w = np.array([1.0, 0.5, 0.0, 0.0])
    >>> attention_shares(np.array([[2.0, 0, 0, 0], [1, 1, 1, 1]]), w).tolist()
    [1.0, 0.375]
    """
    a = np.asarray(attention, dtype=np.float64)
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0)
    if a.shape[-1] != w.shape[-1]:
        raise ValueError(f"attention has {a.shape[-1]} patches, the weights {w.shape[-1]}")
    total = a.sum(-1)
    hit = (a * w).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, hit / np.where(total > 0, total, 1.0), np.nan)
    return np.clip(share, 0.0, 1.0)


def sentence_shares(
    attention,
    masks: StudyMasks,
    findings: Sequence[Found] | None = None,
) -> pd.DataFrame:
    """Each target's share of every sentence and layer group of one study.

    Parameters
    ----------
    attention : cxrlib.model.explain.SentenceAttention
        What :func:`~cxrlib.model.explain.sentence_attention` gave for the study's text.
    masks : StudyMasks
        The study's masks (:func:`read_study_masks`).
    findings : list, optional
        (sentence, named findings, side) per sentence, as computed for the same text
        (default: labelled here).

    Returns
    -------
    DataFrame
        One row per sentence that has a target and layer group: the
        :data:`SENTENCE_COLUMNS` except ``study_id`` and ``image_id``.
    """
    if findings is None:
        findings = _sentence_findings([" ".join(attention.sentences)])[0]
    if [s for s, _, _ in findings] != list(attention.sentences):
        raise ValueError("findings and attention are of different sentences")
    grid = attention.maps.shape[-1]
    rows = []
    for s, (sentence, named, side) in enumerate(findings):
        weights = {}
        for target in TARGET_REGIONS:
            mask = masks.target_mask(target, named, side)
            weights[target] = None if mask is None else _grid_weights(mask, grid)
        if all(w is None for w in weights.values()):
            continue
        for g, layers in enumerate(attention.groups):
            a = attention.maps[s, g].reshape(-1)
            row = {
                "sentence_index": s,
                "sentence": sentence,
                "observations": ";".join(named),
                "side": side or "",
                "layer_group": group_label(layers),
                "image_share": float(a.sum()),
            }
            for target, w in weights.items():
                row[target] = math.nan if w is None else float(attention_shares(a, w))
                row[f"{target}_chance"] = math.nan if w is None else float(w.mean())
            rows.append(row)
    return pd.DataFrame(rows, columns=list(SENTENCE_COLUMNS[2:]))


def sentence_captions(shares: pd.DataFrame, n_sentences: int, groups: Sequence[str]) -> list:
    """Captions of the attention figure: ``captions[s][g]`` for sentence ``s`` and layer
    group ``g``, e.g. ``"left lung 0.62, region 0.31"`` ("" without a target).

    ``shares`` is :func:`sentence_shares` of the same attention; ``groups`` the layer
    group labels in the figure's column order.
    """
    out = [["" for _ in groups] for _ in range(n_sentences)]
    column = {g: k for k, g in enumerate(groups)}
    for r in shares.to_dict("records"):
        s, g = int(r["sentence_index"]), column.get(r["layer_group"])
        if s >= n_sentences or g is None:
            continue
        parts = []
        if not math.isnan(r["side_lung"]):
            parts.append(f"{_SIDE_NAMES[r['side']]} {r['side_lung']:.2f}")
        if not math.isnan(r["region"]):
            parts.append(f"region {r['region']:.2f}")
        out[s][g] = ", ".join(parts)
    return out


# --- the summary -------------------------------------------------------------------------


def summarise(
    sentences: pd.DataFrame,
    *,
    by: Sequence[str] = (),
    n_bootstrap: int = 1000,
    seed: int = 0,
    expected: Sequence[tuple] = (),
) -> pd.DataFrame:
    """Mean share per layer group and target, bootstrap interval over studies.

    Parameters
    ----------
    sentences : DataFrame
        :data:`SENTENCE_COLUMNS` rows (several runs may be pooled; their ``study_id``
        groups the resamples, so every run's sentences of a study are drawn together).
    by : sequence of str
        Further grouping columns first (e.g. ``("mode",)``).
    n_bootstrap, seed : int
        Resamples (0: no interval) and the generator seed.
    expected : sequence of tuples
        ``(*by values, layer group)`` that must have rows even without any sentence
        (appended, in this order, after the groups that have sentences).

    Returns
    -------
    DataFrame
        ``by`` columns, then :data:`SUMMARY_COLUMNS`; one row per group, layer group and
        target (``n_sentences`` 0 and NaN values where no sentence had the target).
    """
    keys = [*by, "layer_group"]
    parts = list(sentences.groupby(keys, sort=False)) if len(sentences) else []
    seen = {key if isinstance(key, tuple) else (key,) for key, _ in parts}
    empty = [
        {
            **dict(zip(keys, key, strict=True)),
            "target": target,
            **dict.fromkeys(("mean", "ci_low", "ci_high", "chance"), math.nan),
            "n_sentences": 0,
            "n_studies": 0,
        }
        for key in expected
        if tuple(key) not in seen
        for target in TARGET_REGIONS
    ]
    rows = []
    for key, part in parts:
        key = key if isinstance(key, tuple) else (key,)
        values = part[list(TARGET_REGIONS)].to_numpy(dtype=np.float64)
        chance = part[[f"{t}_chance" for t in TARGET_REGIONS]].to_numpy(dtype=np.float64)
        groups = part["study_id"].map(str).to_numpy()
        have = ~np.isnan(values)

        def metric(idx: np.ndarray, values=values) -> dict[str, float]:
            v = values[idx]
            ok = ~np.isnan(v)
            n = ok.sum(0)
            total = np.where(ok, v, 0.0).sum(0)
            return {t: total[k] / n[k] if n[k] else math.nan for k, t in enumerate(TARGET_REGIONS)}

        if n_bootstrap > 0:
            results = bootstrap_many(
                metric, len(part), n_resamples=n_bootstrap, seed=seed, groups=groups
            )
            bounds = {t: (results[t].ci_low, results[t].ci_high) for t in TARGET_REGIONS}
        else:
            bounds = dict.fromkeys(TARGET_REGIONS, (math.nan, math.nan))
        observed = metric(np.arange(len(part)))
        for k, target in enumerate(TARGET_REGIONS):
            n = int(have[:, k].sum())
            rows.append(
                {
                    **dict(zip(keys, key, strict=True)),
                    "target": target,
                    "mean": observed[target],
                    "ci_low": bounds[target][0],
                    "ci_high": bounds[target][1],
                    "n_sentences": n,
                    "n_studies": int(pd.unique(groups[have[:, k]]).size),
                    "chance": float(chance[have[:, k], k].mean()) if n else math.nan,
                }
            )
    return pd.DataFrame(rows + empty, columns=[*by, *SUMMARY_COLUMNS])


def _share_metric(values: np.ndarray, code: np.ndarray, n_studies: int):
    """``metric(idx) -> {target: mean share}`` of one run's sentences (``values``, one
    row per sentence, study ``code``) when the studies ``idx`` are drawn (with repeats)."""

    def metric(idx: np.ndarray) -> dict[str, float]:
        weight = np.bincount(idx, minlength=n_studies)[code].astype(float)
        ok = ~np.isnan(values)
        total = (np.where(ok, values, 0.0) * weight[:, None]).sum(0)
        n = (ok * weight[:, None]).sum(0)
        return {t: total[k] / n[k] if n[k] else math.nan for k, t in enumerate(TARGET_REGIONS)}

    return metric


def summarise_modes(
    sentences: pd.DataFrame,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    expected: Sequence[tuple[str, str]] = (),
) -> pd.DataFrame:
    """Per mode, layer group and target: the mean over the mode's runs (seeds) of each
    run's mean share, with the runs-and-studies interval
    (:meth:`cxrlib.base.stats.RunSamples.mean`: between-seed and test-set variance,
    studies resampled together across runs; clipped to [0, 1]).

    ``sentences`` holds :data:`SENTENCE_COLUMNS` plus ``mode`` and ``seed``; ``expected``
    lists ``(mode, layer group)`` pairs that must have rows without any sentence.
    Returns ``mode``, then :data:`SUMMARY_COLUMNS` (``n_sentences`` pooled over runs).
    """
    rows = []
    seen = set()
    for (mode, group), part in sentences.groupby(["mode", "layer_group"], sort=False):
        seen.add((mode, group))
        codes, studies = pd.factorize(part["study_id"].map(str))
        n_studies = len(studies)
        runs = []
        for _, run in part.assign(code=codes).groupby("seed", sort=True):
            values = run[list(TARGET_REGIONS)].to_numpy(dtype=np.float64)

            runs.append(_share_metric(values, run["code"].to_numpy(), n_studies))
        samples = resample_runs({mode: runs}, n_studies, n_resamples=max(n_bootstrap, 1), seed=seed)
        chance = part[[f"{t}_chance" for t in TARGET_REGIONS]].to_numpy(dtype=np.float64)
        have = ~np.isnan(part[list(TARGET_REGIONS)].to_numpy(dtype=np.float64))
        for k, target in enumerate(TARGET_REGIONS):
            r = samples.mean(mode, target, bounds=(0.0, 1.0))
            n = int(have[:, k].sum())
            rows.append(
                {
                    "mode": mode,
                    "layer_group": group,
                    "target": target,
                    "mean": r.value,
                    "ci_low": r.ci_low if n_bootstrap > 0 else math.nan,
                    "ci_high": r.ci_high if n_bootstrap > 0 else math.nan,
                    "n_sentences": n,
                    "n_studies": int(pd.unique(codes[have[:, k]]).size),
                    "chance": float(chance[have[:, k], k].mean()) if n else math.nan,
                }
            )
    empty = [
        {
            "mode": mode,
            "layer_group": group,
            "target": target,
            **dict.fromkeys(("mean", "ci_low", "ci_high", "chance"), math.nan),
            "n_sentences": 0,
            "n_studies": 0,
        }
        for mode, group in expected
        if (mode, group) not in seen
        for target in TARGET_REGIONS
    ]
    return pd.DataFrame(rows + empty, columns=["mode", *SUMMARY_COLUMNS])


@dataclass
class AttentionGrounding:
    """Per-sentence shares, their summary and how they were obtained.

    ``settings``: ``mode``, ``grid``, ``layer_groups``, ``max_studies``, ``n_studies``
    (rows given), ``n_eligible`` (studies whose text names a sided finding or one that
    can have a region), ``n_used`` (studies read), ``capped``, ``skipped`` (studies
    without model inputs or whose text is longer than the model reads), ``seconds``,
    ``n_bootstrap``, ``seed``, ``region_masks`` (whether finding masks were there).
    """

    sentences: pd.DataFrame
    summary: pd.DataFrame
    settings: dict[str, object]

    def note(self) -> str:
        """One line: what was measured, on how many studies, capped or not."""
        s = self.settings
        cap = (
            f", capped at max_studies={s['max_studies']}"
            if s["capped"]
            else (f" (max_studies={s['max_studies']})" if s["max_studies"] is not None else "")
        )
        regions = "" if s["region_masks"] else "; no finding masks: region target unavailable"
        return (
            f"attention grounding ({s['mode']} mode, {s['grid']}x{s['grid']} patches): "
            f"{s['n_used']} of {s['n_eligible']} eligible studies{cap}; "
            f"{len(self.sentences)} sentence rows; {s['seconds']:.1f} s{regions}"
        )

    def to_json(self) -> dict[str, object]:
        """Settings and summary rows, JSON-ready (NaN as None)."""
        rows = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in self.summary.to_dict("records")
        ]
        return {"settings": dict(self.settings), "summary": rows, "note": self.note()}

    def markdown(self) -> str:
        """The summary as a Markdown table with the note above it."""
        lines = [
            "## Attention grounding",
            "",
            self.note(),
            "",
            "| layer group | target | mean share | 95% CI | chance | sentences | studies |",
            "| --- | --- | ---: | --- | ---: | ---: | ---: |",
        ]
        for r in self.summary.to_dict("records"):
            lines.append(
                f"| {r['layer_group']} | {r['target']} | {_fmt(r['mean'])} | "
                f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | {_fmt(r['chance'])} | "
                f"{r['n_sentences']} | {r['n_studies']} |"
            )
        return "\n".join(lines) + "\n"

    def write(self, out: str | os.PathLike) -> list[Path]:
        """Write ``attention_grounding.csv`` and ``attention_sentences.csv`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for frame, name in (
            (self.summary, "attention_grounding.csv"),
            (self.sentences, "attention_sentences.csv"),
        ):
            written.append(
                write_atomic(
                    out / name,
                    lambda tmp, frame=frame: frame.to_csv(tmp, index=False, lineterminator="\n"),
                )
            )
        return written


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def attention_grounding(
    model,
    manifest: Manifest,
    generated: Sequence[str],
    inputs: Sequence[Mapping] | Callable[[Manifest], Sequence[Mapping]],
    *,
    max_studies: int | None = DEFAULT_MAX_STUDIES,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> AttentionGrounding:
    """Where the sentences naming a finding attend, against the drawn anatomy (module doc).

    Parameters
    ----------
    model : ReportModel
        The trained model that generated the texts.
    manifest : Manifest
        The studies' manifest rows (lung masks, ``finding_mask_path``), one per text;
        mask paths resolve against its root.
    generated : sequence of str
        The generated Findings, aligned with the rows.
    inputs : sequence of mappings, or callable
        The model inputs of each row (items of :class:`~cxrlib.data.dataset.ReportDataset`:
        ``image_features`` or ``pixel_values``, optional ``priors``, ``image_id``), aligned
        with the rows; or a function giving them for a manifest of rows (called once,
        with the selected rows only, so that only those are loaded). Items are matched by
        ``image_id`` when they have one; a row without an item is skipped and counted.
    max_studies : int or None
        Read at most this many studies (the first eligible ones); None: all.
    n_bootstrap, seed : int
        Bootstrap resamples over studies (0: no interval) and seed.

    Returns
    -------
    AttentionGrounding
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    rows = manifest.frame.reset_index(drop=True)
    generated = [text_cell(t) for t in generated]
    if len(rows) != len(generated):
        raise ValueError(f"{len(generated)} generated texts for {len(rows)} manifest rows")
    if max_studies is not None and max_studies < 1:
        raise ValueError(f"max_studies must be >= 1 (or None), got {max_studies}")
    grid = model.config.grid_size
    if grid * grid != model.num_patches:
        raise ValueError(f"model has {model.num_patches} patches, not a {grid}x{grid} grid")
    found = _sentence_findings(generated)
    eligible = [i for i, f in enumerate(found) if _may_have_target(f)]
    selected = eligible if max_studies is None else eligible[:max_studies]
    chosen = manifest.subset(rows.iloc[selected])
    items = inputs(chosen) if callable(inputs) else [inputs[i] for i in selected]
    by_id = {text_cell(item["image_id"]): item for item in items if "image_id" in item} or None
    if by_id is None and len(items) != len(selected):
        raise ValueError(f"{len(items)} model inputs for {len(selected)} selected rows")
    frames, skipped = [], 0
    for k, i in enumerate(tqdm(selected, desc="attention", unit="study", disable=not progress)):
        row = rows.iloc[i]
        item = by_id.get(text_cell(row["image_id"])) if by_id is not None else items[k]
        shares = _study_shares(model, row, item, generated[i], found[i], manifest.root)
        if shares is None:
            skipped += 1
        else:
            frames.append(shares)
    used = len(frames)
    sentences = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=list(SENTENCE_COLUMNS))
    )
    groups = layer_groups(model.num_decoder_layers)
    summary = summarise(
        sentences,
        n_bootstrap=n_bootstrap,
        seed=seed,
        expected=[(group_label(g),) for g in groups],
    )
    settings = {
        "mode": model.config.mode,
        "grid": grid,
        "layer_groups": [group_label(g) for g in groups],
        "max_studies": max_studies,
        "n_studies": len(rows),
        "n_eligible": len(eligible),
        "n_used": used,
        "capped": len(selected) < len(eligible),
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 2),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "region_masks": FINDING_MASK_COLUMN in rows.columns
        and bool((rows[FINDING_MASK_COLUMN].map(text_cell) != "").any()),
    }
    return AttentionGrounding(sentences, summary, settings)


def _study_shares(model, row, item, text: str, found, root) -> pd.DataFrame | None:
    """One study's sentence shares (:func:`sentence_shares`) with its ids; None when it
    has no usable model input or its text is longer than the model reads (skipped)."""
    if item is None or "error" in item:
        return None
    masks = read_study_masks(row, root)
    tensors = {key: value.to(model.device) for key, value in image_inputs([item]).items()}
    try:
        attention = sentence_attention(model, text, **tensors)
    except CxrError as err:  # longer than the model reads
        if str(err).startswith("text has"):
            return None
        raise
    shares = sentence_shares(attention, masks, found)
    shares.insert(0, "image_id", text_cell(row["image_id"]))
    shares.insert(0, "study_id", text_cell(row.get("study_id", row["image_id"])))
    return shares


def attention_grounding_for_run(
    run: str | os.PathLike,
    manifest: str | os.PathLike | pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    cache_dir: str | os.PathLike | None = None,
    max_studies: int | None = DEFAULT_MAX_STUDIES,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> AttentionGrounding:
    """:func:`attention_grounding` of a training run's generations.

    Parameters
    ----------
    run : path-like
        The training run (``cxr train --out``) that generated ``predictions``.
    manifest : path-like or Manifest
        The manifest (its CSV, or as :func:`~cxrlib.data.manifest.read_manifest` gives it).
    predictions : DataFrame
        ``image_id, generated`` (:func:`cxrlib.training.generate.generate_split`).
    cache_dir : path-like, optional
        Feature and prior caches (default: the run config's ``data.cache_dir``).

    Model inputs are computed as generation computes them (cached features, the run's
    priors), for the selected studies only.
    """
    config, model, _ = load_run(run, cache_dir)
    ref = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    by_id = {text_cell(i): k for k, i in enumerate(ref.frame["image_id"])}
    ids = [text_cell(i) for i in predictions["image_id"]]
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise CxrError(f"image_id {missing[0]!r} of the predictions is not in the manifest")
    rows = ref.subset(ref.frame.iloc[[by_id[i] for i in ids]].reset_index(drop=True))

    def inputs(chosen: Manifest) -> list[dict]:
        if len(chosen) == 0:
            return []
        dataset, _ = split_dataset(config, model, chosen, progress=False)
        return [dataset[k] for k in range(len(dataset))]

    return attention_grounding(
        model,
        rows,
        predictions["generated"].tolist(),
        inputs,
        max_studies=max_studies,
        n_bootstrap=n_bootstrap,
        seed=seed,
        progress=progress,
    )


ABLATION_FILE = "grounding_attention.csv"
"""The ablation's table of attention grounding per mode (:func:`ablation_attention`)."""


def ablation_attention(
    runs: Mapping[str, tuple[str, int, str | os.PathLike]],
    generations: Mapping[str, pd.DataFrame],
    ref: Manifest,
    folder: str | os.PathLike,
    *,
    max_studies: int | None = DEFAULT_MAX_STUDIES,
    n_bootstrap: int = 1000,
    progress: bool = False,
) -> dict[str, object] | None:
    """The attention grounding of every ablation run, pooled per mode.

    Parameters
    ----------
    runs : mapping
        Run name -> (mode, seed, run folder).
    generations : mapping
        Run name -> its ``image_id, generated`` table.
    ref : Manifest
        The manifest; without lung masks nothing is computed.
    folder : path-like
        The ablation folder: each run's two files go to ``evaluation/<run>/``, the
        per-mode table to :data:`ABLATION_FILE` (``mode``, then :data:`SUMMARY_COLUMNS`,
        then ``n_runs``, ``max_studies``, ``capped``; :func:`summarise_modes`: the mean
        over seeds with an interval counting the seeds' spread and the studies').

    Returns
    -------
    dict or None
        ``{"file", "max_studies", "runs": {name: settings}, "seconds_per_run"}`` for
        ``ablation.json``; None when the manifest has no lung masks.
    """
    folder = Path(folder)
    if not has_lung_masks(ref.frame):
        return None
    pooled, settings = [], {}
    for name, (mode, seed, run_dir) in runs.items():
        result = attention_grounding_for_run(
            run_dir,
            ref,
            generations[name],
            max_studies=max_studies,
            n_bootstrap=n_bootstrap,
            progress=progress,
        )
        result.write(folder / "evaluation" / name)
        settings[name] = {**result.settings, "note": result.note()}
        pooled.append(result.sentences.assign(mode=mode, seed=seed))
    sentences = pd.concat(pooled, ignore_index=True)
    modes = list(dict.fromkeys(r[0] for r in runs.values()))
    expected = [
        (m, g)
        for m in modes
        for name, r in runs.items()
        if r[0] == m
        for g in settings[name]["layer_groups"]
    ]
    table = summarise_modes(
        sentences, n_bootstrap=n_bootstrap, expected=list(dict.fromkeys(expected))
    )
    order = {m: i for i, m in enumerate(modes)}
    table = table.sort_values("mode", key=lambda c: c.map(order), kind="stable")
    table = table.reset_index(drop=True)
    n_runs = {m: sum(1 for r in runs.values() if r[0] == m) for m in modes}
    capped = {m: any(settings[n]["capped"] for n, r in runs.items() if r[0] == m) for m in n_runs}
    table = table.assign(
        n_runs=table["mode"].map(n_runs),
        max_studies=max_studies if max_studies is not None else "",
        capped=table["mode"].map(capped),
    )
    path = folder / ABLATION_FILE
    write_atomic(path, lambda tmp: table.to_csv(tmp, index=False, lineterminator="\n"))
    seconds = [s["seconds"] for s in settings.values()]
    return {
        "file": str(path),
        "max_studies": max_studies,
        "seconds_per_run": round(float(np.mean(seconds)), 2) if seconds else None,
        "runs": settings,
    }
