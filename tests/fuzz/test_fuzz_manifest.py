"""Fuzz the manifest reader and validator: any bytes, and manifest CSVs with random
cells, missing, extra and repeated columns."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cxrlib.base.errors import ManifestError
from cxrlib.data.manifest import (
    CHEXPERT_LABELS,
    FINDING_MASK_COLUMN,
    MASK_COLUMNS,
    REQUIRED_COLUMNS,
    SPLITS,
    Manifest,
    read_manifest,
    validate,
)
from tests.fuzz.helpers import assert_one_line, fewer

pytestmark = pytest.mark.slow  # the fuzz ci profile runs in make test-all

CELL_VALUES = {
    "split": st.sampled_from([*SPLITS, "", "TRAIN", "dev"]),
    "image_path": st.sampled_from(["img.png", "", "missing.png", "/abs.png", "a" * 300]),
    **{
        label: st.sampled_from(["1", "0", "-1", "", "1.0", "-0", "2", "nan", "x"])
        for label in CHEXPERT_LABELS
    },
}
TEXT = st.text(max_size=12)


@st.composite
def manifest_csv(draw) -> bytes:
    columns = list(REQUIRED_COLUMNS)
    if draw(st.booleans()):
        columns.remove(draw(st.sampled_from(columns)))
    columns += draw(
        st.lists(st.sampled_from([*MASK_COLUMNS, FINDING_MASK_COLUMN, "split", "x"]), max_size=3)
    )
    columns += draw(st.lists(TEXT, max_size=2))
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        row = [draw(st.one_of(CELL_VALUES.get(c, TEXT), TEXT)) for c in columns]
        if draw(st.integers(0, 9)) == 0:  # a ragged row
            row = row[: draw(st.integers(0, len(row)))] + draw(st.lists(TEXT, max_size=2))
        rows.append(row)
    buffer = io.StringIO()
    csv.writer(buffer).writerows([columns, *rows])
    return buffer.getvalue().encode(draw(st.sampled_from(["utf-8", "utf-8", "utf-16"])), "replace")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-manifest")
    (folder / "img.png").write_bytes(b"")
    return folder


@fewer(2)
@given(data=st.one_of(st.binary(max_size=300), manifest_csv()), check_files=st.booleans())
def test_read_manifest_any_bytes(folder, data, check_files):
    path = folder / "manifest.csv"
    path.write_bytes(data)
    try:
        manifest = read_manifest(path, check_files=check_files)
    except ManifestError as err:
        assert_one_line(err, str(path))
        return
    assert isinstance(manifest, Manifest) and len(manifest) > 0
    for label in CHEXPERT_LABELS:
        assert manifest.frame[label].dtype == "float64"


VALUES = st.one_of(
    st.none(), st.floats(), st.integers(-3, 3), st.booleans(), TEXT, st.sampled_from(SPLITS)
)


@given(
    columns=st.lists(st.sampled_from([*REQUIRED_COLUMNS, *MASK_COLUMNS, "x"]), unique=True),
    values=st.lists(VALUES, min_size=1, max_size=60),
    rows=st.integers(0, 4),
)
def test_validate_any_frame(folder, columns, values, rows):
    """validate() of any frame (cells of any type) lists its problems, never raises."""
    columns = [*REQUIRED_COLUMNS, *columns] if len(columns) % 2 else columns
    columns = list(dict.fromkeys(columns))
    data = {c: [values[(i + j) % len(values)] for i in range(rows)] for j, c in enumerate(columns)}
    problems = validate(pd.DataFrame(data, dtype=object), folder, name="fuzz.csv")
    assert all(isinstance(p, str) and p.startswith("fuzz.csv") for p in problems)
    assert all("\n" not in p for p in problems)
