"""Radiologist-style Findings text for phantom studies.

:func:`findings_text` writes the Findings section of a
:class:`~cxrlib.data.phantom.findings.PhantomStudy` so that a CheXpert-style labeler
reading it finds exactly :func:`~cxrlib.data.phantom.findings.labels`:

- every finding is stated with its attributes (side, size, zone, kind); a ``present``
  finding plainly (label 1), a ``possible`` one with a hedge (label -1: "possible",
  "may", "could", "cannot exclude", "questionable", "borderline");
- every observation of ``study.negatives`` gets a pertinent negative (label 0), and no
  sentence names an observation that is neither a finding nor a negative (blank);
- neutral sentences ("The lungs are clear.", "No acute cardiopulmonary process.") name
  no observation and are used only where they cannot contradict a finding.

Sides are the patient's. Wording, sentence order and the merging of statements vary
with ``rng`` (several templates per statement, devices -> heart -> lungs -> pleura ->
bones as the usual order, abnormal-first reports now and then); the text is a pure
function of the study and the state of ``rng``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from cxrlib.data.phantom.findings import POSSIBLE, Finding, PhantomStudy

__all__ = ["findings_text"]

T = TypeVar("T")

PARENCHYMAL = ("Lung Opacity", "Consolidation", "Atelectasis", "Edema", "Lung Lesion")
"""Lung-parenchymal observations: any of them rules out "The lungs are clear"."""

SECTIONS = ("devices", "heart", "lungs", "pleura", "bones")
"""The usual order of a radiologist's Findings."""

# Probabilities of the structural choices.
P_SPECIAL = 0.4  # a statement uses its observation-specific sentence rather than a frame
P_MERGE_POSITIVES = 0.15  # two adjacent positives of a section share one sentence
P_MERGE_WITHOUT = 0.25  # "<positive> without <negative>"
P_ABNORMAL_FIRST = 0.3  # abnormal statements first, then the negatives
P_SHUFFLE = 0.3  # positives of a section in random order


