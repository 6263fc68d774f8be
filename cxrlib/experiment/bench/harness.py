"""What every benchmark of ``cxr bench`` shares: timing a candidate and its baseline in
the same run (interleaved, so both meet the same machine load), the machine's name, and
the plain two-column table."""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from cxrlib.base.errors import CxrError


def best_rate(fn, n: int, repeats: int):
    """(items/s of the fastest of ``repeats`` calls, the last call's result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return n / best, result


def no_sync() -> None:
    """The CPU's synchronise: nothing to wait for."""


def interleaved_runs(fns: dict, repeats: int, warmup: int = 0, sync=no_sync) -> dict:
    """Time each of ``fns`` (name: no-argument callable) ``warmup + repeats`` times, all
    in the same run and interleaved, the order rotated by one every round (baseline and
    candidates meet the same machine load); ``sync`` (e.g. a CUDA synchronise) before
    and inside each timing. Returns, per name, the ``(seconds, result)`` of each timed
    call after the warm-up rounds."""
    names = list(fns)
    runs: dict[str, list] = {name: [] for name in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync()
            t0 = time.perf_counter()
            result = fns[name]()
            sync()
            if r >= warmup:
                runs[name].append((time.perf_counter() - t0, result))
    return runs


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block on ``threads`` torch CPU threads (0: torch's count as it is); the
    count before is restored afterwards."""
    if threads < 0:
        raise CxrError(f"threads must be >= 0, got {threads}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(result: dict) -> str:
    """A result with ``images_per_s`` and ``ratios`` as an aligned two-column table."""
    rows = [(k, v) for k, v in result["images_per_s"].items()]
    rows += [(k, v) for k, v in result["ratios"].items()]
    width = max(len(k) for k, _ in rows)
    head = f"{result['benchmark']} benchmark: n={result['n']}, size={result['size']}"
    return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows])
