"""The settings of the per-layer priors (:class:`PriorConfig`), without torch.

Configs (:mod:`cxrlib.training.config`) and the CLI read them cheaply; the maths that
uses them is :mod:`cxrlib.anatomy.priors` (see its docstring for the schedules).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from numbers import Integral

from cxrlib.base.cache import cache_key
from cxrlib.base.errors import CxrError
from cxrlib.base.vocabulary import PRIOR_PADDINGS, PRIOR_SCHEDULES, PRIOR_STRUCTURES

PRIORS_VERSION = 2
"""Bumped whenever the computation changes, so caches written before are not read
(2: sigmas as fractions of the image side, issue 25)."""


def patch_grid(image_size: int, patch_size: int) -> int:
    """Side of the encoder's patch grid: ``image_size // patch_size``.

    Parameters
    ----------
    image_size : int
        Side of the (square) encoder input in pixels, e.g. 224 or 512.
    patch_size : int
        Side of one patch in pixels, e.g. 16.

    Returns
    -------
    int
        Patches per side (224/16 -> 14, 512/16 -> 32).

    Raises
    ------
    CxrError
        When either is not a positive integer or ``image_size`` is not a multiple of
        ``patch_size``.
    """
    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
            raise CxrError(f"{name} must be a positive integer, got {value!r}")
    if image_size % patch_size:
        raise CxrError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    return int(image_size // patch_size)


@dataclass(frozen=True)
class PriorConfig:
    """Every setting that decides the priors' values (see :mod:`cxrlib.anatomy.priors`).

    Sigmas are fractions of the image side (1 = the whole side), the same priors in
    image space on any patch grid; :func:`schedule` gives them in patches.
    """

    structures: tuple[str, ...] = ("lungs", "heart")  # union of these, from PRIOR_STRUCTURES
    schedule: str = "linear"  # thesis | linear | constant | none
    num_layers: int = 12  # decoder layers L: one prior per layer (GPT-2 small: 12)
    image_size: int = 224  # encoder input side in px (published: 512)
    patch_size: int = 16  # encoder patch side in px (DINOv3 ViT-S/16)
    # linear: sigma of layer 0 and of the last layer, as fractions of the image side
    # (= thesis layers 0 and 11 for L=12: 13/3 and 2/3 patches of the 32-patch grid)
    sigma_start: float = 13 / 96
    sigma_end: float = 1 / 48
    sigma: float = 1 / 16  # constant: every layer's sigma, a fraction of the image side
    padding: str = "reflect"  # reflect | replicate | zeros (blur border handling)

    def __post_init__(self) -> None:
        structures = self.structures
        if isinstance(structures, str):
            structures = tuple(s.strip() for s in structures.split(",") if s.strip())
        structures = tuple(dict.fromkeys(structures))  # drop repeats, keep order
        if not structures:
            raise CxrError("structures must name at least one structure")
        unknown = [s for s in structures if s not in PRIOR_STRUCTURES]
        if unknown:
            raise CxrError(
                f"structures: unknown {', '.join(map(repr, unknown))} "
                f"(choose from {', '.join(PRIOR_STRUCTURES)})"
            )
        object.__setattr__(self, "structures", structures)
        if self.schedule not in PRIOR_SCHEDULES:
            raise CxrError(
                f"schedule must be one of {', '.join(PRIOR_SCHEDULES)}, got {self.schedule!r}"
            )
        if self.padding not in PRIOR_PADDINGS:
            choices = ", ".join(PRIOR_PADDINGS)
            raise CxrError(f"padding must be one of {choices}, got {self.padding!r}")
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int):
            raise CxrError(f"num_layers must be a positive integer, got {self.num_layers!r}")
        if self.num_layers < 1:
            raise CxrError(f"num_layers must be a positive integer, got {self.num_layers!r}")
        patch_grid(self.image_size, self.patch_size)
        for name in ("sigma_start", "sigma_end", "sigma"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise CxrError(f"{name} must be a positive finite number, got {value!r}")
            if value > 1:
                raise CxrError(
                    f"{name} is a fraction of the image side (in (0, 1]; the published "
                    f"layer 0 is 13/96 = 0.135), got {value!r}: sigmas in patches are "
                    f"{name} x the grid (before priors version 2 they were in patches)"
                )

    @property
    def grid(self) -> int:
        """Patches per side, :func:`patch_grid` of ``image_size`` and ``patch_size``."""
        return patch_grid(self.image_size, self.patch_size)

    @property
    def num_patches(self) -> int:
        """``P = grid * grid``, the length of one layer's prior."""
        return self.grid**2

    def to_dict(self) -> dict:
        """Every field as JSON-ready values (``structures`` as a list)."""
        d = asdict(self)
        d["structures"] = list(self.structures)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> PriorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        known = {f for f in cls.__dataclass_fields__}
        extra = sorted(set(d) - known)
        if extra:
            raise CxrError(f"unknown PriorConfig key(s): {', '.join(extra)}")
        d = dict(d)
        if "structures" in d:
            d["structures"] = tuple(d["structures"])
        return cls(**d)

    def value_settings(self) -> dict:
        """The settings the priors' values depend on, and nothing else.

        Structures are sorted (their union does not depend on order), the grid stands
        for image and patch size (224/16 and 448/32 give the same priors), and sigmas
        appear only for the schedules that use them.
        """
        d: dict = {
            "priors_version": PRIORS_VERSION,
            "structures": sorted(self.structures),
            "schedule": self.schedule,
            "num_layers": self.num_layers,
            "grid": self.grid,
        }
        if self.schedule != "none":
            d["padding"] = self.padding
        if self.schedule == "linear":
            d["sigma_start"] = float(self.sigma_start)
            d["sigma_end"] = float(self.sigma_end)
        elif self.schedule == "constant":
            d["sigma"] = float(self.sigma)
        return d

    def cache_key(self) -> str:
        """sha256 (64 hex digits) of :meth:`value_settings` as canonical JSON.

        Equal keys mean equal priors for equal masks; any change of a setting that
        affects values, or of :data:`PRIORS_VERSION`, changes the key.
        """
        return cache_key(self.value_settings())
