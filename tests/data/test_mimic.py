"""MIMIC-CXR-JPG adapter on a tiny tree with the official layout and column names."""

import csv
import gzip
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlib.base.errors import CxrError
from cxrlib.data.manifest import CHEXPERT_LABELS, read_manifest, resolve
from cxrlib.data.mimic import build_manifest, image_relpath, report_relpath

METADATA_COLUMNS = [
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
]
SPLIT_COLUMNS = ["dicom_id", "study_id", "subject_id", "split"]
CHEXPERT_COLUMNS = ["subject_id", "study_id", *CHEXPERT_LABELS]

# dicom_id -> (subject_id, study_id, ViewPosition, split or None, write image?)
IMAGES = {
    "aaaa1111-0001": ("10000032", "50414267", "PA", "train", True),
    "aaaa1111-0002": ("10000032", "50414267", "LATERAL", "train", True),
    "bbbb2222-0001": ("10000032", "53189527", "AP", "train", True),
    "cccc3333-0001": ("10000764", "57375967", "PA", "validate", True),
    "dddd4444-0001": ("11000011", "51234567", "AP", "test", True),
    "eeee5555-0001": ("12000000", "52000000", "PA", "train", False),
    "ffff6666-0001": ("12000000", "52000001", "PA", None, True),
    "gggg7777-0001": ("12000000", "52000002", "", "train", True),
    "hhhh8888-0001": ("13000000", "53000000", "PA", "test", True),
    "iiii9999-0001": ("13000000", "53000001", "AP", "test", True),
}

REPORTS = {
    # typical
    ("10000032", "50414267"): (
        "                                 FINAL REPORT\n"
        " EXAMINATION:  CHEST (PA AND LAT)\n\n"
        " INDICATION:  ___F with cough\n\n"
        " FINDINGS:\n\n"
        " PA and lateral views of the chest.  The lungs are clear\n"
        " without effusion.\n\n"
        " IMPRESSION:\n\n"
        " No acute process.\n"
    ),
    # only FINDINGS AND IMPRESSION: no Findings
    ("10000032", "53189527"): (
        " FINAL REPORT\n FINDINGS AND IMPRESSION:  Stable cardiomegaly.  No edema.\n"
    ),
    # sections out of order, repeated FINDINGS: the last wins
    ("10000764", "57375967"): (
        " IMPRESSION: Improving opacity.\n"
        " FINDINGS: Preliminary: right basilar opacity.\n"
        " COMPARISON: ___.\n"
        " FINDINGS: Right basilar opacity, improved.\n"
    ),
    # lower-case headers are not headers: no Findings
    ("11000011", "51234567"): " findings: lungs clear.\n impression: normal.\n",
    ("12000000", "52000000"): " FINDINGS: Never read (image missing).\n",
    ("12000000", "52000001"): " FINDINGS: Never read (no split).\n",
    ("12000000", "52000002"): " FINDINGS: Never read (no view).\n",
    # ("13000000", "53000000") has no report file
    ("13000000", "53000001"): "   \n",
}

LABELS = {
    ("10000032", "50414267"): {"No Finding": "1.0"},
    ("10000032", "53189527"): {"Cardiomegaly": "1.0", "Edema": "0.0"},
    ("11000011", "51234567"): {"Pleural Effusion": "-1.0"},
}


def write_csv_gz(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """A gzipped CSV with exactly these columns (as the official files)."""
    with gzip.open(path, "wt", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def tiny_image(path: Path, value: int = 128, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8), mode="L").save(path)
    return path


def build_mimic_tree(root: Path) -> Path:
    """MIMIC-CXR-JPG 2.0.0 + report texts, invented content, official names."""
    root.mkdir(parents=True, exist_ok=True)
    meta, split = [], []
    for dicom, (subject, study, view, split_name, has_image) in IMAGES.items():
        meta.append(
            [dicom, subject, study, "CHEST (PA AND LAT)", view, "8", "8", "21800101", "120000.0"]
            + ["CHEST (PA AND LAT)", "postero-anterior", "Erect"]
        )
        if split_name is not None:
            split.append([dicom, study, subject, split_name])
        if has_image:
            tiny_image(root / image_relpath(subject, study, dicom))
    write_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS, meta)
    write_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", SPLIT_COLUMNS, split)
    labels = [
        [subject, study, *(values.get(c, "") for c in CHEXPERT_LABELS)]
        for (subject, study), values in LABELS.items()
    ]
    write_csv_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", CHEXPERT_COLUMNS, labels)
    for (subject, study), text in REPORTS.items():
        path = root / report_relpath(subject, study)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def mimic_root(tmp_path):
    return build_mimic_tree(tmp_path / "mimic-cxr-jpg")


