"""Draw a phantom study: a frontal chest radiograph and its exact organ masks.

The image is built as an attenuation map ``A`` (bright = dense) on a canonical canvas
whose coordinates are ``u`` (left to right of the image) and ``v`` (top to bottom),
both in [-1, 1]. Canonical rows and columns are independent, so most structures are
1-D curves broadcast over the canvas, which keeps a 256x256 image at a few ms. The
acquisition (rotation, scale, shift) is one affine map applied to the attenuation map
and to the outlines of the organs (filled again after the map), so masks stay exact to
the drawn anatomy. Blur, noise and exposure come last.

Every drawn finding also leaves its **region** (:data:`REGION_RULES`): the pixels where
it was drawn, collected on the canvas while drawing (no random draw of its own, so the
image does not depend on it) and mapped through the same affine map (bilinear,
threshold 0.5).

The patient's right lung is on the image's left (``u < 0``); the heart sits to the
patient's left (image right).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from cxrlib.base.masks import cardiothoracic_ratio
from cxrlib.data.manifest import CHEXPERT_LABELS
from cxrlib.data.phantom.findings import POSSIBLE, Finding, PhantomStudy

ORGANS = ("left_lung", "right_lung", "heart")

REGION_RULES: dict[str, str] = {
    "Pleural Effusion": "the fluid (any density) inside the lung",
    "Pneumothorax": "the air rim between the pleural line and the chest wall",
    "Consolidation": "the dense part of the blob (at least half its density) inside the lung",
    "Lung Opacity": "the blob above half its peak inside the lung",
    "Atelectasis": "the band, its full width, inside the lung",
    "Edema": "the perihilar haze above half its peak inside the lungs",
    "Lung Lesion": "the disc (radius r)",
    "Fracture": "the rib within 0.06 (canonical units) of its curve, over the break and step",
    "Pleural Other": "the thickened pleural strip",
}
"""Where each drawn finding's region is (:attr:`Rendered.regions`); other observations
(cardiomegaly, enlarged cardiomediastinum, devices, pneumonia) have none."""


@dataclass
class Rendered:
    """One drawn study.

    ``image``: uint8 (S, S); ``masks``: bool (S, S) per organ in :data:`ORGANS`
    (patient's left/right); ``ctr``: CTR measured on the drawn masks; ``regions``: bool
    (S, S) per drawn finding that has a region (:data:`REGION_RULES`; observation name
    -> pixels it covers, both sides of a bilateral finding together; a region too small
    to cover a pixel after the acquisition map is left out).
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    ctr: float
    regions: dict[str, np.ndarray] = field(default_factory=dict)

    def region_bits(self) -> np.ndarray:
        """The regions as one uint16 (S, S) image: bit ``k`` is set where the region of
        ``CHEXPERT_LABELS[k]`` covers the pixel."""
        bits = np.zeros(self.image.shape, dtype=np.uint16)
        for name, region in self.regions.items():
            bits |= region.astype(np.uint16) << np.uint16(CHEXPERT_LABELS.index(name))
        return bits


@dataclass
class Anatomy:
    """Per-patient geometry in canonical units (see module docstring)."""

    half_width: float  # lateral lung edge |u| at its widest
    apex_v: float  # lung apex height
    base_v: float  # costophrenic angle height (patient's right)
    left_drop: float  # patient's left hemidiaphragm lies this much lower
    dome: float  # diaphragm dome height above the costophrenic line
    medial_u: float  # |u| of the lungs' medial borders
    heart_cy: float  # heart centre height
    heart_b: float  # heart vertical semi-axis
    heart_shift: float  # heart centre offset toward the patient's left
    mediastinum: float  # half-width of the upper mediastinum
    rib_gap: float  # vertical spacing of the posterior ribs
    rib_phase: float
    rotation: float  # degrees
    scale: float
    shift: tuple[float, float]
    gain: float
    gamma: float
    noise: float
    blur: float


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Patient and acquisition variation."""
    return Anatomy(
        half_width=rng.uniform(0.70, 0.80),
        apex_v=rng.uniform(-0.80, -0.68),
        base_v=rng.uniform(0.38, 0.52),
        left_drop=rng.uniform(0.01, 0.06),
        dome=rng.uniform(0.08, 0.16),
        medial_u=rng.uniform(0.07, 0.10),
        heart_cy=rng.uniform(0.16, 0.24),
        heart_b=rng.uniform(0.20, 0.25),
        heart_shift=rng.uniform(0.06, 0.12),
        mediastinum=rng.uniform(0.09, 0.12),
        rib_gap=rng.uniform(0.115, 0.135),
        rib_phase=rng.uniform(0.0, 0.03),
        rotation=rng.uniform(-3.0, 3.0),
        scale=rng.uniform(0.93, 1.03),
        shift=(rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)),
        gain=rng.uniform(0.9, 1.1),
        gamma=rng.uniform(0.85, 1.2),
        noise=rng.uniform(0.008, 0.025),
        blur=rng.uniform(0.4, 1.0),
    )


# --- geometry -----------------------------------------------------------------------------


def _lung_outline(a: Anatomy, sign: int, medial_extra: float, base_raise: float) -> np.ndarray:
    """Closed outline of one lung, (N, 2) as (u, v); ``sign`` -1 image-left, +1 image-right.

    Lateral border: a quarter ellipse from the apex to the costophrenic angle.
    Diaphragm: a dome from the angle to the cardiophrenic angle. Medial border: a gentle
    curve back up to the apex.
    """
    drop = a.left_drop if sign > 0 else 0.0
    apex_u = sign * (a.medial_u + 0.2)
    base_v = a.base_v + drop - base_raise
    lat_u = sign * a.half_width
    med_u = sign * (a.medial_u + medial_extra)
    phi = np.linspace(0.0, np.pi / 2, 40)
    lateral = np.stack(
        [
            apex_u + (lat_u - apex_u) * np.sin(phi) ** 0.55,
            base_v - (base_v - a.apex_v) * np.cos(phi),
        ],
        1,
    )
    s = np.linspace(0.0, 1.0, 30)[1:]
    med_base_v = base_v - 0.04
    dome = np.stack(
        [
            lat_u + (med_u - lat_u) * s,
            base_v + (med_base_v - base_v) * s - a.dome * np.sin(np.pi * s) ** 0.7,
        ],
        1,
    )
    t = np.linspace(0.0, 1.0, 30)[1:-1]
    # medial border: from the cardiophrenic angle up to the apex, bowing slightly outward
    mv = med_base_v + (a.apex_v + 0.06 - med_base_v) * t
    mu = med_u + (apex_u - med_u) * t**4 + sign * 0.02 * np.sin(np.pi * t)
    medial = np.stack([mu, mv], 1)
    outline = np.concatenate([lateral, dome, medial], 0)
    # round the apex: circular moving average over the top of the outline
    smooth = ndimage.uniform_filter1d(outline, 13, axis=0, mode="wrap")
    top = outline[:, 1] < a.apex_v + 0.15
    outline[top] = smooth[top]
    return outline


def _heart_outline(a: Anatomy, half_width: float) -> np.ndarray:
    """Heart silhouette: a tilted ellipse with a flat base on the diaphragm, (N, 2)."""
    theta = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    tilt = np.deg2rad(22.0)
    b = a.heart_b
    # choose the ellipse's a so that its horizontal extent is 2 * half_width
    ax = np.sqrt(max(half_width**2 - (b * np.sin(tilt)) ** 2, 1e-4)) / abs(np.cos(tilt))
    x, y = ax * np.cos(theta), b * np.sin(theta)
    u = a.heart_shift + x * np.cos(tilt) - y * np.sin(tilt)
    v = a.heart_cy + x * np.sin(tilt) + y * np.cos(tilt)
    floor = a.base_v + a.left_drop * 0.5 - 0.02
    return np.stack([u, np.minimum(v, floor)], 1)


def _to_px(points: np.ndarray, size: int, inverse: np.ndarray | None = None) -> list:
    """Canonical (u, v) points to PIL (x, y) pixel coordinates.

    ``inverse`` (3x3, homogeneous, acting on (row, col)) maps canvas pixels to output
    pixels: the acquisition's forward map.
    """
    xy = (points + 1.0) * (size / 2.0) - 0.5
    if inverse is not None:
        rc = np.stack([xy[:, 1], xy[:, 0], np.ones(len(xy))])
        out = inverse @ rc
        xy = np.stack([out[1], out[0]], 1)
    return [tuple(p) for p in xy.tolist()]


def _fill(points: np.ndarray, size: int, inverse: np.ndarray | None = None) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon(_to_px(points, size, inverse), fill=1)
    return np.asarray(img, dtype=bool)


def _band(dist: np.ndarray, width: float) -> np.ndarray:
    """Soft band profile: 1 on the curve, 0 beyond ``width`` (triangle-smoothed)."""
    x = np.clip(1.0 - np.abs(dist) / width, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _rib_curve(x: np.ndarray, v0: float) -> np.ndarray:
    """Posterior rib: rises briefly from the spine, then arcs down laterally."""
    return v0 - 0.07 * np.sin(np.clip(x / 0.25, 0, 1) * np.pi / 2) + 0.45 * x**2


def _blob(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, r: float, rng: np.random.Generator
) -> np.ndarray:
    """Irregular blob: a few overlapping Gaussians, peak near 1, (S, S) float32."""
    field = np.zeros((v.size, u.size), np.float32)
    for _ in range(4):
        du, dv = rng.normal(0, r * 0.45, 2)
        sr = r * rng.uniform(0.5, 0.8)
        gu = np.exp(-((u - cu - du) ** 2) / (2 * sr**2)).astype(np.float32)
        gv = np.exp(-((v - cv - dv) ** 2) / (2 * sr**2)).astype(np.float32)
        field = np.maximum(field, gv[:, None] * gu[None, :])
    return field


# --- the drawing ---------------------------------------------------------------------------


class _Canvas:
    """Canonical canvas: coordinates, masks and the attenuation map being drawn."""

    def __init__(self, size: int):
        self.size = size
        c = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
        self.u = c  # columns
        self.v = c  # rows
        self.A = np.zeros((size, size), np.float32)
        self.overlay = Image.new("L", (size, size), 0)  # thin radio-opaque lines

    def px(self, u: float, v: float) -> tuple[float, float]:
        return ((u + 1) * self.size / 2 - 0.5, (v + 1) * self.size / 2 - 0.5)

    def line(self, pts: list[tuple[float, float]], width_units: float, value: int) -> None:
        w = max(1, round(width_units * self.size / 2))
        ImageDraw.Draw(self.overlay).line([self.px(*p) for p in pts], fill=value, width=w)

    def rows(self, v0: float, v1: float) -> slice:
        s = self.size
        lo = int(np.clip(np.floor((min(v0, v1) + 1) * s / 2) - 1, 0, s))
        hi = int(np.clip(np.ceil((max(v0, v1) + 1) * s / 2) + 2, 0, s))
        return slice(lo, hi)


def _side_sign(side: str) -> int:
    """Image direction of a patient side: patient's right is image left (-1)."""
    return -1 if side == "right" else 1


def _sides(side: str | None) -> list[int]:
    if side == "bilateral":
        return [-1, 1]
    return [_side_sign(side or "right")]


def _zone_v(a: Anatomy, zone: str | None, sign: int) -> float:
    top, bottom = a.apex_v + 0.08, a.base_v + (a.left_drop if sign > 0 else 0) - 0.12
    frac = {"upper": 0.2, "middle": 0.5, "lower": 0.8}.get(zone or "middle", 0.5)
    return top + (bottom - top) * frac


def render(study: PhantomStudy, size: int = 256) -> Rendered:
    """Draw one study at ``size`` x ``size`` pixels.

    Deterministic: the anatomy comes from ``study.anatomy_seed`` alone.

    Returns
    -------
    Rendered
        uint8 image (size, size), bool masks (size, size) for ``left_lung``,
        ``right_lung``, ``heart`` (patient's sides), the CTR measured on them, and the
        bool region of every drawn finding that has one.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    # Separate streams: adding a finding must not change the anatomy or the noise.
    rng, finding_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(study.anatomy_seed).spawn(3)
    )
    a = sample_anatomy(rng)
    cv = _Canvas(size)
    enlarged = any(f.observation == "Enlarged Cardiomediastinum" for f in study.findings)
    widened = 0.07 if enlarged else 0.0
    outlines, masks = _organs(study, a, size, widened)
    lungs = masks["left_lung"] | masks["right_lung"]
    _draw_body(a, cv, lungs, masks["heart"], widened)
    vessel_f = _draw_vessels(a, cv, lungs.astype(np.float32), rng)
    _draw_ribs(a, cv)
    regions = _draw_findings(study, a, cv, masks, vessel_f, finding_rng)
    cv.A += 0.45 * np.asarray(cv.overlay, np.float32) / 255.0
    return _acquire(cv.A, a, size, outlines, regions, noise_rng)


def _organs(
    study: PhantomStudy, a: Anatomy, size: int, widened: float
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The organ outlines and their filled masks: lungs (the base raised on the side of a
    definite atelectasis, displaced by a widened mediastinum), then the heart, its width
    tuned so the drawn CTR hits the study's."""
    raise_side: dict[int, float] = {}
    atel = {f.observation: f for f in study.findings}.get("Atelectasis")  # the last one
    if atel is not None and atel.certainty != POSSIBLE:
        for s in _sides(atel.side):
            raise_side[s] = 0.03
    outlines = {
        "right_lung": _lung_outline(a, -1, widened * 0.5, raise_side.get(-1, 0.0)),
        "left_lung": _lung_outline(a, 1, widened * 0.5, raise_side.get(1, 0.0)),
    }
    masks = {name: _fill(pts, size) for name, pts in outlines.items()}
    lungs = masks["left_lung"] | masks["right_lung"]
    thorax = np.concatenate(list(outlines.values()))[:, 0]
    half = study.ctr * (thorax.max() - thorax.min()) / 2
    for _ in range(3):  # correct for rasterisation so the drawn CTR hits the target
        heart = _fill(_heart_outline(a, half), size)
        measured = cardiothoracic_ratio(lungs, heart)
        half *= study.ctr / measured
    outlines["heart"] = _heart_outline(a, half)
    masks["heart"] = _fill(outlines["heart"], size)
    return outlines, masks


def _draw_body(
    a: Anatomy, cv: _Canvas, lungs: np.ndarray, heart: np.ndarray, widened: float
) -> None:
    """Soft tissue with shoulders and a neck, mediastinum, spine, aortic knob, trachea,
    the lungs' air and the stomach bubble."""
    u, v, A = cv.u, cv.v, cv.A
    lung_f = lungs.astype(np.float32)
    shoulder = np.clip((v + 0.92) / 0.3, 0, 1)
    torso_half = 0.22 + 0.74 * np.sqrt(shoulder * (2 - shoulder))  # neck to shoulders
    body = np.clip((torso_half[:, None] - np.abs(u)[None, :]) / 0.05 + 0.5, 0, 1)  # soft edge
    A += 0.55 * body
    A += 0.10 * np.clip((v - 0.2) / 0.5, 0, 1)[:, None] * body  # abdomen
    # Mediastinum and spine.
    med_half = (a.mediastinum + widened) * (1 - 0.3 * np.clip((v + 0.2) / 0.6, 0, 1))
    A += 0.22 * _band(u[None, :], med_half[:, None] + 0.02) * (v[:, None] > a.apex_v - 0.2)
    spine = _band(u, 0.08)[None, :] * (0.8 + 0.2 * np.cos(np.pi * (v / 0.11))[:, None] ** 2)
    A += 0.07 * spine
    knob_u, knob_v = -0.05 + a.mediastinum + widened + 0.03, -0.32
    A += 0.12 * (_band(u - knob_u, 0.07)[None, :] * _band(v - knob_v, 0.07)[:, None])
    trachea = _band(u, 0.03)[None, :] * (v[:, None] < -0.22) * (v[:, None] > -1)
    A -= 0.10 * trachea
    # Lungs: air, less where the heart or the soft tissue of the lower chest overlies them.
    lower = np.clip((v - 0.05) / 0.5, 0, 1)[:, None] * np.clip(np.abs(u) / 0.8, 0, 1)[None, :]
    heart_f = heart.astype(np.float32)
    A -= 0.34 * lung_f * (1 - 0.8 * heart_f) * (1 - 0.35 * lower)
    A += 0.08 * heart_f * (1 - lung_f)
    # Stomach bubble under the patient's left hemidiaphragm.
    gb_u, gb_v = 0.42, a.base_v + a.left_drop + 0.12
    A -= 0.15 * (_band(u - gb_u, 0.12)[None, :] * _band(v - gb_v, 0.06)[:, None])


def _draw_vessels(
    a: Anatomy, cv: _Canvas, lung_f: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Lung markings: vessels branching from the hila, fading outward; returns them
    (float (S, S), inside the lungs)."""
    size = cv.size
    vessels = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(vessels)
    for sign in (-1, 1):
        hu, hv = sign * (a.medial_u + 0.12), -0.05
        for _ in range(9):
            ang = rng.uniform(-0.85 * np.pi, 0.85 * np.pi) + (0 if sign > 0 else np.pi)
            pu, pv, level = hu, hv, 230.0
            pts = [cv.px(pu, pv)]
            for _ in range(6):
                ang += rng.normal(0, 0.25)
                step = rng.uniform(0.05, 0.09)
                pu, pv = pu + step * np.cos(ang), pv + step * np.sin(ang) * 0.9
                pts.append(cv.px(pu, pv))
            for k in range(len(pts) - 1):
                draw.line([pts[k], pts[k + 1]], fill=int(level), width=max(1, round(size / 200)))
                level *= 0.78
    vessel_f = np.asarray(vessels, np.float32) / 255.0 * lung_f
    cv.A += 0.10 * vessel_f
    return vessel_f


def _draw_ribs(a: Anatomy, cv: _Canvas) -> None:
    """Posterior ribs arching out from the spine and down, fainter anterior ribs, and
    the clavicles."""
    u, v, A = cv.u, cv.v, cv.A
    rib_width = 0.022
    x = np.clip(np.abs(u) - 0.05, 0, None)
    for sign in (-1, 1):
        idx = np.flatnonzero((u * sign > 0.04) & (u * sign < a.half_width + 0.12))
        cs = slice(idx[0], idx[-1] + 1)  # this side's columns: a contiguous block
        xs = x[cs]
        for k in range(10):
            v0 = a.apex_v - 0.06 + a.rib_phase + k * a.rib_gap
            for curve, weight, width in (
                (_rib_curve(xs, v0), 0.09, rib_width),  # posterior rib
                (v0 + 0.22 + 0.45 * xs - 0.25 * xs**2, 0.035, rib_width * 1.3),  # anterior
            ):
                rows = cv.rows(float(curve.min()) - 0.05, float(curve.max()) + 0.05)
                A[rows, cs] += weight * _band(v[rows, None] - curve[None, :], width)
        cx = np.abs(u)
        clav = -0.74 - 0.10 * np.clip(cx - 0.1, 0, None) + 0.2 * np.clip(cx - 0.1, 0, None) ** 2
        ccols = (u * sign > 0.06) & (u * sign < 0.62)
        rows = cv.rows(-0.9, -0.6)
        A[rows] += 0.10 * _band(v[rows, None] - clav[None, :], 0.03) * ccols[None, :]


def _acquire(
    A: np.ndarray,
    a: Anatomy,
    size: int,
    outlines: dict[str, np.ndarray],
    regions: dict[str, np.ndarray],
    noise_rng: np.random.Generator,
) -> Rendered:
    """Acquisition: one affine map (rotation, scale, shift) about the centre of the
    drawn attenuation ``A``, its organ outlines and finding regions; then blur, noise,
    gain and gamma."""
    theta = np.deg2rad(a.rotation)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    matrix = rot / a.scale
    centre = np.array([(size - 1) / 2, (size - 1) / 2])
    shift_px = np.array([a.shift[1], a.shift[0]]) * size / 2
    offset = centre - matrix @ (centre + shift_px)
    img = _affine(A, matrix, offset)
    # Masks: the same outlines mapped forward and filled again, exact to the drawn organs.
    forward = np.linalg.inv(np.vstack([np.hstack([matrix, offset[:, None]]), [0, 0, 1]]))
    out_masks = {name: _fill(pts, size, forward) for name, pts in outlines.items()}
    out_regions = {
        name: _affine(region.astype(np.float32), matrix, offset) >= 0.5
        for name, region in regions.items()
    }
    out_regions = {name: region for name, region in out_regions.items() if region.any()}
    img = ndimage.gaussian_filter(img, a.blur * size / 256)
    img += a.noise * noise_rng.standard_normal(img.shape, dtype=np.float32)
    img = np.clip(img * a.gain, 0, 1) ** a.gamma
    image = np.round(img * 255).astype(np.uint8)
    ctr = cardiothoracic_ratio(out_masks["left_lung"] | out_masks["right_lung"], out_masks["heart"])
    return Rendered(image=image, masks=out_masks, ctr=ctr, regions=out_regions)


def _affine(image: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Bilinear resampling, as ``scipy.ndimage.affine_transform(image, matrix, offset,
    order=1, cval=0)`` (input (row, col) = matrix @ output (row, col) + offset), done by
    PIL, which is several times faster on float images."""
    m, o = matrix, offset
    # PIL maps output (x, y) to input (x, y), in coordinates where pixel centres are at
    # +0.5; rewrite the (row, col), centre-at-integer map in those terms.
    data = (
        m[1, 1],
        m[1, 0],
        o[1] + 0.5 - 0.5 * (m[1, 0] + m[1, 1]),
        m[0, 1],
        m[0, 0],
        o[0] + 0.5 - 0.5 * (m[0, 0] + m[0, 1]),
    )
    out = Image.fromarray(image.astype(np.float32), mode="F").transform(
        image.shape[::-1], Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(out, dtype=np.float32)


def _distance_inside(mask: np.ndarray, size: int) -> np.ndarray:
    """Distance to the mask's edge, in canonical units, inside the mask (0 outside)."""
    return ndimage.distance_transform_edt(mask).astype(np.float32) * (2.0 / size)


@dataclass
class _Scene:
    """What the finding drawers share: the anatomy, the canvas, each side's lung mask
    (-1 right, 1 left), the lung markings, the findings' random stream, and the regions
    drawn so far (observation -> bool (S, S))."""

    a: Anatomy
    cv: _Canvas
    lung_of: dict[int, np.ndarray]
    vessel_f: np.ndarray
    rng: np.random.Generator
    regions: dict[str, np.ndarray] = field(default_factory=dict)

    def mark(self, name: str, where: np.ndarray) -> None:
        """Add ``where`` to the region of finding ``name``."""
        size = self.cv.size
        where = np.broadcast_to(where, (size, size))
        self.regions[name] = self.regions[name] | where if name in self.regions else where.copy()


def _draw_findings(
    study: PhantomStudy,
    a: Anatomy,
    cv: _Canvas,
    masks: dict[str, np.ndarray],
    vessel_f: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Add every finding of ``study`` to the canvas, where it belongs.

    Returns each drawn finding's region on the canvas (:data:`REGION_RULES`), bool
    (S, S) by observation; computing them draws nothing from ``rng``.
    """
    scene = _Scene(a, cv, {-1: masks["right_lung"], 1: masks["left_lung"]}, vessel_f, rng)
    for f in study.findings:
        drawer = _DRAWERS.get(f.observation)
        if drawer is not None:
            drawer(f, scene, f.certainty == POSSIBLE)
    return scene.regions


def _draw_effusion(f: Finding, sc: _Scene, subtle: bool) -> None:
    a, u, v, A = sc.a, sc.cv.u, sc.cv.v, sc.cv.A
    height = {"small": 0.07, "moderate": 0.2, "large": 0.36}[f.size or "small"]
    if subtle:
        height = 0.035
    for s in _sides(f.side):
        lung = sc.lung_of[s]
        base = a.base_v + (a.left_drop if s > 0 else 0.0)
        lateral = np.clip((u * s - a.medial_u) / (a.half_width - a.medial_u), 0, 1)
        meniscus = base - height - 0.06 * lateral**2 * (height > 0.05)
        level = np.clip((v[:, None] - meniscus[None, :]) / 0.04, 0, 1)
        A += (0.16 if subtle else 0.28) * level * lung
        sc.mark(f.observation, (level > 0) & lung)


def _draw_pneumothorax(f: Finding, sc: _Scene, subtle: bool) -> None:
    a, u, v, A, size = sc.a, sc.cv.u, sc.cv.v, sc.cv.A, sc.cv.size
    depth = {"small": 0.05, "moderate": 0.12, "large": 0.22}[f.size or "small"]
    if subtle:
        depth = 0.03
    s = _side_sign(f.side or "right")
    lung = sc.lung_of[s]
    dist = _distance_inside(lung, size)
    lateral_part = (u[None, :] * s > a.medial_u + 0.15) | (v[:, None] < a.apex_v + 0.25)
    upper = v[:, None] < a.base_v - 0.05
    region = lung & (dist < depth) & lateral_part & upper
    A -= 0.06 * region
    A -= 0.10 * sc.vessel_f * region  # no lung markings beyond the pleural line
    line = lung & (np.abs(dist - depth) < 1.2 * 2 / size) & lateral_part & upper
    A += (0.06 if subtle else 0.10) * line
    sc.mark(f.observation, region)


def _draw_airspace(f: Finding, sc: _Scene, subtle: bool) -> None:
    """Consolidation (dense, with air bronchograms) or Lung Opacity (a fainter blob)."""
    a, cv, rng, obs = sc.a, sc.cv, sc.rng, f.observation
    u, v, A, size = cv.u, cv.v, cv.A, cv.size
    for s in _sides(f.side):
        lung = sc.lung_of[s]
        cu = s * (a.medial_u + (a.half_width - a.medial_u) * rng.uniform(0.35, 0.65))
        cvv = _zone_v(a, f.zone, s)
        r = 0.09 if obs == "Consolidation" else 0.13
        if subtle:
            r *= 0.7
        blob = _blob(u, v, cu, cvv, r, rng)
        if obs != "Consolidation":
            A += (0.07 if subtle else 0.14) * blob * lung
            sc.mark(obs, (blob >= 0.5) & lung)
            continue
        dense = np.clip((blob - 0.3) / 0.2, 0, 1)
        A += (0.15 if subtle else 0.28) * dense * lung
        sc.mark(obs, (dense >= 0.5) & lung)
        # air bronchograms: a few dark branches in the dense part
        for _ in range(2):
            ang = rng.uniform(0, 2 * np.pi)
            p0 = (cu, cvv)
            p1 = (cu + 0.08 * np.cos(ang), cvv + 0.08 * np.sin(ang))
            tmp = Image.new("L", (size, size), 0)
            ImageDraw.Draw(tmp).line([cv.px(*p0), cv.px(*p1)], fill=255, width=1)
            A -= 0.08 * np.asarray(tmp, np.float32) / 255.0 * dense * lung


def _draw_atelectasis(f: Finding, sc: _Scene, subtle: bool) -> None:
    a, u, v, A, rng = sc.a, sc.cv.u, sc.cv.v, sc.cv.A, sc.rng
    for s in _sides(f.side):
        lung = sc.lung_of[s]
        cvv = _zone_v(a, f.zone, s) + 0.04
        cu = s * (a.medial_u + 0.3)
        slope = rng.uniform(-0.25, 0.25)
        length = rng.uniform(0.16, 0.26)
        cols = np.abs(u - cu) < length / 2
        dist = v[:, None] - (cvv + slope * (u - cu))[None, :]
        band = _band(dist, 0.025) * cols[None, :]
        A += (0.10 if subtle else 0.18) * band * lung
        sc.mark(f.observation, (band > 0) & lung)


def _draw_edema(f: Finding, sc: _Scene, subtle: bool) -> None:
    a, cv, rng = sc.a, sc.cv, sc.rng
    u, v, A = cv.u, cv.v, cv.A
    strength = {"mild": 0.07, "moderate": 0.11, "severe": 0.15}[f.size or "mild"]
    if subtle:
        strength = 0.045
    for s in (-1, 1):
        hu = s * (a.medial_u + 0.12)
        gu = np.exp(-((u - hu) ** 2) / (2 * 0.2**2))
        gv = np.exp(-((v + 0.0) ** 2) / (2 * 0.28**2))
        haze = gv[:, None] * gu[None, :]
        A += strength * haze * sc.lung_of[s]
        sc.mark(f.observation, (haze >= 0.5) & sc.lung_of[s])
        if f.size in ("moderate", "severe") and not subtle:
            for _ in range(4):  # Kerley B lines at the lateral bases
                lv = a.base_v - rng.uniform(0.03, 0.15)
                lu0 = s * (a.half_width - 0.01)
                cv.line([(lu0, lv), (lu0 - s * 0.05, lv)], 0.004, 110)


def _draw_lesion(f: Finding, sc: _Scene, subtle: bool) -> None:
    a, u, v, A = sc.a, sc.cv.u, sc.cv.v, sc.cv.A
    s = _side_sign(f.side or "right")
    cm = float((f.size or "1.5 cm").split()[0])
    # drawn to scale: the thorax (~1.6 canonical units) stands for ~32 cm, so
    # 1 cm is 0.05 units and the radius is half the stated diameter
    r = 0.025 * cm
    cu = s * (a.medial_u + (a.half_width - a.medial_u) * sc.rng.uniform(0.35, 0.7))
    cvv = _zone_v(a, f.zone, s)
    d = np.sqrt((u[None, :] - cu) ** 2 + (v[:, None] - cvv) ** 2)
    A += (0.12 if subtle else 0.24) * np.clip((r - d) / (0.25 * r) + 0.5, 0, 1)
    sc.mark(f.observation, d <= r)


def _draw_fracture(f: Finding, sc: _Scene, subtle: bool) -> None:
    a, cv = sc.a, sc.cv
    u, v, A = cv.u, cv.v, cv.A
    s = _side_sign(f.side or "right")
    k = {"upper": 2, "middle": 4, "lower": 6}[f.zone or "middle"]
    v0 = a.apex_v - 0.06 + a.rib_phase + k * a.rib_gap
    x0 = sc.rng.uniform(0.35, 0.55)
    x = np.clip(np.abs(u) - 0.05, 0, None)
    curve = _rib_curve(x, v0)
    # a displaced fracture with callus: the lateral fragment stepped down by about
    # a rib's width, and dense healing bone around the break (the posterior ribs
    # are faint over the lungs, so a bare gap alone is invisible at any size)
    cols = (u * s > 0.04) & (np.abs(x - x0) < 0.03)
    rows = cv.rows(float(curve[cols].min()) - 0.08, float(curve[cols].max()) + 0.08)
    step = (u * s > 0.04) & (x > x0 + 0.03) & (x < x0 + 0.15)
    A[rows] -= 0.07 * _band(v[rows, None] - curve[None, :], 0.022) * step[None, :]
    A[rows] += 0.15 * _band(v[rows, None] - curve[None, :] - 0.035, 0.02) * step[None, :]
    callus = (u * s > 0.04) & (np.abs(x - x0) < 0.04)
    A[rows] += 0.16 * _band(v[rows, None] - curve[None, :] - 0.015, 0.04) * callus[None, :]
    near = (u * s > 0.04) & (x > x0 - 0.05) & (x < x0 + 0.16)  # break and step
    sc.mark(f.observation, (np.abs(v[:, None] - curve[None, :]) < 0.06) & near[None, :])


def _draw_pleural_other(f: Finding, sc: _Scene, subtle: bool) -> None:
    a, u, v, A = sc.a, sc.cv.u, sc.cv.v, sc.cv.A
    for s in _sides(f.side):
        lung = sc.lung_of[s]
        dist = _distance_inside(lung, sc.cv.size)
        zone = v[:, None] < a.apex_v + 0.2 if f.zone == "upper" else v[:, None] > a.base_v - 0.3
        lateral = u[None, :] * s > a.medial_u + 0.2
        strip = lung & (dist < 0.05) & zone & lateral  # ~1 cm of thickened pleura
        A += 0.2 * strip
        sc.mark(f.observation, strip)


def _draw_device(f: Finding, sc: _Scene, subtle: bool) -> None:
    a, cv, rng = sc.a, sc.cv, sc.rng
    kind = f.kind
    carina = -0.18
    if kind == "endotracheal tube":
        tip = carina - rng.uniform(0.06, 0.12)
        cv.line([(0.0, -1.0), (0.0, tip)], 0.012, 200)
    elif kind == "enteric tube":
        gb = a.base_v + a.left_drop + 0.14
        pts = [(0.02, -1.0), (0.03, -0.3), (0.05, 0.2), (0.15, a.base_v + 0.08), (0.4, gb)]
        cv.line(pts, 0.008, 190)
    elif kind == "central venous catheter":
        s = _side_sign(f.side or "right")
        pts = [(s * 0.5, -0.85), (s * 0.25, -0.72), (s * 0.06, -0.5), (s * 0.04, -0.15)]
        cv.line(pts, 0.007, 180)
    elif kind == "pacemaker":
        s = _side_sign(f.side or "left")
        gu, gv = s * 0.55, -0.62
        cv.line([(gu - 0.06, gv), (gu + 0.06, gv)], 0.08, 255)
        cv.line([(gu, gv), (s * 0.25, -0.55), (0.0, -0.15), (0.05, 0.15)], 0.006, 200)
        cv.line([(gu, gv), (s * 0.2, -0.5), (-0.02, -0.1), (-0.06, 0.05)], 0.006, 200)


# Each observation's drawer. Enlarged Cardiomediastinum has none: it is drawn with the
# mediastinum (wider), the lungs displaced accordingly (render).
_DRAWERS = {
    "Pleural Effusion": _draw_effusion,
    "Pneumothorax": _draw_pneumothorax,
    "Consolidation": _draw_airspace,
    "Lung Opacity": _draw_airspace,
    "Atelectasis": _draw_atelectasis,
    "Edema": _draw_edema,
    "Lung Lesion": _draw_lesion,
    "Fracture": _draw_fracture,
    "Pleural Other": _draw_pleural_other,
    "Support Devices": _draw_device,
}
