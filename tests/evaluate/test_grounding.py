"""Grounding on the phantom and the two baselines, on hand-made cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlib.data.manifest import CHEXPERT_LABELS, Manifest
from cxrlib.evaluate.baselines import most_frequent_report, nearest_reports
from cxrlib.evaluate.evaluate import evaluate_generations
from cxrlib.metrics.grounding import GroundingData, grounding
from cxrlib.metrics.labeler import label_reports


def _truth(rows: list[dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        row = {label: np.nan for label in CHEXPERT_LABELS}
        row.update({"effusion_side": "", "pneumothorax_side": ""})
        row.update(r)
        out.append(row)
    return pd.DataFrame(out)


def test_hallucination_omission_and_side():
    generated = label_reports(
        [
            "Small left pleural effusion. No pneumothorax.",  # right side drawn: wrong side
            "Large right pneumothorax.",  # hallucinated pneumothorax, omitted effusion
            "Bilateral pleural effusions.",  # correct, bilateral
            "Possible small pleural effusion.",  # uncertain, no side
        ]
    )
    truth = _truth(
        [
            {"Pleural Effusion": 1.0, "effusion_side": "right"},
            {"Pleural Effusion": 1.0, "effusion_side": "left"},
            {"Pleural Effusion": 1.0, "effusion_side": "bilateral"},
            {"Pleural Effusion": 1.0, "effusion_side": "left"},
        ]
    )
    neg = grounding(generated, truth, "uncertain_as_negative")
    eff = neg.table.set_index("observation").loc["Pleural Effusion"]
    assert (eff["n_generated_positive"], eff["hallucinated"]) == (2, 0)
    assert (eff["n_truth_positive"], eff["omitted"]) == (4, 2)
    assert (eff["n_sided"], eff["side_correct"], eff["unspecified"]) == (2, 1, 0)
    assert eff["laterality_accuracy"] == 0.5 and eff["omission_rate"] == 0.5
    ptx = neg.table.set_index("observation").loc["Pneumothorax"]
    assert (ptx["hallucinated"], ptx["hallucination_rate"]) == (1, 1.0)
    assert neg.overall["hallucination_rate"] == pytest.approx(1 / 3)
    assert neg.overall["omission_rate"] == pytest.approx(2 / 4)
    assert neg.overall["laterality_accuracy"] == 0.5
    pos = grounding(generated, truth, "uncertain_as_positive")
    eff = pos.table.set_index("observation").loc["Pleural Effusion"]
    assert (eff["n_generated_positive"], eff["omitted"], eff["unspecified"]) == (3, 1, 1)
    assert set(pos.table["convention"]) == {"uncertain_as_positive"}


def test_no_positives_gives_nan_rates_not_errors():
    generated = label_reports(["The lungs are clear."])
    result = grounding(generated, _truth([{}]))
    assert math.isnan(result.overall["hallucination_rate"])
    assert math.isnan(result.overall["laterality_accuracy"])
    with pytest.raises(ValueError, match="2 generated rows for 1 studies"):
        grounding(label_reports(["a", "b"]), _truth([{}]))


def test_most_frequent_report_is_deterministic():
    assert most_frequent_report(["b", "a", "b", "a", "c", ""]) == "a"  # tie -> sorted first
    assert most_frequent_report(["x", "y", "y"]) == "y"
    with pytest.raises(ValueError):
        most_frequent_report(["", ""])


def test_nearest_reports_uses_pooled_cosine():
    bank = torch.zeros(3, 2, 2)
    bank[0, :, 0] = 1.0  # direction (1, 0)
    bank[1, :, 1] = 5.0  # direction (0, 1), larger norm: cosine ignores it
    bank[2, 0] = torch.tensor([1.0, 1.0])  # pooled (0.5, 0.5)
    queries = torch.tensor([[[0.1, 2.0], [0.0, 2.0]], [[3.0, 0.0], [3.0, 0.2]]])
    texts, rows = nearest_reports(bank, ["zero", "one", "two"], queries)
    assert rows == [1, 0] and texts == ["one", "zero"]
    with pytest.raises(ValueError, match="3 feature rows for 2 texts"):
        nearest_reports(bank, ["a", "b"], queries)


def test_grounding_data_scores_equal_the_table_and_subsets():
    generated = label_reports(
        ["Small left pleural effusion.", "Large right pneumothorax.", "Bilateral effusions."]
    )
    truth = _truth(
        [
            {"Pleural Effusion": 1.0, "effusion_side": "left"},
            {"Pleural Effusion": 1.0, "effusion_side": "left"},
            {"Pleural Effusion": 1.0, "effusion_side": "right"},
        ]
    )
    data = GroundingData.build(generated, truth)
    full = grounding(generated, truth).overall
    scores = data.scores()
    for key in ("hallucination_rate", "omission_rate", "laterality_accuracy"):
        assert scores[f"grounding.uncertain_as_negative.{key}"] == pytest.approx(full[key])
    sub = data.scores(np.array([0, 0, 2]))  # a bootstrap-style resample
    assert sub["grounding.uncertain_as_negative.laterality_accuracy"] == pytest.approx(2 / 3)
    assert sub["grounding.uncertain_as_negative.omission_rate"] == 0.0


def test_evaluate_generations_reads_the_stated_sides():
    truth = _truth(
        [
            {"Pleural Effusion": 1.0, "effusion_side": "left"},
            {"Pleural Effusion": 1.0, "effusion_side": "right"},
        ]
    )
    truth["image_id"] = ["a", "b"]
    truth["study_id"] = ["sa", "sb"]
    truth["split"] = "test"
    truth["findings"] = ["Small left pleural effusion.", "Small right pleural effusion."]
    pred = pd.DataFrame(
        {"image_id": ["a", "b"], "generated": ["Left pleural effusion.", "Left effusion."]}
    )
    ev = evaluate_generations(
        pred, Manifest(truth, Path(".")), ref_labels="manifest", n_bootstrap=0, progress=False
    )
    assert ev.value("grounding.uncertain_as_negative.laterality_accuracy") == 0.5
    assert ev.value("grounding.uncertain_as_negative.omission_rate") == 0.0
