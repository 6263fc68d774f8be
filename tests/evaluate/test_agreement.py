"""`cxr label agreement`: a labeler against a manifest's label columns."""

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest

from cxrlib.base.errors import CxrError
from cxrlib.cli import main
from cxrlib.data.manifest import CHEXPERT_LABELS
from cxrlib.evaluate.agreement import label_agreement
from cxrlib.metrics.clinical import CLINICAL_KEYS
from cxrlib.metrics.labeler import LABELER_NAME


def _manifest(rows: list[tuple[str, str, dict[str, float]]]) -> pd.DataFrame:
    """(findings, split, labels) per row; every other label blank."""
    frame = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(len(rows))],
            "study_id": [f"s{k}" for k in range(len(rows))],
            "split": [split for _, split, _ in rows],
            "findings": [text for text, _, _ in rows],
        }
    )
    for obs in CHEXPERT_LABELS:
        frame[obs] = [labels.get(obs, math.nan) for _, _, labels in rows]
    return frame


# Hand-worked: rows 2 (empty text) and 3 (no label) are skipped; on the other three the
# labeler gives effusion 1 (row 0), effusion 0 + pneumothorax -1 (row 1), cardiomegaly 1
# (row 4), against the reference effusion 1; effusion 0 + pneumothorax 1; edema 1.
ROWS = [
    ("Small left pleural effusion.", "test", {"Pleural Effusion": 1.0}),
    (
        "No pleural effusion. Possible pneumothorax.",
        "test",
        {"Pleural Effusion": 0.0, "Pneumothorax": 1.0},
    ),
    ("", "test", {"Edema": 1.0}),
    ("The heart is normal.", "test", {}),
    ("Cardiomegaly.", "test", {"Edema": 1.0}),
]


def test_hand_computed_agreement(caplog):
    with caplog.at_level(logging.WARNING, logger="cxrlib.evaluate.agreement"):
        result = label_agreement(_manifest(ROWS), n_bootstrap=0, progress=False)
    assert "2 of 5 rows skipped (1 empty text, 1 without any label)" in caplog.text
    assert result.counts == {
        "rows": 5,
        "skipped_empty_text": 1,
        "skipped_no_labels": 1,
        "n": 3,
        "n_studies": 3,
    }
    m = {k: r.value for k, r in result.metrics.items()}
    assert list(m) == list(CLINICAL_KEYS)
    # uncertain as positive: TP effusion + pneumothorax, FP cardiomegaly, FN edema
    assert m["clinical.uncertain_as_positive.micro_14"] == pytest.approx(4 / 6)
    # uncertain as negative: the pneumothorax -1 is a miss
    assert m["clinical.uncertain_as_negative.micro_14"] == pytest.approx(2 / 5)
    # the five: effusion TP, cardiomegaly FP, edema FN under both conventions
    assert m["clinical.uncertain_as_positive.micro_5"] == pytest.approx(2 / 4)
    assert m["clinical.uncertain_as_negative.micro_5"] == pytest.approx(2 / 4)
    # macro over the five: effusion 1, cardiomegaly 0, edema 0, the other two 0 (0/0)
    assert m["clinical.uncertain_as_negative.macro_5"] == pytest.approx(1 / 5)
    table = result.per_observation.set_index(["convention", "observation"])
    ptx = table.loc[("uncertain_as_negative", "Pneumothorax")]
    assert (ptx.tp, ptx.fp, ptx.fn, ptx.f1) == (0, 0, 1, 0.0)
    assert table.loc[("uncertain_as_positive", "Pneumothorax"), "f1"] == 1.0
    # exact agreement over 1/0/-1/blank: pneumothorax differs on row 1 only (-1 vs 1)
    assert table.loc[("uncertain_as_positive", "Pneumothorax"), "exact_agreement"] == (
        pytest.approx(2 / 3)
    )
    assert table.loc[("uncertain_as_positive", "Pleural Effusion"), "exact_agreement"] == 1.0
    assert set(result.per_observation["labeler"]) == {LABELER_NAME}
    assert set(result.per_observation["reference_labels"]) == {"manifest"}


def test_text_columns_are_joined_and_split_filters():
    frame = _manifest(ROWS)
    frame["impression"] = ["", "", "Moderate pulmonary edema.", "", ""]
    result = label_agreement(
        frame, text_columns=("findings", "impression"), n_bootstrap=0, progress=False
    )
    assert result.counts["skipped_empty_text"] == 0 and result.counts["n"] == 4
    table = result.per_observation.set_index(["convention", "observation"])
    assert table.loc[("uncertain_as_negative", "Edema"), "tp"] == 1  # from the impression
    frame.loc[[0, 1], "split"] = "train"
    only_test = label_agreement(frame, split="test", n_bootstrap=0, progress=False)
    assert only_test.counts["rows"] == 3 and only_test.counts["n"] == 1


def test_bootstrap_intervals_contain_the_value():
    rng = np.random.default_rng(0)
    rows = [ROWS[k] for k in rng.integers(0, 5, size=40)]
    result = label_agreement(_manifest(rows), n_bootstrap=200, seed=1, progress=False)
    for r in result.metrics.values():
        assert r.ci_low <= r.value <= r.ci_high
        assert r.n_resamples == 200 and r.n == result.counts["n"]


def test_bad_input_is_one_line():
    frame = _manifest(ROWS)
    with pytest.raises(CxrError, match="missing column"):
        label_agreement(frame.drop(columns=["Edema"]), n_bootstrap=0)
    with pytest.raises(CxrError, match="missing column.*impression"):
        label_agreement(frame, text_columns=("impression",), n_bootstrap=0)
    with pytest.raises(CxrError, match="no row with both text"):
        label_agreement(frame.iloc[[2, 3]], n_bootstrap=0)
    with pytest.raises(CxrError, match="split must be one of"):
        label_agreement(frame, split="dev", n_bootstrap=0)


def test_cli_on_a_phantom_manifest(tmp_path, capsys):
    data, out = tmp_path / "ph", tmp_path / "agree"
    assert main(["phantom", "--out", str(data), "--n", "40", "--size", "32"]) == 0
    code = main(
        [
            "label",
            "agreement",
            "--manifest",
            str(data / "manifest.csv"),
            "--out",
            str(out),
            "--bootstrap",
            "50",
            "--no-progress",
        ]
    )
    assert code == 0
    assert "| clinical.uncertain_as_positive.micro_14 |" in capsys.readouterr().out
    data_json = json.loads((out / "agreement.json").read_text())
    assert set(data_json["metrics"]) == set(CLINICAL_KEYS)
    assert data_json["labeler"] == LABELER_NAME and data_json["reference_labels"] == "manifest"
    assert data_json["counts"]["n"] == 40 and "git_commit" in data_json["provenance"]
    # the phantom's own Findings against its drawn labels (docs/labeler.md: 99% exact)
    assert data_json["metrics"]["clinical.uncertain_as_positive.micro_14"]["value"] >= 0.98
    table = pd.read_csv(out / "agreement_per_observation.csv")
    assert len(table) == 28 and table["exact_agreement"].between(0, 1).all()
    assert "exact agreement" in (out / "agreement.md").read_text()
    assert main(["label", "agreement", "--manifest", str(tmp_path / "no.csv"), "--out", "x"]) == 1
    assert "file does not exist" in capsys.readouterr().err
