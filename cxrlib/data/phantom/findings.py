"""What a phantom study shows: findings with attributes, sampled at realistic prevalence.

A :class:`PhantomStudy` is the single source of truth of one synthetic study. The
renderer draws it, :func:`labels` turns it into CheXpert values and the text module
writes its Findings from it, so image, labels and text agree by construction.

Sides are the **patient's**: the patient's left is the image's right.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cxrlib.base.vocabulary import PHANTOM_ATTRIBUTES
from cxrlib.data.manifest import CHEXPERT_LABELS

SIDES = ("left", "right")
ZONES = ("upper", "middle", "lower")
EFFUSION_SIZES = ("small", "moderate", "large")
PNEUMOTHORAX_SIZES = ("small", "moderate", "large")
DEVICE_KINDS = (
    "endotracheal tube",
    "enteric tube",
    "central venous catheter",
    "pacemaker",
)

PRESENT = "present"  # CheXpert 1: drawn clearly, stated plainly
POSSIBLE = "possible"  # CheXpert -1: drawn subtly, stated with a hedge

# Prevalence per study, roughly that of MIMIC-CXR/CheXpert frontal studies, with the
# rarest findings raised to 3% so that a few hundred studies contain every finding.
NORMAL_FRACTION = 0.32
PREVALENCE: dict[str, float] = {
    "Support Devices": 0.28,
    "Pleural Effusion": 0.24,
    "Lung Opacity": 0.20,
    "Atelectasis": 0.20,
    "Cardiomegaly": 0.19,
    "Edema": 0.12,
    "Consolidation": 0.06,
    "Pneumothorax": 0.05,
    "Enlarged Cardiomediastinum": 0.04,
    "Lung Lesion": 0.04,
    "Fracture": 0.03,
    "Pleural Other": 0.03,
}
# Fraction of drawn findings that are subtle and reported with a hedge (CheXpert -1).
POSSIBLE_FRACTION = 0.12
# Observations that can be subtle (devices, fractures of the drawn kind are never hedged).
HEDGEABLE = (
    "Pleural Effusion",
    "Lung Opacity",
    "Atelectasis",
    "Cardiomegaly",
    "Edema",
    "Consolidation",
    "Pneumothorax",
    "Lung Lesion",
)
# Pertinent negatives a radiologist commonly states, with how often.
NEGATIVE_RATES: dict[str, float] = {
    "Pneumothorax": 0.75,
    "Pleural Effusion": 0.7,
    "Consolidation": 0.55,
    "Cardiomegaly": 0.6,
    "Edema": 0.3,
    "Enlarged Cardiomediastinum": 0.25,
    "Fracture": 0.15,
    "Lung Opacity": 0.1,
}


@dataclass(frozen=True)
class Finding:
    """One abnormality of a study.

    Attributes
    ----------
    observation : str
        A CheXpert observation name (not ``"No Finding"``).
    certainty : str
        ``"present"`` (label 1) or ``"possible"`` (label -1: subtle, hedged).
    side : str or None
        Patient's ``"left"``, ``"right"`` or ``"bilateral"``.
    size : str or None
        ``small|moderate|large`` (effusion, pneumothorax), ``mild|moderate|severe``
        (cardiomegaly, edema), ``"<d> cm"`` (lung lesion).
    zone : str or None
        ``upper|middle|lower`` lung zone.
    kind : str or None
        Lesion kind (``nodule|mass``), device kind (:data:`DEVICE_KINDS`), or
        ``"pleural thickening"``.
    """

    observation: str
    certainty: str = PRESENT
    side: str | None = None
    size: str | None = None
    zone: str | None = None
    kind: str | None = None

    @property
    def label(self) -> float:
        return 1.0 if self.certainty == PRESENT else -1.0


@dataclass(frozen=True)
class PhantomStudy:
    """Everything drawn and written for one synthetic study.

    ``findings`` are the abnormalities; ``negatives`` the observations the report states
    as absent (CheXpert 0); ``ctr`` the target cardiothoracic ratio the heart is drawn
    with (the manifest stores the ratio measured on the drawn masks);
    ``pneumonia`` is ``"possible"`` when the report hedges that an airspace opacity may
    be pneumonia (CheXpert -1), else None.
    """

    study_id: str
    findings: tuple[Finding, ...]
    negatives: tuple[str, ...]
    ctr: float
    pneumonia: str | None = None
    anatomy_seed: int = 0
    extra: dict = field(default_factory=dict)

    def of(self, observation: str) -> list[Finding]:
        """Findings of one observation (several for devices; one otherwise)."""
        return [f for f in self.findings if f.observation == observation]

    @property
    def is_normal(self) -> bool:
        return not any(f.observation != "Support Devices" for f in self.findings)


def labels(study: PhantomStudy) -> dict[str, float]:
    """The 14 CheXpert values of a study: 1, 0, -1, or NaN (blank, not mentioned).

    Aggregation follows the CheXpert labeler: a positive mention wins over an uncertain
    one; an observation stated absent is 0; ``No Finding`` is 1 only when no observation
    other than Support Devices is positive or uncertain, else blank.
    """
    out = {name: float("nan") for name in CHEXPERT_LABELS}
    for name in study.negatives:
        out[name] = 0.0
    for f in study.findings:
        current = out[f.observation]
        out[f.observation] = 1.0 if 1.0 in (current, f.label) else f.label  # positive wins
    if study.pneumonia == POSSIBLE:
        out["Pneumonia"] = -1.0
    abnormal = any(
        out[n] in (1.0, -1.0) for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")
    )
    out["No Finding"] = float("nan") if abnormal else 1.0
    return out


def _cardio_ctr(rng: np.random.Generator, enlarged: bool) -> tuple[float, str | None]:
    if not enlarged:
        return float(rng.uniform(0.38, 0.47)), None
    ctr = float(rng.uniform(0.54, 0.68))
    severity = "mild" if ctr < 0.57 else "moderate" if ctr < 0.62 else "severe"
    return ctr, severity


def sample_study(study_id: str, rng: np.random.Generator) -> PhantomStudy:
    """Draw the findings of one study.

    About :data:`NORMAL_FRACTION` of studies are normal (devices allowed); the others
    draw each observation with its prevalence rescaled to the abnormal studies, with
    clinical co-occurrence (edema raises effusion and cardiomegaly, consolidation
    raises pneumonia wording), and at least one abnormality.
    """
    chosen = _choose_observations(rng)
    draw = _Draw(rng)
    ctr, severity = _cardio_ctr(rng, "Cardiomegaly" in chosen)
    findings: list[Finding] = []
    pneumonia = None
    for name in PREVALENCE:  # fixed order: determinism does not depend on set order
        if name not in chosen:
            continue
        if name == "Cardiomegaly":
            c = draw.certainty(name)
            if c == POSSIBLE:  # borderline heart: drawn just above 0.5
                ctr, severity = float(rng.uniform(0.51, 0.535)), "mild"
            findings.append(Finding(name, c, size=severity))
            continue
        findings += _FINDING_SAMPLERS[name](draw, name)
        if name == "Consolidation" and rng.random() < 0.35:
            pneumonia = POSSIBLE
    stated = {f.observation for f in findings}
    negatives = tuple(
        name for name, p in NEGATIVE_RATES.items() if name not in stated and rng.random() < p
    )
    return PhantomStudy(
        study_id=study_id,
        findings=tuple(findings),
        negatives=negatives,
        ctr=ctr,
        pneumonia=pneumonia,
        anatomy_seed=int(rng.integers(2**31)),
    )


def _choose_observations(rng: np.random.Generator) -> set[str]:
    """The observations a study has (none for a normal study, devices aside)."""
    chosen: set[str] = set()
    if rng.random() >= NORMAL_FRACTION:
        scale = 1.0 / (1.0 - NORMAL_FRACTION)
        for name, p in PREVALENCE.items():
            if name == "Support Devices":
                continue
            if rng.random() < min(0.9, p * scale):
                chosen.add(name)
        if "Edema" in chosen:
            if rng.random() < 0.5:
                chosen.add("Pleural Effusion")
            if rng.random() < 0.4:
                chosen.add("Cardiomegaly")
        if not chosen:
            names = [n for n in PREVALENCE if n != "Support Devices"]
            weights = np.array([PREVALENCE[n] for n in names])
            chosen.add(names[int(rng.choice(len(names), p=weights / weights.sum()))])
    if rng.random() < PREVALENCE["Support Devices"]:
        chosen.add("Support Devices")
    return chosen


class _Draw:
    """The draws every finding sampler shares, from the study's stream."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def certainty(self, name: str) -> str:
        if name in HEDGEABLE and self.rng.random() < POSSIBLE_FRACTION:
            return POSSIBLE
        return PRESENT

    def side(self, p_bilateral: float = 0.0) -> str:
        if self.rng.random() < p_bilateral:
            return "bilateral"
        return SIDES[int(self.rng.integers(2))]

    def of(self, options: tuple[str, ...], p: list[float]) -> str:
        return options[int(self.rng.choice(len(options), p=p))]


