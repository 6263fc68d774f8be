"""The rule-based CheXpert labeler (cxrlib-rule-v3): hand-written sentences with exact
labels, the ``cxr label`` command, the IU X-ray validation (real data: skipped without
``../shared``)."""

import math
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrlib.base.errors import CxrError
from cxrlib.cli import main
from cxrlib.data.manifest import CHEXPERT_LABELS
from cxrlib.data.phantom import phantom_study
from cxrlib.data.phantom.findings import labels
from cxrlib.data.phantom.text import findings_text
from cxrlib.data.sections import split_sentences
from cxrlib.evaluate import iu_validation as iu
from cxrlib.metrics.labeler import (
    LABELER_NAME,
    LATERALITY_COLUMNS,
    LEXICON_PATH,
    Labeler,
    find_mentions,
    label_report,
    label_reports,
    load_lexicon,
)

ROOT = Path(__file__).parents[2]
IU_REPORTS = ROOT.parent / "shared" / "data" / "iu-xray" / "NLMCXR_reports.tgz"
needs_iu = pytest.mark.skipif(
    not IU_REPORTS.is_file(),
    reason=f"real IU X-ray reports not found at {IU_REPORTS} (../shared/data beside the repo)",
)


def labels_of(text: str) -> dict:
    """Non-blank labels and lateralities of ``text``."""
    out = {}
    for key, value in label_report(text).items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[key] = value
    return out


# --- mentions, negation, uncertainty ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # negation before the mention
        ("No pleural effusion.", {"Pleural Effusion": 0.0}),
        ("The lungs are clear without focal consolidation.", {"Consolidation": 0.0}),
        ("Negative for pneumothorax.", {"Pneumothorax": 0.0}),
        ("Lungs are free of infiltrate.", {"Lung Opacity": 0.0}),
        (
            "No pneumothorax, pleural effusion, or consolidation.",
            {
                "Pneumothorax": 0.0,
                "Pleural Effusion": 0.0,
                "Consolidation": 0.0,
            },
        ),
        # a trigger inside the mention phrase
        ("The heart is not enlarged.", {"Cardiomegaly": 0.0}),
        # negation after the mention
        ("The pneumothorax has resolved.", {"Pneumothorax": 0.0}),
        ("The previously seen nodule is not seen on this study.", {"Lung Lesion": 0.0}),
        ("Pneumonia has been ruled out.", {"Pneumonia": 0.0}),
        # a phrase negative in itself
        ("Heart size is normal.", {"Cardiomegaly": 0.0}),
        ("Normal heart size.", {"Cardiomegaly": 0.0}),
        ("Heart size is at the upper limits of normal.", {"Cardiomegaly": 0.0}),
        # positive
        ("Mild cardiomegaly.", {"Cardiomegaly": 1.0}),
        ("The heart is mildly enlarged.", {"Cardiomegaly": 1.0}),
        ("Healed fracture of a rib.", {"Fracture": 1.0}),
        # "no change" changes nothing
        ("No change in the surgical clips.", {"Support Devices": 1.0}),
        # blood and air in the pleural space: both observations
        ("Moderate hemopneumothorax.", {"Pneumothorax": 1.0, "Pleural Effusion": 1.0}),
        # an imitated finding is absent
        ("A skin fold simulating a pneumothorax.", {"Pneumothorax": 0.0}),
        ("Overlying soft tissue mimicking a nodule.", {"Lung Lesion": 0.0}),
    ],
)
def test_negation_and_positive(text, expected):
    got = labels_of(text)
    got.pop("No Finding", None)
    assert {k: v for k, v in got.items() if "laterality" not in k} == expected


def test_scope_ends_at_but():
    got = labels_of("No pneumothorax, but there is a small left pleural effusion.")
    assert got["Pneumothorax"] == 0.0
    assert got["Pleural Effusion"] == 1.0
    assert got["Pleural Effusion laterality"] == "left"


@pytest.mark.parametrize("breaker", ["however", "although", "which", "aside from", "except"])
def test_other_scope_ends(breaker):
    got = labels_of(f"No effusion {breaker} atelectasis at the bases.")
    assert got["Pleural Effusion"] == 0.0
    assert got["Atelectasis"] == 1.0


def test_scope_ends_at_the_sentence():
    got = labels_of("No pneumothorax. Small pleural effusion.")
    assert got["Pneumothorax"] == 0.0
    assert got["Pleural Effusion"] == 1.0


