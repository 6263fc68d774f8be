"""CheXmask lung and heart masks -> mask files attached to a MIMIC-CXR or CheXpert manifest.

The CheXmask database (Gaggion et al., Scientific Data 2024; PhysioNet
``chexmask-cxr-segmentation-data``) gives, per image, HybridGNet segmentations as
run-length encoded strings in one CSV per source dataset, e.g. ``MIMIC-CXR-JPG.csv``
or ``CheXpert.csv`` (``OriginalResolution/`` holds masks at the image's own size)::

    dicom_id | Path, Dice RCA (Mean), Dice RCA (Max), Landmarks,
    Left Lung, Right Lung, Heart, Height, Width

- the id column is ``dicom_id`` (MIMIC-CXR; matched to the manifest's ``image_id``) or
  ``Path`` (CheXpert, e.g. ``train/patient00001/study1/view1_frontal.jpg``; matched
  without its image suffix and without a leading ``CheXpert-v1.0*/`` folder, which is
  the ``image_id`` of :mod:`cxrlib.data.chexpert_plus`);
- **RLE convention** (the database's own ``get_mask_from_RLE``): space-separated
  ``start length`` pairs, starts **1-indexed** into the mask flattened **row-major**
  (C order) with shape ``(Height, Width)``; every listed pixel is inside the organ.
  :func:`decode_rle` and :func:`encode_rle` implement it and round-trip exactly;
- ``Left Lung`` is the PATIENT's left (the right side of the image), as in our
  ``left_lung_mask_path``;
- ``Dice RCA (Mean)`` is the per-image quality estimate (reverse classification
  accuracy); images below ``min_dice`` (default 0.7) get no masks.

Output (``out`` folder): ``masks/{lungs,left_lung,right_lung,heart}/<image_id>.png``
(0/255 PNG; ``lungs`` is the union of the two lungs) and ``manifest.csv``: the input
manifest's rows, paths rebased to ``out``, with the four mask columns and
``chexmask_dice`` filled where masks were attached. Rows without masks are kept
(mask columns blank, counted per reason) unless ``drop_unmasked``. Reasons:
``no_chexmask_row``, ``below_quality_threshold``, ``size_mismatch`` (Height/Width
differ from the image: a preprocessed-resolution CSV), ``empty_rle``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrlib.base.errors import CxrError, ManifestError
from cxrlib.base.masks import write_binary_mask
from cxrlib.base.storage import is_url
from cxrlib.data.adapters import (
    IMAGE_SUFFIXES,
    AdapterSummary,
    check_out_path,
    finish,
    image_size,
    iter_csv,
    relative_to,
    safe_relative_id,
)
from cxrlib.data.manifest import (
    FINDING_MASK_COLUMN,
    MASK_COLUMNS,
    Manifest,
    read_manifest,
    resolve,
)

DATASET = "chexmask"
MAX_MASK_PIXELS = 2**26
"""The largest mask :func:`decode_rle` decodes (8192 x 8192; CheXmask's largest images are
about 4k x 4k): a bigger Height x Width is refused rather than allocated."""
ID_COLUMNS: tuple[str, ...] = ("dicom_id", "Path")
RLE_COLUMNS: dict[str, str] = {
    "left_lung_mask_path": "Left Lung",
    "right_lung_mask_path": "Right Lung",
    "heart_mask_path": "Heart",
}
"""Manifest column -> CheXmask RLE column."""
QUALITY_COLUMN = "Dice RCA (Mean)"
DEFAULT_MIN_DICE = 0.7
MASK_FOLDERS: dict[str, str] = {
    "lung_mask_path": "lungs",
    "left_lung_mask_path": "left_lung",
    "right_lung_mask_path": "right_lung",
    "heart_mask_path": "heart",
}


def decode_rle(rle: str, height: int, width: int) -> np.ndarray:
    """Decode a CheXmask RLE string into a mask.

    Parameters
    ----------
    rle : str
        ``"start length start length ..."``; starts are 1-indexed positions in the
        row-major flattened mask. Empty string: empty mask.
    height, width : int
        Mask shape in pixels.

    Returns
    -------
    numpy.ndarray
        Shape ``(height, width)``, dtype bool.

    Raises
    ------
    CxrError
        Non-integer tokens, an odd count, a start below 1, a length below 1, a run
        past the end of the mask, or a mask over :data:`MAX_MASK_PIXELS`.
    """
    if height <= 0 or width <= 0:
        raise CxrError(f"mask size must be positive, got {height}x{width}")
    size = height * width
    if size > MAX_MASK_PIXELS:
        raise CxrError(f"mask size {height}x{width} is over {MAX_MASK_PIXELS} pixels")
    tokens = rle.split()
    if not tokens:
        return np.zeros((height, width), dtype=bool)
    if len(tokens) % 2:
        raise CxrError(f"RLE has an odd number of values ({len(tokens)})")
    try:
        runs = np.array(tokens, dtype=np.int64).reshape(-1, 2)  # (n_runs, 2): start, length
    except ValueError:
        raise CxrError("RLE has a non-integer value") from None
    except OverflowError:
        raise CxrError("RLE has a value past the 64-bit integer range") from None
    starts, lengths = runs[:, 0] - 1, runs[:, 1]
    if (starts < 0).any() or (lengths < 1).any():
        raise CxrError("RLE starts must be >= 1 and lengths >= 1")
    if (starts >= size).any() or (lengths > size).any():  # also keeps starts + lengths exact
        raise CxrError(f"RLE run starts or runs past the end of the {height}x{width} mask")
    ends = starts + lengths
    if ends.max() > size:
        raise CxrError(f"RLE run ends at pixel {int(ends.max())}, past {height}x{width}")
    delta = np.zeros(size + 1, dtype=np.int32)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    return (np.cumsum(delta[:size]) > 0).reshape(height, width)


def encode_rle(mask: np.ndarray) -> str:
    """Encode a mask in the CheXmask RLE convention (inverse of :func:`decode_rle`).

    Parameters
    ----------
    mask : numpy.ndarray
        Shape ``(H, W)``; nonzero pixels are inside.

    Returns
    -------
    str
        ``"start length ..."`` with 1-indexed row-major starts; ``""`` for an empty mask.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    flat = np.concatenate(([0], (mask.reshape(-1) != 0).astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(flat))  # run starts and ends, 0-indexed, alternating
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends, strict=True))


