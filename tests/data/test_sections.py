"""The MIMIC-CXR-convention section parser on awkward (invented) reports."""

import pytest

from cxrlib.data.sections import (
    extract_sections,
    normalize_section_name,
    split_sections,
)

# Formatted like a MIMIC-CXR report file: every line starts with a space.
TYPICAL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old woman with cough.

 COMPARISON:  None.

 FINDINGS:

 The lungs are clear.  There is no pleural effusion
 or pneumothorax.  Heart size is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_typical_report():
    sections = extract_sections(TYPICAL)
    assert sections == {
        "preamble": "FINAL REPORT",
        "examination": "CHEST (PA AND LAT)",
        "indication": "___ year old woman with cough.",
        "comparison": "None.",
        "findings": "The lungs are clear. There is no pleural effusion or pneumothorax. "
        "Heart size is normal.",
        "impression": "No acute cardiopulmonary process.",
    }


def test_sections_out_of_order():
    text = " IMPRESSION: No acute process.\n FINDINGS: Clear lungs.\n INDICATION: Cough.\n"
    assert [s.name for s in split_sections(text)] == ["impression", "findings", "indication"]
    assert extract_sections(text).get("findings") == "Clear lungs."


def test_repeated_header_last_wins():
    text = " FINDINGS: First read.\n IMPRESSION: Fine.\n FINDINGS: Second read, final.\n"
    assert extract_sections(text).get("findings") == "Second read, final."
    assert [s.text for s in split_sections(text) if s.name == "findings"] == [
        "First read.",
        "Second read, final.",
    ]


def test_repeated_header_empty_last_is_dropped():
    text = " FINDINGS: The real findings.\n IMPRESSION: Fine.\n FINDINGS:  \n"
    assert extract_sections(text).get("findings") == "The real findings."


def test_no_findings():
    text = " INDICATION: Chest pain.\n IMPRESSION: No acute process.\n"
    assert extract_sections(text).get("findings") is None
    assert extract_sections(text)["impression"] == "No acute process."


def test_findings_and_impression_counts_as_impression():
    text = " INDICATION: Fever.\n FINDINGS AND IMPRESSION: Clear lungs, no effusion.\n"
    assert extract_sections(text).get("findings") is None
    assert extract_sections(text)["impression"] == "Clear lungs, no effusion."


def test_lower_case_headers_are_text():
    text = " INDICATION: Cough.\n findings: lungs clear.\n Impression: normal.\n"
    assert extract_sections(text).get("findings") is None
    assert extract_sections(text) == {
        "indication": "Cough. findings: lungs clear. Impression: normal."
    }


def test_whitespace_collapsed_and_empty_sections_dropped():
    text = " COMPARISON:\n\n FINDINGS:\tLine one\n\n   line   two.\n"
    sections = split_sections(text)
    assert [s.name for s in sections] == ["findings"]
    assert sections[0].text == "Line one line two."
    assert sections[0].header == "FINDINGS"


def test_header_on_first_line_without_leading_space():
    assert extract_sections("FINDINGS: Clear.\nIMPRESSION: Normal.").get("findings") == "Clear."


def test_no_header_is_full_report():
    assert split_sections("Lungs clear.\n No effusion.")[0].name == "full report"
    assert extract_sections("Lungs clear.").get("findings") is None
    assert split_sections("   \n ") == []


def test_subtitle_right_after_a_bare_header_stays_inside():
    # official "skip past the first newline": a header alone on its line cannot be
    # followed directly by another header
    text = " FINDINGS:\n CHEST PA AND LATERAL: Lungs clear.\n IMPRESSION: Normal.\n"
    assert extract_sections(text).get("findings") == "CHEST PA AND LATERAL: Lungs clear."
    assert extract_sections(text)["impression"] == "Normal."


def test_colon_needs_whitespace_and_whole_line_upper_case():
    text = " FINDINGS: Tube at 10:30 position. NOTE:see below\n Pt. NOTE: x\n"
    assert (
        extract_sections(text).get("findings")
        == "Tube at 10:30 position. NOTE:see below Pt. NOTE: x"
    )


def test_view_description_header_counts_as_findings():
    text = " INDICATION: Cough.\n CHEST, PA AND LATERAL: Lungs are clear.\n IMPRESSION: Normal.\n"
    assert extract_sections(text).get("findings") == "Lungs are clear."


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("FINDINGS", "findings"),
        ("FINDING", "findings"),
        ("FINDINGS AND IMPRESSION", "impression"),
        ("FINDINGS/IMPRESSION", "impression"),
        ("IMPRESSION", "impression"),
        ("CONCLUSION", "impression"),
        ("IMPRESSON", "impression"),
        ("COMPARISONS", "comparison"),
        ("CLINICAL HISTORY", "history"),
        ("REASON FOR EXAM", "indication"),
        ("WET READ", "wet read"),
        ("CHEST, TWO VIEWS", "findings"),
        ("PORTABLE AP CHEST", "findings"),
        ("ADDENDUM TO REPORT", "addendum"),
        ("FINAL IMPRESSION", "impression"),
        ("PROVIDER", "provider"),
        ("  FINDINGS   ", "findings"),
    ],
)
def test_normalize_section_name(header, name):
    assert normalize_section_name(header) == name


def test_section_start_offsets_point_into_the_text():
    for section in split_sections(TYPICAL):
        if section.name != "preamble":
            assert TYPICAL[section.start :].split()[0] == section.text.split()[0]
