"""Drive the explorer (notebook 07) in a real JupyterLab from headless Chromium.

Shared by ``tests/test_lab.py`` and ``docs/explorer_screenshot.py`` (the README's
screenshot). Needs Debian's ``chromium`` and ``chromium-driver`` and Selenium (``dev``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NOTEBOOK = "07_explorer.ipynb"


class LabError(AssertionError):
    """JupyterLab, Chromium or the notebook did not do what was awaited (with why)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_explorer(folder: Path, parameters: dict) -> Path:
    """The explorer notebook with ``parameters`` injected (papermill, not executed)."""
    import papermill as pm

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / NOTEBOOK
    pm.execute_notebook(
        str(ROOT / "notebooks" / NOTEBOOK), str(target), parameters=parameters, prepare_only=True
    )
    return target


@contextlib.contextmanager
def jupyterlab(folder: Path, work: Path, timeout: float = 120) -> Iterator[str]:
    """A JupyterLab server over ``folder`` on a free loopback port with a random token;
    yields the explorer notebook's URL (token included). Its config, runtime, settings
    and log live in ``work``."""
    settings = work / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    # no "get notified about Jupyter news?" toast over the page
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(work / "config"),
        "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
        "IPYTHONDIR": str(work / "ipython"),
    }
    log = work / "lab.log"
    with open(log, "w") as out:
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
                f"--LabApp.workspaces_dir={work / 'workspaces'}",
                f"--LabApp.user_settings_dir={work / 'settings'}",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            status = f"http://127.0.0.1:{port}/api/status?token={token}"
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(status, timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise LabError(f"JupyterLab did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


@contextlib.contextmanager
def chromium(profile: Path, width: int = 1400, height: int = 2000):
    """A headless Chromium (Selenium WebDriver) with a new profile in ``profile``."""
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
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, predicate, timeout: float, what: str, failure_png: Path | None = None):
    """``predicate(driver)`` once truthy; otherwise a :class:`LabError` (and a
    screenshot at ``failure_png``). An element JupyterLab re-renders while it is read
    (stale) counts as "not yet": the predicate is asked again."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    waiter = WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.5,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )
    try:
        return waiter.until(predicate)
    except WebDriverException as err:
        if failure_png is not None:
            failure_png.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(failure_png))
        why = "timed out waiting for" if isinstance(err, TimeoutException) else "failed awaiting"
        raise LabError(f"{why} {what}: {err.msg} (screenshot: {failure_png})") from err


# One script reads the whole output area, so nothing is re-rendered between two reads.
_WIDGET_OUTPUT = """
const errors = [...document.querySelectorAll('.cxr-explorer-error')].map(e => e.innerText)
  .concat([...document.querySelectorAll('.jp-OutputArea-output')].map(e => e.innerText)
    .filter(t => t.includes('Traceback (most recent call last)')));
const output = document.querySelector('.widget-output');
const view = output && output.querySelector('.cxr-explorer-view');
return {
  errors: errors,
  study: view ? view.getAttribute('data-study') : null,
  text: output ? output.innerText : '',
  images: output ? output.querySelectorAll('img').length : 0,
};
"""


def widget_output(driver) -> dict:
    """What the explorer widget's output area shows now, read in one script:
    ``study`` (its view's ``data-study``, or None), ``text``, ``images`` (how many) and
    ``errors`` (the explorer's error lines and the text of any cell traceback)."""
    return driver.execute_script(_WIDGET_OUTPUT)


def shown_study(driver) -> str | None:
    """The study the widget's output area shows (its view's ``data-study``); a cell's
    traceback or the explorer's error line raises :class:`LabError` at once."""
    shown = widget_output(driver)
    if shown["errors"]:
        raise LabError(f"the notebook failed: {shown['errors'][0][-1500:]}")
    return shown["study"]


def _by_text(driver, css: str, text: str) -> list:
    from selenium.webdriver.common.by import By

    return [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.text == text]


def run_all_cells(driver, url: str, failure_png: Path | None = None, timeout: float = 240) -> str:
    """Open the notebook, run every cell (Run menu), wait for the widget's first view;
    returns the study it shows."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 120,
         "the notebook", failure_png)  # fmt: skip
    wait(driver, lambda d: "Idle" in d.find_element(By.CSS_SELECTOR, "body").text, 120,
         "the kernel", failure_png)  # fmt: skip
    menu = wait(driver, lambda d: _by_text(d, ".lm-MenuBar-item", "Run"), 30, "the Run menu",
                failure_png)  # fmt: skip
    menu[0].click()
    item = wait(driver, lambda d: _by_text(d, ".lm-Menu-itemLabel", "Run All Cells"), 30,
                "Run All Cells", failure_png)  # fmt: skip
    item[0].click()
    return wait(driver, shown_study, timeout, "the widget's view of the first study", failure_png)


def pick(driver, label: str, value_text: str | None = None) -> str:
    """Choose an option of the widget dropdown labelled ``label`` (``value_text``, else
    the first option not shown now); returns the option's text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    boxes = driver.find_elements(By.CSS_SELECTOR, ".widget-dropdown")
    box = next(b for b in boxes if b.text.strip().startswith(label))
    select = Select(box.find_element(By.TAG_NAME, "select"))
    current = select.first_selected_option.text
    option = next(
        o for o in select.options if (o.text == value_text if value_text else o.text != current)
    )
    text = option.text
    select.select_by_visible_text(text)
    return text


def click_mode(driver, mode: str) -> None:
    """Press the mode button ``mode`` of the explorer widget."""
    buttons = _by_text(driver, ".widget-toggle-buttons button", mode)
    if not buttons:
        raise LabError(f"no {mode} button in the explorer widget")
    buttons[0].click()
