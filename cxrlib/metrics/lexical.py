"""Lexical metrics with the pycocoevalcap conventions, in pure Python.

BLEU-1..4, ROUGE-L and CIDEr(-D) computed as the ``pycocoevalcap`` scorers compute them
(``Bleu(4)``, ``Rouge()``, ``Cider()``), on text tokenised as its ``PTBTokenizer`` does;
METEOR through the METEOR 1.5 jar that ``pycocoevalcap`` ships, when it and ``java`` are
installed (else reported unavailable with the reason). None of pycocoevalcap's code is
used; its values were checked against ours (``docs/evaluation.md``).

Conventions (one hypothesis and one reference per item; items are report pairs):

- **Tokenisation** (:func:`ptb_tokenize`): a Python reimplementation of the Stanford
  PTBTokenizer (CoreNLP 3.4.1, ``-preserveLines -lowerCase``) as pycocoevalcap calls it:
  longest-match lexer rules (words, hyphenated and slashed words, numbers, fractions,
  abbreviations such as ``e.g.``, ``dr.``, ``lt.``, contractions ``do n't`` / ``'s``,
  ``cannot`` -> ``can not``, brackets as ``-lrb-`` ...), every token lower-cased, then the
  tokens in :data:`PUNCTUATIONS` dropped. Brackets survive as ``-lrb-``/``-rrb-``
  (pycocoevalcap's punctuation list has them upper-case only), as in pycocoevalcap.
- **BLEU-n** (:func:`bleu_from_stats`): corpus BLEU over all items: clipped n-gram
  counts and lengths summed over the corpus, geometric mean of the 1..n precisions with
  ``tiny = 1e-15`` / ``small = 1e-9`` smoothing, brevity penalty
  ``exp(1 - r / c)`` when the summed hypothesis length ``c`` is below the summed
  "closest" reference length ``r`` (pycocoevalcap's ``option='closest'``).
- **ROUGE-L**: per item, LCS of the space-split tokens; ``P = LCS / len(hyp)``,
  ``R = LCS / len(ref)``, ``F = (1 + b^2) P R / (R + b^2 P)`` with ``b = 1.2`` (0 when P
  or R is 0), averaged over items. As in pycocoevalcap an empty text splits into one
  empty token, so an empty hypothesis against an empty reference scores 1.
- **CIDEr** (pycocoevalcap's ``Cider``, which is CIDEr-D): n = 1..4, TF-IDF vectors with
  document frequencies from the references of the evaluated corpus
  (``idf = log(N) - log(max(1, df))``, N = number of items), per order the clipped
  cosine ``sum min(h, r) r / (|h| |r|)``, times the Gaussian length penalty
  ``exp(-(l_h - l_r)^2 / (2 sigma^2))``, ``sigma = 6``, where a text's length is, as in
  pycocoevalcap, its number of bigrams; mean over the 4 orders, times 10, averaged over
  items. The corpus defines the IDF, so CIDEr of a subset is not the mean of per-item
  CIDEr on the whole set; a bootstrap resample is a corpus with repeated items.
- **METEOR** (:class:`Meteor`): METEOR 1.5 (``-l en -norm``), the aggregate score of
  the corpus (as one ``EVAL`` over every item's statistics gives it; not the mean of
  item scores). The jar matches words and writes each item's statistics once; the
  aggregate of any resample is then computed from summed statistics in Python
  (:func:`meteor_from_stats`, the jar's formula), after checking that it equals the
  jar's ``EVAL`` of the whole corpus (else every resample goes through the jar).

Every corpus-level score is a function of per-item weights (how often each item appears
in the evaluated corpus): :meth:`LexicalCorpus.scores` takes them, so a bootstrap
resample recomputes corpus BLEU / CIDEr / METEOR exactly without re-tokenising.
"""

from __future__ import annotations

import atexit
import importlib.util
import math
import re
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import sparse

__all__ = [
    "BLEU_KEYS",
    "LEXICAL_KEYS",
    "PUNCTUATIONS",
    "LexicalCorpus",
    "Meteor",
    "bleu_from_stats",
    "cider_scores",
    "lcs_length",
    "lexical_scores",
    "meteor_from_stats",
    "meteor_stats_array",
    "meteor_unavailable_reason",
    "ptb_tokenize",
    "rouge_l",
]

PUNCTUATIONS: tuple[str, ...] = (
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
)
"""Tokens pycocoevalcap drops after PTB tokenisation (compared after lower-casing, so the
upper-case bracket names never match and ``-lrb-`` / ``-rrb-`` stay, as there)."""

BLEU_KEYS: tuple[str, ...] = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
LEXICAL_KEYS: tuple[str, ...] = BLEU_KEYS + ("meteor", "rouge_l", "cider")
"""Metric names of this module, in report order (``lexical.<name>`` in metrics.json)."""

# --------------------------------------------------------------------------- tokeniser