def test_rows_views_splits_labels_findings(mimic_root, tmp_path):
    out = tmp_path / "out" / "manifest.csv"
    summary = build_manifest(mimic_root, out)
    df = read_manifest(out).frame
    assert list(df["image_id"]) == ["aaaa1111-0001", "cccc3333-0001"]
    first, second = df.iloc[0], df.iloc[1]
    assert (first["study_id"], first["patient_id"], first["view"], first["split"]) == (
        "50414267",
        "10000032",
        "PA",
        "train",
    )
    assert (
        first["findings"]
        == "PA and lateral views of the chest. The lungs are clear without effusion."
    )
    assert first["impression"] == "No acute process."
    assert first["No Finding"] == 1.0
    assert all(math.isnan(first[c]) for c in CHEXPERT_LABELS if c != "No Finding")
    assert (second["view"], second["split"]) == ("PA", "validate")
    assert second["findings"] == "Right basilar opacity, improved."
    assert all(math.isnan(second[c]) for c in CHEXPERT_LABELS)  # no chexpert row
    # paths are relative to the manifest's folder and resolve to the images
    assert not Path(first["image_path"]).is_absolute()
    assert resolve(out.parent, first["image_path"]).samefile(
        mimic_root / image_relpath("10000032", "50414267", "aaaa1111-0001")
    )
    assert summary.kept == 2
    assert dict(summary.dropped) == {
        "view_not_selected": 2,
        "no_split": 1,
        "missing_image": 1,
        "missing_report": 1,
        "empty_report": 1,
        "no_findings": 2,
    }
    assert summary.kept + summary.dropped_total == len(IMAGES)
    assert summary.counts["no_labels"] == 1
    assert summary.counts["studies_without_findings"] == 2
    saved = json.loads((out.parent / "manifest.csv.summary.json").read_text())
    assert saved["kept"] == 2 and saved["dropped"]["no_findings"] == 2
    assert any("53189527.txt" in e for e in saved["examples"]["no_findings"])


def test_keep_missing_findings_and_other_views(mimic_root, tmp_path):
    out = tmp_path / "manifest.csv"
    summary = build_manifest(
        mimic_root, out, views="PA,AP,LATERAL,UNKNOWN", keep_missing_findings=True
    )
    df = read_manifest(out).frame.set_index("image_id")
    assert set(df.index) == {
        "aaaa1111-0001",
        "aaaa1111-0002",
        "bbbb2222-0001",
        "cccc3333-0001",
        "dddd4444-0001",
        "gggg7777-0001",
    }
    assert df.loc["aaaa1111-0002", "view"] == "LATERAL"
    assert df.loc["gggg7777-0001", "view"] == "UNKNOWN"
    assert df.loc["bbbb2222-0001", "findings"] == ""
    assert df.loc["bbbb2222-0001", "impression"] == "Stable cardiomegaly. No edema."
    assert df.loc["bbbb2222-0001", "Cardiomegaly"] == 1.0
    assert df.loc["bbbb2222-0001", "Edema"] == 0.0
    assert df.loc["dddd4444-0001", "Pleural Effusion"] == -1.0
    assert df.loc["dddd4444-0001", "split"] == "test"
    assert summary.counts["kept_without_findings"] == 2
    assert "no_findings" not in summary.dropped


