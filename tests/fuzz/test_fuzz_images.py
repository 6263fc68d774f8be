"""Fuzz image and mask decoding: any bytes, and PNG / JPEG / TIFF / BMP files with
random header bytes, random cuts and random pixel data."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from cxrlib.base.errors import CxrError
from cxrlib.base.images import load_image, open_gray
from cxrlib.base.masks import load_mask, read_finding_mask
from tests.fuzz.helpers import assert_one_line

pytestmark = pytest.mark.slow  # the fuzz ci profile runs in make test-all

MODES = {"L": np.uint8, "I;16": np.uint16, "RGB": np.uint8, "I": np.int32, "F": np.float32}
FORMATS = {"L": ["PNG", "JPEG", "TIFF", "BMP", "GIF"], "I;16": ["PNG", "TIFF"],
           "RGB": ["PNG", "JPEG", "TIFF", "BMP"], "I": ["TIFF"], "F": ["TIFF"]}  # fmt: skip


@st.composite
def image_file(draw) -> bytes:
    mode = draw(st.sampled_from(sorted(MODES)))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    seed = draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).integers(0, 256, size=shape).astype(MODES[mode])
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format=draw(st.sampled_from(FORMATS[mode])))
    return buffer.getvalue()


@st.composite
def mangled(draw, inner) -> bytes:
    """``inner`` with a few bytes overwritten (most in the header) and a random cut."""
    data = bytearray(draw(inner))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.one_of(st.integers(0, min(40, len(data) - 1)), st.integers(0, len(data) - 1)))
        data[at] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))]) if draw(st.booleans()) else bytes(data)


def png_header(width: int, height: int) -> bytes:
    """A PNG of nothing but a header declaring ``width`` x ``height`` 8-bit gray pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


ANY_IMAGE = st.one_of(st.binary(max_size=200), image_file(), mangled(image_file()))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-images")


@given(data=ANY_IMAGE)
@example(data=png_header(9500, 9500))  # over MAX_PIXELS: refused before decoding
@example(data=png_header(2**31 - 1, 2**31 - 1))
def test_load_image_any_bytes(folder, data):
    path = folder / "image.png"
    path.write_bytes(data)
    try:
        gray = load_image(path)
    except CxrError as err:
        assert_one_line(err, str(path))
        return
    assert gray.ndim == 2 and gray.dtype == np.uint8


@given(data=ANY_IMAGE, what=st.sampled_from(["mask", "image", "lung mask"]))
@example(data=png_header(2**24, 2**24), what="mask")  # read_finding_mask: DecompressionBombError
def test_open_gray_and_masks_any_bytes(folder, data, what):
    path = folder / "mask.png"
    path.write_bytes(data)
    for read in (lambda p: open_gray(p, what), load_mask, read_finding_mask):
        try:
            array = read(path)
        except CxrError as err:
            assert_one_line(err, str(path))
            continue
        assert array.ndim == 2
