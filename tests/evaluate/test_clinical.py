"""Clinical F1 from CheXpert label frames; labelers (rule, CheXbert loading and errors)."""

import math

import numpy as np
import pandas as pd
import pytest

from cxrlib.base.errors import CxrError
from cxrlib.data.manifest import CHEXPERT_LABELS
from cxrlib.metrics import clinical
from cxrlib.metrics.clinical import (
    CHEXBERT_ORDER,
    CLINICAL_KEYS,
    ChexbertLabeler,
    ClinicalData,
    binarize,
    clinical_f1,
    find_chexbert_checkpoint,
    get_labeler,
)
from cxrlib.metrics.labeler import LABELER_NAME

NAN = math.nan


def frame(rows):
    """Label frame from dicts {observation: value}; everything else blank."""
    out = pd.DataFrame([[NAN] * 14 for _ in rows], columns=list(CHEXPERT_LABELS))
    for i, row in enumerate(rows):
        for obs, value in row.items():
            out.loc[i, obs] = value
    return out


# 4 items. Under uncertain_as_negative:
#   Edema:            gen 1,1,0,-  ref 1,-,1,-   -> TP 1, FP 1, FN 1
#   Pleural Effusion: gen -1,1,-,-  ref 1,1,-,-  -> TP 1, FP 0, FN 1 (the -1 is negative)
#   Cardiomegaly:     gen -,-,-,1   ref -,-,-,-1 -> TP 0, FP 1, FN 0
# Under uncertain_as_positive the -1s count:
#   Pleural Effusion -> TP 2, FP 0, FN 0; Cardiomegaly -> TP 1, FP 0, FN 0
GEN = frame(
    [
        {"Edema": 1.0, "Pleural Effusion": -1.0},
        {"Edema": 1.0, "Pleural Effusion": 1.0},
        {"Edema": 0.0},
        {"Cardiomegaly": 1.0},
    ]
)
REF = frame(
    [
        {"Edema": 1.0, "Pleural Effusion": 1.0},
        {"Pleural Effusion": 1.0},
        {"Edema": 1.0},
        {"Cardiomegaly": -1.0},
    ]
)


def test_keys_are_exact():
    result = clinical_f1(GEN, REF, labeler="x")
    assert tuple(result.metrics) == CLINICAL_KEYS
    assert set(CLINICAL_KEYS) == {
        f"clinical.{c}.{k}"
        for c in ("uncertain_as_negative", "uncertain_as_positive")
        for k in ("micro_14", "macro_14", "micro_5", "macro_5")
    }


def test_exact_values_uncertain_as_negative():
    m = clinical_f1(GEN, REF, labeler="x").metrics
    f1_edema, f1_effusion, f1_cardio = 2 / 4, 2 / 3, 0.0
    # micro: TP 2, FP 2, FN 2 over every observation -> 4 / 8
    assert m["clinical.uncertain_as_negative.micro_14"] == pytest.approx(0.5)
    assert m["clinical.uncertain_as_negative.micro_5"] == pytest.approx(0.5)
    assert m["clinical.uncertain_as_negative.macro_14"] == pytest.approx(
        (f1_edema + f1_effusion + f1_cardio) / 14
    )
    assert m["clinical.uncertain_as_negative.macro_5"] == pytest.approx(
        (f1_edema + f1_effusion + f1_cardio) / 5
    )


def test_exact_values_uncertain_as_positive():
    m = clinical_f1(GEN, REF, labeler="x").metrics
    # Edema TP1 FP1 FN1; Effusion TP2; Cardiomegaly TP1 -> pooled TP 4, FP 1, FN 1
    assert m["clinical.uncertain_as_positive.micro_14"] == pytest.approx(8 / 10)
    assert m["clinical.uncertain_as_positive.macro_5"] == pytest.approx((0.5 + 1 + 1) / 5)
    assert m["clinical.uncertain_as_positive.macro_14"] == pytest.approx((0.5 + 1 + 1) / 14)


def test_per_observation_table():
    table = clinical_f1(GEN, REF, labeler=LABELER_NAME).table
    assert len(table) == 28
    assert {"observation", "convention", "precision", "recall", "f1", "support", "labeler"} <= set(
        table.columns
    )
    assert set(table["labeler"]) == {LABELER_NAME}
    row = table[
        (table.observation == "Pleural Effusion") & (table.convention == "uncertain_as_negative")
    ]
    assert row[["precision", "recall", "f1", "support"]].iloc[0].tolist() == pytest.approx(
        [1.0, 0.5, 2 / 3, 2]
    )
    # no positive anywhere: all zero (zero_division = 0), support 0
    row = table[(table.observation == "Fracture") & (table.convention == "uncertain_as_positive")]
    assert row[["precision", "recall", "f1", "support"]].iloc[0].tolist() == [0.0, 0.0, 0.0, 0]


