"""Headless Chromium for the browser tests: Debian's ``chromium`` and ``chromium-driver``, driven by Selenium
(`.ci/run` installs both; a test is skipped only without them)."""
from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = "no /usr/bin/chromium or /usr/bin/chromedriver: apt-get install chromium chromium-driver (.ci/run does)"


def have_chromium() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def headless_chromium(folder: Path, window: str = "1600,1200"):
    """A headless Chromium with its profile and chromedriver's log under ``folder``, the page's console
    kept (``driver.get_log("browser")``), no network of its own (no update or background requests)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    os.environ["SE_OFFLINE"] = "true"  # both binaries are given: Selenium Manager must never download one
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-dev-shm-usage", f"--window-size={window}",
                f"--user-data-dir={folder / 'chromium-profile'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(folder / "chromedriver.log")),
                              options=opts)
    driver.set_page_load_timeout(60)
    return driver
