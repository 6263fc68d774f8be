"""``cxrlib-rule-v3``: a rule-based CheXpert-style labeler, pure Python, no download.

Reads free-text radiology reports and gives, per report, the 14 CheXpert observations
(:data:`~cxrlib.data.manifest.CHEXPERT_LABELS`) as ``1.0`` positive, ``0.0`` negative,
``-1.0`` uncertain or NaN (blank: not mentioned), plus the laterality of six of them.
Written for this project after the published description of the CheXpert labeler
(Irvin et al., AAAI 2019: mention extraction, classification, aggregation); none of
its code or phrase lists is used. The phrases live in ``lexicon.yaml`` beside this
module (data, not code); ``docs/labeler.md`` documents the rules and their measured
agreement with the manual annotations of the IU X-ray reports.

Steps, for one report:

1. **Normalise**: lower-case; a blank line (paragraph break) ends a sentence; other
   whitespace collapses to one space.
2. **Sentences**: a sentence ends at ``.``, ``!`` or ``?`` followed by a space or the
   end of the text (not at ``1.5`` nor after ``vs.``/``e.g.``/``i.e.``), at ``;``,
   ``:`` and at a paragraph break (:data:`cxrlib.data.sections.SENTENCE_END`; the
   sentences themselves: :func:`cxrlib.data.sections.split_sentences`).
3. **Mentions**: every observation's ``uncertain`` / ``negative`` / ``positive``
   phrases are searched, tried in that order at each position (different observations
   may overlap: "heart size and mediastinal contours are normal" is a negative mention
   of both Cardiomegaly and Enlarged Cardiomediastinum).
4. **Triggers and scopes**: negation and uncertainty triggers, each ``pre`` (covering
   what follows: "no", "without", "possible") or ``post`` (covering what precedes:
   "has resolved", "cannot be excluded"); overlapping triggers keep the longest, and
   pseudo-triggers ("no change", "not only", "partial resolution of") cancel the
   triggers they overlap. A ``pre`` trigger's scope runs to the first scope end after
   it (sentence end, "but", "however", "although", "which", "aside from", "except",
   ...), where "with" also ends a negation's ("removal of the chest tube with a small
   pneumothorax"); a ``post`` trigger's runs back to the last scope end before it,
   where "with" also ends it. A trigger inside a mention covers it ("the heart is not
   enlarged").
   The "negatable" uncertainty triggers ("suggest", "concerning for", ...) inside a
   negation scope are void ("no consolidation to suggest pneumonia" is negative). A
   positive phrase covered by triggers takes the
   nearest one's meaning (negation 0, uncertainty -1); an uncertain phrase covered by
   a negation is 0; a negative phrase is 0.
5. **Aggregation** (CheXpert's rules): per observation, a positive mention wins; else
   any uncertain one gives -1 (negative + uncertain is uncertain); else any negative
   one gives 0; else blank. ``No Finding`` is 1 when no observation other than Support
   Devices is positive or uncertain, else blank.
6. **Laterality** (:data:`LATERAL_OBSERVATIONS`): each side word ("left", "right",
   "bilateral", "bibasilar", "lingular", "retrocardiac", ...) inside a mention belongs
   to it ("fluid in the left pleural space"); one that is not a finding's side
   ("mediastinal shift to the left", "rotated to the right") is ignored; any other
   attaches to the nearest following mention in its sentence, or to the nearest
   preceding one when it follows a preposition ("effusion on the left") or is
   "bilaterally", or when there is none in the preferred direction; a lateral mention
   without a side word takes the sides of the nearest lateral mention of its sentence
   that has some ("left basilar opacity, likely atelectasis"). An observation's
   laterality unites the sides of the mentions that decided its label: ``left``,
   ``right``, ``bilateral`` (both, or a bilateral word), ``unspecified`` (labelled 1 or
   -1, no side stated); blank (None) when the label is 0 or blank.

Empty text (``""``, whitespace, None or NaN) labels as all blank, ``No Finding``
included: there is nothing to read, which is not a normal report. Any other text
without a positive or uncertain finding has ``No Finding`` = 1.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import pandas as pd
import yaml

from cxrlib.base.errors import CxrError
from cxrlib.base.io import write_atomic
from cxrlib.base.vocabulary import LATERAL_OBSERVATIONS
from cxrlib.data.adapters import iter_csv
from cxrlib.data.manifest import CHEXPERT_LABELS, format_label
from cxrlib.data.sections import BLANK_LINE, SENTENCE_END

__all__ = [
    "LABELER_COLUMN",
    "LABELER_NAME",
    "LATERAL_OBSERVATIONS",
    "LATERALITY_COLUMNS",
    "LEXICON_PATH",
    "Labeler",
    "Mention",
    "default_labeler",
    "find_mentions",
    "label_csv",
    "label_report",
    "label_reports",
    "laterality_column",
    "load_lexicon",
]

LABELER_NAME = "cxrlib-rule-v3"
"""Name of this labeler and lexicon version; write it beside every label it produced."""

LEXICON_PATH = Path(__file__).with_name("lexicon.yaml")
"""The default lexicon (package data)."""


def laterality_column(observation: str) -> str:
    """``"<observation> laterality"``: the name of an observation's laterality column."""
    return f"{observation} laterality"


