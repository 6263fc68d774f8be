"""Attention grounding: shares of attention on the named side's lung and the drawn region."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats as scipy_stats

from cxrlib.anatomy.priors import downsample_to_grid
from cxrlib.base.errors import CxrError
from cxrlib.data.dataset import load_pixels
from cxrlib.data.manifest import CHEXPERT_LABELS, FINDING_MASK_COLUMN, read_manifest
from cxrlib.data.phantom import write_phantom
from cxrlib.evaluate.attention_grounding import (
    SUMMARY_COLUMNS,
    AttentionGrounding,
    StudyMasks,
    attention_grounding,
    attention_shares,
    named_findings,
    read_study_masks,
    sentence_captions,
    sentence_shares,
    summarise,
    summarise_modes,
)
from cxrlib.experiment import figures
from cxrlib.metrics.labeler import label_report
from cxrlib.model.explain import SentenceAttention, sentence_attention


def test_shares_of_known_attention():
    w = np.array([1.0, 1.0, 0.5, 0.0])
    assert attention_shares(np.array([0.3, 0.2, 0.0, 0.0]), w) == 1.0  # all on the target
    assert attention_shares(np.array([0.0, 0.0, 0.0, 0.7]), w) == 0.0  # all off it
    assert attention_shares(np.full(4, 0.1), w) == pytest.approx(w.mean())  # uniform: chance
    assert attention_shares(np.array([0.0, 0.0, 0.4, 0.0]), w) == 0.5  # a half-covered patch
    assert math.isnan(attention_shares(np.zeros(4), w))  # no attention to the image
    batch = attention_shares(np.array([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]), w)
    assert batch.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="4 patches"):
        attention_shares(np.ones(4), np.ones(3))


@pytest.mark.parametrize(
    ("sentence", "named", "side"),
    [
        ("Small left pleural effusion.", ("Pleural Effusion",), "left"),
        ("There is a large right pneumothorax.", ("Pneumothorax",), "right"),
        ("Possible right lower lobe consolidation.", ("Consolidation",), "right"),
        ("Left effusion and right basilar atelectasis.", None, "bilateral"),
        ("No pleural effusion on the left.", (), None),
        ("Mild pulmonary edema.", ("Edema",), None),
        ("Acute fracture of the right 5th rib.", ("Fracture",), "right"),
        ("Bibasilar pleural thickening.", ("Pleural Other",), "bilateral"),
        ("Left chest wall pacemaker with leads in the right atrium.", None, "left"),
        ("The heart size is normal.", (), None),
    ],
)
def test_what_a_sentence_names(sentence, named, side):
    got_named, got_side = named_findings(sentence, label_report(sentence))
    if named is not None:
        assert got_named == named
    assert got_side == side


def _masks() -> StudyMasks:
    """8x8 px: right lung (image left) cols 0-3, left lung cols 4-7, rows 2-7; a left
    effusion region rows 6-7, cols 4-7 (the bottom-right 2x2 patches of a 4x4 grid)."""
    left = np.zeros((8, 8), bool)
    left[2:, 4:] = True
    right = np.zeros((8, 8), bool)
    right[2:, :4] = True
    effusion = np.zeros((8, 8), bool)
    effusion[6:, 4:] = True
    return StudyMasks(left, right, {"Pleural Effusion": effusion})


def _attention(maps: np.ndarray, sentences: list[str]) -> SentenceAttention:
    return SentenceAttention(sentences, [[0], [1]], maps.astype(np.float32), maps.sum(axis=(2, 3)))


def test_sentence_shares_on_a_hand_made_case():
    sentences = ["Small left pleural effusion.", "Heart size is normal.", "Mild edema."]
    maps = np.zeros((3, 2, 4, 4))
    maps[0, 0, 3, 2:] = 0.4  # group 0: all on the effusion patches (inside the left lung)
    maps[0, 1] = 1 / 16  # group 1: uniform
    maps[2] = 1 / 16
    shares = sentence_shares(_attention(maps, sentences), _masks())
    # sentence 1 names nothing; sentence 2 names edema, not drawn here and without a side
    assert shares["sentence_index"].tolist() == [0, 0]
    first, uniform = shares.iloc[0], shares.iloc[1]
    assert (first["side"], first["observations"]) == ("left", "Pleural Effusion")
    assert first["side_lung"] == 1.0 and first["region"] == 1.0
    assert first["image_share"] == pytest.approx(0.8)
    # uniform attention scores the target's area share: the left lung 24/64, effusion 8/64
    assert uniform["side_lung"] == pytest.approx(24 / 64)
    assert uniform["region"] == pytest.approx(8 / 64)
    assert uniform["side_lung_chance"] == pytest.approx(24 / 64)
    assert uniform["region_chance"] == pytest.approx(8 / 64)
    assert shares["layer_group"].tolist() == ["layer 1", "layer 2"]
    captions = sentence_captions(shares, 3, ["layer 1", "layer 2"])
    assert captions[0] == ["left lung 1.00, region 1.00", "left lung 0.38, region 0.12"]
    assert captions[1] == ["", ""]


def test_wrong_side_and_bilateral():
    sentences = ["Right pleural effusion.", "Bilateral pleural effusions."]
    maps = np.zeros((2, 2, 4, 4))
    maps[:, :, 3, 2:] = 0.5  # on the left effusion
    shares = sentence_shares(_attention(maps, sentences), _masks())
    right = shares[shares["sentence_index"] == 0].iloc[0]
    both = shares[shares["sentence_index"] == 1].iloc[0]
    assert right["side_lung"] == 0.0 and right["region"] == 1.0  # the region is the drawn one
    assert both["side_lung"] == 1.0 and both["side_lung_chance"] == pytest.approx(48 / 64)


def _sentences(values: list[tuple[str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "study_id": study,
                "layer_group": "layers 1-2",
                "side_lung": side,
                "side_lung_chance": 0.4,
                "region": region,
                "region_chance": 0.1,
            }
            for study, side, region in values
        ]
    )


def test_summary_means_intervals_and_counts():
    frame = _sentences([("a", 1.0, 0.5), ("a", 0.0, math.nan), ("b", 0.5, 0.2), ("c", 0.9, 0.3)])
    summary = summarise(frame, n_bootstrap=200, seed=0)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    side = summary[summary["target"] == "side_lung"].iloc[0]
    region = summary[summary["target"] == "region"].iloc[0]
    assert side["mean"] == pytest.approx(2.4 / 4) and side["n_sentences"] == 4
    assert side["n_studies"] == 3 and side["chance"] == pytest.approx(0.4)
    assert region["mean"] == pytest.approx(1.0 / 3) and region["n_sentences"] == 3
    for r in summary.to_dict("records"):
        assert 0.0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1.0
    # resampled by study: study a's two sentences always come together
    same = summarise(_sentences([("a", 1.0, 1.0), ("a", 1.0, 1.0)]), n_bootstrap=50)
    assert same["ci_low"].tolist() == same["ci_high"].tolist() == [1.0, 1.0]
    none = summarise(frame, n_bootstrap=0)
    assert none["ci_low"].isna().all() and none["mean"].notna().all()
    pooled = summarise(frame.assign(mode=["soft", "soft", "none", "none"]), by=("mode",))
    assert pooled["mode"].tolist() == ["soft", "soft", "none", "none"]
    assert pooled["n_sentences"].tolist() == [2, 1, 2, 2]


def test_mode_summary_is_a_mean_over_seeds_with_their_spread():
    # soft: seed 0 puts share 0.8 on the side lung in both studies, seed 1 0.6; none:
    # one seed only (its training variance unknown: no interval)
    rows = [("a", 0.8, 0.2), ("b", 0.8, 0.2)]
    soft0 = _sentences(rows).assign(mode="soft", seed=0)
    soft1 = _sentences([(s, 0.6, r) for s, _, r in rows]).assign(mode="soft", seed=1)
    soft1 = pd.concat([soft1, soft1.iloc[:1]])  # a second sentence of study a: same mean
    none = _sentences(rows).assign(mode="none", seed=0)
    table = summarise_modes(
        pd.concat([soft0, soft1, none]), n_bootstrap=100, expected=[("strict", "layers 1-2")]
    )
    assert list(table.columns) == ["mode", *SUMMARY_COLUMNS]
    side = table[(table["mode"] == "soft") & (table["target"] == "side_lung")].iloc[0]
    assert side["mean"] == pytest.approx(0.7) and side["n_sentences"] == 5
    # the studies agree within each seed: only the seeds' spread (sd 0.141) is left
    half = scipy_stats.t.ppf(0.975, 1) * np.std([0.8, 0.6], ddof=1) / np.sqrt(2)
    assert side["ci_low"] == 0.0 and 0.7 + half > 1  # clipped to [0, 1]
    assert side["ci_high"] == 1.0
    region = table[(table["mode"] == "soft") & (table["target"] == "region")].iloc[0]
    assert (region["mean"], region["ci_low"], region["ci_high"]) == (
        pytest.approx(0.2),
        pytest.approx(0.2),
        pytest.approx(0.2),
    )
    single = table[table["mode"] == "none"]
    assert single["ci_low"].isna().all() and single["mean"].notna().all()
    strict = table[table["mode"] == "strict"]
    assert strict["n_sentences"].tolist() == [0, 0] and strict["mean"].isna().all()


def _write_masks(folder, size=8, finding_size=8):
    m = _masks()
    paths = {}
    for name, mask in (("left", m.left_lung), ("right", m.right_lung)):
        paths[f"{name}_lung_mask_path"] = f"{name}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{name}.png")
    bits = np.zeros((finding_size, finding_size), np.uint16)
    bits[6:, 4:] = 1 << CHEXPERT_LABELS.index("Pleural Effusion")
    Image.fromarray(bits).save(folder / "findings.png")
    paths[FINDING_MASK_COLUMN] = "findings.png"
    return {"image_id": "x", **paths}


def test_masks_are_read_and_bad_ones_refused_in_one_line(tmp_path):
    row = _write_masks(tmp_path)
    masks = read_study_masks(row, tmp_path)
    assert list(masks.regions) == ["Pleural Effusion"]
    assert np.array_equal(masks.regions["Pleural Effusion"], _masks().regions["Pleural Effusion"])
    with pytest.raises(CxrError, match=r"nowhere\.png: finding mask file does not exist"):
        read_study_masks({**row, FINDING_MASK_COLUMN: "nowhere.png"}, tmp_path)
    Image.fromarray(np.zeros((6, 6), np.uint16)).save(tmp_path / "small.png")
    with pytest.raises(CxrError, match=r"small\.png: finding mask is 6x6 px but the lung"):
        read_study_masks({**row, FINDING_MASK_COLUMN: "small.png"}, tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(CxrError, match=r"rgb\.png: a finding mask is a single-channel"):
        read_study_masks({**row, FINDING_MASK_COLUMN: "rgb.png"}, tmp_path)
    with pytest.raises(CxrError, match="no right_lung_mask_path"):
        read_study_masks({**row, "right_lung_mask_path": ""}, tmp_path)
    with pytest.raises(CxrError, match=r"gone\.png: mask file does not exist"):
        read_study_masks({**row, "left_lung_mask_path": "gone.png"}, tmp_path)
    without = read_study_masks({**row, FINDING_MASK_COLUMN: ""}, tmp_path)
    assert without.regions == {} and not without.has_regions


# --- with a real (tiny) model ----------------------------------------------------------


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    write_phantom(out, n=10, seed=1, size=64, progress=False)
    return read_manifest(out / "manifest.csv")


def _inputs(model, df):
    from tests.model import random_priors

    priors = random_priors(model, batch=len(df), seed=3)
    size = model.config.image_size
    return [
        {
            "image_id": r["image_id"],
            "pixel_values": load_pixels(df.root / r["image_path"], size),
            "priors": priors[i],
        }
        for i, r in enumerate(df.frame.to_dict("records"))
    ]


TEXT = "Small left pleural effusion. The heart is normal. Right lower lobe atelectasis."


def test_a_real_tiny_model_matches_its_own_attention(phantom):
    from tests.model import small_model

    torch.set_num_threads(1)
    model = small_model("soft", "sdpa", max_text_tokens=48)
    assert model.config.grid_size == 4  # 64 px, 16 px patches: a 4x4 grid, not 14x14
    texts = [TEXT] * (len(phantom) - 1) + ["The lungs are clear."]
    items = _inputs(model, phantom)
    result = attention_grounding(model, phantom, texts, items, n_bootstrap=100)
    assert isinstance(result, AttentionGrounding)
    s = result.settings
    assert (s["n_eligible"], s["n_used"], s["capped"], s["grid"]) == (9, 9, False, 4)
    assert s["layer_groups"] == ["layer 1", "layer 2"]
    # 2 sentences with a side x 2 layer groups per study; sentence 2 names nothing
    assert len(result.sentences) == 9 * 4
    assert set(result.sentences["sentence_index"]) == {0, 2}
    for r in result.summary.to_dict("records"):
        if r["target"] == "side_lung":
            assert r["n_sentences"] == 18 and r["n_studies"] == 9
        assert 0.0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1.0
    # the first study, recomputed by hand from the model's attention and its masks
    row = phantom.frame.iloc[0]
    attention = sentence_attention(
        model, TEXT, pixel_values=items[0]["pixel_values"][None], priors=items[0]["priors"][None]
    )
    left = read_study_masks(row, phantom.root).left_lung
    w = downsample_to_grid(torch.from_numpy(left)[None], 4)[0].numpy().ravel()
    mine = result.sentences.iloc[0]
    a = attention.maps[0, 0].ravel()
    assert mine["side_lung"] == pytest.approx(float((a * w).sum() / a.sum()), rel=1e-6)
    assert mine["side_lung_chance"] == pytest.approx(float(w.mean()))
    capped = attention_grounding(model, phantom, texts, items, max_studies=3, n_bootstrap=0)
    assert capped.settings["n_used"] == 3 and capped.settings["capped"]
    assert "capped at max_studies=3" in capped.note()


def test_strict_attention_inside_a_lung_has_share_one(phantom):
    """Strict mode with a prior that is 1 on the patches wholly inside the left lung and
    0 elsewhere: every sentence's attention to the image falls on the left lung. The model
    reads 128 px images (an 8x8 grid); the 64 px masks are mapped onto its grid."""
    from tests.model import small_model

    torch.set_num_threads(1)
    model = small_model("strict", "sdpa", max_text_tokens=48, image_size=128)
    assert model.config.grid_size == 8
    rows = phantom.subset(phantom.frame.iloc[:3].reset_index(drop=True))
    items = _inputs(model, rows)
    for k, row in enumerate(rows.frame.to_dict("records")):
        left = read_study_masks(row, phantom.root).left_lung
        inside = downsample_to_grid(torch.from_numpy(left)[None], 8)[0].ravel() == 1.0
        assert inside.any()
        items[k]["priors"] = inside.to(torch.float64).expand(model.num_decoder_layers, -1)
    result = attention_grounding(model, rows, [TEXT] * 3, items, n_bootstrap=0)
    assert result.settings["grid"] == 8
    left_rows = result.sentences[result.sentences["side"] == "left"]
    assert len(left_rows) == 3 * 2
    np.testing.assert_allclose(left_rows["side_lung"], 1.0, atol=1e-6)
    right_rows = result.sentences[result.sentences["side"] == "right"]
    np.testing.assert_allclose(right_rows["side_lung"], 0.0, atol=1e-6)


def test_the_attention_figure_shows_the_shares_under_each_panel():
    sentences = ["Small left pleural effusion.", "Heart size is normal."]
    maps = np.zeros((2, 2, 4, 4))
    maps[0, 0, 3, 2:] = 0.4
    maps[:, 1] = 1 / 16
    attention = _attention(maps, sentences)
    shares = sentence_shares(attention, _masks())
    captions = sentence_captions(shares, 2, ["layer 1", "layer 2"])
    fig = figures.plot_sentence_attention(np.zeros((8, 8), np.uint8), attention, captions=captions)
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert labels == ["left lung 1.00, region 1.00", "left lung 0.38, region 0.12", "", ""]
    plain = figures.plot_sentence_attention(np.zeros((8, 8), np.uint8), attention)
    assert all(ax.get_xlabel() == "" for ax in plain.axes)