# --------------------------------------------------------------------------- helpers


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One element of ``options``, uniformly."""
    return options[int(rng.random() * len(options))]


def _chance(rng: np.random.Generator, p: float) -> bool:
    """True with probability ``p``."""
    return bool(rng.random() < p)


def _cap(text: str) -> str:
    """``text`` with its first character upper-case."""
    return text[:1].upper() + text[1:]


def _uncap(text: str) -> str:
    """``text`` with its first character lower-case, unless it starts with an acronym."""
    word = text.split(" ", 1)[0]
    if len(word) > 1 and word.isupper():
        return text
    return text[:1].lower() + text[1:]


def _clean(text: str) -> str:
    """Single spaces, no space before punctuation."""
    text = " ".join(text.split())
    return text.replace(" ,", ",").replace(" .", ".").replace(" ;", ";")


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _join_or(nouns: Sequence[str], rng: np.random.Generator) -> str:
    """``a``, ``a or b``, ``a, b, or c`` (Oxford comma or not)."""
    if len(nouns) == 1:
        return nouns[0]
    if len(nouns) == 2:
        return f"{nouns[0]} or {nouns[1]}"
    last = ", or " if _chance(rng, 0.5) else " or "
    return ", ".join(nouns[:-1]) + last + nouns[-1]


@dataclass(frozen=True)
class _NP:
    """A noun phrase of a finding: ``form`` is ``count``, ``mass`` or ``plural``."""

    bare: str
    form: str = "count"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bare", _clean(self.bare))

    @property
    def art(self) -> str:
        """With its article where it takes one ("a small left pleural effusion")."""
        if self.form != "count":
            return self.bare
        return f"{_article(self.bare)} {self.bare}"

    @property
    def lead(self) -> str:
        """What may open a sentence: never a number ("A 1.5 cm nodule ...")."""
        return self.art if self.bare[:1].isdigit() else self.bare

    @property
    def be(self) -> str:
        return "are" if self.form == "plural" else "is"


@dataclass
class _Item:
    """One stated finding, before it is written as a sentence.

    ``specials`` are complete, observation-specific sentences (hedged ones hedge
    themselves); ``suffix`` is a clause appended to frame sentences (pneumonia);
    ``after`` a sentence that follows (a CT recommendation).
    """

    finding: Finding
    np: _NP | None
    specials: tuple[str, ...] = ()
    suffix: str = ""
    after: str = ""

    @property
    def obs(self) -> str:
        return self.finding.observation

    @property
    def hedged(self) -> bool:
        return self.finding.certainty == POSSIBLE

    @property
    def mergeable(self) -> bool:
        return self.np is not None and not self.hedged and not self.suffix and not self.after


@dataclass
class _Sent:
    """A written sentence (or two), its section and whether it states an abnormality."""

    text: str
    section: str
    abnormal: bool


# ------------------------------------------------------------------------- locations


def _loc_adj(side: str | None, zone: str | None, rng: np.random.Generator) -> str:
    """Location as a modifier: "right lower lobe", "bibasilar", "left mid lung"."""
    s = side or ""
    if side == "bilateral":
        options = {
            "upper": ("bilateral upper lobe", "bilateral upper lung zone"),
            "middle": ("bilateral mid lung",),
            "lower": ("bibasilar", "bilateral lower lobe", "bilateral basilar"),
        }
    else:
        middle = (f"{s} mid lung", f"{s} mid lung zone")
        options = {
            "upper": (f"{s} upper lobe", f"{s} upper lung zone", f"{s} upper lung"),
            "middle": middle + (("right middle lobe",) if side == "right" else ()),
            "lower": (f"{s} lower lobe", f"{s} lower lung zone", f"{s} basilar", f"{s} lower lung"),
        }
    if zone not in options:
        return "bilateral lung" if side == "bilateral" else f"{s} lung"
    return _pick(rng, options[zone])


def _loc_prep(side: str | None, zone: str | None, rng: np.random.Generator) -> str:
    """Location as a prepositional phrase: "in the right lower lobe", "at the left base"."""
    s = side or ""
    if side == "bilateral":
        options = {
            "upper": (
                "in the upper lobes bilaterally",
                "in both upper lobes",
                "in the bilateral upper lung zones",
            ),
            "middle": ("in the mid lung zones bilaterally", "in both mid lungs"),
            "lower": (
                "at the lung bases bilaterally",
                "at both lung bases",
                "in the bilateral lower lobes",
            ),
        }
    else:
        middle = (f"in the {s} mid lung", f"in the {s} mid lung zone")
        options = {
            "upper": (
                f"in the {s} upper lobe",
                f"in the {s} upper lung zone",
                f"in the {s} upper lung",
            ),
            "middle": middle + (("in the right middle lobe",) if side == "right" else ()),
            "lower": (
                f"in the {s} lower lobe",
                f"in the {s} lower lung zone",
                f"at the {s} lung base",
                f"at the {s} base",
            ),
        }
    if zone not in options:
        return "in both lungs" if side == "bilateral" else f"in the {s} lung"
    return _pick(rng, options[zone])


def _zone_area(side: str | None, zone: str | None) -> str:
    """The area a lesion projects over: "left upper lung zone"."""
    words = {"upper": "upper lung zone", "middle": "mid lung", "lower": "lower lung zone"}
    return f"{side or ''} {words.get(zone or '', 'lung')}"


# ------------------------------------------------------------------ finding builders


def _effusion(f: Finding, rng: np.random.Generator) -> _Item:
    side, size = f.side, f.size or "small"
    size_w = "moderate-sized" if size == "moderate" and _chance(rng, 0.3) else size
    if side == "bilateral":
        np_ = _pick(
            rng,
            (
                _NP(f"{size_w} bilateral pleural effusions", "plural"),
                _NP(f"bilateral {size_w} pleural effusions", "plural"),
                _NP(f"{size_w} bilateral effusions", "plural"),
            ),
        )
        if f.certainty == POSSIBLE:
            specials = (
                f"Blunting of both costophrenic angles may reflect {size} bilateral effusions.",
                f"{_cap(size)} bilateral pleural effusions are possible.",
            )
        elif size == "small":
            specials = (
                "Blunting of both costophrenic angles consistent with small bilateral "
                "pleural effusions.",
                "Small pleural effusions are present bilaterally.",
            )
        else:
            specials = (
                f"{_cap(size_w)} pleural effusions are present bilaterally.",
                f"{_cap(size)} bilateral pleural effusions obscure both hemidiaphragms.",
            )
        return _Item(f, np_, specials)
    np_ = _pick(
        rng,
        (
            _NP(f"{size_w} {side} pleural effusion"),
            _NP(f"{size_w} {side} effusion"),
            _NP(f"{size_w} {side}-sided pleural effusion"),
        ),
    )
    if f.certainty == POSSIBLE:
        specials = (
            f"Blunting of the {side} costophrenic angle may reflect a {size} pleural effusion.",
            f"Minimal blunting of the {side} costophrenic angle could represent a {size} effusion.",
        )
    elif size == "small":
        specials = (
            f"Blunting of the {side} costophrenic angle consistent with a small pleural effusion.",
            f"Small {side} pleural effusion with blunting of the costophrenic angle.",
        )
    else:
        specials = (
            f"{_cap(size_w)} {side} pleural effusion obscuring the {side} hemidiaphragm.",
            f"There is a {size_w} {side} pleural effusion with a meniscus along the lateral "
            "chest wall.",
        )
    return _Item(f, np_, specials)


def _pneumothorax(f: Finding, rng: np.random.Generator) -> _Item:
    side, size = f.side or "", f.size or "small"
    if f.certainty == POSSIBLE:
        np_ = _NP(f"{size} {side} apical pneumothorax")
        specials = (
            f"Subtle lucency at the {side} apex could represent a {size} pneumothorax.",
            f"A {size} {side} apical pneumothorax cannot be excluded.",
        )
        return _Item(f, np_, specials)
    options = {
        "small": (f"small {side} apical pneumothorax", f"small {side} pneumothorax"),
        "moderate": (f"moderate {side} pneumothorax", f"moderate-sized {side} pneumothorax"),
        "large": (f"large {side} pneumothorax", f"large {side}-sided pneumothorax"),
    }
    np_ = _NP(_pick(rng, options.get(size, (f"{size} {side} pneumothorax",))))
    specials = (
        f"There is a {size} {side} pneumothorax with a visible visceral pleural edge.",
        f"{_cap(np_.art)} is present.",
    )
    return _Item(f, np_, specials)


PNEUMONIA_SUFFIXES = (
    ", which may represent pneumonia",
    ", which could reflect pneumonia in the appropriate clinical setting",
    ", which may reflect pneumonia in the appropriate clinical setting",
    ", possibly pneumonia",
    ", concerning for possible pneumonia",
    "; this could represent pneumonia",
)


def _consolidation(f: Finding, rng: np.random.Generator, pneumonia: bool) -> _Item:
    adj = _loc_adj(f.side, f.zone, rng)
    prep = _loc_prep(f.side, f.zone, rng)
    suffix = _pick(rng, PNEUMONIA_SUFFIXES) if pneumonia else ""
    if f.certainty == POSSIBLE:
        np_ = _pick(
            rng,
            (
                _NP(f"{adj} consolidation", "mass"),
                _NP(f"early consolidation {prep}", "mass"),
                _NP(f"focal consolidation {prep}", "mass"),
                _NP(f"patchy consolidation {prep}", "mass"),
            ),
        )
        if pneumonia:
            specials = (
                f"Subtle {adj} consolidation may represent early pneumonia.",
                f"Subtle consolidation {prep} could reflect pneumonia in the appropriate "
                "clinical setting.",
            )
        else:
            specials = (
                f"Possible early consolidation {prep}.",
                f"Subtle {adj} consolidation cannot be excluded.",
            )
        return _Item(f, np_, specials, suffix=suffix)
    np_ = _pick(
        rng,
        (
            _NP(f"{adj} consolidation", "mass"),
            _NP(f"consolidation {prep}", "mass"),
            _NP(f"focal consolidation {prep}", "mass"),
            _NP(f"patchy consolidation {prep}", "mass"),
            _NP(f"dense {adj} consolidation", "mass"),
            _NP(f"airspace consolidation {prep}", "mass"),
        ),
    )
    end = (suffix or "") + "."
    specials = (
        f"{_cap(adj)} consolidation with air bronchograms{end}",
        f"There is consolidation {prep}{end}",
    )
    return _Item(f, np_, specials, suffix=suffix)


def _opacity(f: Finding, rng: np.random.Generator) -> _Item:
    adj = _loc_adj(f.side, f.zone, rng)
    prep = _loc_prep(f.side, f.zone, rng)
    if f.side == "bilateral":
        if f.certainty == POSSIBLE:
            np_ = _NP(f"faint opacities {prep}", "plural")
            specials = (
                f"Faint opacities {prep} may be due to overlying soft tissue.",
                f"Subtle {adj} opacities could reflect early airspace disease.",
            )
            return _Item(f, np_, specials)
        np_ = _pick(
            rng,
            (
                _NP(f"{adj} opacities", "plural"),
                _NP(f"patchy {adj} opacities", "plural"),
                _NP(f"hazy opacities {prep}", "plural"),
                _NP(f"patchy airspace opacities {prep}", "plural"),
            ),
        )
        return _Item(f, np_)
    if f.certainty == POSSIBLE:
        np_ = _pick(rng, (_NP(f"faint opacity {prep}", "mass"), _NP(f"subtle {adj} opacity")))
        specials = (
            f"Faint opacity {prep} may be due to overlying soft tissue.",
            f"A subtle {adj} opacity could reflect early airspace disease.",
        )
        return _Item(f, np_, specials)
    np_ = _pick(
        rng,
        (
            _NP(f"{adj} opacity"),
            _NP(f"patchy opacity {prep}", "mass"),
            _NP(f"hazy opacity {prep}", "mass"),
            _NP(f"ill-defined opacity {prep}"),
            _NP(f"increased opacity {prep}", "mass"),
            _NP(f"{adj} airspace opacity"),
        ),
    )
    return _Item(f, np_)


def _atelectasis(f: Finding, rng: np.random.Generator) -> _Item:
    adj = _loc_adj(f.side, f.zone, rng)
    prep = _loc_prep(f.side, f.zone, rng)
    if f.certainty == POSSIBLE:
        np_ = _pick(rng, (_NP(f"{adj} atelectasis", "mass"), _NP(f"atelectasis {prep}", "mass")))
        specials = (
            f"Linear markings {prep} may represent subsegmental atelectasis.",
            f"Minimal {adj} atelectasis is possible.",
        )
        return _Item(f, np_, specials)
    mod = _pick(rng, ("linear", "subsegmental", "plate-like", "patchy", ""))
    np_ = _pick(
        rng,
        (
            _NP(f"{adj} atelectasis", "mass"),
            _NP(f"{_pick(rng, ('mild', 'minimal'))} {adj} atelectasis", "mass"),
            _NP(f"{mod} atelectasis {prep}", "mass"),
            _NP(f"atelectatic changes {prep}", "plural"),
        ),
    )
    return _Item(f, np_)


def _edema(f: Finding, rng: np.random.Generator) -> _Item:
    sev = f.size or "mild"
    if f.certainty == POSSIBLE:
        np_ = _NP(_pick(rng, (f"{sev} pulmonary edema", f"{sev} interstitial edema")), "mass")
        specials = (
            f"{_cap(sev)} pulmonary vascular congestion may be present.",
            f"Prominence of the pulmonary vasculature could reflect {sev} edema.",
        )
        return _Item(f, np_, specials)
    nps = [
        f"{sev} pulmonary edema",
        f"{sev} interstitial edema",
        f"{sev} interstitial pulmonary edema",
    ]
    if sev == "severe":
        nps.append("severe alveolar pulmonary edema")
    np_ = _NP(_pick(rng, nps), "mass")
    specials = (
        f"{_cap(sev)} pulmonary edema with perihilar vascular indistinctness and vascular "
        "congestion.",
        f"Pulmonary vascular congestion with {sev} interstitial edema.",
        f"Findings are consistent with {sev} pulmonary edema.",
        f"{_cap(sev)} pulmonary vascular congestion and interstitial edema.",
        f"There is {sev} pulmonary edema with cephalization of the pulmonary vasculature.",
        f"{_cap(sev)} interstitial edema with peribronchial cuffing.",
    )
    return _Item(f, np_, specials)


CT_ADVICE = (
    "Further evaluation with chest CT is recommended.",
    "Recommend chest CT for further characterization.",
    "Correlation with chest CT is recommended.",
)


def _lesion(f: Finding, rng: np.random.Generator) -> _Item:
    size, kind = f.size or "", f.kind or "nodule"
    adj = _loc_adj(f.side, f.zone, rng)
    prep = _pick(
        rng, (_loc_prep(f.side, f.zone, rng), f"projecting over the {_zone_area(f.side, f.zone)}")
    )
    after = _pick(rng, CT_ADVICE) if _chance(rng, 0.3) else ""
    if f.certainty == POSSIBLE:
        np_ = _pick(rng, (_NP(f"{size} {kind} {prep}"), _NP(f"{size} {adj} {kind}")))
        specials = [f"A {size} rounded density {prep} could represent a {kind}."]
        if kind == "nodule":
            specials.append(
                f"A {size} nodular density projecting over the {_zone_area(f.side, f.zone)} "
                "may represent a nipple shadow."
            )
        return _Item(f, np_, tuple(specials), after=after)
    nps = [
        _NP(f"{size} {kind} {prep}"),
        _NP(f"{size} {adj} {kind}"),
        _NP(f"{kind} {prep} measuring {size}"),
    ]
    if kind == "nodule":
        nps += [
            _NP(f"well-circumscribed {size} nodule {prep}"),
            _NP(f"rounded {size} nodule {prep}"),
        ]
    else:
        nps += [_NP(f"lobulated {size} mass {prep}")]
    specials = [f"A {size} {kind} projects over the {_zone_area(f.side, f.zone)}."]
    if kind == "mass":
        specials.append(f"There is a {size} mass {prep}, concerning for neoplasm.")
    return _Item(f, _pick(rng, nps), tuple(specials), after=after)


RIB_NUMBERS = {"upper": (2, 3, 4), "middle": (5, 6, 7), "lower": (8, 9, 10)}


def _ordinal(n: int) -> str:
    return f"{n}" + {1: "st", 2: "nd", 3: "rd"}.get(n if n < 20 else n % 10, "th")


def _fracture(f: Finding, rng: np.random.Generator) -> _Item:
    side, zone = f.side or "", f.zone or "middle"
    bone = f.kind or "rib"
    acuity = _pick(
        rng,
        ("acute", "nondisplaced", "acute nondisplaced", "minimally displaced", "acute"),
    )
    if bone != "rib":
        return _Item(f, _NP(f"{acuity} fracture of the {side} {bone}"))
    pos = _pick(rng, ("", "lateral ", "posterior ", "anterior ", "posterolateral "))
    nth = _ordinal(_pick(rng, RIB_NUMBERS.get(zone, (5, 6, 7))))
    zone_word = {"upper": "upper", "middle": "mid", "lower": "lower"}.get(zone, "")
    np_ = _pick(
        rng,
        (
            _NP(f"{acuity} fracture of the {side} {pos}{nth} rib"),
            _NP(f"{acuity} fracture of a {side} {zone_word} rib"),
            _NP(f"{acuity} {side} {pos}{nth} rib fracture"),
        ),
    )
    return _Item(f, np_)


def _pleural_other(f: Finding, rng: np.random.Generator) -> _Item:
    side, zone = f.side, f.zone or "upper"
    mod = _pick(rng, ("", "mild ", "smooth "))
    if side == "bilateral":
        options = {
            "upper": (
                "biapical pleural thickening",
                "bilateral apical pleural thickening",
                "pleural thickening at both apices",
            ),
            "lower": (
                "bibasilar pleural thickening",
                "bilateral basilar pleural thickening",
                "pleural thickening at both lung bases",
            ),
        }
    else:
        options = {
            "upper": (
                f"{side} apical pleural thickening",
                f"pleural thickening at the {side} apex",
            ),
            "lower": (
                f"{side} basilar pleural thickening",
                f"pleural thickening at the {side} lung base",
                f"pleural thickening along the {side} lower chest wall",
            ),
        }
    words = options.get(zone, (f"{side or ''} pleural thickening",))
    np_ = _NP(mod + _pick(rng, words), "mass")
    return _Item(f, np_)


def _pneumonia(f: Finding, rng: np.random.Generator) -> _Item:
    """A Pneumonia finding (not drawn by sample_study, but allowed by the model)."""
    where = _loc_adj(f.side, f.zone, rng) if f.side else ""
    return _Item(f, _NP(f"{where} pneumonia", "mass"))


def _device(f: Finding, rng: np.random.Generator) -> _Item:
    kind, s = f.kind or "", f.side or ""
    if kind == "endotracheal tube":
        n = _pick(rng, ("2", "3", "3.5", "4", "4.5", "5", "6"))
        specials = (
            f"Endotracheal tube terminates {n} cm above the carina.",
            f"An endotracheal tube is in place with its tip {n} cm above the carina.",
            f"The endotracheal tube tip is {n} cm above the carina.",
            f"Endotracheal tube in standard position, {n} cm above the carina.",
            f"The endotracheal tube is appropriately positioned, terminating {n} cm above "
            "the carina.",
            f"ET tube tip projects {n} cm above the carina.",
        )
    elif kind == "enteric tube":
        specials = (
            "Enteric tube courses below the diaphragm.",
            "An enteric tube extends below the diaphragm with its tip in the stomach.",
            "Nasogastric tube tip projects over the stomach.",
            "The enteric tube terminates in the stomach.",
            "Orogastric tube courses below the diaphragm, with the tip beyond the inferior "
            "margin of the image.",
            "An enteric tube is seen coursing below the diaphragm.",
            "Feeding tube tip projects over the stomach.",
        )
    elif kind == "central venous catheter":
        vein = _pick(rng, ("internal jugular", "internal jugular", "subclavian"))
        place = _pick(rng, ("SVC", "mid SVC", "lower SVC", "cavoatrial junction"))
        tip = f"at the {place}" if place.startswith("cavo") else f"in the {place}"
        specials = (
            f"{_cap(s)} {vein} central venous catheter with tip {tip}.",
            f"{_cap(s)} {vein} central venous catheter terminates {tip}.",
            f"A {s} {vein} central line terminates {tip}.",
            f"{_cap(s)}-sided central venous catheter tip projects over the {place}.",
            f"There is a {s} {vein} central venous catheter with its tip {tip}.",
        )
    elif kind == "pacemaker":
        specials = (
            f"{_cap(s)} chest wall pacemaker with leads in the right atrium and ventricle.",
            f"{_cap(s)}-sided pacemaker with leads terminating in the right atrium and right "
            "ventricle.",
            f"A {s} chest wall pacemaker is present with leads in expected position.",
            f"{_cap(s)}-sided dual-chamber pacemaker with leads in the right atrium and right "
            "ventricle.",
            f"{_cap(s)} chest wall pacer device with leads projecting over the right atrium and "
            "right ventricle.",
        )
    else:
        specials = (f"{_cap(s)} {kind or 'support device'} in place.",)
    return _Item(f, None, specials)


# ---------------------------------------------------------------- writing statements


def _write(item: _Item, rng: np.random.Generator) -> str:
    """One sentence (two with ``after``) for one finding."""
    np_, suffix = item.np, item.suffix
    if np_ is None or (item.specials and _chance(rng, P_SPECIAL)):
        text = _pick(rng, item.specials)
    elif item.hedged:
        frames = [
            f"Possible {np_.bare}{suffix}.",
            f"Questionable {np_.bare}{suffix}.",
            f"Cannot exclude {np_.art}{suffix}.",
            f"There may be {np_.art}{suffix}.",
        ]
        if not suffix:
            frames += [f"{_cap(np_.art)} cannot be excluded.", f"{_cap(np_.art)} may be present."]
        text = _pick(rng, frames)
    else:
        frames = [f"{_cap(np_.lead)}{suffix}.", f"There {np_.be} {np_.art}{suffix}."]
        if not suffix:
            verb = _pick(rng, ("present", "seen", "noted", "identified"))
            frames += [f"{_cap(np_.lead)}.", f"{_cap(np_.art)} {np_.be} {verb}."]
        text = _pick(rng, frames)
    text = _clean(text)
    return f"{text} {item.after}" if item.after else text


def _write_pair(a: _Item, b: _Item, rng: np.random.Generator) -> str:
    """Two positive findings in one sentence."""
    assert a.np is not None and b.np is not None
    if (
        a.obs == "Pleural Effusion"
        and b.obs == "Atelectasis"
        and b.finding.zone == "lower"
        and a.finding.side == b.finding.side
    ):
        link = _pick(rng, ("with adjacent", "with associated", "and adjacent"))
        return _clean(f"{_cap(a.np.lead)} {link} {b.np.art}.")
    return _clean(
        _pick(
            rng,
            (f"{_cap(a.np.lead)} and {b.np.art}.", f"There {a.np.be} {a.np.art} and {b.np.art}."),
        )
    )


def _write_without(item: _Item, noun: str, rng: np.random.Generator) -> str:
    """A positive finding and a pertinent negative in one sentence."""
    assert item.np is not None
    lead, art = _cap(item.np.lead), item.np.art
    return _clean(
        _pick(
            rng,
            (
                f"{lead} without {noun}.",
                f"There {item.np.be} {art} without {noun}.",
                f"{lead}, with no {noun}.",
                f"{lead} without associated {noun}.",
            ),
        )
    )


NEG_NOUNS: dict[str, tuple[str, ...]] = {
    "Consolidation": ("focal consolidation", "focal consolidation", "consolidation"),
    "Lung Opacity": ("focal airspace opacity", "focal opacity", "airspace opacity"),
    "Edema": ("pulmonary edema", "pulmonary edema", "edema"),
    "Pleural Effusion": ("pleural effusion", "pleural effusion", "effusion"),
    "Pneumothorax": ("pneumothorax",),
    "Atelectasis": ("atelectasis",),
    "Pleural Other": ("pleural thickening",),
}
"""Nouns of the pertinent negatives that combine into "No a, b, or c."."""

OTHER_OPACITY_NEGATIVES = (
    "No other focal airspace opacity.",
    "No additional focal opacity.",
    "The lungs are otherwise without focal airspace opacity.",
    "No other focal opacity is seen.",
)
"""Lung Opacity negative when another parenchymal finding is stated."""

SINGLE_NEGATIVES: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        "Heart size is normal.",
        "The heart size is normal.",
        "The heart is normal in size.",
        "Normal heart size.",
        "The cardiac silhouette is within normal limits.",
        "No cardiomegaly.",
        "The heart is not enlarged.",
        "Cardiac size is normal.",
    ),
    "Enlarged Cardiomediastinum": (
        "The mediastinal contours are normal.",
        "Normal mediastinal contours.",
        "The mediastinum is not widened.",
        "Mediastinal contours are unremarkable.",
        "The mediastinal silhouette is within normal limits.",
    ),
    "Fracture": (
        "No acute osseous abnormality.",
        "No displaced rib fracture.",
        "No acute fracture is identified.",
        "The visualized osseous structures are unremarkable.",
        "No acute osseous abnormality is seen.",
        "Osseous structures are without acute abnormality.",
    ),
    "Lung Lesion": ("No suspicious pulmonary nodule or mass.", "No pulmonary nodules or masses."),
    "Pneumonia": ("No evidence of pneumonia.",),
    "Support Devices": ("No lines or tubes are present.",),
}
"""Negatives written as their own sentence."""

HEART_AND_MEDIASTINUM_NORMAL = (
    "Heart size and mediastinal contours are normal.",
    "The heart size and mediastinal contours are within normal limits.",
    "Normal heart size and mediastinal contours.",
    "The cardiac and mediastinal contours are normal.",
    "Heart size is normal, and the mediastinal contours are unremarkable.",
    "The heart is normal in size, and the mediastinum is not widened.",
    "The heart and mediastinum are within normal limits.",
)

LUNGS_CLEAR = (
    "The lungs are clear.",
    "The lungs are clear.",
    "Lungs are clear.",
    "Clear lungs.",
    "The lungs are well expanded and clear.",
    "Both lungs are clear.",
)
LUNGS_OTHERWISE_CLEAR = ("The lungs are otherwise clear.", "Lungs are otherwise clear.")
NORMAL_SUMMARY = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "No acute intrathoracic process.",
)


def _tidy_nouns(nouns: Sequence[str]) -> list[str]:
    """ "No effusion" only after another noun; "focal" only once in a list."""
    out: list[str] = []
    focal = False
    for noun in nouns:
        if noun == "effusion" and not out:
            noun = "pleural effusion"
        if focal and noun.startswith("focal "):
            noun = noun.removeprefix("focal ")
        focal = focal or noun.startswith("focal ")
        out.append(noun)
    return out


def _write_negatives(nouns: Sequence[str], rng: np.random.Generator, clear: bool) -> str:
    """One sentence stating ``nouns`` absent; ``clear`` opens with "The lungs are clear"."""
    listed = _join_or(nouns, rng)
    if clear:
        return _pick(
            rng, (f"The lungs are clear without {listed}.", f"Clear lungs without {listed}.")
        )
    return _pick(
        rng,
        (
            f"No {listed}.",
            f"No {listed}.",
            f"There is no {listed}.",
            f"No evidence of {listed}.",
            f"No {listed} is seen.",
            f"No {listed} is identified.",
            f"There is no evidence of {listed}.",
        ),
    )


# ------------------------------------------------------------------------- sections


def _heart(
    items: dict[str, list[_Item]], negs: Sequence[str], rng: np.random.Generator
) -> list[_Sent]:
    """Sentences on the heart and mediastinum."""
    cardio = (items.get("Cardiomegaly") or [None])[0]
    ecm = (items.get("Enlarged Cardiomediastinum") or [None])[0]
    cardio_neg = "Cardiomegaly" in negs
    ecm_neg = "Enlarged Cardiomediastinum" in negs
    out: list[_Sent] = []

    def add(text: str, abnormal: bool) -> None:
        out.append(_Sent(_clean(text), "heart", abnormal))

    cardio_pos = cardio is not None and not cardio.hedged
    ecm_pos = ecm is not None and not ecm.hedged
    sev = (cardio.finding.size or "mild") if cardio is not None else "mild"
    adv = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}.get(sev, "")

    if cardio_neg and ecm_neg and _chance(rng, 0.7):
        add(_pick(rng, HEART_AND_MEDIASTINUM_NORMAL), False)
        return out
    if cardio_pos and ecm_neg and _chance(rng, 0.3):
        add(
            _pick(
                rng,
                (
                    f"{_cap(sev)} cardiomegaly with normal mediastinal contours.",
                    f"The heart is {adv} enlarged; the mediastinal contours are normal.",
                ),
            ),
            True,
        )
        return out
    if ecm_pos and cardio_neg and _chance(rng, 0.3):
        add(
            _pick(
                rng,
                (
                    "Heart size is normal, but the mediastinum is widened.",
                    "The mediastinum is widened; heart size is normal.",
                ),
            ),
            True,
        )
        return out
    if cardio_pos and ecm_pos and _chance(rng, 0.3):
        add(
            _pick(
                rng,
                (
                    f"{_cap(sev)} cardiomegaly and widening of the mediastinum.",
                    f"The heart is {adv} enlarged, and the mediastinum is widened.",
                ),
            ),
            True,
        )
        return out

    if cardio is not None:
        for c in items["Cardiomegaly"]:
            add(_write(c, rng), True)
    elif cardio_neg:
        add(_pick(rng, SINGLE_NEGATIVES["Cardiomegaly"]), False)
    if ecm is not None:
        for e in items["Enlarged Cardiomediastinum"]:
            add(_write(e, rng), True)
    elif ecm_neg:
        options = SINGLE_NEGATIVES["Enlarged Cardiomediastinum"]
        if cardio is None:  # "cardiomediastinal" must not contradict an enlarged heart
            options += ("The cardiomediastinal silhouette is normal.",)
        add(_pick(rng, options), False)
    if len(out) == 2 and _chance(rng, 0.25):
        out.reverse()
    return out


def _cardiomegaly(f: Finding, rng: np.random.Generator) -> _Item:
    sev = f.size or "mild"
    adv = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}.get(sev, sev)
    if f.certainty == POSSIBLE:
        specials = (
            "Heart size is borderline enlarged.",
            "The heart size is borderline.",
            "Borderline cardiomegaly.",
            "The cardiac silhouette is borderline enlarged.",
            f"Possible {sev} cardiomegaly.",
            f"The heart may be {adv} enlarged.",
            f"{_cap(sev)} cardiomegaly cannot be excluded.",
        )
        return _Item(f, None, specials)
    np_ = _pick(
        rng,
        (
            _NP(f"{sev} cardiomegaly", "mass"),
            _NP(f"{sev} enlargement of the cardiac silhouette", "mass"),
        ),
    )
    specials = (
        f"The heart is {adv} enlarged.",
        f"Heart size is {adv} enlarged.",
        f"The cardiac silhouette is {adv} enlarged.",
        f"The heart size is {adv} enlarged.",
        f"{_cap(sev)} enlargement of the cardiac silhouette.",
    )
    return _Item(f, np_, specials)


def _mediastinum(f: Finding, rng: np.random.Generator) -> _Item:
    if f.certainty == POSSIBLE:
        specials = (
            "The mediastinum may be widened.",
            "Possible mediastinal widening.",
            "Questionable widening of the mediastinum.",
        )
        return _Item(f, None, specials)
    specials = (
        "The mediastinum is widened.",
        "Widened mediastinum.",
        "The cardiomediastinal silhouette is widened.",
        "Mediastinal widening is present.",
        "The superior mediastinum is widened.",
        "There is widening of the mediastinum.",
        "The mediastinal contours are widened.",
    )
    return _Item(f, None, specials)


BUILDERS = {
    "Pleural Effusion": _effusion,
    "Pneumothorax": _pneumothorax,
    "Lung Opacity": _opacity,
    "Atelectasis": _atelectasis,
    "Edema": _edema,
    "Lung Lesion": _lesion,
    "Fracture": _fracture,
    "Pleural Other": _pleural_other,
    "Pneumonia": _pneumonia,
    "Support Devices": _device,
    "Cardiomegaly": _cardiomegaly,
    "Enlarged Cardiomediastinum": _mediastinum,
}

SECTION_OF = {
    "Support Devices": "devices",
    "Cardiomegaly": "heart",
    "Enlarged Cardiomediastinum": "heart",
    "Edema": "lungs",
    "Consolidation": "lungs",
    "Lung Opacity": "lungs",
    "Lung Lesion": "lungs",
    "Atelectasis": "lungs",
    "Pneumonia": "lungs",
    "Pleural Effusion": "pleura",
    "Pneumothorax": "pleura",
    "Pleural Other": "pleura",
    "Fracture": "bones",
}
"""Section of each observation; keys in the usual order of statement within a section."""

WITHOUT_PAIRS = (
    ("Pleural Effusion", "Pneumothorax"),
    ("Pneumothorax", "Pleural Effusion"),
    ("Lung Opacity", "Consolidation"),
    ("Atelectasis", "Consolidation"),
    ("Edema", "Pleural Effusion"),
    ("Fracture", "Pneumothorax"),
)
"""(positive, negative) pairs that may share a sentence: "... without pneumothorax"."""


def _build_items(study: PhantomStudy, rng: np.random.Generator) -> dict[str, list[_Item]]:
    """Items of every finding, by observation (observations in :data:`SECTION_OF` order)."""
    unknown = [f.observation for f in study.findings if f.observation not in SECTION_OF]
    if unknown:
        raise ValueError(f"no text templates for observation(s) {unknown}")
    pneumonia = study.pneumonia == POSSIBLE
    has_consolidation = any(f.observation == "Consolidation" for f in study.findings)
    items: dict[str, list[_Item]] = {}
    for obs in SECTION_OF:
        for f in study.findings:
            if f.observation != obs:
                continue
            if obs == "Consolidation":
                first = obs not in items
                item = _consolidation(f, rng, pneumonia and first)
            else:
                item = BUILDERS[obs](f, rng)
            items.setdefault(obs, []).append(item)
    if pneumonia and not has_consolidation:  # pneumonia hedge without a consolidation
        host = (items.get("Lung Opacity") or [None])[0]
        suffix = _pick(rng, PNEUMONIA_SUFFIXES)
        if host is not None:
            host.suffix, host.specials = suffix, ()
        else:
            f = Finding("Pneumonia", POSSIBLE)
            items["Pneumonia"] = [
                _Item(
                    f,
                    None,
                    ("Findings could reflect pneumonia in the appropriate clinical setting.",),
                )
            ]
    return items


def _chest(
    study: PhantomStudy, items: dict[str, list[_Item]], negs: list[str], rng: np.random.Generator
) -> list[_Sent]:
    """Sentences of the lungs, pleura and bones: findings, merges and negatives."""
    findings = study.findings
    parenchymal = any(f.observation in PARENCHYMAL for f in findings) or study.pneumonia
    edema = any(f.observation == "Edema" for f in findings)
    big_pleural = any(
        f.observation in ("Pleural Effusion", "Pneumothorax") and f.size in ("moderate", "large")
        for f in findings
    )
    ordered = _section_order(items, rng)
    done: set[int] = set()  # ids of items already written (membership only, never iterated)
    out = _without_sentences(items, negs, done, rng)
    otherwise_ok = bool(parenchymal) and not edema and not big_pleural
    out += _positive_sentences(ordered, done, otherwise_ok, rng)
    clear_ok = not parenchymal and not big_pleural
    out += _negative_sentences(study, negs, parenchymal, clear_ok, rng)
    # Other negatives stated on their own.
    for obs in ("Fracture", "Lung Lesion", "Pneumonia", "Support Devices"):
        if obs in negs and obs not in items:
            section = {"Fracture": "bones", "Support Devices": "devices"}.get(obs, "lungs")
            out.append(_Sent(_pick(rng, SINGLE_NEGATIVES[obs]), section, False))
    return out


def _section_order(items: dict[str, list[_Item]], rng: np.random.Generator) -> dict:
    """The items of the lungs, pleura and bones in statement order, sometimes shuffled."""
    ordered: dict[str, list[_Item]] = {s: [] for s in ("lungs", "pleura", "bones")}
    for obs, obs_items in items.items():
        section = SECTION_OF[obs]
        if section in ordered:
            ordered[section] += obs_items
    for section, section_items in ordered.items():
        if len(section_items) > 1 and _chance(rng, P_SHUFFLE):
            perm = rng.permutation(len(section_items))
            ordered[section] = [section_items[int(i)] for i in perm]
    return ordered


def _without_sentences(
    items: dict[str, list[_Item]], negs: list[str], done: set[int], rng: np.random.Generator
) -> list[_Sent]:
    """ "<positive> without <negative>" sentences; the negatives they state leave ``negs``
    and the items they write join ``done``."""
    out = []
    for pos_obs, neg_obs in WITHOUT_PAIRS:
        if neg_obs not in negs or pos_obs not in items:
            continue
        item = items[pos_obs][0]
        if id(item) in done or not item.mergeable or not _chance(rng, P_MERGE_WITHOUT):
            continue
        noun = _pick(rng, NEG_NOUNS[neg_obs])
        text = _write_without(item, noun, rng)
        out.append(_Sent(text, SECTION_OF[pos_obs], True))
        done.add(id(item))
        negs.remove(neg_obs)
    return out


def _positive_sentences(
    ordered: dict[str, list[_Item]], done: set[int], otherwise_ok: bool, rng: np.random.Generator
) -> list[_Sent]:
    """The positives not yet written, section by section, with occasional pairs in one
    sentence (an effusion with the atelectasis beside it crosses sections)."""
    out = []
    for section in ("lungs", "pleura", "bones"):
        queue = [it for it in ordered[section] if id(it) not in done]
        if section == "pleura":
            atel = [it for it in ordered["lungs"] if it.obs == "Atelectasis" and id(it) not in done]
            eff = [it for it in queue if it.obs == "Pleural Effusion"]
            if (
                atel
                and eff
                and atel[0].mergeable
                and eff[0].mergeable
                and atel[0].finding.zone == "lower"
                and atel[0].finding.side == eff[0].finding.side
                and _chance(rng, 0.35)
            ):
                out.append(_Sent(_write_pair(eff[0], atel[0], rng), section, True))
                done.update((id(eff[0]), id(atel[0])))
                queue = [it for it in queue if id(it) not in done]
        out += _write_queue(queue, section, done, rng)
        if section == "lungs" and otherwise_ok and _chance(rng, 0.35):
            out.append(_Sent(_pick(rng, LUNGS_OTHERWISE_CLEAR), "lungs", True))
    return out


def _write_queue(
    queue: list[_Item], section: str, done: set[int], rng: np.random.Generator
) -> list[_Sent]:
    """One section's positives in order, two neighbours sometimes merged."""
    out = []
    i = 0
    while i < len(queue):
        item = queue[i]
        if id(item) in done:
            i += 1
            continue
        nxt = queue[i + 1] if i + 1 < len(queue) else None
        if nxt is not None and item.mergeable and nxt.mergeable and _chance(rng, P_MERGE_POSITIVES):
            out.append(_Sent(_write_pair(item, nxt, rng), section, True))
            done.update((id(item), id(nxt)))
            i += 2
            continue
        out.append(_Sent(_write(item, rng), section, True))
        done.add(id(item))
        i += 1
    return out


