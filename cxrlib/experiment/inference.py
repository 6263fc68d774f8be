"""Single-image inference: Findings for any radiograph, ``report_images(paths, run)``
and ``cxr report``.

For each image: read it (PNG / JPEG / 16-bit PNG, and DICOM when ``pydicom`` is
installed, with its VOI windowing and MONOCHROME1 inverted), take lung and heart masks
(the segmenter the run used, a folder of masks, or none: a uniform prior, said in the
output), build the model's inputs with that run's prior settings
(:func:`cxrlib.training.inputs.image_inputs_for`), generate the Findings, label them with the
project's labeler (14 labels and sides) and draw where each sentence attended (the
figure of notebook 06). One JSON Lines record per image goes to ``reports.jsonl``.

A file that cannot be read (missing, empty, truncated, not an image) or a mask of the
wrong size fails that image alone, with one line naming the file and the reason; the
others are still reported (:class:`ReportSummary` counts the failures).

Masks folder layout (``masks=DIR``): ``DIR/<structure>/<image file stem>.png`` for
``left_lung``, ``right_lung`` and ``heart`` (the phantom's ``masks/`` layout), each the
size of its image.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxrlib.anatomy.segmenter import Segmenter
from cxrlib.base import storage
from cxrlib.base.errors import CxrError
from cxrlib.base.images import load_image, stretch_to_uint8
from cxrlib.base.io import read_json_object, write_atomic
from cxrlib.base.masks import load_mask
from cxrlib.experiment.figures import outline_masks, plot_sentence_attention
from cxrlib.experiment.workbook import segmenter_folder
from cxrlib.metrics.labeler import LATERALITY_COLUMNS, label_report
from cxrlib.model.explain import sentence_attention
from cxrlib.training.generate import load_run
from cxrlib.training.inputs import image_inputs_for, prior_settings

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
MASK_STRUCTURES = ("left_lung", "right_lung", "heart")
REPORTS_FILE = "reports.jsonl"
EXPORTED_SEGMENTER = "segmenter"
"""The segmenter's folder inside an exported model folder (``cxr export``)."""


@dataclass
class ImageReport:
    """What ``cxr report`` says of one image (one line of ``reports.jsonl``)."""

    image: str
    findings: str
    # the 14 CheXpert labels: positive / negative / uncertain, or None (not mentioned)
    labels: dict[str, str | None]
    # laterality of each lateral finding the Findings name (left / right / bilateral /
    # unspecified)
    sides: dict[str, str]
    # where the masks came from: "segmenter <folder>", "masks <folder>", or "none
    # (uniform prior)"; the run's mode is "none": "not used (mode none)"
    masks: str
    attention_png: str | None
    seconds: float


@dataclass
class ReportSummary:
    """Every image's report, and the images that failed (path, one-line reason)."""

    reports: list[ImageReport] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    out: Path | None = None


LABEL_WORDS = {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}
"""A label value's word (the manifest's 1 / 0 / -1)."""


def label_word(value: object) -> str | None:
    """:data:`LABEL_WORDS` of a label value; None for a blank one (None, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return LABEL_WORDS.get(float(value), str(value))


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Image paths from files, folders (their images, sorted) and glob patterns.

    A path that matches nothing is kept as given: it fails later with its own line.
    """
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif any(c in str(item) for c in "*?["):
            anchor = Path(path.anchor) if path.is_absolute() else Path(".")
            pattern = str(path.relative_to(path.anchor)) if path.is_absolute() else str(item)
            matches = sorted(anchor.glob(pattern))
            out += matches if matches else [path]
        else:
            out.append(path)
    return out


def _dicom_gray(path: Path) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_voi_lut
    except ImportError:
        raise CxrError(
            f"{path}: a DICOM file; install pydicom to read it (pip install pydicom)"
        ) from None
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many kinds for a bad file
        raise CxrError(f"{path}: not a readable DICOM file ({err})") from None
    if pixels.ndim != 2:
        raise CxrError(f"{path}: DICOM pixel data of shape {pixels.shape}, expected 2-D")
    gray = stretch_to_uint8(apply_voi_lut(pixels, ds))
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1: high values are dark
    return gray


