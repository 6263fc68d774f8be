"""Tests of :mod:`cxrlib.data.phantom.text`: the Findings text agrees with the labels.

The keyword lexicon below is written independently of the generator's templates: it is
what a simple CheXpert-style labeler would look for. For many sampled studies, each
observation labelled 1 must be stated plainly with its side, -1 only with a hedge, 0 only
negated, and a blank observation must not be named at all.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

import cxrlib.data.phantom.text as module
from cxrlib.data.manifest import CHEXPERT_LABELS
from cxrlib.data.phantom.findings import (
    HEDGEABLE,
    POSSIBLE,
    PRESENT,
    Finding,
    PhantomStudy,
    labels,
    sample_study,
)
from cxrlib.data.phantom.text import findings_text

N_STUDIES = 3000

LEXICON: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (r"mediastin",),
    "Cardiomegaly": (r"\bheart\b", r"\bcardiac\b", r"cardiomegaly"),
    "Lung Opacity": (r"opacit", r"opacif", r"\bhaz", r"airspace disease", r"infiltrat"),
    "Lung Lesion": (r"nodul", r"\bmass(es)?\b", r"\blesions?\b", r"neoplas", r"tumou?r"),
    "Edema": (r"edema", r"congestion", r"cephalization"),
    "Consolidation": (r"consolidat",),
    "Pneumonia": (r"pneumonia", r"infecti"),
    "Atelectasis": (r"atelecta", r"collapse"),
    "Pneumothorax": (r"pneumothora",),
    "Pleural Effusion": (r"effusion",),
    "Pleural Other": (r"thickening", r"pleural plaque", r"fibrothorax"),
    "Fracture": (r"fracture", r"osseous", r"\bbony\b", r"\bbones?\b"),
    "Support Devices": (
        r"\btubes?\b",
        r"catheter",
        r"pacemaker",
        r"\bpacer\b",
        r"\blines?\b",
        r"\bleads?\b",
    ),
}
KEYWORDS = {obs: re.compile("|".join(words)) for obs, words in LEXICON.items()}
NEGATION = re.compile(r"\b(no|not|normal|clear|unremarkable|without|negative)\b")
HEDGE = re.compile(
    r"possibl|\bmay\b|cannot (be )?exclude|questionabl|subtle|borderline|\bcould\b|equivocal"
)
SIDE_WORDS = {
    "left": re.compile(r"\bleft\b"),
    "right": re.compile(r"\bright\b"),
    "bilateral": re.compile(r"bilateral|bibasilar|biapical|\bboth\b"),
}
ZONE_WORDS = {
    "upper": re.compile(r"upper|apical|\bapex\b|apices"),
    "middle": re.compile(r"\bmid\b|middle"),
    "lower": re.compile(r"lower|\bbases?\b|basilar"),
}
DEVICE_WORDS = {
    "endotracheal tube": re.compile(r"endotracheal|\bet tube"),
    "enteric tube": re.compile(r"enteric|nasogastric|orogastric|feeding tube"),
    "central venous catheter": re.compile(r"central venous|central line"),
    "pacemaker": re.compile(r"pacemaker|\bpacer\b"),
}
LATERAL = (
    "Pleural Effusion",
    "Pneumothorax",
    "Consolidation",
    "Atelectasis",
    "Lung Opacity",
    "Lung Lesion",
    "Fracture",
    "Pleural Other",
)
ZONED = ("Consolidation", "Atelectasis", "Lung Opacity", "Lung Lesion", "Pleural Other")
SIZED = ("Pleural Effusion", "Pneumothorax", "Edema", "Lung Lesion")
PARENCHYMAL = ("Lung Opacity", "Consolidation", "Atelectasis", "Edema", "Lung Lesion", "Pneumonia")
CHAMBERS = re.compile(r"right (atri|ventric)\w*")  # anatomy, not the device's side


def sentences(text: str) -> list[str]:
    """Lower-case sentences of a text."""
    return [s for s in re.split(r"(?<=\.)\s+", text.strip().lower()) if s]


def clauses(sentence: str) -> list[str]:
    return re.split(r"[,;]", sentence)


def attribute_patterns(f: Finding) -> list[re.Pattern]:
    """Everything that must appear together where ``f`` is stated."""
    pats = [KEYWORDS[f.observation]]
    if f.observation in LATERAL and f.side:
        pats.append(SIDE_WORDS[f.side])
    if f.observation in ZONED and f.zone:
        pats.append(ZONE_WORDS[f.zone])
    if f.size and (
        f.observation in SIZED or (f.observation == "Cardiomegaly" and f.certainty == PRESENT)
    ):
        pats.append(re.compile(re.escape(f.size)))
    if f.observation == "Lung Lesion" and f.kind:
        pats.append(re.compile(r"nodul" if f.kind == "nodule" else r"\bmass\b"))
    if f.observation == "Fracture":
        pats.append(re.compile(r"\brib\b"))
    return pats


def stated(f: Finding, text: str) -> bool:
    """``f`` appears with all its attributes: plainly (a clause) or hedged (a sentence)."""
    pats = attribute_patterns(f)
    for sentence in sentences(text):
        if f.certainty == POSSIBLE:
            units = [sentence] if HEDGE.search(sentence) else []
        else:
            units = [c for c in clauses(sentence) if not HEDGE.search(c)]
        if any(all(p.search(u) for p in pats) for u in units):
            return True
    return False


def label_problems(study: PhantomStudy, text: str) -> list[str]:
    """Disagreements between the text and ``labels(study)`` (empty when they agree)."""
    lab = labels(study)
    sents = sentences(text)
    problems = []
    for obs, pattern in KEYWORDS.items():
        value = lab[obs]
        hits = [s for s in sents if pattern.search(s)]
        if math.isnan(value):
            if hits:
                problems.append(f"{obs} blank but named: {hits}")
        elif value == 0:
            if not hits:
                problems.append(f"{obs} negative but not stated")
            bad = [s for s in hits if not NEGATION.search(s) or HEDGE.search(s)]
            if bad:
                problems.append(f"{obs} negative but not (only) negated: {bad}")
        elif value == -1:
            if not hits:
                problems.append(f"{obs} uncertain but not stated")
            bad = [s for s in hits if not HEDGE.search(s) or NEGATION.search(s)]
            if bad:
                problems.append(f"{obs} uncertain but not hedged: {bad}")
        elif not any(pattern.search(c) and not HEDGE.search(c) for s in hits for c in clauses(s)):
            problems.append(f"{obs} positive but not stated plainly")
    for f in study.findings:
        if f.observation == "Support Devices":
            device = DEVICE_WORDS[f.kind]
            side = SIDE_WORDS[f.side] if f.side else None
            if not any(device.search(s) and (side is None or side.search(s)) for s in sents):
                problems.append(f"device {f.kind} ({f.side}) not stated")
        elif not stated(f, text):
            problems.append(f"{f} not stated with its attributes")
    for kind, pattern in DEVICE_WORDS.items():
        if pattern.search(text.lower()) and kind not in [f.kind for f in study.findings]:
            problems.append(f"device {kind} named but absent")
    return problems


@pytest.fixture(scope="module")
def corpus() -> list[tuple[PhantomStudy, str]]:
    out = []
    for i in range(N_STUDIES):
        study = sample_study(str(i), np.random.default_rng([7, i]))
        out.append((study, findings_text(study, np.random.default_rng([8, i]))))
    return out


def one_finding(f: Finding, negatives: tuple[str, ...] = ()) -> PhantomStudy:
    return PhantomStudy("single", (f,), negatives, ctr=0.45)


def test_text_agrees_with_labels(corpus):
    problems = []
    for study, text in corpus:
        problems += [f"{study.study_id}: {p} | {text}" for p in label_problems(study, text)]
    assert not problems, "\n".join(problems[:10])


def test_corpus_covers_every_label_value(corpus):
    """The sample exercises 1, 0 (where stated as negatives) and -1 of the observations."""
    seen: dict[str, set[float]] = {name: set() for name in CHEXPERT_LABELS}
    for study, _ in corpus:
        for name, value in labels(study).items():
            if not math.isnan(value):
                seen[name].add(value)
    for name in HEDGEABLE:
        assert {1.0, -1.0} <= seen[name], name
    assert -1.0 in seen["Pneumonia"]
    for name in ("Pneumothorax", "Pleural Effusion", "Consolidation", "Cardiomegaly", "Edema"):
        assert 0.0 in seen[name], name


def test_hedged_findings_are_hedged_sentences(corpus):
    n = 0
    for study, text in corpus:
        for f in study.findings:
            if f.certainty != POSSIBLE:
                continue
            hits = [s for s in sentences(text) if KEYWORDS[f.observation].search(s)]
            assert hits and all(HEDGE.search(s) for s in hits), text
            n += 1
    assert n > 100


def test_possible_pneumonia_is_written_into_the_consolidation_sentence(corpus):
    n = 0
    for study, text in corpus:
        if study.pneumonia != POSSIBLE:
            continue
        n += 1
        assert any(
            "pneumonia" in s and "consolidat" in s and HEDGE.search(s) for s in sentences(text)
        ), text
    assert n > 20


def test_lungs_clear_only_without_parenchymal_findings(corpus):
    for study, text in corpus:
        lab = labels(study)
        says_clear = any(
            "clear" in s and "otherwise" not in s and "lung" in s for s in sentences(text)
        )
        if says_clear:
            assert not any(lab[n] in (1.0, -1.0) for n in PARENCHYMAL), text


def test_normal_summary_only_for_normal_studies(corpus):
    n = 0
    for study, text in corpus:
        if "acute cardiopulmonary" in text or "intrathoracic" in text:
            assert labels(study)["No Finding"] == 1.0, text
            n += 1
    assert n > 50


def test_normal_studies_read_normal(corpus):
    normals = [(s, t) for s, t in corpus if s.is_normal]
    assert len(normals) > 500
    for _, text in normals:
        assert not HEDGE.search(text.lower()), text
        for s in sentences(text):
            is_device = any(p.search(s) for p in DEVICE_WORDS.values())
            assert is_device or NEGATION.search(s), text


def test_format(corpus):
    for _, text in corpus:
        assert text and text.endswith("."), text
        assert "  " not in text and " ," not in text and ".." not in text, text
        assert text == text.strip()
        for s in re.split(r"(?<=\.) ", text):
            assert s[0].isalpha() and s[0].isupper(), (s, text)
            assert s.endswith(".") and len(s) > 4, (s, text)


def test_deterministic():
    for i in range(50):
        study = sample_study(str(i), np.random.default_rng([7, i]))
        a = findings_text(study, np.random.default_rng([8, i]))
        np.random.seed(i)  # noqa: NPY002  (global state must not matter)
        b = findings_text(study, np.random.default_rng([8, i]))
        assert a == b
    study = sample_study("x", np.random.default_rng(3))
    texts = {findings_text(study, np.random.default_rng(s)) for s in range(40)}
    assert len(texts) > 10


def test_only_rng_is_a_source_of_randomness():
    source = Path(module.__file__).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from) random\b", source, re.M)
    assert set(re.findall(r"np\.random\.(\w+)", source)) <= {"Generator"}


def test_variation_among_normal_studies(corpus):
    normal_texts = [t for s, t in corpus if s.is_normal and not s.findings]
    assert len(set(normal_texts)) > 0.6 * len(normal_texts)
    study = PhantomStudy(
        "n", (), ("Pneumothorax", "Pleural Effusion", "Consolidation", "Cardiomegaly"), ctr=0.4
    )
    texts = {findings_text(study, np.random.default_rng(s)) for s in range(300)}
    assert len(texts) > 100


@pytest.mark.parametrize(
    ("study", "pattern", "minimum"),
    [
        (one_finding(Finding("Pleural Effusion", side="left", size="small")), "effusion", 8),
        (one_finding(Finding("Pneumothorax", side="right", size="small")), "pneumothorax", 6),
        (one_finding(Finding("Cardiomegaly", size="moderate")), "heart|cardi", 6),
        (one_finding(Finding("Edema", side="bilateral", size="mild")), "edema|congestion", 6),
        (one_finding(Finding("Pleural Effusion", POSSIBLE, "right", "small")), "effusion", 5),
        (PhantomStudy("n", (), ("Pneumothorax",), ctr=0.4), "pneumothorax", 5),
        (PhantomStudy("n", (), ("Cardiomegaly",), ctr=0.4), "heart|cardi", 5),
        (PhantomStudy("n", (), ("Fracture",), ctr=0.4), "fracture|osseous", 5),
    ],
)
def test_several_templates_per_statement(study, pattern, minimum):
    found = set()
    for seed in range(300):
        text = findings_text(study, np.random.default_rng(seed))
        found.update(s for s in sentences(text) if re.search(pattern, s))
    assert len(found) >= minimum, found


SIDED = [
    Finding("Pleural Effusion", side="left", size="moderate"),
    Finding("Pleural Effusion", side="bilateral", size="large"),
    Finding("Pleural Effusion", POSSIBLE, "right", "small"),
    Finding("Pneumothorax", side="right", size="large"),
    Finding("Pneumothorax", POSSIBLE, "left", "small"),
    Finding("Consolidation", side="left", zone="upper"),
    Finding("Consolidation", POSSIBLE, side="bilateral", zone="lower"),
    Finding("Lung Opacity", side="right", zone="middle"),
    Finding("Lung Opacity", POSSIBLE, side="bilateral", zone="upper"),
    Finding("Atelectasis", side="right", zone="middle"),
    Finding("Atelectasis", POSSIBLE, side="left", zone="lower"),
    Finding("Atelectasis", side="bilateral", zone="lower"),
    Finding("Lung Lesion", side="left", size="1.5 cm", zone="upper", kind="nodule"),
    Finding("Lung Lesion", POSSIBLE, "right", "4.1 cm", "lower", "mass"),
    Finding("Fracture", side="left", zone="middle", kind="rib"),
    Finding("Pleural Other", side="right", zone="upper", kind="pleural thickening"),
    Finding("Pleural Other", side="bilateral", zone="lower", kind="pleural thickening"),
    Finding("Support Devices", side="left", kind="pacemaker"),
    Finding("Support Devices", side="right", kind="central venous catheter"),
]


@pytest.mark.parametrize("f", SIDED, ids=lambda f: f"{f.observation}-{f.side}-{f.certainty}")
def test_laterality_and_zone_match_the_finding(f):
    study = one_finding(f, negatives=("Cardiomegaly",))
    others = {"left": ("right",), "right": ("left",), "bilateral": ("left", "right")}[f.side]
    for seed in range(60):
        text = findings_text(study, np.random.default_rng(seed))
        lower = CHAMBERS.sub("", text.lower())
        assert SIDE_WORDS[f.side].search(lower), text
        for other in others:
            assert not SIDE_WORDS[other].search(lower), text
        if f.observation in ZONED:
            assert ZONE_WORDS[f.zone].search(lower), text
            for zone, pattern in ZONE_WORDS.items():
                assert zone == f.zone or not pattern.search(lower), text
        assert not label_problems(study, text), (label_problems(study, text), text)


def test_consolidation_with_possible_pneumonia():
    for certainty in (PRESENT, POSSIBLE):
        f = Finding("Consolidation", certainty, side="right", zone="lower")
        study = PhantomStudy("p", (f,), ("Pneumothorax",), ctr=0.4, pneumonia=POSSIBLE)
        for seed in range(100):
            text = findings_text(study, np.random.default_rng(seed))
            assert not label_problems(study, text), (label_problems(study, text), text)
            assert re.search(r"(may|could)\b.*pneumonia|possibl\w* pneumonia", text), text


def test_possible_pneumonia_without_consolidation():
    """Not drawn by sample_study, but the model allows it: the hedge still appears."""
    opacity = (Finding("Lung Opacity", side="left", zone="lower"),)
    for findings in (opacity, ()):
        study = PhantomStudy("p", findings, ("Pleural Effusion",), ctr=0.4, pneumonia=POSSIBLE)
        for seed in range(50):
            text = findings_text(study, np.random.default_rng(seed))
            assert not label_problems(study, text), (label_problems(study, text), text)


def test_unknown_observation_raises():
    study = one_finding(Finding("No Finding"))
    with pytest.raises(ValueError, match="No Finding"):
        findings_text(study, np.random.default_rng(0))


def test_device_only_and_empty_studies_are_not_empty():
    empty = PhantomStudy("e", (), (), ctr=0.4)
    assert findings_text(empty, np.random.default_rng(0)).endswith(".")
    tube = one_finding(Finding("Support Devices", kind="endotracheal tube"))
    for seed in range(20):
        text = findings_text(tube, np.random.default_rng(seed))
        assert "carina" in text and not label_problems(tube, text), text
