"""A phrasing battery for Pneumothorax, Pleural Effusion and Cardiomegaly.

Short sentences in the style of US chest radiograph reports (MIMIC-CXR, CheXpert,
Indiana), written from general radiology report phrasing, **not** from the IU X-ray
reports (which were not read to write them). Expected labels follow the CheXpert
conventions (Irvin et al., AAAI 2019): a positive mention wins over an uncertain one,
which wins over a negative one; "likely" / "probable" are uncertain; an unchanged,
stable, persistent, residual or decreased finding is present (1); a resolved or no
longer seen finding is absent (0); a pericardial effusion is not a pleural effusion.
Cases where the convention itself is open to argument carry an ``# ambiguous:`` note.

Laterality: the patient's side of the effusion / pneumothorax when labelled 1 or -1
(``left``, ``right``, ``bilateral``, ``unspecified``); None when the label is 0 or blank
(the column must then be blank); ``ANY`` where the side is not checked.
"""

import math

import pytest

from cxrlib.metrics.labeler import LATERAL_OBSERVATIONS, label_report, laterality_column

POS, NEG, UNC, BLANK = 1.0, 0.0, -1.0, math.nan
PTX, EFF, CM = "Pneumothorax", "Pleural Effusion", "Cardiomegaly"
EC = "Enlarged Cardiomediastinum"
ANY = "*"  # laterality not checked

L, R, B, U = "left", "right", "bilateral", "unspecified"

