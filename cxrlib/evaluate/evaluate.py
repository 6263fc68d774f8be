"""``cxr evaluate``: every metric of generated Findings against a manifest, with intervals.

Inputs: a predictions table (``image_id``, ``generated``; one row per image) and a
manifest (:mod:`cxrlib.data.manifest`) whose ``findings`` are the references. Rows are
matched by ``image_id``; only the manifest rows of the chosen split are eligible.
Empty generated texts are allowed (they count as reports with nothing in them) and
counted. Reference labels come from the same labeler run on the reference text
(``ref_labels="labeler"``) or from the manifest's 14 label columns
(``ref_labels="manifest"``, e.g. the phantom's ground truth).

Metrics (flat keys, :data:`METRIC_KEYS`):

- ``clinical.<uncertain_as_negative|uncertain_as_positive>.<micro_14|macro_14|micro_5|
  macro_5>`` (:mod:`cxrlib.metrics.clinical`);
- ``lexical.bleu_1`` .. ``lexical.bleu_4``, ``lexical.meteor``, ``lexical.rouge_l``,
  ``lexical.cider`` (:mod:`cxrlib.metrics.lexical`, pycocoevalcap conventions);
- ``radgraph.simple`` (RG_E), ``radgraph.partial`` (RG_ER), ``radgraph.complete``
  (:mod:`cxrlib.metrics.radgraph`);
- ``grounding.<uncertain_as_negative|uncertain_as_positive>.<hallucination_rate|
  omission_rate|laterality_accuracy>`` (:mod:`cxrlib.metrics.grounding`), only with
  drawn ground truth: ``ref_labels="manifest"`` on a manifest with the phantom's
  ``*_side`` columns.

Every value has a 95 % percentile bootstrap interval over **studies** (all images of a
drawn study enter the resample; corpus metrics recomputed on each resample,
:mod:`cxrlib.base.stats`). A metric that cannot be computed here (METEOR without
Java, RadGraph without its weights) is listed under ``unavailable`` with the reason.

Outputs in ``DIR`` (:meth:`Evaluation.write`):

- ``metrics.json``::

      {"metrics": {"<key>": {"value": float, "ci_low": float|null, "ci_high": float|null,
                             "n": items, "n_studies": studies}},
       "unavailable": {"<key>": "reason"},
       "labeler": "cxrlib-rule-v3" | "chexbert",
       "reference_labels": "<labeler name>" | "manifest",
       "radgraph_model": "radgraph" | "radgraph-xl" | null,
       "conventions": {...definitions, one line each...},
       "bootstrap": {"n_resamples", "seed", "confidence", "method", "unit"},
       "counts": {"n", "n_studies", "empty_generated", "empty_reference",
                  "manifest_rows_without_prediction"},
       "inputs": {"pred", "ref", "split"},
       "provenance": {...}}

  Values are fractions in [0, 1] (CIDEr: 0..10); ``null`` where undefined.
- ``per_observation.csv``: ``observation, convention, precision, recall, f1, support,
  labeler, reference_labels, tp, fp, fn`` (14 observations x 2 conventions);
- ``labels_generated.csv``, ``labels_reference.csv``: ``image_id, study_id``, the 14
  labels (``1``, ``0``, ``-1``, blank) and ``labeler``;
- ``metrics.md``: the metrics as a Markdown table with n and intervals.

With a training run (``run=``, ``cxr evaluate --run RUN``) and a manifest with lung masks
(the phantom's, with its finding regions), the **attention grounding** too
(:mod:`cxrlib.evaluate.attention_grounding`): the share of each sentence's attention that
falls on the named side's lung and on the finding's drawn region, per layer group, with
intervals and chance levels; ``metrics.json`` gets ``attention_grounding`` (settings and
summary; null without a run), ``metrics.md`` its table, and ``DIR`` the files
``attention_grounding.csv`` and ``attention_sentences.csv``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.base.errors import CxrError
from cxrlib.base.io import write_atomic, write_json_atomic
from cxrlib.base.provenance import provenance
from cxrlib.base.stats import BootstrapResult, bootstrap_many
from cxrlib.data.adapters import iter_csv
from cxrlib.data.manifest import (
    CHEXPERT_LABELS,
    SPLITS,
    Manifest,
    format_label,
    read_manifest,
    text_cell,
)
from cxrlib.evaluate.attention_grounding import (
    DEFAULT_MAX_STUDIES,
    AttentionGrounding,
    attention_grounding_for_run,
    has_lung_masks,
)
from cxrlib.metrics.clinical import CLINICAL_KEYS, CONVENTIONS, FIVE, ClinicalData, get_labeler
from cxrlib.metrics.grounding import GROUNDING_KEYS, GroundingData, has_ground_truth_sides
from cxrlib.metrics.lexical import LEXICAL_KEYS, LexicalCorpus
from cxrlib.metrics.radgraph import (
    RADGRAPH_KEYS,
    RadGraphAnnotator,
    RadGraphScores,
    radgraph_scores,
    radgraph_unavailable_reason,
)

__all__ = [
    "CONVENTION_TEXT",
    "compare",
    "METRIC_KEYS",
    "REF_LABEL_SOURCES",
    "Evaluation",
    "evaluate_files",
    "evaluate_generations",
    "read_predictions",
]

METRIC_KEYS: tuple[str, ...] = (
    CLINICAL_KEYS + tuple(f"lexical.{k}" for k in LEXICAL_KEYS) + RADGRAPH_KEYS + GROUNDING_KEYS
)
"""Every metric key of ``metrics.json``, in report order."""

REF_LABEL_SOURCES: tuple[str, ...] = ("labeler", "manifest")

CONVENTION_TEXT: dict[str, str] = {
    "uncertain_as_negative": "label -1 (uncertain) counts as negative; positive iff 1",
    "uncertain_as_positive": "label -1 (uncertain) counts as positive; positive iff 1 or -1",
    "blank": "blank (not mentioned) and 0 are negative in both conventions",
    "per_observation": "P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN); 0 when 0/0",
    "micro": "TP, FP, FN pooled over the observations of the set, then F1",
    "macro": "unweighted mean of per-observation F1 over every observation of the set, "
    "observations without positives included (F1 0)",
    "set_14": "the 14 CheXpert observations (13 findings + No Finding)",
    "set_5": ", ".join(FIVE),
    "lexical": "pycocoevalcap conventions: PTB tokenisation (lower-case, punctuation "
    "removed), corpus BLEU with closest reference length, METEOR 1.5 aggregate, ROUGE-L "
    "(beta 1.2) mean over items, CIDEr-D (n=4, sigma=6, IDF from the references, x10)",
    "radgraph": "per-report F1 of entity sets (simple = RG_E: tokens+label; partial = "
    "RG_ER: + has a relation; complete: + each relation tuple), mean over reports; an "
    "empty report or one without entities scores 0",
    "bootstrap": "percentile interval over studies (all images of a drawn study), corpus "
    "metrics recomputed on each resample",
}


def _null(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def format_value(x: float | None) -> str:
    """A metric value for a Markdown table: 4 decimals, ``n/a`` for None or NaN."""
    return "n/a" if x is None or math.isnan(x) else f"{x:.4f}"


def conventions_markdown() -> list[str]:
    """The closing lines of every Markdown metrics table: what each convention means."""
    return ["", "Conventions:", ""] + [f"- {k}: {v}" for k, v in CONVENTION_TEXT.items()]


def bootstrap_settings(n_resamples: int, seed: int) -> dict[str, object]:
    """How the intervals were drawn, as every output records it."""
    return {
        "n_resamples": n_resamples,
        "seed": seed,
        "confidence": 0.95,
        "method": "percentile",
        "unit": "studies",
    }


def metrics_with_intervals(
    metric: Callable[[np.ndarray], Mapping[str, float]],
    n: int,
    *,
    n_bootstrap: int,
    seed: int,
    groups: np.ndarray,
    progress: bool,
) -> dict[str, BootstrapResult]:
    """Every metric on all ``n`` items with its 95 % percentile bootstrap interval over
    ``groups`` (studies); ``n_bootstrap`` 0 gives the values with NaN intervals."""
    if n_bootstrap > 0:
        return bootstrap_many(
            metric,
            n,
            n_resamples=n_bootstrap,
            seed=seed,
            groups=groups,
            progress=progress,
            desc="bootstrap",
        )
    n_studies = len(set(groups))
    return {
        k: BootstrapResult(v, math.nan, math.nan, n, 0, seed, n_groups=n_studies)
        for k, v in metric(np.arange(n)).items()
    }


def metrics_json(metrics: Mapping[str, BootstrapResult]) -> dict[str, dict[str, object]]:
    """Metrics as written to JSON: value, 95 % interval (None for NaN), n and studies."""
    return {
        key: {
            "value": _null(r.value),
            "ci_low": _null(r.ci_low),
            "ci_high": _null(r.ci_high),
            "n": r.n,
            "n_studies": r.n_groups,
        }
        for key, r in metrics.items()
    }


@dataclass
class Evaluation:
    """Every metric of one evaluation, its intervals, labels and settings.

    Attributes
    ----------
    metrics : dict of str to BootstrapResult
        By flat key (:data:`METRIC_KEYS` minus the unavailable ones).
    unavailable : dict of str to str
        Key -> why it could not be computed.
    per_observation : DataFrame
        See the module docstring (``per_observation.csv``).
    labels_generated, labels_reference : DataFrame
        ``image_id, study_id`` + 14 labels (floats) + ``labeler``.
    counts : dict
        ``n``, ``n_studies``, ``empty_generated``, ``empty_reference``,
        ``manifest_rows_without_prediction``.
    """

    metrics: dict[str, BootstrapResult]
    unavailable: dict[str, str]
    per_observation: pd.DataFrame
    labels_generated: pd.DataFrame
    labels_reference: pd.DataFrame
    labeler: str
    reference_labels: str
    radgraph_model: str | None
    counts: dict[str, int]
    bootstrap: dict[str, object]
    inputs: dict[str, object] = field(default_factory=dict)
    attention: AttentionGrounding | None = None

    def value(self, key: str) -> float:
        """The observed value of one metric (KeyError when unavailable)."""
        return self.metrics[key].value

    def to_json(self) -> dict[str, object]:
        """The ``metrics.json`` content (module docstring), provenance included."""
        return {
            "metrics": metrics_json(self.metrics),
            "unavailable": dict(self.unavailable),
            "labeler": self.labeler,
            "reference_labels": self.reference_labels,
            "radgraph_model": self.radgraph_model,
            "conventions": dict(CONVENTION_TEXT),
            "bootstrap": dict(self.bootstrap),
            "counts": dict(self.counts),
            "inputs": dict(self.inputs),
            "attention_grounding": None if self.attention is None else self.attention.to_json(),
            "provenance": provenance(),
        }

    def markdown(self) -> str:
        """The metrics as a Markdown table with n and 95 % intervals."""

        c = self.counts
        lines = [
            "# Evaluation",
            "",
            f"- items (images): {c['n']}, studies: {c['n_studies']}, empty generated: "
            f"{c['empty_generated']}, empty references: {c['empty_reference']}",
            f"- labeler: {self.labeler}; reference labels: {self.reference_labels}",
            f"- RadGraph model: {self.radgraph_model or 'n/a'}",
            f"- intervals: {self.bootstrap['method']} bootstrap over {self.bootstrap['unit']}, "
            f"{self.bootstrap['n_resamples']} resamples, seed {self.bootstrap['seed']}",
            "",
            "| metric | value | 95% CI | n |",
            "| --- | ---: | --- | ---: |",
        ]
        for key in METRIC_KEYS:
            if key in self.metrics:
                r = self.metrics[key]
                ci = f"[{format_value(r.ci_low)}, {format_value(r.ci_high)}]"
                lines.append(f"| {key} | {format_value(r.value)} | {ci} | {r.n} |")
            elif key in self.unavailable:
                lines.append(f"| {key} | unavailable | {self.unavailable[key]} | |")
        if self.attention is not None:
            lines += ["", *self.attention.markdown().rstrip("\n").splitlines()]
        return "\n".join(lines + conventions_markdown()) + "\n"

    def write(self, out: str | os.PathLike) -> list[Path]:
        """Write the five outputs (and the attention grounding's two) into folder ``out``
        (created); returns their paths."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = [write_json_atomic(out / "metrics.json", self.to_json())]

        def csv(frame: pd.DataFrame, name: str) -> Path:
            return write_atomic(
                out / name, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n")
            )

        written.append(csv(self.per_observation, "per_observation.csv"))
        for frame, name in (
            (self.labels_generated, "labels_generated.csv"),
            (self.labels_reference, "labels_reference.csv"),
        ):
            shown = frame.copy()
            for obs in CHEXPERT_LABELS:
                shown[obs] = [format_label(v) for v in shown[obs]]
            written.append(csv(shown, name))
        text = self.markdown()
        written.append(write_atomic(out / "metrics.md", lambda tmp: tmp.write_text(text)))
        if self.attention is not None:
            written += self.attention.write(out)
        return written


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read a predictions CSV: ``image_id`` and ``generated`` columns, ids unique.

    Returns
    -------
    DataFrame
        ``image_id``, ``generated`` (strings; empty allowed) and ``line`` (the CSV line
        of each row, for messages); other columns are kept.

    Raises
    ------
    CxrError
        One line naming the file (and line): missing file, missing column, empty
        ``image_id``, duplicate ``image_id``.
    """
    path = Path(path)
    rows = []
    for line, row in iter_csv(path, ("image_id", "generated")):
        row = dict(row)
        row["line"] = line
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else ["image_id", "generated", "line"])
    frame = _check_predictions(frame, str(path))
    return frame


def _check_predictions(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    missing = [c for c in ("image_id", "generated") if c not in frame.columns]
    if missing:
        raise CxrError(f"{name}: missing column(s): {', '.join(missing)}")
    frame = frame.reset_index(drop=True).copy()
    if "line" not in frame.columns:
        frame["line"] = np.arange(len(frame)) + 2
    frame["image_id"] = frame["image_id"].map(text_cell)
    frame["generated"] = frame["generated"].map(text_cell)
    if len(frame) == 0:
        raise CxrError(f"{name}: no prediction rows")
    empty = frame.index[frame["image_id"] == ""]
    if len(empty):
        raise CxrError(f"{name}:{frame.at[empty[0], 'line']}: empty image_id")
    dup = frame["image_id"].duplicated(keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        image_id = frame.at[i, "image_id"]
        first = frame.loc[frame["image_id"] == image_id, "line"].iloc[0]
        raise CxrError(
            f"{name}:{frame.at[i, 'line']}: duplicate image_id {image_id!r} "
            f"(first on line {first}; {int(dup.sum())} duplicate row(s) in all)"
        )
    return frame


def _align(
    pred: pd.DataFrame, ref: pd.DataFrame, split: str | None, pred_name: str, ref_name: str
) -> tuple[pd.DataFrame, int]:
    """Manifest rows of the predictions, in prediction order; also the unmatched count."""
    ref = ref.reset_index(drop=True).copy()
    ref["image_id"] = ref["image_id"].map(text_cell)
    by_id = {image_id: i for i, image_id in enumerate(ref["image_id"])}
    absent = [
        (line, i) for line, i in zip(pred["line"], pred["image_id"], strict=True) if i not in by_id
    ]
    if absent:
        line, image_id = absent[0]
        more = f" ({len(absent)} such rows)" if len(absent) > 1 else ""
        raise CxrError(f"{pred_name}:{line}: image_id {image_id!r} is not in {ref_name}{more}")
    rows = ref.iloc[[by_id[i] for i in pred["image_id"]]].reset_index(drop=True)
    if split is not None:
        wrong = rows["split"].map(text_cell) != split
        if wrong.any():
            k = int(np.flatnonzero(wrong.to_numpy())[0])
            raise CxrError(
                f"{pred_name}:{pred['line'].iloc[k]}: image_id {pred['image_id'].iloc[k]!r} "
                f"is in split {rows['split'].iloc[k]!r} of {ref_name}, not {split!r} "
                f"({int(wrong.sum())} such row(s); --split all evaluates every split)"
            )
        eligible = int((ref["split"].map(text_cell) == split).sum())
    else:
        eligible = len(ref)
    return rows, eligible - len(rows)


def _label_frame(ids: pd.DataFrame, labels: pd.DataFrame, labeler: str) -> pd.DataFrame:
    frame = pd.DataFrame(
        {"image_id": ids["image_id"].to_numpy(), "study_id": ids["study_id"].map(text_cell)}
    )
    for obs in CHEXPERT_LABELS:
        frame[obs] = labels[obs].to_numpy(dtype=float)
    frame["labeler"] = labeler
    return frame


def evaluate_generations(
    pred_df: pd.DataFrame,
    ref: Manifest,
    *,
    labeler: str = "rule",
    ref_labels: str = "labeler",
    split: str | None = "test",
    n_bootstrap: int = 1000,
    seed: int = 0,
    chexbert: str | os.PathLike | None = None,
    radgraph_model: str = "radgraph",
    radgraph_annotations: tuple[list, list] | None = None,
    meteor: bool = True,
    progress: bool = True,
    out: str | os.PathLike | None = None,
    pred_name: str = "predictions",
    ref_name: str = "manifest",
    run: str | os.PathLike | None = None,
    attention_studies: int | None = DEFAULT_MAX_STUDIES,
) -> Evaluation:
    """Evaluate generated Findings against a manifest's references (the library call).

    Parameters
    ----------
    pred_df : DataFrame
        ``image_id`` and ``generated`` columns (a ``line`` column, if present, names
        rows in messages; else row ``i`` is line ``i + 2``).
    ref : Manifest
        The references (:func:`~cxrlib.data.manifest.read_manifest`): ``image_id``,
        ``study_id``, ``split``, ``findings`` and the 14 label columns.
    labeler : str
        ``rule`` or ``chexbert`` (:func:`~cxrlib.metrics.clinical.get_labeler`).
    ref_labels : str
        ``labeler`` (label the reference text) or ``manifest`` (its label columns).
    split : str or None
        Only this split's rows may be evaluated (None: any).
    n_bootstrap, seed : int
        Bootstrap resamples (0: no intervals) and seed.
    chexbert : path-like, optional
        CheXbert checkpoint for ``labeler="chexbert"``.
    radgraph_model : str
        ``radgraph`` or ``radgraph-xl`` (used when the package and weights are here).
    radgraph_annotations : (list, list), optional
        Precomputed (generated, reference) RadGraph annotations, one per row (None for
        an empty text); model recorded as ``given``.
    meteor : bool
        Compute METEOR when Java and the jar are available.
    progress : bool
        Progress bar for the bootstrap.
    out : path-like, optional
        Also write the outputs into this folder (:meth:`Evaluation.write`).
    run : path-like, optional
        The training run that generated the predictions: also measure the attention
        grounding (:mod:`cxrlib.evaluate.attention_grounding`; needs lung mask paths in
        ``ref``, resolved against its root).
    attention_studies : int or None
        At most this many studies for the attention grounding (None: all).

    Returns
    -------
    Evaluation

    Raises
    ------
    CxrError
        Bad predictions (missing column, duplicate or unknown ids, wrong split),
        unknown labeler or label source, CheXbert not available, no manifest labels;
        with ``run``: no lung masks, a missing or wrongly sized mask file.
    """
    ref_df = ref.frame
    _check_options(ref_labels, split, n_bootstrap)
    _check_references(ref_df, ref_name)
    pred = _check_predictions(pred_df, pred_name)
    rows, unmatched = _align(pred, ref_df, split, pred_name, ref_name)
    if run is not None and not has_lung_masks(rows):
        raise CxrError(f"{ref_name}: {_NO_LUNG_MASKS}")
    generated = pred["generated"].tolist()
    references = rows["findings"].map(text_cell).tolist()

    label_fn, labeler_name = get_labeler(labeler, chexbert=chexbert)
    gen_labels = label_fn(generated).reset_index(drop=True)
    ref_label_values, ref_source = (
        (_manifest_labels(rows, ref_name), "manifest")
        if ref_labels == "manifest"
        else (label_fn(references).reset_index(drop=True), labeler_name)
    )
    clinical = ClinicalData.build(
        gen_labels, ref_label_values, labeler=labeler_name, reference_source=ref_source
    )
    unavailable: dict[str, str] = {}
    radgraph = _radgraph(radgraph_annotations, radgraph_model, generated, references, unavailable)
    grounding_data = _grounding(ref_labels, rows, gen_labels, unavailable)
    groups = rows["study_id"].map(text_cell).to_numpy()
    scorers = (clinical, radgraph, grounding_data)
    options = {"n_bootstrap": n_bootstrap, "seed": seed, "groups": groups, "progress": progress}
    results = _scores_with_intervals(scorers, generated, references, meteor, unavailable, options)
    evaluation = Evaluation(
        metrics={k: results[k] for k in METRIC_KEYS if k in results},
        unavailable={k: unavailable[k] for k in METRIC_KEYS if k in unavailable},
        per_observation=_per_observation(clinical),
        labels_generated=_label_frame(rows, gen_labels, labeler_name),
        labels_reference=_label_frame(rows, ref_label_values, ref_source),
        labeler=labeler_name,
        reference_labels=ref_source,
        radgraph_model=None if radgraph is None else radgraph.model,
        counts={
            "n": len(pred),
            "n_studies": len(set(groups)),
            "empty_generated": sum(1 for t in generated if not t),
            "empty_reference": sum(1 for t in references if not t),
            "manifest_rows_without_prediction": unmatched,
        },
        bootstrap=bootstrap_settings(n_bootstrap, seed),
        inputs={"pred": pred_name, "ref": ref_name, "split": split or "all"},
    )
    if run is not None:
        evaluation.attention = attention_grounding_for_run(
            run,
            ref,
            pred[["image_id", "generated"]],
            max_studies=attention_studies,
            n_bootstrap=n_bootstrap,
            seed=seed,
            progress=progress,
        )
        evaluation.inputs["run"] = str(run)
    if out is not None:
        evaluation.write(out)
    return evaluation


_NO_LUNG_MASKS = (
    "the attention grounding (--run) needs left_lung_mask_path and right_lung_mask_path "
    "in every evaluated row (the phantom's manifest has them)"
)


def _check_options(ref_labels: str, split: str | None, n_bootstrap: int) -> None:
    if ref_labels not in REF_LABEL_SOURCES:
        raise CxrError(
            f"ref_labels must be one of {', '.join(REF_LABEL_SOURCES)}, got {ref_labels!r}"
        )
    if split is not None and split not in SPLITS:
        raise CxrError(f"split must be one of {', '.join(SPLITS)} (or None), got {split!r}")
    if n_bootstrap < 0:
        raise CxrError(f"n_bootstrap must be >= 0, got {n_bootstrap}")


def _check_references(ref_df: pd.DataFrame, ref_name: str) -> None:
    missing = [c for c in ("image_id", "study_id", "split", "findings") if c not in ref_df.columns]
    if missing:
        raise CxrError(f"{ref_name}: missing column(s): {', '.join(missing)}")


def _manifest_labels(rows: pd.DataFrame, ref_name: str) -> pd.DataFrame:
    """The evaluated rows' 14 label columns as numbers (``--ref-labels manifest``)."""
    missing_labels = [c for c in CHEXPERT_LABELS if c not in rows.columns]
    if missing_labels:
        raise CxrError(f"{ref_name}: no label column(s) {', '.join(missing_labels)}")
    values = rows[list(CHEXPERT_LABELS)].apply(pd.to_numeric, errors="coerce")
    if values.isna().all().all():
        raise CxrError(
            f"{ref_name}: every label of the evaluated rows is blank; "
            "use reference labels from the labeler (--ref-labels labeler)"
        )
    return values


def _grounding(
    ref_labels: str, rows: pd.DataFrame, gen_labels: pd.DataFrame, unavailable: dict[str, str]
) -> GroundingData | None:
    """The finding-side grounding data when drawn ground truth is here (manifest labels
    and the phantom's ``*_side`` columns), else None with the reason in ``unavailable``."""
    if ref_labels == "manifest" and has_ground_truth_sides(rows):
        return GroundingData.build(gen_labels, rows)
    why = (
        "needs drawn ground truth: manifest labels (--ref-labels manifest) and the "
        "phantom's *_side columns"
    )
    unavailable.update(dict.fromkeys(GROUNDING_KEYS, why))
    return None


def _radgraph(
    annotations: tuple[list, list] | None,
    model: str,
    generated: list[str],
    references: list[str],
    unavailable: dict[str, str],
) -> RadGraphScores | None:
    """RadGraph scores from given annotations or the installed model, else None with the
    reason recorded in ``unavailable``."""
    if annotations is not None:
        return radgraph_scores(*annotations, model="given")
    reason = radgraph_unavailable_reason(model)
    if reason is not None:
        unavailable.update(dict.fromkeys(RADGRAPH_KEYS, reason))
        return None
    annotator = RadGraphAnnotator(model)
    return radgraph_scores(annotator(generated), annotator(references), model=model)


def _scores_with_intervals(
    scorers: tuple,
    generated: list[str],
    references: list[str],
    meteor: bool,
    unavailable: dict[str, str],
    options: dict,
) -> dict:
    """Every metric with its study-level bootstrap interval (:func:`metrics_with_intervals`
    with ``options``): clinical, lexical, and RadGraph / grounding when not None."""
    clinical, radgraph, grounding_data = scorers
    with LexicalCorpus.build(generated, references, meteor=meteor) as lexical:
        if lexical.meteor_reason is not None:
            unavailable["lexical.meteor"] = lexical.meteor_reason

        def metric(idx: np.ndarray) -> Mapping[str, float]:
            values = dict(clinical.scores(idx))
            values.update({f"lexical.{k}": v for k, v in lexical.scores(idx).items()})
            if radgraph is not None:
                values.update(radgraph.scores(idx))
            if grounding_data is not None:
                values.update(grounding_data.scores(idx))
            return values

        return metrics_with_intervals(metric, len(generated), **options)


def _per_observation(clinical: ClinicalData) -> pd.DataFrame:
    table = clinical.table()
    first = ["observation", "convention", "precision", "recall", "f1", "support", "labeler"]
    rest = [c for c in table.columns if c not in first]
    table = table[first + rest]
    order = {c: i for i, c in enumerate(CONVENTIONS)}
    return table.sort_values("convention", key=lambda s: s.map(order), kind="stable").reset_index(
        drop=True
    )


def evaluate_files(
    pred: str | os.PathLike,
    ref: str | os.PathLike,
    out: str | os.PathLike | None,
    **options: object,
) -> Evaluation:
    """:func:`evaluate_generations` on a predictions CSV and a manifest CSV.

    The manifest is read with :func:`~cxrlib.data.manifest.read_manifest` (image files
    not checked); its problems become one ``CxrError`` line.
    """
    pred, ref = Path(pred), Path(ref)
    if not pred.is_file():
        raise CxrError(f"--pred {pred}: file does not exist")
    if not ref.is_file():
        raise CxrError(f"--ref {ref}: file does not exist")
    predictions = read_predictions(pred)
    try:
        manifest = read_manifest(ref, check_files=False)
    except CxrError as err:
        problems = getattr(err, "problems", None) or [str(err)]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CxrError(f"invalid --ref manifest: {problems[0]}{more}") from None
    return evaluate_generations(
        predictions, manifest, out=out, pred_name=str(pred), ref_name=str(ref), **options
    )


HEADLINE_KEYS: tuple[str, ...] = (
    "clinical.uncertain_as_negative.micro_14",
    "clinical.uncertain_as_negative.macro_14",
    "clinical.uncertain_as_positive.micro_14",
    "clinical.uncertain_as_negative.micro_5",
    "lexical.bleu_4",
    "lexical.rouge_l",
    "lexical.cider",
    "grounding.uncertain_as_negative.hallucination_rate",
    "grounding.uncertain_as_negative.omission_rate",
    "grounding.uncertain_as_negative.laterality_accuracy",
)
"""The metrics the notebooks' summary tables show (any key of :data:`METRIC_KEYS` works)."""


def evaluate_systems(
    systems: Mapping[str, pd.DataFrame],
    ref: Manifest,
    folders: Mapping[str, str | os.PathLike] | None = None,
    **options,
) -> dict[str, Evaluation]:
    """:func:`evaluate_generations` of every system's generations (name -> frame) against
    the same references with the same ``options``, each written to ``folders[name]``
    when given: systems compared on equal terms (:func:`compare`)."""
    return {
        name: evaluate_generations(
            frame, ref, out=None if folders is None else folders[name], **options
        )
        for name, frame in systems.items()
    }


def compare(evaluations: Mapping[str, Evaluation], keys: tuple[str, ...] = HEADLINE_KEYS):
    """One row per system and metric: ``system, metric, value, ci_low, ci_high, n``.

    Metrics a system could not compute appear with ``value`` NaN and the reason in
    ``unavailable``; ``n`` counts the studies each value was computed over.
    """
    rows = []
    for system, ev in evaluations.items():
        for key in keys:
            r = ev.metrics.get(key)
            rows.append(
                {
                    "system": system,
                    "metric": key,
                    "value": math.nan if r is None else r.value,
                    "ci_low": math.nan if r is None else r.ci_low,
                    "ci_high": math.nan if r is None else r.ci_high,
                    "n": ev.counts["n_studies"],
                    "unavailable": ev.unavailable.get(key, ""),
                }
            )
    return pd.DataFrame(rows)


def format_compare(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """:func:`compare` as a systems x metrics table of ``value [ci_low, ci_high]``."""

    def cell(r) -> str:
        if math.isnan(r["value"]):
            return "n/a"
        if math.isnan(r["ci_low"]):
            return f"{r['value']:.{digits}f}"
        return f"{r['value']:.{digits}f} [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]"

    t = table.assign(cell=table.apply(cell, axis=1))
    wide = t.pivot(index="metric", columns="system", values="cell")
    wide = wide.loc[
        [k for k in dict.fromkeys(table["metric"])], list(dict.fromkeys(table["system"]))
    ]
    n = table.groupby("system", sort=False)["n"].first()
    wide.columns = [f"{s} (n={n[s]})" for s in wide.columns]
    return wide
