"""Lexical metrics: PTB tokenisation, BLEU, ROUGE-L, CIDEr, METEOR.

Every expected value below was produced by pycocoevalcap 1.2 (its Java PTBTokenizer,
``Bleu(4)``, ``Rouge()``, ``Cider()`` and ``Meteor()``) on the same texts, and our code
matched it to 1e-15. They are literals so that these tests run without Java;
``test_lexical_pycocoevalcap.py`` runs pycocoevalcap itself where it can.
"""

import math

import numpy as np
import pytest

from cxrlib.metrics import lexical
from cxrlib.metrics.lexical import (
    LexicalCorpus,
    bleu_from_stats,
    cider_scores,
    lcs_length,
    lexical_scores,
    meteor_from_stats,
    meteor_stats_array,
    ptb_tokenize,
    rouge_l,
)

# (input, output of pycocoevalcap's PTBTokenizer: Stanford CoreNLP 3.4.1 via Java)
PTB_CASES = [
    (
        "The heart is not enlarged. No pleural effusion, pneumothorax, or consolidation.",
        "the heart is not enlarged no pleural effusion pneumothorax or consolidation",
    ),
    (
        "Don't worry; it isn't the patient's fault (really) [bracket] {brace} \"quoted\" 'single'.",
        "do n't worry it is n't the patient 's fault -lrb- really -rrb- -lsb- bracket -rsb- "
        "-lcb- brace -rcb- quoted single",
    ),
    (
        "Size 2.5cm x 3 cm, 1,000 ml, 50% and $5 & more... e.g. i.e. vs. Dr. Smith U.S.A. etc.",
        "size 2.5 cm x 3 cm 1,000 ml 50 % and $ 5 & more e.g. i.e. vs. dr. smith u.s.a. etc.",
    ),
    (
        "Left-sided ET tube 4.5 cm above the carina -- stable. X-ray / CT: and/or 1/2 a*b #3 @home",
        "left-sided et tube 4.5 cm above the carina stable x-ray / ct and/or 1/2 a * b # 3 @home",
    ),
    (
        "___ year old ___ . Compared to ___, there is  mild   edema!? Cannot exclude. gonna",
        "___ year old ___ compared to ___ there is mild edema !? can not exclude gon na",
    ),
    (
        "NG tube tip 10cm below GE junction.XXXX XXXX. Rt. lung. w/ w/o s/p",
        "ng tube tip 10cm below ge junction.xxxx xxxx rt. lung w / w/o s/p",
    ),
    ("2.5-3.0 cm approx. 3 cm No. 5 a/b/c/d/e", "2.5-3 .0 cm approx 3 cm no. 5 a/b/c / d/e"),
    ("1 1/2 inches, 5%. Lt. lung", "1\u00a01/2 inches 5 % lt. lung"),
    ("", ""),
    ("...", ""),
]


@pytest.mark.parametrize(("text", "expected"), PTB_CASES)
def test_ptb_tokenize_matches_stanford_ptbtokenizer(text, expected):
    assert ptb_tokenize(text) == expected


def test_ptb_tokenize_none_nan_newlines():
    assert ptb_tokenize(None) == ""
    assert ptb_tokenize(float("nan")) == ""
    assert ptb_tokenize("No effusion.\nNo pneumothorax.") == "no effusion no pneumothorax"


# A small corpus; values from pycocoevalcap 1.2 (see the module docstring).
HYPS = [
    "The heart is normal in size. No pleural effusion.",
    "Small left pleural effusion.",
    "Mild pulmonary edema, cardiomegaly.",
    "",
]
REFS = [
    "Heart size is normal. No pleural effusion or pneumothorax.",
    "Small left pleural effusion. No pneumothorax.",
    "Moderate cardiomegaly with mild pulmonary edema.",
    "The lungs are clear.",
]
COCO_BLEU = [0.551148289347166, 0.4435353822312857, 0.3548542337625532, 0.2430365144992203]
COCO_ROUGE_ITEMS = [0.6666666666666666, 0.7721518987341772, 0.5791139240506329, 0.0]
COCO_ROUGE = 0.5044831223628692
COCO_CIDER_ITEMS = [2.9989811542395413, 6.917174554253714, 3.9882780472236585, 0.0]
COCO_CIDER = 3.4761084389292285
COCO_METEOR = 0.3409593601077457
# the corpus of items 0, 0, 1, 2 (a bootstrap-like resample with a repeat)
COCO_DUP_BLEU = [0.7254956238491813, 0.5576929223012598, 0.4199759389782266, 0.25952707047025964]
COCO_DUP_CIDER = 3.735022047531361
COCO_DUP_METEOR = 0.38372355120907037


