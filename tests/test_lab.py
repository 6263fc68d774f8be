"""The explorer (notebook 07) in a real JupyterLab, driven by headless Chromium.

JupyterLab is started on a free loopback port with a token, in a folder holding the
explorer notebook with its parameters set to a trained smoke run. Chromium (Debian's
``chromium`` and ``chromium-driver``, through Selenium; :mod:`tests.lab_driver`) opens
it, runs all cells, waits for the widget's view of the first study, selects another
study and asserts the rendered widget output changed to it. Screenshots go to
``test-artifacts/`` (``$CXR_TEST_ARTIFACTS``). Skipped, with the reason, where Chromium
or its driver is not installed; under CI, which installs both, that is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxrlib.training.train import train
from tests import smoke_config
from tests.lab_driver import (
    CHROMEDRIVER,
    CHROMIUM,
    ROOT,
    chromium,
    jupyterlab,
    pick,
    prepare_explorer,
    run_all_cells,
    shown_study,
    wait,
    widget_output,
)

ARTIFACTS = Path(os.environ.get("CXR_TEST_ARTIFACTS") or ROOT / "test-artifacts")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs_tool(
        CHROMIUM is not None and CHROMEDRIVER is not None,
        reason="headless Chromium and its driver are not installed "
        "(Debian: apt-get install chromium chromium-driver; .ci/run does it where it can)",
    ),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The explorer notebook's URL in a JupyterLab over a trained smoke run."""
    base = tmp_path_factory.mktemp("lab")
    train(smoke_config(base / "cache"), base / "run" / "train" / "soft-seed0", progress=False)
    folder = base / "notebooks"
    prepare_explorer(folder, {"run_dir": str(base / "run")})
    with jupyterlab(folder, base) as url:
        yield url


def test_the_explorer_runs_in_jupyterlab_and_follows_the_study_picked(lab, tmp_path):
    failure = ARTIFACTS / "explorer_failure.png"
    with chromium(tmp_path / "chromium") as browser:
        first = run_all_cells(browser, lab, failure)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "explorer_first_study.png"))
        other = pick(browser, "study")
        assert other != first

        def shows_other(driver):
            return shown_study(driver) == other and widget_output(driver)["images"] > 0

        wait(browser, shows_other, 120, f"the view of {other} with its figures", failure)
        assert "mode soft" in widget_output(browser)["text"]
        browser.save_screenshot(str(ARTIFACTS / "explorer.png"))
    assert (ARTIFACTS / "explorer.png").stat().st_size > 10_000
