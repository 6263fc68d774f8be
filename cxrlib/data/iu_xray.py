"""IU X-ray (Open-i, Indiana University chest X-ray collection) -> manifest.

Input (National Library of Medicine, Open-i; CC BY-NC-ND 4.0)::

    NLMCXR_reports.tgz            ecgen-radiology/<n>.xml, one report each (3,955)
    nlmcxr_dicom_metadata.csv.gz  imageid, ..., View Position, ... (one row per image)
    IMAGES/                       (optional) CXR<n>_IM-....png, named by parentImage id

``--reports`` may also be a folder of the XML files. Each XML holds
``<AbstractText Label="COMPARISON|INDICATION|FINDINGS|IMPRESSION">``, the manual MeSH
terms ``<MeSH><major>...`` and the report's images ``<parentImage id="...">``.

Text-only mode (no ``images``): **one row per report**. ``study_id`` and ``image_id``
are both ``CXR<n>`` (the XML file's number), ``image_path`` is empty for every row
(a text-only manifest, :func:`cxrlib.data.manifest.is_text_only`), ``view`` is empty.

Image mode (``images`` given): **one row per selected image** of each report;
``image_id`` is the ``parentImage`` id, ``view`` the metadata's ``View Position``
(``PA``, ``AP``, ``LL``, ``LATERAL``, ... or ``UNKNOWN`` when blank or when the image
has no metadata row); only ``views`` are kept (default PA, AP). The metadata's
``imageid`` equals the ``parentImage`` id except for report 1, whose ids carry an
extra ``_1_`` (``CXR1_1_IM-0001-3001`` vs ``CXR1_IM-0001-3001``); the lookup falls
back to the id without it. About a third of the images have a blank View Position in
the released metadata: they are dropped as ``view_not_selected`` with view
``UNKNOWN`` unless ``UNKNOWN`` is in ``views``. **The released View Position is not
reliable**: it is often the exam's value, not the image's (1,090 reports have ``PA`` on
both of their images although nearly every exam is PA + lateral; report 1's lateral
image says ``PA``), so a "frontal" selection from the metadata still contains lateral
images. The summary counts ``reports_with_several_selected_images`` as a warning;
an image-based view check is needed before trusting the ``view`` column.

Columns of both modes:

- ``findings``: the FINDINGS text with whitespace collapsed (runs of spaces to one, ends
  stripped). In the released files only reports 206 and 1600 have irregular
  whitespace (double spaces); every other Findings equals the XML text exactly.
  XML entities are decoded (``&gt;`` -> ``>``). The de-identification tokens ``XXXX``
  are kept as they are; ``xxxx_count`` counts them in the Findings.
- reports with empty FINDINGS (530 of 3,955 in the release) are **kept** with empty
  ``findings`` and counted as ``empty_findings``; ``drop_empty_findings`` drops them.
- extra columns ``impression``, ``indication``, ``comparison`` (whitespace collapsed),
  ``mesh_major`` (manual MeSH ``major`` terms joined by ``;``), ``image_ids``
  (``parentImage`` ids joined by ``;``), ``xxxx_count``.
- ``split``: :func:`cxrlib.data.manifest.assign_split` of the study id with ``seed``, so
  all images of a report share a split. Labels are blank (no labeler yet).

License: CC BY-NC-ND 4.0. Derived copies of the text (this manifest) must not be
committed or redistributed, so the manifest is written outside git work trees by
default, like the credentialed datasets.
"""

from __future__ import annotations

import os
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cxrlib.base.errors import CxrError, one_line
from cxrlib.data.adapters import (
    AdapterSummary,
    blank_labels,
    check_out_path,
    collapse_whitespace,
    index_images,
    iter_csv,
    parse_views,
    relative_to,
    write_rows,
)
from cxrlib.data.manifest import assign_split

DATASET = "iu-xray"
METADATA_NAME = "nlmcxr_dicom_metadata.csv.gz"
DEFAULT_VIEWS: tuple[str, ...] = ("PA", "AP")
SECTION_LABELS: tuple[str, ...] = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
DEID_TOKEN = "XXXX"
_REPORT_NAME = re.compile(r"(?:^|/)(\d+)\.xml$")
_REPORT1_ID = re.compile(r"^(CXR\d+)_\d+_(IM-)")


