"""CheXpert Plus -> manifest, with a patient-level validation split.

Input layout (Stanford AIMI, credentialed; names exactly as released)::

    ROOT/
      df_chexpert_plus_240401.csv        path_to_image, path_to_dcm, frontal_lateral, ap_pa,
                                         deid_patient_id, ..., section_findings,
                                         section_impression, ..., split
      chexbert_labels/findings_fixed.json  (optional) JSON lines: path_to_image + 14 labels
      PNG/train/patient00001/study1/view1_frontal.png   (or the same tree directly in ROOT)

``path_to_image`` reads ``train/patient00001/study1/view1_frontal.jpg`` (the original
CheXpert name); the released images are PNG, so each image is looked for, in this
order, as ``<folder>/<path with .png>`` then ``<folder>/<path as written>`` for the
folders ``images`` (when given), else ``ROOT``, ``ROOT/PNG``, ``ROOT/PNG/PNG``.

One manifest row per selected image:

- ``view``: ``ap_pa`` (``AP``/``PA``) for frontal images (``"FRONTAL"`` when ``ap_pa`` is
  blank), ``"LATERAL"`` for lateral ones; only ``views`` are kept (default PA, AP);
- ``findings``: ``section_findings``, whitespace collapsed; images whose report has no
  Findings are dropped (``no_findings``) unless ``keep_missing_findings``;
- labels: the CheXbert labels of the Findings section (``findings_fixed.json``, or any
  file given as ``labels``), joined on ``path_to_image``; blank when the file is absent
  or has no line for the image (counted);
- ``split``: the official ``valid`` images are the held-out ``test`` split; the official
  ``train`` images are split into ``train`` and ``validate`` **by patient**
  (``deid_patient_id``) with :func:`cxrlib.data.manifest.assign_split` (seeded hash,
  ``val_fraction`` of patients to ``validate``), so no patient is in two splits. (The
  published code split by image and leaked patients between train and validation.)
- ids: ``study_id`` ``patientNNNNN/studyN``, ``image_id`` the path without suffix,
  ``patient_id`` ``deid_patient_id``; extra columns ``impression``, ``official_split``,
  ``path_to_image``.

Dropped images are counted under the first reason that applies:
``view_not_selected``, ``missing_image``, ``no_findings``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cxrlib.base.errors import CxrError
from cxrlib.data.adapters import (
    AdapterSummary,
    blank_labels,
    check_out_path,
    collapse_whitespace,
    iter_csv,
    label_value,
    note_first_line,
    parse_views,
    relative_to,
    write_rows,
)
from cxrlib.data.manifest import CHEXPERT_LABELS, assign_split

DATASET = "chexpert-plus"
CSV_NAME = "df_chexpert_plus_240401.csv"
LABELS_FILE = "chexbert_labels/findings_fixed.json"
REQUIRED_COLUMNS: tuple[str, ...] = (
    "path_to_image",
    "frontal_lateral",
    "ap_pa",
    "deid_patient_id",
    "section_findings",
    "section_impression",
    "split",
)
DEFAULT_VIEWS: tuple[str, ...] = ("PA", "AP")
OFFICIAL_TEST_SPLITS = ("valid", "test")
"""Official split values that become our held-out ``test`` split."""


def read_labels(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """CheXbert labels (JSON lines) as ``{path_to_image: {label: 1/0/-1/NaN}}``.

    Each line is an object with ``path_to_image`` and the 14 label names; ``null`` or
    a missing key is blank.
    """
    path = Path(path)
    table: dict[str, dict[str, float]] = {}
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as err:
        raise CxrError(f"{path}: cannot read labels ({err.strerror})") from None
    with handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise CxrError(f"{where}: not a JSON object ({err.msg})") from None
            if not isinstance(record, dict) or not record.get("path_to_image"):
                raise CxrError(f"{where}: no 'path_to_image'")
            table[str(record["path_to_image"])] = {
                c: label_value(record.get(c), where, c) for c in CHEXPERT_LABELS
            }
    return table


def _view(frontal_lateral: str, ap_pa: str) -> str:
    if frontal_lateral.strip().lower() == "lateral":
        return "LATERAL"
    return ap_pa.strip().upper() or "FRONTAL"


def _find_image(path_to_image: str, folders: list[Path]) -> Path | None:
    rel = PurePosixPath(path_to_image)
    for folder in folders:
        for candidate in (folder / rel.with_suffix(".png"), folder / rel):
            if candidate.is_file():
                return candidate
    return None


_Record = tuple[str, str, str, str, str, str, str, int]
"""One CSV image: ``(path_to_image, official split, patient, view, findings, impression,
study_id, line)``."""


def _record(row: dict[str, str], line: int, where: str, seen: dict[str, int]) -> _Record:
    """One CSV row as a record; CxrError for a bad path, a path already ``seen``
    or a bad split value."""
    path = row["path_to_image"].strip()
    parts = PurePosixPath(path).parts
    if len(parts) < 3:
        raise CxrError(f"{where}: column 'path_to_image': {path!r} is not split/patient/study/file")
    note_first_line(seen, path, line, where, "path_to_image")
    official = row["split"].strip().lower()
    if official == "train":
        pass
    elif official not in OFFICIAL_TEST_SPLITS:
        raise CxrError(f"{where}: column 'split': {row['split']!r} is not train or valid")
    return (
        path,
        official,
        row["deid_patient_id"].strip() or parts[-3],
        _view(row["frontal_lateral"], row["ap_pa"]),
        collapse_whitespace(row["section_findings"]),
        collapse_whitespace(row["section_impression"]),
        f"{parts[-3]}/{parts[-2]}",
        line,
    )


def _read_records(csv_path: Path) -> tuple[list[_Record], int]:
    """The CSV's images as sorted records, and the number of patients with
    images in both official splits."""
    records: list[_Record] = []
    seen: dict[str, int] = {}
    official_patients: dict[str, set[str]] = {}
    for line, row in iter_csv(csv_path, REQUIRED_COLUMNS):
        record = _record(row, line, f"{csv_path}:{line}", seen)
        official_patients.setdefault(record[2], set()).add(record[1])
        records.append(record)
    records.sort()
    return records, sum(1 for s in official_patients.values() if len(s) > 1)


@dataclass
class _Selection:
    """One run's options and labels: decides each image's fate (kept or why not)."""

    csv_path: Path
    out_dir: Path
    folders: list[Path]
    views: tuple[str, ...]
    label_table: dict[str, dict[str, float]] | None
    val_fraction: float
    seed: int
    keep_missing_findings: bool
    summary: AdapterSummary

    def rows_of(self, record: _Record) -> list[dict[str, object]]:
        """The manifest row of one image, or none (the drop reason counted)."""
        path, official, patient, view, findings, impression, study, _line = record
        image = self._image(record)
        if image is None:
            return []
        row = {
            "study_id": study,
            "image_id": str(PurePosixPath(path).with_suffix("")),
            "image_path": relative_to(image, self.out_dir),
            "view": view,
            "split": self._split(official, patient),
            "findings": findings,
            **self._labels(path),
            "patient_id": patient,
            "impression": impression,
            "official_split": official,
            "path_to_image": path,
        }
        return [row]

    def _image(self, record: _Record) -> Path | None:
        """The image file, or None after dropping for view, image or findings."""
        path, _official, _patient, view, findings, _impression, _study, line = record
        where = f"{self.csv_path}:{line}"
        if view not in self.views:
            self.summary.drop("view_not_selected", f"{where}: {path} view {view}")
            return None
        image = _find_image(path, self.folders)
        if image is None:
            self.summary.drop("missing_image", f"{where}: {path} (no .png or original file found)")
            return None
        if not findings:
            if not self.keep_missing_findings:
                self.summary.drop("no_findings", f"{where}: empty section_findings")
                return None
            self.summary.count("kept_without_findings")
        return image

    def _split(self, official: str, patient: str) -> str:
        """Official valid/test -> ``test``; official train -> train/validate by patient."""
        if official == "train":
            return assign_split(
                patient, self.seed, (1.0 - self.val_fraction, self.val_fraction, 0.0)
            )
        return "test"

    def _labels(self, path: str) -> dict[str, float]:
        """The image's CheXbert labels, blank when there are none (counted)."""
        labels = self.label_table.get(path) if self.label_table is not None else None
        if labels is None:
            if self.label_table is not None:
                self.summary.count("no_labels")
            labels = blank_labels()
        return labels


