"""The phantom in the layouts of the real releases: a rehearsal dataset for the adapters.

``write_layout(out, "mimic-cxr-jpg" | "chexpert-plus", n)`` writes phantom studies
exactly as MIMIC-CXR-JPG 2.0.0 (with the MIMIC-CXR report texts) or CheXpert Plus lay
them out, so ``cxr manifest mimic-cxr --root OUT`` and ``cxr manifest chexpert-plus
--root OUT`` read them unchanged (``docs/phantom.md``, "Rehearsal layouts").

``n`` is the number of frontal images, the rows of the adapters' default manifest
(views PA and AP). Patients have one to six studies; a study has one frontal image
(sometimes two) and, in most studies, a lateral one. The phantom draws frontals only:
a "lateral" image is the study's frontal picture again, marked ``LATERAL``.

Pixels are not drawn per row: a pool of ``pool`` phantom studies (default
``min(n, 512)``) is rendered once (a normal phantom folder under ``OUT/phantom-pool/``,
masks included), and study ``s`` takes pool study ``s % pool``: its labels, Findings
text, impression and view, and every image file of the study is a hard link to that
pool image (a copy where the file system refuses links). Labels and text always match
the pixels; ``OUT/phantom-pool/links.csv.gz`` names each file's pool image.
"""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import json
import math
import os
import shutil
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlib.base.errors import CxrError
from cxrlib.base.io import write_json_atomic
from cxrlib.base.provenance import provenance
from cxrlib.base.vocabulary import PHANTOM_LAYOUTS
from cxrlib.data import chexpert_plus, mimic
from cxrlib.data.manifest import CHEXPERT_LABELS, assign_split, read_manifest
from cxrlib.data.phantom import PHANTOM_VERSION, PhantomSpec, prepare_phantom

LAYOUTS: tuple[str, ...] = PHANTOM_LAYOUTS[1:]
"""The real releases' layouts (the first word is the phantom's own)."""
DEFAULT_POOL = 512
POOL_FOLDER = "phantom-pool"
LINKS_FILE = "links.csv.gz"

STUDIES_PER_PATIENT = ((1, 2, 3, 4, 5, 6), (0.3, 0.2, 0.15, 0.13, 0.12, 0.1))
"""Studies per patient and their chances (mean 2.9; MIMIC-CXR 3.5, CheXpert Plus 2.9)."""
SECOND_FRONTAL = 0.1
"""Chance that a study has a second frontal image (same pool picture, same view)."""
LATERAL = 0.6
"""Chance that a study has a lateral image."""
CHEXPERT_VALID = 0.05
"""Fraction of CheXpert Plus patients in the official ``valid`` split."""

MIMIC_METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
MIMIC_SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
MIMIC_LABEL_COLUMNS: tuple[str, ...] = ("subject_id", "study_id", *sorted(CHEXPERT_LABELS))
CHEXPERT_PLUS_COLUMNS: tuple[str, ...] = (
    "path_to_image",
    "path_to_dcm",
    "frontal_lateral",
    "ap_pa",
    "deid_patient_id",
    "patient_report_date_order",
    "report",
    "section_narrative",
    "section_clinical_history",
    "section_history",
    "section_comparison",
    "section_technique",
    "section_procedure_comments",
    "section_findings",
    "section_impression",
    "section_end_of_impression",
    "section_summary",
    "section_accession_number",
    "age",
    "sex",
    "race",
    "ethnicity",
    "interpreter_needed",
    "insurance_type",
    "recent_bmi",
    "deceased",
    "split",
)
_ID_STRIDE = 1_234_567
"""Coprime to 10**7, so ``i * stride mod 10**7`` gives distinct ids spread over p10..p19."""

__all__ = [
    "LAYOUTS",
    "LayoutSummary",
    "PlannedStudy",
    "impression_text",
    "mimic_report",
    "plan_layout",
    "write_layout",
]


@dataclass(frozen=True, slots=True)
class PlannedStudy:
    """One study of a rehearsal layout: who, which visit, which pool picture, which images."""

    patient: int
    """Patient number, from 0."""
    visit: int
    """The study's number among its patient's studies, from 0."""
    number: int
    """The study's number in the dataset, from 0."""
    pool: int
    """The pool study (and image) this study takes: ``number % pool size``."""
    views: tuple[str, ...]
    """``"frontal"`` or ``"lateral"`` per image, in file order."""

    @property
    def frontals(self) -> int:
        return self.views.count("frontal")