def _effusion(d: _Draw, name: str) -> list[Finding]:
    c = d.certainty(name)
    size = "small" if c == POSSIBLE else d.of(EFFUSION_SIZES, [0.5, 0.35, 0.15])
    return [Finding(name, c, side=d.side(0.35), size=size)]


def _pneumothorax(d: _Draw, name: str) -> list[Finding]:
    c = d.certainty(name)
    size = "small" if c == POSSIBLE else d.of(PNEUMOTHORAX_SIZES, [0.55, 0.3, 0.15])
    return [Finding(name, c, side=d.side(), size=size)]


def _airspace(d: _Draw, name: str) -> list[Finding]:
    zone = d.of(ZONES, [0.25, 0.3, 0.45])
    return [Finding(name, d.certainty(name), side=d.side(0.15), zone=zone)]


def _atelectasis(d: _Draw, name: str) -> list[Finding]:
    zone = "lower" if d.rng.random() < 0.8 else "middle"
    return [Finding(name, d.certainty(name), side=d.side(0.3), zone=zone)]


def _edema(d: _Draw, name: str) -> list[Finding]:
    c = d.certainty(name)
    sev = "mild" if c == POSSIBLE else d.of(("mild", "moderate", "severe"), [0.45, 0.4, 0.15])
    return [Finding(name, c, side="bilateral", size=sev)]


