"""Rehearsal layouts: the phantom written as MIMIC-CXR-JPG and CheXpert Plus, read
unchanged by the real adapters, pixels hard-linked to a rendered pool."""

import csv
import errno
import gzip
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlib.base.errors import CxrError
from cxrlib.cli import main
from cxrlib.data import chexpert_plus, mimic
from cxrlib.data import manifest as manifest_module
from cxrlib.data.adapters import collapse_whitespace
from cxrlib.data.manifest import CHEXPERT_LABELS, read_manifest
from cxrlib.data.phantom import phantom_study
from cxrlib.data.phantom.findings import labels
from cxrlib.data.phantom.layouts import (
    LINKS_FILE,
    POOL_FOLDER,
    PlannedStudy,
    impression_text,
    mimic_report,
    plan_layout,
    write_layout,
)
from cxrlib.data.phantom.text import findings_text
from cxrlib.data.sections import extract_sections

N, SEED, SIZE = 12, 0, 48
ADAPTERS = {"mimic-cxr-jpg": mimic.build_manifest, "chexpert-plus": chexpert_plus.build_manifest}


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def layout(request, tmp_path_factory):
    """``(layout, root, summary, manifest)``: a small layout and the real adapter's manifest."""
    base = tmp_path_factory.mktemp(request.param)
    root = base / "release"
    summary = write_layout(root, request.param, N, seed=SEED, size=SIZE)
    out = base / "out" / "manifest.csv"
    ADAPTERS[request.param](root, out)
    return request.param, root, summary, read_manifest(out)  # validates, files included


def _pool(root: Path) -> tuple[Path, dict[str, dict]]:
    """The pool folder and its rows by image_id."""
    folder = root / json.loads((root / "phantom.json").read_text())["pool_folder"]
    frame = read_manifest(folder / "manifest.csv").frame
    return folder, {row["image_id"]: row for row in frame.to_dict("records")}


def _links(root: Path) -> dict[str, str]:
    with gzip.open(root / POOL_FOLDER / LINKS_FILE, "rt", newline="") as handle:
        return {row["path"]: row["pool_image_id"] for row in csv.DictReader(handle)}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_plan_has_n_frontals_several_studies_and_images():
    plan = plan_layout(N, SEED, pool=5)
    assert sum(s.frontals for s in plan) == N
    assert plan == plan_layout(N, SEED, pool=5)  # seeded
    assert [s.pool for s in plan] == [s.number % 5 for s in plan]
    per_patient = [sum(s.patient == p for s in plan) for p in range(plan[-1].patient + 1)]
    assert max(per_patient) > 1 and min(per_patient) >= 1
    assert any(len(s.views) > 1 for s in plan) and all(s.views[0] == "frontal" for s in plan)


def test_mimic_reports_give_back_their_findings_and_impression():
    """Wrapped at 76 columns, never inside a word ("right-sided" once split in two)."""
    study = PlannedStudy(0, 0, 0, 0, ("frontal",))
    for index in range(400):
        phantom = phantom_study(index, 5)
        findings = findings_text(phantom, np.random.default_rng([5, index, 1]))
        report = mimic_report(study, "PA", findings, impression_text(labels(phantom)))
        sections = extract_sections(report)
        assert sections["findings"] == collapse_whitespace(findings), index
        assert sections["impression"] == impression_text(labels(phantom))


def test_adapter_reads_n_rows_with_the_planned_studies_and_patients(layout):
    name, _root, summary, manifest = layout
    df = manifest.frame
    plan = plan_layout(N, SEED, pool=N)
    assert len(df) == N == summary.n
    assert df["study_id"].nunique() == len(plan) == summary.studies
    assert df["patient_id"].nunique() == plan[-1].patient + 1 == summary.patients
    assert summary.images == sum(len(s.views) for s in plan) > N  # laterals too
    assert manifest.summary["dropped"] == {"view_not_selected": summary.images - N}
    assert set(df["view"]) <= {"PA", "AP"}
    assert df.groupby("patient_id")["study_id"].nunique().max() > 1
    if name == "mimic-cxr-jpg":  # the official split is by patient: one split each
        assert (df.groupby("patient_id")["split"].nunique() == 1).all()


def test_labels_text_and_view_are_the_linked_pool_study(layout):
    _name, root, _summary, manifest = layout
    _folder, pool = _pool(root)
    links = _links(root)
    for row in manifest.frame.to_dict("records"):
        image = manifest.resolve(row["image_path"]).resolve()
        source = pool[links[image.relative_to(root.resolve()).as_posix()]]
        assert all(_same(row[c], source[c]) for c in CHEXPERT_LABELS), row["image_id"]
        assert row["findings"] == collapse_whitespace(source["findings"]) != ""
        assert row["impression"] == impression_text(source) != ""
        assert row["view"] == source["view"]