_L = r"[^\W\d_]"  # a letter
_AN = r"[^\W_]"  # a letter or a digit
_APOS = "['\u0092\u2019]"
_APOSETC = "['\u0092\u2019`\u0091\u2018\u201b]"
_HYPHEN = "[-_\u058a\u2010\u2011]"
_WORD = rf"{_L}{_AN}*(?:[.!?]{_L}{_AN}*)*"
_THINGPART = rf"(?:[dDoOlL]{_APOSETC}{_AN})?{_AN}+"
_THING = rf"{_THINGPART}(?:{_HYPHEN}{_THINGPART})*"
_NUM = r"(?:\d*(?:[.:,\u00ad\u066b\u066c]\d+)+|\d+)"
_REDAUX = rf"{_APOS}(?:[msdMSD]|[rR][eE]|[vV][eE]|[lL][lL])"
_SREDAUX = rf"[nN]{_APOSETC}[tT]"
_ACRO = r"[A-Za-z](?:\.[A-Za-z])+"
_ABBREV1 = (
    r"(?:jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"  # months
    r"|mon|tue|tues|wed|thu|thurs|fri"  # days
    r"|ala|ariz|(?-i:A)z|(?-i:A)rk|calif|colo|conn|ct|dak|(?-i:D)el|fla|ga|(?-i:I)ll|ind|kans?"
    r"|ky|(?-i:L)a|(?-i:M)ass|md|mich|minn|(?-i:M)iss|mo|mont|neb|nev|okla|(?-i:O)re|(?-i:P)a"
    r"|penn|tenn|(?-i:T)ex|va|vt|(?-i:W)ash|wisc?|wyo"  # states (first letter case-sensitive)
    r"|inc|cos?|corp|pp?t[ye]s?|ltd|plc|rt|bancorp|dept|bhd|assn|univ|intl|sys"  # companies
    r"|ph|tel|est|ext|sq|ft"  # numbers
    r"|jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq"
    r"|etc|al|seq|bldg|pls|wrt|orig|incl|t\.b\.d)\."
)
_ABTITLE = (
    r"mr|mrs|ms|(?-i:M)iss|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj"
    r"|sgt|cpl|pvt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj"
    r"|adv|asst|assoc|ens|insp|mlle|mme|msgr|sfc"
)
_ABBREV2 = (
    rf"(?:[A-Za-z]|{_ABTITLE}|vs|alex|wm|jos|cie|a\.k\.a|cf|treas|{_ACRO}|invt|elec|natl|m[ft]g)\."
)
_ABBREV3 = r"(?:ca|figs?|prop|nos?|art|bldg|pp|op)\."
_APOWORD = (
    rf"{_APOS}n{_APOS}|{_APOS}n(?![A-Za-z])|[lLdDjJ]{_APOS}|(?i:dunkin|somethin|ol){_APOS}"
    rf"|{_APOS}(?i:em)|[A-HJ-XZn]{_APOSETC}{_L}{{2}}{_L}*|{_APOS}[2-9]0s|{_APOS}(?i:till?)"
    rf"|{_L}{_L}*[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_L}*|{_APOS}(?i:cause)"
    r"|(?i:cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)|O" + _APOSETC + "o"
)
_PHONE = (
    r"(?:\(\d{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:\d{2,4}[- \u00a0])?\d{2,4}[- \u00a0])"
    r"\d{3,4}[- \u00a0]?\d{3,5}|(?:(?:\+\+?)?\d{2,4}\.)?\d{2,4}\.\d{3,4}\.\d{3,5}"
)
_SGML = (
    r"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*"
    r"(?:[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\"|[A-Za-z][A-Za-z0-9_.\-]*))?))*[ ]*/?"
    r"|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>"
)
_MISC = (
    "[+%&~^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00ba\u00d7\u00f7"
    "\u2016\u2017\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044\u207a-\u207f"
    "\u208a-\u208e\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3012\u30fb]"
)
_QUOTE_CHARS = "`\u2018-\u201f\u0082\u0084\u0091-\u0094\u2039\u203a\u00ab\u00bb"

# The lexer: (name, pattern, first characters, normalise), after CoreNLP 3.4.1's
# PTBLexer rules. At each position every rule whose first characters admit the current
# character is tried ("L" any letter, "D" any digit, "M" a symbol of _MISC, any other
# character itself); the longest match wins, ties go to the earlier rule (JFlex). A
# pattern's (?P<ctx>...) group is trailing context: it counts for the match length but
# is not consumed. ``normalise`` is the token text (a str) or how to derive it.
_DASHES = {1: "-", 2: "--", 3: "--", 4: "--"}


def _paren(text: str) -> str:
    return text.replace("(", "-LRB-").replace(")", "-RRB-")


