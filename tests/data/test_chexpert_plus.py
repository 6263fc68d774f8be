"""CheXpert Plus adapter: official CSV columns, PNG images, patient-level validation split."""

import csv
import json
import math
from pathlib import Path

import pytest

from cxrlib.base.errors import CxrError
from cxrlib.data.chexpert_plus import CSV_NAME, LABELS_FILE, build_manifest
from cxrlib.data.manifest import CHEXPERT_LABELS, read_manifest
from tests.data.test_mimic import tiny_image

COLUMNS = [
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
]
N_PATIENTS = 40


def _row(path, frontal_lateral, ap_pa, patient, findings, split, impression="Normal."):
    cells = dict.fromkeys(COLUMNS, "")
    cells.update(
        path_to_image=path,
        path_to_dcm=path.replace(".jpg", ".dcm"),
        frontal_lateral=frontal_lateral,
        ap_pa=ap_pa,
        deid_patient_id=patient,
        patient_report_date_order="1",
        report=f"NARRATIVE:\nChest.\n\nFINDINGS:\n{findings}\n\nIMPRESSION:\n{impression}",
        section_findings=findings,
        section_impression=impression,
        age="60",
        sex="Female",
        split=split,
    )
    return [cells[c] for c in COLUMNS]


def build_chexpert_plus(root: Path, *, labels: bool = True) -> Path:
    """df_chexpert_plus_240401.csv, PNG/ images, chexbert_labels/findings_fixed.json."""
    rows, label_lines = [], []
    for p in range(1, N_PATIENTS + 1):
        patient = f"patient{p:05d}"
        split = "valid" if p > N_PATIENTS - 4 else "train"
        for s in (1, 2):
            base = f"{split}/{patient}/study{s}"
            findings = f"Lungs clear,\n patient {p} study {s}."
            rows.append(
                _row(
                    f"{base}/view1_frontal.jpg",
                    "Frontal",
                    "PA" if s == 1 else "AP",
                    patient,
                    findings,
                    split,
                )
            )
            rows.append(_row(f"{base}/view2_lateral.jpg", "Lateral", "", patient, findings, split))
            for view in ("view1_frontal", "view2_lateral"):
                tiny_image(root / "PNG" / f"{base}/{view}.png")
            label_lines.append(
                {"path_to_image": f"{base}/view1_frontal.jpg", **dict.fromkeys(CHEXPERT_LABELS)}
                | {"No Finding": 1.0 if s == 1 else None, "Edema": -1.0 if s == 2 else None}
            )
    # awkward rows: missing image, empty findings, frontal with blank ap_pa
    rows.append(
        _row(
            "train/patient09001/study1/view1_frontal.jpg",
            "Frontal",
            "PA",
            "patient09001",
            "Gone.",
            "train",
        )
    )
    rows.append(
        _row(
            "train/patient09002/study1/view1_frontal.jpg",
            "Frontal",
            "AP",
            "patient09002",
            "",
            "train",
        )
    )
    tiny_image(root / "PNG" / "train/patient09002/study1/view1_frontal.png")
    rows.append(
        _row(
            "train/patient09003/study1/view1_frontal.jpg",
            "Frontal",
            "",
            "patient09003",
            "Seen.",
            "train",
        )
    )
    tiny_image(root / "PNG" / "train/patient09003/study1/view1_frontal.png")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / CSV_NAME, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    if labels:
        (root / LABELS_FILE).parent.mkdir(parents=True, exist_ok=True)
        (root / LABELS_FILE).write_text("".join(json.dumps(r) + "\n" for r in label_lines))
    return root


@pytest.fixture
def chexpert_root(tmp_path):
    return build_chexpert_plus(tmp_path / "chexpertplus")


