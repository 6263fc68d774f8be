"""The one empty-denominator convention of precision, recall and F1 (docs/evaluation.md)."""

import math

import numpy as np
import pandas as pd
import pytest

from cxrlib.data.manifest import CHEXPERT_LABELS
from cxrlib.evaluate import iu_validation as iu
from cxrlib.metrics.clinical import clinical_f1
from cxrlib.metrics.rates import precision_recall_f1, ratio


def test_empty_denominators_are_zero():
    assert [float(v) for v in precision_recall_f1(0, 0, 0)] == [0.0, 0.0, 0.0]
    assert [float(v) for v in precision_recall_f1(0, 0, 3)] == [0.0, 0.0, 0.0]  # no prediction
    assert [float(v) for v in precision_recall_f1(0, 2, 0)] == [0.0, 0.0, 0.0]  # no positive
    assert [float(v) for v in precision_recall_f1(1, 1, 2)] == [0.5, 1 / 3, 0.4]
    p, r, f = precision_recall_f1(np.array([0, 3]), np.array([0, 1]), np.array([0, 0]))
    assert (p.tolist(), r.tolist(), f.tolist()) == ([0.0, 0.75], [0.0, 1.0], [0.0, 6 / 7])
    assert ratio(np.array([1, 0]), np.array([4, 0])).tolist() == [0.25, 0.0]


def test_a_label_never_reported_nor_predicted_scores_zero_in_both_places():
    # clinical F1: Edema right once; Fracture has no positive and no prediction
    cols = list(CHEXPERT_LABELS)
    gen = pd.DataFrame([[math.nan] * 14] * 2, columns=cols)
    ref = gen.copy()
    gen.loc[0, "Edema"] = ref.loc[0, "Edema"] = 1.0
    result = clinical_f1(gen, ref, labeler="x")
    table = result.table.set_index(["convention", "observation"])
    for convention in ("uncertain_as_negative", "uncertain_as_positive"):
        row = table.loc[(convention, "Fracture")]
        assert row[["precision", "recall", "f1"]].tolist() == [0.0, 0.0, 0.0]
        assert result.metrics[f"clinical.{convention}.macro_14"] == pytest.approx(1 / 14)
        assert result.metrics[f"clinical.{convention}.micro_14"] == 1.0

    # the IU validation: the same convention (it gave NaN before)
    rows = []
    for number, gt in [(1, True), (3, False)]:
        row = iu.truth_row(number, ["Pneumothorax"] if gt else ["normal"])
        row.update(dict.fromkeys(CHEXPERT_LABELS, math.nan))
        row["Pneumothorax"] = 1.0 if gt else math.nan
        rows.append(row)
    m = iu.metrics_table(pd.DataFrame(rows)).set_index(["half", "observation"])
    fracture = m.loc[("odd", "Fracture")]
    assert (fracture["tp"], fracture["fp"], fracture["fn"]) == (0, 0, 0)
    assert fracture[["precision", "recall", "f1", "f1_uncertain_negative"]].tolist() == [0.0] * 4
    assert m.loc[("odd", "Pneumothorax")]["f1"] == 1.0
    empty_half = m.loc[("even", "Pneumothorax")]
    assert empty_half["reports"] == 0 and empty_half["f1"] == 0.0