_RULES: list[tuple[str, str, str, object]] = [
    ("sgml", _SGML, "<", None),
    (
        "mdash",
        "[\u2013\u2014\u2015\u0096\u0097]|&(?:MD|mdash|ndash);",
        "\u2013\u2014\u2015\u0096\u0097&",
        "--",
    ),
    ("amp", "&amp;", "&", "&"),
    ("word_redaux", rf"{_WORD}(?P<ctx>{_REDAUX})", "L", None),
    ("sword_sredaux", rf"[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*(?P<ctx>{_SREDAUX})", "L", None),
    (
        "assim3",
        r"(?i:can(?P<ctx>not)|(?:gon|got|wan)(?P<ctx2>na|ta)|(?:lem|gim)(?P<ctx3>me))(?![A-Za-z0-9])",
        "L",
        None,
    ),
    ("word", _WORD, "L", None),
    ("apoword", _APOWORD, "L'\u0092\u2019", None),
    ("apoword2", rf"[yY]{_APOS}(?=[A-Za-z])", "L", None),
    ("url", r"https?://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},\-]", "L", None),
    (
        "email",
        r"[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00a0{}]*@(?:[^ \t\n\f\r\"<>|(){}.\u00a0]+\.)*"
        r"[^ \t\n\f\r\"<>|(){}\[\].,;:\u00a0]+",
        "LD",
        None,
    ),
    ("twitter", rf"@[a-zA-Z_][a-zA-Z_0-9]*|#{_WORD}", "@#", None),
    ("redaux", rf"(?:{_REDAUX})(?![A-Za-z])", "'\u0092\u2019", "apos"),
    ("sredaux", rf"{_SREDAUX}(?![A-Za-z])", "L", "apos"),
    ("date", r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}", "D", None),
    ("number", rf"[-+]?{_NUM}", "D-+.:,\u00ad", None),
    ("frac", r"(?:\d{1,4}[- \u00a0])?\d{1,4}(?:\\?/|\u2044)\d{1,4}", "D", None),
    (
        "frac2",
        "[\u00bc\u00bd\u00be\u2153-\u215e]",
        "\u00bc\u00bd\u00be\u2153\u2154\u2155\u2156\u2157\u2158\u2159\u215a\u215b\u215c\u215d\u215e",
        None,
    ),
    (
        "tbspec",
        rf"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|(?i:C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls|Cap{_APOS}n|c{_APOS}est)",
        "-LS",
        None,
    ),
    ("slash", rf"{_THING}(?:/{_THING}){{1,2}}", "LD", None),
    ("dolsign", r"[A-Z]*\$|#", "$#L", None),
    (
        "dolsign2",
        "[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]",
        "\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6",
        None,
    ),
    ("abbrev1", f"(?i:{_ABBREV1})", "L", None),
    ("abbrev2", f"(?i:{_ABBREV2})", "L", None),
    ("abbrev3", rf"(?i:{_ABBREV3})(?P<ctx>[ \t\n]?\d)", "L", None),
    ("acronym", rf"{_ACRO}\.", "L", None),
    ("acro", rf"{_ACRO}(?P<ctx>\s)", "L", None),
    ("tbspec2", rf"{_APOS}\d\d(?P<ctx>\s)", "'\u0092\u2019", None),
    ("degrees", "\u00b0[CFcf]", "\u00b0", None),
    ("word_dot", rf"(?:{_WORD}|{_THING})\.(?P<ctx>[,;:\u3001])", "LD", None),
    ("phone", _PHONE, "D(+", "paren"),
    ("proglang", r"(?i:c\+\+|[cf]#)", "L", None),
    ("dblquot", r'"|&quot;', '"&', "''"),
    ("lessthan", "<|&lt;", "<&", "<"),
    ("greaterthan", ">|&gt;", ">&", ">"),
    ("lcb", r"\{", "{", "-LCB-"),
    ("rcb", r"\}", "}", "-RCB-"),
    ("lsb", r"\[", "[", "-LSB-"),
    ("rsb", r"\]", "]", "-RSB-"),
    ("lrb", r"\(", "(", "-LRB-"),
    ("rrb", r"\)", ")", "-RRB-"),
    ("hyphens", r"-+", "-", "dashes"),
    ("ldots", "\\.{3,5}|(?:\\.[ \u00a0]){2,4}\\.|[\u0085\u2026]", ".\u0085\u2026", "..."),
    ("fnmarks", r"@+|#+|_+", "@#_", None),
    ("asts", r"\*+|(?:\\\*){1,3}", "*\\", None),
    ("insentp", "[,;:\u3001]", ",;:\u3001", None),
    ("bangs", r"[?!]+", "?!", None),
    (
        "period",
        "[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]",
        ".\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700\u0701\u0702\u07fa\u3002",
        None,
    ),
    ("equals", "=", "=", None),
    ("slashchar", "/", "/", None),
    ("hthing", rf"{_AN}[A-Za-z0-9.,\u00ad]*(?:-(?:[A-Za-z0-9\u00ad]+|{_ACRO}\.))+", "LD", None),
    ("thing", _THING, "LD", None),
    ("thinga", r"[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+", "L", None),
    (
        "quotes",
        f"{_APOS}|[{_QUOTE_CHARS}]{{1,2}}",
        "'\u0092\u2019"
        + "`\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f"
        + "\u0082\u0084\u0091\u0092\u0093\u0094\u2039\u203a\u00ab\u00bb",
        "''",
    ),
    ("duckfeet", "<<|>>", "<>", None),
    ("misc", _MISC, "M", None),
    ("smiley", r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]](?![A-Za-z])", "<>:;=", "smiley"),
]