def _negative_sentences(
    study: PhantomStudy,
    negs: list[str],
    parenchymal: bool,
    clear_ok: bool,
    rng: np.random.Generator,
) -> list[_Sent]:
    """Negatives of lungs and pleura, grouped into one to three sentences, and "the
    lungs are clear" where nothing contradicts it."""
    out: list[_Sent] = []
    lung_nouns: list[str] = []
    pleura_nouns: list[str] = []
    for obs in ("Consolidation", "Lung Opacity", "Atelectasis", "Edema"):
        if obs not in negs:
            continue
        if obs == "Lung Opacity" and parenchymal:
            out.append(_Sent(_pick(rng, OTHER_OPACITY_NEGATIVES), "lungs", False))
        else:
            lung_nouns.append(_pick(rng, NEG_NOUNS[obs]))
    for obs in ("Pleural Effusion", "Pneumothorax", "Pleural Other"):
        if obs in negs:
            pleura_nouns.append(_pick(rng, NEG_NOUNS[obs]))
    if len(pleura_nouns) > 1 and _chance(rng, 0.35):
        pleura_nouns.reverse()
    if len(lung_nouns) > 1 and _chance(rng, 0.3):
        lung_nouns = [lung_nouns[-1]] + lung_nouns[:-1]

    r = rng.random()
    if lung_nouns and pleura_nouns and r < 0.45:
        groups = [lung_nouns + pleura_nouns]
    elif r < 0.85:
        groups = [g for g in (lung_nouns, pleura_nouns) if g]
    else:
        groups = [[n] for n in lung_nouns + pleura_nouns]

    clear = clear_ok and _chance(rng, 0.75 if study.is_normal else 0.5)
    for group in groups:
        lung = any(n in lung_nouns for n in group)
        with_clear = clear and lung and _chance(rng, 0.4)
        text = _write_negatives(_tidy_nouns(group), rng, with_clear)
        clear = clear and not with_clear
        out.append(_Sent(_clean(text), "lungs" if lung else "pleura", False))
    if clear:  # before the first normal sentence (every earlier one states a finding)
        at = next((k for k, s in enumerate(out) if not s.abnormal), len(out))
        out.insert(at, _Sent(_pick(rng, LUNGS_CLEAR), "lungs", False))
    return out