@pytest.fixture(scope="module")
def corpus():
    with LexicalCorpus.build(HYPS, REFS, meteor=False) as c:
        yield c


def test_corpus_scores_match_pycocoevalcap(corpus):
    scores = corpus.scores()
    for k in range(4):
        assert scores[f"bleu_{k + 1}"] == pytest.approx(COCO_BLEU[k], abs=1e-14)
    assert scores["rouge_l"] == pytest.approx(COCO_ROUGE, abs=1e-14)
    assert corpus.rouge.tolist() == pytest.approx(COCO_ROUGE_ITEMS, abs=1e-14)
    assert scores["cider"] == pytest.approx(COCO_CIDER, abs=1e-12)
    assert "meteor" not in scores


def test_resampled_corpus_matches_pycocoevalcap_on_the_repeated_corpus(corpus):
    scores = corpus.scores(np.array([0, 0, 1, 2]))
    for k in range(4):
        assert scores[f"bleu_{k + 1}"] == pytest.approx(COCO_DUP_BLEU[k], abs=1e-14)
    assert scores["cider"] == pytest.approx(COCO_DUP_CIDER, abs=1e-12)
    # the resample equals the explicitly repeated corpus, for every metric
    rebuilt = LexicalCorpus.build(
        [HYPS[i] for i in (0, 0, 1, 2)], [REFS[i] for i in (0, 0, 1, 2)], meteor=False
    ).scores()
    assert scores == pytest.approx(rebuilt, abs=1e-13)


def test_cider_items_match_pycocoevalcap():
    toks_h, toks_r = [ptb_tokenize(t) for t in HYPS], [ptb_tokenize(t) for t in REFS]
    score, items = cider_scores(toks_h, toks_r)
    assert score == pytest.approx(COCO_CIDER, abs=1e-12)
    assert items.tolist() == pytest.approx(COCO_CIDER_ITEMS, abs=1e-12)


def test_bleu_conventions():
    # identical texts: every precision (c + 1e-15) / (c + 1e-9), no brevity penalty
    stats = lexical._bleu_item_stats("a b c d", "a b c d")
    assert stats == [4, 4, 4, 3, 2, 1, 4, 3, 2, 1]
    assert bleu_from_stats(stats) == pytest.approx([1.0] * 4, abs=1e-9)
    # shorter hypothesis: brevity penalty exp(1 - r / c) = exp(1 - 4 / 2)
    short = bleu_from_stats(lexical._bleu_item_stats("a b", "a b c d"))
    assert short[0] == pytest.approx(math.exp(1 - 4 / 2), rel=1e-8)
    # empty hypothesis: zero
    assert bleu_from_stats(lexical._bleu_item_stats("", "a b")) == pytest.approx([0.0] * 4)


def test_rouge_l_conventions():
    assert rouge_l("a b c", "a b c") == pytest.approx(1.0)
    # LCS 2, P = 2/3, R = 2/4, F = (1 + 1.44) P R / (R + 1.44 P)
    p, r = 2 / 3, 2 / 4
    assert rouge_l("a x b", "a b y z") == pytest.approx(2.44 * p * r / (r + 1.44 * p))
    assert rouge_l("", "a b") == 0.0
    assert rouge_l("", "") == 1.0  # pycocoevalcap: both split into one empty token


def test_lcs_length_against_dynamic_programming():
    rng = np.random.default_rng(0)

    def dp(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i][j] = (
                    table[i - 1][j - 1] + 1
                    if a[i - 1] == b[j - 1]
                    else max(table[i - 1][j], table[i][j - 1])
                )
        return table[-1][-1]

    for _ in range(200):
        a = list(rng.choice(list("abcde"), size=rng.integers(0, 30)))
        b = list(rng.choice(list("abcde"), size=rng.integers(0, 30)))
        assert lcs_length(a, b) == dp(a, b)