@dataclass(frozen=True)
class Report:
    """One parsed IU X-ray report.

    Attributes
    ----------
    number : int
        The report number ``<n>`` of ``<n>.xml``.
    sections : dict of str to str
        ``{"COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"}`` to the raw
        AbstractText (entities decoded, whitespace as in the file; ``""`` when empty).
    mesh_major : tuple of str
        Manual MeSH ``major`` terms, in file order.
    image_ids : tuple of str
        ``parentImage`` ids, in file order.
    source : str
        Where the report came from (``archive.tgz:member`` or the XML path).
    """

    number: int
    sections: dict[str, str]
    mesh_major: tuple[str, ...]
    image_ids: tuple[str, ...]
    source: str

    @property
    def study_id(self) -> str:
        """``CXR<n>``."""
        return f"CXR{self.number}"

    @property
    def findings(self) -> str:
        """The FINDINGS text, whitespace collapsed."""
        return collapse_whitespace(self.sections.get("FINDINGS", ""))


def parse_report(data: bytes, number: int, source: str) -> Report:
    """Parse one report XML (bytes of ``<n>.xml``); CxrError naming source and line."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        line = err.position[0] if err.position else "?"
        raise CxrError(f"{source}:{line}: malformed XML ({one_line(err)})") from None
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().upper()
        if label:
            sections[label] = "".join(node.itertext())
    mesh = root.find("MeSH")
    majors = tuple(
        collapse_whitespace(m.text) for m in (mesh.findall("major") if mesh is not None else [])
    )
    images = tuple(img.get("id", "").strip() for img in root.findall("parentImage"))
    return Report(
        number=number,
        sections=sections,
        mesh_major=tuple(m for m in majors if m),
        image_ids=tuple(i for i in images if i),
        source=source,
    )


def iter_reports(reports: str | os.PathLike) -> Iterator[Report]:
    """Every report of ``NLMCXR_reports.tgz`` (or of a folder of ``<n>.xml``), by number.

    Raises
    ------
    CxrError
        Archive missing or unreadable, no report inside, a malformed XML (naming the
        member and line), two files with the same number.
    """
    reports = Path(reports)
    found: list[tuple[int, str, bytes]] = []
    if reports.is_dir():
        for path in sorted(reports.rglob("*.xml")):
            m = _REPORT_NAME.search(path.as_posix())
            if m:
                found.append((int(m.group(1)), str(path), path.read_bytes()))
    elif reports.is_file():
        try:
            with tarfile.open(reports, "r:*") as archive:
                for member in archive:
                    m = _REPORT_NAME.search(member.name)
                    if not (member.isfile() and m):
                        continue
                    handle = archive.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    found.append((int(m.group(1)), f"{reports}:{member.name}", data))
        except (tarfile.TarError, OSError, EOFError) as err:
            raise CxrError(f"{reports}: not a readable tar archive ({one_line(err)})") from None
    else:
        raise CxrError(f"{reports}: reports archive or folder does not exist")
    if not found:
        raise CxrError(f"{reports}: no <n>.xml report inside")
    found.sort(key=lambda item: item[0])
    for (a, src_a, _), (b, src_b, _) in zip(found, found[1:], strict=False):
        if a == b:
            raise CxrError(f"{src_b}: report number {b} appears twice (also {src_a})")
    for number, source, data in found:
        yield parse_report(data, number, source)


def read_views(metadata: str | os.PathLike) -> dict[str, str]:
    """``{imageid: View Position}`` from ``nlmcxr_dicom_metadata.csv.gz`` (upper-case)."""
    table: dict[str, str] = {}
    for _line, row in iter_csv(metadata, ("imageid", "View Position")):
        image_id = row["imageid"].strip()
        if image_id:
            table[image_id] = row["View Position"].strip().upper()
    return table


def _view_of(image_id: str, views: dict[str, str]) -> str:
    view = views.get(image_id)
    if view is None:
        view = views.get(_REPORT1_ID.sub(r"\1_\2", image_id))
    return view or "UNKNOWN"


@dataclass
class _Selection:
    """One run's options (and, in image mode, images and views): each report's rows."""

    out_dir: Path
    images: str | os.PathLike | None
    image_index: dict[str, Path] | None
    view_table: dict[str, str]
    views: tuple[str, ...]
    seed: int
    drop_empty_findings: bool
    summary: AdapterSummary

    def rows_of(self, report: Report) -> list[dict[str, object]]:
        """The report's rows: itself (text-only) or its selected images; counts its tokens."""
        findings = report.findings
        xxxx = self._count(report, findings)
        if not findings:
            self.summary.count("empty_findings")
            if self.drop_empty_findings:
                n = 1 if self.images is None else len(report.image_ids)  # rows it gives
                if n:
                    self.summary.drop("empty_findings", f"{report.source}: empty FINDINGS", n=n)
                return []
        base = {
            "study_id": report.study_id,
            "split": assign_split(report.study_id, self.seed),
            "findings": findings,
            **blank_labels(),
            "impression": collapse_whitespace(report.sections.get("IMPRESSION", "")),
            "indication": collapse_whitespace(report.sections.get("INDICATION", "")),
            "comparison": collapse_whitespace(report.sections.get("COMPARISON", "")),
            "mesh_major": ";".join(report.mesh_major),
            "image_ids": ";".join(report.image_ids),
            "xxxx_count": xxxx,
        }
        if self.image_index is None:
            return [{**base, "image_id": report.study_id, "image_path": "", "view": ""}]
        return self._image_rows(report, base, self.image_index)

    def _count(self, report: Report, findings: str) -> int:
        """Count the report and its ``XXXX`` tokens; the number in its Findings."""
        summary = self.summary
        summary.count("reports")
        xxxx = findings.count(DEID_TOKEN)
        summary.count("xxxx_tokens_in_findings", xxxx)
        summary.count("reports_with_xxxx_in_findings", int(xxxx > 0))
        summary.count(
            "xxxx_tokens_in_all_sections",
            sum(report.sections.get(s, "").count(DEID_TOKEN) for s in SECTION_LABELS),
        )
        if "FINDINGS" not in report.sections:
            summary.count("no_findings_element")
        if self.images is not None:
            summary.count("reports_without_images", int(not report.image_ids))
        return xxxx

    def _image_rows(
        self, report: Report, base: dict[str, object], image_index: dict[str, Path]
    ) -> list[dict[str, object]]:
        """One row per image of the report with a selected view and a file."""
        rows: list[dict[str, object]] = []
        for image_id in report.image_ids:
            view = _view_of(image_id, self.view_table)
            if view not in self.views:
                self.summary.drop("view_not_selected", f"{report.source}: {image_id} view {view}")
                continue
            path = image_index.get(image_id)
            if path is None:
                self.summary.drop(
                    "missing_image", f"{report.source}: {image_id} not in {self.images}"
                )
                continue
            rows.append(
                {
                    **base,
                    "image_id": image_id,
                    "image_path": relative_to(path, self.out_dir),
                    "view": view,
                }
            )
        self.summary.count("reports_without_selected_image", int(not rows))
        # several "frontal" images: usually PA + lateral both labelled PA (module docstring)
        self.summary.count("reports_with_several_selected_images", int(len(rows) > 1))
        return rows