def _compile_rules() -> tuple[dict[str, list], list]:
    compiled = []
    for order, (name, pattern, first, normalise) in enumerate(_RULES):
        compiled.append((order, name, re.compile(pattern), first, normalise))
    by_char: dict[str, list] = {}
    letter_rules = [r for r in compiled if "L" in r[3]]
    digit_rules = [r for r in compiled if "D" in r[3]]
    misc_rules = [r for r in compiled if "M" in r[3]]
    for rule in compiled:
        for ch in rule[3]:
            if ch not in "LDM":
                by_char.setdefault(ch, []).append(rule)
    return by_char, [letter_rules, digit_rules, misc_rules]


_BY_CHAR, (_LETTER_RULES, _DIGIT_RULES, _MISC_RULES) = _compile_rules()
_MISC_RE = re.compile(_MISC)
_SPACE = re.compile(r"[\s\u200b\u200e\u200f\ufeff]+")


def _candidates(ch: str) -> list:
    rules = list(_BY_CHAR.get(ch, ()))
    if ch.isalpha():
        rules += _LETTER_RULES
    elif ch.isdigit():
        rules += _DIGIT_RULES
    if _MISC_RE.match(ch):
        rules += _MISC_RULES
    return sorted(set(rules), key=lambda r: r[0])


_CANDIDATES: dict[str, list] = {}


def _raw_tokens(text: str) -> list[str]:
    """PTB tokens of one line, before lower-casing and punctuation removal."""
    out: list[str] = []
    pos, end = 0, len(text)
    while pos < end:
        space = _SPACE.match(text, pos)
        if space:
            pos = space.end()
            continue
        ch = text[pos]
        rules = _CANDIDATES.get(ch)
        if rules is None:
            rules = _CANDIDATES[ch] = _candidates(ch)
        best_len, best_take, best = 0, 0, None
        for _order, name, regex, _first, normalise in rules:
            m = regex.match(text, pos)
            if not m:
                continue
            full = m.end() - pos
            if full <= best_len:
                continue
            take = full
            for group in ("ctx", "ctx2", "ctx3"):
                if group in regex.groupindex and m.start(group) >= 0:
                    take = m.start(group) - pos
            if take == 0:
                continue
            best_len, best_take, best = full, take, (name, normalise)
        if best is None:  # untokenizable: deleted (PTBTokenizer's "firstDelete")
            pos += 1
            continue
        token = text[pos : pos + best_take]
        pos += best_take
        name, normalise = best
        if normalise == "dashes":
            token = _DASHES.get(len(token), token)
        elif normalise in ("smiley", "paren"):
            token = _paren(token)
        elif normalise == "apos":
            token = _APOS_RE.sub("'", token)
        elif isinstance(normalise, str):
            token = normalise
        out.append(token.replace(" ", "\u00a0"))
    return out


_PUNCT = frozenset(PUNCTUATIONS)
_APOS_RE = re.compile("[\u0092\u2019\u2018\u201b`]")


