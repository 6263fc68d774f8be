"""Agreement of ``cxrlib-rule-v3`` with the manual MeSH annotations of IU X-ray reports.

The IU X-ray release (``NLMCXR_reports.tgz``; Demner-Fushman et al., JAMIA 2016) gives
every report manual MeSH ``major`` terms such as ``Pleural Effusion/right/small``,
``Opacity/lung/base/left`` or ``normal``. :data:`MESH_RULES` maps them to CheXpert
observations; a mapped term is **positive ground truth**, and an annotated report
without one is negative for that observation. The labeler reads FINDINGS and
IMPRESSION (joined by a blank line, so each ends its sentences) and a label of 1 **or
-1** counts as positive (uncertain as positive; the "uncertain as negative" F1 is
given too). ``No Finding`` is compared with the term ``normal`` ("normal studies").
Precision, recall and F1 are 0 where their denominator is 0, as in clinical F1
(:func:`cxrlib.metrics.rates.precision_recall_f1`).

Reports are split by their number: **odd = development** (the only ones the lexicon
was tuned on), **even = held-out** (measured, never tuned on). Reports without MeSH
annotation (``No Indexing`` or none) and reports with empty FINDINGS and IMPRESSION are
left out and counted.

The written tables contain numbers and report numbers only, never report text (the
release is CC BY-NC-ND 4.0). ``docs/labeler.md`` explains each mapping choice and
holds the measured tables; ``cxr label iu-validate`` regenerates them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxrlib.base.errors import CxrError
from cxrlib.base.io import write_atomic
from cxrlib.data.adapters import collapse_whitespace
from cxrlib.data.iu_xray import iter_reports
from cxrlib.metrics.labeler import (
    LABELER_NAME,
    LATERAL_OBSERVATIONS,
    Labeler,
    default_labeler,
    laterality_column,
)
from cxrlib.metrics.rates import precision_recall_f1

SHARED_REPORTS = (
    Path(__file__).resolve().parents[2].parent / "shared/data/iu-xray/NLMCXR_reports.tgz"
)
"""Where the IU X-ray reports lie beside a checkout, when they do (``../shared``)."""

MESH_RULES: tuple[tuple[str, frozenset[str], tuple[str, ...]], ...] = (
    # (MeSH heading, qualifiers of which one is required (empty: none), observations)
    ("normal", frozenset(), ("No Finding",)),
    ("Cardiomegaly", frozenset(), ("Cardiomegaly",)),
    ("Cardiac Shadow", frozenset({"enlarged"}), ("Cardiomegaly",)),
    (
        "Mediastinum",
        frozenset({"enlarged", "widened", "prominent"}),
        ("Enlarged Cardiomediastinum",),
    ),
    ("Opacity", frozenset(), ("Lung Opacity",)),
    ("Opacity", frozenset({"round"}), ("Lung Lesion",)),
    ("Infiltrate", frozenset(), ("Lung Opacity",)),
    ("Airspace Disease", frozenset(), ("Lung Opacity",)),
    ("Density", frozenset(), ("Lung Opacity",)),
    ("Density", frozenset({"round"}), ("Lung Lesion",)),
    ("Nodule", frozenset(), ("Lung Lesion",)),
    ("Mass", frozenset(), ("Lung Lesion",)),
    ("Pulmonary Edema", frozenset(), ("Edema",)),
    ("Pulmonary Congestion", frozenset(), ("Edema",)),
    ("Heart Failure", frozenset(), ("Edema",)),
    ("Consolidation", frozenset(), ("Consolidation",)),
    ("Pneumonia", frozenset(), ("Pneumonia",)),
    ("Pulmonary Atelectasis", frozenset(), ("Atelectasis",)),
    ("Pneumothorax", frozenset(), ("Pneumothorax",)),
    ("Hydropneumothorax", frozenset(), ("Pneumothorax", "Pleural Effusion")),
    ("Hemopneumothorax", frozenset(), ("Pneumothorax", "Pleural Effusion")),
    ("Pleural Effusion", frozenset(), ("Pleural Effusion",)),
    ("Thickening", frozenset({"pleura"}), ("Pleural Other",)),
    ("Pleura", frozenset(), ("Pleural Other",)),
    ("Cicatrix", frozenset({"pleura"}), ("Pleural Other",)),
    ("Calcinosis", frozenset({"pleura"}), ("Pleural Other",)),
    ("Fractures, Bone", frozenset(), ("Fracture",)),
    ("Catheters, Indwelling", frozenset(), ("Support Devices",)),
    ("Implanted Medical Device", frozenset(), ("Support Devices",)),
    ("Medical Device", frozenset(), ("Support Devices",)),
    ("Tube, Inserted", frozenset(), ("Support Devices",)),
    ("Stents", frozenset(), ("Support Devices",)),
    ("Surgical Instruments", frozenset(), ("Support Devices",)),
)
"""MeSH ``major`` term -> CheXpert observations. A term ``Heading/q1/q2/...`` maps when
its heading matches and, where qualifiers are listed, one of them is among ``q1...``.
Every choice is explained in ``docs/labeler.md``."""

MAPPED_OBSERVATIONS: tuple[str, ...] = (
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Fracture",
    "Support Devices",
)
"""Observations with an equivalent MeSH term: the macro F1 averages these. ``No
Finding`` (``normal``) is reported apart; Enlarged Cardiomediastinum and Pleural Other
have only partial MeSH counterparts and are reported but not averaged."""

PARTIAL_OBSERVATIONS: tuple[str, ...] = ("Enlarged Cardiomediastinum", "Pleural Other")
NO_MAPPED_FINDING = "No Finding (no mapped MeSH finding)"
"""A second ground truth for ``No Finding``: no MeSH term maps to an observation other
than Support Devices (closer to CheXpert's definition than the term ``normal``, which
also excludes findings outside the 14 observations, e.g. a calcified granuloma)."""
REPORTED_OBSERVATIONS: tuple[str, ...] = (
    ("No Finding",) + MAPPED_OBSERVATIONS + PARTIAL_OBSERVATIONS
)
UNANNOTATED = ("No Indexing",)
SIDES = ("left", "right", "bilateral")
F1_GOALS = {"Cardiomegaly": 0.90, "Pleural Effusion": 0.90, "Pneumothorax": 0.90, "macro": 0.80}
"""F1 goals on the held-out (even) reports: per observation, macro over the mapped."""


def mesh_observations(mesh_major: tuple[str, ...] | list[str]) -> set[str]:
    """CheXpert observations that a report's MeSH ``major`` terms state (:data:`MESH_RULES`)."""
    found: set[str] = set()
    for term in mesh_major:
        parts = [p.strip() for p in term.split("/")]
        heading, qualifiers = parts[0], {p.lower() for p in parts[1:]}
        for rule_heading, needed, observations in MESH_RULES:
            if heading == rule_heading and (not needed or needed & qualifiers):
                found.update(observations)
    return found


