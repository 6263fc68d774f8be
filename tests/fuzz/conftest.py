"""Hypothesis profiles of the fuzz tests (tests/fuzz).

``ci`` (the default, part of ``make test-all``: each fuzz module is marked ``slow``): a
couple of hundred examples per test, derandomized so every run tries the same inputs.
``fuzz`` (``make fuzz``, or ``HYPOTHESIS_PROFILE=fuzz``): thousands of random examples per
test. Neither keeps an example database, so nothing is written into the repository.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    # ms per example: a parser that hangs fails. Generous, because make test runs two
    # workers on two cores: an honest example took 2.2 s there once (image decoding)
    "deadline": 10_000,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=200, derandomize=True, **_COMMON)
settings.register_profile("fuzz", max_examples=5000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