@pytest.mark.parametrize(
    ("text", "observation"),
    [
        ("Possible right lower lobe pneumonia.", "Pneumonia"),
        ("Pneumonia cannot be excluded.", "Pneumonia"),
        ("Cannot exclude a small pneumothorax.", "Pneumothorax"),
        ("The opacity may represent atelectasis.", "Atelectasis"),
        ("Findings are suggestive of pulmonary edema.", "Edema"),
        ("Scarring versus atelectasis at the left base.", "Atelectasis"),
        ("Atelectasis versus scarring at the left base.", "Atelectasis"),
        ("Borderline cardiomegaly.", "Cardiomegaly"),
        ("Questionable nodule in the right upper lobe.", "Lung Lesion"),
        ("A small effusion is not excluded.", "Pleural Effusion"),
        ("Evaluation for pleural fluid is limited.", "Pleural Effusion"),
        ("Assessment for pneumothorax.", "Pneumothorax"),
    ],
)
def test_uncertainty(text, observation):
    assert label_report(text)[observation] == -1.0


def test_negation_voids_a_suggestion():
    got = labels_of("No focal consolidation to suggest pneumonia.")
    assert got["Consolidation"] == 0.0
    assert got["Pneumonia"] == 0.0


def test_nearest_trigger_wins():
    got = labels_of("Possible left lower lobe atelectasis without pleural effusion.")
    assert got["Atelectasis"] == -1.0
    assert got["Pleural Effusion"] == 0.0


def test_mentions_explain_the_label():
    (m,) = [m for m in find_mentions("Pneumonia cannot be excluded.") if m.observation]
    assert (m.observation, m.kind, m.value, m.text) == ("Pneumonia", "positive", -1.0, "pneumonia")
    assert m.trigger == "cannot be excluded"


def test_pericardial_effusion_is_not_pleural():
    assert math.isnan(label_report("Small pericardial effusion.")["Pleural Effusion"])


# --- aggregation -------------------------------------------------------------------------


def test_positive_wins():
    text = "There is a left pleural effusion. No pleural effusion on the right."
    assert label_report(text)["Pleural Effusion"] == 1.0
    text = "Possible atelectasis at the left base. Atelectasis at the right base."
    assert label_report(text)["Atelectasis"] == 1.0


def test_negative_and_uncertain_give_uncertain():
    text = "No consolidation in the right lung. Possible consolidation at the left base."
    assert label_report(text)["Consolidation"] == -1.0


def test_not_mentioned_is_blank():
    got = label_report("No pneumothorax.")
    assert all(
        math.isnan(got[o]) for o in CHEXPERT_LABELS if o not in ("Pneumothorax", "No Finding")
    )


# --- No Finding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "no_finding"),
    [
        ("Normal heart size. No pneumothorax or pleural effusion.", 1.0),
        ("Normal chest.", 1.0),
        ("A right PICC line terminates in the SVC. No pleural effusion.", 1.0),
        ("Possible small left effusion.", math.nan),
        ("Mild cardiomegaly.", math.nan),
        ("Endotracheal tube in place. Right lower lobe consolidation.", math.nan),
    ],
)
def test_no_finding_rule(text, no_finding):
    got = label_report(text)["No Finding"]
    assert (math.isnan(got) and math.isnan(no_finding)) or got == no_finding


def test_support_devices_do_not_cancel_no_finding():
    got = label_report("Left chest wall pacemaker with leads in the right ventricle.")
    assert got["Support Devices"] == 1.0
    assert got["No Finding"] == 1.0


# --- laterality ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "observation", "side"),
    [
        ("Small right pleural effusion.", "Pleural Effusion", "right"),
        ("Left pneumothorax.", "Pneumothorax", "left"),
        ("Bilateral pleural effusions.", "Pleural Effusion", "bilateral"),
        ("Small right and moderate left pleural effusions.", "Pleural Effusion", "bilateral"),
        ("Pleural effusions, right greater than left.", "Pleural Effusion", "bilateral"),
        ("Opacity in the left lower lobe.", "Lung Opacity", "left"),
        ("Patchy opacities bilaterally.", "Lung Opacity", "bilateral"),
        ("Bibasilar atelectasis.", "Atelectasis", "bilateral"),
        ("Lingular consolidation.", "Consolidation", "left"),
        ("A 1 cm nodule in the right upper lobe.", "Lung Lesion", "right"),
        ("Left basilar opacity, likely atelectasis.", "Atelectasis", "left"),
        ("Small pleural effusion.", "Pleural Effusion", "unspecified"),
    ],
)
def test_laterality(text, observation, side):
    assert label_report(text)[f"{observation} laterality"] == side


