"""Suite-wide collection order, and tools a test needs from the machine.

The smoke workbook test (every real notebook, then a kill -9 and a resume) takes several
minutes; under ``pytest -n 2`` it is dispatched first, so that it does not run alone at
the end while the other worker idles.

``@pytest.mark.needs_tool(available, reason)`` marks a test that needs a program the
project cannot install with pip (headless Chromium, Java). Where it is missing the test
is skipped with the reason on a developer's machine, and **fails** under CI
(``CI=true``), whose ``.ci/run`` installs every such tool: a broken install step must
not pass as a skip.
"""

import os

import pytest

LONGEST = "tests/test_workbook.py::test_smoke_profile_runs_the_real_notebooks_on_a_phantom_set"


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``, as ``.ci/run`` is started)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.nodeid != LONGEST)  # stable: the rest keep their order


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs_tool"):
        available = mark.args[0]
        reason = mark.kwargs.get("reason") or mark.args[1]
        if not available:
            if in_ci():
                pytest.fail(f"CI must have this tool: {reason}", pytrace=False)
            pytest.skip(reason)
