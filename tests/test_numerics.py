"""The suite's rounding tolerance (tests/numerics.py): wide enough for a reordered sum,
narrow enough that a real change fails."""

import pytest
import torch

from tests.numerics import RTOL, assert_rounding_close, rounding_close, tolerance


def test_tolerance_scales_with_the_largest_magnitude_and_the_dtype():
    assert tolerance(torch.tensor([0.5, -0.25], dtype=torch.float64)) == RTOL[torch.float64]
    assert tolerance(torch.tensor([3.0, -40.0], dtype=torch.float64)) == 40 * 1e-10
    assert tolerance(torch.tensor([-40.0])) == pytest.approx(40 * 1e-5)  # float32
    with pytest.raises(TypeError, match="exactly"):
        tolerance(torch.tensor([1, 2]))


def test_a_reordered_sum_is_close_and_a_real_change_is_not():
    a, b, c = (torch.tensor(v, dtype=torch.float64) for v in (0.1, 0.2, 0.3))
    forward, backward = (a + b) + c, a + (b + c)  # IEEE additions: exact on any CPU
    assert not torch.equal(forward, backward)  # 0.6000000000000001 against 0.6
    assert_rounding_close(backward, forward)
    assert not rounding_close(forward + 1e-6, forward)
    assert not rounding_close(forward.float(), forward)  # another dtype
    with pytest.raises(AssertionError, match="differs by"):
        assert_rounding_close(forward + 1e-6, forward, "sum")
