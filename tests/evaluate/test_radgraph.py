"""RadGraph F1 (simple / partial / complete) on hand-made annotations, exact values.

The definitions follow the radgraph package's ``rewards.py`` (see the module docstring
of :mod:`cxrlib.metrics.radgraph`); each expected value is worked out in a comment.
"""

import numpy as np
import pytest

from cxrlib.metrics import radgraph as rg
from cxrlib.metrics.radgraph import (
    LEVELS,
    RADGRAPH_KEYS,
    candidates,
    pair_scores,
    radgraph_scores,
    radgraph_unavailable_reason,
    set_f1,
)


def ent(tokens, label, *relations):
    return {
        "tokens": tokens,
        "label": label,
        "start_ix": 0,
        "end_ix": 0,
        "relations": [list(r) for r in relations],
    }


# Reference: "small left pleural effusion. no pneumothorax."
REF = {
    "entities": {
        "1": ent("effusion", "OBS-DP", ("located_at", "2"), ("modify", "3")),
        "2": ent("pleural", "ANAT-DP"),
        "3": ent("small", "OBS-DP"),
        "4": ent("pneumothorax", "OBS-DA"),
    }
}
# Hypothesis: "pleural effusion. mild edema." (effusion located at pleural only)
HYP = {
    "entities": {
        "1": ent("effusion", "OBS-DP", ("located_at", "2")),
        "2": ent("pleural", "ANAT-DP"),
        "3": ent("edema", "OBS-DP"),
        "4": ent("mild", "OBS-DP", ("modify", "3")),
    }
}


def test_candidates_follow_the_package_definitions():
    assert candidates(REF, "simple") == {
        ("effusion", "OBS-DP"),
        ("pleural", "ANAT-DP"),
        ("small", "OBS-DP"),
        ("pneumothorax", "OBS-DA"),
    }
    assert candidates(REF, "partial") == {
        ("effusion", "OBS-DP", True),
        ("pleural", "ANAT-DP"),
        ("small", "OBS-DP"),
        ("pneumothorax", "OBS-DA"),
    }
    assert candidates(REF, "complete") == {
        ("effusion", "OBS-DP", "located_at", "pleural"),
        ("effusion", "OBS-DP", "modify", "small"),
        ("pleural", "ANAT-DP"),
        ("small", "OBS-DP"),
        ("pneumothorax", "OBS-DA"),
    }


def test_exact_pair_scores():
    s = pair_scores(HYP, REF)
    # simple: H = {effusion, pleural, edema, mild}, R = {effusion, pleural, small,
    # pneumothorax}: 2 shared -> P = R = 2/4 -> F1 = 0.5
    assert s["simple"] == pytest.approx(0.5)
    # partial: H = {(effusion, T), pleural, edema, (mild, T)}, R = {(effusion, T),
    # pleural, small, pneumothorax}: 2 shared of 4 and 4 -> 0.5
    assert s["partial"] == pytest.approx(0.5)
    # complete: H = {(effusion located_at pleural), pleural, edema, (mild modify edema)}
    # (4), R has 5 (two effusion relations): shared = effusion-located_at-pleural and
    # pleural -> P = 2/4, R = 2/5, F1 = 2 * 0.5 * 0.4 / 0.9 = 4/9
    assert s["complete"] == pytest.approx(4 / 9)


def test_partial_differs_from_simple_when_relation_existence_differs():
    hyp = {"entities": {"1": ent("effusion", "OBS-DP"), "2": ent("pleural", "ANAT-DP")}}
    s = pair_scores(hyp, REF)
    # simple: 2 shared, P = 2/2, R = 2/4 -> 2/3; partial: effusion without relation
    # does not match (effusion, OBS-DP, True): 1 shared, P = 1/2, R = 1/4 -> 1/3;
    # complete: 1 shared, P = 1/2, R = 1/5 -> 2/7
    assert (s["simple"], s["partial"], s["complete"]) == (
        pytest.approx(2 / 3),
        pytest.approx(1 / 3),
        pytest.approx(2 / 7),
    )


def test_identical_annotations_score_one_and_duplicates_collapse():
    assert pair_scores(REF, REF) == {level: 1.0 for level in LEVELS}
    doubled = {"entities": dict(REF["entities"], **{"5": ent("pleural", "ANAT-DP")})}
    assert pair_scores(doubled, REF) == {level: 1.0 for level in LEVELS}


def test_complete_lowercases_only_related_entities():
    upper = {
        "entities": {
            "1": ent("Effusion", "OBS-DP", ("located_at", "2"), ("modify", "3")),
            "2": ent("pleural", "ANAT-DP"),
            "3": ent("small", "OBS-DP"),
            "4": ent("pneumothorax", "OBS-DA"),
        }
    }
    s = pair_scores(upper, REF)
    # simple: ("Effusion", ...) != ("effusion", ...): 3 of 4 -> 0.75; complete: tuples of
    # related entities are lower-cased, so all 5 match -> 1
    assert s["simple"] == pytest.approx(0.75)
    assert s["complete"] == pytest.approx(1.0)


def test_empty_reports_and_no_entities_score_zero():
    none = {"entities": {}}
    for hyp, ref in ((None, REF), (HYP, None), (none, REF), (HYP, none), (none, none)):
        assert pair_scores(hyp, ref) == {level: 0.0 for level in LEVELS}
    assert set_f1(set(), {1}) == (0.0, 0.0, 0.0)
    assert set_f1({1, 2}, {2, 3, 4}) == pytest.approx((0.5, 1 / 3, 0.4))


def test_mean_over_reports_and_resampling():
    scores = radgraph_scores([HYP, REF, None], [REF, REF, REF], model="given")
    assert scores.model == "given"
    values = scores.scores()
    assert list(values) == list(RADGRAPH_KEYS)
    # per report simple: 0.5, 1, 0 -> mean 0.5; complete: 4/9, 1, 0
    assert values["radgraph.simple"] == pytest.approx(0.5)
    assert values["radgraph.complete"] == pytest.approx((4 / 9 + 1) / 3)
    assert scores.scores(np.array([1, 1, 0]))["radgraph.simple"] == pytest.approx(2.5 / 3)
    with pytest.raises(ValueError):
        radgraph_scores([HYP], [])


def test_unavailable_reasons(monkeypatch):
    assert "unknown RadGraph model" in radgraph_unavailable_reason("radgraph-3")
    monkeypatch.setattr(rg.importlib.util, "find_spec", lambda name: None)
    reason = radgraph_unavailable_reason("radgraph")
    assert "radgraph package" in reason and "not installed" in reason
    with pytest.raises(RuntimeError, match="radgraph package"):
        rg.RadGraphAnnotator("radgraph")


def test_installed_package_without_weights_is_unavailable(monkeypatch, tmp_path):
    # the package is optional (weights from the hub): stand in for an installed one
    monkeypatch.setattr(rg.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(rg, "_radgraph_cache", lambda model: tmp_path / "radgraph.tar.gz")
    assert "not downloaded automatically" in radgraph_unavailable_reason("radgraph")
    (tmp_path / "radgraph.tar.gz").write_bytes(b"")  # the archive fetched once
    assert radgraph_unavailable_reason("radgraph") is None
