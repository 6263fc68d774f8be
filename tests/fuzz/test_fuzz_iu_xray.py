"""Fuzz the Open-i (IU X-ray) XML reader: any bytes, valid XML with random fields, and
a corrupted reports archive."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cxrlib.base.errors import CxrError
from cxrlib.data.iu_xray import SECTION_LABELS, iter_reports, parse_report
from tests.fuzz.helpers import assert_one_line

pytestmark = pytest.mark.slow  # the fuzz ci profile runs in make test-all

SOURCE = "NLMCXR_reports.tgz:ecgen-radiology/7.xml"
# XML 1.0 characters (the others cannot be written in a well-formed file at all)
XML_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufffe\uffff"),
    max_size=30,
).map(lambda s: "".join(c for c in s if c in "\t\n\r" or ord(c) >= 0x20))


@st.composite
def report_xml(draw) -> bytes:
    """An Open-i report: AbstractText sections, MeSH terms, images, random values."""
    labels = st.one_of(st.sampled_from(SECTION_LABELS), XML_TEXT)
    parts = [
        f"<AbstractText Label={quoteattr(draw(labels))}>{escape(draw(XML_TEXT))}</AbstractText>"
        for _ in range(draw(st.integers(0, 5)))
    ]
    majors = "".join(f"<major>{escape(m)}</major>" for m in draw(st.lists(XML_TEXT, max_size=3)))
    if draw(st.booleans()):
        parts.append(f"<MeSH>{majors}</MeSH>")
    for image in draw(st.lists(XML_TEXT, max_size=3)):
        parts.append(f"<parentImage id={quoteattr(image)}><caption/></parentImage>")
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from(["<parentImage/>", "<MeSH/>", "<AbstractText/>"])))
    body = "".join(draw(st.permutations(parts)))
    head = draw(st.sampled_from(["", '<?xml version="1.0" encoding="utf-8"?>']))
    xml = f"{head}<eCitation><MedlineCitation>{body}</MedlineCitation></eCitation>"
    return xml.encode(draw(st.sampled_from(["utf-8", "utf-8", "latin-1"])), "replace")


@st.composite
def mangled(draw, inner) -> bytes:
    """``inner`` with a random cut and a few random bytes overwritten."""
    data = bytearray(draw(inner))
    for _ in range(draw(st.integers(0, 3)) if data else 0):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@given(st.one_of(st.binary(max_size=200), report_xml(), mangled(report_xml())))
def test_parse_report_any_bytes(data):
    try:
        report = parse_report(data, 7, SOURCE)
    except CxrError as err:
        assert_one_line(err, SOURCE)
        return
    assert set(report.sections) <= {k.strip().upper() for k in report.sections}
    assert all(report.image_ids) and all(report.mesh_major)
    assert isinstance(report.findings, str)


def _archive(xml: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("ecgen-radiology/7.xml")
        info.size = len(xml)
        archive.addfile(info, io.BytesIO(xml))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-iu")


@given(data=mangled(report_xml().map(_archive)))
def test_reports_archive_corrupted(folder, data):
    path = folder / "NLMCXR_reports.tgz"
    path.write_bytes(data)
    try:
        reports = list(iter_reports(path))
    except CxrError as err:
        assert_one_line(err, str(path))
        return
    assert [r.number for r in reports] == [7]
