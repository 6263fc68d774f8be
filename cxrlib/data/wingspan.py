"""Wingspan (Extended Wingspan CTR estimation dataset) -> manifest with organ masks.

Input layout (``../shared/data/wingspan``; MIT license, Copyright (c) 2020 Nanqing Dong)::

    ROOT/
      png/<id>.png                                   512x512 8-bit PA chest radiographs
      mask/{left_lung,right_lung,heart}/<id>.png     manual masks, same file name
      ctr.csv                                        id,ctr (id is the file name <id>.png)

Source: Dong et al., "Unsupervised domain adaptation for automatic estimation of
cardiothoracic ratio", MICCAI 2018; Dong et al., "Neural architecture search for
adversarial medical image segmentation", MICCAI 2019. Cite both with any result.

One row per image: ``study_id`` = ``image_id`` = ``<id>`` (file name without
``.png``), ``view`` ``"PA"``, ``findings`` empty (no reports), labels blank, ``split``
:func:`cxrlib.data.manifest.assign_split` of the id with ``seed``; ``ctr`` (extra
column) from ``ctr.csv``, blank where the image has none. ``left_lung_mask_path``,
``right_lung_mask_path`` and ``heart_mask_path`` point at the original files
(anti-aliased 0..255; threshold ``> 127``; ``left_lung`` is the PATIENT's left, the
image's right); ``lung_mask_path`` is the union of the two thresholded lungs, written
as a 0/255 PNG to ``<out stem>_masks/lungs/<id>.png`` beside the manifest.

Dropped images are counted under the first reason that applies:
``unreadable_image``, ``missing_mask``, ``unreadable_mask``, ``mask_size_mismatch``,
``empty_mask`` (a mask with no pixel above the threshold).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from cxrlib.base.errors import CxrError
from cxrlib.base.masks import load_mask, write_binary_mask
from cxrlib.data.adapters import (
    AdapterSummary,
    blank_labels,
    check_out_path,
    finish,
    image_readable,
    image_size,
    iter_csv,
    relative_to,
)
from cxrlib.data.manifest import assign_split

DATASET = "wingspan"
MASK_FOLDERS: dict[str, str] = {
    "left_lung_mask_path": "left_lung",
    "right_lung_mask_path": "right_lung",
    "heart_mask_path": "heart",
}
"""Manifest column -> folder under ``ROOT/mask/``."""
MASK_THRESHOLD = 127
"""Mask pixels ``> MASK_THRESHOLD`` are inside the organ."""


def read_ctr(path: str | os.PathLike) -> dict[str, float]:
    """``{image id: ctr}`` from ``ctr.csv`` (``id,ctr``); the id's ``.png`` suffix is removed.

    Raises
    ------
    CxrError
        A non-numeric or non-positive ctr, a duplicate id (naming file and line).
    """
    table: dict[str, float] = {}
    for line, row in iter_csv(path, ("id", "ctr")):
        where = f"{path}:{line}"
        image_id = row["id"].strip().removesuffix(".png")
        try:
            value = float(row["ctr"])
        except ValueError:
            raise CxrError(f"{where}: column 'ctr': {row['ctr']!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise CxrError(f"{where}: column 'ctr': {row['ctr']!r} is not a positive ratio")
        if not image_id or image_id in table:
            raise CxrError(f"{where}: column 'id': {row['id']!r} is empty or repeated")
        table[image_id] = value
    return table


def build_manifest(
    root: str | os.PathLike, out: str | os.PathLike, *, seed: int = 0
) -> AdapterSummary:
    """Write the Wingspan manifest and the union lung masks (see the module docstring).

    Parameters
    ----------
    root : path-like
        The wingspan folder (``png/``, ``mask/``, ``ctr.csv``).
    out : path-like
        Manifest path; lung masks go to ``<out stem>_masks/lungs/`` beside it.
    seed : int
        Split seed.

    Returns
    -------
    AdapterSummary
        Rows kept and dropped per reason; also written to ``<out>.summary.json``.
    """
    root = Path(root)
    out = check_out_path(out, dataset=DATASET)
    image_dir = root / "png"
    if not image_dir.is_dir():
        raise CxrError(f"{image_dir}: Wingspan image folder does not exist")
    for folder in MASK_FOLDERS.values():
        if not (root / "mask" / folder).is_dir():
            raise CxrError(f"{root / 'mask' / folder}: Wingspan mask folder does not exist")
    ctr_path = root / "ctr.csv"
    ctr = read_ctr(ctr_path) if ctr_path.is_file() else {}
    lung_dir = out.parent / f"{out.stem}_masks" / "lungs"
    summary = AdapterSummary(
        DATASET,
        unit="image",
        options={"root": str(root), "seed": seed, "mask_threshold": MASK_THRESHOLD},
    )
    if not ctr_path.is_file():
        summary.count("ctr_file_absent")

    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    out_dir = out.parent
    rows: list[dict[str, object]] = []
    for image in tqdm(images, desc="wingspan", unit="image", disable=None):
        image_id = image.stem
        problem = image_readable(image)
        if problem is not None:
            summary.drop("unreadable_image", f"{image}: {problem}")
            continue
        shape = image_size(image)
        masks = {col: root / "mask" / folder / image.name for col, folder in MASK_FOLDERS.items()}
        missing = [str(p) for p in masks.values() if not p.is_file()]
        if missing:
            summary.drop("missing_mask", f"{image}: no {missing[0]}")
            continue
        arrays = {}
        reason = None
        for col, path in masks.items():
            problem = image_readable(path)
            if problem is not None:
                reason = ("unreadable_mask", f"{path}: {problem}")
                break
            arrays[col] = load_mask(path, MASK_THRESHOLD)
            if arrays[col].shape != shape:
                reason = (
                    "mask_size_mismatch",
                    f"{path}: {arrays[col].shape[1]}x{arrays[col].shape[0]}, "
                    f"image {shape[1]}x{shape[0]}",
                )
                break
            if not arrays[col].any():
                reason = ("empty_mask", f"{path}: no pixel > {MASK_THRESHOLD}")
                break
        if reason is not None:
            summary.drop(*reason)
            continue
        lungs = arrays["left_lung_mask_path"] | arrays["right_lung_mask_path"]  # (H, W) bool
        lung_path = write_binary_mask(lungs, lung_dir / f"{image_id}.png")
        value = ctr.get(image_id)
        summary.count("with_ctr", int(value is not None))
        rows.append(
            {
                "study_id": image_id,
                "image_id": image_id,
                "image_path": relative_to(image, out_dir),
                "view": "PA",
                "split": assign_split(image_id, seed),
                "findings": "",
                **blank_labels(),
                "lung_mask_path": relative_to(lung_path, out_dir),
                **{col: relative_to(path, out_dir) for col, path in masks.items()},
                "ctr": value if value is not None else float("nan"),
            }
        )
    stems = {p.stem for p in images}
    summary.count("ctr_without_image", sum(1 for k in ctr if k not in stems))
    return finish(pd.DataFrame(rows), out, summary)
