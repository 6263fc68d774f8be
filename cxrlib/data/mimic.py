"""MIMIC-CXR-JPG 2.0.0 with MIMIC-CXR report texts -> manifest.

Input layout (PhysioNet, credentialed; file and column names exactly as released)::

    ROOT/
      mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, ...
      mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split
      mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id, <14 CheXpert labels>
      files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg
    REPORTS/ (default ROOT; from the MIMIC-CXR distribution)
      files/p10/p10000032/s50414267.txt      or      mimic-cxr-reports.zip

(``.csv`` instead of ``.csv.gz`` is accepted.) One manifest row per selected image:

- ``view`` is ``ViewPosition`` (``"UNKNOWN"`` when blank); only ``views`` are kept
  (default PA and AP, the frontal views);
- ``split`` is the official one (``train``/``validate``/``test``), joined by dicom_id;
- the 14 labels are joined by ``(subject_id, study_id)`` from the CheXpert file
  (blank when the study has no row, counted as ``no_labels``);
- ``findings`` is the report's Findings section from :mod:`cxrlib.data.sections`;
  ``impression`` (extra column) its Impression; studies without Findings are dropped
  (``no_findings``) unless ``keep_missing_findings``;
- ``study_id``, ``patient_id`` (= subject_id) and ``image_id`` (= dicom_id) are the
  official numbers/ids as text.

Each dropped image is counted under the first reason that applies, in this order:
``view_not_selected``, ``no_split``, ``split_mismatch``, ``missing_image``,
``missing_report``, ``empty_report``, ``no_findings``. Malformed files (missing
columns, ragged rows, bad ids or label values, duplicate keys) stop the run with a
one-line error naming file and line.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from cxrlib.base.errors import CxrError, one_line
from cxrlib.data.adapters import (
    AdapterSummary,
    blank_labels,
    check_out_path,
    find_file,
    iter_csv,
    label_value,
    note_first_line,
    parse_views,
    relative_to,
    write_rows,
)
from cxrlib.data.manifest import CHEXPERT_LABELS, SPLITS
from cxrlib.data.sections import extract_sections

DATASET = "mimic-cxr"
METADATA_FILES = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
SPLIT_FILES = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")
CHEXPERT_FILES = ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv")
REPORTS_ZIP = "mimic-cxr-reports.zip"
DEFAULT_VIEWS: tuple[str, ...] = ("PA", "AP")


def image_relpath(subject_id: str, study_id: str, dicom_id: str) -> str:
    """``files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg`` (XX: first two digits of the subject)."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def report_relpath(subject_id: str, study_id: str) -> str:
    """``files/pXX/pSUBJECT/sSTUDY.txt``, the report's path in the MIMIC-CXR distribution."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt"


def _check_id(value: str, where: str, column: str, *, digits: bool) -> str:
    value = value.strip()
    if not value or (digits and not value.isdigit()):
        kind = "a number" if digits else "non-empty"
        raise CxrError(f"{where}: column {column!r}: {value!r} is not {kind}")
    return value


class _Reports:
    """Report texts from a folder (``files/...txt``) and/or ``mimic-cxr-reports.zip``."""

    def __init__(self, source: Path):
        self.folder: Path | None = None
        self.zip: zipfile.ZipFile | None = None
        self.zip_path: Path | None = None
        self.members: dict[str, str] = {}
        if source.is_file():
            self._open_zip(source)
        elif source.is_dir():
            self.folder = source
            if (source / REPORTS_ZIP).is_file():
                self._open_zip(source / REPORTS_ZIP)
        else:
            raise CxrError(f"{source}: reports folder or zip does not exist")

    def _open_zip(self, path: Path) -> None:
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise CxrError(f"{path}: not a readable zip ({one_line(err)})") from None
        self.zip_path = path
        for name in self.zip.namelist():  # index by "pSUBJECT/sSTUDY.txt", any prefix
            parts = name.split("/")
            if len(parts) >= 2 and parts[-1].endswith(".txt"):
                self.members[f"{parts[-2]}/{parts[-1]}"] = name

    def get(self, subject_id: str, study_id: str) -> tuple[str | None, str]:
        """``(text or None when absent, where)`` for one study's report."""
        rel = report_relpath(subject_id, study_id)
        if self.folder is not None:
            path = self.folder / rel
            if path.is_file():
                return self._decode(path.read_bytes(), str(path)), str(path)
        if self.zip is not None:
            member = self.members.get(f"p{subject_id}/s{study_id}.txt")
            if member is not None:
                where = f"{self.zip_path}:{member}"
                return self._decode(self._read_member(member, where), where), where
        return None, str((self.folder or self.zip_path or Path(".")) / rel)

    def _read_member(self, member: str, where: str) -> bytes:
        """A member's bytes; CxrError naming it when the zip is corrupt there."""
        assert self.zip is not None
        try:
            return self.zip.read(member)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as err:
            raise CxrError(f"{where}: cannot read it from the zip ({one_line(err)})") from None

    @staticmethod
    def _decode(data: bytes, where: str) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CxrError(f"{where}: report is not UTF-8 text ({err})") from None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _read_split(path: Path) -> dict[str, tuple[str, str, str, int]]:
    """``{dicom_id: (split, study_id, subject_id, line)}`` from the split file."""
    table: dict[str, tuple[str, str, str, int]] = {}
    seen: dict[str, int] = {}
    for line, row in iter_csv(path, ("dicom_id", "study_id", "subject_id", "split")):
        where = f"{path}:{line}"
        dicom = _check_id(row["dicom_id"], where, "dicom_id", digits=False)
        study = _check_id(row["study_id"], where, "study_id", digits=True)
        subject = _check_id(row["subject_id"], where, "subject_id", digits=True)
        split = row["split"].strip()
        if split not in SPLITS:
            raise CxrError(f"{where}: column 'split': {split!r} is not one of {SPLITS}")
        note_first_line(seen, dicom, line, where, "dicom_id")
        table[dicom] = (split, study, subject, line)
    return table