CASES: list[tuple[str, str, float, str | None]] = [
    # --- pneumothorax: positive, sizes and sides -----------------------------------------
    ("Small left apical pneumothorax.", PTX, POS, L),
    ("Tiny right apical pneumothorax.", PTX, POS, R),
    ("Moderate left pneumothorax.", PTX, POS, L),
    ("Large right pneumothorax with mediastinal shift to the left.", PTX, POS, R),
    ("The patient is rotated to the right with a small pneumothorax.", PTX, POS, U),
    ("Bilateral pneumothoraces.", PTX, POS, B),
    ("Small apical pneumothoraces bilaterally.", PTX, POS, B),
    ("There is a small pneumothorax at the left apex.", PTX, POS, L),
    ("Pneumothorax on the right.", PTX, POS, R),
    ("Small left basilar pneumothorax.", PTX, POS, L),
    ("Approximately 10% right pneumothorax.", PTX, POS, R),
    ("Apical pneumothorax on the right measures 1.5 cm.", PTX, POS, R),
    ("Tiny left apical pneumothorax is again seen.", PTX, POS, L),
    ("Small right PTX.", PTX, POS, R),
    ("No PTX.", PTX, NEG, None),
    # hydro- / hemopneumothorax: air and fluid
    ("Left hydropneumothorax.", PTX, POS, L),
    ("Left hydropneumothorax.", EFF, POS, L),
    ("Small right hydropneumothorax with an air-fluid level.", PTX, POS, R),
    ("Small right hydropneumothorax with an air-fluid level.", EFF, POS, R),
    ("Right hemopneumothorax.", EFF, POS, R),
    # --- pneumothorax: interval change ---------------------------------------------------
    ("Decreased size of the right pneumothorax.", PTX, POS, R),
    ("Increased left pneumothorax.", PTX, POS, L),
    ("Unchanged small left apical pneumothorax.", PTX, POS, L),
    ("Stable tiny right apical pneumothorax.", PTX, POS, R),
    ("Persistent small right pneumothorax.", PTX, POS, R),
    ("Residual small left apical pneumothorax.", PTX, POS, L),
    ("Slightly smaller right pneumothorax.", PTX, POS, R),
    ("Right pneumothorax has decreased in size.", PTX, POS, R),
    ("No significant change in the small right pneumothorax.", PTX, POS, R),
    ("Left pneumothorax, slightly larger than on the prior study.", PTX, POS, L),
    ("Interval development of a small right pneumothorax.", PTX, POS, R),
    ("New small left apical pneumothorax.", PTX, POS, L),
    ("Resolving right pneumothorax.", PTX, POS, R),
    ("Interval resolution of the left pneumothorax.", PTX, NEG, None),
    ("The right pneumothorax is no longer seen.", PTX, NEG, None),
    ("Previously seen left pneumothorax has resolved.", PTX, NEG, None),
    ("The previously noted left apical pneumothorax is not visualized.", PTX, NEG, None),
    ("Right pneumothorax, now resolved.", PTX, NEG, None),
    ("The left lung has re-expanded; no pneumothorax.", PTX, NEG, None),
    ("Re-expanded right lung with no residual pneumothorax.", PTX, NEG, None),
    ("The right lung has re-expanded.", PTX, BLANK, None),
    # --- pneumothorax: negation ----------------------------------------------------------
    ("No pneumothorax.", PTX, NEG, None),
    ("There is no pneumothorax.", PTX, NEG, None),
    ("No evidence of pneumothorax.", PTX, NEG, None),
    ("No definite pneumothorax.", PTX, NEG, None),
    ("Pneumothorax is not identified.", PTX, NEG, None),
    ("A pneumothorax is not seen.", PTX, NEG, None),
    ("No visible pneumothorax.", PTX, NEG, None),
    ("No apical pneumothorax is seen.", PTX, NEG, None),
    ("Negative for pneumothorax.", PTX, NEG, None),
    ("Lungs are clear without pneumothorax.", PTX, NEG, None),
    ("No pneumothoraces.", PTX, NEG, None),
    ("No large pneumothorax.", PTX, NEG, None),  # ambiguous: small one not addressed
    ("No pleural effusion or pneumothorax.", PTX, NEG, None),
    ("No pleural effusion or pneumothorax.", EFF, NEG, None),
    ("No pneumothorax or pleural effusion.", PTX, NEG, None),
    ("No focal consolidation, pleural effusion, or pneumothorax.", PTX, NEG, None),
    ("No focal consolidation, pleural effusion, or pneumothorax.", EFF, NEG, None),
    ("There is no evidence of pleural effusion or pneumothorax.", PTX, NEG, None),
    ("Pneumomediastinum without pneumothorax.", PTX, NEG, None),
    ("Subcutaneous emphysema in the right chest wall; no pneumothorax.", PTX, NEG, None),
    ("There is no pneumothorax on the left; small right effusion.", PTX, NEG, None),
    ("There is no pneumothorax on the left; small right effusion.", EFF, POS, R),
    ("No pneumothorax on the right. Left pneumothorax is unchanged.", PTX, POS, L),
    ("No pleural effusion, small right apical pneumothorax.", PTX, POS, R),
    # --- pneumothorax: uncertainty -------------------------------------------------------
    ("Possible small left apical pneumothorax.", PTX, UNC, L),
    ("A tiny right apical pneumothorax cannot be excluded.", PTX, UNC, R),
    ("Small pneumothorax is not excluded.", PTX, UNC, U),
    ("Questionable tiny left apical pneumothorax.", PTX, UNC, L),
    ("Suspected small right pneumothorax.", PTX, UNC, R),
    ("Lucency at the left apex may represent a small pneumothorax.", PTX, UNC, L),
    ("Likely small right pneumothorax.", PTX, UNC, R),
    ("Probable tiny left pneumothorax.", PTX, UNC, L),
    ("Findings suggestive of a small right pneumothorax.", PTX, UNC, R),
    ("Cannot exclude a small left pneumothorax.", PTX, UNC, L),
    ("There may be a tiny left apical pneumothorax.", PTX, UNC, L),
    ("A small pneumothorax may be present at the left apex.", PTX, UNC, L),
    ("A small pneumothorax is difficult to exclude on this supine film.", PTX, UNC, U),
    ("Deep sulcus sign on the left, concerning for pneumothorax.", PTX, UNC, L),
    (
        "Curvilinear lucency along the left lateral chest wall could represent a skin fold "
        "or a small pneumothorax.",
        PTX,
        UNC,
        L,
    ),
    # ambiguous: a limited evaluation is a question (the lexicon's v2 choice), not a finding
    ("Evaluation for pneumothorax is limited by patient rotation.", PTX, UNC, U),
    # --- pneumothorax: mimics ------------------------------------------------------------
    ("Skin fold projecting over the right hemithorax simulating pneumothorax.", PTX, NEG, None),
    (
        "Curvilinear line over the right hemithorax represents a skin fold, not a pneumothorax.",
        PTX,
        NEG,
        None,
    ),
    # ambiguous: "likely X rather than pneumothorax" could be read as -1
    ("Apical lucency likely represents a skin fold rather than pneumothorax.", PTX, NEG, None),
    ("Skin fold on the right; no pneumothorax.", PTX, NEG, None),
    # --- pneumothorax: after procedures --------------------------------------------------
    ("Status post right chest tube placement with no residual pneumothorax.", PTX, NEG, None),
    # ambiguous: the side of the pneumothorax is implied by the chest tube, not stated
    ("Right chest tube in place, tiny residual apical pneumothorax.", PTX, POS, R),
    ("Right chest tube in place with small residual right pneumothorax.", PTX, POS, R),
    ("Chest tube remains in place; small right pneumothorax is unchanged.", PTX, POS, R),
    ("Left chest tube has been removed. No pneumothorax.", PTX, NEG, None),
    (
        "Status post removal of the left chest tube with a small left apical pneumothorax.",
        PTX,
        POS,
        L,
    ),
    ("Following chest tube removal, there is a tiny left apical pneumothorax.", PTX, POS, L),
    (
        "Post-procedure radiograph after lung biopsy demonstrates a small right apical "
        "pneumothorax.",
        PTX,
        POS,
        R,
    ),
    ("Status post right thoracentesis without pneumothorax.", PTX, NEG, None),
    ("Small right pneumothorax following thoracentesis.", PTX, POS, R),
    ("Right IJ central line with tip in the SVC. No pneumothorax.", PTX, NEG, None),
    ("Left-sided PICC; small right pneumothorax.", PTX, POS, R),
    ("Pigtail catheter in the right pleural space; the pneumothorax has resolved.", PTX, NEG, None),
    # --- pleural effusion: positive, sizes and sides -------------------------------------
    ("Trace right pleural effusion.", EFF, POS, R),
    ("Small left pleural effusion.", EFF, POS, L),
    ("Moderate bilateral pleural effusions.", EFF, POS, B),
    ("Large right pleural effusion with associated compressive atelectasis.", EFF, POS, R),
    ("Small bilateral effusions.", EFF, POS, B),
    ("Small to moderate right pleural effusion.", EFF, POS, R),
    ("Moderate right and small left pleural effusions.", EFF, POS, B),
    ("Bilateral pleural effusions, left greater than right.", EFF, POS, B),
    ("Effusions are present bilaterally.", EFF, POS, B),
    ("Right-sided pleural effusion.", EFF, POS, R),
    ("Small effusion at the right base.", EFF, POS, R),
    ("Effusion on the left.", EFF, POS, L),
    ("Loculated right pleural effusion.", EFF, POS, R),
    ("Left pleural effusion is partially loculated.", EFF, POS, L),
    ("Loculated fluid in the right major fissure.", EFF, POS, R),
    ("Layering left pleural effusion.", EFF, POS, L),
    ("Layering bilateral effusions.", EFF, POS, B),
    ("Pleural fluid tracking along the right minor fissure.", EFF, POS, R),
    ("Small amount of fluid in the left pleural space.", EFF, POS, L),
    ("Small amount of pleural fluid is seen on the left.", EFF, POS, L),
    ("Fluid in the minor fissure.", EFF, POS, U),
    ("Small right subpulmonic effusion.", EFF, POS, R),
    ("Blunting of the left costophrenic angle consistent with a small effusion.", EFF, POS, L),
    ("Right pleural effusion, likely small.", EFF, POS, R),
    ("Right hydrothorax.", EFF, POS, R),
    ("Hemothorax on the right.", EFF, POS, R),  # ambiguous: blood in the pleural space
    ("Small left pleural effusion, no pneumothorax.", EFF, POS, L),
    ("Small left pleural effusion, no pneumothorax.", PTX, NEG, None),
    ("Right pleural effusion and adjacent atelectasis, without pneumothorax.", EFF, POS, R),
    ("No pneumothorax, but small left pleural effusion.", EFF, POS, L),
    ("No left pleural effusion. Small right pleural effusion.", EFF, POS, R),
    ("Pericardial and left pleural effusions.", EFF, POS, L),
    # --- pleural effusion: interval change -----------------------------------------------
    ("Decreased right pleural effusion.", EFF, POS, R),
    ("Increased small left pleural effusion.", EFF, POS, L),
    ("Unchanged small bilateral pleural effusions.", EFF, POS, B),
    ("Stable trace left pleural effusion.", EFF, POS, L),
    ("Persistent moderate right pleural effusion.", EFF, POS, R),
    ("Residual small left pleural effusion.", EFF, POS, L),
    ("Minimal residual left pleural effusion.", EFF, POS, L),
    ("Slightly smaller right pleural effusion.", EFF, POS, R),
    ("Interval decrease in size of the right pleural effusion.", EFF, POS, R),
    ("Right pleural effusion has decreased.", EFF, POS, R),
    ("The small left pleural effusion is not significantly changed.", EFF, POS, L),
    ("No change in small bilateral pleural effusions.", EFF, POS, B),
    ("Bilateral pleural effusions have improved.", EFF, POS, B),
    ("Pleural effusions have decreased bilaterally.", EFF, POS, B),
    ("Partial resolution of the right pleural effusion.", EFF, POS, R),
    ("Small left effusion has nearly resolved.", EFF, POS, L),  # ambiguous: trace remains
    ("Left hydropneumothorax has decreased.", EFF, POS, L),
    ("Interval resolution of the left pleural effusion.", EFF, NEG, None),
    ("The right pleural effusion has resolved.", EFF, NEG, None),
    ("Previously seen left pleural effusion is no longer seen.", EFF, NEG, None),
    (
        "Previously described left effusion has resolved, with residual pleural thickening.",
        EFF,
        NEG,
        None,
    ),
    (
        "Interval resolution of the right pleural effusion. "
        "Persistent small left pleural effusion.",
        EFF,
        POS,
        L,
    ),
    ("Status post left thoracentesis with decreased left pleural effusion.", EFF, POS, L),
    # --- pleural effusion: negation ------------------------------------------------------
    ("No pleural effusion.", EFF, NEG, None),
    ("No pleural effusions.", EFF, NEG, None),
    ("No effusion.", EFF, NEG, None),
    ("The lungs are clear without effusion.", EFF, NEG, None),
    ("No evidence of pleural effusion.", EFF, NEG, None),
    ("No definite pleural effusion.", EFF, NEG, None),
    ("Pleural effusion is not identified.", EFF, NEG, None),
    ("No pleural effusion is seen.", EFF, NEG, None),
    ("Pleural effusions are absent.", EFF, NEG, None),
    ("No large pleural effusion.", EFF, NEG, None),  # ambiguous: small one not addressed
    ("No new pleural effusion.", EFF, NEG, None),
    # ambiguous: the CheXpert labeler may leave these blank (no effusion word)
    ("The costophrenic angles are sharp.", EFF, NEG, None),
    ("Costophrenic angles are clear.", EFF, NEG, None),
    # --- pleural effusion: uncertainty ---------------------------------------------------
    ("Possible small left pleural effusion.", EFF, UNC, L),
    ("Small right pleural effusion cannot be excluded.", EFF, UNC, R),
    ("A small effusion is not excluded.", EFF, UNC, U),
    ("Left pleural effusion cannot be entirely excluded.", EFF, UNC, L),
    ("Questionable trace right pleural effusion.", EFF, UNC, R),
    ("Likely small bilateral pleural effusions.", EFF, UNC, B),
    ("Probable small left pleural effusion.", EFF, UNC, L),
    ("Suspected small left effusion.", EFF, UNC, L),
    ("Small left pleural effusion is suspected.", EFF, UNC, L),
    ("Small pleural effusions are possible.", EFF, UNC, U),
    ("Equivocal small right effusion.", EFF, UNC, R),
    ("Small right pleural effusion versus pleural thickening.", EFF, UNC, R),
    (
        "Blunting of the right costophrenic angle which may reflect a small effusion or "
        "pleural thickening.",
        EFF,
        UNC,
        R,
    ),
    ("Minimal blunting of the left costophrenic angle, likely a small effusion.", EFF, UNC, L),
    ("Hazy opacity at the right base may represent layering effusion.", EFF, UNC, R),
    ("Right basilar opacity, possibly a small effusion with atelectasis.", EFF, UNC, R),
    ("Left base opacity may reflect atelectasis, effusion, or pneumonia.", EFF, UNC, L),
    # ambiguous: "X and/or Y" is labelled as stated; the IU annotators code such findings
    # as present (development reports), and the CheXpert description does not say
    ("Left basilar atelectasis and/or small effusion.", EFF, POS, L),
    # ambiguous: 0 or -1, not 1; "unlikely" negates, as in NegEx's trigger list
    ("A pleural effusion is unlikely.", EFF, NEG, None),
    ("Opacity, unlikely to represent an effusion.", EFF, NEG, None),
    # --- pericardial effusion is not pleural effusion ------------------------------------
    ("Small pericardial effusion.", EFF, BLANK, None),
    ("Moderate pericardial effusion. No pleural effusion.", EFF, NEG, None),
    ("Enlarged cardiac silhouette may be due to pericardial effusion.", EFF, BLANK, None),
    ("Enlarged cardiac silhouette, possibly pericardial effusion.", EFF, BLANK, None),
    ("Cardiomegaly with small bilateral pleural effusions and pericardial effusion.", EFF, POS, B),
    ("Pericardial effusion versus cardiomegaly.", EFF, BLANK, None),
    ("Pericardial effusion versus cardiomegaly.", CM, UNC, None),
    # --- cardiomegaly --------------------------------------------------------------------
    ("The heart is enlarged.", CM, POS, None),
    ("Cardiac silhouette is mildly enlarged.", CM, POS, None),
    ("The cardiac silhouette is enlarged.", CM, POS, None),
    ("Moderate cardiomegaly.", CM, POS, None),
    ("Marked cardiomegaly.", CM, POS, None),
    ("Stable cardiomegaly.", CM, POS, None),
    ("Mild cardiomegaly is unchanged.", CM, POS, None),
    ("Unchanged mild cardiomegaly.", CM, POS, None),
    ("Heart size remains enlarged.", CM, POS, None),
    ("Heart size is mildly enlarged but stable.", CM, POS, None),
    ("Mild enlargement of the cardiac silhouette.", CM, POS, None),
    ("Moderately enlarged cardiac silhouette is unchanged.", CM, POS, None),
    ("Cardiomegaly is not significantly changed.", CM, POS, None),
    ("Enlarged heart with a left-sided pacemaker.", CM, POS, None),
    ("Cardiac silhouette is enlarged, likely cardiomegaly or pericardial effusion.", CM, POS, None),
    ("The heart is mildly enlarged, and there are small bilateral effusions.", CM, POS, None),
    ("The heart is mildly enlarged, and there are small bilateral effusions.", EFF, POS, B),
    # ambiguous: the enlargement is stated; its cause (pericardial fluid) is hedged
    ("Enlarged cardiac silhouette may be due to pericardial effusion.", CM, POS, None),
    ("Cardiomegaly is stable and the right pleural effusion has resolved.", CM, POS, None),
    ("Cardiomegaly is stable and the right pleural effusion has resolved.", EFF, NEG, None),
    ("Heart size is normal.", CM, NEG, None),
    ("Heart size normal.", CM, NEG, None),
    ("Normal heart size.", CM, NEG, None),
    ("The heart is normal in size.", CM, NEG, None),
    ("Heart size is within normal limits.", CM, NEG, None),
    ("Heart size is top normal.", CM, NEG, None),
    ("The heart size is at the upper limits of normal.", CM, NEG, None),
    ("The heart is not enlarged.", CM, NEG, None),
    ("No cardiomegaly.", CM, NEG, None),
    ("No evidence of cardiomegaly.", CM, NEG, None),
    ("Normal cardiac silhouette.", CM, NEG, None),
    ("Cardiac and mediastinal contours are normal.", CM, NEG, None),
    # the CheXpert observations read "cardiomediastinal" as Enlarged Cardiomediastinum;
    # Cardiomegaly stays blank (blank and 0 count alike in clinical F1)
    ("Cardiomediastinal silhouette is within normal limits.", EC, NEG, None),
    ("Cardiomediastinal silhouette is within normal limits.", CM, BLANK, None),
    ("Heart size is normal. Small bilateral pleural effusions.", CM, NEG, None),
    ("Heart size is normal. Small bilateral pleural effusions.", EFF, POS, B),
    ("Borderline cardiomegaly.", CM, UNC, None),
    ("Possible mild cardiomegaly.", CM, UNC, None),
    ("Cardiomegaly cannot be excluded given AP technique.", CM, UNC, None),
    ("Cardiac enlargement is likely.", CM, UNC, None),
    ("The cardiac silhouette is mildly prominent.", CM, UNC, None),  # ambiguous: hedged size
]