def _devices(items: dict[str, list[_Item]], rng: np.random.Generator) -> list[_Sent]:
    """Sentences on support devices, sometimes two in one sentence."""
    texts = [_write(it, rng) for it in items.get("Support Devices", [])]
    if len(texts) > 1 and _chance(rng, 0.2):
        k = int(rng.random() * (len(texts) - 1))
        texts[k], texts[k + 1] = texts[k + 1], texts[k]
    if len(texts) > 1 and _chance(rng, 0.25):
        k = int(rng.random() * (len(texts) - 1))
        merged = f"{texts[k][:-1]}, and {_uncap(texts[k + 1])}"
        texts[k : k + 2] = [merged]
    return [_Sent(_clean(t), "devices", True) for t in texts]


# ---------------------------------------------------------------------------- public


def findings_text(study: PhantomStudy, rng: np.random.Generator) -> str:
    """Findings section of a study, written like a radiologist's.

    Every finding is stated with its side, size, zone and kind (hedged when its
    certainty is ``"possible"``), every observation of ``study.negatives`` is stated
    absent, and no other observation is named, so that a CheXpert-style labeler reading
    the text recovers :func:`~cxrlib.data.phantom.findings.labels`. A hedged
    pneumonia (``study.pneumonia == "possible"``) is written into the consolidation's
    sentence ("..., which may represent pneumonia").

    Parameters
    ----------
    study : PhantomStudy
        The study to describe.
    rng : numpy.random.Generator
        The only source of randomness (templates, order, merges); the same study and
        generator state always give the same text.

    Returns
    -------
    str
        Sentences separated by single spaces, each starting upper-case and ending with a
        period; never empty.

    Raises
    ------
    ValueError
        If a finding has an observation without templates (``"No Finding"``).
    """
    negs = [n for n in study.negatives if n != "No Finding"]
    items = _build_items(study, rng)
    sents = _devices(items, rng) + _heart(items, negs, rng) + _chest(study, items, negs, rng)

    order = list(SECTIONS)
    r = rng.random()
    if r < 0.2:
        order = ["devices", "lungs", "pleura", "heart", "bones"]
    elif r < 0.3:
        order = ["devices", "heart", "pleura", "lungs", "bones"]
    if _chance(rng, 0.12):
        order.remove("devices")
        order.append("devices")
    rank = {s: k for k, s in enumerate(order)}
    abnormal = any(s.abnormal and s.section != "devices" for s in sents)
    if abnormal and _chance(rng, P_ABNORMAL_FIRST):
        sents.sort(key=lambda s: (not s.abnormal, rank[s.section]))  # stable
    else:
        sents.sort(key=lambda s: rank[s.section])

    texts = [s.text for s in sents]
    normal = study.is_normal and study.pneumonia is None
    if normal and (not texts or _chance(rng, 0.3)):
        texts.append(_pick(rng, NORMAL_SUMMARY))
    if not texts:  # an abnormal study always states its findings; kept for safety
        texts.append(_pick(rng, NORMAL_SUMMARY))
    return " ".join(texts)