def test_meteor_unavailable_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(lexical.shutil, "which", lambda name: None)
    scores, missing = lexical_scores(HYPS, REFS)
    assert "meteor" not in scores
    assert "java" in missing["meteor"].lower()
    monkeypatch.setattr(lexical.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(lexical, "_pycocoevalcap_meteor_dir", lambda: None)
    assert "pycocoevalcap" in lexical.meteor_unavailable_reason()


@pytest.mark.needs_tool(
    lexical.meteor_unavailable_reason() is None, "METEOR needs java + pycocoevalcap"
)
def test_meteor_matches_pycocoevalcap():
    with LexicalCorpus.build(HYPS, REFS) as c:
        assert c.scores()["meteor"] == pytest.approx(COCO_METEOR, abs=1e-12)
        assert c.scores(np.array([0, 0, 1, 2]))["meteor"] == pytest.approx(
            COCO_DUP_METEOR, abs=1e-12
        )


@pytest.mark.needs_tool(
    lexical.meteor_unavailable_reason() is None, "METEOR needs java + pycocoevalcap"
)
def test_one_meteor_process_serves_every_corpus_and_restarts_when_it_died():
    with LexicalCorpus.build(HYPS, REFS) as first:
        process = first._meteor
    with LexicalCorpus.build(HYPS[:2], REFS[:2]) as second:
        assert second._meteor is process  # no second jar start
        assert second.scores()["meteor"] != first.scores()["meteor"]
    assert process is lexical.shared_meteor() and process.alive
    process.close()  # as if the jar had died
    with LexicalCorpus.build(HYPS, REFS) as again:
        assert again._meteor is not process and again._meteor.alive
        assert again.scores()["meteor"] == pytest.approx(COCO_METEOR, abs=1e-12)


def test_length_mismatch_and_empty_corpus():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        LexicalCorpus.build(["a", "b"], ["a"], meteor=False)
    c = LexicalCorpus.build(["a"], ["a"], meteor=False)
    assert all(math.isnan(v) for v in c.scores(np.array([], dtype=int)).values())


# METEOR statistics lines written by the METEOR 1.5 jar (pycocoevalcap's, -l en -norm)
# for: identical "the heart is normal"; "heart normal"; "the lungs are clear"; "the heart
# is normal size" against "normal size the heart is". Item and EVAL scores from the jar.
METEOR_LINES = [
    "4.0 4.0 2.0 2.0 2.0 2.0 2.0 2.0" + " 0.0" * 12 + " 1.0 4.0 4.0",
    "2.0 4.0 0.0 2.0 2.0 2.0 0.0 0.0" + " 0.0" * 12 + " 2.0 2.0 2.0",
    "4.0 4.0 2.0 2.0 0.0 0.0 1.0 1.0" + " 0.0" * 12 + " 1.0 1.0 1.0",
    "5.0 5.0 2.0 2.0 3.0 3.0 2.0 2.0" + " 0.0" * 12 + " 2.0 5.0 5.0",
]
JAR_ITEMS = [1.0, 0.31168831168831174, 0.05, 0.5004680755588762]
JAR_EVAL_ALL = 0.37192213519388917
JAR_EVAL_FIRST_TWO = 0.46222744466331606


def test_meteor_from_stats_matches_the_jar():
    raw = np.array([[float(x) for x in line.split()] for line in METEOR_LINES])
    for row, expected in zip(raw, JAR_ITEMS, strict=True):
        assert meteor_from_stats(row) == pytest.approx(expected, abs=1e-15)
    arr = meteor_stats_array(METEOR_LINES)
    assert arr[0, 20] == 0.0  # a perfect item adds no chunk to an aggregate
    assert meteor_from_stats(arr.sum(axis=0)) == pytest.approx(JAR_EVAL_ALL, abs=1e-15)
    assert meteor_from_stats(arr[:2].sum(axis=0)) == pytest.approx(JAR_EVAL_FIRST_TWO, abs=1e-15)