def chexmask_key(value: str) -> str:
    """The manifest ``image_id`` a CheXmask id cell refers to.

    ``dicom_id`` values are returned as they are; CheXpert paths lose an image suffix
    and a leading ``CheXpert-v1.0*/`` folder.
    """
    value = value.strip()
    path = PurePosixPath(value)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        path = path.with_suffix("")
    parts = path.parts
    if len(parts) > 1 and parts[0].lower().startswith("chexpert-v1.0"):
        parts = parts[1:]
    return "/".join(parts)


def _rebase(cell: object, old_root: Path | str, new_root: Path) -> object:
    if not isinstance(cell, str) or not cell.strip() or os.path.isabs(cell) or is_url(cell):
        return cell
    if is_url(old_root):  # a manifest at a URL: its relative cells become URLs
        return resolve(old_root, cell)
    return relative_to(old_root / cell, new_root)


def _read_source(manifest: str | os.PathLike) -> Manifest:
    """The input manifest; CxrError with its first problem (and how many more)."""
    try:
        return read_manifest(manifest)
    except ManifestError as err:  # one line: the first problem and how many there are
        more = f" (and {len(err.problems) - 1} more)" if len(err.problems) > 1 else ""
        raise CxrError(f"invalid --manifest: {err.problems[0]}{more}") from None


def _id_column(csv: Path, row: dict[str, str]) -> str:
    """The CSV's id column (``dicom_id`` or ``Path``); CxrError when it has neither."""
    id_column = next((c for c in ID_COLUMNS if c in row), None)
    if id_column is None:
        raise CxrError(f"{csv}:1: no id column (expected one of {', '.join(ID_COLUMNS)})")
    return id_column


def _decode_all(
    csv: Path, df: pd.DataFrame, root: Path, out_dir: Path, min_dice: float
) -> tuple[dict[int, dict[str, object]], dict[int, tuple[str, str]]]:
    """Write the masks of every CheXmask row whose image is in the manifest.

    Returns
    -------
    (dict, dict)
        Manifest row number -> the mask cells of its attached masks, and manifest row
        number -> ``(reason, where)`` for rows with a CheXmask row but no masks.
    """
    index = {image_id: i for i, image_id in enumerate(df["image_id"].astype(str))}
    attached: dict[int, dict[str, object]] = {}
    reasons: dict[int, tuple[str, str]] = {}
    seen: dict[str, int] = {}
    rows = iter_csv(csv, (QUALITY_COLUMN, *RLE_COLUMNS.values(), "Height", "Width"))
    id_column: str | None = None
    for line, row in tqdm(rows, desc="chexmask", unit="row", disable=None):
        where = f"{csv}:{line}"
        if id_column is None:
            id_column = _id_column(csv, row)
        key = chexmask_key(row[id_column])
        if key in seen:
            raise CxrError(f"{where}: duplicate {id_column} {row[id_column]!r} (line {seen[key]})")
        seen[key] = line
        i = index.get(key)
        if i is None:
            continue
        image = str(df["image_path"].iloc[i]).strip()
        outcome = _masks_of(
            row, key, where, resolve(root, image) if image else None, out_dir, min_dice
        )
        if isinstance(outcome, tuple):
            reasons[i] = outcome
        else:
            attached[i] = outcome
    return attached, reasons


