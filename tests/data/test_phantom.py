"""The phantom dataset: deterministic, complete, and image/masks/labels/text agree."""

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlib.base.errors import CxrError
from cxrlib.base.masks import cardiothoracic_ratio
from cxrlib.data.manifest import (
    CHEXPERT_LABELS,
    FINDING_MASK_COLUMN,
    MASK_COLUMNS,
    REQUIRED_COLUMNS,
    finding_regions,
    read_manifest,
)
from cxrlib.data.phantom import phantom_study, write_phantom
from cxrlib.data.phantom.findings import (
    POSSIBLE,
    PRESENT,
    Finding,
    PhantomStudy,
    attribute_columns,
    labels,
)
from cxrlib.data.phantom.render import render

FINDINGS_NAMED_IN_THE_ISSUE = (
    "Cardiomegaly",
    "Enlarged Cardiomediastinum",
    "Pleural Effusion",
    "Pneumothorax",
    "Consolidation",
    "Atelectasis",
    "Lung Opacity",
    "Edema",
    "Lung Lesion",
    "Support Devices",
    "Fracture",
    "Pleural Other",
)


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "set"
    write_phantom(out, n=40, seed=3, size=96, progress=False)
    return out


def test_same_arguments_give_identical_bytes(small, tmp_path):
    again = tmp_path / "again"
    write_phantom(again, n=40, seed=3, size=96, workers=2, progress=False)
    assert _digest(small) == _digest(again)
    other = tmp_path / "other"
    write_phantom(other, n=40, seed=4, size=96, progress=False)
    assert _digest(other)["manifest.csv"] != _digest(small)["manifest.csv"]


def test_manifest_has_every_schema_column_and_files(small):
    df = read_manifest(small / "manifest.csv").frame  # validates, files included
    for col in (*REQUIRED_COLUMNS, *MASK_COLUMNS, "patient_id", "ctr", *attribute_columns()):
        assert col in df.columns
    assert len(df) == 40
    assert df["image_id"].is_unique
    assert set(df["split"]) <= {"train", "validate", "test"}
    assert set(df["view"]) <= {"PA", "AP"}
    assert (df["findings"].str.len() > 0).all()
    image = np.asarray(Image.open(small / df["image_path"][0]))
    assert image.shape == (96, 96) and image.dtype == np.uint8


def test_masks_are_exact_and_on_the_right_sides(small):
    df = read_manifest(small / "manifest.csv").frame
    for _, row in df.iterrows():
        m = {
            c: np.asarray(Image.open(small / row[c])) > 127
            for c in (
                "lung_mask_path",
                "left_lung_mask_path",
                "right_lung_mask_path",
                "heart_mask_path",
            )
        }
        values = set(np.unique(np.asarray(Image.open(small / row["heart_mask_path"]))))
        assert values <= {0, 255}
        assert np.array_equal(
            m["lung_mask_path"], m["left_lung_mask_path"] | m["right_lung_mask_path"]
        )
        cols = np.arange(96)
        # patient's left lung is on the image's right; the heart sits to the patient's left
        left_c = (m["left_lung_mask_path"] * cols).sum() / m["left_lung_mask_path"].sum()
        right_c = (m["right_lung_mask_path"] * cols).sum() / m["right_lung_mask_path"].sum()
        heart_c = (m["heart_mask_path"] * cols).sum() / m["heart_mask_path"].sum()
        assert right_c < 48 < left_c
        assert heart_c > 48
        # stored CTR is the one measured on the written masks
        ctr = cardiothoracic_ratio(m["lung_mask_path"], m["heart_mask_path"])
        assert float(row["ctr"]) == pytest.approx(ctr, abs=1e-4)
        # the lungs are drawn darker than the body around them
        image = np.asarray(Image.open(small / row["image_path"])).astype(float)
        body = ~m["lung_mask_path"] & (image > 30)
        assert image[m["lung_mask_path"] & ~m["heart_mask_path"]].mean() < image[body].mean()


def test_labels_agree_with_ctr_and_attributes(small):
    df = read_manifest(small / "manifest.csv").frame
    for _, row in df.iterrows():
        ctr = float(row["ctr"])
        if row["Cardiomegaly"] in (1.0, -1.0):
            assert ctr > 0.5, row["image_id"]
        else:
            assert ctr < 0.5, row["image_id"]
        effusion = row["Pleural Effusion"] in (1.0, -1.0)
        assert bool(row["effusion_side"]) == effusion
        assert bool(row["devices"]) == (row["Support Devices"] == 1.0)
        others = [row[c] for c in CHEXPERT_LABELS if c not in ("No Finding", "Support Devices")]
        abnormal = any(v in (1.0, -1.0) for v in others)
        assert (row["No Finding"] == 1.0) != abnormal
        if not abnormal:
            assert math.isnan(row["Pneumonia"])


