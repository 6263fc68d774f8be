"""Fuzz the MIMIC-CXR report parsing: sections and sentences of any text, and the
adapter's report reading (any bytes, a corrupted reports zip)."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cxrlib.base.errors import CxrError
from cxrlib.data.mimic import build_manifest, report_relpath
from cxrlib.data.sections import (
    extract_sections,
    split_sections,
    split_sentences,
)
from tests.data.test_mimic import REPORTS, build_mimic_tree
from tests.fuzz.helpers import assert_one_line, fewer

pytestmark = pytest.mark.slow  # the fuzz ci profile runs in make test-all

HEADERS = st.one_of(
    st.sampled_from(["FINDINGS", "IMPRESSION", "FINDINGS AND IMPRESSION", "COMPARISON"]),
    st.from_regex(r"[A-Z][A-Z ()/,-]{0,20}", fullmatch=True),
    st.text(max_size=12),
)
SEPARATORS = st.sampled_from(["", " ", "\n", "\n\n", "  \n", "\t", "\r\n"])


@st.composite
def near_reports(draw) -> str:
    """Header lines with random names, separators and bodies."""
    parts = draw(st.lists(st.tuples(HEADERS, SEPARATORS, st.text(max_size=40)), max_size=8))
    lead = draw(st.sampled_from(["", " ", "FINAL REPORT\n"]))
    return lead + "".join(f"{h}:{sep}{body}\n" for h, sep, body in parts)


def _check_sections(text: str) -> None:
    sections = split_sections(text)
    for section in sections:
        assert section.text and section.text == " ".join(section.text.split())
        assert 0 <= section.start <= len(text)
    found = extract_sections(text)
    assert set(found) == {s.name for s in sections}
    assert all(isinstance(s, str) and s for s in split_sentences(text))


@given(st.one_of(st.text(), near_reports()))
def test_sections_of_any_text(text):
    _check_sections(text)


@given(st.one_of(st.none(), st.floats(), st.integers(), st.binary(max_size=40)))
def test_sentences_of_any_cell(value):
    assert all(isinstance(s, str) for s in split_sentences(value))


@pytest.fixture(scope="module")
def mimic(tmp_path_factory) -> Path:
    return build_mimic_tree(tmp_path_factory.mktemp("fuzz-mimic") / "mimic-cxr-jpg")


STUDY = ("10000032", "50414267")


@fewer(4)
@given(data=st.one_of(st.binary(max_size=300), near_reports().map(str.encode)))
def test_mimic_report_of_any_bytes(mimic, data):
    report = mimic / report_relpath(*STUDY)
    report.write_bytes(data)
    try:
        build_manifest(mimic, mimic.parent / "out" / "manifest.csv", keep_missing_findings=True)
    except CxrError as err:
        assert_one_line(err, str(report))
    finally:
        report.write_text(REPORTS[STUDY])


def _reports_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for (subject, study), text in REPORTS.items():
            archive.writestr(report_relpath(subject, study), text)
    return buffer.getvalue()


ZIP = _reports_zip()


@fewer(2)
@given(
    edits=st.lists(st.tuples(st.integers(0, len(ZIP) - 1), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, len(ZIP)),
)
def test_mimic_reports_zip_corrupted(mimic, tmp_path_factory, edits, cut):
    data = bytearray(ZIP)
    for at, value in edits:
        data[at] = value
    folder = mimic.parent / "zip-only"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    zip_path = folder / "mimic-cxr-reports.zip"
    zip_path.write_bytes(bytes(data[:cut] if cut else data))
    try:
        build_manifest(mimic, mimic.parent / "out" / "manifest.csv", reports=zip_path)
    except CxrError as err:
        assert_one_line(err, str(zip_path))
