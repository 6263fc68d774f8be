"""The phantom dataset: synthetic frontal chest radiographs whose ground truth is known.

One :class:`~cxrlib.data.phantom.findings.PhantomStudy` per study is the single source
of truth: :mod:`~cxrlib.data.phantom.render` draws it (image and exact masks),
:func:`~cxrlib.data.phantom.findings.labels` gives its CheXpert values and
:mod:`~cxrlib.data.phantom.text` writes its Findings. :func:`write_phantom` writes a
whole dataset in the manifest schema.

Layout of ``write_phantom(out, ...)``::

    out/manifest.csv                   one row per image (schema + attribute columns)
    out/phantom.json                   arguments, generator version, provenance
    out/images/<image_id>.png          8-bit grayscale radiograph
    out/masks/lungs/<image_id>.png     both lungs, 0/255
    out/masks/left_lung/<image_id>.png patient's left lung (image right), 0/255
    out/masks/right_lung/<image_id>.png
    out/masks/heart/<image_id>.png
    out/masks/findings/<image_id>.png  16-bit: bit k set where the drawn region of
                                       CHEXPERT_LABELS[k] covers the pixel

Every study draws from its own random streams, seeded by ``(seed, index)``, so the
output is byte-identical for the same arguments, whatever the number of workers.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from cxrlib.base.cache import build_once
from cxrlib.base.errors import CxrError
from cxrlib.base.io import read_json_object, write_json_atomic
from cxrlib.base.provenance import provenance
from cxrlib.data.manifest import (
    CHEXPERT_LABELS,
    FINDING_MASK_COLUMN,
    assign_split,
    format_label,
    write_manifest,
)
from cxrlib.data.phantom.findings import (
    PhantomStudy,
    attribute_columns,
    attributes,
    labels,
    sample_study,
)
from cxrlib.data.phantom.render import render
from cxrlib.data.phantom.text import findings_text

PHANTOM_VERSION = "2"
"""Bumped whenever the same arguments would draw different files (images, text, masks).

