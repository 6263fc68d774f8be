"""The README's explorer screenshot: notebook 07 in JupyterLab on a workbook run.

    .venv/bin/python docs/explorer_screenshot.py RUN [--out docs/figures/07_explorer.png]
        [--finding "Pleural Effusion"] [--mode soft] [--seed 0]

Starts JupyterLab on a free loopback port with a token over a copy of the explorer set
to RUN, runs every cell in headless Chromium (Debian's ``chromium`` and
``chromium-driver``), picks the first study positive for ``--finding`` and the mode
``--mode`` in the widget, and saves the widget's area as a PNG. Prints the study shown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lab_driver import (  # noqa: E402
    chromium,
    click_mode,
    jupyterlab,
    pick,
    prepare_explorer,
    run_all_cells,
    shown_study,
    wait,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="workbook run folder (train/ and ablation/)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/07_explorer.png"))
    parser.add_argument("--finding", default="Pleural Effusion")
    parser.add_argument("--mode", default="soft")
    parser.add_argument("--seed", type=int, default=0, help="which seed's run of each mode")
    args = parser.parse_args()
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare_explorer(
            work / "notebooks", {"run_dir": str(args.run.resolve()), "seed": args.seed}
        )
        with jupyterlab(work / "notebooks", work) as url, chromium(work / "chromium") as driver:
            run_all_cells(driver, url, timeout=600)
            chosen = pick(driver, "finding", option_starting(driver, "finding", args.finding))
            count = int(chosen.rsplit("(", 1)[1].rstrip(")"))
            # the filter resets the study list to the finding's studies; its first is shown
            study = wait(driver, lambda d: filtered_first(d, count), 300, "the filtered study")
            click_mode(driver, args.mode)
            wait(
                driver,
                lambda d: d.find_elements(
                    By.CSS_SELECTOR, f".widget-output .cxr-explorer-view[data-mode='{args.mode}']"
                ),
                300,
                f"the {args.mode} view",
            )
            wait(
                driver,
                lambda d: len(d.find_elements(By.CSS_SELECTOR, ".widget-output img")) >= 2,
                120,
                "the prior and attention figures",
            )
            area = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-child .widget-vbox")[0]
            driver.execute_script("arguments[0].scrollIntoView(true);", area)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            area.screenshot(str(args.out))
    print(f"{args.out}: {chosen}, study {study}, mode {args.mode}")
    return 0


def option_starting(driver, label: str, prefix: str) -> str:
    """The first option of the widget dropdown ``label`` that starts with ``prefix``
    (the finding dropdown's options read "Edema (12)")."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    boxes = driver.find_elements(By.CSS_SELECTOR, ".widget-dropdown")
    box = next(b for b in boxes if b.text.strip().startswith(label))
    options = Select(box.find_element(By.TAG_NAME, "select")).options
    return next(o.text for o in options if o.text.startswith(prefix))


def filtered_first(driver, count: int) -> str | None:
    """The study list's first option once the list holds ``count`` studies and the
    widget shows that first one; else None."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    boxes = driver.find_elements(By.CSS_SELECTOR, ".widget-dropdown")
    box = next(b for b in boxes if b.text.strip().startswith("study"))
    options = Select(box.find_element(By.TAG_NAME, "select")).options
    if len(options) != count:
        return None
    return options[0].text if shown_study(driver) == options[0].text else None


if __name__ == "__main__":
    sys.exit(main())
