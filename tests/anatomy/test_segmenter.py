"""The lung/heart segmenter: metrics, post-processing, training, checkpoints, CLI."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrlib.anatomy.metrics import dice, hd95
from cxrlib.anatomy.segmenter import (
    ORGANS,
    Segmenter,
    SegmenterConfig,
    UNet,
    augment,
    evaluate,
    load_masked_images,
    postprocess,
    predict_folder,
    segmenter_data,
    split_held_out,
    summarise,
    train_segmenter,
)
from cxrlib.base.errors import CxrError
from cxrlib.base.masks import cardiothoracic_ratio
from cxrlib.base.stats import bootstrap_mean_ci
from cxrlib.cli import main
from cxrlib.data.manifest import read_manifest
from cxrlib.data.phantom import write_phantom

WINGSPAN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wingspan"
TINY = SegmenterConfig(image_size=64, base_channels=4, depth=2, epochs=2, batch_size=4, seed=1)


def test_dice_exact_small_cases():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0  # both empty
    a[:2, :2] = True  # 4 px
    b[:2, :] = True  # 8 px, overlap 4
    assert dice(a, b) == pytest.approx(2 * 4 / 12)
    assert dice(a, a) == 1.0
    with pytest.raises(ValueError):
        dice(a, np.zeros((3, 3), bool))


def test_hd95_exact_small_cases():
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    assert hd95(a, a) == 0.0
    shifted = np.roll(a, 3, axis=1)
    assert hd95(a, shifted) == pytest.approx(3.0)
    assert hd95(a, np.zeros_like(a)) == float("inf")
    assert hd95(np.zeros_like(a), np.zeros_like(a)) == 0.0


def test_bootstrap_interval_brackets_the_mean():
    mean, lo, hi = bootstrap_mean_ci(np.array([0.9, 0.95, 1.0, 0.97, np.nan]))
    assert mean == pytest.approx(0.955)
    assert lo <= mean <= hi
    assert bootstrap_mean_ci(np.array([np.nan]))[0] != bootstrap_mean_ci(np.array([np.nan]))[0]
    # the exact numbers of seed 0, 2,000 resamples (the segmenter's summary): pinned
    assert (mean, lo, hi) == (0.9550000000000001, 0.9175, 0.9875)


def test_bootstrap_interval_exact_small_case():
    # 12 resamples of the 3 finite values drawn by default_rng(5), each resample's mean,
    # then the 2.5 % and 97.5 % quantiles (linear interpolation): written out here
    values = np.array([0.2, np.nan, 0.5, np.inf, 0.8])
    finite = np.array([0.2, 0.5, 0.8])
    rng = np.random.default_rng(5)
    means = np.sort([finite[rng.integers(0, 3, size=3)].mean() for _ in range(12)])
    pos = 0.025 * 11, 0.975 * 11  # (n - 1) q
    low = means[0] + (pos[0] - 0) * (means[1] - means[0])
    high = means[10] + (pos[1] - 10) * (means[11] - means[10])
    mean, lo, hi = bootstrap_mean_ci(values, n_boot=12, seed=5)
    assert mean == pytest.approx(0.5)
    assert (lo, hi) == (pytest.approx(low, abs=1e-15), pytest.approx(high, abs=1e-15))
    assert lo < hi  # the resamples differ
    # equal values: the interval is the value itself; inf and NaN are left out
    assert bootstrap_mean_ci(np.array([0.7, 0.7, np.inf, np.nan])) == (0.7, 0.7, 0.7)


def test_summary_exact_on_a_small_table():
    # equal values per column: every interval is the value; an HD95 of inf (one empty
    # mask) is left out of its mean
    per_image = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "dice_left_lung": [0.96, 0.96, 0.96],
            "dice_right_lung": [0.94, 0.94, 0.94],
            "dice_heart": [0.9, 0.9, 0.9],
            "hd95_heart": [2.0, np.inf, 2.0],
            "ctr_abs_error": [0.01, 0.01, np.nan],
            "ctr_source": ["true masks", "true masks", "ctr column"],
        }
    )
    summary = summarise(per_image)
    assert summary["n"] == 3
    assert summary["metrics"] == {
        "dice_left_lung": {"mean": 0.96, "ci95": [0.96, 0.96]},
        "dice_right_lung": {"mean": 0.94, "ci95": [0.94, 0.94]},
        "dice_heart": {"mean": 0.9, "ci95": [0.9, 0.9]},
        "hd95_heart": {"mean": 2.0, "ci95": [2.0, 2.0]},
        "ctr_mae": {"mean": 0.01, "ci95": [0.01, 0.01]},
    }
    assert summary["targets_met"] == {
        "dice_left_lung": True,
        "dice_right_lung": False,
        "dice_heart": True,
        "ctr_mae": True,
    }
    assert summary["ctr_sources"] == {"true masks": 2, "ctr column": 1}


def test_postprocess_keeps_largest_component_and_fills_holes():
    m = np.zeros((12, 12), bool)
    m[1:8, 1:8] = True
    m[4, 4] = False  # a hole
    m[10, 10] = True  # a speck
    out = postprocess(m)
    expected = np.zeros_like(m)
    expected[1:8, 1:8] = True
    assert np.array_equal(out, expected)
    assert not postprocess(np.zeros((5, 5), bool)).any()


def test_unet_shapes():
    net = UNet(base_channels=4, depth=3)
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 3, 32, 32)


def test_augment_moves_image_and_masks_together():
    cfg = SegmenterConfig(max_rotation=10, max_scale=0.1, max_shift=0.1)
    img = torch.zeros(3, 1, 32, 32)
    img[:, :, 8:16, 8:16] = 1.0
    masks = img.repeat(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    x, y = augment(img, masks, cfg, gen)
    assert x.shape == img.shape and y.shape == masks.shape
    # the geometric part is shared: mask centroids follow the image's bright square
    for i in range(3):
        wy = y[i, 0]
        cy = (wy.sum(1) * torch.arange(32)).sum() / wy.sum()
        bright = (x[i, 0] > x[i, 0].mean() + 0.3).float()
        by = (bright.sum(1) * torch.arange(32)).sum() / bright.sum()
        assert abs(float(cy - by)) < 1.5


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "ph"
    write_phantom(out, n=12, seed=2, size=64, progress=False)
    df = read_manifest(out / "manifest.csv")
    return df


def test_split_held_out_draws_at_most_the_limits_in_manifest_order(phantom):
    train, held_out = split_held_out(phantom)
    assert set(train.frame["split"]) == {"train"}
    assert len(train.frame) + len(held_out.frame) == len(phantom.frame)
    n_train, n_held = len(train.frame), len(held_out.frame)
    small_train, small_held = split_held_out(phantom, n_train - 2, n_held - 1, seed=3)
    assert len(small_train.frame) == n_train - 2 and len(small_held.frame) == n_held - 1
    assert set(small_train.frame.index) < set(train.frame.index)
    assert set(small_held.frame.index) < set(held_out.frame.index)
    assert small_train.frame.index.is_monotonic_increasing
    again, _ = split_held_out(phantom, n_train - 2, n_held - 1, seed=3)
    assert again.frame.index.equals(small_train.frame.index)
    other, _ = split_held_out(phantom, 1, 1, seed=4)
    assert len(other.frame) == 1


@pytest.fixture(scope="module")
def trained(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    seg = train_segmenter(
        phantom, out, TINY, held_out=phantom.subset(phantom.frame.iloc[:4]), progress=False
    )
    return seg, out


def test_training_writes_checkpoint_and_metrics(trained):
    _, out = trained
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,split,loss,lr,dice_left_lung")
    assert len(lines) == 1 + 2 * TINY.epochs  # train + held-out row per epoch
    assert not list(out.glob(".*.tmp"))


def test_checkpoint_round_trip_gives_identical_predictions(trained, phantom):
    seg, out = trained
    again = Segmenter.from_pretrained(out)
    assert again.config == TINY
    image = np.asarray(Image.open(phantom.root / phantom.frame["image_path"][0]))
    p1, p2 = seg.predict_proba([image])[0], again.predict_proba([image])[0]
    assert p1.shape == (3, 64, 64)
    np.testing.assert_array_equal(p1, p2)
    masks = again.predict(np.stack([image, image]))
    assert set(masks) == set(ORGANS)
    assert masks["heart"].shape == (2, 64, 64) and masks["heart"].dtype == bool


def test_predictions_at_native_size():
    seg = Segmenter(TINY)
    out = seg.predict_proba([np.zeros((50, 70), np.uint8), np.zeros((64, 64), np.uint8)])
    assert [p.shape for p in out] == [(3, 50, 70), (3, 64, 64)]
    with pytest.raises(ValueError, match="one size"):
        seg.predict([np.zeros((50, 70), np.uint8), np.zeros((64, 64), np.uint8)])


def test_evaluate_and_summary(trained, phantom):
    seg, _ = trained
    per_image = evaluate(seg, phantom.subset(phantom.frame.iloc[:3]), progress=False)
    assert list(per_image["image_id"]) == list(phantom.frame["image_id"][:3])
    dice = per_image[[f"dice_{o}" for o in ORGANS]].to_numpy()
    assert np.isfinite(dice).all() and ((dice >= 0) & (dice <= 1)).all()
    # the phantom manifest has a ctr column: it is the reference
    assert (per_image["ctr_source"] == "ctr column").all()
    summary = summarise(per_image)
    assert summary["n"] == 3
    assert set(summary["targets_met"]) == {
        "dice_left_lung",
        "dice_right_lung",
        "dice_heart",
        "ctr_mae",
    }


def test_a_perfect_segmenter_scores_one(phantom, monkeypatch):
    """evaluate() compares at native size: feeding back the true masks gives Dice 1."""
    root = phantom.root
    truth = {}
    for _, row in phantom.frame.iloc[:2].iterrows():
        truth[row["image_path"]] = {
            o: np.asarray(Image.open(root / row[f"{o}_mask_path"])) > 127 for o in ORGANS
        }
    seg = Segmenter(TINY)
    images = iter(truth.values())
    monkeypatch.setattr(seg, "predict", lambda ims: {o: m[None] for o, m in next(images).items()})
    per_image = evaluate(seg, phantom.subset(phantom.frame.iloc[:2]), progress=False)
    assert (per_image[[f"dice_{o}" for o in ORGANS]] == 1.0).all().all()
    assert (per_image[[f"hd95_{o}" for o in ORGANS]] == 0.0).all().all()
    assert per_image["ctr_abs_error"].max() < 2e-4  # the manifest's ctr is rounded to 4 places


def test_missing_mask_columns_is_a_clear_error(phantom, tmp_path):
    df = phantom.subset(phantom.frame.drop(columns=["heart_mask_path"]))
    with pytest.raises(CxrError, match="no heart_mask_path column"):
        train_segmenter(df, tmp_path, TINY, progress=False)


def test_predict_folder_and_cli(trained, phantom, tmp_path, capsys):
    _, ckpt = trained
    images = phantom.root / "images"
    out = tmp_path / "masks"
    code = main(["segment", "predict", "--checkpoint", str(ckpt), "--images", str(images),
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    for organ in (*ORGANS, "lungs"):
        assert len(list((out / organ).glob("*.png"))) == 12
    lungs = np.asarray(Image.open(next((out / "lungs").glob("*.png"))))
    assert set(np.unique(lungs)) <= {0, 255}
    assert main(["segment", "predict", "--checkpoint", str(tmp_path), "--images", str(images),
                 "--out", str(out)]) == 1  # fmt: skip
    assert "config.json not found" in capsys.readouterr().err
    with pytest.raises(CxrError, match="not a folder"):
        predict_folder(Segmenter(TINY), tmp_path / "absent", out)


def test_cli_train_and_eval_on_a_manifest(phantom, tmp_path, capsys):
    manifest = phantom.root / "manifest.csv"
    out = tmp_path / "ck"
    assert main(["segment", "train", "--manifest", str(manifest), "--out", str(out),
                 "--epochs", "1", "--image-size", "64"]) == 0  # fmt: skip
    assert Segmenter.from_pretrained(out).config.epochs == 1
    code = main(["segment", "eval", "--manifest", str(manifest), "--checkpoint", str(out),
                 "--splits", "train,validate,test", "--json", str(tmp_path / "s")])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "segmenter evaluation: n = 12 images" in printed and "dice_heart" in printed
    assert (tmp_path / "s").is_file()


@pytest.mark.shared_data
@pytest.mark.skipif(not WINGSPAN.is_dir(), reason=f"Wingspan data not found at {WINGSPAN}")
def test_loads_real_wingspan_masks_and_ctr_definition_matches(tmp_path):
    df = segmenter_data(wingspan=WINGSPAN, work=tmp_path)
    assert len(df) == 219
    data = load_masked_images(df.subset(df.frame.iloc[:3]), 64, progress=False)
    assert data.images.shape == (3, 1, 64, 64) and data.masks.shape == (3, 3, 64, 64)
    # our CTR definition on the manual masks agrees with the dataset's ctr.csv
    root = df.root
    errors = []
    for _, row in df.frame[df.frame["ctr"].astype(str) != ""].iloc[:40].iterrows():
        m = {o: np.asarray(Image.open(root / row[f"{o}_mask_path"])) > 127 for o in ORGANS}
        ratio = cardiothoracic_ratio(m["left_lung"] | m["right_lung"], m["heart"])
        errors.append(abs(ratio - float(row["ctr"])))
    assert np.mean(errors) < 0.01