def test_nothing_positive_anywhere_scores_zero():
    empty = frame([{}, {}])
    m = clinical_f1(empty, empty, labeler="x").metrics
    assert all(v == 0.0 for v in m.values())
    perfect = frame([{"Edema": 1.0}])
    m = clinical_f1(perfect, perfect, labeler="x").metrics
    assert m["clinical.uncertain_as_negative.micro_5"] == 1.0
    assert m["clinical.uncertain_as_negative.macro_5"] == pytest.approx(1 / 5)


def test_binarize_conventions():
    labels = np.array([[1.0, 0.0, -1.0, NAN] + [NAN] * 10])
    assert binarize(labels, "uncertain_as_negative")[0, :4].tolist() == [True, False, False, False]
    assert binarize(labels, "uncertain_as_positive")[0, :4].tolist() == [True, False, True, False]
    with pytest.raises(ValueError):
        binarize(labels, "uncertain_as_blank")


def test_scores_on_indices_equal_the_repeated_frames():
    data = ClinicalData.build(GEN, REF, labeler="x")
    idx = np.array([0, 0, 3, 1])
    again = clinical_f1(GEN.iloc[idx], REF.iloc[idx], labeler="x").metrics
    assert data.scores(idx) == pytest.approx(again)


def test_bad_frames():
    with pytest.raises(CxrError, match="lack column"):
        ClinicalData.build(GEN.drop(columns=["Edema"]), REF, labeler="x")
    with pytest.raises(CxrError, match="4 generated label rows but 3"):
        ClinicalData.build(GEN, REF.iloc[:3], labeler="x")
    bad = GEN.copy()
    bad.loc[0, "Edema"] = 2.0
    with pytest.raises(CxrError, match="not 1, 0, -1 or blank"):
        ClinicalData.build(bad, REF, labeler="x")


def test_rule_labeler():
    label, name = get_labeler("rule")
    assert name == LABELER_NAME
    labels = label(["Small left pleural effusion.", ""])
    assert list(labels.columns)[:14] == list(CHEXPERT_LABELS)
    assert labels.loc[0, "Pleural Effusion"] == 1.0
    assert labels.loc[0, "Pleural Effusion laterality"] == "left"  # grounding reads it
    assert labels.iloc[1].isna().all()
    with pytest.raises(CxrError, match="unknown labeler"):
        get_labeler("magic")


@pytest.fixture
def no_caches(tmp_path, monkeypatch):
    monkeypatch.delenv("CXR_CHEXBERT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path


def test_chexbert_missing_is_one_clear_line(no_caches):
    with pytest.raises(CxrError) as err:
        get_labeler("chexbert")
    message = str(err.value)
    assert "\n" not in message
    assert "chexbert.pth" in message and "CXR_CHEXBERT" in message and "--chexbert" in message
    with pytest.raises(CxrError, match="no such CheXbert checkpoint"):
        find_chexbert_checkpoint(no_caches / "nope.pth")


def test_chexbert_found_through_env_and_cache(no_caches, monkeypatch):
    ckpt = no_caches / "weights" / "chexbert.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    monkeypatch.setenv("CXR_CHEXBERT", str(ckpt.parent))
    assert find_chexbert_checkpoint() == ckpt
    monkeypatch.delenv("CXR_CHEXBERT")
    cached = no_caches / "cache" / "chexbert" / "chexbert.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert find_chexbert_checkpoint() == cached


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "pleural", "effusion", "."]


def tiny_checkpoint(tmp_path, classes):
    """A CheXbert-shaped checkpoint with a tiny BERT whose heads always pick ``classes``."""
    import torch
    from torch import nn
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=600,
    )
    torch.manual_seed(0)
    bert = BertModel(config)
    state = {f"module.bert.{k}": v for k, v in bert.state_dict().items()}
    for j, cls in enumerate(classes):
        size = 2 if j == 13 else 4
        head = nn.Linear(8, size)
        nn.init.zeros_(head.weight)
        bias = torch.full((size,), -5.0)
        bias[cls] = 5.0
        state[f"module.linear_heads.{j}.weight"] = head.weight.detach()
        state[f"module.linear_heads.{j}.bias"] = bias
    path = tmp_path / "chexbert.pth"
    torch.save({"model_state_dict": state, "epoch": 3}, path)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return path, config