def test_labels_follow_chexpert_aggregation():
    study = PhantomStudy(
        "x",
        findings=(
            Finding("Atelectasis", POSSIBLE, side="left", zone="lower"),
            Finding("Atelectasis", PRESENT, side="right", zone="lower"),
            Finding("Support Devices", kind="enteric tube"),
        ),
        negatives=("Pneumothorax",),
        ctr=0.45,
    )
    out = labels(study)
    assert out["Atelectasis"] == 1.0  # positive wins over uncertain
    assert out["Pneumothorax"] == 0.0
    assert out["Support Devices"] == 1.0
    assert math.isnan(out["No Finding"])  # an abnormality: No Finding blank
    assert math.isnan(out["Edema"])  # not mentioned
    normal = PhantomStudy("y", (Finding("Support Devices", kind="pacemaker"),), ("Edema",), 0.4)
    assert labels(normal)["No Finding"] == 1.0  # devices alone are still No Finding


def test_seed_7_with_300_studies_contains_every_finding():
    seen: set[str] = set()
    normal = 0
    for i in range(300):
        study = phantom_study(i, seed=7)
        seen |= {f.observation for f in study.findings}
        normal += study.is_normal
        seen |= {f.kind for f in study.findings if f.kind}
        seen |= {f"{f.observation}:{f.side}" for f in study.findings if f.side}
    for name in FINDINGS_NAMED_IN_THE_ISSUE:
        assert name in seen, name
    for kind in ("nodule", "mass", "endotracheal tube", "enteric tube", "central venous catheter"):
        assert kind in seen, kind
    for side in ("left", "right", "bilateral"):
        assert f"Pleural Effusion:{side}" in seen
    assert 60 < normal < 140  # about a third normal


def _difference(finding: Finding, size: int = 128) -> np.ndarray:
    base = PhantomStudy("z", (), (), ctr=0.44, anatomy_seed=11)
    with_finding = PhantomStudy("z", (finding,), (), ctr=0.44, anatomy_seed=11)
    a = render(base, size).image.astype(float)
    b = render(with_finding, size).image.astype(float)
    return b - a


@pytest.mark.parametrize(
    "finding",
    [
        Finding("Pleural Effusion", side="left", size="moderate"),
        Finding("Pleural Effusion", side="right", size="large"),
        Finding("Consolidation", side="left", zone="lower"),
        Finding("Consolidation", side="right", zone="upper"),
        Finding("Lung Opacity", side="right", zone="middle"),
        Finding("Atelectasis", side="left", zone="lower"),
        Finding("Lung Lesion", side="right", zone="upper", size="2.0 cm", kind="nodule"),
        Finding("Lung Lesion", side="left", zone="lower", size="5.0 cm", kind="mass"),
        Finding("Pleural Other", side="left", zone="upper", kind="pleural thickening"),
        Finding("Fracture", side="right", zone="middle", kind="rib"),
    ],
    ids=lambda f: f"{f.observation}-{f.side}-{f.zone or f.size}",
)
def test_findings_are_drawn_on_their_side(finding):
    diff = np.abs(_difference(finding))
    assert diff.sum() > 0, "the finding changed nothing"
    cols = np.arange(diff.shape[1])
    centre = (diff.sum(axis=0) * cols).sum() / diff.sum()
    # patient's left = image right
    if finding.side == "left":
        assert centre > diff.shape[1] / 2
    else:
        assert centre < diff.shape[1] / 2
    if finding.zone in ("upper", "lower"):
        rows = np.arange(diff.shape[0])
        row_centre = (diff.sum(axis=1) * rows).sum() / diff.sum()
        lungs = render(PhantomStudy("z", (), (), 0.44, anatomy_seed=11), 128).masks
        lung_rows = np.flatnonzero((lungs["left_lung"] | lungs["right_lung"]).any(axis=1))
        mid = (lung_rows[0] + lung_rows[-1]) / 2
        assert (row_centre < mid) == (finding.zone == "upper")


def test_pneumothorax_removes_lung_markings_and_darkens():
    diff = _difference(Finding("Pneumothorax", side="right", size="large"))
    assert diff.min() < -5  # the pleural space beyond the line is darker
    cols = np.arange(diff.shape[1])
    neg = np.clip(-diff, 0, None)
    assert (neg.sum(axis=0) * cols).sum() / neg.sum() < diff.shape[1] / 2


def test_bilateral_and_devices_change_the_image():
    diff = np.abs(_difference(Finding("Edema", side="bilateral", size="severe")))
    half = diff.shape[1] // 2
    assert diff[:, :half].sum() > 0.3 * diff.sum() and diff[:, half:].sum() > 0.3 * diff.sum()
    for kind in ("endotracheal tube", "enteric tube", "central venous catheter", "pacemaker"):
        assert _difference(Finding("Support Devices", kind=kind, side="left")).max() > 20


def test_cardiomegaly_is_drawn_with_its_ctr():
    for target in (0.42, 0.58, 0.66):
        drawn = render(PhantomStudy("c", (), (), ctr=target, anatomy_seed=5), 224)
        assert drawn.ctr == pytest.approx(target, abs=0.012)


def test_bad_arguments(tmp_path):
    with pytest.raises(CxrError, match="n must be >= 1"):
        write_phantom(tmp_path / "x", n=0)
    with pytest.raises(CxrError, match="size must be >= 32"):
        write_phantom(tmp_path / "x", n=1, size=8)
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(NotADirectoryError):
        write_phantom(afile, n=1)


