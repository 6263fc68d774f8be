"""Comparing floating-point results so that a verdict holds on every CPU.

MKL picks its kernels by CPU (Intel or AMD, AVX2 or AVX-512) and by ``MKL_CBWR``, and
with the kernel the order in which sums accumulate. Two computations of one value by
different routes (another batch size or composition, another kernel, a cache against a
recomputation) agree only to rounding, and the last bits differ from machine to machine:
an exact comparison of them passes on one CPU and fails on another. So the suite asserts

- exact equality (``torch.equal``, ``==``) only where it holds by construction: both
  sides run the same operations on the same shapes in one process layout, or the value
  is copied or round-tripped through a file, or it is an integer or a string (token
  ids, labels, counts), or it is exact in any order (0 and 1 after a min-max
  normalisation, small dyadic fractions);
- :func:`assert_rounding_close` everywhere else: a relative tolerance per dtype
  (:data:`RTOL`: 1e-10 for float64, about 5e5 machine epsilons; 1e-5 for float32, about
  80), scaled by the largest magnitude compared. It absorbs reordered sums and is far
  below what a real change makes: the strict-mask test shows a 1e-6 change of one kept
  patch caught, the prior-cache test a changed mask.

``make test-all`` runs the numerics tests again under other ``MKL_CBWR`` branches, what
another CPU would compute, so that an assertion true on one kernel only fails everywhere.
"""

from __future__ import annotations

import numpy as np
import torch

RTOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 1e-2,
}


def tolerance(expected: torch.Tensor | np.ndarray) -> float:
    """The absolute difference rounding can explain: ``RTOL[dtype] * max(1, max |x|)``."""
    expected = torch.as_tensor(expected)
    if not expected.is_floating_point():
        raise TypeError(f"compare {expected.dtype} values exactly, not within rounding")
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    return RTOL[expected.dtype] * scale


def rounding_close(actual, expected) -> bool:
    """Whether ``actual`` equals ``expected`` up to rounding (same shape and dtype)."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return False
    return bool((actual - expected).abs().max() <= tolerance(expected)) if actual.numel() else True


def assert_rounding_close(actual, expected, msg: str = "") -> None:
    """Assert :func:`rounding_close`, naming the largest difference and the tolerance."""
    actual, expected = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
    assert actual.shape == expected.shape, f"{msg} shapes {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{msg} dtypes {actual.dtype} != {expected.dtype}"
    if actual.numel():
        worst = float((actual - expected).abs().max())
        assert worst <= tolerance(expected), (
            f"{msg} differs by {worst:.3g} > {tolerance(expected):.3g} ({expected.dtype} rounding)"
        )
