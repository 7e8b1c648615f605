"""Debian's headless Chromium for the browser tests (customer screen, console)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest


def browser_or_skip() -> tuple[str, str]:
    """Chromium and chromedriver from Debian, and Selenium: fail in CI, skip elsewhere."""
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = "selenium (pip install -e '.[test]')"
    else:
        missing = ", ".join(
            name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path
        )
    if missing:
        message = f"the browser tests need {missing} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    assert chromium is not None and driver is not None
    return chromium, driver


def headless_chromium(width: int, height: int) -> Any:
    """A Selenium driver for Debian's Chromium, headless, at this window size (the caller
    quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = browser_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root (CI)
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
        "--lang=en-CA",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