def test_images_are_readable_hard_links_to_the_pool(layout):
    name, root, summary, manifest = layout
    folder, _pool_rows = _pool(root)
    links = _links(root)
    assert summary.linked == len(links) == summary.images and summary.copied == 0
    jpeg = name == "mimic-cxr-jpg"
    for rel, pool_id in links.items():
        source = folder / "jpg" / f"{pool_id}.jpg" if jpeg else folder / "images" / f"{pool_id}.png"
        assert os.stat(root / rel).st_ino == os.stat(source).st_ino
    for cell in manifest.frame["image_path"]:
        with Image.open(manifest.resolve(cell)) as image:
            assert (image.size, image.format) == ((SIZE, SIZE), "JPEG" if jpeg else "PNG")


def test_copies_where_links_fail_and_the_pool_is_reused(tmp_path, monkeypatch):
    root = tmp_path / "chexpert"
    write_layout(root, "chexpert-plus", 6, size=32)
    pool_image = next((root / POOL_FOLDER).glob("phantom-*/images/*.png"))
    mtime = pool_image.stat().st_mtime_ns

    def refuse(*_args, **_kwargs):
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    again = write_layout(root, "chexpert-plus", 6, size=32)
    assert again.linked == 0 and again.copied == again.images
    assert pool_image.stat().st_mtime_ns == mtime  # not rendered again
    files = list((root / "PNG").rglob("*.png"))
    assert len(files) == again.images and all(f.stat().st_nlink == 1 for f in files)


def test_release_files_are_where_the_releases_put_them(layout):
    name, root, _summary, manifest = layout
    row = manifest.frame.iloc[0]
    if name == "mimic-cxr-jpg":
        for names in (mimic.METADATA_FILES, mimic.SPLIT_FILES, mimic.CHEXPERT_FILES):
            assert (root / names[0]).is_file()  # gzipped, as released
        report = root / mimic.report_relpath(row["patient_id"], row["study_id"])
        text = report.read_text()
        assert " FINDINGS:\n" in text and " IMPRESSION:\n" in text
        assert manifest.resolve(row["image_path"]).samefile(
            root / mimic.image_relpath(row["patient_id"], row["study_id"], row["image_id"])
        )
    else:
        assert (root / chexpert_plus.CSV_NAME).is_file()
        assert (root / chexpert_plus.LABELS_FILE).is_file()
        assert manifest.resolve(row["image_path"]).samefile(root / "PNG" / f"{row['image_id']}.png")


def test_two_thousand_rows_from_a_small_pool(tmp_path):
    """2,000 frontal rows from 8 rendered images: links, not renders (no timing assert)."""
    root = tmp_path / "mimic"
    summary = write_layout(root, "mimic-cxr-jpg", 2000, seed=1, size=32, pool=8)
    assert (summary.n, summary.pool, summary.linked) == (2000, 8, summary.images)
    inodes = {os.stat(p).st_ino for p in (root / "files").rglob("*.jpg")}
    assert len(inodes) == 8
    adapted = mimic.build_manifest(root, tmp_path / "out" / "manifest.csv")
    assert adapted.kept == 2000


def test_cli_layout_flag(tmp_path, capsys):
    out = tmp_path / "chexpert"
    args = ["phantom", "--layout", "chexpert-plus", "--n", "5", "--size", "32", "--out", str(out)]
    assert main(args) == 0
    assert "next: cxr manifest chexpert-plus --root" in capsys.readouterr().out
    assert (out / chexpert_plus.CSV_NAME).is_file()


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(CxrError, match="--layout 'nih' is not one of"):
        write_layout(tmp_path / "x", "nih", 5)
    with pytest.raises(CxrError, match="--pool must be >= 1"):
        write_layout(tmp_path / "x", "chexpert-plus", 5, pool=0)


def test_manifest_written_in_chunks_is_the_same_bytes(layout, monkeypatch):
    """The adapters write their rows a chunk at a time: 7 rows a chunk gives the bytes
    (and the summary) of one chunk."""
    name, root, _, manifest = layout
    whole = Path(manifest.path)
    chunked = whole.with_name("chunked.csv")
    monkeypatch.setattr(manifest_module, "CHUNK_ROWS", 7)
    summary = ADAPTERS[name](root, chunked)
    assert summary.kept == len(manifest) > 7
    assert chunked.read_bytes() == whole.read_bytes()
    one = json.loads(whole.with_name(whole.name + ".summary.json").read_text())
    many = json.loads(chunked.with_name(chunked.name + ".summary.json").read_text())
    assert {**many, "manifest": None} == {**one, "manifest": None}
    assert not list(whole.parent.glob(".*.tmp"))
