"""The manifest schema: every validation failure is reported with its CSV line."""

import math

import pandas as pd
import pytest
from PIL import Image

from cxrlib.base.errors import CxrError, ManifestError
from cxrlib.data.manifest import (
    CHEXPERT_LABELS,
    REQUIRED_COLUMNS,
    assign_split,
    format_label,
    is_text_only,
    parse_label,
    read_manifest,
    validate,
    write_manifest,
)


def _row(i: int, **kw) -> dict:
    row = {
        "study_id": f"s{i}",
        "image_id": f"i{i}",
        "image_path": f"images/i{i}.png",
        "view": "PA",
        "split": "train",
        "findings": "No pneumothorax.",
        **{label: "" for label in CHEXPERT_LABELS},
    }
    row.update(kw)
    return row


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.new("L", (8, 8)).save(tmp_path / "images" / f"i{i}.png")
    return tmp_path


def _write_csv(folder, rows) -> str:
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_valid_manifest_round_trips(folder):
    rows = [_row(0, **{"Pneumothorax": "0"}), _row(1, **{"Cardiomegaly": "-1"}), _row(2)]
    path = write_manifest(pd.DataFrame(rows), folder / "m.csv")
    manifest = read_manifest(path)
    df = manifest.frame
    assert list(df.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert df.loc[0, "Pneumothorax"] == 0.0
    assert df.loc[1, "Cardiomegaly"] == -1.0
    assert math.isnan(df.loc[2, "Cardiomegaly"])
    assert df["Pneumothorax"].dtype == "float64"
    assert str(manifest.root) == str(folder)
    assert manifest.path == path and manifest.summary is None
    # written labels are 1, 0, -1 or blank
    text = path.read_text().splitlines()[1]
    assert ",0," in text and ".0" not in text


def test_missing_file_is_reported_with_its_line(folder):
    path = _write_csv(folder, [_row(0), _row(1, image_path="images/nope.png")])
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert err.value.problems == [f"{path}:3: image_path 'images/nope.png' does not exist"]


def test_unknown_split(folder):
    path = _write_csv(folder, [_row(0, split="val")])
    with pytest.raises(ManifestError, match=r":2: unknown split 'val'"):
        read_manifest(path)


def test_label_outside_chexpert_values(folder):
    path = _write_csv(folder, [_row(0), _row(1, **{"Edema": "2"})])
    with pytest.raises(ManifestError, match=r":3: column 'Edema': label value '2'"):
        read_manifest(path)


def test_duplicate_image_id(folder):
    path = _write_csv(folder, [_row(0), _row(1, image_id="i0")])
    with pytest.raises(ManifestError, match=r":3: duplicate image_id 'i0' \(first on line 2\)"):
        read_manifest(path)


def test_missing_columns(folder):
    rows = [{k: v for k, v in _row(0).items() if k not in ("split", "Edema")}]
    path = _write_csv(folder, rows)
    with pytest.raises(ManifestError, match="missing column\\(s\\): split, Edema"):
        read_manifest(path)


def test_every_problem_is_listed(folder):
    rows = [_row(0, split="x"), _row(1, **{"Fracture": "yes"}), _row(2, image_id="i0")]
    path = _write_csv(folder, rows)
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert len(err.value.problems) == 3
    assert str(err.value).startswith(f"{path}: 3 problems in manifest")


def test_missing_mask_file(folder):
    path = _write_csv(folder, [_row(0, heart_mask_path="masks/h0.png")])
    with pytest.raises(ManifestError, match="heart_mask_path 'masks/h0.png' does not exist"):
        read_manifest(path)


def test_missing_and_malformed_manifest_files(tmp_path):
    with pytest.raises(ManifestError, match="file does not exist"):
        read_manifest(tmp_path / "absent.csv")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ManifestError, match="not a readable CSV"):
        read_manifest(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ManifestError, match="not a readable CSV"):
        read_manifest(empty)


