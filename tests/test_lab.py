"""The explorer (notebook 07) in a real JupyterLab, driven by headless Chromium.

JupyterLab is started on a free loopback port with a token, in a folder holding the
explorer notebook with its parameters set to a trained smoke run. Chromium (Debian's
``chromium`` and ``chromium-driver``, through Selenium) opens it, runs all cells, waits
for the widget's view of the first study, selects another study and asserts the
rendered widget output changed to it. Screenshots of both states go to
``test-artifacts/`` (``$CXR_TEST_ARTIFACTS``). Skipped, with the reason, where Chromium
or its driver is not installed (``.ci/run`` installs both where it can).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import smoke_config

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("CXR_TEST_ARTIFACTS") or ROOT / "test-artifacts")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="headless Chromium and its driver are not installed "
        "(Debian: apt-get install chromium chromium-driver; .ci/run does it where it can)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server over a folder with the explorer set to a trained smoke run:
    ``(url of the notebook with the token, folder)``."""
    import papermill as pm

    from cxrlib.train import train

    base = tmp_path_factory.mktemp("lab")
    config = smoke_config(base / "cache")
    train(config, base / "run" / "train" / "soft-seed0", progress=False)
    folder = base / "notebooks"
    folder.mkdir()
    pm.execute_notebook(
        str(ROOT / "notebooks" / "07_explorer.ipynb"),
        str(folder / "07_explorer.ipynb"),
        parameters={"run_dir": str(base / "run")},
        prepare_only=True,
    )
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # no "get notified about Jupyter news?" toast over the page
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "IPYTHONDIR": str(base / "ipython"),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={folder}",
            f"--LabApp.workspaces_dir={base / 'workspaces'}",
            f"--LabApp.user_settings_dir={base / 'settings'}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.news_url=",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        env=env,
        stdout=open(base / "lab.log", "w"),  # noqa: SIM115 (closed with the process)
        stderr=subprocess.STDOUT,
    )
    status = f"http://127.0.0.1:{port}/api/status?token={token}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(status, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"JupyterLab did not start: {(base / 'lab.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/lab/tree/07_explorer.ipynb?token={token}", base
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,2000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _wait(driver, predicate, timeout: float, what: str):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(predicate)
    except WebDriverException as err:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "explorer_failure.png"))
        raise AssertionError(f"timed out waiting for {what} (screenshot: {ARTIFACTS})") from err


def _shown_study(driver) -> str | None:
    """The study the widget's output area shows (its view's ``data-study``); a cell's
    error output fails the test at once, with its text."""
    from selenium.webdriver.common.by import By

    errors = driver.find_elements(By.CSS_SELECTOR, ".cxr-explorer-error") + [
        e
        for e in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
        if "Traceback (most recent call last)" in e.text
    ]
    if errors:
        raise AssertionError(f"the notebook failed: {errors[0].text[-1500:]}")
    views = driver.find_elements(By.CSS_SELECTOR, ".widget-output .cxr-explorer-view")
    return views[0].get_attribute("data-study") if views else None


def test_the_explorer_runs_in_jupyterlab_and_follows_the_study_picked(lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, base = lab
    browser.get(url)
    _wait(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"),
        120,
        "the notebook",
    )
    _wait(
        browser,
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator[data-status='idle']")
            or "Idle" in d.find_element(By.CSS_SELECTOR, ".jp-Toolbar").text
            or d.find_elements(By.CSS_SELECTOR, ".jp-KernelStatus-success")
        ),
        120,
        "the kernel",
    )
    menu = _wait(
        browser,
        lambda d: [
            e for e in d.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if e.text == "Run"
        ],
        30,
        "the Run menu",
    )
    menu[0].click()
    run_all = _wait(
        browser,
        lambda d: [
            e
            for e in d.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel")
            if e.text == "Run All Cells"
        ],
        30,
        "Run All Cells",
    )
    run_all[0].click()
    first = _wait(browser, _shown_study, 240, "the widget's view of the first study")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "explorer_first_study.png"))

    boxes = browser.find_elements(By.CSS_SELECTOR, ".widget-dropdown")
    study_box = next(b for b in boxes if b.text.strip().startswith("study"))
    select = Select(study_box.find_element(By.TAG_NAME, "select"))
    other = next(o.get_attribute("value") for o in select.options if o.text != first)
    other_text = next(o.text for o in select.options if o.get_attribute("value") == other)
    select.select_by_value(other)
    _wait(browser, lambda d: _shown_study(d) == other_text, 120, f"the view of {other_text}")
    output = browser.find_element(By.CSS_SELECTOR, ".widget-output")
    assert output.find_elements(By.TAG_NAME, "img"), "the view has no figure"
    assert "mode soft" in output.text
    browser.save_screenshot(str(ARTIFACTS / "explorer.png"))
    assert (ARTIFACTS / "explorer.png").stat().st_size > 10_000
