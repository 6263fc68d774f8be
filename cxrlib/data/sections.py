"""Sections of a free-text radiology report, following the MIMIC-CXR conventions.

Written for this project after the conventions of the official MIMIC-CXR section
parser (Johnson et al., ``MIT-LCP/mimic-cxr``, ``txt/section_parser.py``); no code of
it is used. The rules:

1. A **header** is an upper-case name followed by a colon at the start of a line:
   letters ``A-Z``, spaces and ``( ) / , -``, then ``:`` and whitespace (or the end of
   the text), e.g. ``FINDINGS:``, ``FINDINGS AND IMPRESSION:``, ``CHEST, PA AND LAT:``.
   Lower-case or mixed-case names (``Findings:``) are text, not headers.
2. A section runs from its header to the next header. Text before the first header
   is the ``preamble``; a report without any header is one ``full report`` section.
3. After a header that stands alone on its line, the next line cannot start a new
   section (it is the first line of this one); this is the official parser's
   "skip past the first newline" rule, which keeps sub-titles such as
   ``CHEST PA AND LATERAL:`` under ``FINDINGS:`` inside the findings.
4. Header names are **normalised**: lower-cased, spaces collapsed, then mapped by
   :data:`SECTION_SYNONYMS` (``comparisons`` -> ``comparison``, ``conclusion`` ->
   ``impression``, misspellings...). ``FINDINGS AND IMPRESSION`` and
   ``FINDINGS/IMPRESSION`` count as ``impression``, not ``findings``. Names not in the
   table that contain ``impression``, ``findings``, ``history``, ``comparison`` or
   ``addendum`` (checked in that order) take that name; names describing the study
   views (``chest``, ``portable``, ``pa and lateral``, ``two views``...; see
   :data:`VIEW_DESCRIPTIONS`) count as ``findings``; any other name is kept as is.
5. Section text has its whitespace collapsed (runs of spaces and newlines become
   one space, ends stripped); **empty sections are dropped**.
6. When a name occurs more than once, **the last non-empty section of that name wins**.

Deviations from the official parser (``data_manifests/datasets.md`` lists them too):
headers may start a line without the leading space that every MIMIC-CXR report line
has (and may be the first line of the text); every empty section is dropped (the
official parser drops only empty ``findings`` and ``impression``, which is all that
matters for Findings extraction); text is whitespace-collapsed; there is no
``last_paragraph`` pseudo-section (the official fallback for reports without
findings and impression, never used as Findings); the official per-study manual
overrides (``custom_mimic_cxr_rules``) are not applied.

The **sentences** of a report's text (:func:`split_sentences`) are the one sentence
rule of the package: the labeler, the data explorer and the sentence attention use it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# A header: at a line start (optional spaces/tabs), upper-case name, colon, whitespace.
_HEADER = re.compile(r"^[ \t]*(?P<name>[A-Z][A-Z ()/,-]*?)[ \t]*:(?=\s|$)", re.MULTILINE)

SENTENCE_END = r"(?<!\bvs)(?<!\be\.g)(?<!\bi\.e)(?<!\bdr)[.!?]+(?=\s|$)|[;:\n]"
"""Where a sentence ends in lower-cased text whose paragraph breaks are ``\\n`` and other
whitespace single spaces: ``.``, ``!`` or ``?`` (a run counts once) before a space or the
end (not inside ``1.5``, not after ``vs.``, ``e.g.``, ``i.e.``, ``dr.``), ``;``, ``:``
and a paragraph break. The labeler's negation and uncertainty scopes stop here too."""

# A missing space after a full stop ("apex.There"): needs the case of the text, so only
# :func:`split_sentences` (case kept) applies it, not the labeler's lower-cased scopes.
_MISSING_SPACE = r"(?<=[A-Za-z])[.!?]+(?=[A-Z][a-z])"
_SPLIT = re.compile(rf"(?i:{SENTENCE_END})|{_MISSING_SPACE}")
BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n\s*")
"""A paragraph break: a line with nothing but whitespace on it."""

SECTION_SYNONYMS: dict[str, str] = {
    # the frequent names and their canonical form
    "preamble": "preamble",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "findings and impression": "impression",
    "findings/impression": "impression",
    "findings/ impression": "impression",
    "impression and findings": "impression",
    "findings": "findings",
    "finding": "findings",
    "reference findings": "findings",
    "chest, two views": "findings",
    "comparison": "comparison",
    "comparisons": "comparison",
    "comparison exam": "comparison",
    "comparison film": "comparison",
    "reference exam": "comparison",
    "indication": "indication",
    "clinical indication": "indication",
    "reason for examination": "indication",
    "reason for exam": "indication",
    "history": "history",
    "clinical history": "history",
    "clinical information": "history",
    "patient history": "history",
    "pfi": "history",
    "examination": "examination",
    "exam": "examination",
    "type of examination": "examination",
    "technique": "technique",
    "notification": "notification",
    "recommendation": "recommendations",
    "recommendations": "recommendations",
    "recommendation(s)": "recommendations",
    "addendum": "addendum",
    "wet read": "wet read",
    "wetread": "wet read",
    "comment": "comment",
    "date": "date",
    # misspellings seen in MIMIC-CXR reports
    "impresson": "impression",
    "imprression": "impression",
    "imoression": "impression",
    "impressoin": "impression",
    "imprssion": "impression",
    "impresion": "impression",
    "imperssion": "impression",
    "mpression": "impression",
    "impession": "impression",
    "findins": "findings",
    "findindgs": "findings",
    "findgings": "findings",
    "findngs": "findings",
    "findnings": "findings",
    "finidngs": "findings",
    "idication": "indication",
    "ndication": "indication",
    "comparision": "comparison",
    "comparsion": "comparison",
    "comparrison": "comparison",
    "comparisions": "comparison",
}
"""Header names (lower-case, spaces collapsed) to their canonical section name."""

