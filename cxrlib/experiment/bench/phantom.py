"""``cxr bench phantom``: phantom images/s on one core, drawing only against writing
PNGs and the manifest, one process against two."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

from cxrlib.base.provenance import provenance
from cxrlib.data.phantom import make_study_row, write_phantom

PHANTOM_TARGET_IMAGES_PER_S = 50.0


def bench_phantom(n: int = 200, size: int = 256, seed: int = 0) -> dict:
    """Phantom generation speed on one core, and what it is made of.

    Measures, in one run: drawing only (sample + render + text, no files), the full
    single-process writer (``write_phantom(workers=1)``: PNGs and manifest included),
    and the writer with two processes. Ratios: full vs the 50 images/s target, full vs
    drawing only (the cost of encoding and writing), two processes vs one.
    """
    make_study_row(0, seed, size, None)  # warm-up: imports, caches
    t0 = time.perf_counter()
    for i in range(n):
        make_study_row(i, seed, size, None)
    draw_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        one = write_phantom(Path(tmp) / "w1", n=n, seed=seed, size=size, workers=1, progress=False)
        two = write_phantom(Path(tmp) / "w2", n=n, seed=seed, size=size, workers=2, progress=False)
    rate_draw = n / draw_s
    rate_one = n / one.seconds
    rate_two = n / two.seconds
    return {
        "benchmark": "phantom",
        "n": n,
        "size": size,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "images_per_s": {
            "draw_only_1_process": round(rate_draw, 1),
            "write_1_process": round(rate_one, 1),
            "write_2_processes": round(rate_two, 1),
        },
        "ratios": {
            "write_1_process_vs_target_50": round(rate_one / PHANTOM_TARGET_IMAGES_PER_S, 2),
            "write_vs_draw_only": round(rate_one / rate_draw, 2),
            "2_processes_vs_1": round(rate_two / rate_one, 2),
        },
        "provenance": provenance(),
    }
