"""Fuzz the rule-based labeler: any text (and any cell of a report column) gets labels."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cxrlib.data.manifest import CHEXPERT_LABELS
from cxrlib.metrics.labeler import LATERALITY_COLUMNS, label_report, label_reports

pytestmark = pytest.mark.slow  # the fuzz ci profile runs in make test-all

SIDES = ("left", "right", "bilateral", "unspecified")

WORDS = st.sampled_from(
    [
        "no", "not", "without", "effusion", "pneumothorax", "left", "right", "bilateral",
        "may", "possible", "but", "however", "heart", "enlarged", "cardiomegaly", "tube",
        "clear", "lungs", ".", ";", ",", ":", "\n", "\n\n", "?", "vs.", "e.g.", "1.5",
        "opacity", "edema", "fracture", "rule out", "no evidence of", "XXXX", "___",
    ]
)  # fmt: skip
NEAR_REPORTS = st.lists(WORDS, max_size=30).map(" ".join)
CELLS = st.one_of(st.text(), NEAR_REPORTS, st.none(), st.floats(), st.integers(), st.binary())


@given(st.one_of(st.text(), NEAR_REPORTS))
def test_label_report_any_text(text):
    labels = label_report(text)
    for label in CHEXPERT_LABELS:
        assert labels[label] in (1.0, 0.0, -1.0) or math.isnan(labels[label]), labels
    for column in LATERALITY_COLUMNS:
        assert labels[column] in (*SIDES, None), labels


@given(st.lists(CELLS, max_size=5))
def test_label_reports_any_cells(cells):
    frame = label_reports(cells)
    assert len(frame) == len(cells)
    assert set(CHEXPERT_LABELS) <= set(frame.columns)
