"""Fuzz CheXmask RLE decoding: any string, random numbers, and random cells of a
CheXmask CSV attached to a manifest."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cxrlib.base.errors import CxrError
from cxrlib.data import mimic
from cxrlib.data.chexmask import attach_masks, decode_rle
from tests.data.test_chexmask import COLUMNS_MIMIC, _chexmask_row
from tests.data.test_mimic import build_mimic_tree
from tests.fuzz.helpers import assert_one_line, fewer

pytestmark = pytest.mark.slow  # the fuzz ci profile runs in make test-all

NUMBERS = st.one_of(
    st.integers(-5, 80),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63)]),
)
NUMBER_TEXT = st.one_of(
    NUMBERS.map(str),
    st.sampled_from(["1.5", "1e3", "nan", "inf", "+3", "-0", "0x10", "١٢", "", "3_0"]),
    st.text(max_size=4),
)
SEPARATORS = st.sampled_from([" ", "  ", "\t", "\n", ",", " \u00a0"])


@st.composite
def rle_strings(draw) -> str:
    tokens = draw(st.lists(NUMBER_TEXT, max_size=10))
    return "".join(t + draw(SEPARATORS) for t in tokens)


SIZES = st.one_of(st.integers(1, 40), st.integers(-3, 0), st.sampled_from([2**31, 2**40]))


@given(rle=st.one_of(st.text(), rle_strings()), height=SIZES, width=SIZES)
@example(rle="", height=1, width=2**40)  # was a MemoryError
@example(rle="1 99999999999999999999", height=3, width=3)  # was an OverflowError
@example(rle="2 9223372036854775807", height=3, width=3)  # was an IndexError (overflow)
@example(rle="9223372036854775807 2", height=3, width=3)  # was an IndexError (overflow)
def test_decode_rle_any_string(rle, height, width):
    """The decoder's documented error is CxrError (the CSV reader adds the file, line
    and column; see the test below)."""
    try:
        mask = decode_rle(rle, height, width)
    except CxrError as err:
        assert type(err) is CxrError and "\n" not in str(err) and str(err)
        return
    assert mask.shape == (height, width) and mask.dtype == np.bool_


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fuzz-chexmask")
    path = base / "m" / "manifest.csv"
    mimic.build_manifest(build_mimic_tree(base / "mimic"), path)
    return path


CELLS = st.one_of(st.text(max_size=12), NUMBERS.map(str), rle_strings())


@fewer(4)
@given(
    cells=st.dictionaries(st.sampled_from(range(1, len(COLUMNS_MIMIC))), CELLS, max_size=4),
    size=st.sampled_from([8, 7, 9]),
)
def test_attach_masks_random_cells(manifest, cells, size):
    """A CheXmask row of the manifest's image with random Dice, RLE, Height, Width."""
    row = _chexmask_row("aaaa1111-0001", 0.9, h=size, w=size) if size == 8 else None
    row = row or [*_chexmask_row("aaaa1111-0001", 0.9)[:-2], str(size), "8"]
    for column, value in cells.items():
        row[column] = value
    path = manifest.parent.parent / "MIMIC-CXR-JPG.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([COLUMNS_MIMIC, row])
    try:
        attach_masks(path, manifest, manifest.parent.parent / "out")
    except CxrError as err:
        assert_one_line(err, f"{path}:2")