def read_radiograph(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 (H, W) grayscale (colour to luminance, 16-bit stretched).

    Raises
    ------
    CxrError
        One line naming the file: missing, empty, or not a readable image.
    """
    if storage.is_url(path):  # a manifest cell naming a URL: PNG / JPEG through fsspec
        return load_image(path)
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise CxrError(f"{path}: empty file")
    with open(path, "rb") as f:
        head = f.read(132)
    if path.suffix.lower() in (".dcm", ".dicom") or head[128:132] == b"DICM":
        return _dicom_gray(path)
    return load_image(path)


def _folder_masks(folder: Path, image: Path, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    masks = {}
    for name in MASK_STRUCTURES:
        path = folder / name / f"{image.stem}.png"
        if not path.is_file():
            raise CxrError(f"{path}: mask not found (masks folder layout: DIR/{name}/<stem>.png)")
        mask = load_mask(path)
        if mask.shape != shape:
            raise CxrError(
                f"{path}: mask of size {mask.shape[1]}x{mask.shape[0]}, "
                f"the image {image.name} is {shape[1]}x{shape[0]}"
            )
        masks[name] = mask.astype(bool)[None]
    return masks


def run_segmenter(run: str | os.PathLike, config) -> Path | None:
    """The segmenter a run used: the one shipped inside an exported model folder
    (``segmenter/``), else its config's ``priors.segmenter``, else the one the workbook
    run around it trained (``run.json`` timings, or while that run is still going, the
    folder its notebook 02 printed), else None."""
    shipped = Path(run) / EXPORTED_SEGMENTER
    if (shipped / "model.safetensors").is_file():
        return shipped
    if config.priors.segmenter:
        return Path(config.priors.segmenter)
    here = Path(run).resolve()
    for folder in [here, *here.parents][:4]:
        record = folder / "run.json"
        if record.is_file():
            tree = read_json_object(record)
            if tree is None:
                return None
            source = tree.get("timings", {}).get("segmenter_training", {}).get("source")
            path = Path(source).parent if source else segmenter_folder(folder, tree)
            return path if path and (path / "model.safetensors").is_file() else None
    return None


class Reporter:
    """A loaded run (model, prior settings, mask source) that reports image after image."""

    def __init__(
        self,
        run: str | os.PathLike,
        *,
        masks: str | os.PathLike = "segmenter",
        segmenter: str | os.PathLike | None = None,
        device: str = "cpu",
    ):
        self.config, self.model, self.checkpoint = load_run(run)
        self.model.to(device)
        self.device = torch.device(device)
        self.prior_config = prior_settings(self.config, self.model)
        self.segmenter = None
        self.mask_folder: Path | None = None
        if self.model.config.mode == "none":
            self.masks = "not used (mode none)"
        elif str(masks) == "none":
            self.masks = "none (uniform prior)"
        elif str(masks) == "segmenter":
            folder = Path(segmenter) if segmenter is not None else run_segmenter(run, self.config)
            if folder is None:
                raise CxrError(
                    f"{run}: the run records no segmenter; give --segmenter DIR, "
                    "--masks DIR or --masks none (uniform prior)"
                )
            self.segmenter = Segmenter.from_pretrained(folder)
            self.masks = f"segmenter {folder}"
        else:
            self.mask_folder = Path(masks)
            if not self.mask_folder.is_dir():
                raise CxrError(f"{self.mask_folder}: masks folder does not exist")
            self.masks = f"masks {self.mask_folder}"

    def _masks(self, gray: np.ndarray, path: Path) -> dict[str, np.ndarray] | None:
        """Organ masks (1, H, W) of the image, or None (uniform prior / mode none)."""
        if self.segmenter is not None:
            return self.segmenter.predict(gray[None])
        if self.mask_folder is not None:
            return _folder_masks(self.mask_folder, path, gray.shape)
        return None

    def inputs(
        self, gray: np.ndarray, masks: dict[str, np.ndarray] | None, name: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(pixel values, priors)`` the model reads for one uint8 (H, W) image and its
        organ masks ((1, H, W) each, or None for a uniform prior; mode none: no priors)."""
        return image_inputs_for(self.model, self.prior_config, gray, masks, name)

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, priors: torch.Tensor | None) -> str:
        """The Findings the model writes for :meth:`inputs`."""
        return self.model.generate(pixel_values=pixels, priors=priors)[0].strip()

    def predict(
        self, gray: np.ndarray, masks: dict[str, np.ndarray] | None, name: str
    ) -> tuple[str, torch.Tensor, torch.Tensor | None]:
        """``(findings, pixel values, priors)`` of one image and its masks."""
        pixels, priors = self.inputs(gray, masks, name)
        return self.generate(pixels, priors), pixels, priors

    def attention(self, findings: str, pixels: torch.Tensor, priors: torch.Tensor | None):
        """Where each sentence of ``findings`` attended
        (:class:`cxrlib.model.explain.SentenceAttention`)."""
        return sentence_attention(self.model, findings, pixel_values=pixels, priors=priors)

    def report(self, path: str | os.PathLike, out: Path | None = None) -> ImageReport:
        """One image's report; its attention PNG into ``out`` when given.

        Raises
        ------
        CxrError
            The image or its masks unreadable, or a mask of the wrong size (named).
        """
        started = time.perf_counter()
        path = Path(path)
        gray = read_radiograph(path)
        masks = self._masks(gray, path)
        findings, pixels, priors = self.predict(gray, masks, path.name)
        labels, sides = labels_and_sides(findings)
        png = None
        if out is not None and findings:
            png = self._attention_png(gray, pixels, priors, masks, findings, path, out)
        return ImageReport(
            image=str(path),
            findings=findings,
            labels=labels,
            sides=sides,
            masks=self.masks,
            attention_png=png,
            seconds=round(time.perf_counter() - started, 3),
        )

    def _attention_png(self, gray, pixels, priors, masks, findings, path: Path, out: Path) -> str:
        import matplotlib.pyplot as plt

        attention = self.attention(findings, pixels, priors)
        fig = attention_figure(gray, attention, masks)
        source = (
            self.masks.split(" ")[0]
            if self.masks.startswith(("segmenter", "masks"))
            else self.masks
        )
        name = path.name if len(path.name) <= 40 else path.name[:18] + "…" + path.name[-18:]
        fig.suptitle(f"{name} (masks: {source})", fontsize=6)
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{path.stem}_attention.png"
        write_atomic(target, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
        plt.close(fig)
        return str(target)


def attention_figure(gray: np.ndarray, attention, masks=None, captions=None):
    """The figure of notebook 06 (each sentence's attention by layer group) with the
    lung and heart outlines the prior was built from (mask-overlay colours).

    Parameters
    ----------
    gray : (H, W) uint8
    attention : cxrlib.model.explain.SentenceAttention
    masks : dict of str to (1, H, W) or (H, W) bool, optional
    captions : list of list of str, optional
        As :func:`cxrlib.experiment.figures.plot_sentence_attention`.
    """
    fig = plot_sentence_attention(gray, attention, captions=captions)
    if masks is not None:
        flat = {name: np.asarray(mask).reshape(gray.shape) for name, mask in masks.items()}
        for ax in fig.axes:
            outline_masks(ax, flat)
    return fig


def labels_and_sides(findings: str) -> tuple[dict[str, str | None], dict[str, str]]:
    """The labeler's 14 labels of a Findings text as words (positive / negative /
    uncertain, None: not mentioned) and the side of each lateral finding it names."""
    labels = label_report(findings)
    sides = {
        column.removesuffix(" laterality"): labels[column]
        for column in LATERALITY_COLUMNS
        if labels.get(column)
    }
    names = {k: label_word(v) for k, v in labels.items() if k not in LATERALITY_COLUMNS}
    return names, sides


def report_images(
    inputs: list[str | os.PathLike],
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    masks: str | os.PathLike = "segmenter",
    segmenter: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> ReportSummary:
    """Report every image of ``inputs`` (files, folders, globs) with run ``run``; write
    ``out/reports.jsonl`` (one :class:`ImageReport` per line) and an attention PNG per
    image. Failed images are logged one line each and counted, never raised."""
    from tqdm.auto import tqdm

    reporter = Reporter(run, masks=masks, segmenter=segmenter, device=device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = ReportSummary(out=out / REPORTS_FILE)
    paths = expand_inputs(inputs)
    if not paths:
        raise CxrError("no images given")
    for path in tqdm(paths, desc="reports", unit="img", disable=not progress):
        try:
            summary.reports.append(reporter.report(path, out))
        except (CxrError, ValueError, OSError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            if not reason.startswith(str(path)):
                reason = f"{path}: {reason}"
            log.info("report failed: %s", reason)
            summary.failures.append((str(path), reason))
    lines = "".join(json.dumps(asdict(r)) + "\n" for r in summary.reports)
    write_atomic(summary.out, lambda tmp: Path(tmp).write_text(lines))
    return summary