def test_chexbert_labeler_loads_and_maps_classes(tmp_path):
    # heads in CheXbert order (13 findings, then No Finding); classes 0 blank, 1 pos,
    # 2 neg, 3 uncertain
    classes = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    path, config = tiny_checkpoint(tmp_path, classes)
    labeler = ChexbertLabeler(path, config=config, device="cpu", batch_size=2)
    labels = labeler(["No pleural effusion.", "", None])
    assert list(labels.columns) == list(CHEXPERT_LABELS)
    expected = {
        obs: [NAN, 1.0, 0.0, -1.0][c] for obs, c in zip(CHEXBERT_ORDER, classes, strict=True)
    }
    for obs in CHEXPERT_LABELS:
        values = labels[obs].tolist()
        if math.isnan(expected[obs]):
            assert all(math.isnan(v) for v in values)
        else:
            assert values == [expected[obs]] * 3
    # f1chexbert's preprocessing: [CLS] ids [SEP]; empty -> [CLS] [SEP]; 512 at most
    assert labeler.encode("No  pleural\neffusion.") == [2, 5, 6, 7, 8, 3]
    assert labeler.encode("") == [2, 3]
    long = labeler.encode("no " * 600)
    assert len(long) == 512 and long[0] == 2 and long[-1] == 3


def test_chexbert_rejects_a_wrong_checkpoint(tmp_path):
    import torch

    path = tmp_path / "chexbert.pth"
    torch.save({"model_state_dict": {"module.other.weight": torch.zeros(2)}}, path)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    with pytest.raises(CxrError, match="not a CheXbert checkpoint"):
        ChexbertLabeler(path, device="cpu")
    path.write_bytes(b"not a torch file")
    with pytest.raises(CxrError, match="not a readable CheXbert checkpoint"):
        ChexbertLabeler(path, device="cpu")


def _documented_scores(gen: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """The module docstring's definitions, written out with plain loops."""
    out = {}
    for convention, positive in (
        ("uncertain_as_negative", {1.0}),
        ("uncertain_as_positive", {1.0, -1.0}),
    ):
        counts = []
        for j in range(14):
            g = [v in positive for v in gen[:, j]]
            r = [v in positive for v in ref[:, j]]
            tp = sum(a and b for a, b in zip(g, r, strict=True))
            fp = sum(a and not b for a, b in zip(g, r, strict=True))
            fn = sum(b and not a for a, b in zip(g, r, strict=True))
            counts.append((tp, fp, fn))

        def f1(tp, fp, fn):
            return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0  # zero_division=0

        for suffix, names in (("14", CHEXPERT_LABELS), ("5", clinical.FIVE)):
            sel = [counts[CHEXPERT_LABELS.index(o)] for o in names]
            pooled = [sum(c[k] for c in sel) for k in range(3)]
            out[f"clinical.{convention}.micro_{suffix}"] = f1(*pooled)
            out[f"clinical.{convention}.macro_{suffix}"] = sum(f1(*c) for c in sel) / len(sel)
    return out


def test_scores_follow_the_documented_conventions():
    # random labels (1 / 0 / -1 / blank); a third of the observations never positive
    # anywhere (empty denominators), so zero_division and the macro average over every
    # observation of the set are exercised, under both binarisations
    rng = np.random.default_rng(7)
    values = np.array([1.0, 0.0, -1.0, NAN])
    for trial in range(20):
        gen = values[rng.integers(0, 4, size=(rng.integers(1, 30), 14))]
        ref = values[rng.integers(0, 4, size=gen.shape)]
        empty = rng.choice(14, size=5, replace=False)
        gen[:, empty] = rng.choice([0.0, NAN], size=(len(gen), 5))
        ref[:, empty] = NAN
        cols = list(CHEXPERT_LABELS)
        got = clinical_f1(
            pd.DataFrame(gen, columns=cols), pd.DataFrame(ref, columns=cols), labeler="x"
        )
        expected = _documented_scores(gen, ref)
        for key in CLINICAL_KEYS:
            assert got.metrics[key] == pytest.approx(expected[key], abs=1e-12), (trial, key)