def plan_layout(n: int, seed: int, pool: int) -> list[PlannedStudy]:
    """Patients, studies and images holding exactly ``n`` frontal images (seeded).

    Parameters
    ----------
    n : int
        Number of frontal images, >= 1.
    seed : int
        Seed of the numbers of studies and images.
    pool : int
        Pool size; study ``s`` takes pool study ``s % pool``.
    """
    if n < 1 or pool < 1:
        raise ValueError(f"n and pool must be >= 1, got {n} and {pool}")
    rng = np.random.default_rng([seed, 27, 1])
    studies: list[PlannedStudy] = []
    left, patient = n, 0
    counts, weights = STUDIES_PER_PATIENT
    while left > 0:
        for visit in range(int(rng.choice(counts, p=weights))):
            frontals = min(left, 2 if rng.random() < SECOND_FRONTAL else 1)
            views = ("frontal", "lateral") if rng.random() < LATERAL else ("frontal",)
            views += ("frontal",) * (frontals - 1)
            number = len(studies)
            studies.append(PlannedStudy(patient, visit, number, number % pool, views))
            left -= frontals
            if left == 0:
                break
        patient += 1
    return studies


@dataclass
class LayoutSummary:
    """What :func:`write_layout` wrote."""

    out: Path
    layout: str
    n: int
    images: int
    studies: int
    patients: int
    pool: int
    seconds: float
    linked: int = 0
    copied: int = 0
    splits: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        dataset = "mimic-cxr" if self.layout == "mimic-cxr-jpg" else "chexpert-plus"
        splits = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        how = f"{self.linked} hard links" + (f", {self.copied} copies" if self.copied else "")
        return (
            f"wrote {self.images} {self.layout} images ({self.n} frontal) of {self.studies} "
            f"studies, {self.patients} patients to {self.out} in {self.seconds:.1f} s "
            f"({how} to {self.pool} rendered images); splits: {splits}; "
            f"next: cxr manifest {dataset} --root {self.out} --out MANIFEST"
        )


@dataclass
class _Pool:
    """The rendered pool: a phantom folder and its rows."""

    folder: Path
    rows: list[dict]

    def image(self, k: int) -> Path:
        return self.folder / str(self.rows[k]["image_path"])


def _build_pool(out: Path, k: int, seed: int, size: int, workers: int) -> _Pool:
    """``k`` phantom studies under ``out/phantom-pool/`` (reused when already there)."""
    manifest = prepare_phantom(PhantomSpec(n=k, seed=seed, size=size), out / POOL_FOLDER, workers)
    frame = read_manifest(manifest).frame
    return _Pool(manifest.parent, frame.to_dict("records"))


def _jpeg_pool(pool: _Pool) -> list[Path]:
    """The pool images as JPEG (MIMIC-CXR-JPG's format), written once beside the PNGs."""
    folder = pool.folder / "jpg"
    folder.mkdir(exist_ok=True)
    paths = []
    for k, row in enumerate(pool.rows):
        path = folder / f"{row['image_id']}.jpg"
        if not path.is_file():
            tmp = path.with_name(f".{path.name}.tmp")
            with Image.open(pool.image(k)) as image:
                image.convert("L").save(tmp, format="JPEG", quality=95)
            os.replace(tmp, path)
        paths.append(path)
    return paths


class _Linker:
    """Hard-links files to pool images (a copy where links fail); counts both."""

    def __init__(self, out: Path, pool: _Pool, links: csv.writer):
        self.out, self.pool, self.links = out, pool, links
        self.folders: set[Path] = set()
        self.linked = self.copied = 0

    def put(self, source: Path, target: Path, k: int) -> None:
        if target.parent not in self.folders:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.folders.add(target.parent)
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
            self.linked += 1
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(source, target)
            self.copied += 1
        relative = target.relative_to(self.out).as_posix()
        self.links.writerow([relative, self.pool.rows[k]["image_id"]])


def impression_text(labels: dict[str, float]) -> str:
    """A one-line impression naming the positive (and, hedged, the uncertain) labels."""
    words = [n for n in CHEXPERT_LABELS if n != "No Finding" and labels[n] == 1.0]
    words += [f"possible {n.lower()}" for n in CHEXPERT_LABELS if labels[n] == -1.0]
    if not words:
        return "No acute cardiopulmonary process."
    return " ".join(f"{w[0].upper()}{w[1:].lower()}." for w in words)


def _label_cells(labels: dict[str, float]) -> list[str]:
    """MIMIC's CheXpert cells (``1.0``, ``0.0``, ``-1.0``, blank) in its column order."""
    return ["" if math.isnan(labels[c]) else f"{labels[c]:.1f}" for c in MIMIC_LABEL_COLUMNS[2:]]


def _ids(study: PlannedStudy) -> tuple[str, str]:
    """MIMIC ``(subject_id, study_id)``: 8 digits, ``1...`` and ``5...`` as released."""
    subject = 10_000_000 + (study.patient * _ID_STRIDE) % 10_000_000
    return str(subject), str(50_000_000 + (study.number * _ID_STRIDE) % 10_000_000)