def test_laterality_attaches_to_the_right_mention():
    got = label_report("Right lower lobe atelectasis and left pleural effusion.")
    assert got["Atelectasis laterality"] == "right"
    assert got["Pleural Effusion laterality"] == "left"
    got = label_report("Effusion on the left and atelectasis on the right.")
    assert got["Pleural Effusion laterality"] == "left"
    assert got["Atelectasis laterality"] == "right"


def test_laterality_blank_unless_positive_or_uncertain():
    got = label_report("No left pleural effusion.")
    assert got["Pleural Effusion"] == 0.0
    assert got["Pleural Effusion laterality"] is None
    assert label_report("Possible left pneumothorax.")["Pneumothorax laterality"] == "left"


# --- empty text, batches, sentences -------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n ", None, float("nan")])
def test_empty_text_is_all_blank(text):
    got = label_report(text)
    assert all(math.isnan(got[o]) for o in CHEXPERT_LABELS)
    assert all(got[c] is None for c in LATERALITY_COLUMNS)


def test_label_reports_frame():
    texts = ["Mild cardiomegaly.", "", None, "Small left pleural effusion."]
    frame = label_reports(pd.Series(texts))
    assert list(frame.columns) == list(CHEXPERT_LABELS) + list(LATERALITY_COLUMNS)
    assert len(frame) == 4 and list(frame.index) == [0, 1, 2, 3]
    assert all(frame[o].dtype == float for o in CHEXPERT_LABELS)
    assert frame.loc[0, "Cardiomegaly"] == 1.0
    assert frame.loc[1].iloc[:14].isna().all() and frame.loc[2].iloc[:14].isna().all()
    assert frame.loc[3, "Pleural Effusion laterality"] == "left"
    assert frame.loc[0, "No Finding"] != frame.loc[0, "No Finding"]  # NaN
    assert label_reports([]).shape == (0, 14 + len(LATERALITY_COLUMNS))


def test_split_sentences():
    text = "Heart size is normal. Lungs are clear; no effusion.\n\nNodule measures 1.5 cm"
    assert split_sentences(text) == [
        "Heart size is normal.",
        "Lungs are clear;",
        "no effusion.",
        "Nodule measures 1.5 cm",
    ]
    assert split_sentences("Atelectasis vs. scarring.") == ["Atelectasis vs. scarring."]
    assert split_sentences("") == [] and split_sentences(None) == []


def test_a_blank_line_ends_a_sentence():
    # without the paragraph break, "no" would cover "cardiomegaly"
    got = label_report("No pleural effusion\n\nCardiomegaly")
    assert got["Pleural Effusion"] == 0.0 and got["Cardiomegaly"] == 1.0


def test_case_and_whitespace_do_not_matter():
    a = label_report("NO   PNEUMOTHORAX.\nSMALL LEFT\tEFFUSION.")
    b = label_report("No pneumothorax. Small left effusion.")
    assert str(a) == str(b)  # NaN != NaN: compare the printed dicts


# --- lexicon -------------------------------------------------------------------------------


def test_lexicon_is_data_in_the_package():
    data = yaml.safe_load(LEXICON_PATH.read_text())
    assert set(data["observations"]) == set(CHEXPERT_LABELS) - {"No Finding"}
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["cxrlib"]
    assert any(LEXICON_PATH.relative_to(ROOT / "cxrlib").match(g) for g in globs)
    assert f"cxrlib-rule-v{data['version']}" == LABELER_NAME  # the name carries the version


def test_custom_lexicon_and_its_errors(tmp_path):
    lexicon = load_lexicon()
    lexicon["observations"]["Pneumothorax"]["positive"].append("air leak")
    assert Labeler(lexicon).label("Small air leak.")["Pneumothorax"] == 1.0
    bad = dict(lexicon, observations={"Pneumothorax": {"positive": ["<<nope>>"]}})
    with pytest.raises(CxrError, match="unknown macro <<nope>>"):
        Labeler(bad)
    with pytest.raises(CxrError, match="not a CheXpert observation"):
        Labeler(dict(lexicon, observations={"Pneumothoraxx": {"positive": ["x"]}}))
    with pytest.raises(CxrError, match="cannot read the lexicon"):
        Labeler(tmp_path / "missing.yaml")


