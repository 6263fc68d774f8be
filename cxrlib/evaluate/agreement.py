"""Agreement of a report labeler with the label columns of a manifest.

The IU X-ray validation (:mod:`cxrlib.evaluate.iu_validation`) measures the rule labeler
against manual MeSH terms on 1,912 held-out reports, where a rare observation has a
dozen positives. A manifest with labels is a larger yardstick where a user has one:
MIMIC-CXR-JPG's 14 labels come from the CheXpert labeler (227,827 studies), CheXpert
Plus ships its reports with labels, and the phantom's are drawn ground truth. This
module labels a manifest's report text and compares the labels, study by study, with
its label columns:

- clinical precision / recall / F1 per observation and micro / macro over the 14 and the
  5 observations, under both conventions (:data:`~cxrlib.metrics.clinical.CONVENTIONS`),
  with the keys of ``cxr evaluate`` (``clinical.<convention>.<micro_14|...>``);
- exact agreement per observation over the four values (1, 0, -1, blank);
- 95 % percentile bootstrap intervals over studies.

Rows are skipped, counted and logged, when their text is empty or when all 14 of their
labels are blank (a study the reference labeler did not label). ``cxr label agreement``
writes ``agreement.json`` (with provenance), ``agreement_per_observation.csv`` and
``agreement.md``.

What it measures is agreement with the manifest's labeler, not accuracy: MIMIC-CXR's
labels are the CheXpert labeler's output, read from the Impression (or, without one, the
Findings) of the full report, so compare the same text (``--text-column impression`` or
``findings,impression``); the columns named are joined with a blank line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.base.errors import CxrError
from cxrlib.base.io import write_atomic, write_json_atomic
from cxrlib.base.provenance import provenance
from cxrlib.base.stats import BootstrapResult
from cxrlib.data.manifest import CHEXPERT_LABELS, SPLITS, read_manifest, text_cell
from cxrlib.evaluate.evaluate import (
    CONVENTION_TEXT,
    bootstrap_settings,
    conventions_markdown,
    format_value,
    metrics_json,
    metrics_with_intervals,
)
from cxrlib.metrics.clinical import CLINICAL_KEYS, ClinicalData, get_labeler

__all__ = ["Agreement", "label_agreement", "agreement_files"]

log = logging.getLogger(__name__)


@dataclass
class Agreement:
    """A labeler against a manifest's labels: metrics with intervals, table, counts."""

    metrics: dict[str, BootstrapResult]
    per_observation: pd.DataFrame
    labeler: str
    text_columns: tuple[str, ...]
    counts: dict[str, int]
    bootstrap: dict[str, object]
    inputs: dict[str, object]

    def to_json(self) -> dict[str, object]:
        """The ``agreement.json`` content, provenance included."""
        return {
            "metrics": metrics_json(self.metrics),
            "labeler": self.labeler,
            "reference_labels": "manifest",
            "text_columns": list(self.text_columns),
            "conventions": dict(CONVENTION_TEXT),
            "bootstrap": dict(self.bootstrap),
            "counts": dict(self.counts),
            "inputs": dict(self.inputs),
            "provenance": provenance(),
        }

    def markdown(self) -> str:
        """Metrics with n and intervals, then F1 and exact agreement per observation."""
        c = self.counts
        lines = [
            "# Labeler agreement with the manifest's labels",
            "",
            f"- labeler: {self.labeler}; reference: the manifest's label columns "
            f"({self.inputs['manifest']}, split {self.inputs['split']})",
            f"- text: {' + '.join(self.text_columns)}",
            f"- rows: {c['n']} compared ({c['n_studies']} studies) of {c['rows']}; "
            f"skipped: {c['skipped_empty_text']} empty text, "
            f"{c['skipped_no_labels']} without any label",
            f"- intervals: {self.bootstrap['method']} bootstrap over studies, "
            f"{self.bootstrap['n_resamples']} resamples, seed {self.bootstrap['seed']}",
            "",
            "| metric | value | 95% CI | n |",
            "| --- | ---: | --- | ---: |",
        ]
        for key, r in self.metrics.items():
            ci = f"[{format_value(r.ci_low)}, {format_value(r.ci_high)}]"
            lines.append(f"| {key} | {format_value(r.value)} | {ci} | {r.n} |")
        t = self.per_observation
        pos = t[t["convention"] == "uncertain_as_positive"].set_index("observation")
        neg = t[t["convention"] == "uncertain_as_negative"].set_index("observation")
        lines += [
            "",
            "| observation | reference positive (unc. pos.) | F1, uncertain as positive | "
            "F1, uncertain as negative | exact agreement (1/0/-1/blank) |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for obs in CHEXPERT_LABELS:
            values = (pos.loc[obs, "f1"], neg.loc[obs, "f1"], pos.loc[obs, "exact_agreement"])
            cells = " | ".join(format_value(v) for v in values)
            lines.append(f"| {obs} | {pos.loc[obs, 'support']} | {cells} |")
        return "\n".join(lines + conventions_markdown()) + "\n"

    def write(self, out: str | os.PathLike) -> list[Path]:
        """Write ``agreement.json``, ``agreement_per_observation.csv`` and ``agreement.md``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        table = self.per_observation
        text = self.markdown()
        return [
            write_json_atomic(out / "agreement.json", self.to_json()),
            write_atomic(
                out / "agreement_per_observation.csv",
                lambda tmp: table.to_csv(tmp, index=False, lineterminator="\n"),
            ),
            write_atomic(out / "agreement.md", lambda tmp: tmp.write_text(text)),
        ]


def _exact_agreement(labels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per observation, the fraction of rows with the same value (blank equals blank)."""
    same = (labels == reference) | (np.isnan(labels) & np.isnan(reference))
    return same.mean(axis=0)


def label_agreement(
    manifest: pd.DataFrame,
    *,
    text_columns: Sequence[str] = ("findings",),
    labeler: str = "rule",
    split: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    chexbert: str | os.PathLike | None = None,
    progress: bool = True,
    manifest_name: str = "manifest",
) -> Agreement:
    """Label the manifest's text and compare with its 14 label columns.

    Parameters
    ----------
    manifest : DataFrame
        ``image_id``, ``study_id``, ``split``, the text columns and the 14 labels.
    text_columns : sequence of str
        Columns holding the report text, joined with a blank line.
    labeler : str
        ``rule`` or ``chexbert`` (:func:`~cxrlib.metrics.clinical.get_labeler`).
    split : str or None
        Only this split (None: every row).
    n_bootstrap, seed : int
        Bootstrap resamples over studies (0: no intervals) and seed.

    Raises
    ------
    CxrError
        A missing column, an unknown split or labeler, or no row left to compare.
    """
    text_columns = tuple(text_columns)
    if not text_columns:
        raise CxrError("no text column given")
    if split is not None and split not in SPLITS:
        raise CxrError(f"split must be one of {', '.join(SPLITS)} (or None), got {split!r}")
    if n_bootstrap < 0:
        raise CxrError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    needed = ("image_id", "study_id", "split", *text_columns, *CHEXPERT_LABELS)
    missing = [c for c in dict.fromkeys(needed) if c not in manifest.columns]
    if missing:
        raise CxrError(f"{manifest_name}: missing column(s): {', '.join(missing)}")
    rows = manifest.reset_index(drop=True)
    if split is not None:
        rows = rows[rows["split"].map(text_cell) == split].reset_index(drop=True)
    parts = [rows[c].map(lambda v: text_cell(v).strip()) for c in text_columns]
    texts = ["\n\n".join(t for t in row if t) for row in zip(*parts, strict=True)]
    reference = rows[list(CHEXPERT_LABELS)].apply(pd.to_numeric, errors="coerce")
    empty = np.array([not t for t in texts])
    unlabelled = reference.isna().all(axis=1).to_numpy()
    keep = ~empty & ~unlabelled
    counts = {
        "rows": len(rows),
        "skipped_empty_text": int(empty.sum()),
        "skipped_no_labels": int((unlabelled & ~empty).sum()),
    }
    if counts["skipped_empty_text"] or counts["skipped_no_labels"]:
        log.warning(
            "%s: %d of %d rows skipped (%d empty text, %d without any label)",
            manifest_name,
            len(rows) - int(keep.sum()),
            len(rows),
            counts["skipped_empty_text"],
            counts["skipped_no_labels"],
        )
    if not keep.any():
        raise CxrError(
            f"{manifest_name}: no row with both text ({' + '.join(text_columns)}) and a label"
            + (f" in split {split!r}" if split else "")
        )
    texts = [t for t, k in zip(texts, keep, strict=True) if k]
    reference = reference[keep].reset_index(drop=True)
    groups = rows.loc[keep, "study_id"].map(text_cell).to_numpy()

    label_fn, labeler_name = get_labeler(labeler, chexbert=chexbert)
    labels = label_fn(texts).reset_index(drop=True)
    clinical = ClinicalData.build(
        labels, reference, labeler=labeler_name, reference_source="manifest"
    )
    n = len(texts)
    metrics = metrics_with_intervals(
        clinical.scores, n, n_bootstrap=n_bootstrap, seed=seed, groups=groups, progress=progress
    )
    table = clinical.table()
    exact = _exact_agreement(
        labels[list(CHEXPERT_LABELS)].to_numpy(float), reference.to_numpy(float)
    )
    table["exact_agreement"] = [exact[CHEXPERT_LABELS.index(o)] for o in table["observation"]]
    counts.update({"n": n, "n_studies": len(set(groups))})
    return Agreement(
        metrics={k: metrics[k] for k in CLINICAL_KEYS},
        per_observation=table,
        labeler=labeler_name,
        text_columns=text_columns,
        counts=counts,
        bootstrap=bootstrap_settings(n_bootstrap, seed),
        inputs={"manifest": manifest_name, "split": split or "all"},
    )


def agreement_files(
    manifest: str | os.PathLike, out: str | os.PathLike | None, **options: object
) -> Agreement:
    """:func:`label_agreement` on a manifest CSV (image files not checked); writes ``out``."""
    path = Path(manifest)
    if not path.is_file():
        raise CxrError(f"--manifest {path}: file does not exist")
    try:
        frame = read_manifest(path, check_files=False).frame
    except CxrError as err:
        problems = getattr(err, "problems", None) or [str(err)]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CxrError(f"invalid --manifest: {problems[0]}{more}") from None
    result = label_agreement(frame, manifest_name=str(path), **options)
    if out is not None:
        result.write(out)
    return result