def _dicom_id(seed: int, study: PlannedStudy, image: int) -> str:
    """A MIMIC-style dicom_id: five groups of eight hex digits, fixed by seed and image."""
    digest = hashlib.sha1(f"{seed}:{study.number}:{image}".encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def _wrapped(text: str) -> list[str]:
    """Lines of at most 77 characters, each after a space; words never broken."""
    lines = textwrap.wrap(text, 76, break_long_words=False, break_on_hyphens=False)
    return [f" {line}" for line in lines]


def mimic_report(study: PlannedStudy, view: str, findings: str, impression: str) -> str:
    """A report in the MIMIC-CXR text layout (a leading space on every line)."""
    exam = "CHEST (PORTABLE AP)" if view == "AP" else "CHEST (PA AND LAT)"
    lines = [
        "                                 FINAL REPORT",
        f" EXAMINATION:  {exam}",
        "",
        " INDICATION:  ___ with shortness of breath.",
        "",
        f" COMPARISON:  {'None.' if study.visit == 0 else '___'}",
        "",
        " FINDINGS:",
        "",
        *_wrapped(findings),
        "",
        " IMPRESSION:",
        "",
        *_wrapped(impression),
        "",
    ]
    return "\n".join(lines)


def _gz_writer(stack: ExitStack, path: Path, header: tuple[str, ...]):
    """A CSV writer on ``path`` (gzipped), closed with ``stack``; the header written."""
    handle = gzip.open(path, "wt", newline="", encoding="utf-8")  # noqa: SIM115 (the stack closes it)
    writer = csv.writer(stack.enter_context(handle))
    writer.writerow(header)
    return writer


def _write_mimic(out: Path, plan: list[PlannedStudy], pool: _Pool, linker: _Linker, seed: int):
    """MIMIC-CXR-JPG 2.0.0: ``files/`` images and reports, and the three CSV.GZ files."""
    jpegs = _jpeg_pool(pool)
    names = (mimic.METADATA_FILES[0], mimic.SPLIT_FILES[0], mimic.CHEXPERT_FILES[0])
    headers = (MIMIC_METADATA_COLUMNS, MIMIC_SPLIT_COLUMNS, MIMIC_LABEL_COLUMNS)
    with Image.open(jpegs[0]) as first:
        size = first.size[0]
    splits: dict[str, int] = {}
    with ExitStack() as stack:
        meta, split_csv, label_csv = (
            _gz_writer(stack, out / name, header)
            for name, header in zip(names, headers, strict=True)
        )
        for study in plan:
            row = pool.rows[study.pool]
            subject, study_id = _ids(study)
            split = assign_split(subject, seed)  # by patient, as the official split
            label_csv.writerow([subject, study_id, *_label_cells(row)])
            date = f"2180{1 + study.visit % 12:02d}{1 + study.number % 28:02d}"
            for image, kind in enumerate(study.views):
                dicom = _dicom_id(seed, study, image)
                view = row["view"] if kind == "frontal" else "LATERAL"
                ids = (dicom, subject, study_id)
                meta.writerow(_mimic_metadata(ids, view, row["view"], size, date))
                split_csv.writerow([dicom, study_id, subject, split])
                splits[split] = splits.get(split, 0) + (kind == "frontal")
                target = out / mimic.image_relpath(subject, study_id, dicom)
                linker.put(jpegs[study.pool], target, study.pool)
            report = mimic_report(study, row["view"], row["findings"], impression_text(row))
            (out / mimic.report_relpath(subject, study_id)).write_text(report, encoding="utf-8")
    return splits


def _mimic_metadata(ids: tuple[str, str, str], view: str, frontal: str, size: int, date: str):
    """One row of ``mimic-cxr-2.0.0-metadata.csv``; ``ids`` are dicom, subject and study,
    ``frontal`` is the study's frontal view, which names the procedure."""
    exam = "CHEST (PORTABLE AP)" if frontal == "AP" else "CHEST (PA AND LAT)"
    meaning = {"PA": "postero-anterior", "AP": "antero-posterior"}.get(view, "lateral")
    posture = "Recumbent" if frontal == "AP" else "Erect"
    return [*ids, exam, view, size, size, date, "120000.000", exam, meaning, posture]


def _chexpert_rows(study: PlannedStudy, row: dict, seed: int) -> Iterator[tuple[str, list[str]]]:
    """``(path_to_image, CSV cells)`` of each image of one study, CheXpert Plus style."""
    patient = f"patient{study.patient + 1:05d}"
    valid = assign_split(patient, seed, (1 - CHEXPERT_VALID, CHEXPERT_VALID, 0.0)) == "validate"
    official = "valid" if valid else "train"
    findings, impression = row["findings"], impression_text(row)
    report = f"NARRATIVE:\nChest radiograph.\n\nFINDINGS:\n{findings}\n\nIMPRESSION:\n{impression}"
    for image, kind in enumerate(study.views):
        path = f"{official}/{patient}/study{study.visit + 1}/view{image + 1}_{kind}.jpg"
        cells = dict.fromkeys(CHEXPERT_PLUS_COLUMNS, "")
        cells.update(
            path_to_image=path,
            path_to_dcm=path[:-4] + ".dcm",
            frontal_lateral=kind.capitalize(),
            ap_pa=row["view"] if kind == "frontal" else "",
            deid_patient_id=patient,
            patient_report_date_order=str(study.visit + 1),
            report=report,
            section_narrative="Chest radiograph.",
            section_findings=findings,
            section_impression=impression,
            age=str(20 + (study.patient * 37) % 70),
            sex=("Female", "Male")[study.patient % 2],
            split=official,
        )
        yield path, [cells[c] for c in CHEXPERT_PLUS_COLUMNS]


def _write_chexpert_plus(out: Path, plan: list[PlannedStudy], pool: _Pool, linker: _Linker, seed):
    """CheXpert Plus: the CSV, ``PNG/`` images and ``chexbert_labels/findings_fixed.json``."""
    (out / chexpert_plus.LABELS_FILE).parent.mkdir(parents=True, exist_ok=True)
    splits: dict[str, int] = {}
    with (
        open(out / chexpert_plus.CSV_NAME, "w", newline="", encoding="utf-8") as table,
        open(out / chexpert_plus.LABELS_FILE, "w", encoding="utf-8") as labels,
    ):
        writer = csv.writer(table)
        writer.writerow(CHEXPERT_PLUS_COLUMNS)
        for study in plan:
            row = pool.rows[study.pool]
            values = {c: None if math.isnan(row[c]) else row[c] for c in CHEXPERT_LABELS}
            for path, cells in _chexpert_rows(study, row, seed):
                writer.writerow(cells)
                labels.write(json.dumps({"path_to_image": path, **values}) + "\n")
                if cells[2] == "Frontal":
                    splits[cells[-1]] = splits.get(cells[-1], 0) + 1
                target = out / "PNG" / Path(path).with_suffix(".png")
                linker.put(pool.image(study.pool), target, study.pool)
    return splits


def write_layout(
    out: str | os.PathLike,
    layout: str,
    n: int,
    seed: int = 0,
    size: int = 256,
    pool: int = DEFAULT_POOL,
    workers: int = 1,
) -> LayoutSummary:
    """Write ``n`` frontal phantom images in a real release's layout (module docstring).

    Parameters
    ----------
    out : path-like
        Output folder (the release's root), created if missing; files of the same
        names are replaced.
    layout : str
        ``"mimic-cxr-jpg"`` or ``"chexpert-plus"``.
    n : int
        Number of frontal images (rows of the adapter's default manifest), >= 1.
    seed : int
        Seed of the pool, the studies per patient, the ids and the splits.
    size : int
        Image side in pixels (>= 32).
    pool : int
        Most images rendered; ``min(n, pool)`` are, and every file links to one.
    workers : int
        Processes rendering the pool.

    Returns
    -------
    LayoutSummary
    """
    if layout not in LAYOUTS:
        raise CxrError(f"--layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    for name, value, least in (("n", n, 1), ("pool", pool, 1), ("size", size, 32)):
        if value < least:
            raise CxrError(f"--{name} must be >= {least}, got {value}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rendered = _build_pool(out, min(n, pool), seed, size, workers)
    plan = plan_layout(n, seed, len(rendered.rows))
    write = _write_mimic if layout == "mimic-cxr-jpg" else _write_chexpert_plus
    links_path = rendered.folder.parent / LINKS_FILE
    with gzip.open(links_path, "wt", newline="", encoding="utf-8") as handle:
        links = csv.writer(handle)
        links.writerow(["path", "pool_image_id"])
        linker = _Linker(out, rendered, links)
        splits = write(out, plan, rendered, linker, seed)
    summary = LayoutSummary(
        out=out,
        layout=layout,
        n=n,
        images=sum(len(s.views) for s in plan),
        studies=len(plan),
        patients=plan[-1].patient + 1,
        pool=len(rendered.rows),
        seconds=time.perf_counter() - start,
        linked=linker.linked,
        copied=linker.copied,
        splits=dict(sorted(splits.items())),
    )
    record = {k: v for k, v in vars(summary).items() if k not in ("out", "seconds")}
    meta = {"generator": "cxrlib.data.phantom.layouts", "phantom_version": PHANTOM_VERSION}
    meta |= {"seed": seed, "size": size, "pool_folder": str(rendered.folder.relative_to(out))}
    write_json_atomic(out / "phantom.json", meta | record | {"provenance": provenance()})
    return summary
