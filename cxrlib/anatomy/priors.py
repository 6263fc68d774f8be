"""Anatomical priors: organ masks -> one smoothed prior per decoder layer.

The pipeline, for each image (every step is a plain function on tensors, batched)::

    masks {structure: (B, H, W)} --combine_structures--> (B, H, W) union in [0, 1]
        --downsample_to_grid--> (B, g, g) fraction of each encoder patch covered
        --layer_priors--> (B, L, g*g) one prior per decoder layer, float32 in [0, 1]

``g = image_size / patch_size`` is the encoder's patch grid (14 at 224 px, 32 at 512
px with 16 px patches) and ``L`` the number of decoder layers. Layer 0 gets the
broadest prior and layer ``L - 1`` the most focused one. Priors cross into the model
as ``(B, L, P)`` with ``P = g * g`` patches in row-major order (row ``i``, column ``j``
is patch ``i * g + j``), the order of the encoder's patch tokens.

Schedules (:func:`schedule`). Sigmas are set as fractions of the image side, so that a
grid of any size gets the same priors in image space: the published ones were chosen
in patches of the published 32 x 32 grid (512 px, 16 px patches), and on the CPU
preset's 8 x 8 grid the same numbers in patch units would make layer 0's blur wider
than half the image, nearly flat, and its min-max normalisation would turn the rest
into a gradient peaking on the top row, above the lungs. On a grid of ``g`` patches a
fraction ``f`` is ``f g`` patches; the kernel is ``2 ceil(3 sigma) + 1`` patches.

- ``"thesis"``: the published one (the project's METHOD.md): for layer ``l`` of
  ``L``, kernel ``k = 3 + 2 (L - l)`` and ``sigma = (k - 1) / 6`` patches of the
  32-patch grid, i.e. a radius of exactly 3 sigma; for ``L = 12`` layer 0 has
  ``k = 27, sigma = 13/3`` and layer 11 ``k = 5, sigma = 2/3`` on that grid
  (fractions 13/96 and 1/48 of the side), scaled to ``g / 32`` on other grids.
- ``"linear"`` (default): sigma linear in the layer index from ``sigma_start``
  (layer 0) to ``sigma_end`` (last layer). The defaults (13/96 -> 1/48 of the side)
  span the thesis range; with ``L = 12`` the two presets give the same kernels and
  sigmas on any grid (to float rounding, 1e-15); with other ``L`` "linear" keeps the
  end points fixed while "thesis" moves them (its layer-0 sigma is ``(L + 1) / 3``
  patches of the 32-patch grid).
- ``"constant"``: the same ``sigma`` for every layer (default 1/16 of the side: 2
  patches of the 32-patch grid).
- ``"none"``: no smoothing and no renormalisation: the grid mask (patch coverage
  fractions) repeated for every layer.

Every smoothing schedule min-max normalises each layer of each image to [0, 1]
afterwards, so every layer's maximum is exactly 1.

Edge cases, the same in every function:

- all-zero mask (no anatomy found): the prior is all ones for every layer, i.e.
  attention is left unbiased; reported (``return_empty``, a logged warning, and the
  ``empty`` list of :func:`cxrlib.anatomy.manifest_priors.priors_for_manifest`);
- all-one mask, or any layer that is constant after smoothing: all ones;
- NaN anywhere in a mask: ``CxrError`` naming the image;
- masks whose size differs from their image's (or from each other's):
  ``CxrError`` naming the image. Masks need not be ``image_size`` pixels: the
  encoder sees the whole image resized to ``image_size`` squared, so area weights are
  taken directly from the mask's native resolution (exact, no resize first).

Padding: the Gaussian blur pads each axis by ``(k - 1) / 2`` patches. ``"reflect"``
mirrors about the edge patch without repeating it (torch's ``F.pad(mode="reflect")``,
numpy's ``"reflect"``, scipy's ``"mirror"``); where the pad is as wide as the grid or
wider (e.g. ``k = 27`` on a grid smaller than 14) the mirroring repeats, as numpy's
does, instead of failing as ``F.pad`` would. ``"replicate"`` repeats the edge patch,
``"zeros"`` pads with 0. The blur is computed as two small matrix products per layer
(``M X M^T`` with ``M`` the padded 1-D blur as a ``g x g`` matrix), which is exactly the
separable padded convolution and lets one batched product serve every image and layer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from cxrlib.anatomy.prior_config import PRIORS_VERSION as PRIORS_VERSION
from cxrlib.anatomy.prior_config import PriorConfig as PriorConfig
from cxrlib.anatomy.prior_config import patch_grid as patch_grid

# the settings live in a module without torch (configs and the CLI read them); they
# stay importable from here
from cxrlib.base.errors import CxrError
from cxrlib.base.vocabulary import PRIOR_STRUCTURES

log = logging.getLogger(__name__)

PUBLISHED_GRID = 32
"""Patches per side of the published model (512 px, 16 px patches): the grid the
thesis schedule's kernels were stated in."""

