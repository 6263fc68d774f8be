"""Wingspan adapter: tiny tree in the release layout, and the real ../shared/data/wingspan."""

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlib.base.errors import CxrError
from cxrlib.data.manifest import MASK_COLUMNS, read_manifest, resolve
from cxrlib.data.wingspan import build_manifest
from tests.data.test_mimic import tiny_image

SHARED = Path(__file__).parents[2].parent / "shared" / "data"
WINGSPAN = SHARED / "wingspan"
needs_wingspan = pytest.mark.skipif(
    not (WINGSPAN / "png").is_dir(),
    reason=f"real Wingspan data not found at {WINGSPAN} (../shared/data beside the repo)",
)


def _mask(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode="L").save(path)


def build_wingspan(root: Path) -> Path:
    """png/, mask/{left_lung,right_lung,heart}/ (anti-aliased 0..255), ctr.csv."""
    right = np.zeros((8, 8), np.uint8)
    right[1:7, 1:3] = 255
    right[1:7, 3] = 100  # anti-aliased edge, below the threshold
    left = np.zeros((8, 8), np.uint8)
    left[1:7, 5:7] = 255
    left[1:7, 4] = 200  # anti-aliased edge, above the threshold
    heart = np.zeros((8, 8), np.uint8)
    heart[4:7, 3:6] = 255
    for name in ("a1", "b2", "c3", "d4", "e5"):
        tiny_image(root / "png" / f"{name}.png")
        if name != "c3":
            _mask(root / "mask" / "heart" / f"{name}.png", heart)
        size = (8, 8) if name != "d4" else (4, 4)
        _mask(root / "mask" / "left_lung" / f"{name}.png", np.resize(left, size))
        _mask(root / "mask" / "right_lung" / f"{name}.png", np.resize(right, size))
    (root / "png" / "e5.png").write_bytes(b"not a png")
    (root / "ctr.csv").write_text("id,ctr\na1.png,0.5123\nb2.png,0.61\nzz.png,0.4\n")
    return root


def test_rows_masks_ctr_and_drops(tmp_path):
    root = build_wingspan(tmp_path / "wingspan")
    out = tmp_path / "out" / "manifest.csv"
    summary = build_manifest(root, out, seed=0)
    df = read_manifest(out).frame.set_index("image_id")
    assert list(df.index) == ["a1", "b2"]
    assert dict(summary.dropped) == {
        "missing_mask": 1,
        "mask_size_mismatch": 1,
        "unreadable_image": 1,
    }
    assert summary.counts["with_ctr"] == 2 and summary.counts["ctr_without_image"] == 1
    a1 = df.loc["a1"]
    assert (a1["study_id"], a1["view"], a1["findings"]) == ("a1", "PA", "")
    assert math.isclose(float(a1["ctr"]), 0.5123)
    assert all(math.isnan(a1[c]) for c in df.columns if c[0].isupper())  # labels blank
    assert a1["left_lung_mask_path"].endswith("wingspan/mask/left_lung/a1.png")
    assert a1["lung_mask_path"] == "manifest_masks/lungs/a1.png"
    for column in MASK_COLUMNS:
        assert resolve(out.parent, a1[column]).is_file()
    lungs = np.asarray(Image.open(out.parent / a1["lung_mask_path"]))
    assert set(np.unique(lungs)) == {0, 255}
    expected = np.zeros((8, 8), bool)
    expected[1:7, 1:3] = True  # right lung, edge at 100 excluded
    expected[1:7, 4:7] = True  # left lung incl. edge at 200
    assert np.array_equal(lungs > 0, expected)


def test_ctr_blank_when_absent_and_split_seeded(tmp_path):
    root = build_wingspan(tmp_path / "wingspan")
    (root / "ctr.csv").write_text("id,ctr\na1.png,0.5\n")
    build_manifest(root, tmp_path / "manifest.csv", seed=5)
    df = read_manifest(tmp_path / "manifest.csv").frame.set_index("image_id")
    assert df.loc["b2", "ctr"] == ""


def test_bad_ctr_names_line(tmp_path):
    root = build_wingspan(tmp_path / "wingspan")
    (root / "ctr.csv").write_text("id,ctr\na1.png,0.5\nb2.png,wide\n")
    with pytest.raises(CxrError, match=r"ctr\.csv:3: column 'ctr': 'wide' is not a number"):
        build_manifest(root, tmp_path / "manifest.csv")


def test_out_required_and_missing_folders(tmp_path):
    with pytest.raises(CxrError, match="--out FILE is required"):
        build_manifest(tmp_path, None)
    with pytest.raises(CxrError, match="image folder does not exist"):
        build_manifest(tmp_path / "nothing", tmp_path / "m.csv")


@pytest.mark.shared_data
@needs_wingspan
def test_real_wingspan_validates_clean(tmp_path):
    out = tmp_path / "ws" / "manifest.csv"
    summary = build_manifest(WINGSPAN, out)
    df = read_manifest(out).frame  # validates, every image and mask file exists
    assert len(df) == 219 and summary.dropped_total == 0
    assert (df["ctr"] != "").sum() == 180
    assert set(df["view"]) == {"PA"} and set(df["split"]) == {"train", "validate", "test"}
    row = df.iloc[0]
    left = np.asarray(Image.open(resolve(out.parent, row["left_lung_mask_path"])).convert("L"))
    right = np.asarray(Image.open(resolve(out.parent, row["right_lung_mask_path"])).convert("L"))
    lungs = np.asarray(Image.open(resolve(out.parent, row["lung_mask_path"])))
    assert lungs.shape == (512, 512) and set(np.unique(lungs)) == {0, 255}
    assert np.array_equal(lungs > 0, (left > 127) | (right > 127))
    # the patient's left lung lies on the image's right
    cols = np.flatnonzero((left > 127).any(axis=0))
    assert cols.mean() > 256
