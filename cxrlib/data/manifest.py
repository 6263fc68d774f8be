"""The manifest: one CSV row per image, the one schema every dataset lands in.

Every adapter (phantom, MIMIC-CXR, CheXpert Plus, IU X-ray, Wingspan, folder) writes
this schema and every notebook reads it, so a notebook works on any dataset.

Columns (``data_manifests/README.md`` documents them; a test keeps the two equal):

- required: ``study_id, image_id, image_path, view, split, findings`` and the 14
  CheXpert observations, named exactly as :data:`CHEXPERT_LABELS`;
- optional: :data:`OPTIONAL_COLUMNS` (patient id and mask paths);
- anything else (e.g. the phantom's attribute columns) is kept as is.

Paths are relative to the manifest's folder (absolute paths are allowed). Labels take
CheXpert values: ``1`` positive, ``0`` negative, ``-1`` uncertain, blank not mentioned;
in memory they are floats with NaN for blank.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.errors import ManifestError

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The 14 CheXpert observation columns, in the CheXpert order."""

CORE_COLUMNS: tuple[str, ...] = ("study_id", "image_id", "image_path", "view", "split", "findings")
REQUIRED_COLUMNS: tuple[str, ...] = CORE_COLUMNS + CHEXPERT_LABELS

MASK_COLUMNS: tuple[str, ...] = (
    "lung_mask_path",
    "left_lung_mask_path",
    "right_lung_mask_path",
    "heart_mask_path",
)
"""Mask paths: both lungs (binary), each lung (patient's left/right), heart."""

OPTIONAL_COLUMNS: tuple[str, ...] = ("patient_id",) + MASK_COLUMNS

SPLITS: tuple[str, ...] = ("train", "validate", "test")
SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
"""Default train/validate/test fractions for hash-based splits."""

LABEL_VALUES = (1.0, 0.0, -1.0)


def assign_split(
    study_id: str, seed: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS
) -> str:
    """Split of a study from a seeded hash of its id.

    The same ``(study_id, seed)`` always gives the same split, on any machine and in
    any order of processing, so splits never depend on row order and all images of a
    study share a split.

    Parameters
    ----------
    study_id : str
        The study's id.
    seed : int
        Split seed; a different seed reshuffles studies between splits.
    fractions : (float, float, float)
        Train, validate, test fractions; must sum to 1.

    Returns
    -------
    str
        ``"train"``, ``"validate"`` or ``"test"``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    digest = hashlib.sha256(f"{seed}:{study_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "validate"
    return "test"


def parse_label(value: object) -> float:
    """One CheXpert label cell as a float: 1.0, 0.0, -1.0, or NaN for blank.

    Accepts ``1``, ``0``, ``-1`` as numbers or strings (``"1.0"`` too) and blank
    (``""``, ``None``, NaN). Raises ``ValueError`` naming the value otherwise.
    """
    if value is None:
        return float("nan")
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return float("nan")
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"label value {value!r} is not one of 1, 0, -1, blank") from None
    else:
        number = float(value)  # type: ignore[arg-type]
    if np.isnan(number):
        return float("nan")
    if number not in LABEL_VALUES:
        raise ValueError(f"label value {value!r} is not one of 1, 0, -1, blank")
    return number


def format_label(value: float) -> str:
    """Inverse of :func:`parse_label` for writing: ``"1"``, ``"0"``, ``"-1"`` or ``""``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(int(parse_label(value)))


def resolve(root: str | os.PathLike, path: str) -> Path:
    """Path of a manifest cell: relative cells are relative to the manifest's folder."""
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def is_text_only(df: pd.DataFrame) -> bool:
    """True when no row has an image: a text-only manifest (reports without images)."""
    return len(df) > 0 and bool((df["image_path"].fillna("").astype(str).str.strip() == "").all())