def test_agrees_with_the_phantom_reports():
    """The phantom writes Findings whose CheXpert labels are known (hand-made templates)."""
    n, exact = 300, 0
    for i in range(n):
        study = phantom_study(i, 7)
        got = label_report(findings_text(study, np.random.default_rng([7, i, 1])))
        truth = labels(study)
        exact += all(
            (math.isnan(truth[o]) and math.isnan(got[o])) or truth[o] == got[o]
            for o in CHEXPERT_LABELS
        )
    assert exact / n >= 0.97  # measured 0.99 (seed 0, 600 studies)


# --- cxr label ------------------------------------------------------------------------------


def test_cli_label_csv(tmp_path, capsys):
    src = tmp_path / "reports.csv"
    pd.DataFrame(
        {
            "study_id": ["s1", "s2", "s3"],
            "findings": ["Mild cardiomegaly. No effusion.", "", "Small right pneumothorax."],
            "Cardiomegaly": ["", "", ""],  # a manifest's blank label column is filled in place
        }
    ).to_csv(src, index=False)
    out = tmp_path / "out" / "labels.csv"
    assert main(["label", "--in", str(src), "--text-column", "findings", "--out", str(out)]) == 0
    assert "labelled 3 reports (1 empty)" in capsys.readouterr().out
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(got.columns[:3]) == ["study_id", "findings", "Cardiomegaly"]
    assert set(CHEXPERT_LABELS) | set(LATERALITY_COLUMNS) | {"labeler"} <= set(got.columns)
    assert got["study_id"].tolist() == ["s1", "s2", "s3"]
    assert got["Cardiomegaly"].tolist() == ["1", "", ""]
    assert got["Pleural Effusion"].tolist() == ["0", "", ""]
    assert got["Pneumothorax laterality"].tolist() == ["", "", "right"]
    assert got["No Finding"].tolist() == ["", "", ""]
    assert set(got["labeler"]) == {LABELER_NAME}
    assert not list(out.parent.glob(".*.tmp"))


