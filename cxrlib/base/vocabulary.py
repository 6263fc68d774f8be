"""The words of the project, each defined once: every other module imports them here.

Plain tuples and mappings in a module that imports nothing, so configs and the CLI read
them without loading torch. ``tests/test_vocabulary.py`` fails when a second definition
appears in the package or the notebooks.
"""

from __future__ import annotations

MODES: tuple[str, ...] = ("none", "soft", "strict")
"""Anatomical attention modes: no prior, prior as a soft bias, prior as a hard mask."""

PROFILES: tuple[str, ...] = ("smoke", "default", "full")
"""Profile names: the keys of :data:`cxrlib.training.config.PROFILES`."""

MASK_SOURCES: tuple[str, ...] = ("auto", "manifest", "segmenter", "none")
"""Where masks come from; ``auto`` tries the others in this order (``none``: uniform)."""

PRIOR_STRUCTURES: tuple[str, ...] = ("left_lung", "right_lung", "lungs", "heart")
"""Structures a prior can be built from; ``lungs`` is the union of both lungs."""

PRIOR_SCHEDULES: tuple[str, ...] = ("thesis", "linear", "constant", "none")
"""How the prior's blur changes over the decoder layers (:mod:`cxrlib.anatomy.priors`)."""

PRIOR_PADDINGS: tuple[str, ...] = ("reflect", "replicate", "zeros")
"""Border handling of the prior's blur."""

PHANTOM_LAYOUTS: tuple[str, ...] = ("manifest", "mimic-cxr-jpg", "chexpert-plus")
"""How ``cxr phantom`` lays out its files: its own folder with ``manifest.csv`` (the
default), or a real release's layout (:mod:`cxrlib.data.phantom.layouts`)."""

LATERAL_OBSERVATIONS: tuple[str, ...] = (
    "Lung Opacity",
    "Lung Lesion",
    "Consolidation",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
)
"""Observations the labeler gives a side (laterality column), in the CheXpert order."""

PHANTOM_ATTRIBUTES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Pleural Effusion": ("effusion", ("side", "size")),
    "Pneumothorax": ("pneumothorax", ("side", "size")),
    "Consolidation": ("consolidation", ("side", "zone")),
    "Atelectasis": ("atelectasis", ("side", "zone")),
    "Lung Opacity": ("opacity", ("side", "zone")),
    "Lung Lesion": ("lesion", ("side", "zone", "size", "kind")),
    "Fracture": ("fracture", ("side", "zone")),
    "Pleural Other": ("pleural_other", ("side", "zone")),
    "Cardiomegaly": ("cardiomegaly", ("size",)),
    "Edema": ("edema", ("size",)),
}
"""The phantom manifest's attribute columns per observation: ``<prefix>_<attribute>``,
in manifest order."""


def phantom_column(observation: str, attribute: str) -> str:
    """The phantom manifest column of ``observation``'s ``attribute``: ``effusion_side``."""
    return f"{PHANTOM_ATTRIBUTES[observation][0]}_{attribute}"


PHANTOM_SIDE_COLUMNS: dict[str, str] = {
    phantom_column(obs, "side"): obs
    for obs, (_, attrs) in PHANTOM_ATTRIBUTES.items()
    if "side" in attrs
}
"""Phantom side column -> the finding drawn on that side (every sided finding)."""

SIDE_COLUMNS: dict[str, str] = {
    obs: column for column, obs in PHANTOM_SIDE_COLUMNS.items() if obs in LATERAL_OBSERVATIONS
}
"""Lateral observation (:data:`LATERAL_OBSERVATIONS`) -> the phantom column with its
drawn side, in the phantom's column order."""