def mesh_sides(mesh_major: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Side per lateral observation from the MeSH qualifiers (left + right = bilateral)."""
    sides: dict[str, set[str]] = {}
    for term in mesh_major:
        parts = [p.strip().lower() for p in term.split("/")]
        stated = {p for p in parts[1:] if p in SIDES}
        if not stated:
            continue
        for obs in mesh_observations([term]) & set(LATERAL_OBSERVATIONS):
            sides.setdefault(obs, set()).update(stated)
    out = {}
    for obs, s in sides.items():
        out[obs] = "bilateral" if "bilateral" in s or {"left", "right"} <= s else next(iter(s))
    return out


def report_text(findings: str, impression: str) -> str:
    """FINDINGS and IMPRESSION joined by a blank line (each whitespace-collapsed)."""
    parts = (collapse_whitespace(findings), collapse_whitespace(impression))
    return "\n\n".join(p for p in parts if p)


@dataclass
class Validation:
    """Result of :func:`validate_iu`.

    Attributes
    ----------
    reports : DataFrame
        One row per evaluated report: ``number``, ``half`` (odd/even), ``mesh_major``,
        ground truth ``gt <obs>`` (bool), the labels and lateralities, ``gt side <obs>``.
    metrics : DataFrame
        One row per half and observation (:func:`metrics_table`).
    laterality : DataFrame
        Side agreement per half and lateral observation (:func:`laterality_table`).
    excluded : dict
        Reports left out, per reason.
    """

    reports: pd.DataFrame
    metrics: pd.DataFrame
    laterality: pd.DataFrame
    excluded: dict[str, int] = field(default_factory=dict)


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1 as floats; 0 where a denominator is 0 (``metrics.rates``)."""
    p, r, f = precision_recall_f1(tp, fp, fn)
    return float(p), float(r), float(f)


def truth_row(number: int, majors: list[str] | tuple[str, ...]) -> dict[str, object]:
    """Ground truth of one report: ``number``, ``half``, ``mesh_major``, ``gt <obs>``
    for every reported observation and :data:`NO_MAPPED_FINDING`, ``gt side <obs>``."""
    gt = mesh_observations(majors)
    sides = mesh_sides(majors)
    row: dict[str, object] = {
        "number": number,
        "half": "odd" if number % 2 else "even",
        "mesh_major": ";".join(majors),
    }
    for obs in REPORTED_OBSERVATIONS:
        row[f"gt {obs}"] = obs in gt
    row[f"gt {NO_MAPPED_FINDING}"] = not (gt - {"No Finding", "Support Devices"})
    for obs in LATERAL_OBSERVATIONS:
        row[f"gt side {obs}"] = sides.get(obs)
    return row


def label_iu_reports(
    reports: str | os.PathLike, labeler: Labeler | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Label every annotated IU report; (per-report frame, excluded counts)."""
    labeler = labeler or default_labeler()
    rows, texts = [], []
    excluded = {"no_mesh_annotation": 0, "empty_findings_and_impression": 0}
    for report in iter_reports(reports):
        majors = [m for m in report.mesh_major if m not in UNANNOTATED]
        if not majors:
            excluded["no_mesh_annotation"] += 1
            continue
        text = report_text(
            report.sections.get("FINDINGS", ""), report.sections.get("IMPRESSION", "")
        )
        if not text:
            excluded["empty_findings_and_impression"] += 1
            continue
        row = truth_row(report.number, majors)
        rows.append(row)
        texts.append(text)
    if not rows:
        raise CxrError(f"{reports}: no annotated report with text")
    frame = pd.DataFrame(rows)
    labels = labeler.label_many(texts)
    return pd.concat([frame, labels], axis=1), excluded


def metrics_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Precision, recall and F1 per half and observation, plus macro and micro rows.

    Columns: ``half, observation, group`` (``normal``, ``mapped``, ``partial``,
    ``macro``, ``micro``), ``reports, gt_positive, predicted_positive, tp, fp, fn,
    precision, recall, f1`` (uncertain counted positive) and ``f1_uncertain_negative``.
    Macro = mean F1 of :data:`MAPPED_OBSERVATIONS`; micro = pooled counts of the same.
    """
    out = []
    for half in ("odd", "even"):
        part = frame[frame["half"] == half]
        per: dict[str, dict] = {}
        for obs in ("No Finding", NO_MAPPED_FINDING) + REPORTED_OBSERVATIONS[1:]:
            gt = part[f"gt {obs}"].to_numpy(bool)
            value = part[obs if obs != NO_MAPPED_FINDING else "No Finding"].to_numpy(float)
            pred = (value == 1.0) | (value == -1.0)
            strict = value == 1.0
            tp, fp, fn = int((gt & pred).sum()), int((~gt & pred).sum()), int((gt & ~pred).sum())
            p, r, f = _prf(tp, fp, fn)
            stp = int((gt & strict).sum())
            _, _, sf = _prf(stp, int((~gt & strict).sum()), int((gt & ~strict).sum()))
            group = (
                "normal"
                if obs in ("No Finding", NO_MAPPED_FINDING)
                else "mapped"
                if obs in MAPPED_OBSERVATIONS
                else "partial"
            )
            per[obs] = {
                "half": half,
                "observation": obs,
                "group": group,
                "reports": len(part),
                "gt_positive": int(gt.sum()),
                "predicted_positive": int(pred.sum()),
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": p,
                "recall": r,
                "f1": f,
                "f1_uncertain_negative": sf,
            }
            out.append(per[obs])
        mapped = [per[o] for o in MAPPED_OBSERVATIONS]

        def mean(key: str, mapped: list[dict] = mapped) -> float:
            return float(pd.Series([m[key] for m in mapped]).mean())

        out.append(
            {
                "half": half,
                "observation": "macro (mapped)",
                "group": "macro",
                "reports": len(part),
                "gt_positive": sum(m["gt_positive"] for m in mapped),
                "predicted_positive": sum(m["predicted_positive"] for m in mapped),
                "tp": sum(m["tp"] for m in mapped),
                "fp": sum(m["fp"] for m in mapped),
                "fn": sum(m["fn"] for m in mapped),
                "precision": mean("precision"),
                "recall": mean("recall"),
                "f1": mean("f1"),
                "f1_uncertain_negative": mean("f1_uncertain_negative"),
            }
        )
        tp, fp, fn = (sum(m[k] for m in mapped) for k in ("tp", "fp", "fn"))
        p, r, f = _prf(tp, fp, fn)
        out.append(
            {
                **out[-1],
                "observation": "micro (mapped)",
                "group": "micro",
                "precision": p,
                "recall": r,
                "f1": f,
                "f1_uncertain_negative": math.nan,
            }
        )
    return pd.DataFrame(out)


def laterality_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Side agreement where MeSH states a side and the labeler labels the observation.

    Columns: ``half, observation, compared`` (reports with a MeSH side and a label of
    1 or -1), ``side_stated`` (of those, the labeler found a side), ``agree`` (same
    side), ``accuracy`` (agree / side_stated).
    """
    out = []
    for half in ("odd", "even"):
        part = frame[frame["half"] == half]
        for obs in LATERAL_OBSERVATIONS:
            truth = part[f"gt side {obs}"]
            pred = part[laterality_column(obs)]
            both = truth.notna() & part[obs].isin([1.0, -1.0])
            stated = both & pred.isin(SIDES)
            agree = int((stated & (truth == pred)).sum())
            n = int(stated.sum())
            out.append(
                {
                    "half": half,
                    "observation": obs,
                    "compared": int(both.sum()),
                    "side_stated": n,
                    "agree": agree,
                    "accuracy": agree / n if n else math.nan,
                }
            )
    return pd.DataFrame(out)


def validate_iu(reports: str | os.PathLike, labeler: Labeler | None = None) -> Validation:
    """Label the IU reports and compare with their MeSH terms (see the module docstring).

    Parameters
    ----------
    reports : path-like
        ``NLMCXR_reports.tgz`` or a folder of its ``<n>.xml`` files.
    labeler : Labeler or None
        Default: the packaged lexicon.
    """
    frame, excluded = label_iu_reports(reports, labeler)
    return Validation(frame, metrics_table(frame), laterality_table(frame), excluded)


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown_tables(result: Validation) -> str:
    """The metrics (odd and even side by side) and laterality tables as Markdown."""
    m = result.metrics
    lines = [
        f"Labeler `{LABELER_NAME}` against IU X-ray MeSH `major` terms; FINDINGS + "
        "IMPRESSION; uncertain (-1) counted positive (last columns: uncertain as negative). "
        "Odd ids = development (tuned on), even ids = held-out (never tuned on).",
        "",
    ]
    counts = {h: int((result.reports["half"] == h).sum()) for h in ("odd", "even")}
    lines.append(
        f"Reports: odd {counts['odd']}, even {counts['even']}; left out: "
        + ", ".join(f"{k} {v}" for k, v in result.excluded.items())
        + "."
    )
    lines += [
        "",
        "| observation | odd GT+ | odd P | odd R | odd F1 | even GT+ | even P | even R "
        "| even F1 | odd F1 (unc. neg.) | even F1 (unc. neg.) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    odd = m[m["half"] == "odd"].set_index("observation")
    even = m[m["half"] == "even"].set_index("observation")
    for obs in odd.index:
        o, e = odd.loc[obs], even.loc[obs]
        name = obs if o["group"] != "partial" else f"{obs} (partial, not averaged)"
        if obs == "No Finding":
            name = "No Finding (MeSH `normal`)"
        lines.append(
            f"| {name} | {o['gt_positive']} | {_fmt(o['precision'])} | {_fmt(o['recall'])} "
            f"| {_fmt(o['f1'])} | {e['gt_positive']} | {_fmt(e['precision'])} "
            f"| {_fmt(e['recall'])} | {_fmt(e['f1'])} | {_fmt(o['f1_uncertain_negative'])} "
            f"| {_fmt(e['f1_uncertain_negative'])} |"
        )
    lat = result.laterality
    lines += [
        "",
        "Laterality, where MeSH states a side and the labeler labels the observation 1 or -1 "
        "(stated: the labeler found a side; accuracy = agree / stated):",
        "",
        "| observation | odd compared | odd stated | odd accuracy | even compared "
        "| even stated | even accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lo = lat[lat["half"] == "odd"].set_index("observation")
    le = lat[lat["half"] == "even"].set_index("observation")
    for obs in LATERAL_OBSERVATIONS:
        o, e = lo.loc[obs], le.loc[obs]
        lines.append(
            f"| {obs} | {o['compared']} | {o['side_stated']} | {_fmt(o['accuracy'])} "
            f"| {e['compared']} | {e['side_stated']} | {_fmt(e['accuracy'])} |"
        )
    return "\n".join(lines) + "\n"


def write_validation(
    reports: str | os.PathLike, out: str | os.PathLike, labeler: Labeler | None = None
) -> tuple[Validation, list[Path]]:
    """Run :func:`validate_iu` and write its tables into folder ``out`` (created).

    Writes ``iu_labeler_metrics.csv``, ``iu_labeler_laterality.csv``,
    ``iu_labeler_validation.md`` and ``iu_labeler_reports.csv`` (per report: number,
    half, MeSH terms, ground truth and labels; no report text).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CxrError(f"--out {out} exists and is not a folder")
    result = validate_iu(reports, labeler)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in (
        ("iu_labeler_metrics.csv", result.metrics),
        ("iu_labeler_laterality.csv", result.laterality),
        ("iu_labeler_reports.csv", result.reports),
    ):
        written.append(write_atomic(out / name, lambda tmp, f=frame: f.to_csv(tmp, index=False)))
    text = markdown_tables(result)
    written.append(write_atomic(out / "iu_labeler_validation.md", lambda tmp: tmp.write_text(text)))
    return result, written


__all__ = [
    "F1_GOALS",
    "MAPPED_OBSERVATIONS",
    "MESH_RULES",
    "NO_MAPPED_FINDING",
    "PARTIAL_OBSERVATIONS",
    "SHARED_REPORTS",
    "Validation",
    "label_iu_reports",
    "laterality_table",
    "markdown_tables",
    "mesh_observations",
    "mesh_sides",
    "metrics_table",
    "report_text",
    "truth_row",
    "validate_iu",
    "write_validation",
]