def test_cli_label_errors(tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    assert main(["label", "--in", str(missing), "--out", str(tmp_path / "o.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and err[0].startswith("cxr: error:")
    src = tmp_path / "r.csv"
    src.write_text("study_id,report\ns1,No effusion.\n")
    assert main(["label", "--in", str(src), "--out", str(tmp_path / "o.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(src) in err[0] and "'findings'" in err[0]
    assert not (tmp_path / "o.csv").exists()
    with pytest.raises(SystemExit) as code:
        main(["label", "--out", str(tmp_path / "o.csv")])
    assert code.value.code == 2


# --- IU X-ray validation ----------------------------------------------------------------------


def test_mesh_mapping():
    assert iu.mesh_observations(
        [
            "Pleural Effusion/right/small",
            "Opacity/lung/base/left/round",
            "Cardiac Shadow/enlarged/mild",
            "Thickening/pleura/apex",
            "Catheters, Indwelling/right",
        ]
    ) == {
        "Pleural Effusion",
        "Lung Opacity",
        "Lung Lesion",
        "Cardiomegaly",
        "Pleural Other",
        "Support Devices",
    }
    assert (
        iu.mesh_observations(["Cardiac Shadow/borderline", "Thickening/bronchovascular"]) == set()
    )
    assert iu.mesh_observations(["normal"]) == {"No Finding"}
    assert iu.mesh_sides(["Pleural Effusion/right", "Pleural Effusion/left/small"]) == {
        "Pleural Effusion": "bilateral"
    }
    assert iu.mesh_sides(["Opacity/lung/base/left", "Cardiomegaly"]) == {"Lung Opacity": "left"}


def test_metrics_count_uncertain_as_positive():
    rows = []
    for number, gt, value in [
        (1, True, 1.0),
        (3, True, -1.0),
        (5, False, -1.0),
        (7, True, 0.0),
        (9, False, math.nan),
    ]:
        row = iu.truth_row(number, ["Pneumothorax"] if gt else ["normal"])
        row.update(dict.fromkeys(CHEXPERT_LABELS, math.nan))
        row["Pneumothorax"] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    m = iu.metrics_table(frame).set_index(["half", "observation"])
    ptx = m.loc[("odd", "Pneumothorax")]
    assert (ptx["tp"], ptx["fp"], ptx["fn"]) == (2, 1, 1)
    assert ptx["precision"] == pytest.approx(2 / 3) and ptx["recall"] == pytest.approx(2 / 3)
    assert ptx["f1_uncertain_negative"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))
    assert m.loc[("even", "Pneumothorax")]["reports"] == 0


def _report_xml(n: int, findings: str, impression: str, majors: list[str]) -> str:
    """One report in the Open-i XML structure (invented text)."""
    mesh = "".join(f"<major>{m}</major>" for m in majors)
    return (
        '<?xml version="1.0" encoding="utf-8"?><eCitation><MedlineCitation><Article>'
        f'<Abstract><AbstractText Label="FINDINGS">{findings}</AbstractText>'
        f'<AbstractText Label="IMPRESSION">{impression}</AbstractText></Abstract>'
        f"</Article></MedlineCitation><MeSH>{mesh}</MeSH></eCitation>"
    )


def test_cli_iu_validate_on_invented_reports(tmp_path, capsys):
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    reports = {
        1: ("Heart size normal. Lungs clear.", "Normal chest.", ["normal"]),
        2: ("Small right pleural effusion.", "Effusion.", ["Pleural Effusion/right/small"]),
        3: ("Mild cardiomegaly. No effusion.", "Cardiomegaly.", ["Cardiomegaly/mild"]),
        4: ("No pneumothorax.", "No acute disease.", ["normal"]),
        5: ("", "", ["normal"]),  # no text: left out
        6: ("Clear lungs.", "Clear.", ["No Indexing"]),  # no annotation: left out
    }
    for n, (f, i, majors) in reports.items():
        (folder / f"{n}.xml").write_text(_report_xml(n, f, i, majors))
    out = tmp_path / "val"
    assert main(["label", "iu-validate", "--reports", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| Cardiomegaly |" in printed
    metrics = pd.read_csv(out / "iu_labeler_metrics.csv")
    assert set(metrics["half"]) == {"odd", "even"}
    odd = metrics[metrics["half"] == "odd"].set_index("observation")
    assert odd.loc["Cardiomegaly", "f1"] == 1.0 and odd.loc["No Finding", "f1"] == 1.0
    even = metrics[metrics["half"] == "even"].set_index("observation")
    assert even.loc["Pleural Effusion", "f1"] == 1.0
    per_report = pd.read_csv(out / "iu_labeler_reports.csv")
    assert sorted(per_report["number"]) == [1, 2, 3, 4]
    md = (out / "iu_labeler_validation.md").read_text()
    assert "left out: no_mesh_annotation 1, empty_findings_and_impression 1" in md
    for f, _i, _ in reports.values():  # numbers only: no report text is written
        for written in out.iterdir():
            assert not f or f not in written.read_text()


@pytest.mark.shared_data
@needs_iu
def test_iu_even_ids_reach_the_measured_agreement():
    """Held-out (even) ids, never tuned on: the values reached (docs/labeler.md), as floors.

    Targets: F1 >= 0.90 for Cardiomegaly, Pleural Effusion and Pneumothorax, macro >=
    0.80. Met: Cardiomegaly 0.985, macro 0.856; not met: Pleural Effusion 0.897,
    Pneumothorax 0.846 (13 positive reports). The floors guard against regressions.
    """
    result = iu.validate_iu(IU_REPORTS)
    m = result.metrics.set_index(["half", "observation"])["f1"]
    assert m[("even", "Cardiomegaly")] >= 0.98
    assert m[("even", "Pleural Effusion")] >= 0.89
    assert m[("even", "Pneumothorax")] >= 0.84
    assert m[("even", "macro (mapped)")] >= 0.85
    assert m[("even", "Lung Opacity")] >= 0.97
    assert m[("even", "Support Devices")] >= 0.93
    assert m[("even", iu.NO_MAPPED_FINDING)] >= 0.97
    assert m[("odd", "macro (mapped)")] >= 0.87
    assert m[("odd", "Pleural Effusion")] >= 0.92
    unc_neg = result.metrics.set_index(["half", "observation"])["f1_uncertain_negative"]
    assert unc_neg[("even", "Pneumothorax")] >= 0.87
    assert unc_neg[("even", "Pleural Effusion")] >= 0.91
    lat = result.laterality.set_index(["half", "observation"])["accuracy"]
    assert lat[("even", "Pleural Effusion")] >= 0.99
    assert lat[("even", "Lung Opacity")] >= 0.96
    assert sum(result.excluded.values()) == 3955 - len(result.reports)
