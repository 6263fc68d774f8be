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
from tqdm import tqdm

from cxrlib.base.errors import CxrError, ManifestError
from cxrlib.base.masks import write_binary_mask
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
from cxrlib.data.manifest import FINDING_MASK_COLUMN, MASK_COLUMNS, read_manifest, resolve

DATASET = "chexmask"
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
    ValueError
        Non-integer tokens, an odd count, a start below 1, a length below 1, or a run
        past the end of the mask.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size must be positive, got {height}x{width}")
    size = height * width
    tokens = rle.split()
    if not tokens:
        return np.zeros((height, width), dtype=bool)
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of values ({len(tokens)})")
    try:
        runs = np.array(tokens, dtype=np.int64).reshape(-1, 2)  # (n_runs, 2): start, length
    except ValueError:
        raise ValueError("RLE has a non-integer value") from None
    starts, lengths = runs[:, 0] - 1, runs[:, 1]
    if (starts < 0).any() or (lengths < 1).any():
        raise ValueError("RLE starts must be >= 1 and lengths >= 1")
    ends = starts + lengths
    if ends.max() > size:
        raise ValueError(f"RLE run ends at pixel {int(ends.max())}, past {height}x{width}")
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


def _rebase(cell: object, old_root: Path, new_root: Path) -> object:
    if not isinstance(cell, str) or not cell.strip() or os.path.isabs(cell):
        return cell
    return relative_to(old_root / cell, new_root)


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
    try:
        source = read_manifest(manifest)
    except ManifestError as err:  # one line: the first problem and how many there are
        more = f" (and {len(err.problems) - 1} more)" if len(err.problems) > 1 else ""
        raise CxrError(f"invalid --manifest: {err.problems[0]}{more}") from None
    df, root = source.frame, source.root
    index = {image_id: i for i, image_id in enumerate(df["image_id"].astype(str))}
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
    attached: dict[int, dict[str, object]] = {}
    reasons: dict[int, tuple[str, str]] = {}
    seen: dict[str, int] = {}
    rows = iter_csv(csv, (QUALITY_COLUMN, *RLE_COLUMNS.values(), "Height", "Width"))
    id_column: str | None = None
    for line, row in tqdm(rows, desc="chexmask", unit="row", disable=None):
        where = f"{csv}:{line}"
        if id_column is None:
            id_column = next((c for c in ID_COLUMNS if c in row), None)
            if id_column is None:
                raise CxrError(f"{csv}:1: no id column (expected one of {', '.join(ID_COLUMNS)})")
        key = chexmask_key(row[id_column])
        if key in seen:
            raise CxrError(f"{where}: duplicate {id_column} {row[id_column]!r} (line {seen[key]})")
        seen[key] = line
        i = index.get(key)
        if i is None:
            continue
        try:
            height, width = int(row["Height"]), int(row["Width"])
            dice = float(row[QUALITY_COLUMN])
        except ValueError:
            raise CxrError(f"{where}: Height/Width/{QUALITY_COLUMN} not numeric") from None
        if not dice >= min_dice:
            reasons[i] = ("below_quality_threshold", f"{where}: {QUALITY_COLUMN} {dice:.3f}")
            continue
        image_path = str(df["image_path"].iloc[i]).strip()
        if image_path and image_size(resolve(root, image_path)) != (height, width):
            reasons[i] = ("size_mismatch", f"{where}: CheXmask {width}x{height}, image differs")
            continue
        masks = {}
        for column, rle_column in RLE_COLUMNS.items():
            try:
                masks[column] = decode_rle(row[rle_column], height, width)
            except ValueError as err:
                raise CxrError(f"{where}: column {rle_column!r}: {err}") from None
        if not all(m.any() for m in masks.values()):
            reasons[i] = ("empty_rle", f"{where}: an empty RLE mask")
            continue
        masks["lung_mask_path"] = masks["left_lung_mask_path"] | masks["right_lung_mask_path"]
        name = safe_relative_id(key) + ".png"
        paths = {
            column: write_binary_mask(masks[column], out_dir / "masks" / folder / name)
            for column, folder in MASK_FOLDERS.items()
        }
        attached[i] = {c: relative_to(p, out_dir) for c, p in paths.items()}
        attached[i]["chexmask_dice"] = dice

    result = df.copy()  # paths rebased from the input manifest's folder to out_dir
    for column in ("image_path", *MASK_COLUMNS, FINDING_MASK_COLUMN):
        if column in result.columns:
            result[column] = [_rebase(c, root, out_dir) for c in result[column]]
    for column in (*MASK_FOLDERS, "chexmask_dice"):
        if column not in result.columns:
            result[column] = ""
        result[column] = result[column].astype(object)
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
    result = result[keep].reset_index(drop=True)
    return finish(result, out_manifest, summary)