def _lesion(d: _Draw, name: str) -> list[Finding]:
    kind = "nodule" if d.rng.random() < 0.75 else "mass"
    cm = d.rng.uniform(0.8, 2.8) if kind == "nodule" else d.rng.uniform(3.2, 6.0)
    zone = ZONES[int(d.rng.integers(3))]
    c = d.certainty(name)
    return [Finding(name, c, side=d.side(), size=f"{cm:.1f} cm", zone=zone, kind=kind)]


def _enlarged_cardiomediastinum(d: _Draw, name: str) -> list[Finding]:
    return [Finding(name, PRESENT)]


def _fracture(d: _Draw, name: str) -> list[Finding]:
    zone = d.of(ZONES, [0.2, 0.5, 0.3])
    return [Finding(name, PRESENT, side=d.side(), zone=zone, kind="rib")]


def _pleural_other(d: _Draw, name: str) -> list[Finding]:
    zone = "upper" if d.rng.random() < 0.5 else "lower"
    return [Finding(name, PRESENT, side=d.side(0.2), zone=zone, kind="pleural thickening")]


def _devices(d: _Draw, name: str) -> list[Finding]:
    rng = d.rng
    n_dev = 1 + int(rng.random() < 0.4) + int(rng.random() < 0.15)
    kinds = rng.choice(len(DEVICE_KINDS), size=n_dev, replace=False, p=[0.35, 0.3, 0.25, 0.1])
    out = []
    for k in sorted(int(i) for i in kinds):
        sided = DEVICE_KINDS[k] in ("central venous catheter", "pacemaker")
        out.append(Finding(name, PRESENT, side=d.side() if sided else None, kind=DEVICE_KINDS[k]))
    return out


# Each observation's sampler (Cardiomegaly is drawn in sample_study: it sets the CTR).
_FINDING_SAMPLERS = {
    "Pleural Effusion": _effusion,
    "Pneumothorax": _pneumothorax,
    "Consolidation": _airspace,
    "Lung Opacity": _airspace,
    "Atelectasis": _atelectasis,
    "Edema": _edema,
    "Lung Lesion": _lesion,
    "Enlarged Cardiomediastinum": _enlarged_cardiomediastinum,
    "Fracture": _fracture,
    "Pleural Other": _pleural_other,
    "Support Devices": _devices,
}


def attribute_columns() -> list[str]:
    """Names of the phantom's attribute columns, in manifest order."""
    cols = [f"{key}_{attr}" for key, attrs in PHANTOM_ATTRIBUTES.values() for attr in attrs]
    return cols + ["devices"]


def attributes(study: PhantomStudy) -> dict[str, str]:
    """Attribute cells of a study (blank where the observation is absent).

    ``devices`` lists device kinds joined by ``;`` (with side, e.g.
    ``central venous catheter (right)``).
    """
    out = dict.fromkeys(attribute_columns(), "")
    for f in study.findings:
        if f.observation not in PHANTOM_ATTRIBUTES:
            continue
        key, attrs = PHANTOM_ATTRIBUTES[f.observation]
        for attr in attrs:
            value = getattr(f, attr)
            if value is not None:
                out[f"{key}_{attr}"] = value
    devices = [
        f.kind + (f" ({f.side})" if f.side else "") for f in study.of("Support Devices") if f.kind
    ]
    out["devices"] = ";".join(devices)
    return out