def validate(
    df: pd.DataFrame,
    root: str | os.PathLike,
    *,
    name: str = "manifest",
    check_files: bool = True,
) -> list[str]:
    """Every problem of a manifest, one line each, naming the CSV line.

    Line numbers are those of the CSV file (the header is line 1, so row ``i`` of
    ``df`` is line ``i + 2``). Checks: required columns present; ``study_id`` and
    ``image_id`` non-empty; ``image_id`` unique; ``split`` in :data:`SPLITS`; labels
    in {1, 0, -1, blank}; ``findings`` a string (may be empty); image and mask files
    exist (when ``check_files``). An empty ``image_path`` is allowed only when every
    row has one (a text-only manifest).

    Returns
    -------
    list of str
        Empty when the manifest is valid.
    """
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        return [f"{name}: missing column(s): {', '.join(missing)}"]
    if len(df) == 0:
        return [f"{name}: no rows"]

    def line(i: int) -> str:
        return f"{name}:{i + 2}"

    text = df[list(CORE_COLUMNS)].fillna("").astype(str)
    text_only = is_text_only(df)
    seen: dict[str, int] = {}
    present_masks = [c for c in MASK_COLUMNS if c in df.columns]
    for i, row in enumerate(text.itertuples(index=False)):
        study_id, image_id, image_path, _view, split, _findings = (s.strip() for s in row)
        if not study_id:
            problems.append(f"{line(i)}: empty study_id")
        if not image_id:
            problems.append(f"{line(i)}: empty image_id")
        elif image_id in seen:
            problems.append(
                f"{line(i)}: duplicate image_id {image_id!r} (first on line {seen[image_id] + 2})"
            )
        else:
            seen[image_id] = i
        if split not in SPLITS:
            problems.append(f"{line(i)}: unknown split {split!r} (expected one of {SPLITS})")
        if not image_path:
            if not text_only:
                problems.append(f"{line(i)}: empty image_path in a manifest with images")
        elif check_files and not resolve(root, image_path).is_file():
            problems.append(f"{line(i)}: image_path {image_path!r} does not exist")
        for col in present_masks:
            cell = df[col].iloc[i]
            if isinstance(cell, str) and cell.strip() and check_files:
                if not resolve(root, cell.strip()).is_file():
                    problems.append(f"{line(i)}: {col} {cell.strip()!r} does not exist")
        for label in CHEXPERT_LABELS:
            try:
                parse_label(df[label].iloc[i])
            except ValueError as err:
                problems.append(f"{line(i)}: column {label!r}: {err}")
    return problems


def read_manifest(path: str | os.PathLike, *, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a manifest; refuse it with every problem listed.

    Parameters
    ----------
    path : path-like
        The manifest CSV.
    check_files : bool
        Also check that every image and mask file exists.

    Returns
    -------
    pandas.DataFrame
        One row per image. Text columns are strings (blank cells ``""``); the 14 label
        columns are float64 with values in {1, 0, -1, NaN}. ``df.attrs["root"]`` is the
        manifest's folder, against which relative paths resolve.

    Raises
    ------
    ManifestError
        When the file is missing, is not a readable CSV, or fails :func:`validate`.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(str(path), [f"{path}: file does not exist"])
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ManifestError(str(path), [f"{path}: not a readable CSV ({first})"]) from None
    problems = validate(df, path.parent, name=str(path), check_files=check_files)
    if problems:
        raise ManifestError(str(path), problems)
    for label in CHEXPERT_LABELS:
        df[label] = df[label].map(parse_label).astype("float64")
    df.attrs["root"] = str(path.parent)
    return df


def ordered_columns(columns: Iterable[str]) -> list[str]:
    """Schema order: required, then optional present, then the rest as given."""
    columns = list(columns)
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    optional = [c for c in OPTIONAL_COLUMNS if c in columns]
    extra = [c for c in columns if c not in known]
    return list(REQUIRED_COLUMNS) + optional + extra


def write_manifest(
    df: pd.DataFrame, path: str | os.PathLike, *, check_files: bool = True
) -> Path:
    """Validate ``df`` against the folder of ``path``, then write it atomically.

    Labels are written as ``1``, ``0``, ``-1`` or blank; columns in schema order.
    The file appears complete or not at all (written to a temporary name, then
    renamed). Raises :class:`ManifestError` listing every problem, writing nothing.
    """
    path = Path(path)
    out = df.copy()
    for label in CHEXPERT_LABELS:
        if label not in out.columns:
            out[label] = float("nan")
    problems = validate(out, path.parent, name=str(path), check_files=check_files)
    if problems:
        raise ManifestError(str(path), problems)
    for label in CHEXPERT_LABELS:
        out[label] = out[label].map(format_label)
    out = out[ordered_columns(out.columns)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    out.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)
    return path
