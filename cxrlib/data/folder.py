"""Any folder of chest radiographs (optionally with masks and report texts) -> manifest.

Input layout::

    IMAGES/...<name>.png|.jpg|.jpeg              any depth; image_id = path without suffix
    MASKS/ (optional)                            same relative path and name, .png
      lungs/...   left_lung/...   right_lung/...   heart/...
    REPORTS.csv (optional)                       image_id, findings
                                                 [, study_id, patient_id, split, view,
                                                  <CheXpert labels>, any other column]

One row per readable image, in sorted path order. ``image_id`` is the path relative
to ``IMAGES`` without suffix (``/``-separated); ``study_id`` defaults to it (one study
per image). From the reports CSV (matched on ``image_id``): ``findings`` (whitespace
collapsed), and when present ``study_id``, ``patient_id``, ``split``, ``view``, labels
and any extra column, kept as is. ``split`` is the CSV's where given, else
:func:`cxrlib.data.manifest.assign_split` of the study id with ``seed``. ``view``
is the CSV's where given, else ``view`` (default empty: unknown).

Masks (folder names as above; ``left_lung`` is the PATIENT's left): each found mask is
referenced where it is; a missing one leaves its column blank (counted). When
``lungs/`` has no mask for an image but ``left_lung`` and ``right_lung`` do, their
union (thresholded ``> 127``) is written as a 0/255 PNG to
``<out stem>_masks/lungs/<image_id>.png``.

Dropped images are counted under the first reason that applies:
``duplicate_image_id`` (``a.png`` beside ``a.jpg``), ``unreadable_image``,
``mask_size_mismatch``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from cxrlib.base.errors import CxrError
from cxrlib.base.masks import load_mask, write_binary_mask
from cxrlib.data.adapters import (
    IMAGE_SUFFIXES,
    AdapterSummary,
    blank_labels,
    check_out_path,
    collapse_whitespace,
    collect_rows,
    finish,
    image_readable,
    image_size,
    iter_csv,
    label_value,
    note_first_line,
    relative_to,
    safe_relative_id,
)
from cxrlib.data.manifest import CHEXPERT_LABELS, SPLITS, assign_split

DATASET = "folder"
MASK_FOLDERS: dict[str, str] = {
    "lung_mask_path": "lungs",
    "left_lung_mask_path": "left_lung",
    "right_lung_mask_path": "right_lung",
    "heart_mask_path": "heart",
}
"""Manifest column -> sub-folder of ``MASKS``."""
MASK_THRESHOLD = 127


def read_reports(path: str | os.PathLike) -> dict[str, dict[str, object]]:
    """Report rows by ``image_id``: findings collapsed, labels parsed, other cells as text.

    Raises
    ------
    CxrError
        Missing ``image_id``/``findings`` column, empty or repeated ``image_id``, an
        unknown ``split`` or a bad label value (naming file and line).
    """
    table: dict[str, dict[str, object]] = {}
    lines: dict[str, int] = {}
    for line, row in iter_csv(path, ("image_id", "findings")):
        where = f"{path}:{line}"
        image_id = row["image_id"].strip()
        if not image_id:
            raise CxrError(f"{where}: empty image_id")
        note_first_line(lines, image_id, line, where, "image_id")
        record: dict[str, object] = {}
        for column, cell in row.items():
            if column in CHEXPERT_LABELS:
                record[column] = label_value(cell, where, column)
            elif column == "findings":
                record[column] = collapse_whitespace(cell)
            elif column and column != "image_id":
                record[column] = cell.strip()
        split = str(record.get("split", "") or "")
        if split and split not in SPLITS:
            raise CxrError(f"{where}: column 'split': {split!r} is not one of {SPLITS}")
        table[image_id] = record
    return table


def _find_mask(masks: Path, folder: str, image_id: str) -> Path | None:
    base = masks / folder / safe_relative_id(image_id)
    for suffix in IMAGE_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


@dataclass
class _Selection:
    """One run's folders, reports and options: decides each image's fate."""

    images: Path
    out_dir: Path
    lung_dir: Path
    mask_root: Path | None
    report_table: dict[str, dict[str, object]] | None
    seed: int
    view: str
    summary: AdapterSummary
    seen: dict[str, Path] = field(default_factory=dict)

    def rows_of(self, image: Path) -> list[dict[str, object]]:
        """The manifest row of one image file, or none (the drop reason counted)."""
        image_id = str(PurePosixPath(image.relative_to(self.images).as_posix()).with_suffix(""))
        if image_id in self.seen:
            self.summary.drop(
                "duplicate_image_id", f"{image}: same image_id as {self.seen[image_id]}"
            )
            return []
        self.seen[image_id] = image
        problem = image_readable(image)
        if problem is not None:
            self.summary.drop("unreadable_image", f"{image}: {problem}")
            return []
        row: dict[str, object] = {"image_id": image_id, **blank_labels()}
        if self.mask_root is not None:
            mismatch = self._add_masks(row, image, image_id, self.mask_root)
            if mismatch is not None:
                self.summary.drop("mask_size_mismatch", mismatch)
                return []
        if self.report_table is not None:
            report = self.report_table.get(image_id)
            if report is None:
                self.summary.count("images_without_report")
            else:
                row.update(report)
        study_id = str(row.get("study_id") or image_id)
        row["study_id"] = study_id
        row["image_path"] = relative_to(image, self.out_dir)
        row["view"] = str(row.get("view") or self.view)
        row["split"] = str(row.get("split") or assign_split(study_id, self.seed))
        row["findings"] = str(row.get("findings") or "")
        return [row]

    def _add_masks(
        self, row: dict[str, object], image: Path, image_id: str, mask_root: Path
    ) -> str | None:
        """Put the image's mask paths in ``row`` (the lung union written when needed);
        a mask whose size differs from the image's instead gives the drop's reason."""
        shape = image_size(image)
        found = {c: _find_mask(mask_root, f, image_id) for c, f in MASK_FOLDERS.items()}
        for path in found.values():
            if path is not None and image_size(path) != shape:
                return f"{path}: size differs from {image}"
        left, right = found["left_lung_mask_path"], found["right_lung_mask_path"]
        if found["lung_mask_path"] is None and left is not None and right is not None:
            union = load_mask(left, MASK_THRESHOLD) | load_mask(right, MASK_THRESHOLD)
            target = self.lung_dir / f"{safe_relative_id(image_id)}.png"
            found["lung_mask_path"] = write_binary_mask(union, target)
            self.summary.count("lung_mask_from_union")
        for column, path in found.items():
            if path is None:
                self.summary.count(f"no_{MASK_FOLDERS[column]}_mask")
                row[column] = ""
            else:
                row[column] = relative_to(path, self.out_dir)
        return None


def build_manifest(
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    masks: str | os.PathLike | None = None,
    reports: str | os.PathLike | None = None,
    seed: int = 0,
    view: str = "",
) -> AdapterSummary:
    """Write the manifest of a folder of images (see the module docstring).

    Parameters
    ----------
    images : path-like
        Folder of images (``.png``, ``.jpg``, ``.jpeg``, any depth).
    out : path-like
        Manifest path.
    masks : path-like or None
        Folder with ``lungs/``, ``left_lung/``, ``right_lung/``, ``heart/`` sub-folders.
    reports : path-like or None
        CSV with ``image_id`` and ``findings`` (and optional columns).
    seed : int
        Split seed for images without a split in the reports CSV.
    view : str
        View for images without one in the reports CSV (default empty: unknown).

    Returns
    -------
    AdapterSummary
        Rows kept and dropped per reason; also written to ``<out>.summary.json``.
    """
    images = Path(images)
    if not images.is_dir():
        raise CxrError(f"{images}: image folder does not exist")
    out = check_out_path(out, dataset=DATASET)
    mask_root = Path(masks) if masks is not None else None
    if mask_root is not None and not mask_root.is_dir():
        raise CxrError(f"{mask_root}: mask folder does not exist")
    report_table = read_reports(reports) if reports is not None else None
    summary = AdapterSummary(
        DATASET,
        unit="image",
        options={
            "images": str(images),
            "masks": str(mask_root) if mask_root is not None else None,
            "reports": str(reports) if reports is not None else None,
            "seed": seed,
            "view": view,
        },
    )
    files = sorted(
        p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    lung_dir = out.parent / f"{out.stem}_masks" / "lungs"
    selection = _Selection(
        images, out.parent, lung_dir, mask_root, report_table, seed, view, summary
    )
    rows = collect_rows(files, selection.rows_of, desc="folder", unit="image")
    if report_table is not None:
        summary.count(
            "reports_without_image", sum(1 for k in report_table if k not in selection.seen)
        )
    return finish(pd.DataFrame(rows), out, summary)
