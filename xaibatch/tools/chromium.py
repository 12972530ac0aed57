"""Headless Chromium driven by selenium: the report's and serve's browser tests, the report's scale benchmark and
the docs' screenshots all start it here (selenium is a test dependency, imported when a browser starts)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = "needs /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)"

_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def start(width: int = 1280, height: int = 900, *extra: str, console_log: bool = False) -> Any:
    """A headless Chromium window of ``width`` x ``height`` with a fresh profile, which its ``quit()`` removes;
    ``extra``: more command-line switches; ``console_log``: keep the page's console for ``get_log("browser")``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="xaibatch-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in (*_ARGS, f"--window-size={width},{height}", *extra, f"--user-data-dir={profile}"):
        opts.add_argument(a)
    if console_log:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    quit_browser = driver.quit

    def quit() -> None:
        try:
            quit_browser()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit
    return driver