def test_reports_from_zip(mimic_root, tmp_path):
    zip_path = mimic_root / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for (subject, study), text in REPORTS.items():
            rel = report_relpath(subject, study)
            archive.writestr(rel, text)
            (mimic_root / rel).unlink()
    out = tmp_path / "manifest.csv"
    build_manifest(mimic_root, out)
    df = read_manifest(out).frame
    assert list(df["findings"]) == [
        "PA and lateral views of the chest. The lungs are clear without effusion.",
        "Right basilar opacity, improved.",
    ]
    # the zip can also be given explicitly, from elsewhere
    out2 = tmp_path / "manifest2.csv"
    build_manifest(mimic_root, out2, reports=zip_path)
    assert read_manifest(out2).frame["findings"].tolist() == df["findings"].tolist()


def test_plain_csv_names_accepted(mimic_root, tmp_path):
    for name in ("metadata", "split", "chexpert"):
        gz = mimic_root / f"mimic-cxr-2.0.0-{name}.csv.gz"
        (mimic_root / f"mimic-cxr-2.0.0-{name}.csv").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    build_manifest(mimic_root, tmp_path / "manifest.csv")
    assert len(read_manifest(tmp_path / "manifest.csv")) == 2


def test_same_input_same_bytes(mimic_root, tmp_path):
    build_manifest(mimic_root, tmp_path / "a" / "manifest.csv")
    build_manifest(mimic_root, tmp_path / "b" / "manifest.csv")
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (
        tmp_path / "b" / "manifest.csv"
    ).read_bytes()


def _rewrite(path: Path, edit) -> None:
    lines = gzip.decompress(path.read_bytes()).decode().splitlines(keepends=True)
    path.write_bytes(gzip.compress("".join(edit(lines)).encode()))


def test_ragged_row_names_file_and_line(mimic_root, tmp_path):
    meta = mimic_root / "mimic-cxr-2.0.0-metadata.csv.gz"
    _rewrite(meta, lambda lines: [*lines[:3], lines[3].rstrip("\r\n") + ",extra\r\n", *lines[4:]])
    with pytest.raises(CxrError, match=r"metadata\.csv\.gz:4: malformed row: 13 fields"):
        build_manifest(mimic_root, tmp_path / "manifest.csv")
    assert not (tmp_path / "manifest.csv").exists()


def test_bad_label_names_file_line_column(mimic_root, tmp_path):
    path = mimic_root / "mimic-cxr-2.0.0-chexpert.csv.gz"
    _rewrite(path, lambda lines: [*lines[:2], lines[2].replace("1.0", "yes", 1), *lines[3:]])
    with pytest.raises(CxrError, match=r"chexpert\.csv\.gz:3: column 'Cardiomegaly'"):
        build_manifest(mimic_root, tmp_path / "manifest.csv")


def test_missing_column_and_missing_file(mimic_root, tmp_path):
    path = mimic_root / "mimic-cxr-2.0.0-split.csv.gz"
    _rewrite(path, lambda lines: [lines[0].replace(",split", ",fold")] + lines[1:])
    with pytest.raises(CxrError, match=r"split\.csv\.gz:1: missing column\(s\) 'split'"):
        build_manifest(mimic_root, tmp_path / "manifest.csv")
    path.unlink()
    with pytest.raises(CxrError, match="mimic-cxr-2.0.0-split.csv.gz, mimic-cxr-2.0.0-split.csv"):
        build_manifest(mimic_root, tmp_path / "manifest.csv")


def test_not_gzip_is_one_line_error(mimic_root, tmp_path):
    (mimic_root / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(CxrError, match=r"split\.csv\.gz:1: unreadable"):
        build_manifest(mimic_root, tmp_path / "manifest.csv")


def test_refused_inside_git_work_tree(mimic_root, tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    with pytest.raises(CxrError, match="refusing to write a mimic-cxr manifest inside the git"):
        build_manifest(mimic_root, repo / "runs" / "manifest.csv")
    assert not (repo / "runs").exists()
    build_manifest(mimic_root, repo / "runs" / "manifest.csv", allow_in_repo=True)
    assert (repo / "runs" / "manifest.csv").is_file()


def test_default_out_is_the_cache(mimic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    summary = build_manifest(mimic_root)
    expected = tmp_path / "cache" / "cxrlib" / "manifests" / "mimic-cxr" / "manifest.csv"
    assert summary.manifest == str(expected)
    assert expected.is_file()
