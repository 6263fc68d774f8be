"""Folder adapter: any images, optional masks and a reports CSV."""

import math

import numpy as np
import pytest
from PIL import Image

from cxrlib.base.errors import CxrError
from cxrlib.data.folder import build_manifest
from cxrlib.data.manifest import read_manifest, resolve
from tests.data.test_mimic import tiny_image


def _mask(path, rows, cols, size=8):
    array = np.zeros((size, size), np.uint8)
    array[rows, cols] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path)


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    tiny_image(images / "a.png")
    tiny_image(images / "site2" / "b.jpg")
    tiny_image(images / "site2" / "c.JPEG")
    tiny_image(images / "site2" / "c.png")  # same image_id as c.JPEG
    (images / "broken.png").write_bytes(b"\x89PNG truncated")
    (images / "notes.txt").write_text("not an image")
    return images


def test_images_only(folder, tmp_path):
    out = tmp_path / "out" / "manifest.csv"
    summary = build_manifest(folder, out, seed=1)
    df = read_manifest(out).frame
    assert df["image_id"].tolist() == ["a", "site2/b", "site2/c"]
    assert (df["study_id"] == df["image_id"]).all()
    assert (df["findings"] == "").all() and (df["view"] == "").all()
    assert df["image_path"].iloc[2].endswith("images/site2/c.JPEG")
    assert dict(summary.dropped) == {"duplicate_image_id": 1, "unreadable_image": 1}


def test_masks_and_union(folder, tmp_path):
    masks = tmp_path / "masks"
    _mask(masks / "left_lung" / "a.png", slice(1, 7), slice(5, 7))
    _mask(masks / "right_lung" / "a.png", slice(1, 7), slice(1, 3))
    _mask(masks / "heart" / "a.png", slice(4, 7), slice(3, 6))
    _mask(masks / "lungs" / "site2" / "b.png", slice(1, 7), slice(1, 7))
    _mask(masks / "heart" / "site2" / "c.png", slice(0, 2), slice(0, 2), size=4)  # wrong size
    out = tmp_path / "manifest.csv"
    summary = build_manifest(folder, out, masks=masks, view="PA")
    df = read_manifest(out).frame.set_index("image_id")
    assert list(df.index) == ["a", "site2/b"]
    assert summary.dropped["mask_size_mismatch"] == 1
    assert df.loc["a", "lung_mask_path"] == "manifest_masks/lungs/a.png"
    union = np.asarray(Image.open(resolve(tmp_path, df.loc["a", "lung_mask_path"]))) > 0
    assert union.sum() == 6 * 2 * 2
    assert df.loc["site2/b", "lung_mask_path"] == "masks/lungs/site2/b.png"
    assert df.loc["site2/b", "heart_mask_path"] == ""
    assert summary.counts["lung_mask_from_union"] == 1
    assert summary.counts["no_heart_mask"] == 1
    assert (df["view"] == "PA").all()


def test_reports_csv(folder, tmp_path):
    reports = tmp_path / "reports.csv"
    reports.write_text(
        "image_id,findings,study_id,split,Cardiomegaly,site\n"
        'a,"Heart normal.\n  Lungs clear.",s1,test,0,north\n'
        "site2/b,Small effusion.,s2,,-1,south\n"
        "ghost,Never seen.,s9,train,,\n"
    )
    out = tmp_path / "manifest.csv"
    summary = build_manifest(folder, out, reports=reports)
    df = read_manifest(out).frame.set_index("image_id")
    assert df.loc["a", "findings"] == "Heart normal. Lungs clear."
    assert (df.loc["a", "study_id"], df.loc["a", "split"]) == ("s1", "test")
    assert df.loc["a", "Cardiomegaly"] == 0.0 and df.loc["site2/b", "Cardiomegaly"] == -1.0
    assert df.loc["site2/b", "site"] == "south"
    assert df.loc["site2/b", "split"] in ("train", "validate", "test")
    assert df.loc["site2/c", "findings"] == "" and math.isnan(df.loc["site2/c", "Cardiomegaly"])
    assert summary.counts["reports_without_image"] == 1
    assert summary.counts["images_without_report"] == 1


def test_reports_csv_errors_name_line(folder, tmp_path):
    reports = tmp_path / "reports.csv"
    reports.write_text("image_id,findings,split\na,x,train\na,y,test\n")
    with pytest.raises(
        CxrError, match=r"reports\.csv:3: duplicate image_id 'a' \(first on line 2\)"
    ):
        build_manifest(folder, tmp_path / "m.csv", reports=reports)
    reports.write_text("image_id,findings,split\na,x,holdout\n")
    with pytest.raises(CxrError, match=r"reports\.csv:2: column 'split': 'holdout'"):
        build_manifest(folder, tmp_path / "m.csv", reports=reports)
    reports.write_text("image,findings\na,x\n")
    with pytest.raises(CxrError, match=r"reports\.csv:1: missing column\(s\) 'image_id'"):
        build_manifest(folder, tmp_path / "m.csv", reports=reports)


def test_everything_dropped_is_an_error(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "x.png").write_bytes(b"junk")
    with pytest.raises(
        CxrError, match=r"no rows left to write \(folder; dropped: unreadable_image 1\)"
    ):
        build_manifest(images, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()