def test_text_only_manifest_allowed_mixed_not(folder):
    rows = [_row(0, image_path=""), _row(1, image_path="")]
    df = pd.DataFrame(rows)
    assert is_text_only(df)
    assert validate(df, folder) == []
    mixed = pd.DataFrame([_row(0), _row(1, image_path="")])
    assert validate(mixed, folder) == ["manifest:3: empty image_path in a manifest with images"]


def test_study_split_across_splits_is_a_leak(folder):
    rows = [_row(0), _row(1, study_id="s0", split="test"), _row(2)]
    problems = validate(pd.DataFrame(rows), folder)
    assert problems == ["manifest:2: study 's0' has images in several splits (lines 2, 3)"]


def test_nullable_and_odd_label_cells(folder):
    df = pd.DataFrame([_row(0), _row(1), _row(2)])
    df["Edema"] = pd.array([1, pd.NA, 0], dtype="Int64")
    assert validate(df, folder) == []
    df["Edema"] = ["nan", "", "1e0"]
    assert validate(df, folder) == [
        "manifest:2: column 'Edema': label value 'nan' is not one of 1, 0, -1, blank",
        "manifest:4: column 'Edema': label value '1e0' is not one of 1, 0, -1, blank",
    ]


def test_write_refuses_invalid_and_writes_nothing(folder):
    with pytest.raises(ManifestError):
        write_manifest(pd.DataFrame([_row(0, split="nope")]), folder / "out.csv")
    assert not (folder / "out.csv").exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", 1.0), ("1.0", 1.0), ("0", 0.0), ("-1", -1.0), ("-1.0", -1.0), (-1, -1.0), (0.0, 0.0)],
)
def test_parse_label_values(value, expected):
    assert parse_label(value) == expected


@pytest.mark.parametrize("value", ["", " ", None, float("nan")])
def test_parse_label_blank(value):
    assert math.isnan(parse_label(value))
    assert format_label(parse_label(value)) == ""


@pytest.mark.parametrize("value", ["2", "yes", 0.5, "1e3"])
def test_parse_label_rejects(value):
    with pytest.raises(CxrError, match="not one of 1, 0, -1, blank"):
        parse_label(value)


def test_assign_split_is_seeded_and_proportional():
    ids = [f"study{i}" for i in range(20000)]
    splits = [assign_split(s, seed=3) for s in ids]
    assert splits == [assign_split(s, seed=3) for s in ids]  # deterministic
    assert splits != [assign_split(s, seed=4) for s in ids]  # seed reshuffles
    counts = pd.Series(splits).value_counts(normalize=True)
    assert abs(counts["train"] - 0.8) < 0.01
    assert abs(counts["validate"] - 0.1) < 0.01
    assert abs(counts["test"] - 0.1) < 0.01
    # known values (sha256 of "seed:study_id"), so that splits never drift between versions
    known = {"study0": "train", "study12": "validate", "study13": "test", "study28": "test"}
    assert {s: assign_split(s, seed=0) for s in known} == known
    with pytest.raises(ValueError):
        assign_split("x", 0, (0.5, 0.5, 0.5))


def test_manifest_selections_keep_root_and_summary(folder):
    rows = [_row(0), _row(1, split="test"), _row(2, split="test")]
    path = write_manifest(pd.DataFrame(rows), folder / "m.csv")
    (folder / "m.csv.summary.json").write_text('{"dataset": "x"}')
    manifest = read_manifest(path)
    assert len(manifest) == 3 and manifest.summary == {"dataset": "x"}
    test = manifest.split("test")
    assert test.frame["image_id"].tolist() == ["i1", "i2"]
    assert test.root == folder and test.summary == manifest.summary
    first = test.subset(test.frame.iloc[:1])
    assert len(first) == 1 and first.resolve("images/i1.png") == folder / "images" / "i1.png"
    assert first.resolve("/abs/x.png").as_posix() == "/abs/x.png"