_CONSTANT_EPS = 1e-6  # a layer whose max - min is at most this is "constant" -> ones


def _kernel_size(sigma: float) -> int:
    """``2 ceil(3 sigma) + 1``, robust to 3 * sigma landing a hair above an integer."""
    return 2 * math.ceil(3 * sigma - 1e-9) + 1


def schedule(config: PriorConfig) -> list[tuple[int, float]]:
    """Gaussian kernel size and sigma of every decoder layer, in patches of the
    config's grid (sigma = fraction of the side x grid; module docstring).

    Parameters
    ----------
    config : PriorConfig

    Returns
    -------
    list of (int, float)
        ``config.num_layers`` pairs ``(kernel_size, sigma)`` for layers ``l = 0..L-1``,
        in patch units; kernel sizes are odd. For ``"none"`` every pair is ``(1, 0.0)``
        (identity: no smoothing).

    Examples
    --------
    >>> schedule(PriorConfig(schedule="thesis", image_size=512))[0]
    (27, 4.333333333333333)
    >>> schedule(PriorConfig(schedule="thesis", image_size=512))[-1]
    (5, 0.6666666666666666)
    >>> schedule(PriorConfig(schedule="thesis", image_size=128))[0]  # 8 x 8 grid
    (9, 1.0833333333333333)
    """
    n, grid = config.num_layers, config.grid
    if config.schedule == "none":
        return [(1, 0.0)] * n
    if config.schedule == "thesis":
        # (k - 1) / 6 patches of the 32-patch grid, as a fraction: (k - 1) / (6 * 32)
        fractions = [(2 + 2 * (n - layer)) / (6 * PUBLISHED_GRID) for layer in range(n)]
    elif config.schedule == "constant":
        fractions = [float(config.sigma)] * n
    elif n == 1:
        fractions = [float(config.sigma_start)]
    else:
        a, z = config.sigma_start, config.sigma_end
        fractions = [float((a * (n - 1 - layer) + z * layer) / (n - 1)) for layer in range(n)]
    sigmas = [f * grid for f in fractions]
    return [(_kernel_size(s), s) for s in sigmas]