def _masks_of(
    row: dict[str, str],
    key: str,
    where: str,
    image: Path | None,
    out_dir: Path,
    min_dice: float,
) -> dict[str, object] | tuple[str, str]:
    """Decode and write one CheXmask row's masks: their manifest cells (paths relative
    to ``out_dir`` and ``chexmask_dice``), or ``(reason, where)`` when none are written."""
    try:
        height, width = int(row["Height"]), int(row["Width"])
        dice = float(row[QUALITY_COLUMN])
    except ValueError:
        raise CxrError(f"{where}: Height/Width/{QUALITY_COLUMN} not numeric") from None
    if not dice >= min_dice:
        return ("below_quality_threshold", f"{where}: {QUALITY_COLUMN} {dice:.3f}")
    if image is not None and image_size(image) != (height, width):
        return ("size_mismatch", f"{where}: CheXmask {width}x{height}, image differs")
    masks = {}
    for column, rle_column in RLE_COLUMNS.items():
        try:
            masks[column] = decode_rle(row[rle_column], height, width)
        except CxrError as err:
            raise CxrError(f"{where}: column {rle_column!r}: {err}") from None
    if not all(m.any() for m in masks.values()):
        return ("empty_rle", f"{where}: an empty RLE mask")
    masks["lung_mask_path"] = masks["left_lung_mask_path"] | masks["right_lung_mask_path"]
    name = safe_relative_id(key) + ".png"
    paths = {
        column: write_binary_mask(masks[column], out_dir / "masks" / folder / name)
        for column, folder in MASK_FOLDERS.items()
    }
    cells: dict[str, object] = {c: relative_to(p, out_dir) for c, p in paths.items()}
    cells["chexmask_dice"] = dice
    return cells


def _rebased(df: pd.DataFrame, root: Path, out_dir: Path) -> pd.DataFrame:
    """A copy of ``df`` with its paths rebased from ``root`` to ``out_dir`` and the mask
    columns and ``chexmask_dice`` present (blank), as object columns."""
    result = df.copy()
    for column in ("image_path", *MASK_COLUMNS, FINDING_MASK_COLUMN):
        if column in result.columns:
            result[column] = [_rebase(c, root, out_dir) for c in result[column]]
    for column in (*MASK_FOLDERS, "chexmask_dice"):
        if column not in result.columns:
            result[column] = ""
        result[column] = result[column].astype(object)
    return result


def _fill_and_select(
    result: pd.DataFrame,
    attached: dict[int, dict[str, object]],
    reasons: dict[int, tuple[str, str]],
    manifest: str | os.PathLike,
    drop_unmasked: bool,
    summary: AdapterSummary,
) -> pd.DataFrame:
    """Fill in the attached masks; rows without are counted per reason, and dropped
    when ``drop_unmasked``."""
    keep = []
    for i in range(len(result)):
        if i in attached:
            for column, value in attached[i].items():
                result.at[result.index[i], column] = value
            summary.count("masks_attached")
            keep.append(True)
            continue
        reason, where = reasons.get(
            i, ("no_chexmask_row", f"{manifest}:{i + 2}: {result['image_id'].iloc[i]}")
        )
        if drop_unmasked:
            summary.drop(reason, where)
            keep.append(False)
        else:
            summary.count(reason)
            keep.append(True)
    return result[keep].reset_index(drop=True)


def attach_masks(
    csv: str | os.PathLike,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    min_dice: float = DEFAULT_MIN_DICE,
    drop_unmasked: bool = False,
    allow_in_repo: bool = False,
) -> AdapterSummary:
    """Decode CheXmask masks for a manifest's images and write the extended manifest.

    Parameters
    ----------
    csv : path-like
        A CheXmask CSV (``.csv`` or ``.csv.gz``), original-resolution version.
    manifest : path-like
        A manifest whose ``image_id`` values are MIMIC-CXR dicom_ids or CheXpert paths
        without suffix (as written by ``cxr manifest mimic-cxr|chexpert-plus``).
    out : path-like
        Output folder: ``masks/`` and ``manifest.csv`` (+ ``.summary.json``). Refused
        inside a git work tree unless ``allow_in_repo``.
    min_dice : float
        Minimum ``Dice RCA (Mean)``; images below get no masks.
    drop_unmasked : bool
        Drop manifest rows that end up without masks (counted per reason).
    allow_in_repo : bool
        Permit writing inside a git work tree.

    Returns
    -------
    AdapterSummary
        Rows kept, rows without masks per reason (dropped or counted).
    """
    csv = Path(csv)
    out_dir = Path(out)
    if out_dir.is_file():
        raise CxrError(f"{out_dir}: --out must be a folder")
    if not math.isfinite(min_dice) or not 0.0 <= min_dice <= 1.0:
        raise CxrError(f"--min-dice must be in [0, 1], got {min_dice}")
    out_manifest = check_out_path(
        out_dir / "manifest.csv", dataset=DATASET, allow_in_repo=allow_in_repo
    )
    source = _read_source(manifest)
    summary = AdapterSummary(
        DATASET,
        unit="image",
        options={
            "csv": str(csv),
            "manifest": str(manifest),
            "min_dice": min_dice,
            "drop_unmasked": drop_unmasked,
        },
    )
    attached, reasons = _decode_all(csv, source.frame, source.root, out_dir, min_dice)
    result = _rebased(source.frame, source.root, out_dir)
    result = _fill_and_select(result, attached, reasons, manifest, drop_unmasked, summary)
    return finish(result, out_manifest, summary)