_SHORT = {PTX: "PTX", EFF: "EFF", CM: "CM", EC: "EC"}

# Phrasings this labeler is known to get wrong (docs/labeler.md, Limits). Strict xfail:
# a change that fixes one fails here, so the list and the docs get updated.
KNOWN_LIMITS: dict[tuple[str, str], str] = {
    ("No pleural effusion, small right apical pneumothorax.", PTX): (
        "a comma does not end a negation's scope: the common 'no focal consolidation, "
        "large effusion, or pneumothorax' needs it to run on"
    ),
    ("Right chest tube in place, tiny residual apical pneumothorax.", PTX): (
        "the side is the tube's, a Support Devices mention; sides pass only between the "
        "six lateral observations"
    ),
    ("Enlarged cardiac silhouette may be due to pericardial effusion.", CM): (
        "a post trigger ('may be') covers back to the sentence start"
    ),
    ("Cardiomegaly is stable and the right pleural effusion has resolved.", CM): (
        "'and' does not end a post trigger's scope ('consolidation and atelectasis have "
        "resolved' needs both negated)"
    ),
}


def _case_id(case: tuple[str, str, float, str | None]) -> str:
    text, obs, label, side = case
    value = "blank" if math.isnan(label) else f"{label:g}"
    where = f"/{side}" if side not in (None, ANY) else ""
    return f"{_SHORT[obs]}={value}{where}: {text}"


_IDS = [_case_id(c) for c in CASES]
assert len(set(_IDS)) == len(_IDS), "duplicate phrasing cases"


def _param(case: tuple[str, str, float, str | None]):
    reason = KNOWN_LIMITS.get(case[:2])
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(*case, id=_case_id(case), marks=marks)


@pytest.mark.parametrize(("text", "observation", "label", "side"), [_param(c) for c in CASES])
def test_phrasing(text: str, observation: str, label: float, side: str | None):
    out = label_report(text)
    got = out[observation]
    if math.isnan(label):
        assert math.isnan(got), f"{observation}: expected blank, got {got}"
    else:
        assert got == label, f"{observation}: expected {label}, got {got}"
    if observation in LATERAL_OBSERVATIONS and side != ANY:
        got_side = out[laterality_column(observation)]
        assert got_side == side, f"{observation} laterality: expected {side}, got {got_side}"