def test_rows_views_findings_labels(chexpert_root, tmp_path):
    out = tmp_path / "out" / "manifest.csv"
    summary = build_manifest(chexpert_root, out, val_fraction=0.25)
    df = read_manifest(out).frame.set_index("image_id")
    assert len(df) == 2 * N_PATIENTS  # the frontal PA or AP image of every study
    row = df.loc["train/patient00001/study1/view1_frontal"]
    assert row["study_id"] == "patient00001/study1"
    assert row["patient_id"] == "patient00001"
    assert row["view"] == "PA"
    assert row["findings"] == "Lungs clear, patient 1 study 1."
    assert row["impression"] == "Normal."
    assert row["path_to_image"] == "train/patient00001/study1/view1_frontal.jpg"
    assert row["image_path"].endswith("PNG/train/patient00001/study1/view1_frontal.png")
    assert row["No Finding"] == 1.0 and math.isnan(row["Edema"])
    assert df.loc["train/patient00001/study2/view1_frontal", "Edema"] == -1.0
    assert df.loc["train/patient00001/study2/view1_frontal", "view"] == "AP"
    assert dict(summary.dropped) == {
        "view_not_selected": 2 * N_PATIENTS + 1,  # laterals + the frontal without AP/PA
        "missing_image": 1,
        "no_findings": 1,
    }
    assert summary.kept + summary.dropped_total == summary.counts["images_in_csv"]


def test_split_by_patient(chexpert_root, tmp_path):
    out = tmp_path / "manifest.csv"
    build_manifest(chexpert_root, out, val_fraction=0.25, seed=3)
    df = read_manifest(out).frame
    assert set(df["split"]) == {"train", "validate", "test"}
    assert (df.loc[df["official_split"] == "valid", "split"] == "test").all()
    assert set(df.loc[df["official_split"] == "train", "split"]) == {"train", "validate"}
    per_patient = df.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()  # no patient in two splits
    # seeded: same seed same split, another seed reshuffles patients
    out2 = tmp_path / "manifest2.csv"
    build_manifest(chexpert_root, out2, val_fraction=0.25, seed=3)
    assert read_manifest(out2).frame["split"].tolist() == df["split"].tolist()
    out3 = tmp_path / "manifest3.csv"
    build_manifest(chexpert_root, out3, val_fraction=0.25, seed=4)
    assert read_manifest(out3).frame["split"].tolist() != df["split"].tolist()


def test_without_labels_file_labels_blank(tmp_path):
    root = build_chexpert_plus(tmp_path / "cp", labels=False)
    summary = build_manifest(root, tmp_path / "manifest.csv")
    df = read_manifest(tmp_path / "manifest.csv").frame
    assert df[list(CHEXPERT_LABELS)].isna().all().all()
    assert summary.counts["labels_file_absent"] == 1


def test_keep_missing_findings_and_frontal_view(chexpert_root, tmp_path):
    out = tmp_path / "manifest.csv"
    build_manifest(chexpert_root, out, views="PA,AP,FRONTAL", keep_missing_findings=True)
    df = read_manifest(out).frame.set_index("image_id")
    assert df.loc["train/patient09002/study1/view1_frontal", "findings"] == ""
    assert df.loc["train/patient09003/study1/view1_frontal", "view"] == "FRONTAL"


def test_bad_split_value_names_line(chexpert_root, tmp_path):
    path = chexpert_root / CSV_NAME
    text = path.read_text().replace("\r\n", "\n")
    lines = text.split("\n")
    # each row has a multi-line report: find the physical line where row 2 starts
    start = next(
        i for i, line in enumerate(lines) if line.startswith("train/patient00001/study1/view2")
    )
    path.write_text(text.replace(",train\n", ",holdout\n", 2).replace(",holdout\n", ",train\n", 1))
    with pytest.raises(CxrError, match=rf"{CSV_NAME}:{start + 1}: column 'split': 'holdout'"):
        build_manifest(chexpert_root, tmp_path / "manifest.csv")


def test_privacy_refusal(chexpert_root, tmp_path):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    with pytest.raises(CxrError, match="--allow-in-repo"):
        build_manifest(chexpert_root, tmp_path / "repo" / "manifest.csv")