def _read_labels(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    """``{(subject_id, study_id): {label: value}}`` from the CheXpert file."""
    table: dict[tuple[str, str], dict[str, float]] = {}
    lines: dict[tuple[str, str], int] = {}
    for line, row in iter_csv(path, ("subject_id", "study_id", *CHEXPERT_LABELS)):
        where = f"{path}:{line}"
        key = (
            _check_id(row["subject_id"], where, "subject_id", digits=True),
            _check_id(row["study_id"], where, "study_id", digits=True),
        )
        if key in table:
            raise CxrError(f"{where}: duplicate study {key[1]} (first on line {lines[key]})")
        table[key] = {c: label_value(row[c], where, c) for c in CHEXPERT_LABELS}
        lines[key] = line
    return table


def _read_metadata(path: Path) -> list[tuple[str, str, str, str, int]]:
    """``(subject_id, study_id, dicom_id, view, line)`` per metadata row, sorted.

    ``view`` is ``ViewPosition`` upper-cased, ``"UNKNOWN"`` when blank.
    """
    metadata: list[tuple[str, str, str, str, int]] = []
    seen: dict[str, int] = {}
    for line, row in iter_csv(path, ("dicom_id", "subject_id", "study_id", "ViewPosition")):
        where = f"{path}:{line}"
        dicom = _check_id(row["dicom_id"], where, "dicom_id", digits=False)
        subject = _check_id(row["subject_id"], where, "subject_id", digits=True)
        study = _check_id(row["study_id"], where, "study_id", digits=True)
        note_first_line(seen, dicom, line, where, "dicom_id")
        view = row["ViewPosition"].strip().upper() or "UNKNOWN"
        metadata.append((subject, study, dicom, view, line))
    metadata.sort()
    return metadata


@dataclass
class _Selection:
    """One run's tables and options: decides each metadata row's fate (kept or why not)."""

    root: Path
    out_dir: Path
    views: tuple[str, ...]
    keep_missing_findings: bool
    metadata_path: Path
    split_path: Path
    splits: dict[str, tuple[str, str, str, int]]
    labels: dict[tuple[str, str], dict[str, float]]
    source: _Reports
    summary: AdapterSummary
    # the last study's report: records come sorted (_read_metadata), so a study's rows
    # are consecutive and each report is read and counted once
    last: tuple[tuple[str, str], tuple[str, dict[str, str]] | None] | None = None

    def rows_of(self, record: tuple[str, str, str, str, int]) -> list[dict[str, object]]:
        """The manifest row of one metadata row, or none (the drop reason counted)."""
        subject, study, dicom, view, line = record
        placed = self._split_and_image(record)
        if placed is None:
            return []
        sections = self._sections(subject, study, f"{self.metadata_path}:{line}")
        if sections is None:
            return []
        split, image = placed
        study_labels = self.labels.get((subject, study))
        if study_labels is None:
            self.summary.count("no_labels")
            study_labels = blank_labels()
        row = {
            "study_id": study,
            "image_id": dicom,
            "image_path": relative_to(image, self.out_dir),
            "view": view,
            "split": split,
            "findings": sections.get("findings") or "",
            **study_labels,
            "patient_id": subject,
            "impression": sections.get("impression", ""),
        }
        return [row]

    def _split_and_image(self, record: tuple[str, str, str, str, int]) -> tuple[str, Path] | None:
        """``(split, image file)``, or None after dropping for view, split or image."""
        subject, study, dicom, view, line = record
        where = f"{self.metadata_path}:{line}"
        if view not in self.views:
            self.summary.drop("view_not_selected", f"{where}: dicom_id {dicom} view {view}")
            return None
        if dicom not in self.splits:
            self.summary.drop(
                "no_split", f"{where}: dicom_id {dicom} not in {self.split_path.name}"
            )
            return None
        split, split_study, split_subject, split_line = self.splits[dicom]
        if (split_study, split_subject) != (study, subject):
            self.summary.drop(
                "split_mismatch",
                f"{self.split_path}:{split_line}: dicom_id {dicom} has study {split_study} "
                f"subject {split_subject}, metadata line {line} says {study} {subject}",
            )
            return None
        image = self.root / image_relpath(subject, study, dicom)
        if not image.is_file():
            self.summary.drop("missing_image", f"{where}: {image} does not exist")
            return None
        return split, image

    def _sections(self, subject: str, study: str, where: str) -> dict[str, str] | None:
        """The study's report sections, or None after dropping for its report.

        A study without Findings is dropped unless ``keep_missing_findings``.
        """
        key = (subject, study)
        if self.last is None or self.last[0] != key:
            self.last = (key, self._parse(subject, study))
        report = self.last[1]
        if report is None:
            self.summary.drop(
                "missing_report", f"{where}: no report {report_relpath(subject, study)}"
            )
            return None
        report_where, sections = report
        if not sections:
            self.summary.drop("empty_report", f"{report_where}: empty report")
            return None
        if sections.get("findings") is None:
            if not self.keep_missing_findings:
                self.summary.drop("no_findings", f"{report_where}: no FINDINGS section")
                return None
            self.summary.count("kept_without_findings")
        return sections

    def _parse(self, subject: str, study: str) -> tuple[str, dict[str, str]] | None:
        """``(where, sections)`` of a study's report (None when absent), counted."""
        text, report_where = self.source.get(subject, study)
        if text is None:
            self.summary.count("studies_without_report")
            return None
        report = (report_where, extract_sections(text) if text.strip() else {})
        if not text.strip():
            self.summary.count("studies_with_empty_report")
        elif "findings" not in report[1]:
            self.summary.count("studies_without_findings")
        return report


def build_manifest(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    reports: str | os.PathLike | None = None,
    views: str | tuple[str, ...] = DEFAULT_VIEWS,
    keep_missing_findings: bool = False,
    allow_in_repo: bool = False,
) -> AdapterSummary:
    """Write the manifest of a MIMIC-CXR-JPG tree (see the module docstring).

    Parameters
    ----------
    root : path-like
        The MIMIC-CXR-JPG 2.0.0 folder (CSV files and ``files/``).
    out : path-like or None
        Manifest path; None gives ``<cache>/manifests/mimic-cxr/manifest.csv``.
        Refused inside a git work tree unless ``allow_in_repo``.
    reports : path-like or None
        Folder holding ``files/pXX/pSUBJECT/sSTUDY.txt`` (or ``mimic-cxr-reports.zip``),
        or the zip itself; default ``root``.
    views : str or tuple of str
        ViewPosition values to keep (``"UNKNOWN"`` selects blank ones).
    keep_missing_findings : bool
        Keep studies without a Findings section (``findings`` empty).
    allow_in_repo : bool
        Permit writing the manifest inside a git work tree.

    Returns
    -------
    AdapterSummary
        Rows kept and dropped per reason; also written to ``<out>.summary.json``.
    """
    root = Path(root)
    if not root.is_dir():
        raise CxrError(f"{root}: MIMIC-CXR-JPG folder does not exist")
    out = check_out_path(out, dataset=DATASET, allow_in_repo=allow_in_repo)
    views = parse_views(views)
    metadata_path = find_file(root, METADATA_FILES)
    split_path = find_file(root, SPLIT_FILES)
    labels_path = find_file(root, CHEXPERT_FILES)
    summary = AdapterSummary(
        DATASET,
        unit="image",
        options={
            "root": str(root),
            "reports": str(reports or root),
            "views": list(views),
            "keep_missing_findings": keep_missing_findings,
        },
    )
    splits = _read_split(split_path)
    labels = _read_labels(labels_path)
    metadata = _read_metadata(metadata_path)
    summary.count("images_in_metadata", len(metadata))
    source = _Reports(Path(reports) if reports is not None else root)
    selection = _Selection(
        root,
        out.parent,
        views,
        keep_missing_findings,
        metadata_path,
        split_path,
        splits,
        labels,
        source,
        summary,
    )
    studies = [0, None]  # studies kept; the last one's (patient, study)

    def rows_of(record: tuple[str, str, str, str, int]) -> list[dict[str, object]]:
        rows = selection.rows_of(record)
        for row in rows:  # records are sorted: a study's rows are consecutive
            key = (row["patient_id"], row["study_id"])
            if key != studies[1]:
                studies[:] = [studies[0] + 1, key]
        return rows

    try:
        write_rows(metadata, rows_of, out, summary, desc="mimic-cxr", unit="image")
    finally:
        source.close()
    summary.count("studies_kept", studies[0])
    summary.write(out)
    return summary
