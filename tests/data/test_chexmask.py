"""CheXmask: RLE convention (round trip), decoding into mask files, attaching to manifests."""

import csv
import math

import numpy as np
import pytest
from PIL import Image

from cxrlib.base.errors import CxrError
from cxrlib.data import chexpert_plus, mimic
from cxrlib.data.chexmask import attach_masks, chexmask_key, decode_rle, encode_rle
from cxrlib.data.manifest import MASK_COLUMNS, read_manifest, resolve
from tests.data.test_chexpert_plus import build_chexpert_plus
from tests.data.test_mimic import build_mimic_tree

COLUMNS_MIMIC = [
    "dicom_id",
    "Dice RCA (Mean)",
    "Dice RCA (Max)",
    "Landmarks",
    "Left Lung",
    "Right Lung",
    "Heart",
    "Height",
    "Width",
]
COLUMNS_CHEXPERT = ["Path", *COLUMNS_MIMIC[1:]]


def test_rle_convention_one_indexed_row_major():
    # 2x3 mask, pixels (0, 1), (0, 2), (1, 0): flat row-major indices 1, 2, 3 -> "2 3"
    mask = np.array([[0, 1, 1], [1, 0, 0]], bool)
    assert encode_rle(mask) == "2 3"
    assert np.array_equal(decode_rle("2 3", 2, 3), mask)
    assert np.array_equal(decode_rle("1 1 6 1", 2, 3), np.array([[1, 0, 0], [0, 0, 1]], bool))
    assert encode_rle(np.zeros((4, 4), bool)) == ""
    assert not decode_rle("", 4, 4).any()


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trip_random(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((37, 23)) < rng.uniform(0.05, 0.95)
    assert np.array_equal(decode_rle(encode_rle(mask), 37, 23), mask)
    full = np.ones((5, 7), bool)
    assert encode_rle(full) == "1 35"
    assert np.array_equal(decode_rle(encode_rle(full), 5, 7), full)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1", "odd number"),
        ("0 3", ">= 1"),
        ("1 0", ">= 1"),
        ("10 10", "past"),
        ("a b", "non-integer"),
    ],
)
def test_bad_rle(rle, message):
    with pytest.raises(CxrError, match=message):
        decode_rle(rle, 3, 3)


def test_chexmask_key():
    assert chexmask_key("66049acc-ee1e6b29-1298f53b-32d453b3-41377f10") == (
        "66049acc-ee1e6b29-1298f53b-32d453b3-41377f10"
    )
    assert (
        chexmask_key("train/patient1/study2/view1_frontal.jpg")
        == "train/patient1/study2/view1_frontal"
    )
    assert chexmask_key("CheXpert-v1.0/valid/p/s/v.jpg") == "valid/p/s/v"


def _lungs_heart(h, w):
    left = np.zeros((h, w), bool)
    left[1:7, 5:7] = True  # patient's left = image right
    right = np.zeros((h, w), bool)
    right[1:7, 1:3] = True
    heart = np.zeros((h, w), bool)
    heart[4:7, 3:6] = True
    return left, right, heart


def _chexmask_row(key, dice, h=8, w=8):
    left, right, heart = _lungs_heart(h, w)
    return [
        key,
        str(dice),
        str(dice + 0.01),
        "1,2,3,4",
        encode_rle(left),
        encode_rle(right),
        encode_rle(heart),
        str(h),
        str(w),
    ]