def gaussian_kernel1d(kernel_size: int, sigma: float) -> np.ndarray:
    """Sampled, normalised 1-D Gaussian.

    Parameters
    ----------
    kernel_size : int
        Odd number of taps ``k``; taps sit at offsets ``-(k-1)/2 .. (k-1)/2``.
    sigma : float
        Standard deviation in taps, > 0 (``kernel_size == 1`` allows any sigma).

    Returns
    -------
    numpy.ndarray
        float64, shape ``(kernel_size,)``, symmetric, sums to 1.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if kernel_size == 1:
        return np.ones(1)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    x = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _source_index(position: int, n: int, padding: str) -> int | None:
    """Index of the grid cell a padded position reads, or None for zero padding."""
    if 0 <= position < n:
        return position
    if padding == "zeros":
        return None
    if padding == "replicate" or n == 1:
        return min(max(position, 0), n - 1)
    period = 2 * (n - 1)  # reflect without repeating the edge, repeated as needed
    m = position % period
    return m if m < n else period - m


@lru_cache(maxsize=256)
def _blur_matrix(grid: int, kernel_size: int, sigma: float, padding: str) -> np.ndarray:
    """The padded 1-D blur as a (grid, grid) float64 matrix: ``blurred = M @ x``."""
    w = gaussian_kernel1d(kernel_size, sigma)
    radius = (kernel_size - 1) // 2
    m = np.zeros((grid, grid))
    for i in range(grid):
        for t, weight in enumerate(w):
            j = _source_index(i + t - radius, grid, padding)
            if j is not None:
                m[i, j] += weight
    m.setflags(write=False)
    return m


def blur_matrices(config: PriorConfig) -> torch.Tensor:
    """Every layer's padded 1-D Gaussian blur as a matrix.

    Parameters
    ----------
    config : PriorConfig

    Returns
    -------
    torch.Tensor
        float32, shape ``(L, g, g)``: layer ``l``'s blur of a grid ``X`` (g, g) is
        ``M[l] @ X @ M[l].T``, exactly the separable convolution with
        ``config.padding``. Identity matrices for schedule ``"none"``.
    """
    g = config.grid
    mats = [_blur_matrix(g, k, s, config.padding) for k, s in schedule(config)]
    return torch.from_numpy(np.stack(mats)).to(torch.float32)


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x


def _as_float_tensor(x, name: str) -> torch.Tensor:
    x = _as_tensor(x, name)
    if x.dtype == torch.bool or not torch.is_floating_point(x):
        return x.to(torch.float32)
    return x.to(torch.float32) if x.dtype != torch.float32 else x


def _image_names(image_ids: Sequence[str] | None, rows: torch.Tensor, limit: int = 5) -> str:
    idx = [int(i) for i in rows.tolist()]
    names = [repr(str(image_ids[i])) for i in idx] if image_ids is not None else map(str, idx)
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    what = "image" if image_ids is not None else "batch index"
    return f"{what}{'s' * (len(names) > 1)} {', '.join(names[:limit])}{more}"


def combine_structures(
    masks: Mapping[str, torch.Tensor | np.ndarray], structures: Sequence[str]
) -> torch.Tensor:
    """Union of the selected structures' masks.

    Parameters
    ----------
    masks : mapping of str to Tensor or ndarray, each shape (B, H, W)
        bool, or float in [0, 1]; keys from :data:`PRIOR_STRUCTURES`. ``"lungs"`` is taken
        from ``masks["lungs"]`` when present, else as the union of ``"left_lung"`` and
        ``"right_lung"``.
    structures : sequence of str
        Which structures to unite, e.g. ``("lungs", "heart")``.

    Returns
    -------
    torch.Tensor
        Shape (B, H, W): the element-wise maximum (union). bool when every input is
        bool (4x less memory on the way to the grid), else float32 in [0, 1]; NaN in
        any input stays NaN (refused later by :func:`layer_priors`).

    Raises
    ------
    ValueError
        Naming the structure, when it is unknown or missing from ``masks``, is not
        3-D, or differs in shape from the others.
    """
    if not structures:
        raise ValueError("structures must name at least one structure")
    parts: list[tuple[str, torch.Tensor]] = []
    for s in structures:
        if s not in PRIOR_STRUCTURES:
            choices = ", ".join(PRIOR_STRUCTURES)
            raise ValueError(f"structures: unknown {s!r} (choose from {choices})")
        if s in masks:
            names = [s]
        elif s == "lungs" and "left_lung" in masks and "right_lung" in masks:
            names = ["left_lung", "right_lung"]
        else:
            hint = " (or both 'left_lung' and 'right_lung')" if s == "lungs" else ""
            raise ValueError(f"masks: no mask for structure {s!r}{hint}; got {sorted(masks)}")
        parts += [(name, _as_tensor(masks[name], f"masks[{name!r}]")) for name in names]
    first_name, first = parts[0]
    for name, m in parts:
        if m.ndim != 3:
            raise ValueError(f"masks[{name!r}] must have shape (B, H, W), got {tuple(m.shape)}")
        if m.shape != first.shape:
            raise ValueError(
                f"masks[{name!r}] has shape {tuple(m.shape)} but masks[{first_name!r}] "
                f"has {tuple(first.shape)}"
            )
    if all(m.dtype == torch.bool for _, m in parts):  # 1 byte per pixel until the grid
        out = first.clone()
        for _, m in parts[1:]:
            out |= m
        return out
    out = _as_float_tensor(first, f"masks[{first_name!r}]")
    for name, m in parts[1:]:
        out = torch.maximum(out, _as_float_tensor(m, f"masks[{name!r}]"))
    return out


def _area_matrix(n: int, grid: int) -> torch.Tensor:
    """(grid, n) float64 weights: row i = overlap of each pixel with patch i / patch size."""
    edges = np.arange(n + 1, dtype=np.float64)
    step = n / grid
    lo = np.arange(grid, dtype=np.float64)[:, None] * step
    hi = lo + step
    overlap = np.minimum(edges[None, 1:], hi) - np.maximum(edges[None, :-1], lo)
    return torch.from_numpy(np.clip(overlap, 0.0, None) / step)


def downsample_to_grid(mask: torch.Tensor | np.ndarray, grid: int) -> torch.Tensor:
    """Fraction of each patch covered by the mask (exact area weights).

    The image is divided into ``grid x grid`` equal patches (the encoder sees it
    resized to a square, so a non-square mask is divided into non-square patches).
    When ``H`` and ``W`` are multiples of ``grid`` this is the mean over each patch
    (``F.avg_pool2d``); otherwise each pixel counts with the fraction of its area that
    falls in the patch (a pixel straddling two patches is shared between them), so the
    result is exact for any size, unlike ``adaptive_avg_pool2d`` / ``interpolate(
    mode="area")``, which use overlapping integer windows there.

    Parameters
    ----------
    mask : Tensor or ndarray, shape (B, H, W)
        bool, or float in [0, 1].
    grid : int
        Patches per side (see :func:`patch_grid`).

    Returns
    -------
    torch.Tensor
        float32, shape (B, grid, grid), values in [0, 1] (up to float rounding); NaN
        in a patch's pixels gives NaN there.

    Examples
    --------
    >>> m = torch.zeros(1, 8, 8); m[0, :4, :4] = 1; m[0, 4:, 4:6] = 1
    >>> downsample_to_grid(m, 2)[0]
    tensor([[1.0000, 0.0000],
            [0.0000, 0.5000]])
    """
    x = _as_tensor(mask, "mask")
    if x.ndim != 3:
        raise ValueError(f"mask must have shape (B, H, W), got {tuple(x.shape)}")
    if isinstance(grid, bool) or not isinstance(grid, int | np.integer) or grid < 1:
        raise ValueError(f"grid must be a positive integer, got {grid!r}")
    _, h, w = x.shape
    if h == 0 or w == 0:
        raise ValueError(f"mask must not be empty, got shape {tuple(x.shape)}")
    if h % grid == 0 and w % grid == 0:
        sh, sw = h // grid, w // grid
        if x.dtype == torch.bool and sh < 2**15:  # exact pixel counts, a byte per pixel
            rows = x.view(torch.uint8).reshape(-1, grid, sh, w).sum(2, dtype=torch.int16)
            counts = rows.reshape(-1, grid, grid, sw).sum(3, dtype=torch.int32)
            return counts.to(torch.float32) / (sh * sw)
        return F.avg_pool2d(_as_float_tensor(x, "mask")[:, None], (sh, sw))[:, 0]
    x = _as_float_tensor(x, "mask")
    ah = _area_matrix(h, grid).to(x.device, torch.float32)  # (g, H)
    aw = _area_matrix(w, grid).to(x.device, torch.float32)  # (g, W)
    return ah @ x @ aw.T  # (B, g, g)


_CHUNK = 1024  # images per batched product in layer_priors (measured: 256..4096 similar)


def _smooth_and_normalise(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Blur (B, g, g) grids with every layer's (L, g, g) matrix, min-max per layer.

    Returns float32 (B, L, g*g). Two products serve all images and layers: first one
    GEMM ``(L*g, g) @ (g, B*g)`` blurs columns for every (layer, image), then one
    batched product per layer blurs rows; the layout is [l, i, b, k] in between.
    """
    b, g, _ = x.shape
    n_layers = m.shape[0]
    xt = x.permute(1, 0, 2).reshape(g, b * g)  # [j, (b, k)]
    t = (m.reshape(n_layers * g, g) @ xt).view(n_layers, g * b, g)  # [l, (i, b), k]
    y = torch.bmm(t, m.transpose(1, 2))  # [l, (i, b), n]: M X M^T for each (b, l)
    y = y.view(n_layers, g, b, g).permute(2, 0, 1, 3).reshape(b, n_layers, g * g)
    lo, hi = torch.aminmax(y, dim=2, keepdim=True)
    span = hi - lo
    # (y - lo) / (hi - lo): exactly 0 at the min and 1 at the max, never outside [0, 1]
    y.sub_(lo).div_(span.clamp_min(_CONSTANT_EPS))
    return y.masked_fill_(span <= _CONSTANT_EPS, 1.0)  # constant layer -> ones


