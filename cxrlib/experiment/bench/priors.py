"""``cxr bench priors``: layer priors per second, the vectorised path against a naive
per-image, per-layer loop measured in the same run, and the whole pipeline from
full-size masks."""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F

from cxrlib.anatomy.priors import (
    PriorConfig,
    downsample_to_grid,
    gaussian_kernel1d,
    layer_priors,
    masks_to_priors,
)
from cxrlib.anatomy.priors import schedule as layer_schedule
from cxrlib.base.errors import CxrError
from cxrlib.base.provenance import provenance
from cxrlib.experiment.bench.harness import best_rate, torch_threads

PRIORS_TARGET_MASKS_PER_S = 2000.0


def _naive_layer_priors(grid_masks, config):
    """Baseline: one image and one layer at a time: F.pad(reflect), two 1-D convs, min-max."""
    kernels = []
    for k, sigma in layer_schedule(config):
        w = torch.from_numpy(gaussian_kernel1d(k, sigma)).to(torch.float32)
        kernels.append(((k - 1) // 2, w.view(1, 1, k, 1), w.view(1, 1, 1, k)))
    out = torch.empty(grid_masks.shape[0], config.num_layers, config.num_patches)
    for b in range(grid_masks.shape[0]):
        x = grid_masks[b][None, None]
        for layer, (pad, w_rows, w_cols) in enumerate(kernels):
            y = F.conv2d(F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), w_rows), w_cols)
            y = y.flatten()
            lo, hi = y.min(), y.max()
            out[b, layer] = (y - lo) / (hi - lo) if hi - lo > 1e-6 else torch.ones_like(y)
    return out


def bench_priors(
    n: int = 4096,
    grid: int = 32,
    layers: int = 12,
    schedule: str = "thesis",
    n_naive: int = 200,
    n_full: int = 128,
    repeats: int = 3,
    seed: int = 0,
    threads: int = 0,
) -> dict:
    """Layer-prior throughput: masks/s, one "mask" = one image's whole L-layer stack.

    Measures, in one run, on ``threads`` torch threads (0: torch's default; restored
    afterwards), best of ``repeats``:
    :func:`~cxrlib.anatomy.priors.layer_priors` on ``n`` grid masks (the vectorised
    path); the naive baseline (per image, per layer: ``F.pad(reflect)``, a row and a
    column ``conv2d``, min-max) on ``n_naive``, always on one thread; and the whole pipeline from
    three ``16 * grid`` px bool masks per image (combine, exact area downsample,
    priors) on ``n_full``. Ratios: vectorised vs naive and vs the 2,000 masks/s target;
    the max abs difference vectorised vs naive checks they compute the same thing.
    """
    with torch_threads(threads):
        return _bench_priors(n, grid, layers, schedule, n_naive, n_full, repeats, seed)


def _bench_priors(
    n: int,
    grid: int,
    layers: int,
    schedule: str,
    n_naive: int,
    n_full: int,
    repeats: int,
    seed: int,
) -> dict:
    config = PriorConfig(schedule=schedule, num_layers=layers, image_size=16 * grid)
    if schedule == "none":
        raise ValueError("schedule 'none' does no smoothing: nothing to benchmark")
    if max(k for k, _ in layer_schedule(config)) // 2 >= grid:
        raise CxrError(f"grid {grid} is too small for the reflect-padded naive baseline")
    gen = torch.Generator().manual_seed(seed)
    side = 16 * grid
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")

    def ellipses(count: int, cx: float, cy: float) -> torch.Tensor:  # bool (count, side, side)
        c = torch.rand(count, 4, generator=gen)
        x0 = (cx + 0.08 * (c[:, 0] - 0.5))[:, None, None]
        y0 = (cy + 0.08 * (c[:, 1] - 0.5))[:, None, None]
        rx = (0.12 + 0.06 * c[:, 2])[:, None, None]
        ry = (0.25 + 0.08 * c[:, 3])[:, None, None]
        return ((xx - x0) / rx) ** 2 + ((yy - y0) / ry) ** 2 < 1

    masks = {
        "right_lung": ellipses(n_full, 0.32, 0.45),
        "left_lung": ellipses(n_full, 0.68, 0.45),
        "heart": ellipses(n_full, 0.55, 0.62) & (yy > 0.5),
    }
    union = masks["left_lung"] | masks["right_lung"] | masks["heart"]
    base = downsample_to_grid(union, grid)  # (n_full, g, g)
    grid_masks = base.repeat((n + n_full - 1) // n_full, 1, 1)[:n].contiguous()

    layer_priors(grid_masks[:64], config)  # warm-up
    rate_vec, _ = best_rate(lambda: layer_priors(grid_masks, config), n, repeats)
    k_naive = min(n_naive, n)
    # the naive loop runs on one thread: its tiny ops gain nothing from more, and on a
    # busy machine a thread pool makes them collapse (measured: 5 masks/s on 2 threads)
    with torch_threads(1):
        rate_naive, naive = best_rate(
            lambda: _naive_layer_priors(grid_masks[:k_naive], config), k_naive, 1
        )
    rate_full, _ = best_rate(lambda: masks_to_priors(masks, config), n_full, repeats)
    diff = float((layer_priors(grid_masks[:k_naive], config) - naive).abs().max())
    return {
        "benchmark": "priors",
        "n": n,
        "size": grid,
        "grid": grid,
        "layers": layers,
        "schedule": schedule,
        "n_naive": k_naive,
        "n_full": n_full,
        "full_mask_px": side,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "images_per_s": {
            "vectorised_layer_priors": round(rate_vec, 1),
            "naive_per_image_per_layer": round(rate_naive, 1),
            f"full_pipeline_from_{side}px_masks": round(rate_full, 1),
        },
        "ratios": {
            "vectorised_vs_naive": round(rate_vec / rate_naive, 2),
            "vectorised_vs_target_2000": round(rate_vec / PRIORS_TARGET_MASKS_PER_S, 2),
            "full_pipeline_vs_target_2000": round(rate_full / PRIORS_TARGET_MASKS_PER_S, 2),
        },
        "max_abs_diff_vs_naive": diff,
        "provenance": provenance(),
    }