def _write(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_attach_to_mimic_manifest(tmp_path):
    root = build_mimic_tree(tmp_path / "mimic")
    manifest = tmp_path / "m" / "manifest.csv"
    mimic.build_manifest(root, manifest)  # rows aaaa1111-0001, cccc3333-0001
    csv_path = _write(
        tmp_path / "MIMIC-CXR-JPG.csv",
        COLUMNS_MIMIC,
        [
            _chexmask_row("zzzz-not-in-manifest", 0.9),
            _chexmask_row("aaaa1111-0001", 0.91),
            _chexmask_row("cccc3333-0001", 0.5),  # below the quality threshold
        ],
    )
    out = tmp_path / "with_masks"
    summary = attach_masks(csv_path, manifest, out)
    df = read_manifest(out / "manifest.csv").frame.set_index("image_id")
    assert list(df.index) == ["aaaa1111-0001", "cccc3333-0001"]
    row = df.loc["aaaa1111-0001"]
    assert math.isclose(float(row["chexmask_dice"]), 0.91)
    left, right, heart = _lungs_heart(8, 8)
    for column, expected in (
        ("left_lung_mask_path", left),
        ("right_lung_mask_path", right),
        ("heart_mask_path", heart),
        ("lung_mask_path", left | right),
    ):
        image = np.asarray(Image.open(resolve(out, row[column])))
        assert set(np.unique(image)) == {0, 255}
        assert np.array_equal(image > 0, expected), column
    assert all(df.loc["cccc3333-0001", c] == "" for c in MASK_COLUMNS)
    # the image path was rebased to the new folder and still resolves
    assert resolve(out, row["image_path"]).is_file()
    assert row["findings"].startswith("PA and lateral views")
    assert summary.counts == {"masks_attached": 1, "below_quality_threshold": 1}
    # --drop-unmasked drops with the reason, a lower threshold attaches both
    summary = attach_masks(csv_path, manifest, tmp_path / "d", drop_unmasked=True)
    assert dict(summary.dropped) == {"below_quality_threshold": 1}
    assert len(read_manifest(tmp_path / "d" / "manifest.csv")) == 1
    summary = attach_masks(csv_path, manifest, tmp_path / "low", min_dice=0.4)
    assert summary.counts == {"masks_attached": 2}


def test_attach_to_chexpert_manifest_by_path(tmp_path):
    root = build_chexpert_plus(tmp_path / "cp")
    manifest = tmp_path / "m" / "manifest.csv"
    chexpert_plus.build_manifest(root, manifest)
    csv_path = _write(
        tmp_path / "CheXpert.csv",
        COLUMNS_CHEXPERT,
        [
            _chexmask_row("train/patient00001/study1/view1_frontal.jpg", 0.8),
            _chexmask_row("CheXpert-v1.0/train/patient00002/study1/view1_frontal.jpg", 0.8),
            _chexmask_row("train/patient00003/study1/view1_frontal.jpg", 0.8, h=16, w=16),
        ],
    )
    summary = attach_masks(csv_path, manifest, tmp_path / "out")
    df = read_manifest(tmp_path / "out" / "manifest.csv").frame.set_index("image_id")
    assert df.loc["train/patient00001/study1/view1_frontal", "heart_mask_path"] == (
        "masks/heart/train/patient00001/study1/view1_frontal.png"
    )
    assert df.loc["train/patient00002/study1/view1_frontal", "lung_mask_path"] != ""
    assert summary.counts["masks_attached"] == 2
    assert summary.counts["size_mismatch"] == 1  # 16x16 masks for an 8x8 image
    assert summary.counts["no_chexmask_row"] == len(df) - 3


def test_bad_rle_names_file_line_column(tmp_path):
    root = build_mimic_tree(tmp_path / "mimic")
    manifest = tmp_path / "m" / "manifest.csv"
    mimic.build_manifest(root, manifest)
    row = _chexmask_row("aaaa1111-0001", 0.9)
    row[6] = "5 3 9"  # Heart
    csv_path = _write(tmp_path / "MIMIC-CXR-JPG.csv", COLUMNS_MIMIC, [row])
    with pytest.raises(CxrError, match=r"MIMIC-CXR-JPG\.csv:2: column 'Heart': RLE has an odd"):
        attach_masks(csv_path, manifest, tmp_path / "out")


def test_no_id_column_and_privacy(tmp_path):
    root = build_mimic_tree(tmp_path / "mimic")
    manifest = tmp_path / "m" / "manifest.csv"
    mimic.build_manifest(root, manifest)
    csv_path = _write(tmp_path / "x.csv", ["image", *COLUMNS_MIMIC[1:]], [_chexmask_row("a", 0.9)])
    with pytest.raises(CxrError, match="no id column"):
        attach_masks(csv_path, manifest, tmp_path / "out")
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    with pytest.raises(CxrError, match="refusing to write a chexmask manifest"):
        attach_masks(csv_path, manifest, tmp_path / "repo" / "masks")