2: the finding regions (``masks/findings/``, ``finding_mask_path``); images unchanged.
"""

AP_FRACTION_WITH_DEVICES = 0.6
AP_FRACTION = 0.15

__all__ = ["PHANTOM_VERSION", "PhantomSummary", "make_study_row", "phantom_study", "write_phantom"]


@dataclass
class PhantomSummary:
    """What :func:`write_phantom` wrote."""

    out: Path
    n: int
    seconds: float
    splits: dict[str, int] = field(default_factory=dict)
    positives: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        rate = self.n / self.seconds if self.seconds > 0 else float("inf")
        splits = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        return (
            f"wrote {self.n} phantom images to {self.out} in {self.seconds:.1f} s "
            f"({rate:.0f} images/s); splits: {splits}; manifest: {self.out / 'manifest.csv'}"
        )


def _study_ids(seed: int, index: int) -> tuple[str, str, str]:
    study_id = f"ph{seed}-{index:06d}"
    return study_id, f"{study_id}-frontal", f"php{seed}-{index:06d}"


def phantom_study(index: int, seed: int) -> PhantomStudy:
    """Study ``index`` of the dataset with ``seed`` (what :func:`write_phantom` draws)."""
    study_id, _, _ = _study_ids(seed, index)
    return sample_study(study_id, np.random.default_rng([seed, index, 0]))


def make_study_row(index: int, seed: int, size: int, out: Path | None) -> dict:
    """Sample, draw and (when ``out`` is given) write study ``index``; its manifest row.

    Parameters
    ----------
    index, seed : int
        Study number and dataset seed; together they seed every random choice.
    size : int
        Image side in pixels.
    out : Path or None
        Dataset folder; None draws without writing (benchmarks, tests).

    Returns
    -------
    dict
        The manifest row: schema columns, labels as floats, attributes and ``ctr``.
    """
    study_id, image_id, patient_id = _study_ids(seed, index)
    rng = np.random.default_rng([seed, index, 0])
    study = sample_study(study_id, rng)  # == phantom_study(index, seed); rng continues below
    drawn = render(study, size)
    text = findings_text(study, np.random.default_rng([seed, index, 1]))
    has_devices = bool(study.of("Support Devices"))
    p_ap = AP_FRACTION_WITH_DEVICES if has_devices else AP_FRACTION
    view = "AP" if rng.random() < p_ap else "PA"
    paths = {
        "image_path": f"images/{image_id}.png",
        "lung_mask_path": f"masks/lungs/{image_id}.png",
        "left_lung_mask_path": f"masks/left_lung/{image_id}.png",
        "right_lung_mask_path": f"masks/right_lung/{image_id}.png",
        "heart_mask_path": f"masks/heart/{image_id}.png",
        FINDING_MASK_COLUMN: f"masks/findings/{image_id}.png",
    }
    if out is not None:
        lungs = drawn.masks["left_lung"] | drawn.masks["right_lung"]
        arrays = {
            "image_path": drawn.image,
            "lung_mask_path": lungs,
            "left_lung_mask_path": drawn.masks["left_lung"],
            "right_lung_mask_path": drawn.masks["right_lung"],
            "heart_mask_path": drawn.masks["heart"],
            FINDING_MASK_COLUMN: drawn.region_bits(),  # uint16, saved as 16-bit PNG
        }
        for col, array in arrays.items():
            pixels = array if array.dtype != bool else array.astype(np.uint8) * 255
            # zlib level 1: 3x faster than the default for a few % more bytes
            Image.fromarray(pixels).save(out / paths[col], compress_level=1)
    row = {
        "study_id": study_id,
        "image_id": image_id,
        "image_path": paths["image_path"],
        "view": view,
        "split": assign_split(study_id, seed),
        "findings": text,
        **labels(study),
        "patient_id": patient_id,
        **{k: v for k, v in paths.items() if k != "image_path"},
        "ctr": f"{drawn.ctr:.4f}",
        **attributes(study),
    }
    return row


def _rows(args: tuple[int, int, int, int, str]) -> list[dict]:
    start, stop, seed, size, out = args
    return [make_study_row(i, seed, size, Path(out)) for i in range(start, stop)]


def write_phantom(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    size: int = 256,
    workers: int = 1,
    progress: bool = True,
) -> PhantomSummary:
    """Write a phantom dataset of ``n`` images to ``out`` (see the module docstring).

    Parameters
    ----------
    out : path-like
        Output folder, created if missing. Existing files of the same names are replaced.
    n : int
        Number of images (one per study), >= 1.
    seed : int
        Dataset seed; same arguments give byte-identical files.
    size : int
        Image side in pixels (>= 32).
    workers : int
        Processes drawing in parallel; the output does not depend on it.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    PhantomSummary
    """
    if n < 1:
        raise CxrError(f"n must be >= 1, got {n}")
    if size < 32:
        raise CxrError(f"size must be >= 32, got {size}")
    if workers < 1:
        raise CxrError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    for sub in (
        "images",
        "masks/lungs",
        "masks/left_lung",
        "masks/right_lung",
        "masks/heart",
        "masks/findings",
    ):
        (out / sub).mkdir(parents=True, exist_ok=True)

    start_time = time.perf_counter()
    chunk = 25
    jobs = [(i, min(i + chunk, n), seed, size, str(out)) for i in range(0, n, chunk)]
    rows: list[dict] = []
    bar = tqdm(total=n, desc="phantom", unit="img", disable=not progress)
    if workers == 1:
        for job in jobs:
            rows += _rows(job)
            bar.update(job[1] - job[0])
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for job, part in zip(jobs, pool.map(_rows, jobs), strict=True):
                rows += part
                bar.update(job[1] - job[0])
    bar.close()

    df = pd.DataFrame(rows)
    df = df[[c for c in df.columns if c not in attribute_columns()] + attribute_columns()]
    write_manifest(df, out / "manifest.csv")
    meta = {
        "generator": "cxrlib.data.phantom",
        "phantom_version": PHANTOM_VERSION,
        "n": n,
        "seed": seed,
        "size": size,
        "provenance": provenance(),
    }
    write_json_atomic(out / "phantom.json", meta, sort_keys=True)

    positives = Counter()
    for label in CHEXPERT_LABELS:
        positives[label] = int((df[label].map(format_label) == "1").sum())
    return PhantomSummary(
        out=out,
        n=n,
        seconds=time.perf_counter() - start_time,
        splits={s: int((df["split"] == s).sum()) for s in ("train", "validate", "test")},
        positives=dict(positives),
    )


@dataclass(frozen=True)
class PhantomSpec:
    """Arguments of the phantom dataset a profile runs on."""

    n: int
    seed: int = 0
    size: int = 224

    @property
    def name(self) -> str:
        return f"phantom-n{self.n}-seed{self.seed}-size{self.size}-v{PHANTOM_VERSION}"


def prepare_phantom(spec: PhantomSpec, cache: Path, workers: int = 1) -> Path:
    """The phantom manifest for ``spec``, generated once and reused from ``cache``.

    The cache folder is named by every argument and the generator version; it is reused
    only when its ``phantom.json`` records the same arguments. Two processes asking at
    once generate it once (:func:`~cxrlib.base.cache.build_once`: the other waits, then
    reuses it); the folder appears complete or not at all.
    """
    folder = Path(cache) / spec.name

    def build(tmp: Path) -> None:
        write_phantom(tmp, n=spec.n, seed=spec.seed, size=spec.size, workers=workers)

    build_once(folder, lambda f: _phantom_is_complete(f, spec), build)
    return folder / "manifest.csv"


def _phantom_is_complete(folder: Path, spec: PhantomSpec) -> bool:
    meta_path = folder / "phantom.json"
    if not (meta_path.is_file() and (folder / "manifest.csv").is_file()):
        return False
    meta = read_json_object(meta_path) or {}
    same = (meta.get("n"), meta.get("seed"), meta.get("size"), meta.get("phantom_version"))
    return same == (spec.n, spec.seed, spec.size, PHANTOM_VERSION)
