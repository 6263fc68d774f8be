"""Recognition of a frozen encoder: AUROC, side accuracy, targets, the table."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlib.data.manifest import CHEXPERT_LABELS
from cxrlib.metrics.recognition import auroc, markdown_table, recognition, targets_met


def test_auroc_exact_values_and_ties():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    # one of the four (pos, neg) pairs is ordered wrongly
    assert auroc([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]) == 0.75
    # ties count half
    assert auroc([0, 1], [0.5, 0.5]) == 0.5
    assert auroc([0, 0, 1], [0.2, 0.5, 0.5]) == 0.75
    assert auroc([1, 1], [0.1, 0.2]) is None and auroc([0, 0], [0.1, 0.2]) is None


def _case():
    names = ["Cardiomegaly", "effusion_side"]
    classes = [["not positive", "positive", "uncertain"], ["", "left", "right"]]
    targets = np.array([[1, 1], [2, 2], [0, 0], [0, 1]])
    probs = [
        np.array([[0.1, 0.8, 0.1], [0.4, 0.1, 0.5], [0.9, 0.05, 0.05], [0.3, 0.3, 0.4]]),
        # the blank class is ignored where a side is drawn: row 0 -> left (right), row 1
        # -> left (wrong: right drawn), row 3 -> left (right)
        np.array([[0.9, 0.06, 0.04], [0.2, 0.5, 0.3], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2]]),
    ]
    return probs, targets, names, classes


def test_recognition_of_a_small_case():
    result = recognition(*_case())
    assert result["n"] == 4
    # positive-or-uncertain rows 0 and 1 (scores 0.9, 0.6) against rows 2, 3 (0.1, 0.7)
    assert result["auroc"] == {"Cardiomegaly": 0.75}
    assert result["positives"] == {"Cardiomegaly": 2}
    assert result["side_accuracy"] == {"Pleural Effusion": pytest.approx(2 / 3, abs=1e-4)}
    assert result["side_n"] == {"Pleural Effusion": 3}
    assert result["zone_accuracy"] == {}


def test_targets_depend_on_prevalence_and_the_table_renders():
    result = recognition(*_case())
    met = targets_met(result, {"Cardiomegaly": 0.04})
    assert met["Cardiomegaly"] == {"metric": "auroc", "value": 0.75, "target": 0.9, "met": False}
    assert met["Pleural Effusion side"]["target"] == 0.95
    assert targets_met(result, {"Cardiomegaly": 0.2})["Cardiomegaly"]["target"] == 0.97
    record = {"validate": result, "test": result, "train_prevalence": {"Cardiomegaly": 0.2}}
    table = markdown_table(record)
    row = next(line for line in table.splitlines() if line.startswith("| Cardiomegaly"))
    assert row == "| Cardiomegaly | 0.200 | 0.750 | 0.750 |  |  | AUROC >= 0.97 |"
    # a finding with a side accuracy but no AUROC still gets its row
    assert table.splitlines()[3] == (
        "| Pleural Effusion | 0.000 | n/a | n/a | 0.667 | 0.667 | AUROC >= 0.9, side >= 0.95 |"
    )
    assert len(table.splitlines()) == 4
    assert set(CHEXPERT_LABELS) >= {"Cardiomegaly"}