LATERALITY_COLUMNS: tuple[str, ...] = tuple(laterality_column(o) for o in LATERAL_OBSERVATIONS)
"""The laterality columns of :func:`label_reports`, after the 14 label columns."""

SIDES = ("left", "right", "bilateral", "unspecified")
"""Values of a laterality column (or None: label not 1 or -1)."""

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
_KINDS = ("uncertain", "negative", "positive")  # tried in this order at one position
_TRIGGER_KINDS = (
    "negation_pre",
    "negation_post",
    "uncertainty_pre",
    "uncertainty_post",
    "pseudo",
)
_MACRO = re.compile(r"<<(\w+)>>")
_NOT_MACRO_NAME = re.compile(r"[^\w]")
# sentence ends (cxrlib.data.sections.SENTENCE_END): . ! ? before a space or the end
# (not "1.5", not "vs." "e.g." "i.e."), ; : and paragraph breaks (normalised to "\n")
_SENTENCE_END = SENTENCE_END
_SENTENCE_END_RE = re.compile(_SENTENCE_END)
_BLANK_LINE = BLANK_LINE


# --------------------------------------------------------------------------- lexicon


def load_lexicon(path: str | Path | None = None) -> dict:
    """The lexicon as a dict (``yaml.safe_load`` of ``path``, default :data:`LEXICON_PATH`).

    Raises
    ------
    CxrError
        The file is missing, not YAML, or lacks a required section.
    """
    path = Path(path) if path is not None else LEXICON_PATH
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise CxrError(f"{path}: cannot read the lexicon ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise CxrError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise CxrError(f"{path}: the lexicon must be a mapping")
    for key in ("observations", "triggers", "scope_end", "laterality"):
        if key not in data:
            raise CxrError(f"{path}: the lexicon has no {key!r} section")
    return data


def _expand(fragment: str, macros: Mapping[str, str], where: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in macros:
            raise CxrError(f"lexicon {where}: unknown macro <<{name}>>")
        return macros[name]

    return _MACRO.sub(sub, str(fragment))


def _alternation(fragments: Iterable[str], macros: Mapping[str, str], where: str) -> str:
    """``\\b(?:f1|f2|...)\\b`` with macros expanded, longer fragments first."""
    parts = [_expand(f, macros, where) for f in fragments]
    if not parts:
        return ""
    parts.sort(key=len, reverse=True)  # a prefix must not shadow a longer phrase
    return r"\b(?:" + "|".join(parts) + r")\b"


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise CxrError(f"lexicon {where}: bad regular expression ({err})") from None


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Mention:
    """One mention of an observation in a normalised report.

    Attributes
    ----------
    observation : str
        CheXpert observation name.
    start, end : int
        Span in the normalised (lower-cased, whitespace-collapsed) text.
    text : str
        The matched phrase.
    kind : str
        Lexicon section that matched: ``positive``, ``uncertain`` or ``negative``.
    value : float
        Label of this mention after the triggers: 1.0, 0.0 or -1.0.
    trigger : str or None
        The trigger phrase that decided ``value`` (None: the phrase itself did).
    sides : frozenset of str
        Side words attached to this mention (``left``, ``right``, ``bilateral``).
    """

    observation: str
    start: int
    end: int
    text: str
    kind: str
    value: float
    trigger: str | None = None
    sides: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Trigger:
    start: int
    end: int
    negation: bool  # else uncertainty
    pre: bool  # else post
    scope_start: int  # post: mentions must start at or after this
    scope_end: int  # pre: mentions must start before this
    text: str


def _normalise(text: object) -> str:
    """Lower-cased text, paragraph breaks as ``\\n``, other whitespace one space."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    text = str(text)
    if "\n" in text:
        parts = _BLANK_LINE.split(text)
        return "\n".join(" ".join(p.split()) for p in parts).strip().lower()
    return " ".join(text.split()).lower()


# --------------------------------------------------------------------------- labeler


class Labeler:
    """The rule-based labeler with one lexicon compiled once (see the module docstring).

    Parameters
    ----------
    lexicon : dict, path-like or None
        A lexicon dict (as :func:`load_lexicon` returns), a YAML path, or None for the
        packaged ``lexicon.yaml``.
    """

    def __init__(self, lexicon: Mapping | str | Path | None = None):
        if not isinstance(lexicon, Mapping):
            lexicon = load_lexicon(lexicon)
        self.lexicon = lexicon
        macros: dict[str, str] = {}
        for name, value in (lexicon.get("macros") or {}).items():
            if _NOT_MACRO_NAME.search(str(name)):
                raise CxrError(f"lexicon macros: bad macro name {name!r}")
            macros[str(name)] = _expand(value, macros, f"macro {name}")
        observations = lexicon["observations"]
        unknown = sorted(set(observations) - set(CHEXPERT_LABELS) - {"No Finding"})
        if unknown or "No Finding" in observations:
            bad = unknown or ["No Finding (derived, not mentioned)"]
            raise CxrError(f"lexicon observations: not a CheXpert observation: {bad}")
        # one regex per observation: kinds as named groups, uncertain first
        self._mention_res: list[tuple[str, re.Pattern]] = []
        for obs in CHEXPERT_LABELS:
            spec = observations.get(obs) or {}
            groups = []
            for kind in _KINDS:
                alt = _alternation(spec.get(kind) or [], macros, f"{obs}/{kind}")
                if alt:
                    groups.append(f"(?P<{kind}>{alt})")
            if groups:
                self._mention_res.append((obs, _compile("|".join(groups), obs)))
        triggers = lexicon["triggers"]
        # (polarity "neg" / "unc" / "pseudo", pre?, regex)
        self._trigger_res: list[tuple[str, bool, re.Pattern]] = []
        for kind in _TRIGGER_KINDS:
            alt = _alternation(triggers.get(kind) or [], macros, f"triggers/{kind}")
            if alt:
                polarity = kind[:3] if kind != "pseudo" else "pseudo"
                self._trigger_res.append((polarity, kind.endswith("_pre"), _compile(alt, kind)))
        negatable = triggers.get("uncertainty_pre_negatable") or []
        alt = _alternation(negatable, macros, "triggers/uncertainty_pre_negatable")
        self._negatable_re = _compile(alt + r"\Z", "negatable") if alt else None
        scope_end = _alternation(lexicon["scope_end"] or [], macros, "scope_end")
        post_end = _alternation(lexicon.get("scope_end_post") or [], macros, "scope_end_post")
        neg_end = _alternation(
            lexicon.get("scope_end_negation_pre") or [], macros, "scope_end_negation_pre"
        )
        ends = [_SENTENCE_END] + ([scope_end] if scope_end else [])
        self._scope_end_re = _compile("|".join(ends), "scope_end")
        posts = ends + ([post_end] if post_end else [])
        self._post_end_re = _compile("|".join(posts), "scope_end_post")
        # only the extra ends; a negation's forward ends are these merged with scope_end's
        self._neg_end_re = _compile(neg_end, "scope_end_negation_pre") if neg_end else None
        lat = lexicon["laterality"]
        self.lateral_observations = tuple(lat.get("observations") or LATERAL_OBSERVATIONS)
        bad = [o for o in self.lateral_observations if o not in CHEXPERT_LABELS[1:]]
        if bad:
            raise CxrError(f"lexicon laterality/observations: not a CheXpert finding: {bad}")
        side_groups = []
        for side in ("bilateral", "left", "right"):
            alt = _alternation(lat.get(side) or [], macros, f"laterality/{side}")
            if alt:
                side_groups.append(f"(?P<{side}>{alt})")
        self._side_re = _compile("|".join(side_groups), "laterality") if side_groups else None
        not_sides = _alternation(lat.get("not_sides") or [], macros, "laterality/not_sides")
        self._not_side_re = _compile(not_sides, "not_sides") if not_sides else None
        backward = _alternation(lat.get("backward") or [], macros, "laterality/backward")
        self._backward_re = _compile(backward + r"\Z", "backward") if backward else None
        preps = _alternation(lat.get("attach_backward") or [], macros, "attach_backward")
        self._prep_re = (
            _compile(preps + r"(?: the| both)? \Z", "attach_backward") if preps else None
        )
        self.columns: tuple[str, ...] = CHEXPERT_LABELS + tuple(
            laterality_column(o) for o in self.lateral_observations
        )

    # -- steps ---------------------------------------------------------------------

    def _triggers(self, t: str) -> list[_Trigger]:
        found: list[tuple[int, int, str, bool]] = []
        for polarity, pre, regex in self._trigger_res:
            found.extend((m.start(), m.end(), polarity, pre) for m in regex.finditer(t))
        if not found:
            return []
        # overlaps: the longest (then the first) wins, except between two triggers of the
        # same polarity and opposite directions ("may be" post and "may" pre both count);
        # pseudo-triggers ("no change") win over what they overlap and then drop out
        found.sort(key=lambda f: (f[0], f[0] - f[1]))
        kept: list[tuple[int, int, str, bool]] = []
        for f in found:
            if not any(
                f[0] < k[1] and k[0] < f[1] and (f[2] != k[2] or f[3] == k[3]) for k in kept
            ):
                kept.append(f)
        ends = [m.start() for m in self._scope_end_re.finditer(t)]
        neg_ends = ends
        if self._neg_end_re is not None:
            extra = [m.start() for m in self._neg_end_re.finditer(t)]
            neg_ends = sorted(ends + extra) if extra else ends
        post_ends = [m.end() for m in self._post_end_re.finditer(t)]
        out = []
        for start, end, polarity, pre in kept:
            if polarity == "pseudo":
                continue
            negation = polarity == "neg"
            forward = neg_ends if negation and pre else ends
            i = bisect_left(forward, end)
            scope_end = forward[i] if i < len(forward) else len(t)
            if pre:
                scope_start = start
            else:
                j = bisect_right(post_ends, start) - 1
                scope_start = post_ends[j] if j >= 0 else 0
            out.append(_Trigger(start, end, negation, pre, scope_start, scope_end, t[start:end]))
        # "negatable" uncertainty triggers inside a negation scope are void
        negs = [g for g in out if g.negation and g.pre]
        if negs and self._negatable_re is not None:
            out = [
                g
                for g in out
                if g.negation
                or not g.pre
                or not self._negatable_re.match(g.text)
                or not any(n.end <= g.start < n.scope_end for n in negs)
            ]
        return out

    @staticmethod
    def _decide(start: int, end: int, triggers: list[_Trigger]) -> _Trigger | None:
        """The nearest trigger covering the span, or None."""
        best, best_d = None, None
        for g in triggers:
            if start <= g.start < end:
                d = 0
            elif g.pre and g.start < start < g.scope_end:
                d = start - g.end
            elif not g.pre and g.start >= end and start >= g.scope_start:
                d = g.start - end
            else:
                continue
            if best_d is None or d < best_d or (d == best_d and not g.negation):
                best, best_d = g, d
        return best

    def _raw_mentions(self, t: str) -> list[Mention]:
        triggers = self._triggers(t)
        mentions = []
        for obs, regex in self._mention_res:
            for m in regex.finditer(t):
                kind = m.lastgroup
                start, end = m.span()
                trig = self._decide(start, end, triggers) if triggers else None
                if kind == "negative":
                    value, trig = NEGATIVE, None
                elif kind == "uncertain":
                    if trig is not None and trig.negation:
                        value = NEGATIVE
                    else:
                        value, trig = UNCERTAIN, None
                elif trig is None:
                    value = POSITIVE
                else:
                    value = NEGATIVE if trig.negation else UNCERTAIN
                text = t[start:end]
                mentions.append(
                    Mention(obs, start, end, text, kind, value, trig.text if trig else None)
                )
        mentions.sort(key=lambda x: (x.start, x.end))
        return mentions

    def _attach_sides(self, t: str, mentions: list[Mention]) -> list[Mention]:
        if self._side_re is None or not mentions:
            return mentions
        sides_of: dict[int, set[str]] = {}
        sentence_ends = [m.end() for m in _SENTENCE_END_RE.finditer(t)]
        starts = [m.start for m in mentions]
        not_sides = [m.span() for m in self._not_side_re.finditer(t)] if self._not_side_re else []
        for s in self._side_re.finditer(t):
            a, b = s.span()
            side = s.lastgroup
            if any(x <= a and b <= y for x, y in not_sides):
                continue
            inside = [k for k, m in enumerate(mentions) if m.start <= a and b <= m.end]
            if inside:  # "fluid in the left pleural space"
                for k in inside:
                    sides_of.setdefault(k, set()).add(side)
                continue
            sentence = bisect_right(sentence_ends, a)
            lo = sentence_ends[sentence - 1] if sentence > 0 else 0
            hi = sentence_ends[sentence] if sentence < len(sentence_ends) else len(t)
            backward = bool(
                (self._backward_re and self._backward_re.match(s.group(0)))
                or (self._prep_re and self._prep_re.search(t, max(0, a - 24), a))
            )
            i = bisect_left(starts, b)  # first mention starting after the side word
            after = i if i < len(mentions) and mentions[i].start < hi else None
            j = i - 1
            while j >= 0 and mentions[j].end > a:  # skip mentions overlapping the word
                j -= 1
            before = j if j >= 0 and mentions[j].start >= lo else None
            target = (before if before is not None else after) if backward else after
            if target is None:
                target = before
            if target is None:
                continue
            anchor = mentions[target]
            for k, m in enumerate(mentions):  # every mention overlapping the target
                if m.start < anchor.end and anchor.start < m.end:
                    sides_of.setdefault(k, set()).add(side)
        if not sides_of:
            return mentions
        # a lateral mention without a side takes the sides of the nearest mention of its
        # sentence that has some ("left basilar opacity, likely atelectasis")
        lateral = set(self.lateral_observations)
        sentence_of = [bisect_right(sentence_ends, m.start) for m in mentions]
        inherited: dict[int, set[str]] = {}
        for k, m in enumerate(mentions):
            if k in sides_of or m.observation not in lateral:
                continue
            near = [
                (abs(k - j) + (0.5 if j > k else 0), j)
                for j in sides_of
                if sentence_of[j] == sentence_of[k] and mentions[j].observation in lateral
            ]
            if near:
                inherited[k] = sides_of[min(near)[1]]
        sides_of.update(inherited)
        return [
            replace(m, sides=frozenset(sides_of[k])) if k in sides_of else m
            for k, m in enumerate(mentions)
        ]

    # -- public ----------------------------------------------------------------------

    def mentions(self, text: object) -> list[Mention]:
        """Every mention of ``text`` with its value, trigger and sides, in text order."""
        t = _normalise(text)
        if not t:
            return []
        return self._attach_sides(t, self._raw_mentions(t))

    def label(self, text: object) -> dict[str, float | str | None]:
        """Labels of one report: the 14 observations, then the laterality columns.

        Labels are 1.0 / 0.0 / -1.0 / NaN; a laterality is ``left``, ``right``,
        ``bilateral``, ``unspecified`` or None. Empty text: everything blank.
        """
        out: dict[str, float | str | None] = dict.fromkeys(CHEXPERT_LABELS, math.nan)
        for obs in self.lateral_observations:
            out[laterality_column(obs)] = None
        mentions = self.mentions(text)
        if not mentions and not _normalise(text):
            return out
        values: dict[str, set[float]] = {}
        for m in mentions:
            values.setdefault(m.observation, set()).add(m.value)
        for obs, vals in values.items():
            if POSITIVE in vals:
                out[obs] = POSITIVE
            elif UNCERTAIN in vals:
                out[obs] = UNCERTAIN
            else:
                out[obs] = NEGATIVE
        abnormal = any(
            out[o] in (POSITIVE, UNCERTAIN)
            for o in CHEXPERT_LABELS
            if o not in ("No Finding", "Support Devices")
        )
        out["No Finding"] = math.nan if abnormal else POSITIVE
        for obs in self.lateral_observations:
            value = out[obs]
            if value not in (POSITIVE, UNCERTAIN):
                continue
            sides: set[str] = set()
            for m in mentions:
                if m.observation == obs and m.value == value:
                    sides |= m.sides
            if "bilateral" in sides or {"left", "right"} <= sides:
                side = "bilateral"
            elif sides:
                (side,) = sides
            else:
                side = "unspecified"
            out[laterality_column(obs)] = side
        return out

    def label_many(self, texts: Iterable[object]) -> pd.DataFrame:
        """One row per text (index 0..n-1): :attr:`columns`, labels as floats."""
        rows = [self.label(t) for t in texts]
        frame = pd.DataFrame(rows, columns=list(self.columns))
        for obs in CHEXPERT_LABELS:
            frame[obs] = frame[obs].astype(float)
        for col in self.columns[len(CHEXPERT_LABELS) :]:
            frame[col] = frame[col].astype(object)
        return frame


@lru_cache(maxsize=1)
def default_labeler() -> Labeler:
    """The :class:`Labeler` of the packaged lexicon, compiled once per process."""
    return Labeler()


def find_mentions(text: object) -> list[Mention]:
    """Mentions of ``text`` found by the default labeler (for explaining a label)."""
    return default_labeler().mentions(text)


def label_report(text: object) -> dict[str, float | str | None]:
    """CheXpert labels and lateralities of one report (see :meth:`Labeler.label`).

    Parameters
    ----------
    text : str, None or NaN
        Report text (Findings, or Findings and Impression). Empty, None or NaN gives
        every column blank (NaN labels, None lateralities), not an error.

    Returns
    -------
    dict
        The 14 :data:`~cxrlib.data.manifest.CHEXPERT_LABELS` as 1.0 / 0.0 / -1.0 / NaN,
        then :data:`LATERALITY_COLUMNS` as ``left`` / ``right`` / ``bilateral`` /
        ``unspecified`` / None.
    """
    return default_labeler().label(text)


def label_reports(texts: Iterable[object]) -> pd.DataFrame:
    """CheXpert labels of many reports: one row per text, in order (index 0..n-1).

    Columns: the 14 :data:`~cxrlib.data.manifest.CHEXPERT_LABELS` (float: 1.0, 0.0,
    -1.0, NaN), then :data:`LATERALITY_COLUMNS` (object: ``left`` / ``right`` /
    ``bilateral`` / ``unspecified`` / None). Empty or NaN texts give blank rows.
    """
    return default_labeler().label_many(texts)


LABELER_COLUMN = "labeler"
"""Column of :func:`label_csv` output naming the labeler (:data:`LABELER_NAME`)."""


def label_csv(
    in_path: str | Path,
    out_path: str | Path,
    text_column: str = "findings",
    labeler: Labeler | None = None,
) -> dict[str, object]:
    """Label the report texts of one CSV column; write the input plus the labels.

    The output has every input column in order (cells unchanged), then the 14 labels
    (``1``, ``0``, ``-1`` or blank), the laterality columns and ``labeler``
    (:data:`LABELER_NAME`). Input columns named like an output column are replaced in
    place (a manifest's blank label columns get filled). Written atomically: the output
    appears complete or not at all. Empty text cells give blank labels.

    Parameters
    ----------
    in_path : path-like
        Input ``.csv`` or ``.csv.gz``.
    out_path : path-like
        Output CSV (its folder is created).
    text_column : str
        Column holding the report text.
    labeler : Labeler or None
        Default: the packaged lexicon.

    Returns
    -------
    dict
        ``rows``, ``empty_texts``, ``out`` and ``positive`` / ``uncertain`` counts
        per observation.

    Raises
    ------
    CxrError
        One line naming the file: missing or unreadable, ``text_column`` not in the
        header, a malformed row.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    labeler = labeler or default_labeler()
    rows = [row for _line, row in iter_csv(in_path, (text_column,))]
    if rows:
        frame = pd.DataFrame(rows, dtype=object)
    else:  # header only: keep its columns
        header = list(pd.read_csv(in_path, nrows=0, dtype=str).columns)
        frame = pd.DataFrame(columns=header, dtype=object)
    texts = frame[text_column].tolist()
    labels = labeler.label_many(texts)
    for obs in CHEXPERT_LABELS:
        frame[obs] = [format_label(v) for v in labels[obs]]
    for col in labeler.columns[len(CHEXPERT_LABELS) :]:
        frame[col] = [v if isinstance(v, str) else "" for v in labels[col]]
    frame[LABELER_COLUMN] = LABELER_NAME
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n"))
    return {
        "in": str(in_path),
        "out": str(out_path),
        "text_column": text_column,
        "labeler": LABELER_NAME,
        "rows": len(frame),
        "empty_texts": sum(not _normalise(t) for t in texts),
        "positive": {o: int((labels[o] == POSITIVE).sum()) for o in CHEXPERT_LABELS},
        "uncertain": {o: int((labels[o] == UNCERTAIN).sum()) for o in CHEXPERT_LABELS},
    }
