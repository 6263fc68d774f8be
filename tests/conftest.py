"""Suite-wide collection order.

The smoke workbook test (every real notebook, then a kill -9 and a resume) takes several
minutes; under ``pytest -n 2`` it is dispatched first, so that it does not run alone at
the end while the other worker idles.
"""

LONGEST = "tests/test_workbook.py::test_smoke_profile_runs_the_real_notebooks_on_a_phantom_set"


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.nodeid != LONGEST)  # stable: the rest keep their order