def ptb_tokenize(text: object) -> str:
    """Tokenise like pycocoevalcap's ``PTBTokenizer``; tokens joined by single spaces.

    Parameters
    ----------
    text : str, None or NaN
        One report. Newlines count as spaces; None/NaN is empty.

    Returns
    -------
    str
        Lower-case tokens without the :data:`PUNCTUATIONS`, separated by one space
        (``""`` when none). A token may hold a non-breaking space (``1\\u00a01/2``), as
        PTBTokenizer writes fractions and phone numbers that contain a space.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    line = str(text).replace("\r", " ").replace("\n", " ")
    return " ".join(t for t in (tok.lower() for tok in _raw_tokens(line)) if t not in _PUNCT)


# --------------------------------------------------------------------------- BLEU

_TINY, _SMALL = 1e-15, 1e-9


def _ngram_counts(words: Sequence[str], n: int = 4) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def _bleu_item_stats(hyp: str, ref: str, n: int = 4) -> list[float]:
    """``[testlen, reflen, guess_1..n, correct_1..n]`` of one item (pycocoevalcap)."""
    hyp_words, ref_words = hyp.split(), ref.split()
    test_counts, ref_counts = _ngram_counts(hyp_words, n), _ngram_counts(ref_words, n)
    testlen, reflen = len(hyp_words), len(ref_words)  # one reference: "closest" is it
    guess = [max(0, testlen - k + 1) for k in range(1, n + 1)]
    correct = [0] * n
    for gram, count in test_counts.items():
        correct[len(gram) - 1] += min(ref_counts.get(gram, 0), count)
    return [testlen, reflen, *guess, *correct]


def bleu_from_stats(totals: Sequence[float], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n from summed item statistics (pycocoevalcap's ``BleuScorer``).

    Parameters
    ----------
    totals : sequence of float, length ``2 + 2 n``
        Summed ``[testlen, reflen, guess_1..n, correct_1..n]`` over the corpus.

    Returns
    -------
    list of float
        BLEU-1 .. BLEU-n, each in [0, 1].
    """
    testlen, reflen = float(totals[0]), float(totals[1])
    guess, correct = totals[2 : 2 + n], totals[2 + n : 2 + 2 * n]
    bleus, bleu = [], 1.0
    for k in range(n):
        bleu *= float(correct[k] + _TINY) / (guess[k] + _SMALL)
        bleus.append(bleu ** (1.0 / (k + 1)))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    if ratio < 1:
        bleus = [b * math.exp(1 - 1 / ratio) for b in bleus]
    return bleus


# --------------------------------------------------------------------------- ROUGE-L