def layer_priors(
    grid_masks: torch.Tensor | np.ndarray,
    config: PriorConfig,
    *,
    image_ids: Sequence[str] | None = None,
    return_empty: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One prior per decoder layer, broad (layer 0) to focused (last layer).

    Per image and layer: separable Gaussian blur of the grid mask with the layer's
    kernel from :func:`schedule` (padding ``config.padding``), then min-max
    normalisation to [0, 1]. Schedule ``"none"`` returns the grid mask itself for
    every layer. All images and layers are computed together (two batched matrix
    products, see :func:`blur_matrices`); an image's result does not depend on the
    batch it is in (to float rounding, 1e-6).

    Parameters
    ----------
    grid_masks : Tensor or ndarray, shape (B, g, g)
        Patch coverage in [0, 1] (bool accepted), ``g == config.grid``; e.g. from
        :func:`downsample_to_grid`.
    config : PriorConfig
    image_ids : sequence of str, optional
        Length B; used only to name images in errors and warnings.
    return_empty : bool
        Also return which images had an all-zero mask.

    Returns
    -------
    priors : torch.Tensor
        float32, shape (B, L, g*g), values in [0, 1], on ``grid_masks``' device.
        Smoothing schedules: every layer's max is exactly 1 and min exactly 0, except
        layers that are constant after smoothing (all-zero or all-one masks), which
        are all ones. ``"none"``: the coverage fractions, all ones for an all-zero mask.
    empty : torch.Tensor
        Only with ``return_empty``: bool, shape (B,), True where the mask was all zero
        (its prior is all ones: no anatomy, attention left unbiased).

    Raises
    ------
    ValueError
        When ``grid_masks`` is not (B, g, g) with ``g == config.grid``.
    CxrError
        Naming the image(s) whose mask contains NaN or values outside [0, 1].
    """
    x = _as_float_tensor(grid_masks, "grid_masks")
    g = config.grid
    if x.ndim != 3 or x.shape[1:] != (g, g):
        raise ValueError(
            f"grid_masks must have shape (B, {g}, {g}) for image_size {config.image_size} "
            f"and patch_size {config.patch_size}, got {tuple(x.shape)}"
        )
    b = x.shape[0]
    if image_ids is not None and len(image_ids) != b:
        raise ValueError(f"image_ids has {len(image_ids)} entries for {b} masks")
    flat = x.reshape(b, g * g)
    nan = torch.isnan(flat).any(dim=1)
    if nan.any():
        rows = torch.nonzero(nan).flatten()
        raise CxrError(f"grid_masks: NaN in the mask of {_image_names(image_ids, rows)}")
    if b:
        lo_v, hi_v = flat.amin(dim=1), flat.amax(dim=1)
        bad = (lo_v < -1e-5) | (hi_v > 1 + 1e-5)
        if bad.any():
            rows = torch.nonzero(bad).flatten()
            raise CxrError(
                f"grid_masks: values outside [0, 1] in the mask of {_image_names(image_ids, rows)}"
            )
        empty = hi_v <= 0
    else:
        empty = torch.zeros(0, dtype=torch.bool, device=x.device)
    x = x.clamp(0.0, 1.0)
    n_layers = config.num_layers
    if config.schedule == "none":
        out = x.reshape(b, 1, g * g).expand(b, n_layers, g * g).clone()
        out[empty] = 1.0
    else:
        m = blur_matrices(config).to(x.device)  # (L, g, g)
        if b <= _CHUNK:
            out = _smooth_and_normalise(x, m)
        else:  # chunks keep the working set small
            out = torch.empty(b, n_layers, g * g, device=x.device)
            for start in range(0, b, _CHUNK):
                out[start : start + _CHUNK] = _smooth_and_normalise(x[start : start + _CHUNK], m)
    if empty.any():
        rows = torch.nonzero(empty).flatten()
        log.warning(
            "all-zero mask for %s: uniform prior (attention unbiased)",
            _image_names(image_ids, rows),
        )
    out = out.contiguous()
    return (out, empty) if return_empty else out


def masks_to_priors(
    masks: Mapping[str, torch.Tensor | np.ndarray],
    config: PriorConfig,
    *,
    image_ids: Sequence[str] | None = None,
    return_empty: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Organ masks -> per-layer priors: combine, downsample, smooth.

    Parameters
    ----------
    masks : mapping of str to Tensor or ndarray, each shape (B, H, W)
        bool or float in [0, 1], any ``H, W`` covering the whole image (see
        :func:`combine_structures` for keys).
    config : PriorConfig
    image_ids, return_empty
        As for :func:`layer_priors`.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        As :func:`layer_priors`: float32 (B, L, g*g) in [0, 1] (and bool (B,) empty).
    """
    union = combine_structures(masks, config.structures)
    grid_masks = downsample_to_grid(union, config.grid)
    return layer_priors(grid_masks, config, image_ids=image_ids, return_empty=return_empty)


def prior_placement(priors: torch.Tensor, grid_masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where each layer's prior points, against the anatomy it was made from.

    Parameters
    ----------
    priors : Tensor (B, L, g*g)
        :func:`layer_priors` of ``grid_masks``.
    grid_masks : Tensor (B, g, g)
        The patch coverage of the structures (:func:`downsample_to_grid`).

    Returns
    -------
    dict of str to Tensor
        ``peak_on_anatomy`` (B, L) bool: every patch where the layer reaches its
        maximum is covered by the structures; ``centroid_in_box`` (B, L) bool: the
        layer's mass centroid (patch units, ``sum(p * (row, col)) / sum(p)``) lies in
        the bounding box of the covered patches; ``centroid`` (B, L, 2). Images without
        anatomy count as placed (their priors are all ones, i.e. unbiased).
    """
    b, n_layers, p = priors.shape
    g = grid_masks.shape[-1]
    if p != g * g:
        raise ValueError(f"priors have {p} patches per layer but the grid masks are {g} x {g}")
    covered = (grid_masks > 0).reshape(b, 1, p)
    peak = priors >= priors.amax(dim=-1, keepdim=True) - _CONSTANT_EPS
    on = ~(peak & ~covered).any(dim=-1)
    rows = torch.arange(g, dtype=torch.float64).repeat_interleave(g)
    cols = torch.arange(g, dtype=torch.float64).repeat(g)
    weights = priors.double()
    mass = weights.sum(-1).clamp_min(1e-12)
    centroid = (
        torch.stack([(weights * rows).sum(-1), (weights * cols).sum(-1)], -1) / mass[..., None]
    )
    inside = torch.ones(b, n_layers, dtype=torch.bool)
    for i in range(b):
        cells = torch.nonzero(grid_masks[i] > 0)
        if len(cells) == 0:
            continue
        (r0, c0), (r1, c1) = cells.amin(0).double(), cells.amax(0).double()
        cy, cx = centroid[i, :, 0], centroid[i, :, 1]
        inside[i] = (cy >= r0) & (cy <= r1) & (cx >= c0) & (cx <= c1)
    empty = ~covered.reshape(b, p).any(-1)
    on[empty] = True
    return {"peak_on_anatomy": on, "centroid_in_box": inside, "centroid": centroid}


def masks_to_grid(masks: Mapping, structures: Sequence[str], grid: int) -> torch.Tensor:
    """:func:`combine_structures` then :func:`downsample_to_grid`: float32 (B, g, g)."""
    return downsample_to_grid(combine_structures(masks, structures), grid)