MAIN_SECTIONS: tuple[str, ...] = ("impression", "findings", "history", "comparison", "addendum")
"""Names not in the table that contain one of these take it (first match in this order)."""

VIEW_DESCRIPTIONS: tuple[str, ...] = (
    "chest",
    "portable",
    "pa and lateral",
    "lateral and pa",
    "ap and lateral",
    "lateral and ap",
    "pa and lat",
    "frontal and",
    "two views",
    "one view",
    "frontal view",
    "pa view",
    "ap view",
    "lateral view",
    "frontal upright",
    "frontal semi-upright",
    "bone window",
    "ribs",
)
"""Header phrases that describe the study's views; such a section counts as findings."""

_VIEW_PATTERN = re.compile("|".join(re.escape(v) for v in VIEW_DESCRIPTIONS))


@dataclass(frozen=True)
class Section:
    """One section of a report.

    Attributes
    ----------
    name : str
        Normalised name (``"findings"``, ``"impression"``, ``"preamble"``...).
    header : str
        The header as written, without the colon (``""`` for preamble/full report).
    text : str
        Section text, whitespace collapsed (never empty).
    start : int
        Offset in the report where the section text starts.
    """

    name: str
    header: str
    text: str
    start: int


def normalize_section_name(header: str) -> str:
    """Canonical name of a section header (rule 4 of the module docstring).

    >>> normalize_section_name("FINDINGS AND IMPRESSION")
    'impression'
    >>> normalize_section_name("CHEST, PA AND LATERAL")
    'findings'
    """
    name = " ".join(header.lower().split())
    if name in SECTION_SYNONYMS:
        return SECTION_SYNONYMS[name]
    for main in MAIN_SECTIONS:
        if main in name:
            return main
    if _VIEW_PATTERN.search(name):
        return "findings"
    return name


def _next_search_start(text: str, header_end: int) -> int:
    """Where to look for the next header after a header ending at ``header_end`` (rule 3)."""
    newline = text.find("\n", header_end)
    if newline == -1:
        return len(text)
    if text[header_end:newline].strip():
        return newline  # the header line has text: the next line may be a header
    following = text.find("\n", newline + 1)  # header alone: skip its first content line
    return len(text) if following == -1 else following


def split_sections(text: str) -> list[Section]:
    """Every non-empty section of a report, in order of appearance.

    Parameters
    ----------
    text : str
        The report's free text.

    Returns
    -------
    list of Section
        Normalised names, whitespace-collapsed text, empty sections dropped; a name
        may occur more than once (see :func:`extract_sections` for "last wins").
    """
    headers: list[re.Match[str]] = []
    match = _HEADER.search(text)
    while match is not None:
        headers.append(match)
        match = _HEADER.search(text, _next_search_start(text, match.end()))
    if not headers:
        body = " ".join(text.split())
        return [Section("full report", "", body, 0)] if body else []
    raw: list[tuple[str, str, int, int]] = [("preamble", "", 0, headers[0].start())]
    for i, m in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        header = " ".join(m.group("name").split())
        raw.append((normalize_section_name(header), header, m.end(), end))
    sections = []
    for name, header, start, end in raw:
        body = " ".join(text[start:end].split())
        if body:
            sections.append(Section(name, header, body, start))
    return sections


def extract_sections(text: str) -> dict[str, str]:
    """``{name: text}`` of a report, the last non-empty section of each name winning.

    >>> extract_sections("FINDINGS: old.\\nIMPRESSION: ok.\\nFINDINGS: new.\\n")
    {'impression': 'ok.', 'findings': 'new.'}
    """
    result: dict[str, str] = {}
    for section in split_sections(text):
        result.pop(section.name, None)  # re-inserted: the order follows the winners
        result[section.name] = section.text
    return result


def split_sentences(text: object) -> list[str]:
    """Sentences of a report text, whitespace collapsed, case and punctuation kept.

    A sentence ends where :data:`SENTENCE_END` says (case ignored), at a blank line, and
    at a full stop followed at once by a capitalised word (``"apex.There"``). Pieces
    with no letter or digit are dropped; the end punctuation stays with its sentence.
    None and NaN give no sentence.

    Examples
    --------
    >>> split_sentences("Lungs are clear; no effusion.  Nodule 1.5 cm.No change")
    ['Lungs are clear;', 'no effusion.', 'Nodule 1.5 cm.', 'No change']
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    text = str(text)
    parts = BLANK_LINE.split(text) if "\n" in text else [text]
    normal = "\n".join(" ".join(p.split()) for p in parts).strip()
    out, start = [], 0
    for m in _SPLIT.finditer(normal):
        piece = normal[start : m.end()].strip()
        if piece and piece.strip(".!?;:\n "):
            out.append(piece.rstrip("\n").strip())
        start = m.end()
    tail = normal[start:].strip()
    if tail:
        out.append(tail)
    return out