ROUGE_BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (bit-parallel).

    Hyyrö's bit-vector algorithm with Python integers: O(len(a) * len(b) / word size).
    """
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(hyp: str, ref: str, beta: float = ROUGE_BETA) -> float:
    """ROUGE-L F of one tokenised pair as pycocoevalcap's ``Rouge.calc_score``.

    Tokens are ``split(" ")``: an empty text is one empty token (so two empty texts
    score 1, an empty hypothesis against a non-empty reference 0).
    """
    hyp_tokens, ref_tokens = hyp.split(" "), ref.split(" ")
    lcs = lcs_length(ref_tokens, hyp_tokens)
    prec, rec = lcs / len(hyp_tokens), lcs / len(ref_tokens)
    if prec != 0 and rec != 0:
        return ((1 + beta**2) * prec * rec) / float(rec + beta**2 * prec)
    return 0.0


# --------------------------------------------------------------------------- CIDEr


@dataclass
class _CiderData:
    """Sparse per-item n-gram statistics; CIDEr of any weighting of the items."""

    num: sparse.csr_matrix  # (items, ngrams): min(tf_h, tf_r) * tf_r
    hyp_sq: sparse.csr_matrix  # (items, ngrams): tf_h ** 2
    ref_sq: sparse.csr_matrix  # (items, ngrams): tf_r ** 2
    ref_present: sparse.csc_matrix  # (items, ngrams): 1 where the reference has it
    order: np.ndarray  # (ngrams,) n-gram order - 1
    penalty: np.ndarray  # (items,) Gaussian length penalty
    n: int = 4

    @classmethod
    def build(cls, hyps: Sequence[str], refs: Sequence[str], n: int = 4, sigma: float = 6.0):
        vocab: dict[tuple[str, ...], int] = {}
        rows: dict[str, list] = {"num": [], "hyp": [], "ref": [], "pres": []}
        cols: dict[str, list] = {k: [] for k in rows}
        vals: dict[str, list] = {k: [] for k in rows}
        penalty = np.empty(len(hyps))

        def add(kind: str, i: int, j: int, v: float) -> None:
            rows[kind].append(i)
            cols[kind].append(j)
            vals[kind].append(v)

        for i, (hyp, ref) in enumerate(zip(hyps, refs, strict=True)):
            hw, rw = hyp.split(), ref.split()
            hc, rc = _ngram_counts(hw, n), _ngram_counts(rw, n)
            for gram, tf in hc.items():
                j = vocab.setdefault(gram, len(vocab))
                add("hyp", i, j, float(tf * tf))
                if gram in rc:
                    add("num", i, j, float(min(tf, rc[gram]) * rc[gram]))
            for gram, tf in rc.items():
                j = vocab.setdefault(gram, len(vocab))
                add("ref", i, j, float(tf * tf))
                add("pres", i, j, 1.0)
            # pycocoevalcap's "length" is the number of bigrams (its n == 1 branch)
            delta = float(max(0, len(hw) - 1) - max(0, len(rw) - 1))
            penalty[i] = np.e ** (-(delta**2) / (2 * sigma**2))
        shape = (len(hyps), len(vocab))

        def mat(kind: str) -> sparse.csr_matrix:
            return sparse.csr_matrix((vals[kind], (rows[kind], cols[kind])), shape=shape)

        order = np.zeros(len(vocab), dtype=np.int64)
        for gram, j in vocab.items():
            order[j] = len(gram) - 1
        return cls(
            num=mat("num"),
            hyp_sq=mat("hyp"),
            ref_sq=mat("ref"),
            ref_present=mat("pres").tocsc(),
            order=order,
            penalty=penalty,
            n=n,
        )

    def item_scores(self, weights: np.ndarray) -> np.ndarray:
        """Per-item CIDEr when the corpus holds item ``i`` ``weights[i]`` times."""
        total = float(weights.sum())
        if total <= 0:
            return np.zeros(len(weights))
        df = self.ref_present.T @ weights.astype(float)  # (ngrams,)
        idf = np.log(total) - np.log(np.maximum(1.0, df))
        w2 = np.zeros((len(idf), self.n))
        w2[np.arange(len(idf)), self.order] = idf**2
        num = self.num @ w2  # (items, n)
        hyp = np.sqrt(self.hyp_sq @ w2)
        ref = np.sqrt(self.ref_sq @ w2)
        both = (hyp != 0) & (ref != 0)
        val = np.where(both, num / np.where(both, hyp * ref, 1.0), num)
        val = val * self.penalty[:, None]
        return np.mean(val, axis=1) * 10.0

    def score(self, weights: np.ndarray) -> float:
        total = float(weights.sum())
        if total <= 0 or self.ref_present.nnz == 0:
            return 0.0
        return float(np.dot(weights, self.item_scores(weights)) / total)


def cider_scores(hyps: Sequence[str], refs: Sequence[str]) -> tuple[float, np.ndarray]:
    """CIDEr (pycocoevalcap's ``Cider``) of tokenised pairs: (corpus score, item scores).

    The corpus score is the mean of the item scores; both depend on the whole corpus
    (the IDF comes from its references). No reference n-gram at all gives 0.
    """
    data = _CiderData.build(list(hyps), list(refs))
    weights = np.ones(len(hyps))
    if len(hyps) == 0 or data.ref_present.nnz == 0:
        return 0.0, np.zeros(len(hyps))
    items = data.item_scores(weights)
    return float(items.mean()), items


# --------------------------------------------------------------------------- METEOR

METEOR_JAR = "meteor-1.5.jar"


def _pycocoevalcap_meteor_dir() -> Path | None:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "meteor"


def meteor_unavailable_reason() -> str | None:
    """Why METEOR cannot run here (None when it can): java and pycocoevalcap's jar."""
    if shutil.which("java") is None:
        return "METEOR needs Java: no `java` on PATH"
    folder = _pycocoevalcap_meteor_dir()
    if folder is None:
        return (
            "METEOR needs the METEOR 1.5 jar shipped by pycocoevalcap "
            "(pip install pycocoevalcap==1.2, about 100 MB): not installed"
        )
    if not (folder / METEOR_JAR).is_file() or not (folder / "data" / "paraphrase-en.gz").is_file():
        return f"METEOR: {folder / METEOR_JAR} or its data/paraphrase-en.gz is missing"
    return None


# METEOR 1.5 English parameters of the default task, as the jar uses them with
# ``-l en -norm``: alpha, beta, gamma, delta and the weights of the four matching stages
# (exact, stem, synonym, paraphrase).
METEOR_PARAMS = {"alpha": 0.85, "beta": 0.2, "gamma": 0.6, "delta": 0.75}
METEOR_STAGE_WEIGHTS = (1.0, 0.6, 0.8, 0.6)
METEOR_STATS_WIDTH = 23


def meteor_stats_array(stats: Sequence[str]) -> np.ndarray:
    """METEOR statistics lines as numbers, shape (items, 23), ready to be summed.

    Columns: test length, reference length, test and reference function words, then per
    stage (4) test/reference content and test/reference function-word matches, chunks,
    test and reference matched words. As the jar does when it aggregates, a perfectly
    matched item (every word matched, one chunk) adds no chunk.
    """
    arr = np.array([[float(x) for x in line.split()] for line in stats], dtype=float)
    arr = arr.reshape(len(stats), METEOR_STATS_WIDTH)
    perfect = (arr[:, 21] == arr[:, 0]) & (arr[:, 22] == arr[:, 1]) & (arr[:, 20] == 1)
    arr[perfect, 20] = 0.0
    return arr


def meteor_from_stats(totals: Sequence[float]) -> float:
    """METEOR 1.5 score of (summed) statistics, as the jar computes it.

    ``P`` and ``R`` are stage-weighted matches over lengths, content words weighted by
    ``delta`` and function words by ``1 - delta``; ``Fmean = P R / (alpha P + (1 - alpha)
    R)``; fragmentation ``chunks / mean matched words`` (0 for a perfect match);
    ``score = Fmean (1 - gamma frag^beta)``; 0 when P or R is 0. Checked against the jar
    (item and aggregate scores) to 1e-15.
    """
    s = np.asarray(totals, dtype=float)
    alpha, beta = METEOR_PARAMS["alpha"], METEOR_PARAMS["beta"]
    gamma, delta = METEOR_PARAMS["gamma"], METEOR_PARAMS["delta"]
    test_len, ref_len, test_fn, ref_fn = s[0], s[1], s[2], s[3]
    stages = s[4:20].reshape(4, 4)
    chunks, test_matched, ref_matched = s[20], s[21], s[22]
    test_w = sum(
        w * (delta * st[0] + (1 - delta) * st[2])
        for w, st in zip(METEOR_STAGE_WEIGHTS, stages, strict=True)
    )
    ref_w = sum(
        w * (delta * st[1] + (1 - delta) * st[3])
        for w, st in zip(METEOR_STAGE_WEIGHTS, stages, strict=True)
    )
    test_weighted_len = delta * (test_len - test_fn) + (1 - delta) * test_fn
    ref_weighted_len = delta * (ref_len - ref_fn) + (1 - delta) * ref_fn
    precision = test_w / test_weighted_len if test_weighted_len > 0 else 0.0
    recall = ref_w / ref_weighted_len if ref_weighted_len > 0 else 0.0
    if precision == 0 or recall == 0:
        return 0.0
    fmean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    if test_matched == test_len and ref_matched == ref_len and chunks == 1:
        frag = 0.0
    else:
        frag = chunks / ((test_matched + ref_matched) / 2.0)
    return float(fmean * (1 - gamma * frag**beta))


class Meteor:
    """METEOR 1.5 through pycocoevalcap's jar, as pycocoevalcap's ``Meteor`` runs it.

    ``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm``; one ``SCORE`` line per
    item gives its statistics, one ``EVAL`` line over a list of statistics gives the
    item scores and the aggregate (corpus) score. Use as a context manager, or
    :func:`shared_meteor` for the one process that every corpus of this Python process
    uses (the jar takes seconds to start, mostly loading its paraphrase table; a SCORE
    line depends on its pair only, so a process can serve any number of corpora).
    Calls are serialised by a lock.
    """

    def __init__(self) -> None:
        reason = meteor_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        folder = _pycocoevalcap_meteor_dir()
        assert folder is not None
        cmd = ["java", "-jar", "-Xmx2G", METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
        self._proc = subprocess.Popen(
            cmd,
            cwd=folder,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def _ask(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write((line + "\n").encode())
        self._proc.stdin.flush()

    def _read(self) -> str:
        assert self._proc.stdout is not None
        out = self._proc.stdout.readline()
        if not out:
            raise RuntimeError("METEOR process ended unexpectedly")
        return out.decode().strip()

    def stats(self, hyp: str, ref: str) -> str:
        """METEOR statistics line of one (hypothesis, reference) pair."""
        hyp = hyp.replace("|||", "").replace("  ", " ")
        with self._lock:
            self._ask(" ||| ".join(("SCORE", ref, hyp)))
            return self._read()

    def evaluate(self, stats: Sequence[str]) -> tuple[float, list[float]]:
        """(aggregate score, item scores) of a list of statistics lines."""
        if not stats:
            return 0.0, []
        with self._lock:
            self._ask("EVAL ||| " + " ||| ".join(stats))
            items = [float(self._read()) for _ in stats]
            return float(self._read()), items

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> Meteor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARED_METEOR: Meteor | None = None
_SHARED_LOCK = threading.Lock()


def shared_meteor() -> Meteor:
    """The METEOR process of this Python process: started on first use (and again if it
    died), stopped at exit. Raises RuntimeError, with the reason, where METEOR cannot run.
    """
    global _SHARED_METEOR
    with _SHARED_LOCK:
        if _SHARED_METEOR is None or not _SHARED_METEOR.alive:
            _SHARED_METEOR = Meteor()
            atexit.register(_SHARED_METEOR.close)
        return _SHARED_METEOR


# --------------------------------------------------------------------------- corpus


@dataclass
class LexicalCorpus:
    """Tokenised pairs and the per-item statistics of every lexical metric.

    Build with :meth:`build`; :meth:`scores` then gives every metric of any weighting
    of the items (weights 1: the corpus itself; a bootstrap resample's counts: that
    resample) without re-tokenising.

    Attributes
    ----------
    hyps, refs : list of str
        Tokenised texts (:func:`ptb_tokenize`), one per item.
    bleu_stats : numpy.ndarray, shape (items, 10)
        ``[testlen, reflen, guess_1..4, correct_1..4]`` per item.
    rouge : numpy.ndarray, shape (items,)
        ROUGE-L per item.
    meteor_stats : list of str or None
        METEOR statistics per item, or None when METEOR is unavailable.
    meteor_reason : str or None
        Why METEOR is unavailable (None when it is available).
    """

    hyps: list[str]
    refs: list[str]
    bleu_stats: np.ndarray
    rouge: np.ndarray
    cider: _CiderData
    meteor_stats: list[str] | None = None
    meteor_reason: str | None = None
    _meteor: Meteor | None = field(default=None, repr=False)
    _meteor_array: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        hyps: Iterable[object],
        refs: Iterable[object],
        *,
        meteor: bool = True,
        tokenized: bool = False,
    ) -> LexicalCorpus:
        """Tokenise the pairs and compute their per-item statistics.

        Parameters
        ----------
        hyps, refs : iterables of str (None/NaN: empty)
            Generated and reference texts, one pair per item, same length.
        meteor : bool
            Also get METEOR statistics, from :func:`shared_meteor` (the jar starts on
            the first corpus of the process that asks for it).
        tokenized : bool
            The texts are already tokenised (space-separated); skip :func:`ptb_tokenize`.
        """
        hyps, refs = list(hyps), list(refs)
        if len(hyps) != len(refs):
            raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
        if tokenized:
            h = ["" if t is None else str(t) for t in hyps]
            r = ["" if t is None else str(t) for t in refs]
        else:
            h = [ptb_tokenize(t) for t in hyps]
            r = [ptb_tokenize(t) for t in refs]
        bleu = np.array([_bleu_item_stats(a, b) for a, b in zip(h, r, strict=True)], dtype=float)
        bleu = bleu.reshape(len(h), 10)
        rouge = np.array([rouge_l(a, b) for a, b in zip(h, r, strict=True)], dtype=float)
        corpus = cls(h, r, bleu, rouge, _CiderData.build(h, r))
        if meteor:
            corpus.meteor_reason = meteor_unavailable_reason()
            if corpus.meteor_reason is None:
                corpus._meteor = shared_meteor()
                corpus.meteor_stats = [
                    corpus._meteor.stats(a, b) for a, b in zip(h, r, strict=True)
                ]
                corpus._check_meteor()
        else:
            corpus.meteor_reason = "METEOR not requested"
        return corpus

    def __len__(self) -> int:
        return len(self.hyps)

    def _check_meteor(self) -> None:
        """Use the Python aggregate (:func:`meteor_from_stats`) when it equals the jar's.

        The jar's EVAL of the whole corpus is compared with the Python value; on any
        difference above 1e-9, resamples keep going through the jar (slower, same
        numbers).
        """
        assert self._meteor is not None and self.meteor_stats is not None
        if not self.meteor_stats:
            return
        array = meteor_stats_array(self.meteor_stats)
        jar, _items = self._meteor.evaluate(self.meteor_stats)
        if abs(meteor_from_stats(array.sum(axis=0)) - jar) <= 1e-9:
            self._meteor_array = array

    def weights(self, idx: np.ndarray | None) -> np.ndarray:
        """Per-item counts of an index array (None: every item once)."""
        if idx is None:
            return np.ones(len(self), dtype=np.int64)
        return np.bincount(np.asarray(idx, dtype=np.int64), minlength=len(self))

    def scores(self, idx: np.ndarray | None = None) -> dict[str, float]:
        """Every available metric of the corpus made of items ``idx`` (with repeats).

        Returns
        -------
        dict
            ``bleu_1`` .. ``bleu_4``, ``rouge_l``, ``cider`` and, when available,
            ``meteor``. An empty corpus gives NaN.
        """
        w = self.weights(idx)
        total = int(w.sum())
        out: dict[str, float] = {}
        if total == 0:
            return {k: math.nan for k in LEXICAL_KEYS if k != "meteor" or self.meteor_stats}
        for key, value in zip(BLEU_KEYS, bleu_from_stats(w @ self.bleu_stats), strict=True):
            out[key] = value
        if self._meteor_array is not None:
            out["meteor"] = meteor_from_stats(w @ self._meteor_array)
        elif self.meteor_stats is not None and self._meteor is not None:
            stats = [s for s, k in zip(self.meteor_stats, w, strict=True) for _ in range(k)]
            out["meteor"] = self._meteor.evaluate(stats)[0]
        out["rouge_l"] = float(np.dot(w, self.rouge) / total)
        out["cider"] = self.cider.score(w.astype(float))
        return out

    def close(self) -> None:
        """Let go of the METEOR process (it is shared: it stops when Python exits)."""
        self._meteor = None

    def __enter__(self) -> LexicalCorpus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lexical_scores(
    hyps: Iterable[object], refs: Iterable[object], *, meteor: bool = True
) -> tuple[dict[str, float], dict[str, str]]:
    """Corpus lexical metrics of (generated, reference) pairs.

    Returns
    -------
    (dict, dict)
        Scores by name (``bleu_1`` .. ``bleu_4``, ``meteor``, ``rouge_l``, ``cider``)
        and, by name, why a metric is unavailable (``meteor`` only).
    """
    with LexicalCorpus.build(hyps, refs, meteor=meteor) as corpus:
        scores = corpus.scores()
        missing = {} if corpus.meteor_reason is None else {"meteor": corpus.meteor_reason}
    return scores, missing