def build_manifest(
    reports: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    images: str | os.PathLike | None = None,
    metadata: str | os.PathLike | None = None,
    views: str | tuple[str, ...] = DEFAULT_VIEWS,
    seed: int = 0,
    drop_empty_findings: bool = False,
    allow_in_repo: bool = False,
) -> AdapterSummary:
    """Write the IU X-ray manifest (see the module docstring).

    Parameters
    ----------
    reports : path-like
        ``NLMCXR_reports.tgz`` or a folder of ``<n>.xml`` report files.
    out : path-like or None
        Manifest path; None gives ``<cache>/manifests/iu-xray/manifest.csv``. Refused
        inside a git work tree unless ``allow_in_repo`` (no-derivatives license).
    images : path-like or None
        Folder of the images (any depth), named by ``parentImage`` id (``.png``/``.jpg``).
        None writes a text-only manifest, one row per report.
    metadata : path-like or None
        ``nlmcxr_dicom_metadata.csv.gz`` (View Position); default: the file of that name
        beside ``reports``. Used only with ``images``.
    views : str or tuple of str
        Views to keep in image mode (``UNKNOWN`` selects images without a view).
    seed : int
        Split seed.
    drop_empty_findings : bool
        Drop reports whose FINDINGS is empty instead of keeping them.
    allow_in_repo : bool
        Permit writing the manifest inside a git work tree.

    Returns
    -------
    AdapterSummary
        Rows kept, dropped per reason, ``empty_findings`` and ``XXXX`` counts; also
        written to ``<out>.summary.json``.
    """
    reports = Path(reports)
    out = check_out_path(out, dataset=DATASET, allow_in_repo=allow_in_repo)
    views = parse_views(views)
    image_index: dict[str, Path] | None = None
    view_table: dict[str, str] = {}
    if images is not None:
        image_index = index_images(images)
        if metadata is None:
            metadata = reports.parent / METADATA_NAME
        view_table = read_views(metadata)
    summary = AdapterSummary(
        DATASET,
        unit="report" if images is None else "image",
        options={
            "reports": str(reports),
            "images": str(images) if images is not None else None,
            "metadata": str(metadata) if images is not None else None,
            "views": list(views) if images is not None else None,
            "seed": seed,
            "drop_empty_findings": drop_empty_findings,
            "text_only": images is None,
        },
    )
    selection = _Selection(
        out.parent, images, image_index, view_table, views, seed, drop_empty_findings, summary
    )
    write_rows(
        iter_reports(reports), selection.rows_of, out, summary, desc="iu-xray", unit="report"
    )
    summary.write(out)
    return summary