def test_manifest_text_is_pandas_readable(small):
    raw = pd.read_csv(small / "manifest.csv", dtype=str, keep_default_na=False)
    assert set(raw["No Finding"]) <= {"1", ""}
    assert set(raw["Cardiomegaly"]) <= {"1", "0", "-1", ""}


def test_fast_affine_equals_scipy_inside_the_frame():
    import importlib

    from scipy import ndimage

    render_module = importlib.import_module("cxrlib.data.phantom.render")
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random((64, 64)).astype(np.float32), 2)
    theta = np.deg2rad(2.5)
    matrix = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) / 0.97
    centre = np.array([31.5, 31.5])
    offset = centre - matrix @ (centre + np.array([1.3, -0.7]))
    ref = ndimage.affine_transform(image, matrix, offset=offset, order=1, cval=0.0)
    got = render_module._affine(image, matrix, offset)
    np.testing.assert_allclose(got[4:-4, 4:-4], ref[4:-4, 4:-4], atol=1e-5)


REGION_OBSERVATIONS = (
    "Pleural Effusion",
    "Pneumothorax",
    "Consolidation",
    "Lung Opacity",
    "Atelectasis",
    "Edema",
    "Lung Lesion",
    "Fracture",
    "Pleural Other",
)


def test_finding_masks_hold_the_drawn_regions(small):
    df = read_manifest(small / "manifest.csv").frame  # validates: every finding mask exists
    n_regions = 0
    for _, row in df.iterrows():
        image = Image.open(small / row[FINDING_MASK_COLUMN])
        bits = np.asarray(image)
        assert image.mode == "I;16" and bits.dtype == np.uint16 and bits.shape == (96, 96)
        regions = finding_regions(bits)
        lungs = np.asarray(Image.open(small / row["lung_mask_path"])) > 127
        for name in regions:
            assert name in REGION_OBSERVATIONS, name
            assert row[name] in (1.0, -1.0), (row["image_id"], name)  # drawn findings only
            if name in ("Pleural Effusion", "Pneumothorax", "Consolidation", "Lung Opacity"):
                # inside the lung on the canvas; the maps (bilinear for the region, the
                # outline filled again for the lungs) differ by a pixel or two at sharp corners
                outside = regions[name] & ~ndimage_dilate(lungs, 2)
                assert not outside.any(), (row["image_id"], name, int(outside.sum()))
        for name in REGION_OBSERVATIONS:
            if row[name] in (1.0, -1.0) and name != "Lung Lesion":  # a tiny nodule may vanish
                assert name in regions, (row["image_id"], name)
        n_regions += len(regions)
    assert n_regions > 10


@pytest.mark.parametrize(
    "finding",
    [
        Finding("Pleural Effusion", side="left", size="small"),
        Finding("Pleural Effusion", side="right", size="small", certainty=POSSIBLE),
        Finding("Pneumothorax", side="left", size="moderate"),
        Finding("Consolidation", side="right", zone="lower"),
        Finding("Lung Opacity", side="left", zone="upper"),
        # subtle: a plain one also raises the hemidiaphragm (volume loss, not its region)
        Finding("Atelectasis", side="right", zone="middle", certainty=POSSIBLE),
        Finding("Lung Lesion", side="left", zone="middle", size="2.0 cm", kind="nodule"),
        Finding("Fracture", side="left", zone="lower", kind="rib"),
        Finding("Pleural Other", side="right", zone="lower", kind="pleural thickening"),
    ],
    ids=lambda f: f"{f.observation}-{f.side}",
)
def test_a_region_lies_where_its_finding_changed_the_image(finding):
    study = PhantomStudy("z", (finding,), (), ctr=0.44, anatomy_seed=11)
    drawn = render(study, 128)
    assert list(drawn.regions) == [finding.observation]
    region = drawn.regions[finding.observation]
    cols = np.flatnonzero(region.any(axis=0))
    # the patient's side: left = image right
    assert (cols.min() > 64) if finding.side == "left" else (cols.max() < 64)
    changed = np.abs(_difference(finding)) > 2
    # most of what the finding changed is in its region (blur spreads it a pixel or two)
    grown = ndimage_dilate(region, 3)
    assert (changed & grown).sum() > 0.6 * changed.sum()
    bits = drawn.region_bits()
    assert bits.dtype == np.uint16
    assert np.array_equal(bits != 0, region)
    assert set(np.unique(bits)) == {0, 1 << CHEXPERT_LABELS.index(finding.observation)}


def test_bilateral_regions_cover_both_sides_and_others_have_none():
    study = PhantomStudy(
        "b",
        (
            Finding("Edema", side="bilateral", size="moderate"),
            Finding("Cardiomegaly", size="mild"),
            Finding("Support Devices", kind="pacemaker", side="left"),
        ),
        (),
        ctr=0.56,
        anatomy_seed=3,
    )
    drawn = render(study, 96)
    assert list(drawn.regions) == ["Edema"]
    edema = drawn.regions["Edema"]
    assert edema[:, :48].sum() > 20 and edema[:, 48:].sum() > 20


def ndimage_dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=iterations)
