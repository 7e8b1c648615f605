"""Debian's headless Chromium for the browser tests (customer screen, console)."""

from __future__ import annotations

import os
import shutil

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