def build_manifest(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    images: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    views: str | tuple[str, ...] = DEFAULT_VIEWS,
    val_fraction: float = 0.1,
    seed: int = 0,
    keep_missing_findings: bool = False,
    allow_in_repo: bool = False,
) -> AdapterSummary:
    """Write the manifest of a CheXpert Plus folder (see the module docstring).

    Parameters
    ----------
    root : path-like
        Folder holding ``df_chexpert_plus_240401.csv``.
    out : path-like or None
        Manifest path; None gives ``<cache>/manifests/chexpert-plus/manifest.csv``.
        Refused inside a git work tree unless ``allow_in_repo``.
    images : path-like or None
        Folder the ``path_to_image`` paths are relative to (default: search ``root``,
        ``root/PNG``, ``root/PNG/PNG``).
    labels : path-like or None
        CheXbert labels JSON lines; default ``root/chexbert_labels/findings_fixed.json``
        when present, else labels are blank.
    views : str or tuple of str
        Views to keep (``PA``, ``AP``, ``FRONTAL`` for frontal without AP/PA, ``LATERAL``).
    val_fraction : float
        Fraction of the official-train patients that go to ``validate``, in (0, 1).
    seed : int
        Seed of the patient-level split.
    keep_missing_findings : bool
        Keep images whose report has no Findings (``findings`` empty).
    allow_in_repo : bool
        Permit writing the manifest inside a git work tree.

    Returns
    -------
    AdapterSummary
        Rows kept and dropped per reason; also written to ``<out>.summary.json``.
    """
    root = Path(root)
    csv_path = root / CSV_NAME
    if not root.is_dir():
        raise CxrError(f"{root}: CheXpert Plus folder does not exist")
    if not 0.0 < val_fraction < 1.0:
        raise CxrError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    out = check_out_path(out, dataset=DATASET, allow_in_repo=allow_in_repo)
    views = parse_views(views)
    if labels is None and (root / LABELS_FILE).is_file():
        labels = root / LABELS_FILE
    folders = [Path(images)] if images is not None else [root, root / "PNG", root / "PNG" / "PNG"]
    if images is not None and not folders[0].is_dir():
        raise CxrError(f"{images}: image folder does not exist")
    summary = AdapterSummary(
        DATASET,
        unit="image",
        options={
            "root": str(root),
            "images": [str(f) for f in folders],
            "labels": str(labels) if labels is not None else None,
            "views": list(views),
            "val_fraction": val_fraction,
            "seed": seed,
            "keep_missing_findings": keep_missing_findings,
        },
    )
    label_table = read_labels(labels) if labels is not None else None
    if label_table is None:
        summary.count("labels_file_absent")
    records, in_both = _read_records(csv_path)
    summary.count("images_in_csv", len(records))
    summary.count("patients_in_official_train_and_valid", in_both)
    selection = _Selection(
        csv_path,
        out.parent,
        folders,
        views,
        label_table,
        val_fraction,
        seed,
        keep_missing_findings,
        summary,
    )
    write_rows(records, selection.rows_of, out, summary, desc="chexpert-plus", unit="image")
    summary.write(out)
    return summary
